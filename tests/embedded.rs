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

/// A clean stop of `serve` on its embedded database closes the pool's
/// connections before it stops PostgreSQL: no connection error is logged
/// (before: six `WARN deadpool.postgres: Connection error: db error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_of_the_embedded_database_logs_no_connection_error() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--otlp-grpc-listen", "127.0.0.1:0"])
        .args(["--otlp-http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run agent-telemetry serve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        log.push_str(&line);
        if line.contains("gRPC ingest service listening") {
            addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_owned);
        }
        line.clear();
    }
    let addr = addr.unwrap_or_else(|| panic!("serve did not start:\n{log}"));
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        rest
    });
    // Rows through every stage, so that the pool holds connections.
    let mut client = common::client(&format!("http://{addr}")).await;
    for n in 1..=3 {
        let events = (0..200)
            .map(|_| common::event("acme/shutdown", 5))
            .collect();
        assert_eq!(common::ingest(&mut client, n, events).await.stored, 200);
    }
    drop(client);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    log.push_str(&reader.join().unwrap());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("Connection error") && !log.contains("WARN"),
        "a clean stop warns of nothing:\n{log}"
    );
}
