//! Row building for OTLP records: what every signal does once its own
//! shape has been read (`map`) and its agent's rules have run (`agents`) —
//! the event row, its chat messages, its ids (derived from content, so that
//! an exporter's retry is recognised as a resend), its session, cost and
//! normalised token counts.

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    agents::{Agent, Found},
    attrs::{self, int, text},
    price::PriceTable,
};
use crate::{pb, privacy::IDENTITY_ATTRIBUTES};

/// What every record of one `ResourceLogs`/`ResourceSpans`/`ResourceMetrics` shares.
pub struct Context<'a> {
    pub resource: &'a [KeyValue],
    pub prices: &'a PriceTable,
    /// When a record has no time of its own.
    pub now: SystemTime,
    /// The rows' `context` JSON and the resource's encoding (part of every
    /// row id): the same for all records of a scope, so built once.
    context_json: String,
    resource_bytes: Vec<u8>,
    /// `--pseudonymize-users`: no attribute that names a person is kept in
    /// `data` or `context` (the developer is the row's pseudonymous user).
    strip_identity: bool,
}

impl<'a> Context<'a> {
    pub fn new(
        resource: &'a [KeyValue],
        scope: &str,
        prices: &'a PriceTable,
        now: SystemTime,
        strip_identity: bool,
    ) -> Self {
        let mut context = attrs::to_map(resource);
        strip_url_credentials(&mut context);
        if strip_identity {
            context.retain(|k, _| !IDENTITY_ATTRIBUTES.contains(&k.as_str()));
        }
        if !scope.is_empty() {
            context.insert("otel.scope.name".into(), scope.into());
        }
        context.insert("source".into(), "otlp".into());
        let mut resource_bytes = Vec::new();
        for kv in resource {
            kv.encode(&mut resource_bytes).expect("Vec grows");
        }
        Self {
            resource,
            prices,
            now,
            context_json: Json::Object(context).to_string(),
            resource_bytes,
            strip_identity,
        }
    }
}

/// One record, mapped. `project` is the project the record names itself
/// (resource or repository attributes); the caller resolves the rest.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub event: pb::AgentEvent,
    pub session: Uuid,
    pub agent: String,
    pub project: Option<String>,
    pub messages: Vec<pb::ChatMessage>,
}

/// Attributes that hold prompt or response text: they become chat
/// messages, not copies in `data`.
/// The content policy's `chat` mode governs the same keys in `data`.
const TEXT_KEYS: &[&str] = crate::intake::policy::OTLP_TEXT_ATTRIBUTES;

const SESSION_KEYS: &[&str] = &[
    "session.id",
    "conversation.id",
    "gen_ai.conversation.id",
    "copilot_chat.session_id",
    "thread.id",
];

const PROJECT_KEYS: &[&str] = &[
    "project.name",
    "vcs.repository.url.full",
    "github.copilot.git.repository",
    "copilot_chat.repo.remote_url",
];

/// What a signal's mapping has worked out about one record, before it
/// becomes a row.
pub(super) struct Draft<'a> {
    pub agent: Agent,
    /// The record's event name.
    pub name: String,
    pub attrs: &'a [KeyValue],
    /// What the agent's rules found in it.
    pub found: Found,
    pub ts: SystemTime,
    pub id: Uuid,
    pub session: Uuid,
    /// The signal's own fields for `data` (trace and span ids, the body, …).
    pub data: Map<String, Json>,
}

