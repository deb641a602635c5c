//! From OpenTelemetry records to the service's own rows: one log record,
//! span or metric data point becomes one [`pb::AgentEvent`], plus a
//! [`pb::ChatMessage`] for each prompt or response text it carries.
//!
//! The rules (docs/otlp.md has the full table):
//! - the agent comes from `service.name`, else from the event name's prefix;
//! - the event name from `event.name`, else the LogRecord's event name, else
//!   its body;
//! - tokens are normalised to one definition: `input_tokens` counts every
//!   prompt token *including* cached ones, `cached_tokens` is the cached part,
//!   `output_tokens` includes reasoning tokens;
//! - token and cost columns are filled only from each agent's per-request
//!   record (Claude Code `api_request`, Gemini CLI `api_response`, Codex
//!   `sse_event` of kind `response.completed`, GenAI `chat` spans, an
//!   OpenInference LLM span, a GenAI inference event outside any span).
//!   Totals that repeat them (an `invoke_agent` span, metrics) go to `data`
//!   only, so that nothing is counted twice;
//! - every attribute is kept in `data`; unknown events are stored with their
//!   own name as `event_type`.
//!
//! Row ids are derived from the record's content, so an exporter's retry of
//! the same request is recognised as duplicates, not stored twice.

use std::time::SystemTime;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord,
    metrics::v1::{Metric, metric::Data, number_data_point},
    trace::v1::{Span, status::StatusCode},
};
use prost::Message;
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    attrs::{self, boolean, float, int, text},
    price::PriceTable,
};
use crate::pb;

/// The agents whose telemetry is mapped field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    ClaudeCode,
    GeminiCli,
    Codex,
    Copilot,
    /// Anything else, by its `service.name`.
    Other(String),
}

impl Agent {
    pub fn id(&self) -> &str {
        match self {
            Agent::ClaudeCode => "claude-code",
            Agent::GeminiCli => "gemini-cli",
            Agent::Codex => "codex",
            Agent::Copilot => "github-copilot",
            Agent::Other(name) => name,
        }
    }

    fn detect(resource: &[KeyValue], name: &str, record: &[KeyValue]) -> Agent {
        let service = text(resource, &["service.name"])
            .unwrap_or_default()
            .to_ascii_lowercase();
        let by_service = match service.as_str() {
            s if s.starts_with("claude-code") || s.starts_with("claude_code") => {
                Some(Agent::ClaudeCode)
            }
            s if s.starts_with("gemini-cli") || s.starts_with("gemini_cli") => {
                Some(Agent::GeminiCli)
            }
            s if s.starts_with("codex") => Some(Agent::Codex),
            s if s.contains("copilot") => Some(Agent::Copilot),
            _ => None,
        };
        by_service.unwrap_or_else(|| {
            if name.starts_with("claude_code.") {
                Agent::ClaudeCode
            } else if name.starts_with("gemini_cli.") {
                Agent::GeminiCli
            } else if name.starts_with("codex.") {
                Agent::Codex
            } else if name.starts_with("copilot_chat.")
                || record.iter().any(|kv| {
                    kv.key.starts_with("github.copilot.") || kv.key.starts_with("copilot_chat.")
                })
            {
                Agent::Copilot
            } else if service.is_empty() || service.starts_with("unknown_service") {
                Agent::Other("unknown".into())
            } else {
                Agent::Other(service)
            }
        })
    }
}

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
}

