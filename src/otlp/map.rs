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

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    logs::v1::LogRecord,
    metrics::v1::{Metric, metric::Data, number_data_point},
    trace::v1::{Span, status::StatusCode},
};
use prost::Message;
use serde_json::{Map, Value as Json, json};

use super::{
    agents::{self, Found},
    attrs::{self, text},
    rows::{Draft, build, content_id, names_session, session_of, span_id},
};
pub use super::{
    agents::{Agent, kind},
    rows::{Context, MACHINE_PREFIX, Mapped},
};

/// A name, as an event type: no sentence (a log message in the body) and
/// no code location (Codex's `eventName` is "event otel/src/…rs:324").
fn as_name(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && !s.contains(char::is_whitespace)).then(|| s.to_owned())
}

/// One log record's rows, or None when it is not stored ([`Found::ignored`];
/// a record of an agent mapped here that names no event is its debug
/// output).
pub fn log_record(ctx: &Context, rec: &LogRecord) -> Option<Mapped> {
    let attrs = rec.attributes.as_slice();
    let body = rec.body.as_ref().and_then(|b| b.value.as_ref());
    let named = text(attrs, &["event.name"])
        .or_else(|| as_name(&rec.event_name))
        .or_else(|| {
            body.and_then(attrs::value_text)
                .as_deref()
                .and_then(as_name)
        });
    let agent = Agent::detect(ctx.resource, named.as_deref().unwrap_or(""), attrs);
    if named.is_none() && agent.logs_carry_figures() {
        return None;
    }
    let raw_name = named.unwrap_or_else(|| "log".into());
    // Claude Code's `event.name` is the bare name ("api_request"); its body
    // has the full one.
    let name = match &agent {
        Agent::ClaudeCode if !raw_name.starts_with("claude_code.") => {
            format!("claude_code.{raw_name}")
        }
        _ => raw_name,
    };
    let mut found = match (&agent, name.as_str()) {
        (Agent::ClaudeCode, n) => agents::claude(n, attrs),
        (Agent::GeminiCli, n) => agents::gemini(n, attrs),
        (Agent::Codex, n) => agents::codex(n, attrs),
        (_, "gen_ai.client.inference.operation.details") => {
            // Inside a span, the span is the request's row (Copilot sends
            // both): this event's figures stay in `data`.
            let mut f = agents::genai_request(attrs);
            if !rec.span_id.is_empty() {
                f.tokens = None;
                f.event_type = None;
                f.model = None;
            }
            f
        }
        // Copilot Chat emits this event and an `execute_tool` span for
        // one call, the span with the call id and its place in the turn:
        // the span is the call's row, and this event's figures stay in
        // `data` (Copilot exports traces by default).
        (Agent::Copilot, "copilot_chat.tool.call") => Found {
            tool_name: text(attrs, &["gen_ai.tool.name"]),
            ..Found::default()
        },
        // A GenAI operation's exception: the error of its own, unless it
        // was raised inside a span, whose row is already the error.
        (_, "gen_ai.client.operation.exception") => Found {
            event_type: rec.span_id.is_empty().then_some(kind::ERROR),
            error: rec.span_id.is_empty(),
            ..Found::default()
        },
        _ => Found::default(),
    };
    if found.ignored {
        return None;
    }
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
    let mut mapped = build(
        ctx,
        Draft {
            agent,
            name,
            attrs,
            found,
            ts,
            id,
            session,
            data,
        },
    );
    // A record emitted inside a span (Claude Code's events with tracing on)
    // hangs under that span's row in the drill-down.
    if rec.span_id.len() == 8 && rec.span_id.iter().any(|b| *b != 0) {
        mapped.event.parent_event_id = span_id(&rec.trace_id, &rec.span_id).to_string();
    }
    Some(mapped)
}

