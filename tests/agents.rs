//! The real agents, as they really send: the pinned Claude Code, Codex and
//! Gemini CLIs from npm (tests/agents/package.json), each run offline
//! against a mock of its model API written for this test
//! (tests/agents/mock-*.mjs), with its own OTLP exporter pointed at the
//! service under test. What is stored is checked against what the mock
//! answered: one `llm_request` per model call with the mock's exact tokens
//! and the agent's cost, errors as errors, the real prompts and replies as
//! chat messages in order (none when the agent redacts them), one agent
//! session per run and no other session, and the bytes stored per model
//! call within a stated budget.
//!
//! As root, Claude Code's `--dangerously-skip-permissions` needs
//! `IS_SANDBOX=1`; Gemini CLI needs `GOOGLE_GEMINI_BASE_URL`,
//! `GEMINI_API_KEY`, `security.auth.selectedType: "gemini-api-key"` and a
//! trusted folder; Codex takes a custom model provider with
//! `wire_api = "responses"`.

mod common;

use std::{
    collections::BTreeSet,
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agent_telemetry::config::OptionalAddr;
use serde_json::Value as Json;
use tokio_postgres::Client;
use uuid::Uuid;

/// Bytes stored per model call (events, chat messages and sessions of a
/// run, as PostgreSQL stores their rows, divided by its model calls), at
/// most. Measured on the runs here: 5.3–9.7 KiB; before the agents'
/// debris and repeats were left out, 40–150 KiB (docs/otlp.md, "Bytes per
/// model call").
const BUDGET_PER_CALL: i64 = 12 << 10;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents")
}

/// Installs the pinned CLIs (committed lock file) once; npm's cache keeps
/// them between runs.
fn install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let bin = dir().join("node_modules/.bin");
        if ["claude", "codex", "gemini"]
            .iter()
            .all(|b| bin.join(b).exists())
        {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .status()
            .expect("run `npm ci` in tests/agents (Node.js and npm are needed)");
        assert!(status.success(), "`npm ci` in tests/agents failed");
    });
}

fn bin(name: &str) -> PathBuf {
    dir().join("node_modules/.bin").join(name)
}

/// A mock model API, stopped on drop; its log has one JSON line a call.
struct Mock {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mock {
    fn start(script: &str, scenario: &str, tmp: &Path) -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = tmp.join(format!("{script}-{scenario}-{n}.jsonl"));
        let mut child = Command::new("node")
            .arg(dir().join(script))
            .args([scenario, log.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the mock model API");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{script}: {line:?}"));
        Mock { child, port, log }
    }