impl<'a> Context<'a> {
    pub fn new(
        resource: &'a [KeyValue],
        scope: &str,
        prices: &'a PriceTable,
        now: SystemTime,
    ) -> Self {
        let mut context = attrs::to_map(resource);
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

/// Event types of the native API that OTLP records map to.
pub mod kind {
    pub const LLM_REQUEST: &str = "llm_request";
    pub const TOOL_USE: &str = "tool_use";
    pub const TOOL_DECISION: &str = "tool_decision";
    pub const USER_PROMPT: &str = "user_prompt";
    pub const ERROR: &str = "error_encountered";
    pub const AGENT_INVOCATION: &str = "agent_invocation";
    pub const METRIC: &str = "metric";
}

/// What the agent-specific rules found in a record.
#[derive(Default)]
struct Found {
    event_type: Option<&'static str>,
    model: Option<String>,
    /// (input including cached, output including reasoning, cached).
    tokens: Option<(Option<i64>, Option<i64>, Option<i64>)>,
    cost: Option<f64>,
    duration_ms: Option<i64>,
    tool_name: Option<String>,
    success: Option<bool>,
    error: bool,
    /// (role, text) to store as chat messages.
    texts: Vec<(&'static str, String)>,
}

/// Attributes that hold prompt or response text: they become chat
/// messages, not copies in `data`.
const TEXT_KEYS: &[&str] = &[
    "prompt",
    "response_text",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "input.value",
    "output.value",
];

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

pub fn log_record(ctx: &Context, rec: &LogRecord) -> Mapped {
    let attrs = rec.attributes.as_slice();
    let body = rec.body.as_ref().and_then(|b| b.value.as_ref());
    let raw_name = text(attrs, &["event.name"])
        .or_else(|| (!rec.event_name.is_empty()).then(|| rec.event_name.clone()))
        .or_else(|| body.and_then(attrs::value_text))
        .unwrap_or_else(|| "log".into());
    let agent = Agent::detect(ctx.resource, &raw_name, attrs);
    // Claude Code's `event.name` is the bare name ("api_request"); its body
    // has the full one.
    let name = match &agent {
        Agent::ClaudeCode if !raw_name.starts_with("claude_code.") => {
            format!("claude_code.{raw_name}")
        }
        _ => raw_name,
    };
    let mut found = match (&agent, name.as_str()) {
        (Agent::ClaudeCode, n) => claude(n, attrs),
        (Agent::GeminiCli, n) => gemini(n, attrs),
        (Agent::Codex, n) => codex(n, attrs),
        (_, "gen_ai.client.inference.operation.details") => {
            // Inside a span, the span is the request's row (Copilot sends
            // both): this event's figures stay in `data`.
            let mut f = genai_request(attrs);
            if !rec.span_id.is_empty() {
                f.tokens = None;
                f.event_type = None;
                f.model = None;
            }
            f
        }
        (Agent::Copilot, "copilot_chat.tool.call") => Found {
            event_type: Some(kind::TOOL_USE),
            ..tool(attrs, &["gen_ai.tool.name"])
        },
        _ => Found::default(),
    };
    if rec.severity_number >= 17 {
        found.error = true;
    }
    let nanos = [rec.time_unix_nano, rec.observed_time_unix_nano]
        .into_iter()
        .find(|t| *t > 0);
    let ts = nanos.map(crate::time::from_unix_nanos).unwrap_or(ctx.now);
    let mut data = Map::new();
    if let Some(b) = rec.body.as_ref().filter(|_| body.is_some())
        && attrs::value_text(body.expect("checked")).as_deref() != Some(name.as_str())
    {
        data.insert("body".into(), attrs::to_json(b));
    }
    if !rec.trace_id.is_empty() {
        data.insert("trace_id".into(), attrs::hex(&rec.trace_id).into());
        data.insert("span_id".into(), attrs::hex(&rec.span_id).into());
    }
    let id = content_id(b"log", ctx, &rec.encode_to_vec());
    let session = session_of(&agent, attrs, ctx.resource, &rec.trace_id);
    finish(ctx, agent, name, attrs, found, ts, id, session, data)
}

pub fn span(ctx: &Context, span: &Span) -> Mapped {
    let attrs = span.attributes.as_slice();
    let op = text(attrs, &["gen_ai.operation.name"]).unwrap_or_else(|| {
        span.name
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let agent = Agent::detect(ctx.resource, &op, attrs);
    let oi_kind = text(attrs, &["openinference.span.kind"]).map(|k| k.to_ascii_uppercase());
    // Claude Code, Gemini CLI and Codex put each request's figures in their
    // logs: their spans (beta tracing, internal spans) would count them a
    // second time, so they are stored under their names without figures.
    let logs_carry_figures = matches!(agent, Agent::ClaudeCode | Agent::GeminiCli | Agent::Codex);
    let mut found = match (oi_kind.as_deref(), op.as_str()) {
        _ if logs_carry_figures => Found::default(),
        (Some(k), _) => openinference(k, attrs),
        (None, "chat" | "text_completion" | "generate_content" | "embeddings") => {
            genai_request(attrs)
        }
        (None, "execute_tool") => Found {
            event_type: Some(kind::TOOL_USE),
            ..tool(attrs, &["gen_ai.tool.name"])
        },
        (None, "invoke_agent" | "create_agent") => Found {
            event_type: Some(kind::AGENT_INVOCATION),
            texts: genai_texts(attrs),
            ..Found::default()
        },
        _ => Found::default(),
    };
    let start = crate::time::from_unix_nanos(span.start_time_unix_nano);
    if span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0 {
        found.duration_ms =
            Some(((span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000) as i64);
    }
    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    if failed || attrs::get(attrs, "error.type").is_some() {
        found.error = true;
        if found.event_type == Some(kind::TOOL_USE) {
            found.success = Some(false);
        }
    } else if found.event_type == Some(kind::TOOL_USE) && found.success.is_none() {
        found.success = Some(true);
    }
    let ts = if span.start_time_unix_nano > 0 {
        start
    } else {
        ctx.now
    };
    let mut data = Map::new();
    data.insert("span_name".into(), span.name.clone().into());
    data.insert("trace_id".into(), attrs::hex(&span.trace_id).into());
    data.insert("span_id".into(), attrs::hex(&span.span_id).into());
    let mut event_parent = None;
    if !span.parent_span_id.is_empty() {
        data.insert(
            "parent_span_id".into(),
            attrs::hex(&span.parent_span_id).into(),
        );
        event_parent = Some(span_id(&span.trace_id, &span.parent_span_id));
    }
    let name = if op.is_empty() { span.name.clone() } else { op };
    let id = span_id(&span.trace_id, &span.span_id);
    let session = session_of(&agent, attrs, ctx.resource, &span.trace_id);
    let mut mapped = finish(ctx, agent, name, attrs, found, ts, id, session, data);
    if let Some(parent) = event_parent {
        mapped.event.parent_event_id = parent.to_string();
    }
    mapped
}

/// Metric data points are stored as `metric` rows: their figures in
/// `metrics`, never in the token or cost columns (the per-request events
/// carry those; adding both would count twice).
pub fn metric(ctx: &Context, metric: &Metric) -> Vec<Mapped> {
    let agent_hint = Agent::detect(ctx.resource, &metric.name, &[]);
    let mut out = Vec::new();
    let mut point = |attrs: &[KeyValue], time: u64, figures: Json, encoded: Vec<u8>| {
        let agent = match &agent_hint {
            Agent::Other(_) => Agent::detect(ctx.resource, &metric.name, attrs),
            a => a.clone(),
        };
        let mut data = Map::new();
        data.insert("metric".into(), metric.name.clone().into());
        if !metric.unit.is_empty() {
            data.insert("unit".into(), metric.unit.clone().into());
        }
        let mut seed = metric.name.clone().into_bytes();
        seed.extend(encoded);
        let id = content_id(b"metric", ctx, &seed);
        let session = session_of(&agent, attrs, ctx.resource, &[]);
        let ts = if time > 0 {
            crate::time::from_unix_nanos(time)
        } else {
            ctx.now
        };
        let found = Found {
            event_type: Some(kind::METRIC),
            ..Found::default()
        };
        let mut m = finish(
            ctx,
            agent,
            metric.name.clone(),
            attrs,
            found,
            ts,
            id,
            session,
            data,
        );
        m.event.metrics_json = figures.to_string();
        out.push(m);
    };
    let number = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsInt(i)) => json!(i),
        Some(number_data_point::Value::AsDouble(d)) => json!(d),
        None => Json::Null,
    };
    match &metric.data {
        Some(Data::Sum(s)) => {
            for p in &s.data_points {
                let figures = json!({
                    "value": number(&p.value),
                    "temporality": temporality(s.aggregation_temporality),
                    "monotonic": s.is_monotonic,
                });
                point(&p.attributes, p.time_unix_nano, figures, p.encode_to_vec());
            }
        }
        Some(Data::Gauge(g)) => {
            for p in &g.data_points {
                let figures = json!({ "value": number(&p.value) });
                point(&p.attributes, p.time_unix_nano, figures, p.encode_to_vec());
            }
        }
        Some(Data::Histogram(h)) => {
            for p in &h.data_points {
                let figures = json!({
                    "count": p.count, "sum": p.sum, "min": p.min, "max": p.max,
                    "temporality": temporality(h.aggregation_temporality),
                });
                point(&p.attributes, p.time_unix_nano, figures, p.encode_to_vec());
            }
        }
        Some(Data::ExponentialHistogram(h)) => {
            for p in &h.data_points {
                let figures = json!({
                    "count": p.count, "sum": p.sum, "min": p.min, "max": p.max,
                    "temporality": temporality(h.aggregation_temporality),
                });
                point(&p.attributes, p.time_unix_nano, figures, p.encode_to_vec());
            }
        }
        Some(Data::Summary(s)) => {
            for p in &s.data_points {
                let figures = json!({ "count": p.count, "sum": p.sum });
                point(&p.attributes, p.time_unix_nano, figures, p.encode_to_vec());
            }
        }
        None => {}
    }
    out
}

/// How many rows a metric yields (one per data point).
pub fn metric_points(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

fn temporality(t: i32) -> &'static str {
    match t {
        1 => "delta",
        2 => "cumulative",
        _ => "unspecified",
    }
}

// --- per agent -----------------------------------------------------------

/// Claude Code: `input_tokens` excludes the cache, so input is
/// input + cache read + cache creation.
fn claude(name: &str, a: &[KeyValue]) -> Found {
    match name {
        "claude_code.api_request" => {
            let fresh = int(a, &["input_tokens"]);
            let read = int(a, &["cache_read_tokens"]);
            let created = int(a, &["cache_creation_tokens"]);
            let input = (fresh.is_some() || read.is_some() || created.is_some())
                .then(|| fresh.unwrap_or(0) + read.unwrap_or(0) + created.unwrap_or(0));
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: Some((input, int(a, &["output_tokens"]), read)),
                cost: float(a, &["cost_usd"]),
                duration_ms: int(a, &["duration_ms"]),
                ..Found::default()
            }
        }
        "claude_code.api_error" => Found {
            event_type: Some(kind::ERROR),
            model: text(a, &["model"]),
            duration_ms: int(a, &["duration_ms"]),
            error: true,
            ..Found::default()
        },
        "claude_code.tool_result" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            ..tool(a, &["tool_name"])
        },
        "claude_code.tool_decision" => Found {
            event_type: Some(kind::TOOL_DECISION),
            tool_name: text(a, &["tool_name"]),
            ..Found::default()
        },
        "claude_code.user_prompt" => prompt(a),
        _ => Found::default(),
    }
}

/// Gemini CLI: `input_token_count` is the whole prompt (cached included);
/// thoughts are output the model generated, so they join output.
fn gemini(name: &str, a: &[KeyValue]) -> Found {
    match name {
        "gemini_cli.api_response" => {
            let out = int(a, &["output_token_count"]);
            let thoughts = int(a, &["thoughts_token_count"]);
            let output = (out.is_some() || thoughts.is_some())
                .then(|| out.unwrap_or(0) + thoughts.unwrap_or(0));
            let failed =
                int(a, &["status_code"]).is_some_and(|c| c >= 400) || text(a, &["error"]).is_some();
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: Some((
                    int(a, &["input_token_count"]),
                    output,
                    int(a, &["cached_content_token_count"]),
                )),
                duration_ms: int(a, &["duration_ms"]),
                error: failed,
                texts: text(a, &["response_text"])
                    .map(|t| vec![("assistant", t)])
                    .unwrap_or_default(),
                ..Found::default()
            }
        }
        "gemini_cli.api_error" => Found {
            event_type: Some(kind::ERROR),
            model: text(a, &["model"]),
            duration_ms: int(a, &["duration_ms"]),
            error: true,
            ..Found::default()
        },
        "gemini_cli.tool_call" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            ..tool(a, &["function_name", "tool_name"])
        },
        "gemini_cli.user_prompt" => prompt(a),
        _ => Found::default(),
    }
}