/// The record's rows: its event, and a chat message per text it carries.
pub(super) fn build(ctx: &Context, draft: Draft<'_>) -> Mapped {
    let (agent, name, attrs, found) = (draft.agent, draft.name, draft.attrs, draft.found);
    let (ts, id, session, mut data) = (draft.ts, draft.id, draft.session, draft.data);
    // Only request rows (and failed requests) name a model: the dashboards
    // count rows with a model as LLM requests. Other rows keep it in `data`.
    let model = found.model.clone();
    for (k, v) in attrs::to_map(attrs) {
        let identity = ctx.strip_identity && IDENTITY_ATTRIBUTES.contains(&k.as_str());
        if !TEXT_KEYS.contains(&k.as_str()) && !identity {
            data.entry(k).or_insert(v);
        }
    }
    strip_url_credentials(&mut data);
    data.insert("event_name".into(), name.clone().into());
    if let Some(t) = &found.tool_name {
        data.insert("tool_name".into(), t.clone().into());
    }
    if let Some(s) = found.success {
        data.insert("success".into(), s.into());
    }
    if let Some(a) = found.accepted {
        data.insert("accepted".into(), a.into());
    }
    for (key, n) in &found.counts {
        data.insert((*key).into(), (*n).into());
    }
    let figures = figures(ctx, &found, model.as_deref(), &mut data);
    let agent_version = text(ctx.resource, &["service.version"])
        .or_else(|| text(attrs, &["app.version"]))
        .unwrap_or_default();
    let severity = if found.error {
        pb::Severity::Error
    } else {
        pb::Severity::Unspecified
    };
    let project = text(ctx.resource, PROJECT_KEYS)
        .or_else(|| text(attrs, PROJECT_KEYS))
        .map(|p| crate::privacy::strip_url_userinfo(&p).unwrap_or(p));
    let timestamp = Some(crate::time::to_timestamp(ts));
    let sequence = int(attrs, &["event.sequence"])
        .and_then(|s| i32::try_from(s).ok())
        .unwrap_or(0)
        .max(0);
    let messages = found
        .texts
        .into_iter()
        .enumerate()
        .map(|(i, (role, content))| pb::ChatMessage {
            id: derived(&id, &[b"message", &[i as u8]]).to_string(),
            session_id: session.to_string(),
            role: role.into(),
            content,
            timestamp,
            // The order inside a record: the reply after its prompt.
            sequence: sequence.saturating_mul(2).saturating_add(i as i32),
            metadata_json:
                json!({ "source": "otlp", "event_name": name, "event_id": id.to_string() })
                    .to_string(),
            search_content: None,
        })
        .collect();
    Mapped {
        event: pb::AgentEvent {
            id: id.to_string(),
            timestamp,
            event_type: found.event_type.map(str::to_owned).unwrap_or(name),
            agent_id: agent.id().to_owned(),
            agent_version,
            session_id: session.to_string(),
            project: String::new(),
            context_json: ctx.context_json.clone(),
            data_json: Json::Object(data).to_string(),
            metrics_json: String::new(),
            parent_event_id: String::new(),
            related_event_ids: Vec::new(),
            tags: Vec::new(),
            severity: severity as i32,
            duration_ms: found.duration_ms.filter(|d| *d >= 0),
            input_tokens: figures.input.filter(|v| *v >= 0),
            output_tokens: figures.output,
            cached_tokens: figures.cached.filter(|v| *v >= 0),
            cost_usd: figures.cost.filter(|c| c.is_finite() && *c >= 0.0),
            user: user_of(ctx.resource, attrs),
            organization: organization_of(ctx.resource, attrs),
            model,
        },
        session,
        agent: agent.id().to_owned(),
        project,
        messages,
    }
}

/// An attribute whose whole value is a URL (`vcs.repository.url.full`,
/// a repository given as `project.name`) keeps no userinfo: CI remotes
/// carry tokens there. Counted as the redaction kind `url-userinfo`, with
/// redaction on or off; a URL inside longer text is the redaction rules'.
fn strip_url_credentials(map: &mut Map<String, Json>) {
    let mut stripped = 0;
    for v in map.values_mut() {
        if let Json::String(s) = v
            && let Some(clean) = crate::privacy::strip_url_userinfo(s)
            && !s.contains(char::is_whitespace)
        {
            *s = clean;
            stripped += 1;
        }
    }
    if stripped > 0 {
        crate::metrics::url_userinfo_stripped("agent_events", stripped);
    }
}

/// Attributes naming the developer, most stable first: Claude Code's
/// account id, then the GenAI conventions' user ids, then an email.
const USER_KEYS: &[&str] = &["user.account_uuid", "user.id", "enduser.id", "user.email"];

