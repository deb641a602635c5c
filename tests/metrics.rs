//! The Prometheus endpoint exposes the ingest counters, and the
//! per-project ones with their bounded labels. (Its own test binary: the
//! metrics recorder is global to a process.)

mod common;

use agent_telemetry::{config::OptionalAddr, pb};

#[tokio::test]
async fn metrics_count_stored_and_rejected_rows() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_pg, _conn, svc) = common::service_with("metrics", |cfg| {
        cfg.metrics_listen = OptionalAddr(Some(port));
        cfg.metrics_max_projects = 2;
    })
    .await;
    let mut client = common::client(&svc.endpoint).await;
    let mut events: Vec<pb::AgentEvent> = (0..10)
        .map(|_| {
            let mut e = common::event("acme/metrics", 5);
            e.cost_usd = Some(0.25);
            e
        })
        .collect();
    events[3].session_id = "nope".into();
    let ack = common::ingest(&mut client, 1, events.clone()).await;
    assert_eq!(ack.stored, 9);
    // A resend stores nothing and counts nothing per project.
    let ack = common::ingest(&mut client, 2, events).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 9));
    // The bad row is rejected again in the resend.
    let text = common::scrape(port).await;
    assert!(
        text.contains("agent_telemetry_rows_stored_total{table=\"agent_events\"} 9"),
        "{text}"
    );
    assert!(
        text.contains(
            "agent_telemetry_rows_rejected_total{table=\"agent_events\",reason=\"session_id\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("agent_telemetry_acks_total{table=\"agent_events\",result=\"ok\"} 2"),
        "{text}"
    );
    // Per project: the 9 new rows and their 2.25 USD; with a cap of two
    // projects, a third one is counted as `other`.
    for (seq, project) in [(3, "acme/second"), (4, "acme/third"), (5, "acme/fourth")] {
        let ack = common::ingest(&mut client, seq, vec![common::event(project, 5)]).await;
        assert_eq!(ack.stored, 1, "{ack:?}");
    }
    let text = common::scrape(port).await;
    let series = |prefix: &str| -> Vec<String> {
        let mut found: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        series("agent_telemetry_project_rows_total"),
        [
            "agent_telemetry_project_rows_total{table=\"agent_events\",project=\"acme/metrics\"} 9",
            "agent_telemetry_project_rows_total{table=\"agent_events\",project=\"acme/second\"} 1",
            "agent_telemetry_project_rows_total{table=\"agent_events\",project=\"other\"} 2",
        ],
        "{text}"
    );
    assert!(
        series("agent_telemetry_project_cost_nano_usd_total").contains(
            &"agent_telemetry_project_cost_nano_usd_total{project=\"acme/metrics\"} 2250000000"
                .to_owned()
        ),
        "{text}"
    );

    // The columnstore's look-up of rows past the key window (PGlite), by a
    // second service without an endpoint of its own: the recorder is the
    // process's, so the first service's endpoint shows its counters.
    assert!(
        text.contains("agent_telemetry_rows_past_key_window_total{table=\"agent_events\"} 0"),
        "{text}"
    );
    let tsdb =
        common::TsDb::pglite().in_layout(agent_telemetry::config::StorageLayout::Columnstore);
    let mut cfg = tsdb.serve_config();
    cfg.storage.key_window = std::time::Duration::from_secs(3_600);
    cfg.metrics_listen = OptionalAddr(None);
    let columnstore = common::start_service(cfg).await;
    let mut other = common::client(&columnstore.endpoint).await;
    let mut rows: Vec<pb::AgentEvent> = (0..7)
        .map(|_| common::event("acme/old", 3 * 3_600))
        .collect();
    rows.push(common::event("acme/old", 5));
    let ack = common::ingest(&mut other, 1, rows).await;
    assert_eq!(ack.stored, 8, "{ack:?}");
    let text = common::scrape(port).await;
    assert!(
        text.contains("agent_telemetry_rows_past_key_window_total{table=\"agent_events\"} 7"),
        "{text}"
    );
    drop(other);
    columnstore.running.shutdown().await.unwrap();
    svc.running.shutdown().await.unwrap();
}
