//! API keys (created, listed and revoked with the real CLI), their project
//! scopes, revocation on a running service, refusal of unauthenticated
//! access off loopback, the audit trail, and TLS.

mod common;

use std::time::Duration;

use agent_telemetry::pb;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

fn keys_cli(conn: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", conn)
        .output()
        .expect("run agent-telemetry keys");
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn batch(seq: u64, projects: &[&str]) -> pb::AgentEventBatch {
    pb::AgentEventBatch {
        sequence: seq,
        events: projects.iter().map(|p| common::event(p, 60)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_scope_writes_to_their_projects_and_revocation_applies_within_seconds() {
    let (_pg, conn, svc) = common::service_with("keys", |c| {
        c.security.require_api_key = true;
        c.security.key_cache_ttl = Duration::from_secs(1);
    })
    .await;
    let key = keys_cli(&conn, &["create", "--project", "acme/api", "--name", "ci"])
        .trim()
        .to_owned();
    assert!(key.starts_with("atk_") && key.len() == 68, "{key}");
    let mut client = common::client(&svc.endpoint).await;

    // Without a key, with a wrong one, with a malformed header.
    let refused = client
        .ingest_agent_events(batch(1, &["acme/api"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("requires an API key"),
        "{}",
        refused.message()
    );
    let wrong = format!("atk_{}", "0".repeat(64));
    let refused = client
        .ingest_agent_events(with_key(batch(1, &["acme/api"]), &wrong))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "unknown or revoked API key")
    );
    let mut basic = Request::new(batch(1, &["acme/api"]));
    basic
        .metadata_mut()
        .insert("authorization", "Basic YTpi".parse().unwrap());
    assert_eq!(
        client.ingest_agent_events(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A stream is refused at once, not at its first batch.
    let refused = client
        .stream_agent_events(tokio_stream::iter(vec![batch(1, &["acme/api"])]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The key's own project is stored; another project's row is refused
    // beside it, and that project is not even created.
    let ack = client
        .ingest_agent_events(with_key(
            batch(
                2,
                &[
                    "acme/api",
                    "other/secret",
                    "https://github.com/acme/api.git",
                ],
            ),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 2, "{ack:?}");
    assert_eq!(ack.rejected.len(), 1, "{ack:?}");
    let r = &ack.rejected[0];
    assert_eq!(
        (r.index, r.field.as_str(), r.code.as_str()),
        (1, "project", "PERMISSION_DENIED")
    );
    assert!(
        r.reason
            .contains("may not write to project \"other/secret\""),
        "{}",
        r.reason
    );
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM projects WHERE full_name = 'other/secret'"
        )
        .await,
        0
    );

    // Session reports are held to the same scope.
    let report = pb::SessionReport {
        agent_sessions: vec![pb::AgentSession {
            id: uuid::Uuid::new_v4().to_string(),
            agent_id: "claude-code".into(),
            project: "other/secret".into(),
            start_time: Some(prost_types::Timestamp {
                seconds: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64
                    - 60,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ack = client
        .report_sessions(with_key(report, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.agent_sessions_stored, 0);
    assert_eq!(ack.rejected[0].code, "PERMISSION_DENIED", "{ack:?}");

    let list = keys_cli(&conn, &["list"]);
    let line = list
        .lines()
        .find(|l| l.contains(&key[..12]))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("\tci\t") && line.contains("\tactive\t") && line.contains("acme/api"),
        "{line}"
    );
    assert!(!line.contains("never"), "last use recorded: {line}");
    let id = line.split('\t').next().unwrap().to_owned();

    // A stream opened before the revocation ends within seconds of it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = client
        .stream_agent_events(with_key(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    tx.send(batch(10, &["acme/api"])).await.unwrap();
    assert_eq!(acks.next().await.unwrap().unwrap().stored, 1);
    assert!(keys_cli(&conn, &["revoke", &id]).contains(&id));
    let revoked_at = std::time::Instant::now();
    let mut seq = 11;
    let status = loop {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "revocation not applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(batch(seq, &["acme/api"])).await.unwrap();
        seq += 1;
        match acks.next().await.unwrap() {
            Ok(ack) => assert_eq!(ack.stored, 1),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated);
    common::say(&format!(
        "revocation took effect on an open stream after {:?}",
        revoked_at.elapsed()
    ));
    let refused = client
        .ingest_agent_events(with_key(batch(99, &["acme/api"]), &key))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // What is stored of the key, and the audit trail.
    let stored_hash: Vec<u8> = db
        .query_one("SELECT key_hash FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored_hash, agent_telemetry::auth::keys::hash(&key));
    let dump: String = db
        .query_one("SELECT string_agg(t::text, ' ') FROM api_keys t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(&key[12..]), "the key itself is not stored");
    let audit: Vec<(String, String)> = db
        .query(
            "SELECT action, key_id::text FROM audit_log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audit,
        [
            ("key.create".to_owned(), id.clone()),
            ("key.revoke".to_owned(), id)
        ]
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn off_loopback_a_key_is_required_unless_explicitly_allowed() {
    for allow in [false, true] {
        let (_pg, _conn, svc) = common::service_with(if allow { "open" } else { "closed" }, |c| {
            c.listen = "0.0.0.0:0".parse().unwrap();
            c.security.allow_unauthenticated = allow;
        })
        .await;
        let endpoint = format!("http://127.0.0.1:{}", svc.running.addr.port());
        let mut client = common::client(&endpoint).await;
        let result = client.ingest_agent_events(batch(1, &["acme/api"])).await;
        match allow {
            false => assert_eq!(result.unwrap_err().code(), Code::Unauthenticated),
            true => assert_eq!(result.unwrap().into_inner().stored, 1),
        }
        svc.running.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_only_them() {
    let tls = common::SelfSigned::new("localhost");
    let cert_pem = tls.cert_pem.clone();
    let (_pg, _conn, svc) = common::service_with("tls", |c| tls.serve(c)).await;
    let port = svc.running.addr.port();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection");
    let mut client = pb::telemetry_ingest_client::TelemetryIngestClient::new(channel);
    let ack = client
        .ingest_agent_events(batch(1, &["acme/api"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 1);
    // Plain text to the TLS port gets nowhere.
    let plain = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = pb::telemetry_ingest_client::TelemetryIngestClient::new(channel);
        assert!(
            client
                .ingest_agent_events(batch(2, &["acme/api"]))
                .await
                .is_err()
        );
    }
    svc.running.shutdown().await.unwrap();
}

/// An event of `project` naming organisation `org` (if any) and developer
/// `user`.
fn org_event(project: &str, org: Option<&str>, user: &str) -> pb::AgentEvent {
    let mut e = common::event(project, 60);
    e.organization = org.map(|key| pb::Organization {
        key: key.into(),
        display_name: String::new(),
    });
    e.user = Some(pb::User {
        key: user.into(),
        ..Default::default()
    });
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organisation_key_writes_to_its_organisation_and_never_to_another() {
    let (_pg, conn, svc) = common::service_with("org_keys", |c| {
        c.security.require_api_key = true;
    })
    .await;
    let acme = keys_cli(
        &conn,
        &["create", "--organization", "acme", "--name", "acme"],
    )
    .trim()
    .to_owned();
    let globex = keys_cli(&conn, &["create", "--organization", "globex"])
        .trim()
        .to_owned();
    let both = keys_cli(
        &conn,
        &[
            "create",
            "--organization",
            "acme",
            "--organization",
            "globex",
        ],
    )
    .trim()
    .to_owned();
    let solo = keys_cli(&conn, &["create", "--project", "solo/tool"])
        .trim()
        .to_owned();
    let listed = keys_cli(&conn, &["list"]);
    assert!(
        listed.contains("organization:acme,organization:globex"),
        "{listed}"
    );
    let mut client = common::client(&svc.endpoint).await;
    let mut send = async |key: &str, seq: u64, events: Vec<pb::AgentEvent>| {
        client
            .ingest_agent_events(with_key(
                pb::AgentEventBatch {
                    sequence: seq,
                    events,
                },
                key,
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let denied = |ack: &pb::BatchAck| -> Vec<(u32, String)> {
        ack.rejected
            .iter()
            .inspect(|r| assert_eq!(r.code, "PERMISSION_DENIED", "{r:?}"))
            .map(|r| (r.index, r.field.clone()))
            .collect()
    };

    // Globex's key creates its project inside Globex; a project-scoped key
    // creates one in no organisation.
    let ack = send(&globex, 1, vec![org_event("globex/web", None, "gina")]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    let ack = send(&solo, 2, vec![org_event("solo/tool", None, "sam")]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");

    // Acme's key: new projects are created in Acme (named or not); Globex's
    // project, a project in no organisation, and a new project claimed for
    // Globex are refused beside them.
    let ack = send(
        &acme,
        3,
        vec![
            org_event("acme/api", None, "ada"),
            org_event("acme/web", Some("acme"), "ada"),
            org_event("globex/web", None, "ada"),
            org_event("solo/tool", None, "ada"),
            org_event("globex/new", Some("globex"), "ada"),
        ],
    )
    .await;
    assert_eq!(ack.stored, 2, "{ack:?}");
    assert_eq!(
        denied(&ack),
        [
            (2, "project".to_owned()),
            (3, "project".to_owned()),
            (4, "project".to_owned())
        ]
    );
    let reasons: Vec<&str> = ack.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons[0].contains("the project is in another organisation")
            && reasons[1].contains("the project is in no organisation")
            && reasons[2].contains("organisation \"globex\" is not one the key writes to"),
        "{reasons:?}"
    );
    // Globex's key, the other way round.
    let ack = send(&globex, 4, vec![org_event("acme/api", None, "mallory")]).await;
    assert_eq!(ack.stored, 0, "{ack:?}");
    assert_eq!(denied(&ack), [(0, "project".to_owned())]);
    // A key of two organisations writes to both, and must name the
    // organisation of a project it creates.
    let ack = send(
        &both,
        5,
        vec![
            org_event("acme/api", None, "bob"),
            org_event("globex/web", None, "bob"),
            org_event("initech/app", None, "bob"),
            org_event("globex/shop", Some("globex"), "bob"),
        ],
    )
    .await;
    assert_eq!(ack.stored, 3, "{ack:?}");
    assert_eq!(denied(&ack), [(2, "project".to_owned())]);
    assert!(
        ack.rejected[0]
            .reason
            .contains("name the organisation of the new project \"initech/app\""),
        "{ack:?}"
    );

    // Sessions: Acme's key may not announce a chat session in Globex's
    // project, nor send messages to Globex's session.
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(3, 1);
    let mut globex_chat = generator.chat_session();
    {
        let p = globex_chat
            .workspace
            .as_mut()
            .unwrap()
            .project
            .as_mut()
            .unwrap();
        p.name = "globex/web".into();
        p.organization = None;
    }
    let ack = client
        .report_sessions(with_key(
            pb::SessionReport {
                chat_sessions: vec![globex_chat.clone()],
                agent_sessions: vec![],
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.chat_sessions_stored, 0, "{ack:?}");
    assert_eq!(ack.rejected[0].code, "PERMISSION_DENIED", "{ack:?}");
    let ack = client
        .report_sessions(with_key(
            pb::SessionReport {
                chat_sessions: vec![globex_chat.clone()],
                agent_sessions: vec![],
            },
            &globex,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.chat_sessions_stored, 1, "{ack:?}");
    let message = pb::ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: globex_chat.session_id.clone(),
        role: "user".into(),
        content: "hello".into(),
        timestamp: common::event("x/y", 30).timestamp,
        ..Default::default()
    };
    let ack = client
        .ingest_chat_messages(with_key(
            pb::ChatMessageBatch {
                sequence: 6,
                sessions: vec![],
                messages: vec![message],
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 0, "{ack:?}");
    assert_eq!(denied(&ack), [(0, "session_id".to_owned())]);

    let db = common::db(&conn).await;
    // Where each project is, and who wrote to Globex's.
    assert_eq!(
        common::strings(
            &db,
            "SELECT p.full_name || ' ' || coalesce(o.key, '-') FROM projects p
             LEFT JOIN organizations o ON o.id = p.organization_id ORDER BY 1"
        )
        .await,
        [
            "acme/api acme",
            "acme/web acme",
            "globex/shop globex",
            "globex/web globex",
            "solo/tool -"
        ]
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT DISTINCT u.key FROM agent_events e JOIN projects p ON p.id = e.project_id
             JOIN users u ON u.id = e.user_id WHERE p.full_name LIKE 'globex/%' ORDER BY 1"
        )
        .await,
        ["bob", "gina"]
    );
    // A request refused whole creates no developer.
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM users WHERE key = 'mallory'").await,
        0
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM chat_messages").await,
        0
    );
    svc.running.shutdown().await.unwrap();
}

/// A developer's key (`keys create --user`): rows sent with it that name no
/// developer are the key's developer's, through the spool and its replay
/// (the spool keeps the key's scope with each batch); rows that name one
/// keep theirs. `users forget` revokes the key, which names the person.
#[tokio::test(flavor = "multi_thread")]
async fn a_developers_key_names_the_developer_of_rows_that_name_none() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (_pg, conn, svc) = common::service_with("key_users", |c| {
        c.security.require_api_key = true;
        c.spool.spool_dir = Some(dir);
    })
    .await;
    let key = keys_cli(
        &conn,
        &[
            "create",
            "--organization",
            "org0",
            "--user",
            "ada@example.com",
        ],
    )
    .trim()
    .to_owned();
    let listed = keys_cli(&conn, &["list"]);
    assert!(
        listed.contains("organization:org0,user:ada@example.com"),
        "{listed}"
    );
    let too_long = "u".repeat(1025);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "keys",
            "create",
            "--organization",
            "org0",
            "--user",
            &too_long,
        ])
        .env("DATABASE_URL", &conn)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--user: 1025 bytes"),
        "{err}"
    );

    // One project, in org0: the generator's sessions and events.
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(3, 1);
    let mut events = generator.events(4);
    for e in &mut events[..3] {
        e.user = None;
    }
    events[3].user = Some(pb::User {
        key: "bob@example.com".into(),
        ..Default::default()
    });
    let mut chat = generator.chat_session();
    chat.user = None;
    let mut client = common::client(&svc.endpoint).await;
    let ack = client
        .ingest_agent_events(with_key(
            pb::AgentEventBatch {
                sequence: 1,
                events: events.clone(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.spooled, 4, "{ack:?}");
    let message = pb::ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: chat.session_id.clone(),
        role: "user".into(),
        content: "hello".into(),
        timestamp: chat.started_at,
        sequence: 1,
        ..Default::default()
    };
    let ack = client
        .ingest_chat_messages(with_key(
            pb::ChatMessageBatch {
                sequence: 2,
                sessions: vec![chat.clone()],
                messages: vec![message],
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.spooled, 1, "{ack:?}");
    let agent_session = pb::AgentSession {
        id: events[0].session_id.clone(),
        agent_id: events[0].agent_id.clone(),
        agent_version: "1.0".into(),
        project: events[0].project.clone(),
        start_time: events[0].timestamp,
        outcome: "success".into(),
        ..Default::default()
    };
    let ack = client
        .report_sessions(with_key(
            pb::SessionReport {
                chat_sessions: Vec::new(),
                agent_sessions: vec![agent_session],
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.agent_sessions_stored, 1, "{ack:?}");

    let db = common::db(&conn).await;
    common::wait_for("the spooled rows", Duration::from_secs(20), || async {
        common::count(&db, "SELECT count(*) FROM agent_events").await == 4
            && common::count(&db, "SELECT count(*) FROM chat_messages").await == 1
    })
    .await;
    let developers = |sql: &'static str| {
        let db = &db;
        async move { common::strings(db, sql).await }
    };
    assert_eq!(
        developers(
            "SELECT u.key || ' ' || count(*) FROM agent_events e JOIN users u ON u.id = e.user_id
             GROUP BY u.key ORDER BY 1"
        )
        .await,
        ["ada@example.com 3", "bob@example.com 1"]
    );
    assert_eq!(
        developers(
            "SELECT u.key FROM chat_sessions s JOIN users u ON u.id = s.user_id
             UNION ALL SELECT u.key FROM agent_sessions s JOIN users u ON u.id = s.user_id"
        )
        .await,
        ["ada@example.com", "ada@example.com"]
    );
    drop(db);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args(["users", "forget", "ada@example.com"])
        .env("DATABASE_URL", &conn)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("1 keys revoked"),
        "{said}"
    );
    let listed = keys_cli(&conn, &["list"]);
    assert!(
        listed.contains("revoked") && !listed.contains("ada@"),
        "{listed}"
    );
    svc.running.shutdown().await.unwrap();
}

/// The client commands against a TLS listener that requires a key, as an
/// operator runs them: `health` and `loadgen` with the CA file, the
/// certificate's name and the key; and what each says when one is missing.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_and_health_reach_a_tls_listener_with_a_key() {
    let tls = common::SelfSigned::new("localhost");
    let ca = tls.cert.clone();
    let (_pg, conn, svc) = common::service_with("client_tls", |c| {
        tls.serve(c);
        c.security.require_api_key = true;
    })
    .await;
    let key = keys_cli(
        &conn,
        &["create", "--organization", "org0", "--name", "loadgen"],
    )
    .trim()
    .to_owned();
    let https = format!("https://127.0.0.1:{}", svc.running.addr.port());
    let ca = ca.to_str().unwrap();
    let run = |args: &[&str], key: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"));
        cmd.args(args).env_remove("AGENT_TELEMETRY_API_KEY");
        if let Some(k) = key {
            // The key from the environment, as docs/configuration.md
            // suggests (a flag shows in `ps`).
            cmd.env("AGENT_TELEMETRY_API_KEY", k);
        }
        cmd.output()
    };
    let trusted = [
        "--endpoint",
        &https,
        "--ca-file",
        ca,
        "--tls-server-name",
        "localhost",
    ];

    let health: Vec<&str> = ["health"].into_iter().chain(trusted).collect();
    let out = run(&health, Some(&key)).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "agent_telemetry.v1.TelemetryIngest: SERVING"
    );
    // Not trusting the certificate: the reason, not "transport error".
    let out = run(
        &[
            "health",
            "--endpoint",
            &https,
            "--tls-server-name",
            "localhost",
        ],
        None,
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    common::say(&format!("health, CA not trusted: {}", err.trim()));
    // A CA file for a plain-text endpoint is a mistake, said at once.
    let plain = format!("http://127.0.0.1:{}", svc.running.addr.port());
    let out = run(&["health", "--endpoint", &plain, "--ca-file", ca], None)
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("for an https endpoint"),
        "{err}"
    );

    let load: Vec<&str> = ["loadgen"]
        .into_iter()
        .chain(trusted)
        .chain([
            "--events",
            "300",
            "--messages",
            "40",
            "--streams",
            "2",
            "--projects",
            "1",
            "--quiet",
        ])
        .collect();
    let out = run(&load, Some(&key)).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("rows stored    340 (+0 duplicates, 0 rejected)"),
        "{text}"
    );
    assert_eq!(
        common::count(
            &common::db(&conn).await,
            "SELECT (SELECT count(*) FROM agent_events) + (SELECT count(*) FROM chat_messages)"
        )
        .await,
        340
    );
    // Without the key: refused, and loadgen says so.
    let out = run(&load, None).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("requires an API key"), "{err}");
    common::say(&format!("loadgen without a key: {}", err.trim()));
    svc.running.shutdown().await.unwrap();
}

/// Batches that reach a project nobody has seen, at once, with a key of
/// one organisation: the first creates the project inside the organisation
/// in one statement, so none of the others finds it outside (they were
/// refused with "the project is in no organisation" while the project
/// existed but had not joined yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_batches_of_an_organisation_key_all_land() {
    let (_pg, conn, svc) = common::service_with("org_race", |c| {
        c.security.require_api_key = true;
    })
    .await;
    let key = keys_cli(&conn, &["create", "--organization", "acme"])
        .trim()
        .to_owned();
    let mut tasks = tokio::task::JoinSet::new();
    for project in 0..12 {
        for copy in 0..4u64 {
            let (endpoint, key) = (svc.endpoint.clone(), key.clone());
            tasks.spawn(async move {
                let mut client = common::client(&endpoint).await;
                let name = format!("acme/new-{project}");
                client
                    .ingest_agent_events(with_key(batch(copy, &[&name]), &key))
                    .await
                    .map(|ack| ack.into_inner())
            });
        }
    }
    let mut stored = 0;
    while let Some(ack) = tasks.join_next().await {
        let ack = ack.unwrap().expect("batch answered");
        assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
        stored += ack.stored;
    }
    assert_eq!(stored, 48);
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM projects p JOIN organizations o ON o.id = p.organization_id
             WHERE o.key = 'acme' AND p.full_name LIKE '%acme/new-%'"
        )
        .await,
        12
    );
    svc.running.shutdown().await.unwrap();
}
