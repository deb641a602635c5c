//! Migrations: applied once, idempotent, safe when instances start at once.

mod common;

use agent_telemetry::{db::migrate::MIGRATIONS, server::run_migrations};

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let pg = common::TestCluster::start();
    let conn = pg.database("twice").await;
    let first = run_migrations(&conn).await.unwrap();
    assert_eq!(first.applied.len(), MIGRATIONS.len());
    let second = run_migrations(&conn).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already, MIGRATIONS.len());
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM schema_migrations").await,
        MIGRATIONS.len() as i64
    );
    for table in [
        "projects",
        "machines",
        "machine_projects",
        "workspaces",
        "chat_sessions",
        "chat_messages",
        "agent_events",
        "agent_sessions",
    ] {
        assert_eq!(
            common::count(
                &db,
                &format!(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = '{table}'"
                )
            )
            .await,
            1,
            "{table}"
        );
    }
}

#[tokio::test]
async fn instances_migrating_at_once_do_not_conflict() {
    let pg = common::TestCluster::start();
    let conn = pg.database("concurrent").await;
    let runs = futures_util::future::join_all((0..4).map(|_| run_migrations(&conn))).await;
    let mut applied = 0;
    for r in runs {
        applied += r.expect("every instance's migrate succeeds").applied.len();
    }
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each migration applied by exactly one instance"
    );
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let pg = common::TestCluster::start();
    let conn = pg.database("edited").await;
    run_migrations(&conn).await.unwrap();
    let db = common::db(&conn).await;
    db.execute(
        "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let err = run_migrations(&conn).await.unwrap_err().to_string();
    assert!(err.contains("was changed after it was applied"), "{err}");
}
