//! The mapping's rules, record by record.

use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};

use crate::{pb, price::PriceTable};

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
    let sum = |name: &str,
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
        crate::price::sonnet_4_5(),
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

fn record(name: &str, mut attributes: Vec<KeyValue>) -> LogRecord {
    attributes.push(s("event.name", name));
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        attributes,
        ..Default::default()
    }
}

#[test]
fn codex_0_169_decision_words_and_the_placeholder_prompt() {
    // From the 0.169.0 binary's strings (ReviewDecision::to_opaque_string).
    let prices = PriceTable::default();
    let resource = [s("service.name", "codex_exec")];
    for (word, want) in [
        ("approved_with_amendment", Some(true)),
        ("approved_mcp_policy_amendment", Some(true)),
        ("approved_with_network_policy_allow", Some(true)),
        ("denied_with_network_policy_deny", Some(false)),
        ("timed_out", Some(false)),
        ("abort", Some(false)),
    ] {
        let rec = record(
            "codex.tool_decision",
            vec![s("decision", word), s("source", "Config")],
        );
        let d = data(&log_record(&ctx(&resource, &prices), &rec).unwrap());
        assert_eq!(d.get("accepted").and_then(Json::as_bool), want, "{word}");
        assert_eq!(d["source"], "Config", "the agent's own word is kept");
    }
    let prompt = record(
        "codex.user_prompt",
        vec![s("prompt", "[REDACTED]"), s("prompt_length", "14")],
    );
    let m = log_record(&ctx(&resource, &prices), &prompt).unwrap();
    assert!(m.messages.is_empty(), "a placeholder is no prompt");
    assert_eq!(data(&m)["prompt_length"], "14");
}

#[test]
fn codex_logs_one_row_per_model_call_and_a_failed_stream_as_a_failed_request() {
    let prices = PriceTable::default();
    let resource = [s("service.name", "codex_exec")];
    let sse = |attrs: Vec<KeyValue>| {
        let mut a = vec![
            s("event.kind", "response.completed"),
            s("model", "gpt-5-codex"),
        ];
        a.extend(attrs);
        log_record(&ctx(&resource, &prices), &record("codex.sse_event", a))
    };
    // The stream's own copy of the completion: only a duration of 0.
    assert!(sse(vec![s("duration_ms", "0")]).is_none());
    let counted = sse(vec![
        s("input_token_count", "1000"),
        s("output_token_count", "50"),
        i("cached_token_count", 200),
    ])
    .unwrap();
    assert_eq!(counted.event.event_type, kind::LLM_REQUEST);
    assert_eq!(
        (
            counted.event.input_tokens,
            counted.event.output_tokens,
            counted.event.severity
        ),
        (Some(1000), Some(50), pb::Severity::Unspecified as i32)
    );
    let failed = sse(vec![s("error.message", "stream disconnected")]).unwrap();
    assert_eq!(failed.event.event_type, kind::LLM_REQUEST);
    assert_eq!(failed.event.severity, pb::Severity::Error as i32);
    assert_eq!(failed.event.input_tokens, None);
    // Progress of the stream, and a debug record that names no event.
    let delta = record(
        "codex.sse_event",
        vec![s("event.kind", "response.output_text.delta")],
    );
    assert!(log_record(&ctx(&resource, &prices), &delta).is_none());
    let debug = LogRecord {
        event_name: "event otel/src/metrics/client.rs:324".into(),
        severity_number: 5,
        body: Some(AnyValue {
            value: Some(Value::StringValue("flushing OTEL metrics".into())),
        }),
        ..Default::default()
    };
    assert!(log_record(&ctx(&resource, &prices), &debug).is_none());
}

#[test]
fn a_claude_code_refusal_is_an_error_that_counts_no_second_request() {
    let prices = PriceTable::default();
    let resource = [s("service.name", "claude-code")];
    let rec = record("api_refusal", vec![s("model", "claude-opus-4-5")]);
    let m = log_record(&ctx(&resource, &prices), &rec).unwrap();
    assert_eq!(m.event.event_type, kind::ERROR);
    assert_eq!(m.event.model, None, "its api_request is the request");
    assert_eq!(data(&m)["model"], "claude-opus-4-5");
}

