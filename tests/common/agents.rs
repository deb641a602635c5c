//! The real agents' harness, shared by tests/agents.rs (their OTLP
//! export) and tests/import.rs (their transcripts): the pinned CLIs from
//! npm (tests/agents/package.json) and ccusage, the mocks of their model
//! APIs (tests/agents/mock-*.mjs), a fresh home and repository per run,
//! and the queries that compare what was stored with what the mocks
//! answered and with ccusage.
//!
//! As root, Claude Code's `--dangerously-skip-permissions` needs
//! `IS_SANDBOX=1`; Gemini CLI needs `GOOGLE_GEMINI_BASE_URL`,
//! `GEMINI_API_KEY`, `security.auth.selectedType: "gemini-api-key"` and a
//! trusted folder; Codex takes a custom model provider with
//! `wire_api = "responses"`.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use agent_telemetry::config::OptionalAddr;
use serde_json::Value as Json;
use tokio_postgres::Client;
use uuid::Uuid;

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents")
}

/// Installs the pinned CLIs (committed lock file) once; npm's cache keeps
/// them between runs.
pub fn install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let bin = dir().join("node_modules/.bin");
        if ["claude", "codex", "gemini", "ccusage"]
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

pub fn bin(name: &str) -> PathBuf {
    dir().join("node_modules/.bin").join(name)
}

