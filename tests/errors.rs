//! Errors that say what went wrong: wherever a database error is shown
//! (CLI, acks, logs), it carries PostgreSQL's message and SQLSTATE, never
//! tokio-postgres' bare "db error"; permanent failures are not retryable.

mod common;

use std::process::Command;

/// The CLI's `migrate` against `url`: its stderr.
fn migrate_stderr(url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .expect("run agent-telemetry migrate");
    assert!(!out.status.success(), "migrate must fail against {url}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_cli_names_a_wrong_database_user_and_a_closed_port() {
    let pg = common::TestCluster::start();
    let wrong_db = pg.conn("no_such_database");
    let err = migrate_stderr(&wrong_db);
    assert!(
        err.contains("database \"no_such_database\" does not exist") && err.contains("3D000"),
        "{err}"
    );
    assert!(!err.contains("db error"), "{err}");

    let wrong_user = format!("{} user=no_such_user", pg.conn("postgres"));
    let err = migrate_stderr(&wrong_user);
    assert!(
        err.contains("role \"no_such_user\" does not exist") && err.contains("28000"),
        "{err}"
    );

    // A port nobody listens on: the OS's reason, not only "error connecting".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = migrate_stderr(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=2"
    ));
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test]
async fn a_copy_the_database_refuses_for_good_is_acked_with_its_cause_not_retryable() {
    let (_pg, conn, svc) = common::service("errors_permanent").await;
    let db = common::db(&conn).await;
    let mut client = common::client(&svc.endpoint).await;
    // The dimension rows exist; then the table goes away under the service.
    let ack = common::ingest(&mut client, 1, vec![common::event("acme/errors", 5)]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    db.batch_execute("ALTER TABLE agent_events RENAME TO agent_events_gone")
        .await
        .unwrap();
    let ack = common::ingest(&mut client, 2, vec![common::event("acme/errors", 5)]).await;
    assert!(
        ack.error
            .contains("relation \"agent_events\" does not exist")
            && ack.error.contains("42P01"),
        "{ack:?}"
    );
    assert!(!ack.error.contains("db error"), "{ack:?}");
    assert!(
        !ack.retryable,
        "a missing table does not pass by itself: {ack:?}"
    );
    db.batch_execute("ALTER TABLE agent_events_gone RENAME TO agent_events")
        .await
        .unwrap();
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_row_the_database_refuses_names_its_proto_field_and_detail() {
    let (_pg, conn, svc) = common::service("errors_row").await;
    let db = common::db(&conn).await;
    // A domain the `metrics` column's values must fit (no view reads that
    // column, so its type can change): the error names the column, which
    // the rejection gives as the proto field.
    db.batch_execute(
        "CREATE DOMAIN small_json AS jsonb CHECK (octet_length(VALUE::text) < 100);
         ALTER TABLE agent_events ALTER COLUMN metrics TYPE small_json",
    )
    .await
    .unwrap();
    let mut events = vec![
        common::event("acme/errors", 5),
        common::event("acme/errors", 5),
    ];
    events[1].metrics_json = format!(r#"{{"file_path":"{}"}}"#, "y".repeat(200));
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(ack.rejected.len(), 1, "{ack:?}");
    let r = &ack.rejected[0];
    assert_eq!(r.index, 1);
    assert_eq!(r.field, "metrics_json", "{r:?}");
    assert!(
        r.reason.contains("small_json_check") && r.reason.contains("23514"),
        "{r:?}"
    );
    svc.running.shutdown().await.unwrap();
}