#[test]
fn copilots_tool_event_beside_its_span_and_its_productivity_counters() {
    // vscode-copilot-chat (genAiEvents.ts, genAiMetrics.ts, March 2026).
    let prices = PriceTable::default();
    let resource = [s("service.name", "copilot-chat")];
    let rec = record(
        "copilot_chat.tool.call",
        vec![s("gen_ai.tool.name", "readFile"), i("duration_ms", 12)],
    );
    let m = log_record(&ctx(&resource, &prices), &rec).unwrap();
    assert_ne!(
        m.event.event_type,
        kind::TOOL_USE,
        "its span is the call's row"
    );
    assert_eq!(data(&m)["tool_name"], "readFile");
    use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, Sum, number_data_point};
    let lines = Metric {
        name: "copilot_chat.lines_of_code.count".into(),
        data: Some(Data::Sum(Sum {
            aggregation_temporality: 1,
            is_monotonic: true,
            data_points: vec![NumberDataPoint {
                attributes: vec![s("type", "added")],
                time_unix_nano: 1_700_000_000_000_000_000,
                value: Some(number_data_point::Value::AsDouble(4.0)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let rows = metric(&ctx(&resource, &prices), &lines);
    assert_eq!(data(&rows[0])["lines_added"], 4);
}

#[test]
fn genai_workflows_and_exceptions() {
    let prices = PriceTable::default();
    let resource = [s("service.name", "some-genai-app")];
    let workflow = span(
        &ctx(&resource, &prices),
        &span_with(
            "invoke_workflow triage",
            vec![s("gen_ai.operation.name", "invoke_workflow")],
        ),
    )
    .unwrap();
    assert_eq!(workflow.event.event_type, kind::AGENT_INVOCATION);
    let exception = record(
        "gen_ai.client.operation.exception",
        vec![s("exception.type", "RateLimitError")],
    );
    let alone = log_record(&ctx(&resource, &prices), &exception).unwrap();
    assert_eq!(alone.event.event_type, kind::ERROR);
    assert_eq!(alone.event.severity, pb::Severity::Error as i32);
    let mut inside = exception;
    inside.trace_id = vec![1; 16];
    inside.span_id = vec![2; 8];
    let inside = log_record(&ctx(&resource, &prices), &inside).unwrap();
    assert_eq!(
        inside.event.severity,
        pb::Severity::Unspecified as i32,
        "its span is the error"
    );
    assert!(!inside.event.parent_event_id.is_empty(), "under its span");
}

#[test]
fn gemini_replies_are_their_text_and_its_node_version_is_no_agent_version() {
    assert_eq!(
        agents::gemini_reply(
            r#"[{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":"Done: "}]}}]},
                {"candidates":[{"content":{"role":"model","parts":[{"text":"hello"}]}}],"usageMetadata":{"promptTokenCount":5}}]"#
        )
        .as_deref(),
        Some("Done: hello")
    );
    let calls_only = r#"[{"candidates":[{"content":{"parts":[{"functionCall":{"name":"ls"}}]}}]}]"#;
    assert_eq!(agents::gemini_reply(calls_only), None);
    assert_eq!(
        agents::gemini_reply("plain text").as_deref(),
        Some("plain text")
    );
    let prices = PriceTable::default();
    let resource = [
        s("service.name", "gemini-cli"),
        s("service.version", "v20.20.2"),
        s("process.runtime.version", "20.20.2"),
        s(
            "process.command_args",
            "[\"node\",\"gemini\",\"-p\",\"my secret plan\"]",
        ),
    ];
    let rec = record("gemini_cli.user_prompt", vec![i("prompt_length", 14)]);
    let m = log_record(&ctx(&resource, &prices), &rec).unwrap();
    assert_eq!(m.event.agent_version, "");
    assert!(!m.event.context_json.contains("my secret plan"));
}

#[test]
fn a_model_the_price_table_lacks_is_unpriced_not_free() {
    let prices = PriceTable::from_models(std::collections::BTreeMap::from([
        crate::price::sonnet_4_5(),
    ]));
    let resource = [s("service.name", "gemini-cli")];
    let rec = record(
        "gemini_cli.api_response",
        vec![
            s("model", "gemini-9-ultra"),
            i("input_token_count", 100),
            i("output_token_count", 10),
        ],
    );
    let m = log_record(&ctx(&resource, &prices), &rec).unwrap();
    assert_eq!(m.event.cost_usd, None, "no cost rather than 0");
    assert_eq!(data(&m)["cost_source"], "unpriced");
    // Without a table there is nothing to miss.
    let m = log_record(&ctx(&resource, &PriceTable::default()), &rec).unwrap();
    assert!(data(&m).get("cost_source").is_none());
}