/// Codex: tokens come on the `sse_event` of kind `response.completed`
/// (OpenAI's input includes cached tokens, output includes reasoning);
/// numbers arrive as strings.
fn codex(name: &str, a: &[KeyValue]) -> Found {
    match name {
        "codex.sse_event" if text(a, &["event.kind"]).as_deref() == Some("response.completed") => {
            Found {
                event_type: Some(kind::LLM_REQUEST),
                model: text(a, &["model"]),
                tokens: Some((
                    int(a, &["input_token_count"]),
                    int(a, &["output_token_count"]),
                    int(a, &["cached_token_count"]),
                )),
                duration_ms: int(a, &["duration_ms"]),
                ..Found::default()
            }
        }
        "codex.sse_event" | "codex.api_request" if text(a, &["error.message"]).is_some() => Found {
            model: text(a, &["model"]),
            error: true,
            ..Found::default()
        },
        "codex.tool_result" => Found {
            event_type: Some(kind::TOOL_USE),
            duration_ms: int(a, &["duration_ms"]),
            ..tool(a, &["tool_name"])
        },
        "codex.tool_decision" => Found {
            event_type: Some(kind::TOOL_DECISION),
            tool_name: text(a, &["tool_name"]),
            ..Found::default()
        },
        "codex.user_prompt" => prompt(a),
        _ => Found::default(),
    }
}