/// The developer a record names (on the record, else its resource).
fn user_of(resource: &[KeyValue], attrs: &[KeyValue]) -> Option<pb::User> {
    let either = |keys: &[&str]| text(attrs, keys).or_else(|| text(resource, keys));
    let key = either(USER_KEYS)?;
    Some(pb::User {
        key,
        display_name: either(&["user.name"]).unwrap_or_default(),
        email: either(&["user.email"]).unwrap_or_default(),
    })
}

/// Attributes naming the developer's organisation: Claude Code's
/// `organization.id`, else the tenant id of the general conventions.
const ORGANIZATION_KEYS: &[&str] = &["organization.id", "tenant.id"];

/// The organisation a record names (on the record, else its resource).
fn organization_of(resource: &[KeyValue], attrs: &[KeyValue]) -> Option<pb::Organization> {
    let either = |keys: &[&str]| text(attrs, keys).or_else(|| text(resource, keys));
    Some(pb::Organization {
        key: either(ORGANIZATION_KEYS)?,
        display_name: either(&["organization.name"]).unwrap_or_default(),
    })
}

/// A record's tokens and cost, normalised.
struct Figures {
    input: Option<i64>,
    output: Option<i64>,
    cached: Option<i64>,
    cost: Option<f64>,
}

/// The tokens the agent's rules found, and the cost the agent sent or, with
/// a model and tokens, the price table's estimate (`data.cost_source` says
/// which).
fn figures(
    ctx: &Context,
    found: &Found,
    model: Option<&str>,
    data: &mut Map<String, Json>,
) -> Figures {
    let (mut input, mut output, cached) = found.tokens.unwrap_or((None, None, None));
    let mut cost = found.cost;
    if cost.is_some() {
        data.insert("cost_source".into(), "agent".into());
    } else if let (Some(m), true) = (model, input.is_some() || output.is_some())
        && let Some(usd) = ctx.prices.estimate(
            m,
            crate::otlp::price::Tokens {
                input: input.unwrap_or(0),
                output: output.unwrap_or(0),
                cached: cached.unwrap_or(0),
                written: found.cache_written.unwrap_or(0),
            },
        )
    {
        cost = Some(usd);
        data.insert("cost_source".into(), "estimated".into());
    }
    if cached.is_some_and(|c| input.is_some_and(|i| c > i)) {
        // A cached count above the input would make the cached share > 100 %.
        input = cached;
    }
    if output.is_some_and(|o| o < 0) {
        output = None;
    }
    Figures {
        input,
        output,
        cached,
        cost,
    }
}

/// The record's session: its own id attribute (a UUID, or any text hashed
/// into one), else its trace (one trace is one agent turn), else one
/// session per agent and process.
pub(super) fn session_of(
    agent: &Agent,
    attrs: &[KeyValue],
    resource: &[KeyValue],
    trace: &[u8],
) -> Uuid {
    let named = text(attrs, SESSION_KEYS).or_else(|| text(resource, SESSION_KEYS));
    match named {
        Some(s) => Uuid::parse_str(&s).unwrap_or_else(|_| {
            derived(
                &Uuid::nil(),
                &[b"session", agent.id().as_bytes(), s.as_bytes()],
            )
        }),
        None if trace.len() == 16 && trace.iter().any(|b| *b != 0) => {
            derived(&Uuid::nil(), &[b"trace", trace])
        }
        None => {
            let instance =
                text(resource, &["service.instance.id", "host.name"]).unwrap_or_default();
            derived(
                &Uuid::nil(),
                &[b"process", agent.id().as_bytes(), instance.as_bytes()],
            )
        }
    }
}

pub(super) fn span_id(trace: &[u8], span: &[u8]) -> Uuid {
    derived(&Uuid::nil(), &[b"span", trace, span])
}

pub(super) fn content_id(signal: &[u8], ctx: &Context, record: &[u8]) -> Uuid {
    derived(&Uuid::nil(), &[signal, &ctx.resource_bytes, record])
}

/// A UUID (version 8) from a hash of `parts`: the same content always gets
/// the same id.
fn derived(base: &Uuid, parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new();
    h.update(base.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}
