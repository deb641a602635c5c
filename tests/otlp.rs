//! OTLP intake: each coding agent's documented telemetry, sent by the
//! official OpenTelemetry JS SDK exporters (tests/otlp/send.mjs) over gRPC,
//! HTTP/protobuf and HTTP/JSON, lands in agent_events and chat_messages
//! field by field. Plus the protocol's manners: gzip, partial success, auth
//! refusals, UNAVAILABLE with retry info, retries stored once, metrics
//! never counted on top of the events.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_telemetry::config::{OptionalAddr, ServeConfig};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use tokio_postgres::Client;
use tonic::Code;

const CLAUDE: &str = "6f1c2a7e-0d3b-4c1e-9a51-3b8e2f7d9c01";
const GEMINI: &str = "2b7d9e41-5c6a-4f3b-8e2d-1a9c7b5e3f02";
const CODEX: &str = "019a9776-0a34-7842-8627-112b63d66e90";
const COPILOT: &str = "c0c0a11d-7e3f-4b2a-9d6c-5e4f3a2b1c04";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp")
}

/// Installs the pinned OpenTelemetry JS packages (committed lock file) once.
fn install() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let dir = fixtures_dir();
        if dir.join("node_modules/.package-lock.json").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("run `npm ci` in tests/otlp (Node.js and npm are needed)");
        assert!(status.success(), "`npm ci` in tests/otlp failed");
    });
}

/// Runs one fixture through the SDK exporter; panics with its output if an
/// export failed.
async fn send(fixture: &str, protocol: &str, endpoint: &str, now_ms: u64, extra: &[&str]) {
    send_with(fixture, protocol, endpoint, now_ms, extra, &[]).await
}

/// [`send`] with environment variables for node (`NODE_EXTRA_CA_CERTS`).
async fn send_with(
    fixture: &str,
    protocol: &str,
    endpoint: &str,
    now_ms: u64,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) {
    install();
    let out = tokio::process::Command::new("node")
        .envs(env.iter().copied())
        .env(
            "OTEL_LOG_LEVEL",
            std::env::var("OTEL_LOG_LEVEL").unwrap_or_default(),
        )
        .arg("send.mjs")
        .args([fixture, protocol, endpoint, &now_ms.to_string()])
        .args(extra)
        .current_dir(fixtures_dir())
        .output()
        .await
        .expect("run node send.mjs");
    if std::env::var_os("OTLP_DEBUG").is_some() {
        eprintln!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        out.status.success(),
        "send.mjs {fixture} {protocol} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// USD per million tokens, chosen so the expected estimates are easy to check.
fn prices() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("otlp-test-prices.json");
    std::fs::write(
        &path,
        r#"{"models": {
            "gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25},
            "gpt-5": {"input": 1.25, "output": 10, "cached_input": 0.125},
            "gemini-2.5-pro": {"input": 1.25, "output": 10, "cached_input": 0.31}
        }}"#,
    )
    .unwrap();
    path
}

fn with_otlp(cfg: &mut ServeConfig) {
    cfg.otlp.otlp_grpc_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
    cfg.otlp.otlp_http_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
    cfg.otlp.price_table = Some(prices());
}

struct Endpoints {
    grpc: String,
    http: String,
}

fn endpoints(svc: &common::TestService) -> Endpoints {
    Endpoints {
        grpc: format!(
            "http://{}",
            svc.running.otlp_grpc_addr.expect("OTLP/gRPC on")
        ),
        http: format!(
            "http://{}",
            svc.running.otlp_http_addr.expect("OTLP/HTTP on")
        ),
    }
}

/// One stored event, the fields the test checks.
#[derive(Debug, PartialEq)]
struct Row {
    event_type: String,
    agent: String,
    version: String,
    model: Option<String>,
    input: Option<i64>,
    output: Option<i64>,
    cached: Option<i64>,
    cost: Option<f64>,
    duration: Option<i64>,
    tool: Option<String>,
    success: Option<String>,
    cost_source: Option<String>,
    project: String,
    severity: Option<String>,
}

async fn rows(db: &Client, session: &str) -> Vec<Row> {
    db.query(
        "SELECT e.event_type, e.agent_id, e.agent_version, e.model, e.input_tokens, e.output_tokens,
                e.cached_tokens, e.cost_usd::float8, e.duration_ms, e.data->>'tool_name',
                e.data->>'success', e.data->>'cost_source', p.full_name, e.severity
         FROM agent_events e JOIN projects p ON p.id = e.project_id
         WHERE e.session_id = $1::text::uuid AND e.event_type <> 'metric'
         ORDER BY e.\"timestamp\", e.event_type",
        &[&session],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Row {
        event_type: r.get(0),
        agent: r.get(1),
        version: r.get(2),
        model: r.get(3),
        input: r.get(4),
        output: r.get(5),
        cached: r.get(6),
        cost: r.get(7),
        duration: r.get(8),
        tool: r.get(9),
        success: r.get(10),
        cost_source: r.get(11),
        project: r.get(12),
        severity: r.get(13),
    })
    .collect()
}