/// A GenAI semantic-conventions request (a `chat` span, an inference
/// event): `gen_ai.usage.input_tokens` includes cached tokens by the
/// conventions' definition.
fn genai_request(a: &[KeyValue]) -> Found {
    Found {
        event_type: Some(kind::LLM_REQUEST),
        model: text(a, &["gen_ai.response.model", "gen_ai.request.model"]),
        tokens: Some((
            int(
                a,
                &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"],
            ),
            int(
                a,
                &[
                    "gen_ai.usage.output_tokens",
                    "gen_ai.usage.completion_tokens",
                ],
            ),
            int(a, &["gen_ai.usage.cache_read.input_tokens"]),
        )),
        error: attrs::get(a, "error.type").is_some(),
        ..Found::default()
    }
}

/// OpenInference spans: `llm.token_count.prompt` includes cached tokens.
fn openinference(kind_: &str, a: &[KeyValue]) -> Found {
    match kind_ {
        "LLM" => Found {
            event_type: Some(kind::LLM_REQUEST),
            model: text(a, &["llm.model_name"]),
            tokens: Some((
                int(a, &["llm.token_count.prompt"]),
                int(a, &["llm.token_count.completion"]),
                int(a, &["llm.token_count.prompt_details.cache_read"]),
            )),
            cost: float(a, &["llm.cost.total"]),
            ..Found::default()
        },
        "TOOL" => Found {
            event_type: Some(kind::TOOL_USE),
            ..tool(a, &["tool.name"])
        },
        "AGENT" => Found {
            event_type: Some(kind::AGENT_INVOCATION),
            texts: [("user", "input.value"), ("assistant", "output.value")]
                .into_iter()
                .filter_map(|(role, key)| text(a, &[key]).map(|t| (role, t)))
                .collect(),
            ..Found::default()
        },
        _ => Found::default(),
    }
}

