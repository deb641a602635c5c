//! The real agents, as they really send: the pinned Claude Code, Codex and
//! Gemini CLIs from npm, each run offline against a mock of its model API
//! written for this test, with its own OTLP exporter pointed at the
//! service under test (the harness: tests/common/agents.rs). What is
//! stored is checked against what the mock answered: one `llm_request` per
//! model call with the mock's exact tokens and the agent's cost, errors as
//! errors, the real prompts and replies as chat messages in order (none
//! when the agent redacts them), one agent session per run and no other
//! session, and the bytes stored per model call within a stated budget.

mod common;

use std::{collections::BTreeSet, path::Path};

use common::agents::*;
use serde_json::Value as Json;
use tokio_postgres::Client;
use uuid::Uuid;

/// Bytes stored per model call (events, chat messages and sessions of a
/// run, as PostgreSQL stores their rows, divided by its model calls), at
/// most. Measured on the runs here: 5.3–9.7 KiB; before the agents'
/// debris and repeats were left out, 40–150 KiB (docs/otlp.md, "Bytes per
/// model call").
const BUDGET_PER_CALL: i64 = 12 << 10;

/// Bytes the run's rows take, per model call, as PostgreSQL stores them.
async fn bytes_per_call(db: &Client, session: Uuid, calls: usize) -> i64 {
    let n: i64 = db
        .query_one(
            "SELECT (SELECT coalesce(sum(pg_column_size(e.*)), 0) FROM agent_events e WHERE session_id = $1)
                  + (SELECT coalesce(sum(pg_column_size(m.*)), 0) FROM chat_messages m WHERE session_id = $1)
                  + (SELECT coalesce(sum(pg_column_size(s.*)), 0) FROM chat_sessions s WHERE session_id = $1)
                  + (SELECT coalesce(sum(pg_column_size(a.*)), 0) FROM agent_sessions a WHERE id = $1)",
            &[&session],
        )
        .await
        .unwrap()
        .get::<_, Option<i64>>(0)
        .unwrap_or(0);
    n / calls.max(1) as i64
}

