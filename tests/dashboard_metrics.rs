//! The "Ingest health" dashboard against a live service's /metrics: every
//! metric its Prometheus queries name is exported, with every label they
//! group by. (Its own test binary: the metrics recorder is global to a
//! process.)

mod common;

use std::{collections::BTreeSet, time::Duration};

use agent_telemetry::{config::OptionalAddr, pb};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/ingest-health.json"
);

/// (metric, labels it groups by) of each PromQL expression.
fn wanted(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let by: BTreeSet<String> = expr
        .match_indices("by (")
        .flat_map(|(at, _)| {
            let rest = &expr[at + 4..];
            rest[..rest.find(')').unwrap()]
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        // Prometheus adds `instance` at scrape time; `le` is the bucket bound.
        .filter(|l| l != "instance")
        .collect();
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("agent_telemetry_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(tail.len());
        out.push((tail[..end].to_owned(), by.clone()));
        rest = &tail[end..];
    }
    assert!(!out.is_empty(), "no metric in {expr}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ingest_health_query_names_exported_metrics_and_labels() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (_pg, conn, svc) = common::service_with("health_metrics", |cfg| {
        cfg.metrics_listen = OptionalAddr(Some(port));
        cfg.spool.spool_dir = Some(dir);
        cfg.limits.max_batch_rows = 100;
    })
    .await;
    // A good batch with one bad row, and a batch refused whole.
    let mut client = common::client(&svc.endpoint).await;
    let mut events: Vec<pb::AgentEvent> = (0..10).map(|_| common::event("acme/m", 5)).collect();
    events[3].session_id = "nope".into();
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!((ack.spooled, ack.rejected.len()), (9, 1), "{ack:?}");
    let too_many = (0..101).map(|_| common::event("acme/m", 5)).collect();
    let refused = client
        .ingest_agent_events(pb::AgentEventBatch {
            sequence: 2,
            events: too_many,
        })
        .await;
    assert!(refused.is_err());
    let db = common::db(&conn).await;
    common::delivery::until_stored(&db, 9, Duration::from_secs(30)).await;
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    // The spool gauges are set on a timer: scrape until every reference is
    // exported (or give up and say which is not).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (checked, unmet) = loop {
        let text = common::scrape(port).await;
        let (checked, unmet) = references(&dash, &text);
        if unmet.is_empty() || tokio::time::Instant::now() > deadline {
            break (checked, unmet);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(unmet.is_empty(), "{}", unmet.join("\n"));
    common::say(&format!(
        "ingest-health dashboard: {checked} metric references, all exported with their labels"
    ));
    svc.running.shutdown().await.unwrap();
}

/// How many metric references the dashboard's panels make, and those the
/// scrape `text` does not satisfy (the metric or one of its labels absent).
fn references(dash: &serde_json::Value, text: &str) -> (usize, Vec<String>) {
    let (mut checked, mut unmet) = (0, Vec::new());
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for (metric, labels) in wanted(expr) {
                checked += 1;
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        l.starts_with(&format!("{metric}{{"))
                            || l.starts_with(&format!("{metric} "))
                    })
                    .collect();
                if lines.is_empty() {
                    unmet.push(format!(
                        "panel {:?}: {metric} is not exported",
                        panel["title"]
                    ));
                }
                for label in &labels {
                    if !lines.iter().any(|l| l.contains(&format!("{label}=\""))) {
                        unmet.push(format!(
                            "panel {:?}: {metric} has no label {label}: {lines:?}",
                            panel["title"]
                        ));
                    }
                }
            }
        }
    }
    (checked, unmet)
}
