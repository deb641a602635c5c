//! The content policy through the whole service: each mode stores what it
//! says and nothing more, in the database and in the spool files, for chat
//! content, prompt texts OTLP exporters send and file contents in `data`;
//! a message spooled while its session's project is unknown gets the
//! strictest policy.

mod common;

use common::otlp_text as attr;

use std::{path::Path, time::Duration};

use agent_telemetry::{config::OptionalAddr, pb};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use sha2::{Digest, Sha256};

const POLICY: &str = r#"
[default]
chat = "full"
files = "full"

[[project]]
name = "acme/cut"
chat = "truncate"
files = "truncate"
truncate_bytes = 8

[[project]]
name = "https://github.com/Acme/Hashed.git"
chat = "hash"
files = "hash"

[[project]]
name = "acme/gone"
chat = "none"
files = "none"
"#;

const PROJECTS: [&str; 4] = ["acme/full", "acme/cut", "acme/hashed", "acme/gone"];

fn policy_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    path
}

/// Long incompressible text, different for every `tag`: what a mode must
/// not store is found wherever it is.
fn text(tag: &str, bytes: usize) -> String {
    let mut out = format!("{tag}:");
    let mut h = Sha256::digest(tag.as_bytes());
    while out.len() < bytes {
        h = Sha256::digest(h);
        out.extend(h.iter().map(|b| format!("{b:02x}")));
    }
    out.truncate(bytes);
    out
}

fn sha(s: &str) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn session(project: &str) -> pb::ChatSession {
    let mut s = agent_telemetry::loadgen::r#gen::Generator::new(7, 1).chat_session();
    s.session_id = uuid::Uuid::new_v4().to_string();
    let w = s.workspace.as_mut().unwrap();
    w.workspace_id = uuid::Uuid::new_v4().to_string();
    let p = w.project.as_mut().unwrap();
    p.name = project.into();
    p.organization = None;
    p.repo_url = None;
    s
}

fn message(session: &pb::ChatSession, content: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: session.session_id.clone(),
        role: "user".into(),
        content: content.into(),
        search_content: Some(content.into()),
        timestamp: session.started_at,
        sequence: 1,
        metadata_json: r#"{"client": "test"}"#.into(),
    }
}

/// An edit event whose `data` holds a file's contents, the change, and a
/// prompt, next to keys that are not content.
fn edit(project: &str, file: &str, prompt: &str) -> pb::AgentEvent {
    let mut e = common::event(project, 5);
    e.event_type = "file_modify".into();
    e.data_json = serde_json::json!({
        "path": "src/lib.rs",
        "lines_added": 3,
        "bytes": 12345678901234567890u64,
        "tool_input": {"old_string": file, "new_string": "fn b() {}"},
        "prompt": prompt,
    })
    .to_string();
    e
}

struct Sent {
    project: &'static str,
    chat: String,
    file: String,
    prompt: String,
}

fn sent() -> Vec<Sent> {
    PROJECTS
        .iter()
        .map(|&project| Sent {
            project,
            chat: text(&format!("chat {project}"), 4000),
            file: text(&format!("file {project}"), 3000),
            prompt: text(&format!("prompt {project}"), 2000),
        })
        .collect()
}

/// What each project's policy stores of `s`.
fn expected(project: &str, s: &str) -> String {
    match project {
        "acme/full" => s.to_owned(),
        "acme/cut" => s[..8].to_owned(),
        "acme/hashed" => sha(s),
        "acme/gone" => String::new(),
        _ => unreachable!(),
    }
}

