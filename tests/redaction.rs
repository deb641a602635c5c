//! Redaction through the whole service: credentials sent in events, chat
//! messages, chat and agent sessions, natively and over OTLP, never reach
//! the spool files or any table; the operator's rule and allow-list entry
//! take effect; `--redaction off` stores what was sent and says so.

mod common;

use common::otlp_text as text;

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_telemetry::{
    config::{OptionalAddr, Switch},
    pb,
};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};

const GITHUB: &str = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
const AWS: &str = "AKIAZ7QX2MBN4VJ3KTWE";
/// AWS's documented example key: allow-listed in the rules file.
const AWS_EXAMPLE: &str = "AKIAIOSFODNN7EXAMPLE";
const DB_PASSWORD: &str = "Xq9vL2mTz8Rk";
const ANTHROPIC: &str = "sk-ant-api03-Zk3Jm9QwErTyUiOpAsDfGhJkLzXcVbNm1234567890abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_AA";
const PEM_BODY: &str = "MIIEowIBAAKCAQEAzK9vR3dact3dB0dyL1n3Qm7XyZ0aBcDeFgHiJkLmNoPqRsTu";
const CUSTOM: &str = "acme_0123456789abcdef0123456789abcdef";
const HUNTER: &str = "hunter2hunter2";
const PHRASE: &str = "correct-horse-battery";
const PROMPT_KEY: &str = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv";

const SECRETS: &[&str] = &[
    GITHUB,
    AWS,
    DB_PASSWORD,
    ANTHROPIC,
    PEM_BODY,
    "0123456789abcdef0123456789abcdef",
    HUNTER,
    PHRASE,
    PROMPT_KEY,
];

const PROJECT: &str = "acme/redact";

fn rules_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("rules.toml");
    std::fs::write(
        &path,
        "[[rule]]\nkind = \"acme-token\"\nregex = 'acme_(?P<s>[0-9a-f]{32})'\n\n[[allow]]\nregex = '^AKIAIOSFODNN7EXAMPLE$'\n",
    )
    .unwrap();
    path
}

fn events() -> Vec<pb::AgentEvent> {
    let mut with_secrets = common::event(PROJECT, 10);
    with_secrets.data_json = serde_json::json!({
        "tool_name": "bash",
        "command": format!("export AWS_ACCESS_KEY_ID={AWS} && psql postgres://app:{DB_PASSWORD}@db/app -c 'select 1'"),
        "exit_code": 0,
        "bytes": 12345678901234567890u64,
    })
    .to_string();
    with_secrets.context_json =
        serde_json::json!({"env": {"GITHUB_TOKEN": GITHUB, "SERVICE_PASSWORD": PHRASE, "HOME": "/home/ada"}}).to_string();
    with_secrets.tags = vec![CUSTOM.to_owned(), "deploy".to_owned()];
    let mut allowed = common::event(PROJECT, 9);
    allowed.data_json =
        serde_json::json!({"command": format!("aws configure # {AWS_EXAMPLE}")}).to_string();
    vec![with_secrets, allowed, common::event(PROJECT, 8)]
}

fn chat() -> (pb::ChatSession, pb::ChatMessage) {
    let mut session = agent_telemetry::loadgen::r#gen::Generator::new(5, 1).chat_session();
    let project = session
        .workspace
        .as_mut()
        .and_then(|w| w.project.as_mut())
        .unwrap();
    project.name = PROJECT.into();
    project.organization = None;
    project.repo_url = Some(format!("https://bot:{GITHUB}@github.com/acme/redact.git"));
    let message = pb::ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: session.session_id.clone(),
        role: "user".into(),
        content: format!(
            "Why does this fail?\n-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\nkey: {ANTHROPIC}"
        ),
        timestamp: session.started_at,
        sequence: 1,
        ..Default::default()
    };
    (session, message)
}