fn tool(a: &[KeyValue], name_keys: &[&str]) -> Found {
    Found {
        tool_name: text(a, name_keys),
        success: boolean(a, &["success"]),
        duration_ms: int(a, &["duration_ms"]),
        ..Found::default()
    }
}

fn prompt(a: &[KeyValue]) -> Found {
    Found {
        event_type: Some(kind::USER_PROMPT),
        texts: text(a, &["prompt"])
            .map(|t| vec![("user", t)])
            .unwrap_or_default(),
        ..Found::default()
    }
}

/// The last user message of `gen_ai.input.messages` and the assistant's
/// reply in `gen_ai.output.messages` (JSON text, or structured values).
fn genai_texts(a: &[KeyValue]) -> Vec<(&'static str, String)> {
    let parse = |key: &str| -> Option<Json> {
        match attrs::get(a, key)? {
            Value::StringValue(s) => serde_json::from_str(s).ok(),
            other => Some(attrs::to_json(&AnyValue {
                value: Some(other.clone()),
            })),
        }
    };
    let text_of = |msg: &Json| -> Option<String> {
        let parts = msg.get("parts").and_then(Json::as_array)?;
        let t: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("content").and_then(Json::as_str))
            .collect();
        (!t.is_empty()).then(|| t.join("\n"))
    };
    let last_of = |v: Option<Json>, role: &str| -> Option<String> {
        v?.as_array()?
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Json::as_str) == Some(role))
            .and_then(text_of)
    };
    let mut out = Vec::new();
    if let Some(t) = last_of(parse("gen_ai.input.messages"), "user") {
        out.push(("user", t));
    }
    if let Some(t) = last_of(parse("gen_ai.output.messages"), "assistant") {
        out.push(("assistant", t));
    }
    out
}

