//! The Prometheus endpoint exposes the ingest counters. (Its own test
//! binary: the metrics recorder is global to a process.)

mod common;

use agent_telemetry::{config::OptionalAddr, pb};

#[tokio::test]
async fn metrics_count_stored_and_rejected_rows() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_pg, _conn, svc) = common::service_with("metrics", |cfg| {
        cfg.metrics_listen = OptionalAddr(Some(port))
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let mut events: Vec<pb::AgentEvent> =
        (0..10).map(|_| common::event("acme/metrics", 5)).collect();
    events[3].session_id = "nope".into();
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored, 9);
    let text = common::scrape(port).await;
    assert!(
        text.contains("agent_telemetry_rows_stored_total{table=\"agent_events\"} 9"),
        "{text}"
    );
    assert!(
        text.contains(
            "agent_telemetry_rows_rejected_total{table=\"agent_events\",reason=\"session_id\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("agent_telemetry_acks_total{table=\"agent_events\",result=\"ok\"} 1"),
        "{text}"
    );
    svc.running.shutdown().await.unwrap();
}
