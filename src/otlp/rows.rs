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
    agents::{Agent, Found, is_placeholder},
    attrs::{self, int, text},
};
use crate::{pb, price::PriceTable, privacy::IDENTITY_ATTRIBUTES};

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
        for key in NOT_IN_CONTEXT {
            context.remove(*key);
        }
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
    /// The agent installation the record names, if any
    /// (`installation_of`).
    pub installation: Option<String>,
    /// Whether the record names its session (else it is its trace's or
    /// its process's, and makes no agent session).
    pub session_named: bool,
}

/// Attributes that hold prompt or response text: they become chat
/// messages, not copies in `data`.
/// The content policy's `chat` mode governs the same keys in `data`.
const TEXT_KEYS: &[&str] = crate::intake::policy::OTLP_TEXT_ATTRIBUTES;

/// Attributes not kept in `data`: the agent's system prompt and tool
/// definitions, the same on every request of a session (Gemini CLI sends
/// 32 KiB and 15 KiB of them on every call and span).
const DEFINITION_KEYS: &[&str] = &[
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
    "gen_ai.agent.description",
];

/// Resource attributes not kept in `context`: the command line holds the
/// prompt itself when it is given with `-p` (Gemini CLI, Claude Code),
/// whether prompts are logged or not.
const NOT_IN_CONTEXT: &[&str] = &["process.command_args", "process.command"];

