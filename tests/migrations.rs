//! Migrations: applied once, idempotent, safe when instances start at once.

mod common;

use agent_telemetry::{
    config::{Limits, ServeConfig},
    db::migrate::{MigrateError, Report},
    db::open::{OpenError, run_migrations},
};

/// Migrates in the mode the test cluster offers (TimescaleDB where installed).
async fn migrate(conn: &str) -> Result<Report, OpenError> {
    run_migrations(
        conn,
        &ServeConfig::defaults().storage,
        Limits::default().max_past,
    )
    .await
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let pg = common::TestCluster::start();
    let conn = pg.database("twice").await;
    let first = migrate(&conn).await.unwrap();
    assert!(first.applied.len() >= 3, "{:?}", first.applied);
    let second = migrate(&conn).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already, first.applied.len());
    assert_eq!(second.policies_changed().count(), 0);
    let db = common::db(&conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM schema_migrations").await,
        first.applied.len() as i64
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
    let runs = futures_util::future::join_all((0..4).map(|_| migrate(&conn))).await;
    let mut applied = 0;
    for r in runs {
        applied += r.expect("every instance's migrate succeeds").applied.len();
    }
    let db = common::db(&conn).await;
    assert_eq!(
        applied as i64,
        common::count(&db, "SELECT count(*) FROM schema_migrations").await,
        "each migration applied by exactly one instance"
    );
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let pg = common::TestCluster::start();
    let conn = pg.database("edited").await;
    migrate(&conn).await.unwrap();
    let db = common::db(&conn).await;
    db.execute(
        "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let err = migrate(&conn).await.unwrap_err();
    assert!(
        matches!(err, OpenError::Migrate(MigrateError::Changed { .. })),
        "{err}"
    );
}

/// The dashboards' role reads every data table and aggregate, writes
/// nothing, cannot see API keys, and logs in only once a password is set.
#[tokio::test]
async fn the_reader_role_reads_the_data_and_nothing_else() {
    let pg = common::TestCluster::start();
    let conn = pg.database("reader").await;
    migrate(&conn).await.unwrap();
    let as_reader = conn.replace("user=postgres", "user=agent_telemetry_reader");
    let refused = agent_telemetry::db::connect(&as_reader).await.err();
    assert!(
        refused
            .as_ref()
            .is_some_and(|e| format!("{e:?}").contains("not permitted to log in")),
        "a NOLOGIN role connected: {refused:?}"
    );

    let mut storage = ServeConfig::defaults().storage;
    storage.reader_password = Some("it's a secret".into());
    run_migrations(&conn, &storage, Limits::default().max_past)
        .await
        .unwrap();
    let admin = common::db(&conn).await;
    assert_eq!(
        common::count(
            &admin,
            "SELECT count(*) FROM pg_authid WHERE rolname = 'agent_telemetry_reader' AND rolcanlogin AND rolpassword IS NOT NULL"
        )
        .await,
        1
    );
    let reader = common::db(&as_reader).await;
    for relation in [
        "projects",
        "machines",
        "workspaces",
        "chat_sessions",
        "agent_sessions",
        "agent_events",
        "chat_messages",
        "agent_events_hourly",
        "agent_events_daily",
        "llm_usage_daily",
        "chat_activity_hourly",
    ] {
        common::count(&reader, &format!("SELECT count(*) FROM {relation}")).await;
    }
    for (sql, what) in [
        ("SELECT count(*) FROM api_keys", "read API keys"),
        ("SELECT count(*) FROM audit_log", "read the audit log"),
        (
            "INSERT INTO projects (name, full_name, repo_owner, repo_name) VALUES ('x', 'x/x', 'x', 'x')",
            "inserted a project",
        ),
        ("DELETE FROM agent_events", "deleted events"),
        ("CREATE TABLE mine (x int)", "created a table"),
    ] {
        let err = reader
            .batch_execute(sql)
            .await
            .expect_err(&format!("the reader role {what}"));
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn projects_stored_before_get_their_host_and_identity() {
    let pg = common::TestCluster::start();
    let conn = pg.database("identity").await;
    migrate(&conn).await.unwrap();
    let db = common::db(&conn).await;
    // The projects table as it was before 0011, with rows stored then: the
    // path alone as key, GitHub and GitLab merged, case kept apart.
    db.batch_execute(
        "DROP INDEX projects_identity_key;
         ALTER TABLE projects DROP COLUMN host, DROP COLUMN identity,
             ADD CONSTRAINT projects_full_name_key UNIQUE (full_name),
             ADD CONSTRAINT projects_repo_url_key UNIQUE (repo_url);
         INSERT INTO projects (id, name, full_name, repo_url, repo_owner, repo_name) VALUES
             (101, 'api', 'acme/api', 'https://github.com/acme/api.git', 'acme', 'api'),
             (102, 'API', 'ACME/API', NULL, 'ACME', 'API'),
             (103, 'web', 'acme/web', 'git@gitlab.com:acme/web.git', 'acme', 'web'),
             (104, 'tool', 'Team/Tool', 'https://git.example.com/Team/Tool', 'Team', 'Tool');",
    )
    .await
    .unwrap();
    db.batch_execute(include_str!("../sql/0011_project_identity.sql"))
        .await
        .expect("0011 on the rows stored before");
    let rows = db
        .query(
            "SELECT id, host, identity, full_name FROM projects WHERE id > 100 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let want = [
        (101, "github.com", "github.com/acme/api", "acme/api"),
        (102, "github.com", "github.com/acme/api#102", "ACME/API"),
        (
            103,
            "gitlab.com",
            "gitlab.com/acme/web",
            "gitlab.com/acme/web",
        ),
        (
            104,
            "git.example.com",
            "git.example.com/Team/Tool",
            "git.example.com/Team/Tool",
        ),
    ];
    assert_eq!(
        got,
        want.map(|(i, h, k, f)| (i, h.to_owned(), k.to_owned(), f.to_owned()))
    );
}
