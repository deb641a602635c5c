//! 100,000 events and 20,000 chat messages over several concurrent gRPC
//! streams: every row is stored exactly once and every field comes back as
//! it was sent (JSON, arrays, NULLs, timestamps to the microsecond, cost to
//! the nano-dollar).

mod common;

use std::collections::HashMap;

use agent_telemetry::{loadgen::r#gen::Generator, pb};
use serde_json::Value;
use uuid::Uuid;

const EVENT_STREAMS: u64 = 4;
const EVENTS_PER_STREAM: usize = 25_000;
const MESSAGES: usize = 20_000;

fn events_for(stream: u64) -> Vec<pb::AgentEvent> {
    let mut evs = Generator::new(100 + stream, 12).events(EVENTS_PER_STREAM);
    // Cover the columns the generator leaves empty.
    for i in (7..evs.len()).step_by(7) {
        let prev = evs[i - 1].id.clone();
        let other = evs[i - 2].id.clone();
        let e = &mut evs[i];
        e.parent_event_id = prev.clone();
        e.related_event_ids = vec![prev, other];
        e.severity = pb::Severity::Warning as i32;
        e.tags.clear();
        e.duration_ms = None;
    }
    evs
}

fn ts_us(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}

fn db_us(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn json(s: &str, default: &str) -> Value {
    serde_json::from_str(if s.is_empty() { default } else { s }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_stored_once_and_round_trips() {
    let pg = common::TestCluster::start();
    let conn = pg.database("roundtrip").await;
    let svc = common::start_service(common::serve_config(&conn)).await;

    let event_sets: Vec<Vec<pb::AgentEvent>> = (0..EVENT_STREAMS).map(events_for).collect();
    let mut messages_gen = Generator::new(999, 12);
    let mut message_batches = Vec::new();
    let mut all_messages = Vec::new();
    let mut sessions = Vec::new();
    for seq in 0..(MESSAGES / 500) as u64 {
        let mut b = pb::ChatMessageBatch {
            sequence: seq,
            ..Default::default()
        };
        for k in 0..500 {
            let (mut m, opened) = messages_gen.message();
            if k % 50 == 0 {
                m.search_content = Some(m.content.to_uppercase());
            }
            all_messages.push(m.clone());
            b.messages.push(m);
            if let Some(s) = opened {
                sessions.push(s.clone());
                b.sessions.push(s);
            }
        }
        message_batches.push(b);
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (i, evs) in event_sets.iter().enumerate() {
        let batches: Vec<pb::AgentEventBatch> = evs
            .chunks(1000)
            .enumerate()
            .map(|(s, c)| pb::AgentEventBatch {
                sequence: (i * 1000 + s) as u64,
                events: c.to_vec(),
            })
            .collect();
        let endpoint = svc.endpoint.clone();
        tasks.spawn(async move {
            let mut client = common::client(&endpoint).await;
            if i % 2 == 1 {
                client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            let expected: Vec<u64> = batches.iter().map(|b| b.sequence).collect();
            let acks = common::stream_events(&mut client, batches).await;
            assert_eq!(
                acks.iter().map(|a| a.sequence).collect::<Vec<_>>(),
                expected,
                "acks in batch order"
            );
            acks
        });
    }
    let endpoint = svc.endpoint.clone();
    let msg_task = tokio::spawn(async move {
        let mut client = common::client(&endpoint).await;
        use tokio_stream::StreamExt;
        let acks = client
            .stream_chat_messages(tokio_stream::iter(message_batches))
            .await
            .unwrap()
            .into_inner();
        acks.map(|a| a.unwrap()).collect::<Vec<_>>().await
    });
    while let Some(acks) = tasks.join_next().await {
        for ack in acks.unwrap() {
            assert_eq!(
                (ack.received, ack.stored, ack.duplicates),
                (1000, 1000, 0),
                "{ack:?}"
            );
            assert!(ack.rejected.is_empty() && ack.error.is_empty(), "{ack:?}");
        }
    }
    let msg_acks = msg_task.await.unwrap();
    assert_eq!(msg_acks.len(), MESSAGES / 500);
    for ack in &msg_acks {
        assert_eq!((ack.stored, ack.rejected.len()), (500, 0), "{ack:?}");
    }

    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        100_000
    );
    assert_eq!(
        common::count(&db, "SELECT count(DISTINCT id) FROM agent_events").await,
        100_000
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM chat_messages").await,
        MESSAGES as i64
    );

    let sent: HashMap<Uuid, &pb::AgentEvent> = event_sets
        .iter()
        .flatten()
        .map(|e| (e.id.parse().unwrap(), e))
        .collect();
    let rows = db
        .query(
            "SELECT e.id, e.\"timestamp\", event_type, agent_id, agent_version, session_id, p.full_name, context, data, metrics,
                    parent_event_id, related_event_ids, tags, severity, duration_ms, input_tokens, output_tokens, cached_tokens,
                    (cost_usd * 1000000000)::int8, model
             FROM agent_events e JOIN projects p ON p.id = e.project_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    for r in &rows {
        let id: Uuid = r.get(0);
        let e = sent[&id];
        assert_eq!(
            db_us(r.get(1)),
            ts_us(e.timestamp.as_ref().unwrap()),
            "timestamp of {id}"
        );
        assert_eq!(r.get::<_, &str>(2), e.event_type);
        assert_eq!(r.get::<_, &str>(3), e.agent_id);
        assert_eq!(r.get::<_, &str>(4), e.agent_version);
        assert_eq!(r.get::<_, Uuid>(5).to_string(), e.session_id);
        assert_eq!(r.get::<_, &str>(6), e.project);
        assert_eq!(r.get::<_, Value>(7), json(&e.context_json, "{}"));
        assert_eq!(r.get::<_, Value>(8), json(&e.data_json, "{}"));
        assert_eq!(
            r.get::<_, Option<Value>>(9),
            (!e.metrics_json.is_empty()).then(|| json(&e.metrics_json, ""))
        );
        assert_eq!(
            r.get::<_, Option<Uuid>>(10).map(|u| u.to_string()),
            (!e.parent_event_id.is_empty()).then(|| e.parent_event_id.clone())
        );
        assert_eq!(
            r.get::<_, Vec<Uuid>>(11)
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>(),
            e.related_event_ids
        );
        assert_eq!(r.get::<_, Vec<String>>(12), e.tags);
        let severity = match pb::Severity::try_from(e.severity).unwrap() {
            pb::Severity::Unspecified => None,
            pb::Severity::Info => Some("info"),
            pb::Severity::Warning => Some("warning"),
            pb::Severity::Error => Some("error"),
        };
        assert_eq!(r.get::<_, Option<&str>>(13), severity);
        assert_eq!(r.get::<_, Option<i64>>(14), e.duration_ms);
        assert_eq!(r.get::<_, Option<i64>>(15), e.input_tokens);
        assert_eq!(r.get::<_, Option<i64>>(16), e.output_tokens);
        assert_eq!(r.get::<_, Option<i64>>(17), e.cached_tokens);
        assert_eq!(
            r.get::<_, Option<i64>>(18),
            e.cost_usd.map(|c| (c * 1e9).round() as i64),
            "cost of {id}"
        );
        assert_eq!(r.get::<_, Option<&str>>(19), e.model.as_deref());
    }

    let session_agent: HashMap<String, (&str, &str)> = sessions
        .iter()
        .map(|s| {
            (
                s.session_id.clone(),
                (
                    s.agent_type.as_str(),
                    s.workspace
                        .as_ref()
                        .unwrap()
                        .project
                        .as_ref()
                        .unwrap()
                        .name
                        .as_str(),
                ),
            )
        })
        .collect();
    let sent: HashMap<Uuid, &pb::ChatMessage> = all_messages
        .iter()
        .map(|m| (m.id.parse().unwrap(), m))
        .collect();
    let rows = db
        .query(
            "SELECT m.id, m.session_id, role, content, \"timestamp\", sequence, metadata, search_content, p.full_name, m.agent_type
             FROM chat_messages m JOIN projects p ON p.id = m.project_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), MESSAGES);
    for r in &rows {
        let m = sent[&r.get::<_, Uuid>(0)];
        assert_eq!(r.get::<_, Uuid>(1).to_string(), m.session_id);
        assert_eq!(r.get::<_, &str>(2), m.role);
        assert_eq!(r.get::<_, &str>(3), m.content);
        assert_eq!(db_us(r.get(4)), ts_us(m.timestamp.as_ref().unwrap()));
        assert_eq!(r.get::<_, i32>(5), m.sequence);
        assert_eq!(r.get::<_, Value>(6), json(&m.metadata_json, "{}"));
        assert_eq!(r.get::<_, Option<&str>>(7), m.search_content.as_deref());
        let (agent, project) = session_agent[&m.session_id];
        assert_eq!(r.get::<_, &str>(8), project);
        assert_eq!(r.get::<_, &str>(9), agent);
    }
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM chat_sessions").await,
        sessions.len() as i64
    );
    svc.running.shutdown().await.unwrap();
}
