//! How the ingest path behaves at its edges: bad rows, acks and commits,
//! resends, rows the database refuses, backpressure, shutdown.

mod common;

use common::RawEventBatch;

use std::time::Duration;

use agent_telemetry::pb;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

async fn ingest_raw(endpoint: &str, batch: RawEventBatch) -> Result<pb::BatchAck, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<RawEventBatch, pb::BatchAck> =
        tonic_prost::ProstCodec::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/agent_telemetry.v1.TelemetryIngest/IngestAgentEvents",
    );
    grpc.unary(tonic::Request::new(batch), path, codec)
        .await
        .map(|r| r.into_inner())
}

/// (row, expected rejected field); None = a good row.
fn mixed_batch() -> Vec<(Vec<u8>, Option<&'static str>)> {
    let good = || common::event("acme/widgets", 60);
    let bad = |f: &dyn Fn(&mut pb::AgentEvent)| {
        let mut e = good();
        f(&mut e);
        e.encode_to_vec()
    };
    let mut invalid_utf8 = good().encode_to_vec();
    invalid_utf8.extend_from_slice(&[0x22, 2, 0xff, 0xfe]); // agent_id (field 4) := bytes that are not UTF-8
    vec![
        (good().encode_to_vec(), None),
        (bad(&|e| e.event_type.clear()), Some("event_type")),
        (bad(&|e| e.id = "not-a-uuid".into()), Some("id")),
        (good().encode_to_vec(), None),
        (bad(&|e| e.session_id = "1234".into()), Some("session_id")),
        (bad(&|e| e.timestamp = None), Some("timestamp")),
        (
            bad(&|e| e.timestamp.as_mut().unwrap().seconds -= 200 * 86_400),
            Some("timestamp"),
        ),
        (
            bad(&|e| e.timestamp.as_mut().unwrap().seconds += 86_400),
            Some("timestamp"),
        ),
        (
            bad(&|e| e.timestamp.as_mut().unwrap().seconds = i64::MAX),
            Some("timestamp"),
        ),
        (bad(&|e| e.data_json = "{\"a\":".into()), Some("data_json")),
        (
            bad(&|e| e.context_json = "[1,2]".into()),
            Some("context_json"),
        ),
        (
            bad(&|e| e.metrics_json = r#"{"x":"a\u0000b"}"#.into()),
            Some("metrics_json"),
        ),
        (
            bad(&|e| e.agent_id = "claude\0code".into()),
            Some("agent_id"),
        ),
        (
            bad(&|e| e.agent_version = "v".repeat(5000)),
            Some("agent_version"),
        ),
        (bad(&|e| e.tags = vec!["t".into(); 65]), Some("tags")),
        (
            bad(&|e| e.tags = vec!["ok".into(), "".into()]),
            Some("tags[1]"),
        ),
        (bad(&|e| e.input_tokens = Some(-5)), Some("input_tokens")),
        (bad(&|e| e.cost_usd = Some(f64::NAN)), Some("cost_usd")),
        (bad(&|e| e.cost_usd = Some(-0.01)), Some("cost_usd")),
        (bad(&|e| e.severity = 42), Some("severity")),
        (
            bad(&|e| e.related_event_ids = vec!["x".into()]),
            Some("related_event_ids[0]"),
        ),
        (bad(&|e| e.project.clear()), Some("project")),
        (
            bad(&|e| e.project = "https://github.com/".into()),
            Some("project"),
        ),
        (invalid_utf8, Some("agent_id")),
        (
            bad(&|e| e.data_json = "x".repeat(300 << 10)),
            Some("data_json"),
        ),
        (
            bad(&|e| e.event_type = "'; DROP TABLE agent_events; --".into()),
            None,
        ),
        (good().encode_to_vec(), None),
    ]
}

#[tokio::test]
async fn bad_rows_are_reported_and_the_good_rows_beside_them_stored() {
    let (_pg, conn, svc) = common::service("bad_rows").await;
    let rows = mixed_batch();
    let good = rows.iter().filter(|(_, f)| f.is_none()).count();
    let ack = ingest_raw(
        &svc.endpoint,
        RawEventBatch {
            sequence: 42,
            events: rows.iter().map(|(r, _)| r.clone()).collect(),
        },
    )
    .await
    .expect("the batch is answered with an ack, not an error");
    assert_eq!(ack.sequence, 42);
    assert_eq!(ack.received as usize, rows.len());
    assert_eq!(ack.stored as usize, good, "{ack:#?}");
    let expected: Vec<(u32, &str)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (_, f))| f.map(|f| (i as u32, f)))
        .collect();
    let got: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(got, expected);
    for r in &ack.rejected {
        assert!(!r.reason.is_empty(), "every rejection says why: {r:?}");
    }
    let reason = |i: u32| {
        ack.rejected
            .iter()
            .find(|r| r.index == i)
            .unwrap()
            .reason
            .clone()
    };
    assert!(reason(23).contains("UTF-8"), "{}", reason(23));
    assert!(reason(12).contains("NUL"), "{}", reason(12));
    assert!(reason(11).contains("\\u0000"), "{}", reason(11));
    assert!(reason(6).contains("older"), "{}", reason(6));

    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        good as i64
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE event_type = '''; DROP TABLE agent_events; --'"
        )
        .await,
        1,
        "SQL-looking text is stored verbatim"
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ack_arrives_only_after_its_rows_are_visible_to_other_connections() {
    let (_pg, conn, svc) = common::service("ack_visible").await;
    let batches: Vec<pb::AgentEventBatch> = (0..30)
        .map(|s| pb::AgentEventBatch {
            sequence: s,
            events: (0..200)
                .map(|_| common::event("acme/widgets", 10))
                .collect(),
        })
        .collect();
    let ids: Vec<Vec<uuid::Uuid>> = batches
        .iter()
        .map(|b| b.events.iter().map(|e| e.id.parse().unwrap()).collect())
        .collect();
    let observer = common::db(&conn).await;
    let mut client = common::client(&svc.endpoint).await;
    let mut acks = client
        .stream_agent_events(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(ack) = acks.next().await {
        let ack = ack.unwrap();
        let visible: i64 = observer
            .query_one(
                "SELECT count(*) FROM agent_events WHERE id = ANY($1)",
                &[&ids[ack.sequence as usize]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            (ack.stored, visible),
            (200, 200),
            "batch {} acked before its rows were committed",
            ack.sequence
        );
        seen += 1;
    }
    assert_eq!(seen, 30);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_resent_batch_stores_nothing_twice() {
    let (_pg, conn, svc) = common::service("resend").await;
    let mut client = common::client(&svc.endpoint).await;
    let first: Vec<pb::AgentEvent> = (0..100)
        .map(|_| common::event("acme/widgets", 30))
        .collect();
    let ack = common::ingest(&mut client, 1, first.clone()).await;
    assert_eq!((ack.stored, ack.duplicates), (100, 0));
    let ack = common::ingest(&mut client, 1, first.clone()).await;
    assert_eq!(
        (ack.stored, ack.duplicates),
        (0, 100),
        "a resend is recognised: {ack:?}"
    );
    // Half old, half new, plus a row repeated within the batch.
    let mut mixed: Vec<pb::AgentEvent> = first[..50].to_vec();
    mixed.extend((0..50).map(|_| common::event("acme/widgets", 30)));
    mixed.push(mixed[60].clone());
    let ack = common::ingest(&mut client, 2, mixed.clone()).await;
    assert_eq!((ack.stored, ack.duplicates), (50, 51), "{ack:?}");
    // The same to a new process, which has no memory of the keys it did
    // not store: the database's unique key finds them.
    drop(client);
    svc.running.shutdown().await.unwrap();
    let svc = common::start_service(common::serve_config(&conn)).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 3, mixed).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 101), "{ack:?}");
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        150
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_row_the_database_refuses_costs_only_itself() {
    let (_pg, conn, svc) = common::service("refused").await;
    let db = common::db(&conn).await;
    // A constraint validation does not know about, standing for any value
    // the database refuses although it passed validation.
    db.batch_execute(
        "ALTER TABLE agent_events ADD CONSTRAINT no_poison CHECK (event_type <> 'poison')",
    )
    .await
    .unwrap();
    let mut events: Vec<pb::AgentEvent> = (0..100)
        .map(|_| common::event("acme/widgets", 30))
        .collect();
    events[37].event_type = "poison".into();
    events[81].event_type = "poison".into();
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 9, events).await;
    assert_eq!(ack.stored, 98, "{ack:?}");
    let rejected: Vec<u32> = ack.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, vec![37, 81]);
    assert!(
        ack.rejected[0].reason.contains("no_poison"),
        "{:?}",
        ack.rejected[0]
    );
    assert!(ack.error.is_empty());
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        98
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_batch_refused_whole_does_not_end_its_stream() {
    let (_pg, _conn, svc) = common::service_with("refused_whole", |cfg| {
        cfg.limits.max_batch_rows = 50;
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let too_big = pb::AgentEventBatch {
        sequence: 1,
        events: (0..51).map(|_| common::event("acme/widgets", 5)).collect(),
    };
    let fine = pb::AgentEventBatch {
        sequence: 2,
        events: (0..50).map(|_| common::event("acme/widgets", 5)).collect(),
    };
    let acks = common::stream_events(&mut client, vec![too_big.clone(), fine]).await;
    assert_eq!(acks[0].sequence, 1);
    assert!(
        acks[0].error.contains("51 rows, more than the limit of 50"),
        "{:?}",
        acks[0]
    );
    assert!(!acks[0].retryable);
    assert_eq!((acks[1].sequence, acks[1].stored), (2, 50));
    let status = client.ingest_agent_events(too_big).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_ends_its_stream_with_out_of_range_not_ok() {
    let (_pg, conn, svc) = common::service_with("oversized", |cfg| {
        cfg.limits.max_message_bytes = 64 * 1024;
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let small = |sequence| pb::AgentEventBatch {
        sequence,
        events: (0..5).map(|_| common::event("acme/widgets", 5)).collect(),
    };
    let mut big = small(2);
    big.events[0].data_json = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100 * 1024));
    let size = prost::Message::encoded_len(&big);
    let mut acks = client
        .stream_agent_events(tokio_stream::iter(vec![small(1), big, small(3)]))
        .await
        .expect("open stream")
        .into_inner();
    let first = acks.message().await.expect("first ack").expect("an ack");
    assert_eq!((first.sequence, first.stored), (1, 5));
    let status = acks
        .message()
        .await
        .expect_err("the stream must not end with OK");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let want = format!("message of {size} bytes over the limit of 65536");
    assert!(status.message().contains(&want), "{status:?}");
    assert!(status.message().contains("split the batch"), "{status:?}");
    assert!(status.message().contains("sequence 1"), "{status:?}");
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        5
    );
    // The unary form of the same batch: the same code.
    let mut big = small(4);
    big.events[0].data_json = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100 * 1024));
    let unary = client.ingest_agent_events(big).await.unwrap_err();
    assert_eq!(unary.code(), Code::OutOfRange, "{unary:?}");
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_answers_resource_exhausted_instead_of_growing() {
    let (_pg, conn, svc) = common::service_with("full", |cfg| {
        // One 100-event batch (about 23 KiB encoded) fits, two do not.
        cfg.pipeline.buffer_bytes = 32 << 10;
        cfg.pipeline.admission_timeout = Duration::from_millis(200);
    })
    .await;
    // A database that takes nothing: the first batch's COPY waits for the
    // lock, so its bytes stay in the buffer.
    let blocker = common::db(&conn).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE agent_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let batch = |s| pb::AgentEventBatch {
        sequence: s,
        events: (0..100).map(|_| common::event("acme/widgets", 5)).collect(),
    };
    let mut first = common::client(&svc.endpoint).await;
    let pending = tokio::spawn(async move { first.ingest_agent_events(batch(1)).await });
    common::until_writer_waits_for_lock(&conn).await;
    let mut second = common::client(&svc.endpoint).await;
    let status = second.ingest_agent_events(batch(2)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("buffer is full"), "{status:?}");
    let huge = pb::AgentEventBatch {
        sequence: 3,
        events: (0..1000)
            .map(|_| common::event("acme/widgets", 5))
            .collect(),
    };
    let status = second.ingest_agent_events(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Once the database takes rows again, the buffered batch is stored and
    // its caller answered.
    blocker.batch_execute("COMMIT").await.unwrap();
    let ack = pending.await.unwrap().unwrap().into_inner();
    assert_eq!(ack.stored, 100);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stores_and_acks_everything_buffered() {
    // The metrics port too (the only test of this binary that installs the
    // process-wide recorder): /readyz must say "draining" meanwhile.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_pg, conn, svc) = common::service_with("shutdown", |c| {
        c.metrics_listen = agent_telemetry::config::OptionalAddr(Some(metrics));
    })
    .await;
    // Hold the table locked: COPYs wait, batches stay buffered.
    let db = common::db(&conn).await;
    db.batch_execute("BEGIN; LOCK TABLE agent_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut client = common::client(&svc.endpoint).await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut acks = client
        .stream_agent_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for s in 0..5 {
        tx.send(pb::AgentEventBatch {
            sequence: s,
            events: (0..300)
                .map(|_| common::event(&format!("acme/widgets-{s}"), 5))
                .collect(),
        })
        .await
        .unwrap();
    }
    // The service has read them all and its COPY waits: nothing is stored.
    common::until_projects(&conn, 5).await;
    common::until_writer_waits_for_lock(&conn).await;
    let health = tonic::transport::Endpoint::from_shared(svc.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let shutdown = tokio::spawn(svc.running.shutdown());
    // The drain has begun (streams stop reading); now the database frees up.
    common::until_draining(health).await;
    // A load balancer stops sending here; the process is still alive.
    let ready = common::http_get(metrics, "/readyz").await.unwrap();
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    let live = common::http_get(metrics, "/healthz").await.unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    db.batch_execute("COMMIT").await.unwrap();
    let mut got = Vec::new();
    while let Some(ack) = acks.next().await {
        got.push(ack.expect("the stream ends with OK after its acks"));
    }
    // Every batch stored and acked: the drain finished, not the deadline.
    shutdown.await.unwrap().unwrap();
    assert_eq!(
        got.iter()
            .map(|a| (a.sequence, a.stored))
            .collect::<Vec<_>>(),
        (0..5).map(|s| (s, 300)).collect::<Vec<_>>()
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        1500
    );
    drop(tx);
}

#[tokio::test]
async fn sessions_are_reported_and_name_their_messages() {
    let (_pg, conn, svc) = common::service("sessions").await;
    let mut client = common::client(&svc.endpoint).await;
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(5, 3);
    let chat = generator.chat_session();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let agent_session_id = uuid::Uuid::new_v4().to_string();
    let start = pb::AgentSession {
        id: agent_session_id.clone(),
        agent_id: "claude-code".into(),
        agent_version: "2.0.14".into(),
        project: "git@github.com:acme/widgets.git".into(),
        start_time: Some(prost_types::Timestamp {
            seconds: now - 600,
            nanos: 0,
        }),
        context_json: r#"{"branch":"main"}"#.into(),
        ..Default::default()
    };
    let bad = pb::AgentSession {
        outcome: "exploded".into(),
        ..start.clone()
    };
    let ack = client
        .report_sessions(pb::SessionReport {
            chat_sessions: vec![chat.clone()],
            agent_sessions: vec![start.clone(), bad],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ack.chat_sessions_stored, ack.agent_sessions_stored),
        (1, 1)
    );
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(
        (
            ack.rejected[0].kind.as_str(),
            ack.rejected[0].index,
            ack.rejected[0].field.as_str()
        ),
        ("agent_session", 1, "outcome")
    );
    // The end of the session, reported later.
    let end = pb::AgentSession {
        end_time: Some(prost_types::Timestamp {
            seconds: now,
            nanos: 0,
        }),
        duration_s: Some(600),
        outcome: "success".into(),
        quality_score: Some(87.5),
        context_json: String::new(),
        ..start
    };
    client
        .report_sessions(pb::SessionReport {
            agent_sessions: vec![end],
            ..Default::default()
        })
        .await
        .unwrap();
    let db = common::db(&conn).await;
    let row = db
        .query_one(
            "SELECT s.outcome, s.duration, s.quality_score::text, s.context->>'branch', p.full_name, p.repo_url
             FROM agent_sessions s JOIN projects p ON p.id = s.project_id WHERE s.id = $1::text::uuid",
            &[&agent_session_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "success");
    assert_eq!(row.get::<_, i32>(1), 600);
    assert_eq!(row.get::<_, &str>(2), "87.50");
    assert_eq!(
        row.get::<_, &str>(3),
        "main",
        "context kept from the start report"
    );
    assert_eq!(row.get::<_, &str>(4), "acme/widgets");
    assert_eq!(row.get::<_, &str>(5), "git@github.com:acme/widgets.git");
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM workspaces").await,
        1
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM machine_projects").await,
        1
    );

    // Messages of the reported session are stored with its project and
    // agent; a message of an unknown session is rejected.
    let (mut known, _) = generator.message();
    known.session_id = chat.session_id.clone();
    let (mut unknown, _) = generator.message();
    unknown.session_id = uuid::Uuid::new_v4().to_string();
    let ack = client
        .ingest_chat_messages(pb::ChatMessageBatch {
            sequence: 1,
            sessions: vec![],
            messages: vec![known, unknown],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 1);
    assert_eq!(
        (ack.rejected[0].index, ack.rejected[0].field.as_str()),
        (1, "session_id")
    );
    assert!(ack.rejected[0].reason.contains("unknown chat session"));
    let agent: String = db
        .query_one("SELECT agent_type FROM chat_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(agent, chat.agent_type);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_service_reports_serving() {
    let (_pg, _conn, svc) = common::service("health").await;
    let channel = tonic::transport::Channel::from_shared(svc.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "agent_telemetry.v1.TelemetryIngest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_chat_session_keeps_its_first_project_and_its_messages_follow_it() {
    let (_pg, conn, svc) = common::service("one_project").await;
    let mut client = common::client(&svc.endpoint).await;
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(9, 1);
    let mut first = generator.chat_session();
    let project = first.workspace.as_mut().unwrap().project.as_mut().unwrap();
    project.name = "acme/first".into();
    project.repo_url = None;
    // The same session id announced from another machine, another
    // workspace and another project.
    let mut second = first.clone();
    let ws = second.workspace.as_mut().unwrap();
    ws.workspace_id = "another-workspace".into();
    ws.project.as_mut().unwrap().name = "acme/second".into();
    ws.machine.as_mut().unwrap().machine_id = "another-machine".into();
    let messages = |n: usize, generator: &mut agent_telemetry::loadgen::r#gen::Generator| {
        (0..n)
            .map(|_| {
                let (mut m, _) = generator.message();
                m.session_id = first.session_id.clone();
                m
            })
            .collect::<Vec<_>>()
    };
    let batch = |sequence, session: &pb::ChatSession, messages| pb::ChatMessageBatch {
        sequence,
        sessions: vec![session.clone()],
        messages,
    };
    let one = messages(3, &mut generator);
    let ack = client
        .ingest_chat_messages(batch(1, &first, one))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 3, "{ack:?}");
    let two = messages(4, &mut generator);
    let ack = client
        .ingest_chat_messages(batch(2, &second, two))
        .await
        .unwrap()
        .into_inner();
    // The conflicting announcement is refused with the reason; the
    // messages are stored, with the session's project.
    assert_eq!(ack.stored, 4, "{ack:?}");
    assert_eq!(ack.rejected.len(), 1, "{ack:?}");
    let r = &ack.rejected[0];
    assert_eq!(
        (r.kind.as_str(), r.field.as_str()),
        ("session", "workspace.project.name"),
        "{r:?}"
    );
    assert!(
        r.reason.contains("belongs to project \"acme/first\""),
        "{r:?}"
    );
    // The same through ReportSessions.
    let report = client
        .report_sessions(pb::SessionReport {
            chat_sessions: vec![second.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.chat_sessions_stored, 0, "{report:?}");
    assert_eq!(report.rejected[0].field, "workspace.project.name");

    let db = common::db(&conn).await;
    assert_eq!(
        common::strings(
            &db,
            "SELECT DISTINCT p.full_name FROM chat_messages m JOIN projects p ON p.id = m.project_id"
        )
        .await,
        ["acme/first"]
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT p.full_name FROM chat_sessions s JOIN projects p ON p.id = s.project_id"
        )
        .await,
        ["acme/first"]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM workspaces WHERE workspace_id = 'another-workspace'"
        )
        .await,
        0,
        "the refused announcement left nothing behind"
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_project_is_its_host_and_path_compared_as_the_host_compares() {
    let (_pg, conn, svc) = common::service("identity").await;
    let mut client = common::client(&svc.endpoint).await;
    for (sequence, project) in [
        "ACME/API",
        "https://gitlab.com/acme/api.git",
        "github.com/acme/api",
        "acme/api",
        "git@github.com:Acme/Api.git",
        "https://gitlab.com/ACME/api",
        "git.example.com/Team/tool",
        "git.example.com/team/tool",
    ]
    .into_iter()
    .enumerate()
    {
        let ack = common::ingest(
            &mut client,
            sequence as u64,
            vec![common::event(project, 5)],
        )
        .await;
        assert_eq!(ack.stored, 1, "{project}: {ack:?}");
    }
    let db = common::db(&conn).await;
    let rows = db
        .query(
            "SELECT p.full_name, count(e.*) FROM projects p JOIN agent_events e ON e.project_id = p.id
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            // The display form first seen; GitHub ignores case.
            ("ACME/API".to_owned(), 4),
            ("git.example.com/Team/tool".to_owned(), 1),
            ("git.example.com/team/tool".to_owned(), 1),
            ("gitlab.com/acme/api".to_owned(), 2),
        ]
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_id_resent_with_another_timestamp_is_a_conflict_not_a_second_row() {
    let (_pg, conn, svc) = common::service("conflicts").await;
    let mut client = common::client(&svc.endpoint).await;
    let first: Vec<pb::AgentEvent> = (0..5).map(|_| common::event("acme/clock", 600)).collect();
    let ack = common::ingest(&mut client, 1, first.clone()).await;
    assert_eq!(ack.stored, 5, "{ack:?}");
    // The client corrected its clock and resends: two rows with the old
    // ids and new timestamps, one unchanged, two new.
    let mut resend = first[..3].to_vec();
    for e in &mut resend[..2] {
        e.timestamp.as_mut().unwrap().seconds += 90;
    }
    resend.push(common::event("acme/clock", 5));
    resend.push(common::event("acme/clock", 5));
    let ack = common::ingest(&mut client, 2, resend).await;
    assert_eq!(
        (ack.stored, ack.duplicates, ack.conflicts),
        (2, 1, 2),
        "{ack:?}"
    );
    assert_eq!(
        ack.stored + ack.duplicates + ack.rejected.len() as u32,
        ack.received
    );
    let r: Vec<(u32, &str, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(
        r,
        [(0, "id", "ALREADY_EXISTS"), (1, "id", "ALREADY_EXISTS")]
    );
    assert!(
        ack.rejected[0].reason.contains("is stored with timestamp"),
        "{:?}",
        ack.rejected[0]
    );
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        7
    );
    assert_eq!(
        common::count(&db, "SELECT count(DISTINCT id) FROM agent_events").await,
        7
    );
    svc.running.shutdown().await.unwrap();
}

fn user(key: &str, name: &str, email: &str) -> Option<pb::User> {
    Some(pb::User {
        key: key.into(),
        display_name: name.into(),
        email: email.into(),
    })
}

#[tokio::test]
async fn events_and_sessions_carry_their_developer() {
    let (_pg, conn, svc) = common::service("users").await;
    let mut client = common::client(&svc.endpoint).await;
    let ada = user("acct-ada", "Ada", "ada@example.com");
    let mut events: Vec<pb::AgentEvent> = (0..4).map(|_| common::event("acme/users", 30)).collect();
    events[0].user = ada.clone();
    events[1].user = ada.clone();
    events[2].user = user("acct-bob", "", "");
    // No developer (an older client, a CI run): stored with none.
    events[3].user = None;
    // A key at its limit, one over, and a user without a key.
    // At the limit, incompressible: the unique index on users.key holds it.
    let noise: String = (0..32)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let mut at_limit = common::event("acme/users", 30);
    at_limit.user = user(&format!("kkkkkkkk{}", &noise[..1016]), "", "");
    let mut over = common::event("acme/users", 30);
    over.user = user(&"k".repeat(1025), "", "");
    let mut keyless = common::event("acme/users", 30);
    keyless.user = user("", "Nobody", "");
    events.extend([at_limit, over, keyless]);
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored, 5, "{ack:?}");
    let refused: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(refused, [(5, "user.key"), (6, "user.key")], "{ack:?}");
    assert!(ack.rejected[0].reason.contains("1025 bytes"), "{ack:?}");

    // Sessions name their developer too; a later report may add a name.
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(5, 3);
    let mut chat = generator.chat_session();
    chat.user = user("acct-bob", "Bob", "bob@example.com");
    let agent_session = pb::AgentSession {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: "claude-code".into(),
        agent_version: "2.0.14".into(),
        project: "acme/users".into(),
        start_time: chat.started_at,
        user: ada.clone(),
        ..Default::default()
    };
    let ack = client
        .report_sessions(pb::SessionReport {
            chat_sessions: vec![chat.clone()],
            agent_sessions: vec![agent_session.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ack.chat_sessions_stored, ack.agent_sessions_stored),
        (1, 1),
        "{ack:?}"
    );

    let db = common::db(&conn).await;
    assert_eq!(
        common::strings(
            &db,
            "SELECT key || ' ' || coalesce(display_name, '-') || ' ' || coalesce(email, '-')
             FROM users WHERE length(key) < 100 ORDER BY key"
        )
        .await,
        [
            "acct-ada Ada ada@example.com",
            "acct-bob Bob bob@example.com"
        ]
    );
    assert_eq!(
        common::strings(
            &db,
            "SELECT k || ' ' || n::text FROM (
                 SELECT coalesce(left(u.key, 8), 'none') AS k, count(*) AS n
                 FROM agent_events e LEFT JOIN users u ON u.id = e.user_id GROUP BY 1
             ) t ORDER BY 1"
        )
        .await,
        ["acct-ada 2", "acct-bob 1", "kkkkkkkk 1", "none 1"]
    );
    let session_users = format!(
        "SELECT (SELECT u.key FROM chat_sessions s JOIN users u ON u.id = s.user_id WHERE s.session_id = '{}')
             || ' ' || (SELECT u.key FROM agent_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = '{}')",
        chat.session_id, agent_session.id
    );
    assert_eq!(
        common::strings(&db, &session_users).await,
        ["acct-bob acct-ada"]
    );
    // Dashboards may name developers, not mail them.
    let reader_may = |column: &str| {
        format!(
            "SELECT has_column_privilege('agent_telemetry_reader', 'users', '{column}', 'SELECT')::text"
        )
    };
    assert_eq!(
        common::strings(&db, &reader_may("display_name")).await,
        ["true"]
    );
    assert_eq!(common::strings(&db, &reader_may("email")).await, ["false"]);
    svc.running.shutdown().await.unwrap();
}

fn org(key: &str, name: &str) -> Option<pb::Organization> {
    Some(pb::Organization {
        key: key.into(),
        display_name: name.into(),
    })
}

#[tokio::test]
async fn a_project_joins_the_first_organisation_named_for_it_and_stays() {
    let (_pg, conn, svc) = common::service("organisations").await;
    let mut client = common::client(&svc.endpoint).await;
    let mut events: Vec<pb::AgentEvent> = Vec::new();
    let mut push = |project: &str, user: &str, o: Option<pb::Organization>| {
        let mut e = common::event(project, 30);
        e.user = self::user(user, "", "");
        e.organization = o;
        events.push(e);
    };
    // 0–1: acme/api joins Acme; 2: named without one, it stays in Acme.
    push("acme/api", "ada", org("acme", "Acme Inc."));
    push("acme/api", "bob", org("acme", ""));
    push("acme/api", "bob", None);
    // 3: another organisation for acme/api: refused, the rest stored.
    push("acme/api", "ada", org("globex", "Globex"));
    // 4: a project of Globex; 5: a project of no organisation.
    push("globex/web", "ada", org("globex", "Globex"));
    push("solo/tool", "chen", None);
    // 6–7: keys at the limit and one over (a row refused in validation
    // creates no project).
    let noise: String = (0..32)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    push("big/one", "chen", org(&noise[..1024], ""));
    push("big/two", "chen", org(&"o".repeat(1025), ""));
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored, 6, "{ack:?}");
    let refused: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(
        refused,
        [(3, "organization.key"), (7, "organization.key")],
        "{ack:?}"
    );
    assert!(
        ack.rejected[0]
            .reason
            .contains("project \"acme/api\" belongs to organisation \"acme\", not \"globex\""),
        "{ack:?}"
    );
    assert!(ack.rejected[1].reason.contains("1025 bytes"), "{ack:?}");

    // A session naming another organisation for acme/api is refused whole;
    // one naming Globex for a new project puts it there.
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(5, 3);
    let mut conflicting = generator.chat_session();
    {
        let p = conflicting
            .workspace
            .as_mut()
            .unwrap()
            .project
            .as_mut()
            .unwrap();
        p.name = "acme/api".into();
        p.organization = org("globex", "");
    }
    let agent_session = pb::AgentSession {
        id: uuid::Uuid::new_v4().to_string(),
        agent_id: "claude-code".into(),
        agent_version: "2.0.14".into(),
        project: "globex/mobile".into(),
        start_time: conflicting.started_at,
        user: self::user("dana", "", ""),
        organization: org("globex", ""),
        ..Default::default()
    };
    let ack = client
        .report_sessions(pb::SessionReport {
            chat_sessions: vec![conflicting],
            agent_sessions: vec![agent_session],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ack.chat_sessions_stored, ack.agent_sessions_stored),
        (0, 1),
        "{ack:?}"
    );
    assert_eq!(
        ack.rejected
            .iter()
            .map(|r| r.field.as_str())
            .collect::<Vec<_>>(),
        ["workspace.project.organization.key"],
        "{ack:?}"
    );

    let db = common::db(&conn).await;
    assert_eq!(
        common::strings(
            &db,
            "SELECT p.full_name || ' ' || coalesce(o.key, '-') || ' ' || coalesce(o.display_name, '-')
             FROM projects p LEFT JOIN organizations o ON o.id = p.organization_id
             WHERE length(coalesce(o.key, '')) < 100 ORDER BY 1"
        )
        .await,
        [
            "acme/api acme Acme Inc.",
            "globex/mobile globex Globex",
            "globex/web globex Globex",
            "solo/tool - -",
        ]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM projects p JOIN organizations o ON o.id = p.organization_id
             WHERE p.full_name = 'big/one' AND length(o.key) = 1024"
        )
        .await,
        1
    );
    // Members: who wrote to a project of the organisation.
    assert_eq!(
        common::strings(
            &db,
            "SELECT o.key || ' ' || u.key || ' ' || m.role FROM organization_members m
             JOIN organizations o ON o.id = m.organization_id JOIN users u ON u.id = m.user_id
             WHERE length(o.key) < 100 ORDER BY 1"
        )
        .await,
        [
            "acme ada member",
            "acme bob member",
            "globex ada member",
            "globex dana member"
        ]
    );
    // Dashboards may read both.
    assert_eq!(
        common::strings(
            &db,
            "SELECT has_table_privilege('agent_telemetry_reader', 'organizations', 'SELECT')::text
                 || ' ' || has_table_privilege('agent_telemetry_reader', 'organization_members', 'SELECT')::text"
        )
        .await,
        ["true true"]
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_put_a_project_in_its_organisation_once() {
    // Batches on several connections naming the same project, in no
    // organisation yet, with the same organisation: one UPDATE moves it,
    // the others wait for it and then see it moved. (The first version read
    // the project's organisation from the waiting statement's snapshot, got
    // NULL and ended the streams without their acks.)
    let (_pg, conn, svc) = common::service("org_race").await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 0, vec![common::event("race/api", 30)]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    for round in 0..5 {
        let sends = (0..8).map(|i| {
            let endpoint = svc.endpoint.clone();
            async move {
                let mut client = common::client(&endpoint).await;
                let events = (0..20)
                    .map(|_| {
                        let mut e = common::event(&format!("race/p{round}"), 30);
                        if i == 0 {
                            e.project = "race/api".into();
                        }
                        e.organization = org("race", "");
                        e
                    })
                    .collect();
                common::ingest(&mut client, i, events).await
            }
        });
        for ack in futures_util::future::join_all(sends).await {
            assert_eq!((ack.stored, ack.rejected.len()), (20, 0), "{ack:?}");
        }
    }
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM projects p JOIN organizations o ON o.id = p.organization_id
             WHERE o.key = 'race'"
        )
        .await,
        6
    );
    svc.running.shutdown().await.unwrap();
}