/// A row with only the always-present fields set.
fn row(event_type: &str, agent: &str, version: &str, project: &str) -> Row {
    Row {
        event_type: event_type.into(),
        agent: agent.into(),
        version: version.into(),
        model: None,
        input: None,
        output: None,
        cached: None,
        cost: None,
        duration: None,
        tool: None,
        success: None,
        cost_source: None,
        project: project.into(),
        severity: None,
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

async fn messages(db: &Client, session: &str) -> Vec<(String, String, String)> {
    db.query(
        "SELECT m.role, m.content, p.full_name FROM chat_messages m
         JOIN chat_sessions s ON s.session_id = m.session_id
         JOIN projects p ON p.id = s.project_id
         WHERE m.session_id = $1::text::uuid ORDER BY m.\"timestamp\", m.sequence",
        &[&session],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_agents_fixtures_are_stored_field_by_field() {
    let (_pg, conn, svc) = common::service_with("otlp_agents", with_otlp).await;
    let ep = endpoints(&svc);
    let db = common::db(&conn).await;
    let mut admin = common::db(&conn).await;
    // A developer's key: Codex sends no user attribute, so its records are
    // the key's developer's.
    let key = agent_telemetry::auth::keys::create_scoped(
        &mut admin,
        "codex",
        &["acme/codex-proj".into()],
        &[],
        Some("codex-dev@example.com"),
        &Default::default(),
    )
    .await
    .unwrap()
    .key;
    let now = now_ms();
    // Claude Code: gRPC (its documented example); the resource's
    // project.name wins over the header.
    send(
        "claude",
        "grpc",
        &ep.grpc,
        now,
        &["--header", "x-project=ignored/header"],
    )
    .await;
    // Gemini CLI: gRPC, always gzip; the project from `x-project`.
    send(
        "gemini",
        "grpc",
        &ep.grpc,
        now,
        &["--gzip", "--header", "x-project=acme/gemini-app"],
    )
    .await;
    // Codex: OTLP/HTTP binary; the project from its API key.
    let bearer = format!("authorization=Bearer {key}");
    send("codex", "http-proto", &ep.http, now, &["--header", &bearer]).await;
    // Copilot: OTLP/HTTP JSON, its default; the repository from its span.
    send("copilot", "http-json", &ep.http, now, &["--gzip"]).await;
    send("unknown", "http-json", &ep.http, now, &[]).await;

    claude_code_logs(&db).await;
    gemini_cli_logs(&db).await;
    codex_logs(&db).await;
    copilot_spans(&db).await;
    an_unknown_event(&db).await;
    developers_of_the_records(&db).await;
    a_retried_export_stores_nothing_twice(&db, &ep, now).await;
    metrics_fill_no_token_or_cost_column(&db, &ep, now).await;
    productivity_of_every_agent(&db).await;
    let panel = requests_by_model_panel(&db).await;
    assert_eq!(panel.len(), 4, "one line per model");
    svc.running.shutdown().await.unwrap();
}

/// Claude Code: logs over gRPC.
async fn claude_code_logs(db: &Client) {
    // --- Claude Code
    let claude = rows(db, CLAUDE).await;
    let c = |t| row(t, "claude-code", "2.0.14", "acme/web");
    assert_eq!(
        claude,
        vec![
            c("user_prompt"),
            Row {
                model: Some("claude-sonnet-4-5-20250929".into()),
                // 120 fresh + 5000 cache read + 800 cache creation.
                input: Some(5920),
                output: Some(340),
                cached: Some(5000),
                cost: claude[1].cost,
                duration: Some(2345),
                cost_source: Some("agent".into()),
                ..c("llm_request")
            },
            Row {
                duration: Some(45),
                tool: Some("Edit".into()),
                success: Some("true".into()),
                ..c("tool_use")
            },
            Row {
                tool: Some("Bash".into()),
                ..c("tool_decision")
            },
            Row {
                model: Some("claude-sonnet-4-5-20250929".into()),
                duration: Some(1200),
                severity: Some("error".into()),
                ..c("error_encountered")
            },
        ]
    );
    assert!(
        close(claude[1].cost, 0.0213),
        "sent cost kept: {:?}",
        claude[1].cost
    );
    assert_eq!(
        messages(db, CLAUDE).await,
        vec![(
            "user".into(),
            "Fix the failing date parser".into(),
            "acme/web".into()
        )]
    );
}

/// Gemini CLI: logs over gRPC, gzip.
async fn gemini_cli_logs(db: &Client) {
    // --- Gemini CLI
    let gemini = rows(db, GEMINI).await;
    let g = |t| row(t, "gemini-cli", "0.9.0", "acme/gemini-app");
    assert_eq!(
        gemini,
        vec![
            g("user_prompt"),
            Row {
                model: Some("gemini-2.5-pro".into()),
                input: Some(9000),
                // 400 output + 150 thoughts.
                output: Some(550),
                cached: Some(6000),
                cost: gemini[1].cost,
                duration: Some(1800),
                cost_source: Some("estimated".into()),
                ..g("llm_request")
            },
            Row {
                duration: Some(30),
                tool: Some("write_file".into()),
                success: Some("true".into()),
                ..g("tool_use")
            },
            Row {
                model: Some("gemini-2.5-pro".into()),
                duration: Some(100),
                severity: Some("error".into()),
                ..g("error_encountered")
            },
        ]
    );
    // 3000 fresh × 1.25 + 6000 cached × 0.31 + 550 × 10, per million.
    assert!(close(gemini[1].cost, 0.01111), "{:?}", gemini[1].cost);
    assert_eq!(
        messages(db, GEMINI).await,
        vec![
            (
                "user".into(),
                "Add a README section".into(),
                "acme/gemini-app".into()
            ),
            (
                "assistant".into(),
                "Here is the section.".into(),
                "acme/gemini-app".into()
            ),
        ]
    );
}

/// Codex: logs over OTLP/HTTP protobuf.
async fn codex_logs(db: &Client) {
    // --- Codex: numbers as strings.
    let codex = rows(db, CODEX).await;
    let x = |t| row(t, "codex", "0.46.0", "acme/codex-proj");
    assert_eq!(
        codex,
        vec![
            x("user_prompt"),
            Row {
                model: Some("gpt-5-codex".into()),
                input: Some(12000),
                output: Some(900),
                cached: Some(8000),
                cost: codex[1].cost,
                duration: Some(5100),
                cost_source: Some("estimated".into()),
                ..x("llm_request")
            },
            // The stream's other events (an output item here) are not
            // stored: they carry no figure of their own.
            Row {
                tool: Some("shell".into()),
                ..x("tool_decision")
            },
            Row {
                duration: Some(2300),
                tool: Some("shell".into()),
                success: Some("false".into()),
                ..x("tool_use")
            },
        ]
    );
    // gpt-5-codex is priced as gpt-5: 4000 × 1.25 + 8000 × 0.125 + 900 × 10.
    assert!(close(codex[1].cost, 0.015), "{:?}", codex[1].cost);
    assert_eq!(
        messages(db, CODEX).await,
        vec![(
            "user".into(),
            "Refactor the CLI".into(),
            "acme/codex-proj".into()
        )]
    );
}

/// Copilot: spans over OTLP/HTTP JSON.
async fn copilot_spans(db: &Client) {
    // --- Copilot: spans; the repository named on invoke_agent only.
    let copilot = rows(db, COPILOT).await;
    let p = |t| row(t, "github-copilot", "0.33.0", "acme/copilot-proj");
    assert_eq!(
        copilot,
        vec![
            // The turn's totals stay in data: the chat span has them.
            Row {
                duration: Some(4000),
                ..p("agent_invocation")
            },
            Row {
                model: Some("gpt-4o-2024-08-06".into()),
                input: Some(1500),
                output: Some(250),
                cached: Some(1200),
                cost: copilot[1].cost,
                duration: Some(3000),
                cost_source: Some("estimated".into()),
                ..p("llm_request")
            },
            Row {
                duration: Some(50),
                tool: Some("readFile".into()),
                success: Some("true".into()),
                ..p("tool_use")
            },
        ]
    );
    // 300 fresh × 2.5 + 1200 cached × 1.25 + 250 × 10.
    assert!(close(copilot[1].cost, 0.00475), "{:?}", copilot[1].cost);
    assert_eq!(
        messages(db, COPILOT).await,
        vec![
            (
                "user".into(),
                "Explain this function".into(),
                "acme/copilot-proj".into()
            ),
            (
                "assistant".into(),
                "It parses ISO dates.".into(),
                "acme/copilot-proj".into()
            ),
        ]
    );
    let linked = common::count(
        db,
        &format!(
            "SELECT count(*) FROM agent_events c JOIN agent_events r ON r.id = c.parent_event_id
             WHERE c.session_id = '{COPILOT}' AND r.event_type = 'agent_invocation'"
        ),
    )
    .await;
    assert_eq!(
        linked, 2,
        "chat and execute_tool spans point at their invoke_agent"
    );
}

/// An agent the service has no rules for.
async fn an_unknown_event(db: &Client) {
    // --- An unknown event: stored under its name with its attributes.
    let unknown = db
        .query_one(
            "SELECT e.agent_id, (e.data->>'steps')::int, e.data->>'planner', p.full_name
             FROM agent_events e JOIN projects p ON p.id = e.project_id
             WHERE e.event_type = 'my_agent.plan_created'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(unknown.get::<_, String>(0), "my-agent");
    assert_eq!(unknown.get::<_, i32>(1), 3);
    assert_eq!(unknown.get::<_, String>(2), "tree");
    assert_eq!(
        unknown.get::<_, String>(3),
        "unattributed",
        "the default project"
    );
}

/// Each agent's developer attributes: Claude Code's account id, Gemini
/// CLI's email (the key when nothing steadier is sent); none for Codex and
/// Copilot, whose fixtures send none.
async fn developers_of_the_records(db: &Client) {
    let of = |session: &str| {
        format!(
            "SELECT DISTINCT coalesce(u.key || ' ' || coalesce(u.email, '-'), 'none')
             FROM agent_events e LEFT JOIN users u ON u.id = e.user_id
             WHERE e.session_id = '{session}' AND e.event_type <> 'metric'"
        )
    };
    assert_eq!(
        common::strings(db, &of(CLAUDE)).await,
        ["4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b -"]
    );
    assert_eq!(
        common::strings(db, &of(GEMINI)).await,
        ["dev@example.com dev@example.com"]
    );
    assert_eq!(
        common::strings(db, &of(CODEX)).await,
        ["codex-dev@example.com -"]
    );
    // Prompts keep their session's developer.
    let chat = format!(
        "SELECT u.key FROM chat_sessions s JOIN users u ON u.id = s.user_id WHERE s.session_id = '{CLAUDE}'"
    );
    assert_eq!(
        common::strings(db, &chat).await,
        ["4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b"]
    );
    // Claude Code's organization.id puts its project in that organisation,
    // with its developer as a member; agents that send none leave theirs
    // in none.
    assert_eq!(
        common::strings(
            db,
            "SELECT p.full_name || ' ' || coalesce(o.key, '-') FROM projects p
             LEFT JOIN organizations o ON o.id = p.organization_id
             WHERE p.id IN (SELECT DISTINCT project_id FROM agent_events) ORDER BY 1"
        )
        .await
        .iter()
        .filter(|l| l.starts_with("acme/web "))
        .collect::<Vec<_>>(),
        ["acme/web 9d2f6a3c-1111-4c2e-8a4b-5e6f7a8b9c0d"]
    );
    assert_eq!(
        common::strings(
            db,
            "SELECT o.key || ' ' || u.key FROM organization_members m
             JOIN organizations o ON o.id = m.organization_id JOIN users u ON u.id = m.user_id"
        )
        .await,
        ["9d2f6a3c-1111-4c2e-8a4b-5e6f7a8b9c0d 4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b"]
    );
}

/// The same exports again, as an exporter retries them.
async fn a_retried_export_stores_nothing_twice(db: &Client, ep: &Endpoints, now: u64) {
    // --- An exporter's retry of the same records stores nothing twice.
    let before = common::count(db, "SELECT count(*) FROM agent_events").await;
    send("claude", "grpc", &ep.grpc, now, &[]).await;
    send("copilot", "http-json", &ep.http, now, &[]).await;
    assert_eq!(
        common::count(db, "SELECT count(*) FROM agent_events").await,
        before
    );
    assert_eq!(
        common::count(db, "SELECT count(*) FROM chat_messages").await,
        6
    );
}

/// OTLP metrics beside the events.
async fn metrics_fill_no_token_or_cost_column(db: &Client, ep: &Endpoints, now: u64) {
    // --- Metrics: accepted, stored as `metric` rows, never in the token
    // and cost columns the events already fill.
    let sums = "SELECT sum(input_tokens)::int8, sum(output_tokens)::int8, sum(cost_usd)::float8, count(*) FILTER (WHERE model IS NOT NULL)
                FROM agent_events";
    let totals = |r: tokio_postgres::Row| -> (i64, i64, f64, i64) {
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let before = totals(db.query_one(sums, &[]).await.unwrap());
    send("metrics", "grpc", &ep.grpc, now, &[]).await;
    send("metrics", "http-json", &ep.http, now, &[]).await;
    let metric_rows = common::count(
        db,
        &format!(
            "SELECT count(*) FROM agent_events WHERE event_type = 'metric' AND session_id = '{CLAUDE}'
             AND input_tokens IS NULL AND cost_usd IS NULL AND model IS NULL AND metrics ? 'value'"
        ),
    )
    .await;
    assert!(metric_rows >= 6, "metric data points stored: {metric_rows}");
    assert_eq!(totals(db.query_one(sums, &[]).await.unwrap()), before);
}

/// What the agents' own records say about the work, as productivity_daily
/// counts it: each agent's permission words as one accepted flag, Claude
/// Code's delta line, commit and pull-request counters as counts.
async fn productivity_of_every_agent(db: &Client) {
    let rows = common::strings(
        db,
        "SELECT agent_id || ' ' || sum(tools_accepted) || ' ' || sum(tools_rejected) || ' '
                || coalesce(sum(lines_added), 0) || ' ' || coalesce(sum(lines_removed), 0) || ' '
                || coalesce(sum(commits), 0) || ' ' || coalesce(sum(pull_requests), 0)
         FROM productivity_daily WHERE agent_id IN ('claude-code', 'codex', 'gemini-cli')
         GROUP BY agent_id ORDER BY 1",
    )
    .await;
    assert_eq!(
        rows,
        [
            // One rejected Bash call; the metrics fixture sent twice (gRPC,
            // HTTP/JSON), each a delta of 25 and 7 lines, a commit and a
            // pull request.
            "claude-code 0 1 50 14 2 2",
            // Codex `approved`, Gemini CLI `accept` on its tool call.
            "codex 1 0 0 0 0 0",
            "gemini-cli 1 0 0 0 0 0"
        ],
        "agent accepted rejected lines+ lines- commits pull-requests"
    );
}

/// The rows of the "Requests and latency by model" panel.
async fn requests_by_model_panel(db: &Client) -> Vec<Vec<String>> {
    // What a team lead sees: the "LLM cost and tokens" dashboard's
    // "Requests and latency by model" panel (plain PostgreSQL serves
    // llm_usage_daily as a view).
    let panel =
        common::grafana::panel(db, "llm-cost.json", "Requests and latency by model", 1).await;
    common::say("model | requests | errors | cost USD | avg latency ms | worst daily p95 ms");
    for r in &panel {
        common::say(&r.join(" | "));
    }
    panel
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn text(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// Claude Code-shaped api_request records at `times`, in one request.
fn claude_logs(times: &[SystemTime], project: &str) -> ExportLogsServiceRequest {
    let records = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let nanos = t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            LogRecord {
                time_unix_nano: nanos,
                observed_time_unix_nano: nanos,
                body: Some(AnyValue {
                    value: Some(Value::StringValue("claude_code.api_request".into())),
                }),
                attributes: vec![
                    text("event.name", "api_request"),
                    text("session.id", CLAUDE),
                    text("model", "claude-haiku-4-5"),
                    text("input_tokens", &format!("{}", 10 + i)),
                    text("output_tokens", "5"),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "claude-code"),
                    text("project.name", project),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn partial_success_names_the_bad_record_and_keeps_the_good_ones() {
    let (_pg, conn, svc) = common::service_with("otlp_partial", with_otlp).await;
    let ep = endpoints(&svc);
    let now = SystemTime::now();
    let future = now + Duration::from_secs(10 * 365 * 86_400);
    let mut client = LogsServiceClient::connect(ep.grpc.clone()).await.unwrap();
    let reply = client
        .export(claude_logs(
            &[now, future, now - Duration::from_secs(1)],
            "acme/partial",
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = reply.partial_success.expect("partial success");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial
            .error_message
            .contains("resourceLogs[0].scopeLogs[0].logRecords[1]: timestamp"),
        "{}",
        partial.error_message
    );
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        2
    );

    // The same over HTTP/JSON, gzip: the body is hand-written OTLP JSON
    // (hex ids, int64 as strings) as the JS and Copilot exporters send it.
    let t = now.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let bad = future.duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let json = format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"gemini-cli"}}}}]}},
        "scopeLogs":[{{"logRecords":[
          {{"timeUnixNano":"{t}","attributes":[{{"key":"event.name","value":{{"stringValue":"gemini_cli.tool_call"}}}},
             {{"key":"function_name","value":{{"stringValue":"read_file"}}}},{{"key":"duration_ms","value":{{"intValue":"12"}}}}],
           "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}},
          {{"timeUnixNano":"{bad}","attributes":[{{"key":"event.name","value":{{"stringValue":"gemini_cli.tool_call"}}}}]}}
        ]}}]}}]}}"#
    );
    let (status, headers, body) = http_post(
        svc.running.otlp_http_addr.unwrap(),
        "/v1/logs",
        "application/json",
        &gzip(json.as_bytes()),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200, "{headers}\n{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    // int64 may travel as a JSON number or string; exporters read both.
    let rejected = reply["partialSuccess"]["rejectedLogRecords"].to_string();
    assert_eq!(rejected.trim_matches('"'), "1", "{body}");
    assert!(
        reply["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("logRecords[1]: timestamp"),
        "{body}"
    );
    let stored = db
        .query_one(
            "SELECT data->>'tool_name', duration_ms, data->>'trace_id' FROM agent_events WHERE agent_id = 'gemini-cli'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "read_file");
    assert_eq!(
        stored.get::<_, i64>(1),
        12,
        "an int64 sent as a JSON string"
    );
    assert_eq!(
        stored.get::<_, String>(2),
        "5b8efff798038103d269b633813fc60c"
    );

    // zstd bodies (the Collector's exporters offer zstd) are read like
    // gzip ones; an encoding the receiver does not know is refused by name.
    let now = SystemTime::now();
    let request = claude_logs(&[now, now - Duration::from_secs(1)], "acme/zstd");
    let zstd = zstd::encode_all(&prost::Message::encode_to_vec(&request)[..], 3).unwrap();
    let (status, _, body) = http_post(
        svc.running.otlp_http_addr.unwrap(),
        "/v1/logs",
        "application/x-protobuf",
        &zstd,
        &[("content-encoding", "zstd")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let db = common::db(&conn).await;
    common::wait_for("the zstd records", Duration::from_secs(10), || async {
        common::count(&db, "SELECT count(*) FROM agent_events e JOIN projects p ON p.id = e.project_id WHERE p.name = 'zstd'").await == 2
    })
    .await;
    let (status, _, body) = http_post(
        svc.running.otlp_http_addr.unwrap(),
        "/v1/logs",
        "application/x-protobuf",
        &zstd,
        &[("content-encoding", "br")],
    )
    .await;
    assert!(
        status >= 400 && body.contains("send gzip, zstd or none"),
        "{status} {body}"
    );

    // A body that is not OTLP at all: 400 with a reason, nothing stored.
    let (status, _, body) = http_post(
        svc.running.otlp_http_addr.unwrap(),
        "/v1/logs",
        "application/json",
        b"{\"resourceLogs\": 7}",
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("not a valid OTLP JSON message"), "{body}");
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_are_required_and_scoped_and_an_outage_asks_for_a_retry() {
    let (pg, conn, svc) = common::service_with("otlp_auth", |cfg| {
        with_otlp(cfg);
        cfg.security.require_api_key = true;
        cfg.pipeline.copy_retry_timeout = Duration::from_secs(2);
    })
    .await;
    let ep = endpoints(&svc);
    let mut admin = common::db(&conn).await;
    let key = agent_telemetry::auth::keys::create(
        &mut admin,
        "t",
        &["acme/allowed".into()],
        &Default::default(),
    )
    .await
    .unwrap()
    .key;
    let mut client = LogsServiceClient::connect(ep.grpc.clone()).await.unwrap();
    let now = SystemTime::now();

    let e = client
        .export(claude_logs(&[now], "acme/allowed"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let (status, _, body) = http_post(
        svc.running.otlp_http_addr.unwrap(),
        "/v1/logs",
        "application/json",
        b"{}",
        &[],
    )
    .await;
    assert_eq!(status, 401, "{body}");

    let with_key = |req| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let e = client
        .export(with_key(claude_logs(&[now], "acme/other")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("may not write to project \"acme/other\""),
        "{e:?}"
    );
    let ok = client
        .export(with_key(claude_logs(&[now], "acme/allowed")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.partial_success, None, "fully accepted");

    // The database goes away: UNAVAILABLE with RetryInfo, so the exporter
    // retries later; nothing was acknowledged.
    drop(admin);
    let stopped = tokio::task::spawn_blocking(move || {
        pg.cluster.stop().expect("stop PostgreSQL");
        pg
    })
    .await
    .unwrap();
    let e = client
        .export(with_key(claude_logs(
            &[now + Duration::from_millis(1)],
            "acme/allowed",
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    use tonic_types::StatusExt;
    assert!(
        e.get_details_retry_info().is_some(),
        "RetryInfo tells the exporter when to retry: {e:?}"
    );
    drop(stopped);
    svc.running.shutdown().await.unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One HTTP/1.1 POST; (status, headers, body).
async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, headers.to_owned(), body.to_owned())
}

use common::{
    TsDb,
    aggregates::{assert_aggregates_exact, materialise_all, set_materialized_only},
};

on_timescaledb!(
    developer_and_team_figures_are_exact_over_native_and_otlp,
    pseudonymised_developers_leave_no_email_or_account_id_and_can_be_forgotten,
);

/// Claude Code's account and organisation in the OTLP fixtures.
const CLAUDE_ACCOUNT: &str = "4a5b6c7d-2222-4e8f-9a0b-1c2d3e4f5a6b";
const CLAUDE_ORG: &str = "9d2f6a3c-1111-4c2e-8a4b-5e6f7a8b9c0d";

/// Claude Code's and Gemini CLI's fixtures over OTLP/gRPC, now; Gemini's
/// rows in `gemini_project`.
async fn claude_and_gemini(svc: &common::TestService, gemini_project: &str) {
    claude_and_gemini_at(svc, gemini_project, now_ms()).await
}

async fn claude_and_gemini_at(svc: &common::TestService, gemini_project: &str, now: u64) {
    let ep = endpoints(svc);
    send("claude", "grpc", &ep.grpc, now, &[]).await;
    let header = format!("x-project={gemini_project}");
    send("gemini", "grpc", &ep.grpc, now, &["--header", &header]).await;
}

/// No row stored twice: on the columnstore nothing but the key tables
/// stands in the way of a second copy.
async fn each_id_once(db: &Client, at: &str) {
    for table in ["agent_events", "chat_messages"] {
        let twice = common::count(
            db,
            &format!("SELECT count(*) - count(DISTINCT id) FROM {table}"),
        )
        .await;
        assert_eq!(twice, 0, "{at}: rows of {table} stored twice");
    }
}

/// What an editor extension sends for three developers in two
/// organisations, `age_s` old: the Claude Code account again (natively, in
/// its organisation), the Gemini CLI user (in Globex) and a third one.
fn native_work(age_s: i64) -> Vec<agent_telemetry::pb::AgentEvent> {
    use agent_telemetry::pb;
    let who = [
        (CLAUDE_ACCOUNT, "Ada", CLAUDE_ORG, "acme/api"),
        ("dev@example.com", "Bob", "globex", "globex/shop"),
        ("carol@globex.example", "Carol", "globex", "globex/mobile"),
    ];
    let mut out = Vec::new();
    for (n, (key, name, org, project)) in who.into_iter().enumerate() {
        let session = uuid::Uuid::new_v4().to_string();
        for i in 0..(6 + 3 * n as i64) {
            let mut e = common::event(project, age_s + 50 * i);
            e.session_id = session.clone();
            e.user = Some(pb::User {
                key: key.into(),
                display_name: name.into(),
                email: String::new(),
            });
            e.organization = Some(pb::Organization {
                key: org.into(),
                display_name: String::new(),
            });
            match i % 4 {
                0 => {
                    e.event_type = "llm_request".into();
                    e.model = Some("claude-sonnet-4-5".into());
                    e.input_tokens = Some(1_000 + i);
                    e.output_tokens = Some(200);
                    e.cached_tokens = Some(500);
                    e.cost_usd = Some(0.01 * (n + 1) as f64);
                }
                1 => {
                    e.event_type = "file_modify".into();
                    e.data_json = serde_json::json!({
                        "path": format!("src/{}.rs", i % 3), "lines_added": 10 + i, "lines_removed": 2
                    })
                    .to_string();
                }
                2 => {
                    e.event_type = "command_execution".into();
                    e.data_json = r#"{"command":"cargo test"}"#.into();
                }
                _ => {
                    e.data_json = r#"{"tool_name":"Edit","success":false}"#.into();
                }
            }
            out.push(e);
        }
    }
    out
}

/// Three developers in two organisations, over OTLP (Claude Code and
/// Gemini CLI, the official exporters) and the native API, then late rows
/// two and three days old: developer_daily, team_daily and the others equal
/// the raw rows in real time and materialised only, and the Developers
/// dashboard's main table shows each developer once.
async fn developer_and_team_figures_are_exact_over_native_and_otlp(tsdb: TsDb) {
    let mut cfg = tsdb.serve_config();
    with_otlp(&mut cfg);
    cfg.storage.late_refresh_every = Duration::from_millis(200);
    // Each late hour refreshed at the next round (no settle period):
    // what is checked here is the figures, not when they come.
    cfg.storage.late_settle = Duration::ZERO;
    let svc = common::start_service(cfg.clone()).await;
    let now = now_ms();
    claude_and_gemini_at(&svc, "globex/shop", now).await;
    // The exporters retry the same records (after a lost response, say).
    claude_and_gemini_at(&svc, "globex/shop", now).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, native_work(120)).await;
    assert!(ack.rejected.is_empty(), "{ack:?}");
    drop(client);
    // PGlite serves one client at a time: read once the service is stopped.
    svc.running.shutdown().await.unwrap();
    {
        let db = common::db(&tsdb.conn).await;
        each_id_once(&db, "after the exporters' retries").await;
        assert_aggregates_exact(&db).await;
        materialise_all(&db).await;
        set_materialized_only(&db, true).await;
        assert_aggregates_exact(&db).await;
    }

    // Late rows, in buckets already materialised: the late-data refresher
    // (its round at shutdown, at the latest) brings them in.
    let svc = common::start_service(cfg).await;
    let mut client = common::client(&svc.endpoint).await;
    let mut late = native_work(2 * 86_400);
    late.extend(native_work(3 * 86_400));
    let ack = common::ingest(&mut client, 2, late).await;
    assert!(ack.rejected.is_empty(), "{ack:?}");
    drop(client);
    svc.running.shutdown().await.unwrap();
    let db = common::db(&tsdb.conn).await;
    assert_aggregates_exact(&db).await;
    set_materialized_only(&db, false).await;
    assert_aggregates_exact(&db).await;

    let table = common::grafana::panel(&db, "developers.json", "Per developer", 7).await;
    let head = "developer | sessions | active hours | events | LLM requests | input tokens | output tokens | cost USD | tool calls | tool errors | files modified | lines added | lines removed | commands | errors";
    common::say(&format!(
        "Developers dashboard, \"Per developer\", last 7 days (native: {}):\n{head}\n{}",
        tsdb.native,
        table
            .iter()
            .map(|r| r.join(" | "))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    let developers: Vec<&str> = table.iter().map(|r| r[0].as_str()).collect();
    let mut sorted = developers.clone();
    sorted.sort();
    assert_eq!(sorted, ["Ada", "Bob", "Carol"], "{table:?}");
    // Ada's Claude Code rows over OTLP and her native rows are one
    // developer; Bob's Gemini CLI rows and his native ones too.
    let sessions = |name: &str| -> i64 {
        table.iter().find(|r| r[0] == name).unwrap()[1]
            .parse()
            .unwrap()
    };
    assert_eq!(
        sessions("Ada"),
        4,
        "the Claude Code session and three native ones"
    );
    assert_eq!(
        sessions("Bob"),
        4,
        "the Gemini CLI session and three native ones"
    );
    assert_eq!(sessions("Carol"), 3);
    // The developer variable on the older dashboards: one developer's cost
    // per agent and top tools equal their raw rows.
    for name in ["Ada", "Bob"] {
        let id = common::strings(
            &db,
            &format!("SELECT id::text FROM users WHERE display_name = '{name}'"),
        )
        .await;
        let picked = [("developer", id.clone())];
        let panel = |file, title| common::grafana::panel_with(&db, file, title, 7, &picked);
        let cost: f64 = panel("llm-cost.json", "Cost per day by agent")
            .await
            .iter()
            .map(|r| r[2].parse::<f64>().unwrap())
            .sum();
        let tools: i64 = panel("agent-activity.json", "Top tools")
            .await
            .iter()
            .map(|r| r[1].parse::<i64>().unwrap())
            .sum();
        let raw = |sql: String| {
            let db = &db;
            async move {
                common::grafana::text_rows(db, &sql)
                    .await
                    .remove(0)
                    .remove(0)
            }
        };
        let window = "\"timestamp\" > now() - interval '8 days'";
        let raw_cost: f64 = raw(format!(
            "SELECT coalesce(sum(cost_usd), 0)::text FROM agent_events WHERE user_id = {} AND model IS NOT NULL AND {window}",
            id[0]
        ))
        .await
        .parse()
        .unwrap();
        let raw_tools: i64 = raw(format!(
            "SELECT count(*)::text FROM agent_events WHERE user_id = {} AND event_type = 'tool_use' AND data ? 'tool_name' AND {window}",
            id[0]
        ))
        .await
        .parse()
        .unwrap();
        assert!(
            cost > 0.0 && (cost - raw_cost).abs() < 1e-9,
            "{name}: cost {cost}, raw {raw_cost}"
        );
        assert!(raw_tools > 0);
        assert_eq!(tools, raw_tools, "{name}: top tools");
    }

    let teams = common::grafana::panel(&db, "teams.json", "Per organisation", 7).await;
    common::say(&format!(
        "Teams dashboard, \"Per organisation\": {}",
        teams
            .iter()
            .map(|r| format!("{} {} developers, cost {}", r[0], r[1], r[7]))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let mut orgs: Vec<(String, String)> =
        teams.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    orgs.sort();
    assert_eq!(
        orgs,
        [
            (CLAUDE_ORG.to_owned(), "1".to_owned()),
            ("globex".to_owned(), "2".to_owned())
        ],
        "{teams:?}"
    );
}

/// What names the people of the pseudonymised test: the Claude Code
/// account, the Gemini CLI user's email, and a native client's developer.
const PERSONAL: [&str; 5] = [
    CLAUDE_ACCOUNT,
    "dev@example.com",
    "ada@example.com",
    "Ada Lovelace",
    "bob@example.com",
];

/// A developer's work natively: events (one with a file edit), a chat
/// session with a message, an agent session.
fn personal_work(
    key: &str,
    name: &str,
    age_s: i64,
) -> (
    Vec<agent_telemetry::pb::AgentEvent>,
    agent_telemetry::pb::SessionReport,
) {
    use agent_telemetry::pb;
    let user = Some(pb::User {
        key: key.into(),
        display_name: name.into(),
        email: key.into(),
    });
    let events = (0..5)
        .map(|i| {
            let mut e = common::event("acme/private", age_s + i);
            e.user = user.clone();
            e
        })
        .collect();
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(age_s as u64, 1);
    let mut chat = generator.chat_session();
    chat.user = user.clone();
    let agent = pb::AgentSession {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: "claude-code".into(),
        agent_version: "2.0.14".into(),
        project: "acme/private".into(),
        start_time: common::event("x/y", age_s).timestamp,
        user,
        ..Default::default()
    };
    (
        events,
        pb::SessionReport {
            chat_sessions: vec![chat],
            agent_sessions: vec![agent],
        },
    )
}

/// With --pseudonymize-users: Claude Code and Gemini CLI over OTLP and two
/// developers natively (one of them 10 days back, in a compressed chunk);
/// no table holds an email, an account id or a name, yet each developer is
/// one pseudonymous user. Then `users forget` one of them: none of their
/// rows is left, the audit log has the counts, and every aggregate
/// (materialised only) equals the raw rows.
async fn pseudonymised_developers_leave_no_email_or_account_id_and_can_be_forgotten(tsdb: TsDb) {
    use agent_telemetry::pb;
    const SECRET: &str = "an operator's secret of at least 32 bytes";
    let mut cfg = tsdb.serve_config();
    with_otlp(&mut cfg);
    cfg.security.pseudonymize_users = true;
    cfg.security.pseudonym_secret = Some(SECRET.into());
    let svc = common::start_service(cfg).await;
    claude_and_gemini(&svc, "acme/private").await;
    let mut client = common::client(&svc.endpoint).await;
    for (i, (key, name, age)) in [
        ("ada@example.com", "Ada Lovelace", 60),
        ("ada@example.com", "Ada Lovelace", 10 * 86_400),
        ("bob@example.com", "Bob", 120),
    ]
    .into_iter()
    .enumerate()
    {
        let (events, report) = personal_work(key, name, age);
        let ack = client
            .report_sessions(report.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (ack.chat_sessions_stored, ack.agent_sessions_stored),
            (1, 1),
            "{ack:?}"
        );
        let ack = common::ingest(&mut client, i as u64, events).await;
        assert_eq!(ack.stored, 5, "{ack:?}");
        let message = pb::ChatMessage {
            id: uuid::Uuid::new_v4().to_string(),
            session_id: report.chat_sessions[0].session_id.clone(),
            role: "user".into(),
            content: "fix the build".into(),
            timestamp: common::event("x/y", age).timestamp,
            ..Default::default()
        };
        let ack = client
            .ingest_chat_messages(pb::ChatMessageBatch {
                sequence: 10 + i as u64,
                sessions: vec![],
                messages: vec![message],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.stored, 1, "{ack:?}");
    }
    drop(client);
    svc.running.shutdown().await.unwrap();

    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::rows_naming(&db, &PERSONAL).await,
        Vec::<String>::new()
    );
    // The scan finds what is there: an agent's name is in the raw tables,
    // the session tables and the aggregates.
    let agent = common::rows_naming(&db, &["claude-code"]).await;
    assert!(agent.len() >= 5, "the scan reads every table: {agent:?}");
    assert_eq!(
        common::strings(
            &db,
            "SELECT (count(*) FILTER (WHERE key LIKE 'pseudonym:%'))::text || ' of ' || count(*)::text
                 || ', named ' || count(display_name)::text || ', mailed ' || count(email)::text
             FROM users"
        )
        .await,
        ["4 of 4, named 0, mailed 0"],
        "the Claude Code account, the Gemini CLI user, Ada and Bob"
    );
    // Compressed chunks hold Ada's old rows; the aggregates are materialised.
    db.batch_execute(
        "SELECT compress_chunk(c) FROM show_chunks('agent_events', older_than => now() - INTERVAL '8 days') c",
    )
    .await
    .expect("compress the old chunk");
    materialise_all(&db).await;
    set_materialized_only(&db, true).await;
    let ada = common::count(
        &db,
        "SELECT count(*) FROM agent_events e JOIN users u ON u.id = e.user_id
         WHERE u.key LIKE 'pseudonym:%' AND e.project_id = (SELECT id FROM projects WHERE full_name = 'acme/private')",
    )
    .await;
    assert!(ada >= 10, "{ada}");
    drop(db);

    // Forgotten, by the key the operator knows (the CLI hashes it).
    let forget = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
            .args(["users", "forget", "ada@example.com"])
            .env("DATABASE_URL", &tsdb.conn)
            .env("AGENT_TELEMETRY_PSEUDONYM_SECRET", SECRET)
            .output()
            .expect("run users forget")
    };
    let out = forget();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::say(&format!(
        "users forget (native: {}): {}",
        tsdb.native,
        printed.trim()
    ));
    assert!(
        printed.contains(": 10 events, 2 chat messages, 2 chat sessions, 2 agent sessions"),
        "{printed}"
    );
    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM users").await,
        3,
        "the others stay"
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT details ->> 'events' FROM audit_log WHERE action = 'user.forget'"
        )
        .await,
        ["10"]
    );
    // Materialised only: the refresh took Ada out of every aggregate (this
    // data has no file events, so not every aggregate has rows).
    common::aggregates::assert_aggregates_match(&db, |_| "true".into()).await;
    assert!(
        common::count(&db, "SELECT count(*) FROM developer_daily").await > 0,
        "the others' figures stay"
    );
    // A second time: nobody has that key any more. (PGlite serves one
    // client at a time.)
    drop(db);
    let again = forget();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no developer has the key"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// The official exporters over TLS, to both receivers: the certificate and
/// key of `--tls-cert` / `--tls-key` serve OTLP/HTTP as they serve gRPC.
/// The exporters trust the certificate as an operator sets it up for a
/// private CA: NODE_EXTRA_CA_CERTS, OTEL_EXPORTER_OTLP_CERTIFICATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporters_send_over_tls_to_both_receivers() {
    let tls = common::SelfSigned::new("127.0.0.1");
    let ca = tls.cert.clone();
    let (_pg, conn, svc) = common::service_with("otlp_tls", |c| {
        with_otlp(c);
        tls.serve(c);
    })
    .await;
    // HTTP: node's trust store; gRPC: the exporter's own setting.
    let trust = [
        ("NODE_EXTRA_CA_CERTS", ca.as_os_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_os_str()),
    ];
    let grpc = format!("https://{}", svc.running.otlp_grpc_addr.unwrap());
    let http = format!("https://{}", svc.running.otlp_http_addr.unwrap());
    let now = now_ms();
    send_with("claude", "http-json", &http, now, &[], &trust).await;
    send_with("gemini", "grpc", &grpc, now, &[], &trust).await;
    let db = common::db(&conn).await;
    let by_agent = common::strings(
        &db,
        "SELECT agent_id || ' ' || count(*) FROM agent_events GROUP BY agent_id ORDER BY 1",
    )
    .await;
    assert_eq!(by_agent, ["claude-code 5", "gemini-cli 4"], "{by_agent:?}");
    // Plain HTTP to the TLS port is no way in (the TLS layer answers with
    // an alert, or closes).
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(svc.running.otlp_http_addr.unwrap())
            .await
            .unwrap();
        let _ = s
            .write_all(b"POST /v1/logs HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
            .await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .unwrap_or_default();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered on the TLS port: {}",
        String::from_utf8_lossy(&answer)
    );
    svc.running.shutdown().await.unwrap();
}