async fn check_budget(db: &Client, session: Uuid, calls: usize, run: &str) {
    let per_call = bytes_per_call(db, session, calls).await;
    common::say(&format!(
        "{run}: {per_call} bytes stored per model call ({calls} calls)"
    ));
    assert!(
        per_call <= BUDGET_PER_CALL,
        "{run}: {per_call} bytes per model call, over the budget of {BUDGET_PER_CALL}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_2_1_328_as_it_really_sends() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let (_pg, db, svc, otlp) = service("real_claude", tmp.path()).await;
    let mut seen = BTreeSet::new();
    let claude = |mock: &Mock, home: &Path, extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("HOME", home.display().to_string()),
            (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("ANTHROPIC_API_KEY", "sk-test".into()),
            ("IS_SANDBOX", "1".into()),
            ("CLAUDE_CODE_ENABLE_TELEMETRY", "1".into()),
            ("OTEL_LOGS_EXPORTER", "otlp".into()),
            ("OTEL_METRICS_EXPORTER", "otlp".into()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_LOGS_EXPORT_INTERVAL", "500".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let args = [
        "-p",
        "run echo hello",
        "--dangerously-skip-permissions",
        "--output-format",
        "json",
    ];

    // 1. As installed: prompts and replies are `<REDACTED>`.
    let mock = Mock::start("mock-anthropic.mjs", "ok", tmp.path());
    let (home, work) = workplace(tmp.path(), "default");
    let out = run(
        &bin("claude"),
        &args,
        &claude(&mock, &home, &[]),
        &work,
        true,
    )
    .await;
    let result: Json = serde_json::from_slice(&out.stdout).unwrap();
    let session = one_session(&db, "claude-code", &mut seen, "default").await;
    assert_eq!(
        result["session_id"],
        session.to_string(),
        "the agent's own id"
    );
    let calls = llm_requests(&db, session).await;
    assert_eq!(mock.calls().len(), 2, "{:?}", mock.calls());
    // Claude Code's input excludes the cache: stored input = input + read + written.
    assert_eq!(
        calls.iter().map(|c| &c.0).collect::<Vec<_>>(),
        [
            &call(1200 + 300 + 100, 40, 300),
            &call(1500 + 1400 + 50, 12, 1400)
        ]
    );
    // The agent's own cost, as it sent it.
    let sent: f64 = result["total_cost_usd"].as_f64().unwrap();
    let stored: f64 = calls.iter().map(|c| c.1.unwrap()).sum();
    assert!((stored - sent).abs() < 1e-9, "cost {stored} vs {sent}");
    assert!(calls.iter().all(|c| c.2["cost_source"] == "agent"));
    assert_eq!(
        messages(&db, session).await,
        [],
        "a placeholder is no prompt"
    );
    assert_eq!(agent_session(&db, session).await, (2, Some(4550), Some(52)));
    // With an API key it sends only its installation's id: the developer is
    // that machine's, marked as such.
    let developer = common::strings(
        &db,
        &format!(
            "SELECT DISTINCT u.key FROM agent_events e JOIN users u ON u.id = e.user_id WHERE session_id = '{session}'"
        ),
    )
    .await;
    assert!(
        developer.len() == 1 && developer[0].starts_with("machine:claude-code:"),
        "{developer:?}"
    );
    check_budget(&db, session, 2, "Claude Code, prompts not logged").await;
    drop(mock);

    // 2. Prompts logged, tracing on, a subagent: the subagent's calls count,
    // under its own agent id; the log records hang under their spans.
    let mock = Mock::start("mock-anthropic.mjs", "subagent", tmp.path());
    let (home, work) = workplace(tmp.path(), "subagent");
    let env = claude(
        &mock,
        &home,
        &[
            ("OTEL_LOG_USER_PROMPTS", "1"),
            ("CLAUDE_CODE_ENHANCED_TELEMETRY_BETA", "1"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    );
    run(&bin("claude"), &args, &env, &work, true).await;
    let session = one_session(&db, "claude-code", &mut seen, "subagent").await;
    let calls = llm_requests(&db, session).await;
    assert_eq!(mock.calls().len(), 4, "{:?}", mock.calls());
    let mut got: Vec<&Call> = calls.iter().map(|c| &c.0).collect();
    got.sort_by_key(|c| c.input);
    assert_eq!(
        got,
        [
            &call(1600, 40, 300),
            &call(2900, 30, 600),
            &call(2950, 12, 1400),
            &call(4225, 9, 2000)
        ]
    );
    let subagent: Vec<&Json> = calls
        .iter()
        .map(|c| &c.2)
        .filter(|d| d.get("agent_id").is_some())
        .collect();
    assert_eq!(subagent.len(), 2, "the subagent's calls name it: {calls:?}");
    let linked = common::count(
        &db,
        &format!(
            "SELECT count(*) FROM agent_events e WHERE session_id = '{session}' AND event_type = 'llm_request'
             AND EXISTS (SELECT 1 FROM agent_events s WHERE s.id::text = e.parent_event_id::text)"
        ),
    )
    .await;
    assert_eq!(linked, 4, "each request under its span");
    let said_ = messages(&db, session).await;
    assert_eq!(said_.first(), Some(&said("user", "run echo hello")));
    assert_eq!(said_.last(), Some(&said("assistant", "Done: hello")));
    assert!(
        said_.iter().all(|(_, t)| !t.contains("REDACTED")),
        "{said_:?}"
    );
    let (count, tokens, _) = chat_session(&db, session).await;
    assert_eq!(count as usize, said_.len());
    assert_eq!(tokens, 1600 + 2900 + 2950 + 4225 + 40 + 30 + 12 + 9);
    assert_eq!(agent_session(&db, session).await.0, 4);
    common::say(&format!(
        "Claude Code with tracing: {:?}",
        event_types(&db, session).await
    ));
    check_budget(&db, session, 4, "Claude Code, prompts logged, tracing on").await;
    drop(mock);

    // 3. The API fails: an error, no successful request.
    let mock = Mock::start("mock-anthropic.mjs", "fail500", tmp.path());
    let (home, work) = workplace(tmp.path(), "fail");
    let env = claude(&mock, &home, &[("CLAUDE_CODE_MAX_RETRIES", "0")]);
    run(&bin("claude"), &args, &env, &work, false).await;
    let session = one_session(&db, "claude-code", &mut seen, "fail").await;
    assert!(llm_requests(&db, session).await.is_empty());
    let errors = common::strings(
        &db,
        &format!(
            "SELECT event_type || ' ' || (data->>'status_code') FROM agent_events
             WHERE session_id = '{session}' AND severity = 'error'"
        ),
    )
    .await;
    assert_eq!(errors, ["error_encountered 500"]);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_0_169_0_as_it_really_sends() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let (_pg, db, svc, otlp) = service("real_codex", tmp.path()).await;
    let mut seen = BTreeSet::new();
    let codex = |mock: &Mock, home: &Path, prompts: bool, all: bool, retries: u32| {
        let exporter = |signal: &str| {
            format!(
                "{{ otlp-http = {{ endpoint = \"{otlp}/v1/{signal}\", protocol = \"json\" }} }}"
            )
        };
        let mut config = format!(
            "model = \"gpt-5-codex\"\nmodel_provider = \"mock\"\n\n\
             [model_providers.mock]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:{}/v1\"\n\
             wire_api = \"responses\"\nenv_key = \"OPENAI_API_KEY\"\n\
             request_max_retries = {retries}\nstream_max_retries = {retries}\n\n\
             [otel]\nenvironment = \"test\"\nlog_user_prompt = {prompts}\nexporter = {}\n",
            mock.port,
            exporter("logs")
        );
        if all {
            config += &format!(
                "trace_exporter = {}\nmetrics_exporter = {}\n",
                exporter("traces"),
                exporter("metrics")
            );
        } else {
            config += "metrics_exporter = \"none\"\n";
        }
        std::fs::write(home.join("config.toml"), config).unwrap();
        vec![
            ("HOME", home.display().to_string()),
            ("CODEX_HOME", home.display().to_string()),
            ("OPENAI_API_KEY", "sk-test".to_owned()),
        ]
    };
    let args = [
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "run echo hello",
    ];
    // gpt-5's prices, as in the test's table.
    let cost = |input, cached, output| estimate((1.25, 0.125, 10.0), (input, cached, output));

    // 1. As configured by default: the prompt is `[REDACTED]`, logs only.
    let mock = Mock::start("mock-openai.mjs", "ok", tmp.path());
    let (home, work) = workplace(tmp.path(), "default");
    run(
        &bin("codex"),
        &args,
        &codex(&mock, &home, false, false, 0),
        &work,
        true,
    )
    .await;
    let session = one_session(&db, "codex", &mut seen, "default").await;
    assert_eq!(mock.calls().len(), 2, "{:?}", mock.calls());
    let calls = llm_requests(&db, session).await;
    assert_eq!(
        calls.iter().map(|c| &c.0).collect::<Vec<_>>(),
        [&call(1000, 50, 200), &call(1300, 70, 300)],
        "each call once, though Codex logs its completion twice"
    );
    let want = [cost(1000.0, 200.0, 50.0), cost(1300.0, 300.0, 70.0)];
    assert_estimated(&calls, &want);
    assert_eq!(
        messages(&db, session).await,
        [],
        "a placeholder is no prompt"
    );
    assert_eq!(
        agent_session(&db, session).await,
        (2, Some(2300), Some(120))
    );
    check_budget(&db, session, 2, "Codex, prompt not logged").await;
    drop(mock);

    // 2. Prompt logged, traces and metrics exported too: ~500 spans and
    // ~50 metric points of its internals make no session and no row.
    let mock = Mock::start("mock-openai.mjs", "ok", tmp.path());
    let (home, work) = workplace(tmp.path(), "all");
    run(
        &bin("codex"),
        &args,
        &codex(&mock, &home, true, true, 0),
        &work,
        true,
    )
    .await;
    let session = one_session(&db, "codex", &mut seen, "all").await;
    assert_eq!(llm_requests(&db, session).await.len(), 2);
    assert_eq!(
        messages(&db, session).await,
        [said("user", "run echo hello")]
    );
    let (count, tokens, _) = chat_session(&db, session).await;
    assert_eq!((count, tokens), (1, 2300 + 120));
    let types = event_types(&db, session).await;
    common::say(&format!("Codex with traces and metrics: {types:?}"));
    assert!(
        !types
            .iter()
            .any(|t| t.starts_with("metric ") || t.starts_with("codex.sse_event")),
        "Codex's metrics repeat its events: {types:?}"
    );
    check_budget(
        &db,
        session,
        2,
        "Codex, prompt logged, traces and metrics on",
    )
    .await;
    drop(mock);

    // 3. The first stream fails and Codex retries: one failed request,
    // then the two counted ones.
    let mock = Mock::start("mock-openai.mjs", "fail_once", tmp.path());
    let (home, work) = workplace(tmp.path(), "fail");
    run(
        &bin("codex"),
        &args,
        &codex(&mock, &home, false, false, 1),
        &work,
        true,
    )
    .await;
    let session = one_session(&db, "codex", &mut seen, "fail").await;
    let calls = llm_requests(&db, session).await;
    assert_eq!(
        calls.iter().map(|c| &c.0).collect::<Vec<_>>(),
        [
            &Call {
                input: None,
                output: None,
                cached: None,
                failed: true
            },
            &call(1300, 70, 300),
            &call(1700, 90, 400)
        ]
    );
    assert!(calls[0].2["error.message"].as_str().is_some());
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_0_61_0_as_it_really_sends() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let (_pg, db, svc, otlp) = service("real_gemini", tmp.path()).await;
    let mut seen = BTreeSet::new();
    let gemini = |mock: &Mock, home: &Path, prompts: bool| {
        std::fs::create_dir_all(home.join(".gemini")).unwrap();
        let settings = serde_json::json!({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "telemetry": {"enabled": true, "target": "local", "otlpEndpoint": otlp,
                          "otlpProtocol": "http", "logPrompts": prompts, "traces": true},
            "privacy": {"usageStatisticsEnabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 1}
        });
        std::fs::write(home.join(".gemini/settings.json"), settings.to_string()).unwrap();
        let tmpdir = home.join("tmp");
        std::fs::create_dir_all(&tmpdir).unwrap();
        vec![
            ("HOME", home.display().to_string()),
            ("TMPDIR", tmpdir.display().to_string()),
            (
                "GOOGLE_GEMINI_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("GEMINI_API_KEY", "test".into()),
            ("GEMINI_CLI_TRUST_WORKSPACE", "true".into()),
            ("GEMINI_CLI_NO_RELAUNCH", "true".into()),
        ]
    };
    let args = [
        "-p",
        "run echo hello",
        "--approval-mode=yolo",
        "-m",
        "gemini-2.5-flash",
    ];
    // gemini-2.5-flash's prices, as in the test's table.
    let cost = |input, cached, output| estimate((0.30, 0.075, 2.50), (input, cached, output));

    // 1. Prompts logged, traces on.
    let mock = Mock::start("mock-gemini.mjs", "ok", tmp.path());
    let (home, work) = workplace(tmp.path(), "prompts");
    run(
        &bin("gemini"),
        &args,
        &gemini(&mock, &home, true),
        &work,
        true,
    )
    .await;
    let session = one_session(&db, "gemini-cli", &mut seen, "prompts").await;
    let mock_calls = mock.calls();
    assert_eq!(mock_calls.len(), 2, "{mock_calls:?}");
    let calls = llm_requests(&db, session).await;
    // Thoughts are output the model generated.
    assert_eq!(
        calls.iter().map(|c| &c.0).collect::<Vec<_>>(),
        [&call(1111, 22 + 44, 333), &call(1250, 7, 0)]
    );
    let want = [cost(1111.0, 333.0, 66.0), cost(1250.0, 0.0, 7.0)];
    assert_estimated(&calls, &want);
    // The replies' text, not the streamed chunks' JSON; no thought.
    assert_eq!(
        messages(&db, session).await,
        [
            said("user", "run echo hello"),
            said("assistant", "I will run the command."),
            said("assistant", "Done: hello"),
        ]
    );
    assert_eq!(
        chat_session(&db, session).await,
        (3, 1111 + 66 + 1250 + 7, Some("gemini-2.5-flash".into()))
    );
    assert_eq!(agent_session(&db, session).await.0, 2);
    // Its service.version is Node's: no version rather than the runtime's.
    let versions = common::strings(
        &db,
        &format!("SELECT DISTINCT agent_version FROM agent_events WHERE session_id = '{session}'"),
    )
    .await;
    assert_eq!(versions, [""]);
    common::say(&format!(
        "Gemini CLI with prompts and traces: {:?}",
        event_types(&db, session).await
    ));
    check_budget(&db, session, 2, "Gemini CLI, prompts logged, traces on").await;
    drop(mock);

    // 2. Prompts not logged: no message, the same figures.
    let mock = Mock::start("mock-gemini.mjs", "ok", tmp.path());
    let (home, work) = workplace(tmp.path(), "quiet");
    run(
        &bin("gemini"),
        &args,
        &gemini(&mock, &home, false),
        &work,
        true,
    )
    .await;
    let session = one_session(&db, "gemini-cli", &mut seen, "quiet").await;
    assert_eq!(llm_requests(&db, session).await.len(), 2);
    assert_eq!(messages(&db, session).await, []);
    let context = common::strings(
        &db,
        &format!("SELECT DISTINCT context::text FROM agent_events WHERE session_id = '{session}'"),
    )
    .await;
    assert!(
        context.iter().all(|c| !c.contains("run echo hello")),
        "the command line holds the prompt: {context:?}"
    );
    check_budget(&db, session, 2, "Gemini CLI, prompts not logged").await;
    drop(mock);

    // 3. The API refuses the request: an error, no successful request.
    let mock = Mock::start("mock-gemini.mjs", "fail400", tmp.path());
    let (home, work) = workplace(tmp.path(), "fail");
    run(
        &bin("gemini"),
        &args,
        &gemini(&mock, &home, true),
        &work,
        false,
    )
    .await;
    let session = one_session(&db, "gemini-cli", &mut seen, "fail").await;
    assert!(
        llm_requests(&db, session).await.iter().all(|c| c.0.failed),
        "no request succeeded"
    );
    let errors = common::count(
        &db,
        &format!("SELECT count(*) FROM agent_events WHERE session_id = '{session}' AND severity = 'error'"),
    )
    .await;
    assert!(errors >= 1, "the failure is an error");
    svc.running.shutdown().await.unwrap();
}