// --- common --------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &Context,
    agent: Agent,
    name: String,
    attrs: &[KeyValue],
    found: Found,
    ts: SystemTime,
    id: Uuid,
    session: Uuid,
    mut data: Map<String, Json>,
) -> Mapped {
    // Only request rows (and failed requests) name a model: the dashboards
    // count rows with a model as LLM requests. Other rows keep it in `data`.
    let model = found.model;
    for (k, v) in attrs::to_map(attrs) {
        if !TEXT_KEYS.contains(&k.as_str()) {
            data.entry(k).or_insert(v);
        }
    }
    data.insert("event_name".into(), name.clone().into());
    if let Some(t) = &found.tool_name {
        data.insert("tool_name".into(), t.clone().into());
    }
    if let Some(s) = found.success {
        data.insert("success".into(), s.into());
    }
    let (mut input, mut output, mut cached) = (None, None, None);
    if let Some((i, o, c)) = found.tokens {
        (input, output, cached) = (i, o, c);
    }
    let mut cost = found.cost;
    if cost.is_some() {
        data.insert("cost_source".into(), "agent".into());
    } else if let (Some(m), true) = (&model, input.is_some() || output.is_some())
        && let Some(usd) = ctx.prices.estimate(
            m,
            input.unwrap_or(0),
            output.unwrap_or(0),
            cached.unwrap_or(0),
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
    let agent_version = text(ctx.resource, &["service.version"])
        .or_else(|| text(attrs, &["app.version"]))
        .unwrap_or_default();
    let severity = if found.error {
        pb::Severity::Error
    } else {
        pb::Severity::Unspecified
    };
    let project = text(ctx.resource, PROJECT_KEYS).or_else(|| text(attrs, PROJECT_KEYS));
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
            input_tokens: input.filter(|v| *v >= 0),
            output_tokens: output,
            cached_tokens: cached.filter(|v| *v >= 0),
            cost_usd: cost.filter(|c| c.is_finite() && *c >= 0.0),
            model,
        },
        session,
        agent: agent.id().to_owned(),
        project,
        messages,
    }
}