/// A Claude Code prompt (a chat message) and tool result (an event), each
/// with a secret in an attribute.
fn otlp_logs() -> ExportLogsServiceRequest {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let record = |name: &str, attributes: Vec<KeyValue>| LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        body: Some(AnyValue {
            value: Some(Value::StringValue(format!("claude_code.{name}"))),
        }),
        attributes: [
            vec![
                text("event.name", name),
                text("session.id", "6f1c2a7e-0d3b-4c1e-9a51-3b8e2f7d9c09"),
                text("prompt.id", "p-1"),
            ],
            attributes,
        ]
        .concat(),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "claude-code"),
                    text("project.name", PROJECT),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    record(
                        "user_prompt",
                        vec![
                            text("prompt", &format!("use my key {PROMPT_KEY} to call the API")),
                            text("prompt_length", "40"),
                        ],
                    ),
                    record(
                        "tool_result",
                        vec![
                            text("tool_name", "Bash"),
                            text("success", "true"),
                            text(
                                "tool_parameters",
                                &serde_json::json!({"command": format!("curl -H 'Authorization: Bearer {GITHUB}' https://api.github.com")}).to_string(),
                            ),
                        ],
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_the_spool_or_the_database() {
    let spool = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let (dir, rules) = (spool.path().to_owned(), rules_file(conf.path()));
    let (pg, conn, svc) = common::service_with("redaction", |c| {
        c.spool.spool_dir = Some(dir);
        c.redaction.redaction_rules = Some(rules);
        c.otlp.otlp_grpc_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;
    // The database away: everything waits in the spool, where a secret
    // would be as stored as in a table.
    pg.cluster.stop().expect("stop PostgreSQL");
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, events()).await;
    assert_eq!((ack.spooled, ack.rejected.len()), (3, 0), "{ack:?}");
    let (session, message) = chat();
    let ack = client
        .ingest_chat_messages(pb::ChatMessageBatch {
            sequence: 2,
            sessions: vec![session.clone()],
            messages: vec![message],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.spooled, ack.rejected.len()), (1, 0), "{ack:?}");
    let otlp = format!("http://{}", svc.running.otlp_grpc_addr.unwrap());
    let mut logs = LogsServiceClient::connect(otlp).await.unwrap();
    let reply = logs.export(otlp_logs()).await.unwrap().into_inner();
    assert!(
        reply
            .partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_log_records == 0),
        "{reply:?}"
    );

    let spooled = files(spool.path());
    let all: Vec<u8> = spooled.iter().flat_map(|(_, b)| b.clone()).collect();
    for s in SECRETS {
        for (path, bytes) in &spooled {
            assert!(!holds(bytes, s), "{s} in the spool file {path}");
        }
    }
    // The spool holds the rows readably (else the search above proves
    // nothing): the markers, and the allow-listed key as sent.
    for marker in [
        "[REDACTED:aws-access-key-id]",
        "[REDACTED:url-password]",
        "[REDACTED:secret-field]",
        "[REDACTED:acme-token]",
        "[REDACTED:private-key]",
        "[REDACTED:anthropic-key]",
        "[REDACTED:openai-key]",
        "[REDACTED:github-token]",
    ] {
        assert!(holds(&all, marker), "{marker} not in the spool");
    }
    assert!(holds(&all, AWS_EXAMPLE), "the allow-listed key is kept");

    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(&conn).await;
    common::wait_for("the spooled rows", Duration::from_secs(30), || async {
        common::count(&db, "SELECT count(*) FROM agent_events").await >= 4
            && common::count(&db, "SELECT count(*) FROM chat_messages").await >= 2
    })
    .await;
    // An agent session's report goes straight to the database.
    let report = client
        .report_sessions(pb::SessionReport {
            chat_sessions: Vec::new(),
            agent_sessions: vec![pb::AgentSession {
                id: uuid::Uuid::new_v4().to_string(),
                agent_id: "claude-code".into(),
                agent_version: "2.0.14".into(),
                project: PROJECT.into(),
                start_time: events()[0].timestamp,
                context_json: serde_json::json!({"db": {"password": HUNTER}}).to_string(),
                outcome: "success".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.agent_sessions_stored, 1, "{report:?}");

    assert_eq!(
        common::rows_naming(&db, SECRETS).await,
        Vec::<String>::new(),
        "relations holding a secret"
    );
    let stored = common::strings(
        &db,
        "SELECT data::text || ' ' || context::text || ' ' || array_to_string(tags, ',')
         FROM agent_events WHERE data ? 'exit_code'",
    )
    .await;
    assert_eq!(
        stored,
        [
            "{\"bytes\": 12345678901234567890, \"command\": \"export AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id] && psql postgres://app:[REDACTED:url-password]@db/app -c 'select 1'\", \"exit_code\": 0, \"tool_name\": \"bash\"} {\"env\": {\"HOME\": \"/home/ada\", \"GITHUB_TOKEN\": \"[REDACTED:github-token]\", \"SERVICE_PASSWORD\": \"[REDACTED:secret-field]\"}} acme_[REDACTED:acme-token],deploy"
        ]
    );
    let content = common::strings(
        &db,
        "SELECT content FROM chat_messages WHERE role = 'user' ORDER BY content",
    )
    .await;
    assert!(
        content
            .iter()
            .any(|c| c
                == "Why does this fail?\n[REDACTED:private-key]\nkey: [REDACTED:anthropic-key]"),
        "{content:?}"
    );
    assert!(
        content
            .iter()
            .any(|c| c.contains("use my key [REDACTED:openai-key] to call")),
        "{content:?}"
    );
    let tool = common::strings(
        &db,
        "SELECT data::text FROM agent_events WHERE agent_id = 'claude-code' AND data::text LIKE '%api.github.com%'",
    )
    .await;
    assert!(
        tool.len() == 1 && tool[0].contains("Bearer [REDACTED:github-token]"),
        "{tool:?}"
    );
    assert_eq!(
        common::strings(&db, "SELECT repo_url FROM projects WHERE name = 'redact'").await,
        ["https://github.com/acme/redact.git"]
    );
    assert_eq!(
        common::count(
            &db,
            &format!("SELECT count(*) FROM agent_events WHERE data::text LIKE '%{AWS_EXAMPLE}%'")
        )
        .await,
        1,
        "the allow-listed example key is stored as sent"
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_redaction_off_what_was_sent_is_stored() {
    let (_pg, conn, svc) = common::service_with("redaction_off", |c| {
        c.redaction.redaction = Switch::Off;
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, events()).await;
    let db = common::db(&conn).await;
    assert_eq!(ack.stored, 3, "{ack:?}");
    assert_eq!(
        common::rows_naming(&db, &[GITHUB, AWS, CUSTOM]).await,
        ["agent_events: 1"]
    );
    svc.running.shutdown().await.unwrap();
}

/// CI checkouts name their remote with a token in it. Whatever field
/// names a project so (an event's project, a chat session's project and
/// repository URL, an agent session's project, an OTLP resource), the
/// token is stored nowhere, redaction on or off, and the rows land in the
/// project the URL names.
#[tokio::test]
async fn a_token_in_a_repository_url_is_stored_nowhere() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
    let url = format!("https://{TOKEN}@github.com/acme/url-token.git");
    let with_password = format!("https://x-access-token:{TOKEN}@github.com/acme/url-token");
    let (_pg, conn, svc) = common::service_with("url_token", |c| {
        c.redaction.redaction = Switch::Off;
        c.otlp.otlp_grpc_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, vec![common::event(&url, 5)]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    let (mut session, message) = chat();
    let project = session
        .workspace
        .as_mut()
        .and_then(|w| w.project.as_mut())
        .unwrap();
    project.name = with_password.clone();
    project.repo_url = Some(url.clone());
    let ack = client
        .ingest_chat_messages(pb::ChatMessageBatch {
            sequence: 2,
            sessions: vec![session],
            messages: vec![message],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.rejected.len()), (1, 0), "{ack:?}");
    let otlp = format!("http://{}", svc.running.otlp_grpc_addr.unwrap());
    let mut logs = LogsServiceClient::connect(otlp).await.unwrap();
    let mut export = otlp_logs();
    for kv in &mut export.resource_logs[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
    {
        if kv.key == "project.name" {
            *kv = text("project.name", &url);
        }
    }
    let reply = logs.export(export).await.unwrap().into_inner();
    assert!(reply.partial_success.is_none(), "{reply:?}");
    let db = common::db(&conn).await;
    assert_eq!(
        common::rows_naming(&db, &[TOKEN]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT coalesce(repo_url, '') FROM projects WHERE full_name = 'acme/url-token'"
        )
        .await,
        ["https://github.com/acme/url-token.git"]
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cli_warns_when_redaction_is_off_and_refuses_a_bad_rules_file() {
    let pg = common::TestCluster::start();
    let conn = pg.database("redaction_cli").await;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nkind = \"acme\"\nregex = 'acme_('\n").unwrap();
    let out = common::cli(
        &conn,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--redaction-rules",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.toml") && err.contains("rule \"acme\""),
        "{err}"
    );
    // Off: the warning comes before the database work; the service runs.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--otlp-grpc-listen",
            "off",
            "--otlp-http-listen",
            "off",
            "--redaction",
            "off",
        ])
        .env("DATABASE_URL", &conn)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let warned = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("WARN") && line.contains("redaction is OFF") {
                return line;
            }
        }
        panic!("the service ended without the warning");
    })
    .await
    .expect("the warning within 60 s");
    assert!(warned.contains("stored as sent"), "{warned}");
    child.kill().await.unwrap();
}