/// Attributes naming a record's session. Not OpenTelemetry's `thread.id`:
/// that is the thread of execution (Codex puts it on each of its spans),
/// and it would make a session per thread number.
const SESSION_KEYS: &[&str] = &[
    "session.id",
    "conversation.id",
    "gen_ai.conversation.id",
    "copilot_chat.session_id",
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
    let (ts, mut id, session, mut data) = (draft.ts, draft.id, draft.session, draft.data);
    if let Some((kind, key)) = &found.row_key {
        id = crate::ids::agent_row(agent.id(), kind, key);
    }
    // Only request rows (and failed requests) name a model: the dashboards
    // count rows with a model as LLM requests. Other rows keep it in `data`.
    let model = found.model.clone();
    for (k, v) in attrs::to_map(attrs) {
        let identity = ctx.strip_identity && IDENTITY_ATTRIBUTES.contains(&k.as_str());
        if !TEXT_KEYS.contains(&k.as_str()) && !DEFINITION_KEYS.contains(&k.as_str()) && !identity {
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
    let agent_version = agent_version(&agent, ctx.resource, attrs);
    let severity = if found.error {
        pb::Severity::Error
    } else {
        pb::Severity::Unspecified
    };
    let project = text(ctx.resource, PROJECT_KEYS)
        .or_else(|| text(attrs, PROJECT_KEYS))
        .map(|p| crate::privacy::strip_url_userinfo(&p).unwrap_or(p));
    let timestamp = Some(crate::time::to_timestamp(ts));
    let sequence = message_sequence(attrs, ts);
    let messages = found
        .texts
        .into_iter()
        .filter(|(_, content)| !is_placeholder(content))
        .enumerate()
        .map(|(i, (role, content))| pb::ChatMessage {
            id: match (&found.message_key, i) {
                (Some(key), 0) => crate::ids::agent_row(agent.id(), "message", key),
                _ => derived(&id, &[b"message", &[i as u8]]),
            }
            .to_string(),
            session_id: session.to_string(),
            role: role.into(),
            content,
            timestamp,
            // The order inside a record: the reply after its prompt.
            sequence: sequence.saturating_add(i as i32),
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
            user: user_of(&agent, ctx.resource, attrs),
            organization: organization_of(ctx.resource, attrs),
            model,
        },
        session,
        installation: installation_of(&agent, ctx.resource, attrs),
        session_named: names_session(attrs, ctx.resource),
        agent: agent.id().to_owned(),
        project,
        messages,
    }
}

/// The agent's own version: `service.version`, else `app.version`. Gemini
/// CLI's `service.version` is Node's (`v20.20.2`, `process.version`), and
/// its own version is not in its telemetry: a runtime's version is never
/// the agent's, so it stays empty.
fn agent_version(agent: &Agent, resource: &[KeyValue], attrs: &[KeyValue]) -> String {
    let runtime = text(resource, &["process.runtime.version"]);
    let is_runtime = |v: &str| {
        runtime
            .as_deref()
            .is_some_and(|r| v.trim_start_matches('v') == r.trim_start_matches('v'))
            || (*agent == Agent::GeminiCli && v.starts_with('v'))
    };
    text(resource, &["service.version"])
        .filter(|v| !is_runtime(v))
        .or_else(|| text(attrs, &["app.version"]))
        .unwrap_or_default()
}

/// Where a record's chat messages stand in their session: Claude Code
/// numbers its events (`event.sequence`), the others follow their time
/// ([`crate::time::message_sequence`]).
fn message_sequence(attrs: &[KeyValue], ts: SystemTime) -> i32 {
    crate::time::message_sequence(int(attrs, &["event.sequence"]), ts)
}

/// The installation a record comes from, where the agent names one:
/// Claude Code's `user.id` (a hash per installation, all it sends with an
/// API key) and Gemini CLI's `installation.id`. A machine's identity, not
/// a person's: the developer of last resort ([`MACHINE_PREFIX`]) and the
/// machine of a workspace when the resource names no host.
fn installation_of(agent: &Agent, resource: &[KeyValue], attrs: &[KeyValue]) -> Option<String> {
    let key = match agent {
        Agent::ClaudeCode => "user.id",
        Agent::GeminiCli => "installation.id",
        _ => return None,
    };
    text(attrs, &[key]).or_else(|| text(resource, &[key]))
}

/// What a developer key made of an installation id starts with: it names
/// a machine, and can be merged into a person later (`users merge`).
pub const MACHINE_PREFIX: &str = "machine:";

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

/// Attributes naming the developer, most stable first: the account
/// (Claude Code's `user.account_uuid`, Codex's `user.account_id`), the
/// user id of the general conventions, then an email. Claude Code's
/// `user.id` is not a person's: it names its installation.
const USER_KEYS: &[&str] = &[
    "user.account_uuid",
    "user.account_id",
    "enduser.id",
    "user.id",
    "user.email",
];

/// The developer a record names (on the record, else its resource); an
/// installation id is no developer here: it is the last resort, after the
/// API key's developer ([`super::OtlpIntake`] decides).
fn user_of(agent: &Agent, resource: &[KeyValue], attrs: &[KeyValue]) -> Option<pb::User> {
    let either = |keys: &[&str]| text(attrs, keys).or_else(|| text(resource, keys));
    let keys: Vec<&str> = USER_KEYS
        .iter()
        .copied()
        .filter(|k| !(*agent == Agent::ClaudeCode && *k == "user.id"))
        .collect();
    let key = either(&keys)?;
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
    } else if let (Some(m), true) = (model, input.is_some() || output.is_some()) {
        let tokens = crate::price::Tokens {
            input: input.unwrap_or(0),
            output: output.unwrap_or(0),
            cached: cached.unwrap_or(0),
            written: found.cache_written.unwrap_or(0),
        };
        match ctx.prices.estimate(m, tokens) {
            Some(usd) => {
                cost = Some(usd);
                data.insert("cost_source".into(), "estimated".into());
            }
            // A table that lacks the model says so, once, and the row
            // says it has no price, rather than a cost of 0.
            None if !ctx.prices.is_empty() => {
                ctx.prices.report_missing(m);
                crate::metrics::unpriced_request();
                data.insert("cost_source".into(), "unpriced".into());
            }
            None => {}
        }
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

/// Whether the record or its resource names its session.
pub(super) fn names_session(attrs: &[KeyValue], resource: &[KeyValue]) -> bool {
    text(attrs, SESSION_KEYS)
        .or_else(|| text(resource, SESSION_KEYS))
        .is_some()
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