/// The record's session: its own id attribute (a UUID, or any text hashed
/// into one), else its trace (one trace is one agent turn), else one
/// session per agent and process.
fn session_of(agent: &Agent, attrs: &[KeyValue], resource: &[KeyValue], trace: &[u8]) -> Uuid {
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

fn span_id(trace: &[u8], span: &[u8]) -> Uuid {
    derived(&Uuid::nil(), &[b"span", trace, span])
}

fn content_id(signal: &[u8], ctx: &Context, record: &[u8]) -> Uuid {
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    use super::*;

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(v.into()))
    }

    fn i(key: &str, v: i64) -> KeyValue {
        kv(key, Value::IntValue(v))
    }

    fn ctx<'a>(resource: &'a [KeyValue], prices: &'a PriceTable) -> Context<'a> {
        Context::new(
            resource,
            "test",
            prices,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
    }

    fn span_with(name: &str, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_001_500_000_000,
            attributes,
            ..Default::default()
        }
    }

    #[test]
    fn spans_of_agents_whose_logs_carry_the_figures_count_nothing() {
        let prices = PriceTable::default();
        let resource = [s("service.name", "claude-code")];
        let m = span(
            &ctx(&resource, &prices),
            &span_with(
                "claude_code.llm_request",
                vec![
                    s("gen_ai.operation.name", "chat"),
                    s("gen_ai.request.model", "claude-sonnet-4-5"),
                    i("gen_ai.usage.input_tokens", 100),
                ],
            ),
        );
        assert_eq!(m.event.event_type, "chat");
        assert_eq!(m.event.model, None);
        assert_eq!(m.event.input_tokens, None);
        assert_eq!(m.event.duration_ms, Some(1500));
    }

    #[test]
    fn openinference_llm_span_keeps_its_cost_and_a_text_session_is_stable() {
        let prices = PriceTable::default();
        let resource = [s("service.name", "my-rag-app")];
        let attrs = vec![
            s("openinference.span.kind", "LLM"),
            s("llm.model_name", "gpt-4o-mini"),
            i("llm.token_count.prompt", 900),
            s("llm.token_count.completion", "100"),
            kv("llm.cost.total", Value::DoubleValue(0.0042)),
            s("session.id", "chat-42"),
        ];
        let a = span(
            &ctx(&resource, &prices),
            &span_with("ChatOpenAI", attrs.clone()),
        );
        assert_eq!(a.event.event_type, kind::LLM_REQUEST);
        assert_eq!(a.agent, "my-rag-app");
        assert_eq!(
            (a.event.input_tokens, a.event.output_tokens),
            (Some(900), Some(100))
        );
        assert_eq!(a.event.cost_usd, Some(0.0042));
        let b = span(&ctx(&resource, &prices), &span_with("other", attrs));
        assert_eq!(a.session, b.session, "the same session text, the same UUID");
        assert_eq!(a.session.get_version_num(), 8);
    }

    #[test]
    fn an_inference_event_inside_its_span_does_not_repeat_the_span() {
        let prices = PriceTable::default();
        let resource = [s("service.name", "some-genai-app")];
        let attrs = vec![
            s("event.name", "gen_ai.client.inference.operation.details"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 10),
            i("gen_ai.usage.output_tokens", 5),
        ];
        let mut rec = LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000,
            attributes: attrs,
            ..Default::default()
        };
        let alone = log_record(&ctx(&resource, &prices), &rec);
        assert_eq!(alone.event.event_type, kind::LLM_REQUEST);
        assert_eq!(alone.event.input_tokens, Some(10));
        rec.trace_id = vec![1; 16];
        rec.span_id = vec![2; 8];
        let inside = log_record(&ctx(&resource, &prices), &rec);
        assert_eq!(
            inside.event.event_type,
            "gen_ai.client.inference.operation.details"
        );
        assert_eq!(
            (inside.event.input_tokens, inside.event.model),
            (None, None)
        );
        assert!(
            inside
                .event
                .data_json
                .contains("\"gen_ai.usage.input_tokens\":10")
        );
    }

    #[test]
    fn the_same_record_gets_the_same_id_and_a_changed_one_another() {
        let prices = PriceTable::default();
        let resource = [s("service.name", "gemini-cli")];
        let rec = LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000,
            attributes: vec![
                s("event.name", "gemini_cli.tool_call"),
                s("function_name", "ls"),
            ],
            ..Default::default()
        };
        let a = log_record(&ctx(&resource, &prices), &rec);
        let b = log_record(&ctx(&resource, &prices), &rec);
        assert_eq!(a.event.id, b.event.id);
        let mut other = rec.clone();
        other.time_unix_nano += 1;
        assert_ne!(
            log_record(&ctx(&resource, &prices), &other).event.id,
            a.event.id
        );
    }
}