/// A mock model API, stopped on drop; its log has one JSON line a call.
pub struct Mock {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Mock {
    pub fn start(script: &str, scenario: &str, tmp: &Path) -> Self {
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
    pub fn calls(&self) -> Vec<Json> {
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
pub fn workplace(tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
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
pub async fn run(
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
pub fn prices(tmp: &Path) -> PathBuf {
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

pub async fn service(
    name: &str,
    tmp: &Path,
) -> (super::TestCluster, Client, super::TestService, String) {
    let prices = prices(tmp);
    let (pg, conn, svc) = super::service_with(name, |c| {
        c.otlp.otlp_http_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
        c.otlp.price_table = Some(prices);
    })
    .await;
    let otlp = format!("http://{}", svc.running.otlp_http_addr.unwrap());
    let db = super::db(&conn).await;
    (pg, db, svc, otlp)
}

/// The sessions of `agent` not in `seen` (and adds them).
pub async fn new_sessions(db: &Client, agent: &str, seen: &mut BTreeSet<Uuid>) -> Vec<Uuid> {
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
pub async fn one_session(db: &Client, agent: &str, seen: &mut BTreeSet<Uuid>, run: &str) -> Uuid {
    let new = new_sessions(db, agent, seen).await;
    assert_eq!(new.len(), 1, "{run}: one session, not {new:?}");
    new[0]
}

/// One model call as stored: (input, output, cached, cost, failed).
#[derive(Debug, PartialEq)]
pub struct Call {
    pub input: Option<i64>,
    pub output: Option<i64>,
    pub cached: Option<i64>,
    pub failed: bool,
}

pub async fn llm_requests(db: &Client, session: Uuid) -> Vec<(Call, Option<f64>, Json)> {
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

pub fn call(input: i64, output: i64, cached: i64) -> Call {
    Call {
        input: Some(input),
        output: Some(output),
        cached: Some(cached),
        failed: false,
    }
}

/// USD of (input, cached, output) tokens at (input, cached, output)
/// prices per million, cached tokens being part of the input.
pub fn estimate(prices: (f64, f64, f64), tokens: (f64, f64, f64)) -> f64 {
    let ((p_in, p_cached, p_out), (input, cached, output)) = (prices, tokens);
    ((input - cached) * p_in + cached * p_cached + output * p_out) / 1e6
}

/// Each request's cost is the price table's estimate of its tokens.
pub fn assert_estimated(calls: &[(Call, Option<f64>, Json)], want: &[f64]) {
    assert_eq!(calls.len(), want.len());
    for (c, want) in calls.iter().zip(want) {
        assert!((c.1.unwrap() - want).abs() < 1e-12, "{c:?} vs {want}");
        assert_eq!(c.2["cost_source"], "estimated");
    }
}

/// The session's chat messages: (role, content), in their order.
pub async fn messages(db: &Client, session: Uuid) -> Vec<(String, String)> {
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

pub fn said(role: &str, text: &str) -> (String, String) {
    (role.to_owned(), text.to_owned())
}

/// The run's agent session as the dashboards read it: (LLM requests,
/// input tokens, output tokens).
pub async fn agent_session(db: &Client, session: Uuid) -> (i64, Option<i64>, Option<i64>) {
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
pub async fn chat_session(db: &Client, session: Uuid) -> (i32, i64, Option<String>) {
    let r = db
        .query_one(
            "SELECT message_count, total_tokens, model_id FROM chat_sessions WHERE session_id = $1",
            &[&session],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// The session's rows by event type: how many, and their bytes.
pub async fn event_types(db: &Client, session: Uuid) -> Vec<String> {
    super::strings(
        db,
        &format!(
            "SELECT event_type || ' ' || count(*) || ' (' || sum(pg_column_size(e.*)) || ' B)'
             FROM agent_events e WHERE session_id = '{session}'
             GROUP BY event_type ORDER BY 1"
        ),
    )
    .await
}

/// ccusage's JSON (`ccusage claude daily|session --json --offline`) on the
/// transcripts in `claude_dir`, dates in UTC.
pub fn ccusage(report: &str, claude_dir: &Path, tmp: &Path) -> Json {
    ccusage_of("claude", report, ("CLAUDE_CONFIG_DIR", claude_dir), tmp)
}

/// ccusage's JSON (`ccusage <agent> daily|session --json --offline`) with
/// the agent's folder in `var`, dates in UTC, nothing else from the
/// environment.
pub fn ccusage_of(agent: &str, report: &str, (var, dir): (&str, &Path), tmp: &Path) -> Json {
    let out = Command::new(bin("ccusage"))
        .args([agent, report, "--json", "--offline"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", tmp)
        .env("TZ", "UTC")
        .env(var, dir)
        .output()
        .expect("run ccusage");
    assert!(
        out.status.success(),
        "ccusage {agent} {report}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// key → (input with the cache, output with the thoughts, cache reads),
/// from `ccusage gemini daily|session` rows: its input excludes the
/// cached part, and its output the thoughts, which it counts in
/// `totalTokens` only (Gemini bills thoughts as output, and this service
/// counts them so on both edges: docs/import.md).
pub fn ccusage_gemini_figures(rows: &[Json], key: &str) -> BTreeSet<(String, i64, i64, i64)> {
    rows.iter()
        .map(|r| {
            let n = |f: &str| r[f].as_i64().unwrap();
            let input = n("inputTokens") + n("cacheCreationTokens") + n("cacheReadTokens");
            (
                r[key].as_str().unwrap().to_owned(),
                input,
                n("totalTokens") - input,
                n("cacheReadTokens"),
            )
        })
        .filter(|(_, input, output, _)| input + output > 0)
        .collect()
}

/// key → (input, output, cache reads) of the stored requests, all models.
pub async fn stored_totals(db: &Client, key: &str) -> BTreeSet<(String, i64, i64, i64)> {
    let mut by_key: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for (k, _, i, o, c) in stored_figures(db, key).await {
        let t = by_key.entry(k).or_default();
        *t = (t.0 + i, t.1 + o, t.2 + c);
    }
    by_key
        .into_iter()
        .map(|(k, (i, o, c))| (k, i, o, c))
        .collect()
}

/// (key, model) → (input with the cache, output, cache reads), from
/// ccusage's rows: its input excludes the cache, as Anthropic's does.
pub fn ccusage_figures(rows: &[Json], key: &str) -> BTreeSet<(String, String, i64, i64, i64)> {
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

pub async fn stored_figures(db: &Client, key: &str) -> BTreeSet<(String, String, i64, i64, i64)> {
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

/// `agent-telemetry import --source <source>` of the folder `dir` (passed
/// as `flag`), with `args` besides and HOME at `tmp`: its standard output,
/// once it has succeeded.
pub fn import_source(
    endpoint: &str,
    source: &str,
    (flag, dir): (&str, &Path),
    args: &[&str],
    tmp: &Path,
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["import", "--source", source, "--endpoint", endpoint])
        .arg(flag)
        .arg(dir)
        .args(args)
        .env("HOME", tmp)
        .output()
        .expect("run agent-telemetry import");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

pub fn import(claude_dir: &Path, endpoint: &str, tmp: &Path) -> String {
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

pub fn common_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub fn ccusage_codex_figures(
    rows: &[Json],
    key: &str,
) -> BTreeSet<(String, String, i64, i64, i64)> {
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

/// A generated Claude Code history of the shapes the real transcripts take
/// (several projects and days, three models, a session across midnight,
/// replies streamed as a line per block, sidechain lines in a session and
/// a subagent's file, a resumed session whose new file repeats earlier
/// lines, synthetic zero-usage messages, a truncated last line), written as
/// Claude Code 2.1.328 writes its lines.
pub fn generated_claude_history(dir: &Path) -> usize {
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
pub fn without_empty(
    rows: BTreeSet<(String, String, i64, i64, i64)>,
) -> BTreeSet<(String, String, i64, i64, i64)> {
    rows.into_iter()
        .filter(|(_, _, input, output, read)| (input, output, read) != (&0, &0, &0))
        .collect()
}