    /// The model calls it answered: `call` and `usage` per line.
    fn calls(&self) -> Vec<Json> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|c: &Json| c["call"] != "other")
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh home and a git repository to work in.
fn workplace(tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
    let home = tmp.join(name).join("home");
    let work = tmp.join(name).join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    for args in [
        &["init", "-q"][..],
        &["config", "user.email", "dev@example.com"],
        &["config", "user.name", "Dev"],
    ] {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(&work)
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::write(work.join("README.md"), "# demo\n").unwrap();
    (home, work)
}

/// Runs an agent CLI with only the environment given (and PATH), in
/// `work`; its output. The exporters flush before the process exits, and
/// the service answers an export once its rows are committed.
async fn run(
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    work: &Path,
    must_succeed: bool,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "dumb")
        .env("SHELL", "/bin/bash")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(work)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in 180 s", program.display()))
        .unwrap();
    if must_succeed {
        assert!(
            out.status.success(),
            "{} failed: {}\n{}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// USD per million tokens for the models the mocks answer as.
fn prices(tmp: &Path) -> PathBuf {
    let path = tmp.join("prices.json");
    std::fs::write(
        &path,
        r#"{"models": {
            "gpt-5": {"input": 1.25, "output": 10, "cached_input": 0.125},
            "gemini-2.5-flash": {"input": 0.30, "output": 2.50, "cached_input": 0.075}
        }}"#,
    )
    .unwrap();
    path
}

async fn service(
    name: &str,
    tmp: &Path,
) -> (common::TestCluster, Client, common::TestService, String) {
    let prices = prices(tmp);
    let (pg, conn, svc) = common::service_with(name, |c| {
        c.otlp.otlp_http_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
        c.otlp.price_table = Some(prices);
    })
    .await;
    let otlp = format!("http://{}", svc.running.otlp_http_addr.unwrap());
    let db = common::db(&conn).await;
    (pg, db, svc, otlp)
}

/// The sessions of `agent` not in `seen` (and adds them).
async fn new_sessions(db: &Client, agent: &str, seen: &mut BTreeSet<Uuid>) -> Vec<Uuid> {
    let all: Vec<Uuid> = db
        .query(
            "SELECT DISTINCT session_id FROM agent_events WHERE agent_id = $1",
            &[&agent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let new: Vec<Uuid> = all.into_iter().filter(|s| !seen.contains(s)).collect();
    seen.extend(new.iter().copied());
    new
}

/// The one session a run made: no span or metric makes another.
async fn one_session(db: &Client, agent: &str, seen: &mut BTreeSet<Uuid>, run: &str) -> Uuid {
    let new = new_sessions(db, agent, seen).await;
    assert_eq!(new.len(), 1, "{run}: one session, not {new:?}");
    new[0]
}

/// One model call as stored: (input, output, cached, cost, failed).
#[derive(Debug, PartialEq)]
struct Call {
    input: Option<i64>,
    output: Option<i64>,
    cached: Option<i64>,
    failed: bool,
}

async fn llm_requests(db: &Client, session: Uuid) -> Vec<(Call, Option<f64>, Json)> {
    db.query(
        "SELECT input_tokens, output_tokens, cached_tokens, severity = 'error', cost_usd::float8, data
         FROM agent_events WHERE session_id = $1 AND event_type = 'llm_request'
         ORDER BY \"timestamp\", id",
        &[&session],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            Call {
                input: r.get(0),
                output: r.get(1),
                cached: r.get(2),
                failed: r.get::<_, Option<bool>>(3).unwrap_or(false),
            },
            r.get(4),
            r.get(5),
        )
    })
    .collect()
}

fn call(input: i64, output: i64, cached: i64) -> Call {
    Call {
        input: Some(input),
        output: Some(output),
        cached: Some(cached),
        failed: false,
    }
}

/// USD of (input, cached, output) tokens at (input, cached, output)
/// prices per million, cached tokens being part of the input.
fn estimate(prices: (f64, f64, f64), tokens: (f64, f64, f64)) -> f64 {
    let ((p_in, p_cached, p_out), (input, cached, output)) = (prices, tokens);
    ((input - cached) * p_in + cached * p_cached + output * p_out) / 1e6
}

/// Each request's cost is the price table's estimate of its tokens.
fn assert_estimated(calls: &[(Call, Option<f64>, Json)], want: &[f64]) {
    assert_eq!(calls.len(), want.len());
    for (c, want) in calls.iter().zip(want) {
        assert!((c.1.unwrap() - want).abs() < 1e-12, "{c:?} vs {want}");
        assert_eq!(c.2["cost_source"], "estimated");
    }
}

/// The session's chat messages: (role, content), in their order.
async fn messages(db: &Client, session: Uuid) -> Vec<(String, String)> {
    db.query(
        "SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY sequence, \"timestamp\"",
        &[&session],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn said(role: &str, text: &str) -> (String, String) {
    (role.to_owned(), text.to_owned())
}

/// The run's agent session as the dashboards read it: (LLM requests,
/// input tokens, output tokens).
async fn agent_session(db: &Client, session: Uuid) -> (i64, Option<i64>, Option<i64>) {
    let r = db
        .query_one(
            "SELECT llm_requests, input_tokens::int8, output_tokens::int8
             FROM agent_session_results WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap_or_else(|e| panic!("no agent session {session}: {e}"));
    (r.get(0), r.get(1), r.get(2))
}

/// The chat session's stored figures: (messages, tokens, model).
async fn chat_session(db: &Client, session: Uuid) -> (i32, i64, Option<String>) {
    let r = db
        .query_one(
            "SELECT message_count, total_tokens, model_id FROM chat_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

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

/// The session's rows by event type: how many, and their bytes.
async fn event_types(db: &Client, session: Uuid) -> Vec<String> {
    common::strings(
        db,
        &format!(
            "SELECT event_type || ' ' || count(*) || ' (' || sum(pg_column_size(e.*)) || ' B)'
             FROM agent_events e WHERE session_id = '{session}'
             GROUP BY event_type ORDER BY 1"
        ),
    )
    .await
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

/// ccusage's JSON (`ccusage claude daily|session --json --offline`) on the
/// transcripts in `claude_dir`, dates in UTC.
fn ccusage(report: &str, claude_dir: &Path, tmp: &Path) -> Json {
    let out = Command::new(bin("ccusage"))
        .args(["claude", report, "--json", "--offline"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", tmp)
        .env("TZ", "UTC")
        .env("CLAUDE_CONFIG_DIR", claude_dir)
        .output()
        .expect("run ccusage");
    assert!(
        out.status.success(),
        "ccusage {report}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (key, model) → (input with the cache, output, cache reads), from
/// ccusage's rows: its input excludes the cache, as Anthropic's does.
fn ccusage_figures(rows: &[Json], key: &str) -> BTreeSet<(String, String, i64, i64, i64)> {
    rows.iter()
        .flat_map(|r| {
            let k = r[key].as_str().unwrap().to_owned();
            r["modelBreakdowns"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |m| {
                    let n = |f: &str| m[f].as_i64().unwrap();
                    (
                        k.clone(),
                        m["modelName"].as_str().unwrap().to_owned(),
                        n("inputTokens") + n("cacheCreationTokens") + n("cacheReadTokens"),
                        n("outputTokens"),
                        n("cacheReadTokens"),
                    )
                })
        })
        .collect()
}

async fn stored_figures(db: &Client, key: &str) -> BTreeSet<(String, String, i64, i64, i64)> {
    db.query(
        &format!(
            "SELECT {key}, model, sum(input_tokens)::int8, sum(output_tokens)::int8, sum(cached_tokens)::int8
             FROM agent_events WHERE event_type = 'llm_request' GROUP BY 1, 2"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn import(claude_dir: &Path, endpoint: &str, tmp: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["import", "--endpoint", endpoint, "--project", "acme/agents"])
        .arg("--claude-dir")
        .arg(claude_dir)
        .arg("--price-table")
        .arg(prices(tmp))
        .env("HOME", tmp)
        .output()
        .expect("run agent-telemetry import");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "import failed: {text}");
    text
}

/// The transcripts the real Claude Code 2.1.328 wrote (a run with a tool
/// call that also exported OTLP to the service, a run with a subagent, and
/// a line cut short as by a crash) imported: one `llm_request` per model
/// call with the mock's tokens (the OTLP-exported run's calls and messages
/// not twice), the subagent's calls in its parent session, figures per day
/// and model and per session equal to ccusage's on the same files, and a
/// second import storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_transcripts_import_once_and_equal_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(&home).unwrap();
    let (_pg, db, svc, otlp) = service("import_claude", tmp.path()).await;
    let mut calls = 0;
    for scenario in ["ok", "subagent"] {
        let mock = Mock::start("mock-anthropic.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), scenario);
        // The first run also exports its telemetry, prompts included.
        let exporting = scenario == "ok";
        let telemetry = [
            ("CLAUDE_CODE_ENABLE_TELEMETRY", "1"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_LOG_USER_PROMPTS", "1"),
            // The same project the import names: one session, one project.
            ("OTEL_RESOURCE_ATTRIBUTES", "project.name=acme/agents"),
        ];
        let mut env = vec![
            ("HOME", home.display().to_string()),
            (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("ANTHROPIC_API_KEY", "sk-test".into()),
            ("IS_SANDBOX", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ];
        if exporting {
            env.extend(telemetry.iter().map(|(k, v)| (*k, v.to_string())));
        }
        let args = ["-p", "run echo hello", "--dangerously-skip-permissions"];
        run(&bin("claude"), &args, &env, &work, true).await;
        calls += mock.calls().len();
    }
    let claude_dir = home.join(".claude");
    // A crash in the middle of a line: reported, and the rest imported.
    let mut files = Vec::new();
    common_files(&claude_dir.join("projects"), &mut files);
    let first = files
        .iter()
        .find(|f| !f.to_string_lossy().contains("subagents"))
        .unwrap();
    let mut text = std::fs::read_to_string(first).unwrap();
    text.push_str("{\"type\":\"assistant\",\"message\":{\"id\":\"msg_cut");
    std::fs::write(first, text).unwrap();

    let exported = common::count(
        &db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'",
    )
    .await;
    assert_eq!(exported, 2, "the first run's calls, over OTLP");
    let endpoint = svc.endpoint.clone();
    let said = import(&claude_dir, &endpoint, tmp.path());
    common::say(&said);
    assert!(said.contains("1 lines skipped"), "{said}");
    assert!(
        said.contains(" 4 already stored") && said.contains(" 0 rejected"),
        "the exported run's two calls, its prompt and reply: {said}"
    );
    assert!(
        said.contains(".jsonl:") && said.contains("not a JSON line"),
        "{said}"
    );
    let requests = common::count(
        &db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'",
    )
    .await;
    assert_eq!(
        requests as usize, calls,
        "one row per model call the mock answered"
    );
    let sessions = common::count(&db, "SELECT count(DISTINCT session_id) FROM agent_events").await;
    assert_eq!(
        sessions, 2,
        "the subagent's calls are in its parent's session"
    );
    let subagent = common::count(
        &db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request' AND context ? 'agent_id'",
    )
    .await;
    assert_eq!(subagent, 2);
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_sessions").await,
        2
    );
    // The prompt and reply of each run once, whichever edge brought them.
    let said = common::strings(
        &db,
        "SELECT role || ' ' || content || ' ' || count(*) FROM chat_messages
         WHERE content IN ('run echo hello', 'Done: hello') GROUP BY role, content ORDER BY 1",
    )
    .await;
    assert_eq!(said, ["assistant Done: hello 2", "user run echo hello 2"]);

    // Equal to ccusage on the same files: per day and model, per session.
    let daily = ccusage("daily", &claude_dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        ccusage_figures(daily["daily"].as_array().unwrap(), "date")
    );
    let by_session = ccusage("session", &claude_dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        ccusage_figures(by_session["sessions"].as_array().unwrap(), "sessionId")
    );

    // Again: nothing new.
    let again = import(&claude_dir, &endpoint, tmp.path());
    assert!(again.contains(" 0 stored"), "{again}");
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'"
        )
        .await as usize,
        calls
    );
    svc.running.shutdown().await.unwrap();
}

fn common_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            common_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "jsonl") {
            out.push(p);
        }
    }
    out.sort();
}

/// (key, model) → (input with the cache, output, cache reads), from
/// `ccusage codex daily|session` rows: its input excludes the cached part.
fn ccusage_codex_figures(rows: &[Json], key: &str) -> BTreeSet<(String, String, i64, i64, i64)> {
    rows.iter()
        .flat_map(|r| {
            let k = r[key].as_str().unwrap().to_owned();
            r["models"]
                .as_object()
                .unwrap()
                .iter()
                .map(move |(model, m)| {
                    let n = |f: &str| m[f].as_i64().unwrap();
                    (
                        k.clone(),
                        model.clone(),
                        n("inputTokens") + n("cacheReadTokens"),
                        n("outputTokens"),
                        n("cacheReadTokens"),
                    )
                })
        })
        .collect()
}

/// The rollouts the real Codex 0.169.0 wrote (a run, a run whose first
/// stream fails and is retried, a run that fails and exports nothing)
/// imported: one `llm_request` per model call with the mock's tokens, the
/// failure that only the rollout records as an error, figures per day,
/// model and session equal to `ccusage codex` on the same files, a second
/// import storing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_rollouts_import_once_and_equal_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut counted = 0;
    for (scenario, retries) in [("ok", 0), ("fail_once", 1), ("fail_once", 0)] {
        let mock = Mock::start("mock-openai.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), &format!("{scenario}{retries}"));
        std::fs::write(
            home.join("config.toml"),
            format!(
                "model = \"gpt-5-codex\"\nmodel_provider = \"mock\"\n\n\
                 [model_providers.mock]\nname = \"mock\"\nbase_url = \"http://127.0.0.1:{}/v1\"\n\
                 wire_api = \"responses\"\nenv_key = \"OPENAI_API_KEY\"\n\
                 request_max_retries = {retries}\nstream_max_retries = {retries}\n",
                mock.port
            ),
        )
        .unwrap();
        let env = [
            ("HOME", home.display().to_string()),
            ("CODEX_HOME", home.display().to_string()),
            ("OPENAI_API_KEY", "sk-test".to_owned()),
        ];
        let args = [
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "run echo hello",
        ];
        run(
            &bin("codex"),
            &args,
            &env,
            &work,
            retries > 0 || scenario == "ok",
        )
        .await;
        counted += mock.calls().iter().filter(|c| c["status"] == 200).count();
    }
    let (_pg, db, svc, _) = service("import_codex", tmp.path()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["import", "--source", "codex", "--endpoint", &svc.endpoint])
        .arg("--codex-home")
        .arg(&home)
        .arg("--price-table")
        .arg(prices(tmp.path()))
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&said);
    assert!(
        said.contains("codex: 3 files") && said.contains(" 0 rejected"),
        "{said}"
    );
    let requests = common::count(
        &db,
        "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'",
    )
    .await;
    assert_eq!(
        requests as usize, counted,
        "one row per model call answered"
    );
    // The run that failed exported nothing: its rollout is the only record.
    let failures = common::strings(
        &db,
        "SELECT data->>'message' FROM agent_events WHERE severity = 'error'",
    )
    .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("mock upstream failure"),
        "{failures:?}"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions WHERE agent_id = 'codex'"
        )
        .await,
        3
    );
    let prompts = common::count(
        &db,
        "SELECT count(*) FROM chat_messages WHERE role = 'user' AND content = 'run echo hello'",
    )
    .await;
    assert_eq!(prompts, 3, "the prompt of each run, no environment context");
    // Equal to ccusage on the same files.
    let ccusage = |report: &str| -> Json {
        let out = Command::new(bin("ccusage"))
            .args(["codex", report, "--json", "--offline"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", tmp.path())
            .env("TZ", "UTC")
            .env("CODEX_HOME", &home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        ccusage_codex_figures(ccusage("daily")["daily"].as_array().unwrap(), "date")
    );
    // ccusage names a Codex session by its rollout file; the file's name
    // ends with the session's id.
    let by_session: Vec<Json> = ccusage("session")["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut s = s.clone();
            let file = s["sessionFile"].as_str().unwrap().to_owned();
            s["sessionId"] = file[file.len() - 36..].into();
            s
        })
        .collect();
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        ccusage_codex_figures(&by_session, "sessionId")
    );
    let again = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["import", "--source", "codex", "--endpoint", &svc.endpoint])
        .arg("--codex-home")
        .arg(&home)
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains(" 0 stored"), "{again}");
    svc.running.shutdown().await.unwrap();
}

/// The chats the real Gemini CLI 0.61.0 wrote (two runs with a tool call,
/// one refused by the API) imported: one `llm_request` per model call with
/// the mock's tokens (a message written again once its tool call ends is
/// read once), the prompt and replies in order, a second import storing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_chats_import_once() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(
        home.join(".gemini/settings.json"),
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 1}}"#,
    )
    .unwrap();
    let mut calls = 0;
    for (i, scenario) in ["ok", "ok", "fail400"].iter().enumerate() {
        let mock = Mock::start("mock-gemini.mjs", scenario, tmp.path());
        let (_, work) = workplace(tmp.path(), &format!("gemini{i}"));
        let env = [
            ("HOME", home.display().to_string()),
            ("TMPDIR", tmp.path().display().to_string()),
            (
                "GOOGLE_GEMINI_BASE_URL",
                format!("http://127.0.0.1:{}", mock.port),
            ),
            ("GEMINI_API_KEY", "test".into()),
            ("GEMINI_CLI_TRUST_WORKSPACE", "true".into()),
            ("GEMINI_CLI_NO_RELAUNCH", "true".into()),
        ];
        let args = [
            "-p",
            "run echo hello",
            "--approval-mode=yolo",
            "-m",
            "gemini-2.5-flash",
        ];
        run(&bin("gemini"), &args, &env, &work, *scenario == "ok").await;
        calls += mock.calls().iter().filter(|c| c["status"] == 200).count();
    }
    let (_pg, db, svc, _) = service("import_gemini", tmp.path()).await;
    let import = || {
        let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
            .args([
                "import",
                "--source",
                "gemini-cli",
                "--endpoint",
                &svc.endpoint,
            ])
            .arg("--gemini-dir")
            .arg(home.join(".gemini"))
            .arg("--price-table")
            .arg(prices(tmp.path()))
            .env("HOME", tmp.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        said
    };
    let summary = import();
    common::say(&summary);
    assert!(
        summary.contains("gemini-cli: 3 files") && summary.contains(" 0 rejected"),
        "{summary}"
    );
    let rows = db
        .query(
            "SELECT input_tokens, output_tokens, cached_tokens, model FROM agent_events
             WHERE event_type = 'llm_request' ORDER BY \"timestamp\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), calls, "one row per model call answered");
    let figures: BTreeSet<(i64, i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Thoughts are output the model generated.
    let flash = || "gemini-2.5-flash".to_owned();
    assert_eq!(
        figures,
        BTreeSet::from([(1111, 66, 333, flash()), (1250, 7, 0, flash())])
    );
    let session = common::strings(
        &db,
        "SELECT session_id::text FROM agent_events WHERE event_type = 'llm_request' LIMIT 1",
    )
    .await;
    let session = Uuid::parse_str(&session[0]).unwrap();
    assert_eq!(
        messages(&db, session).await,
        [
            said("user", "run echo hello"),
            said("assistant", "I will run the command."),
            said("assistant", "Done: hello"),
        ]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_sessions WHERE agent_id = 'gemini-cli'"
        )
        .await,
        3
    );
    let tool = common::strings(
        &db,
        "SELECT data->>'tool_name' || ' ' || (data->>'success') FROM agent_events WHERE event_type = 'tool_use'",
    )
    .await;
    assert_eq!(tool, ["run_shell_command true", "run_shell_command true"]);
    let again = import();
    assert!(again.contains(" 0 stored"), "{again}");
    svc.running.shutdown().await.unwrap();
}

/// A running `import --follow` beside a transcript being written: the
/// lines written while it runs are stored within seconds, a line written in
/// two parts waits for its end, a restart resumes from the state file
/// without sending a line again, and a transcript written anew (another
/// inode) is read from its start, its rows recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_follow_sends_new_lines_and_resumes_after_a_restart() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    // A real transcript to replay line by line.
    let home = tmp.path().join("developer");
    std::fs::create_dir_all(&home).unwrap();
    let mock = Mock::start("mock-anthropic.mjs", "subagent", tmp.path());
    let (_, work) = workplace(tmp.path(), "follow");
    let env = [
        ("HOME", home.display().to_string()),
        (
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", mock.port),
        ),
        ("ANTHROPIC_API_KEY", "sk-test".into()),
        ("IS_SANDBOX", "1".into()),
        ("DISABLE_AUTOUPDATER", "1".into()),
    ];
    let args = ["-p", "run echo hello", "--dangerously-skip-permissions"];
    run(&bin("claude"), &args, &env, &work, true).await;
    let mut files = Vec::new();
    common_files(&home.join(".claude/projects"), &mut files);
    let main = files
        .iter()
        .find(|f| !f.to_string_lossy().contains("subagents"))
        .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(main)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect();
    let calls_in = |ls: &[String]| {
        ls.iter()
            .filter(|l| l.contains("\"type\":\"assistant\"") && l.contains("\"usage\""))
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter_map(|v| v["requestId"].as_str().map(str::to_owned))
            .collect::<BTreeSet<_>>()
            .len() as i64
    };
    let half = lines.len() / 2;
    let followed = tmp.path().join("followed/.claude/projects/p");
    std::fs::create_dir_all(&followed).unwrap();
    let transcript = followed.join(main.file_name().unwrap());
    std::fs::write(&transcript, lines[..half].concat()).unwrap();

    let (_pg, db, svc, _) = service("import_follow", tmp.path()).await;
    let state = tmp.path().join("state.json");
    let follow = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
            .args([
                "import",
                "--follow",
                "--source",
                "claude-code",
                "--endpoint",
                &svc.endpoint,
            ])
            .arg("--claude-dir")
            .arg(tmp.path().join("followed/.claude"))
            .arg("--state")
            .arg(&state)
            .env("HOME", tmp.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let requests = || async {
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'",
        )
        .await
    };
    let mut child = follow();
    let first = calls_in(&lines[..half]);
    common::wait_for(
        "the first half's calls",
        Duration::from_secs(20),
        || async { requests().await == first },
    )
    .await;
    // The rest, the last line in two writes: nothing of it until its end.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&transcript)
        .unwrap();
    let rest = lines[half..].concat();
    let (a, b) = rest.split_at(rest.len() - 10);
    f.write_all(a.as_bytes()).unwrap();
    f.flush().unwrap();
    let all = calls_in(&lines);
    common::wait_for(
        "the lines written while following",
        Duration::from_secs(20),
        || async { requests().await >= all - 1 },
    )
    .await;
    f.write_all(b.as_bytes()).unwrap();
    drop(f);
    common::wait_for("every call", Duration::from_secs(20), || async {
        requests().await == all
    })
    .await;
    // Stopped once its position is recorded (stopped between a send and
    // the record, it would send those rows again, recognised by id).
    let recorded = || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
            .and_then(|v| v["files"][transcript.to_str().unwrap()]["lines"].as_u64())
    };
    common::wait_for("the position recorded", Duration::from_secs(20), || async {
        recorded() == Some(lines.len() as u64)
    })
    .await;
    child.kill().await.unwrap();

    // A restart: nothing sent again.
    let mut child = follow();
    let stdout = child.stdout.take().unwrap();
    let mut out = tokio::io::BufReader::new(stdout);
    let mut said = String::new();
    let read = async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while out.read_line(&mut line).await.unwrap_or(0) > 0 {
            said.push_str(&line);
            line.clear();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), read).await;
    assert!(said.contains("following"), "{said}");
    assert!(
        !said.contains("rows sent"),
        "a restart sends nothing again: {said}"
    );
    // Written anew: read from its start, every row recognised.
    std::fs::remove_file(&transcript).unwrap();
    std::fs::write(&transcript, lines.concat()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(requests().await, all);
    child.kill().await.unwrap();
    svc.running.shutdown().await.unwrap();
}

/// A generated Claude Code history of the shapes the real transcripts take
/// (several projects and days, three models, a session across midnight,
/// replies streamed as a line per block, sidechain lines in a session and
/// a subagent's file, a resumed session whose new file repeats earlier
/// lines, synthetic zero-usage messages, a truncated last line), written as
/// Claude Code 2.1.328 writes its lines.
fn generated_claude_history(dir: &Path) -> usize {
    let models = [
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-5-20251101",
        "claude-haiku-4-5-20251001",
    ];
    let mut n = 0u64;
    let mut calls = 0;
    let mut line = |session: &str,
                    ts: &str,
                    sidechain: bool,
                    model: &str,
                    msg: &str,
                    req: &str,
                    tokens: [u64; 4]| {
        n += 1;
        let [input, output, read, written] = tokens;
        format!(
            r#"{{"parentUuid":null,"isSidechain":{sidechain},"type":"assistant","uuid":"00000000-0000-4000-8000-{n:012}","timestamp":"{ts}","requestId":"{req}","message":{{"id":"{msg}","type":"message","role":"assistant","model":"{model}","content":[{{"type":"text","text":"ok {n}"}}],"usage":{{"input_tokens":{input},"output_tokens":{output},"cache_read_input_tokens":{read},"cache_creation_input_tokens":{written},"cache_creation":{{"ephemeral_5m_input_tokens":{written},"ephemeral_1h_input_tokens":0}}}}}},"cwd":"/work/acme/api","sessionId":"{session}","version":"2.1.328","gitBranch":"main"}}"#
        ) + "\n"
    };
    let sessions = [
        (
            "acme-api",
            "11111111-1111-4111-8111-111111111111",
            "2026-12-01",
        ),
        (
            "acme-web",
            "22222222-2222-4222-8222-222222222222",
            "2026-12-02",
        ),
        (
            "acme-web",
            "33333333-3333-4333-8333-333333333333",
            "2026-12-03",
        ),
    ];
    let mut resumed = String::new();
    for (p, (project, session, day)) in sessions.iter().enumerate() {
        let folder = dir.join("projects").join(format!("-work-{project}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut text = String::new();
        for i in 0..12 {
            let model = models[(i + p) % 3];
            // The last session runs across midnight.
            let (day, hour) = if p == 2 && i >= 6 {
                ("2026-12-04", i - 6)
            } else {
                (*day, 18 + i / 2)
            };
            let ts = format!("{day}T{hour:02}:{:02}:10.000Z", (i * 7) % 60);
            let (msg, req) = (format!("msg_{p}_{i}"), format!("req_{p}_{i}"));
            let tokens = [
                100 + i as u64 * 10,
                20 + i as u64,
                1000 * i as u64,
                if i % 4 == 0 { 500 } else { 0 },
            ];
            let l = line(session, &ts, false, model, &msg, &req, tokens);
            // A reply streamed as two lines: the same message, request and usage.
            if i % 3 == 0 {
                text.push_str(&l);
            }
            text.push_str(&l);
            calls += 1;
            if p == 0 && i < 4 {
                resumed.push_str(&l);
            }
        }
        // Sidechain lines in the session itself, and a subagent's file.
        text.push_str(&line(
            session,
            &format!("{day}T23:30:00.000Z"),
            true,
            models[0],
            &format!("msg_{p}_side"),
            &format!("req_{p}_side"),
            [300, 30, 0, 0],
        ));
        calls += 1;
        let sub = folder.join(session).join("subagents");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join("agent-a1.jsonl"),
            line(
                session,
                &format!("{day}T23:40:00.000Z"),
                true,
                models[1],
                &format!("msg_{p}_sub"),
                &format!("req_{p}_sub"),
                [700, 70, 100, 0],
            ),
        )
        .unwrap();
        calls += 1;
        // A synthetic message: no model call.
        text.push_str(&line(
            session,
            &format!("{day}T23:50:00.000Z"),
            false,
            "<synthetic>",
            &format!("msg_{p}_syn"),
            &format!("req_{p}_syn"),
            [0, 0, 0, 0],
        ));
        if p == 1 {
            // A crash in the middle of the last line.
            text.push_str(
                r#"{"type":"assistant","message":{"id":"msg_cut","usage":{"input_tokens":"#,
            );
        }
        std::fs::write(folder.join(format!("{session}.jsonl")), text).unwrap();
    }
    // A resumed session: a new file that repeats the first session's lines.
    let folder = dir.join("projects/-work-acme-api");
    resumed.push_str(&line(
        "44444444-4444-4444-8444-444444444444",
        "2026-12-05T09:00:00.000Z",
        false,
        models[2],
        "msg_r_1",
        "req_r_1",
        [50, 5, 0, 0],
    ));
    calls += 1;
    std::fs::write(
        folder.join("44444444-4444-4444-8444-444444444444.jsonl"),
        resumed,
    )
    .unwrap();
    calls
}

/// ccusage's rows less the synthetic messages it lists as a model of no
/// tokens (a message Claude Code made itself is no model call here).
fn without_empty(
    rows: BTreeSet<(String, String, i64, i64, i64)>,
) -> BTreeSet<(String, String, i64, i64, i64)> {
    rows.into_iter()
        .filter(|(_, _, input, output, read)| (input, output, read) != (&0, &0, &0))
        .collect()
}

/// The generated history imported equals ccusage's figures on it, per day
/// and model and per session and model; every case where the two could
/// differ is one of the generated shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_claude_code_history_imports_equal_to_ccusage() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("claude");
    let calls = generated_claude_history(&dir);
    let (_pg, db, svc, _) = service("import_generated", tmp.path()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "import",
            "--source",
            "claude-code",
            "--endpoint",
            &svc.endpoint,
        ])
        .arg("--claude-dir")
        .arg(&dir)
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&said);
    assert!(
        said.contains("1 lines skipped") && said.contains(" 0 rejected"),
        "{said}"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'"
        )
        .await as usize,
        calls
    );
    let daily = ccusage("daily", &dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "(\"timestamp\" AT TIME ZONE 'UTC')::date::text").await,
        without_empty(ccusage_figures(daily["daily"].as_array().unwrap(), "date"))
    );
    let by_session = ccusage("session", &dir, tmp.path());
    assert_eq!(
        stored_figures(&db, "session_id::text").await,
        without_empty(ccusage_figures(
            by_session["sessions"].as_array().unwrap(),
            "sessionId"
        ))
    );
    svc.running.shutdown().await.unwrap();
}