async fn send(
    client: &mut pb::telemetry_ingest_client::TelemetryIngestClient<tonic::transport::Channel>,
    sent: &[Sent],
    base: u64,
) {
    for (i, s) in sent.iter().enumerate() {
        let session = session(s.project);
        let ack = client
            .ingest_chat_messages(pb::ChatMessageBatch {
                sequence: base + 2 * i as u64,
                sessions: vec![session.clone()],
                messages: vec![message(&session, &s.chat)],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.rejected.len(), 0, "{ack:?}");
        let ack = common::ingest(
            client,
            base + 2 * i as u64 + 1,
            vec![edit(s.project, &s.file, &s.prompt)],
        )
        .await;
        assert_eq!(ack.rejected.len(), 0, "{ack:?}");
    }
}

async fn assert_stored(db: &tokio_postgres::Client, sent: &[Sent]) {
    for s in sent {
        let rows = db
            .query(
                "SELECT m.content, m.search_content, m.metadata->>'content_policy'
                 FROM chat_messages m JOIN projects p ON p.id = m.project_id
                 WHERE p.full_name = $1 AND m.metadata->>'client' = 'test'",
                &[&s.project],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{}", s.project);
        let (content, search, mark): (String, Option<String>, Option<String>) =
            (rows[0].get(0), rows[0].get(1), rows[0].get(2));
        assert_eq!(content, expected(s.project, &s.chat), "{}", s.project);
        let (search_expected, mark_expected) = match s.project {
            "acme/full" => (Some(s.chat.clone()), None),
            "acme/cut" => (Some(s.chat[..8].to_owned()), Some("truncated")),
            "acme/hashed" => (None, Some("hashed")),
            _ => (None, Some("not_stored")),
        };
        assert_eq!(search, search_expected, "{}", s.project);
        assert_eq!(mark.as_deref(), mark_expected, "{}", s.project);

        let data: serde_json::Value = db
            .query_one(
                "SELECT e.data FROM agent_events e JOIN projects p ON p.id = e.project_id
                 WHERE p.full_name = $1 AND e.event_type = 'file_modify'",
                &[&s.project],
            )
            .await
            .unwrap()
            .get(0);
        let value = |s: String| {
            if s.is_empty() {
                serde_json::Value::Null
            } else {
                s.into()
            }
        };
        assert_eq!(
            data,
            serde_json::json!({
                "path": "src/lib.rs",
                "lines_added": 3,
                "bytes": 12345678901234567890u64,
                "tool_input": {
                    "old_string": value(expected(s.project, &s.file)),
                    "new_string": value(expected(s.project, "fn b() {}")),
                },
                "prompt": value(expected(s.project, &s.prompt)),
            }),
            "{}",
            s.project
        );
    }
    // What a mode must not store is nowhere: not past a cut, not whole.
    let hidden: Vec<&str> = sent
        .iter()
        .filter(|s| s.project != "acme/full")
        .flat_map(|s| [&s.chat[8..], &s.file[8..], &s.prompt[8..]])
        .collect();
    assert_eq!(
        common::rows_naming(db, &hidden).await,
        Vec::<String>::new(),
        "relations holding text the policy does not store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_mode_stores_what_it_says_and_nothing_more() {
    let conf = tempfile::tempdir().unwrap();
    let file = policy_file(conf.path());
    let (_pg, conn, svc) = common::service_with("content_policy", |c| {
        c.redaction.content_policy = Some(file);
        c.otlp.otlp_grpc_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let sent = sent();
    send(&mut client, &sent, 1).await;
    let db = common::db(&conn).await;
    assert_stored(&db, &sent).await;

    // An OTLP exporter's prompt becomes a chat message of its project and
    // follows the project's chat mode.
    let prompt = text("otlp prompt", 5000);
    let otlp = format!("http://{}", svc.running.otlp_grpc_addr.unwrap());
    let mut logs = LogsServiceClient::connect(otlp).await.unwrap();
    let reply = logs
        .export(user_prompt("acme/hashed", &prompt))
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply
            .partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_log_records == 0),
        "{reply:?}"
    );
    common::wait_for("the OTLP prompt", Duration::from_secs(30), || async {
        common::count(
            &db,
            "SELECT count(*) FROM chat_messages WHERE metadata->>'source' = 'otlp'",
        )
        .await
            > 0
    })
    .await;
    assert_eq!(
        common::strings(
            &db,
            "SELECT content || ' ' || (metadata->>'content_policy') FROM chat_messages WHERE metadata->>'source' = 'otlp'"
        )
        .await,
        [format!("{} hashed", sha(&prompt))]
    );
    assert_eq!(
        common::rows_naming(&db, &[&prompt[8..]]).await,
        Vec::<String>::new()
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spool_holds_no_more_than_the_policy_and_an_unknown_project_gets_the_strictest() {
    let conf = tempfile::tempdir().unwrap();
    let file = policy_file(conf.path());
    let spool = tempfile::tempdir().unwrap();
    let pg = common::TestCluster::start();
    let conn = pg.database("content_policy_spool").await;
    // A session of a project whose policy stores everything, announced to
    // a service that then stops: the next one does not know its project.
    let known = session("acme/full");
    {
        let mut cfg = common::serve_config(&conn);
        cfg.redaction.content_policy = Some(file.clone());
        let svc = common::start_service(cfg).await;
        let mut client = common::client(&svc.endpoint).await;
        let ack = client
            .report_sessions(pb::SessionReport {
                chat_sessions: vec![known.clone()],
                agent_sessions: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.chat_sessions_stored, 1, "{ack:?}");
        svc.running.shutdown().await.unwrap();
    }
    let mut cfg = common::serve_config(&conn);
    cfg.redaction.content_policy = Some(file);
    cfg.spool.spool_dir = Some(spool.path().to_owned());
    let svc = common::start_service(cfg).await;
    pg.cluster.stop().expect("stop PostgreSQL");
    let mut client = common::client(&svc.endpoint).await;
    let sent = sent();
    send(&mut client, &sent, 1).await;
    let unknown = text("unknown session's message", 3000);
    let ack = client
        .ingest_chat_messages(pb::ChatMessageBatch {
            sequence: 100,
            sessions: Vec::new(),
            messages: vec![pb::ChatMessage {
                metadata_json: r#"{"client": "unknown session"}"#.into(),
                ..message(&known, &unknown)
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.spooled, ack.rejected.len()), (1, 0), "{ack:?}");

    let spooled: Vec<u8> = std::fs::read_dir(spool.path())
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let holds = |needle: &str| {
        spooled
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    for s in &sent {
        let whole = s.project == "acme/full";
        for t in [&s.chat, &s.file, &s.prompt] {
            assert_eq!(holds(&t[8..]), whole, "{} in the spool", s.project);
        }
    }
    assert!(
        !holds(&unknown[..40]),
        "the unknown project's message is spooled whole"
    );
    assert!(holds(&sha(&sent[2].chat)), "the spool holds the hash");

    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(&conn).await;
    common::wait_for("the spooled rows", Duration::from_secs(60), || async {
        common::count(&db, "SELECT count(*) FROM chat_messages").await >= 5
            && common::count(&db, "SELECT count(*) FROM agent_events").await >= 4
    })
    .await;
    assert_stored(&db, &sent).await;
    assert_eq!(
        common::strings(
            &db,
            &format!(
                "SELECT content || '|' || (metadata->>'content_policy') FROM chat_messages WHERE session_id = '{}'",
                known.session_id
            )
        )
        .await,
        ["|not_stored"],
        "the strictest mode of any project"
    );
    svc.running.shutdown().await.unwrap();
}

/// A Claude Code `user_prompt` log record of `project`.
fn user_prompt(project: &str, prompt: &str) -> ExportLogsServiceRequest {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attr("service.name", "claude-code"),
                    attr("project.name", project),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: nanos,
                    observed_time_unix_nano: nanos,
                    body: Some(AnyValue {
                        value: Some(Value::StringValue("claude_code.user_prompt".into())),
                    }),
                    attributes: vec![
                        attr("event.name", "user_prompt"),
                        attr("session.id", &uuid::Uuid::new_v4().to_string()),
                        attr("prompt", prompt),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
