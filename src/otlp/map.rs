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
        (Agent::Copilot, "copilot_chat.tool.call") => Found {
            event_type: Some(kind::TOOL_USE),
            ..agents::tool(attrs, &["gen_ai.tool.name"])
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
        (None, "invoke_agent" | "create_agent") => Found {
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
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};

    use crate::otlp::price::PriceTable;

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
            false,
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
        let attrs = vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "claude-sonnet-4-5"),
            i("gen_ai.usage.input_tokens", 100),
        ];
        // Naming no session, it is the agent's internal tracing: not stored.
        let internal = span(
            &ctx(&resource, &prices),
            &span_with("claude_code.llm_request", attrs.clone()),
        );
        assert!(internal.is_none());
        let mut attrs = attrs;
        attrs.push(s("session.id", "6f1c2a7e-0d3b-4c1e-9a51-3b8e2f7d9c01"));
        let m = span(
            &ctx(&resource, &prices),
            &span_with("claude_code.llm_request", attrs),
        )
        .unwrap();
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
        )
        .unwrap();
        assert_eq!(a.event.event_type, kind::LLM_REQUEST);
        assert_eq!(a.agent, "my-rag-app");
        assert_eq!(
            (a.event.input_tokens, a.event.output_tokens),
            (Some(900), Some(100))
        );
        assert_eq!(a.event.cost_usd, Some(0.0042));
        let b = span(&ctx(&resource, &prices), &span_with("other", attrs)).unwrap();
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
        let alone = log_record(&ctx(&resource, &prices), &rec).unwrap();
        assert_eq!(alone.event.event_type, kind::LLM_REQUEST);
        assert_eq!(alone.event.input_tokens, Some(10));
        rec.trace_id = vec![1; 16];
        rec.span_id = vec![2; 8];
        let inside = log_record(&ctx(&resource, &prices), &rec).unwrap();
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
        let a = log_record(&ctx(&resource, &prices), &rec).unwrap();
        let b = log_record(&ctx(&resource, &prices), &rec).unwrap();
        assert_eq!(a.event.id, b.event.id);
        let mut other = rec.clone();
        other.time_unix_nano += 1;
        assert_ne!(
            log_record(&ctx(&resource, &prices), &other)
                .unwrap()
                .event
                .id,
            a.event.id
        );
    }

    fn data(m: &Mapped) -> Json {
        serde_json::from_str(&m.event.data_json).expect("data is JSON")
    }

    #[test]
    fn each_agents_permission_words_become_one_accepted_flag() {
        let prices = PriceTable::default();
        let cases = [
            (
                "claude-code",
                "claude_code.tool_decision",
                "accept",
                Some(true),
            ),
            (
                "claude-code",
                "claude_code.tool_decision",
                "reject",
                Some(false),
            ),
            (
                "codex",
                "codex.tool_decision",
                "approved_for_session",
                Some(true),
            ),
            ("codex", "codex.tool_decision", "denied", Some(false)),
            ("codex", "codex.tool_decision", "abort", Some(false)),
            (
                "gemini-cli",
                "gemini_cli.tool_call",
                "auto_accept",
                Some(true),
            ),
            ("gemini-cli", "gemini_cli.tool_call", "modify", Some(true)),
            ("gemini-cli", "gemini_cli.tool_call", "reject", Some(false)),
            // A word nobody documented is no decision, not a guess.
            ("claude-code", "claude_code.tool_decision", "maybe", None),
        ];
        for (service, name, word, want) in cases {
            let resource = [s("service.name", service)];
            let rec = LogRecord {
                time_unix_nano: 1_700_000_000_000_000_000,
                attributes: vec![
                    s("event.name", name),
                    s("tool_name", "Bash"),
                    s("decision", word),
                ],
                ..Default::default()
            };
            let m = log_record(&ctx(&resource, &prices), &rec).unwrap();
            let d = data(&m);
            assert_eq!(
                d.get("accepted").and_then(Json::as_bool),
                want,
                "{name} {word}"
            );
            // The agent's own word stays beside it.
            assert_eq!(d["decision"], word, "{name}");
        }
    }

    #[test]
    fn delta_line_commit_and_pull_request_counters_become_counts_and_cumulative_ones_do_not() {
        use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, Sum};
        let prices = PriceTable::default();
        let resource = [s("service.name", "claude-code")];
        let sum =
            |name: &str,
             temporality: i32,
             points: Vec<(Option<&str>, number_data_point::Value)>| Metric {
                name: name.into(),
                data: Some(Data::Sum(Sum {
                    aggregation_temporality: temporality,
                    is_monotonic: true,
                    data_points: points
                        .into_iter()
                        .map(|(kind, v)| NumberDataPoint {
                            attributes: kind.map(|k| vec![s("type", k)]).unwrap_or_default(),
                            time_unix_nano: 1_700_000_000_000_000_000,
                            value: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                })),
                ..Default::default()
            };
        use number_data_point::Value::{AsDouble, AsInt};
        let keys = |m: &Metric| -> Vec<Json> {
            metric(&ctx(&resource, &prices), m)
                .iter()
                .map(|r| {
                    let d = data(r);
                    serde_json::json!([
                        d.get("lines_added"),
                        d.get("lines_removed"),
                        d.get("commits"),
                        d.get("pull_requests")
                    ])
                })
                .collect()
        };
        let lines = sum(
            "claude_code.lines_of_code.count",
            1,
            vec![(Some("added"), AsDouble(12.0)), (Some("removed"), AsInt(3))],
        );
        assert_eq!(
            keys(&lines),
            [
                serde_json::json!([12, null, null, null]),
                serde_json::json!([null, 3, null, null])
            ]
        );
        let commits = sum("claude_code.commit.count", 1, vec![(None, AsInt(2))]);
        assert_eq!(keys(&commits), [serde_json::json!([null, null, 2, null])]);
        let prs = sum(
            "claude_code.pull_request.count",
            1,
            vec![(None, AsDouble(1.0))],
        );
        assert_eq!(keys(&prs), [serde_json::json!([null, null, null, 1])]);
        // A running total repeats at every export: summing it would count
        // every line again each minute. A fractional value is no count.
        let cumulative = sum(
            "claude_code.lines_of_code.count",
            2,
            vec![(Some("added"), AsInt(40))],
        );
        assert_eq!(
            keys(&cumulative),
            [serde_json::json!([null, null, null, null])]
        );
        let fraction = sum("claude_code.commit.count", 1, vec![(None, AsDouble(0.5))]);
        assert_eq!(
            keys(&fraction),
            [serde_json::json!([null, null, null, null])]
        );
        // Another metric of the same shape is no count; from Claude Code,
        // whose events carry its figures, it is not stored at all.
        let other = sum("some.lines_of_code", 1, vec![(Some("added"), AsInt(5))]);
        assert!(keys(&other).is_empty());
        let tokens = sum(
            "claude_code.token.usage",
            1,
            vec![(Some("input"), AsInt(5))],
        );
        assert!(
            keys(&tokens).is_empty(),
            "the api_request events count them"
        );
    }

    #[test]
    fn a_genai_span_prices_cache_writes_apart() {
        let prices = PriceTable::from_models(std::collections::BTreeMap::from([
            crate::otlp::price::sonnet_4_5(),
        ]));
        let resource = [s("service.name", "some-genai-app")];
        let m = span(
            &ctx(&resource, &prices),
            &span_with(
                "chat claude-sonnet-4-5",
                vec![
                    s("gen_ai.operation.name", "chat"),
                    s("gen_ai.request.model", "claude-sonnet-4-5"),
                    i("gen_ai.usage.input_tokens", 1_000_000),
                    i("gen_ai.usage.cache_read.input_tokens", 500_000),
                    i("gen_ai.usage.cache_creation.input_tokens", 300_000),
                    i("gen_ai.usage.output_tokens", 100_000),
                ],
            ),
        );
        let m = m.unwrap();
        let want = 0.2 * 3.0 + 0.5 * 0.3 + 0.3 * 3.75 + 0.1 * 15.0;
        let cost = m.event.cost_usd.unwrap();
        assert!((cost - want).abs() < 1e-9, "{cost} vs {want}");
        assert_eq!(
            (m.event.input_tokens, m.event.cached_tokens),
            (Some(1_000_000), Some(500_000))
        );
    }
}