/// One span's rows, or None when it is not stored: a span of an agent
/// whose logs carry the figures that names no session is its internal
/// tracing (Codex sends ~500 a run), which would make a session per trace.
pub fn span(ctx: &Context, span: &Span) -> Option<Mapped> {
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
    let logs_carry_figures = agent.logs_carry_figures();
    if logs_carry_figures && !names_session(attrs, ctx.resource) {
        return None;
    }
    let mut found = match (oi_kind.as_deref(), op.as_str()) {
        _ if logs_carry_figures => Found::default(),
        (Some(k), _) => agents::openinference(k, attrs),
        (None, "chat" | "text_completion" | "generate_content" | "embeddings") => {
            agents::genai_request(attrs)
        }
        (None, "execute_tool") => Found {
            event_type: Some(kind::TOOL_USE),
            ..agents::tool(attrs, &["gen_ai.tool.name"])
        },
        (None, "invoke_agent" | "create_agent" | "invoke_workflow") => Found {
            event_type: Some(kind::AGENT_INVOCATION),
            texts: agents::genai_texts(attrs),
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
    let mut mapped = build(
        ctx,
        Draft {
            agent,
            name,
            attrs,
            found,
            ts,
            id,
            session,
            data,
        },
    );
    if let Some(parent) = event_parent {
        mapped.event.parent_event_id = parent.to_string();
    }
    Some(mapped)
}

/// Metrics of the agents whose events carry the figures that no event
/// carries: Claude Code's productivity counters and active time. Their
/// other metrics repeat the events' tokens, cost and counts (Gemini CLI's
/// cumulatively, at every export), and Codex's name no conversation.
const KEPT_AGENT_METRICS: &[&str] = &[
    "claude_code.lines_of_code.count",
    "claude_code.commit.count",
    "claude_code.pull_request.count",
    "claude_code.active_time.total",
];

/// Metric data points are stored as `metric` rows: their figures in
/// `metrics`, never in the token or cost columns (the per-request events
/// carry those; adding both would count twice).
pub fn metric(ctx: &Context, metric: &Metric) -> Vec<Mapped> {
    let agent_hint = Agent::detect(ctx.resource, &metric.name, &[]);
    let mut out = Vec::new();
    if agent_hint.logs_carry_figures() && !KEPT_AGENT_METRICS.contains(&metric.name.as_str()) {
        return out;
    }
    let mut point = |attrs: &[KeyValue],
                     time: u64,
                     figures: Json,
                     encoded: Vec<u8>,
                     counts: Vec<(&'static str, i64)>| {
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
            counts,
            ..Found::default()
        };
        let draft = Draft {
            agent,
            name: metric.name.clone(),
            attrs,
            found,
            ts,
            id,
            session,
            data,
        };
        let mut m = build(ctx, draft);
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
                let delta = s.is_monotonic && temporality(s.aggregation_temporality) == "delta";
                let counts =
                    agents::metric_counts(&metric.name, delta, whole(&p.value), &p.attributes);
                point(
                    &p.attributes,
                    p.time_unix_nano,
                    figures,
                    p.encode_to_vec(),
                    counts,
                );
            }
        }
        Some(Data::Gauge(g)) => {
            for p in &g.data_points {
                let figures = json!({ "value": number(&p.value) });
                point(
                    &p.attributes,
                    p.time_unix_nano,
                    figures,
                    p.encode_to_vec(),
                    Vec::new(),
                );
            }
        }
        Some(Data::Histogram(h)) => {
            for p in &h.data_points {
                let figures = json!({
                    "count": p.count, "sum": p.sum, "min": p.min, "max": p.max,
                    "temporality": temporality(h.aggregation_temporality),
                });
                point(
                    &p.attributes,
                    p.time_unix_nano,
                    figures,
                    p.encode_to_vec(),
                    Vec::new(),
                );
            }
        }
        Some(Data::ExponentialHistogram(h)) => {
            for p in &h.data_points {
                let figures = json!({
                    "count": p.count, "sum": p.sum, "min": p.min, "max": p.max,
                    "temporality": temporality(h.aggregation_temporality),
                });
                point(
                    &p.attributes,
                    p.time_unix_nano,
                    figures,
                    p.encode_to_vec(),
                    Vec::new(),
                );
            }
        }
        Some(Data::Summary(s)) => {
            for p in &s.data_points {
                let figures = json!({ "count": p.count, "sum": p.sum });
                point(
                    &p.attributes,
                    p.time_unix_nano,
                    figures,
                    p.encode_to_vec(),
                    Vec::new(),
                );
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

/// A data point's value as a whole count: JavaScript's OpenTelemetry SDK
/// exports counters as doubles (`5.0`), so an integral double counts too.
fn whole(v: &Option<number_data_point::Value>) -> Option<i64> {
    match v {
        Some(number_data_point::Value::AsInt(i)) => Some(*i),
        Some(number_data_point::Value::AsDouble(d))
            if d.is_finite() && d.fract() == 0.0 && d.abs() < 9.0e15 =>
        {
            Some(*d as i64)
        }
        _ => None,
    }
}

fn temporality(t: i32) -> &'static str {
    match t {
        1 => "delta",
        2 => "cumulative",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests;
