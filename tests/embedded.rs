//! The embedded default: `serve` with no DATABASE_URL starts its own
//! PostgreSQL, keeps the data across restarts, and stops it on shutdown.

mod common;

use std::os::unix::fs::PermissionsExt;

use agent_telemetry::{
    config::{OptionalAddr, ServeConfig},
    db::embedded::{Cluster, ClusterOptions},
    pb, server,
};
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path) -> ServeConfig {
    let mut cfg = ServeConfig::defaults();
    cfg.database.database_url = None;
    cfg.database.data_dir = Some(dir.to_owned());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics_listen = OptionalAddr(None);
    cfg.otlp.off();
    cfg
}

#[tokio::test]
async fn start_ingest_stop_start_and_the_rows_are_there() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("data");
    let events: Vec<pb::AgentEvent> = (0..500)
        .map(|_| common::event("acme/embedded", 5))
        .collect();

    let running = server::start(config(&dir), CancellationToken::new())
        .await
        .expect("serve on the embedded database");
    let mut client = common::client(&format!("http://{}", running.addr)).await;
    let ack = common::ingest(&mut client, 1, events.clone()).await;
    assert_eq!(ack.stored, 500);
    running.shutdown().await.unwrap();

    let pgdata = dir.join("postgres");
    let cluster = Cluster::open(ClusterOptions {
        data_dir: pgdata.clone(),
        bindir: None,
        durable: true,
        port: 5432,
        tcp: false,
    })
    .unwrap();
    assert!(
        !cluster.is_running(),
        "shutdown stops the embedded PostgreSQL"
    );

    let running = server::start(config(&dir), CancellationToken::new())
        .await
        .expect("restart on the same data");
    let db = common::db(&cluster.conn_string("agent_telemetry")).await;
    assert_eq!(common::count(&db, "SELECT count(*) FROM agent_events WHERE project_id = (SELECT id FROM projects WHERE full_name = 'acme/embedded')").await, 500);
    let mut client = common::client(&format!("http://{}", running.addr)).await;
    let ack = common::ingest(&mut client, 2, events).await;
    assert_eq!(
        (ack.stored, ack.duplicates),
        (0, 500),
        "the restarted service recognises rows stored before"
    );
    drop(db);
    running.shutdown().await.unwrap();
    assert!(!cluster.is_running());
}

#[test]
fn a_missing_postgresql_gets_a_clear_error() {
    let err =
        agent_telemetry::db::embedded::find_bindir(Some(std::path::Path::new("/nonexistent/bin")))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("no PostgreSQL server found") && err.contains("apt-get install postgresql"),
        "{err}"
    );
}
