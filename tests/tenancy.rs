//! Readers of one organisation (`agent-telemetry readers`, src/db/readers.rs):
//! a role of one organisation reads its rows, raw and aggregated, and no row
//! of another, on TimescaleDB with every chunk compressed (PGlite every
//! run, native where installed) and on plain PostgreSQL.

mod common;

use agent_telemetry::{
    config::{ServeConfig, TimescaleMode},
    loadgen::{self, LoadgenConfig},
};
use tokio_postgres::Client;

fn readers_cli(conn: &str, args: &[&str], password: Option<&str>) -> String {
    let args = [&["readers"][..], args].concat();
    let env: Vec<_> = password
        .map(|p| ("AGENT_TELEMETRY_ORG_READER_PASSWORD", p))
        .into_iter()
        .collect();
    let out = common::cli(conn, &args, &env);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What logging in as `role` gives a session: the role, and the settings
/// `ALTER ROLE … SET` gave it (its search_path). PGlite serves a single
/// user, so a login is played by SET ROLE and those settings.
async fn become_role(db: &Client, role: &str) {
    let settings = common::strings(
        db,
        &format!(
            "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
             WHERE r.rolname = '{role}'"
        ),
    )
    .await;
    assert!(
        settings.iter().any(|s| s.starts_with("search_path=")),
        "{role} has no search_path: {settings:?}"
    );
    db.batch_execute(&format!("SET ROLE \"{role}\""))
        .await
        .unwrap();
    for s in settings {
        let (name, value) = s.split_once('=').unwrap();
        db.batch_execute(&format!("SET {name} = {value}"))
            .await
            .unwrap();
    }
}

/// Every relation the global reader may read, as the number of rows of
/// organisation `org` in it (counted by the test's own joins, as the
/// superuser).
async fn rows_of(db: &Client, org: &str) -> Vec<(String, i64)> {
    let relations = common::strings(
        db,
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'p')
           AND has_table_privilege('agent_telemetry_reader', c.oid, 'SELECT')
            OR (c.relname = 'users' AND n.nspname = current_schema())
         ORDER BY 1",
    )
    .await;
    let projects = format!(
        "SELECT p.id FROM projects p JOIN organizations o ON o.id = p.organization_id WHERE o.key = '{org}'"
    );
    let mut out = Vec::new();
    for rel in relations {
        let sql = match rel.as_str() {
            "organizations" => format!("SELECT count(*) FROM organizations WHERE key = '{org}'"),
            "users" => format!(
                "SELECT count(DISTINCT u.id) FROM users u JOIN organization_members m ON m.user_id = u.id
                 JOIN organizations o ON o.id = m.organization_id WHERE o.key = '{org}'"
            ),
            "machines" => format!(
                "SELECT count(DISTINCT machine_id) FROM machine_projects WHERE project_id IN ({projects})"
            ),
            "projects" => format!("SELECT count(*) FROM projects WHERE id IN ({projects})"),
            "organization_members" | "team_daily" => format!(
                "SELECT count(*) FROM {rel} t JOIN organizations o ON o.id = t.organization_id WHERE o.key = '{org}'"
            ),
            // A rollup over every project: the organisation's hours,
            // agents and event types (src/db/readers.rs).
            "agent_events_hourly_by_agent" => format!(
                "SELECT count(*) FROM (SELECT DISTINCT bucket, agent_id, event_type
                 FROM agent_events_hourly WHERE project_id IN ({projects})) t"
            ),
            _ => format!("SELECT count(*) FROM {rel} WHERE project_id IN ({projects})"),
        };
        out.push((rel, common::count(db, &sql).await));
    }
    out
}

/// `login`: the server takes logins as other users (a cluster of the
/// harness, trust auth; not PGlite).
async fn one_organisation_reads_only_its_own(
    conn: &str,
    cfg: ServeConfig,
    label: &str,
    login: bool,
) {
    let timescaledb = cfg.storage.timescaledb != TimescaleMode::Off;
    let svc = common::start_service(cfg).await;
    // Four projects, in organisations org0 … org3, with chat.
    let summary = loadgen::run(&LoadgenConfig {
        client: agent_telemetry::config::ClientConfig::at(svc.endpoint.clone()),
        events: 3_000,
        messages: 600,
        streams: 1,
        batch_size: 300,
        rate: 0.0,
        window: 4,
        seed: 5,
        projects: 4,
        gzip: false,
        spread: None,
        quiet: true,
    })
    .await
    .expect("loadgen");
    assert_eq!(summary.rows_stored, 3_600, "{summary}");
    svc.running.shutdown().await.unwrap();
    if timescaledb {
        // The views must read compressed chunks and materialised buckets.
        let db = common::db(conn).await;
        db.batch_execute(
            "SELECT compress_chunk(c) FROM show_chunks('agent_events') c;
             SELECT compress_chunk(c) FROM show_chunks('chat_messages') c",
        )
        .await
        .expect("compress every chunk");
        common::aggregates::materialise_all(&db).await;
    }

    let made = readers_cli(
        conn,
        &["create", "--organization", "org1", "--role", "grafana_org1"],
        Some("s3cret"),
    );
    assert!(
        made.contains("role grafana_org1 reads organisation org1"),
        "{made}"
    );
    let other = readers_cli(conn, &["create", "--organization", "org2"], None);
    assert!(other.contains("NOLOGIN"), "{other}");
    let listed = readers_cli(conn, &["list"], None);
    assert!(
        listed.contains("grafana_org1\torg1\t") && listed.contains("\torg2\t"),
        "{listed}"
    );
    // A role that is no organisation reader is never taken over.
    let db = common::db(conn).await;
    db.batch_execute(
        "DO $$ BEGIN CREATE ROLE someone_else; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await
    .unwrap();
    drop(db);
    let out = common::cli(
        conn,
        &[
            "readers",
            "create",
            "--organization",
            "org1",
            "--role",
            "someone_else",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("exists and is not an organisation reader"),
        "{err}"
    );

    let db = common::db(conn).await;
    let org1 = rows_of(&db, "org1").await;
    let total: Vec<(String, i64)> = {
        let mut t = Vec::new();
        for (rel, _) in &org1 {
            t.push((
                rel.clone(),
                common::count(&db, &format!("SELECT count(*) FROM {rel}")).await,
            ));
        }
        t
    };
    let org2_role = common::strings(
        &db,
        "SELECT role_name FROM organization_readers r JOIN organizations o ON o.id = r.organization_id WHERE o.key = 'org2'",
    )
    .await
    .remove(0);
    let org2 = rows_of(&db, "org2").await;

    become_role(&db, "grafana_org1").await;
    let mut checked = 0;
    for ((rel, mine), (_, all)) in org1.iter().zip(&total) {
        let seen = common::count(&db, &format!("SELECT count(*) FROM {rel}")).await;
        assert_eq!(
            seen, *mine,
            "{label}: org1's reader sees {seen} rows of {rel}, org1 has {mine} (of {all})"
        );
        checked += 1;
    }
    // Rows of other organisations exist, and the reader sees none of them.
    for rel in [
        "agent_events",
        "chat_messages",
        "developer_daily",
        "team_daily",
        "projects",
        "users",
    ] {
        let (_, mine) = org1.iter().find(|(r, _)| r == rel).unwrap();
        let (_, all) = total.iter().find(|(r, _)| r == rel).unwrap();
        assert!(
            *mine > 0 && all > mine,
            "{label}: {rel}: org1 {mine} of {all}: the test needs both"
        );
    }
    let orgs = common::strings(&db, "SELECT key FROM organizations").await;
    assert_eq!(orgs, ["org1"]);
    // Its aggregates, read as it reads them, equal its raw rows.
    common::aggregates::assert_aggregates_match(&db, |_| "true".into()).await;
    // Nothing but the views: the tables, the other tenant's views, chunks,
    // keys and the audit log are refused.
    let mut refused = vec![
        "public.agent_events".to_owned(),
        "public.chat_messages".into(),
        "public.developer_daily".into(),
        "public.users".into(),
        "public.api_keys".into(),
        "public.audit_log".into(),
        "public.organization_readers".into(),
        format!("{}.agent_events", org2_schema(&db, &org2_role).await),
    ];
    if timescaledb {
        db.batch_execute("RESET ROLE").await.unwrap();
        refused.extend(
            common::strings(
                &db,
                "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks
                 WHERE hypertable_name = 'agent_events' LIMIT 1",
            )
            .await,
        );
        refused.extend(
            common::strings(
                &db,
                "SELECT format('%I.%I', h.schema_name, h.table_name) FROM _timescaledb_catalog.hypertable h
                 WHERE h.table_name LIKE '_materialized_hypertable_%' LIMIT 1",
            )
            .await,
        );
        become_role(&db, "grafana_org1").await;
    }
    for rel in &refused {
        let e = db
            .query(&format!("SELECT count(*) FROM {rel}"), &[])
            .await
            .expect_err(rel);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{label}: {rel}: {e:?}"
        );
    }
    db.batch_execute("RESET ROLE; RESET search_path")
        .await
        .unwrap();

    // The other organisation's reader, the other way round.
    become_role(&db, &org2_role).await;
    for (rel, mine) in &org2 {
        let seen = common::count(&db, &format!("SELECT count(*) FROM {rel}")).await;
        assert_eq!(seen, *mine, "{label}: org2's reader: {rel}");
    }
    db.batch_execute("RESET ROLE; RESET search_path")
        .await
        .unwrap();
    drop(db);

    if login {
        // As Grafana connects: the role's own search_path reads the views.
        let reader = common::db(&conn.replace("user=postgres", "user=grafana_org1")).await;
        let (_, events) = org1.iter().find(|(r, _)| r == "agent_events").unwrap();
        assert_eq!(
            common::count(&reader, "SELECT count(*) FROM agent_events").await,
            *events
        );
    }

    // Dropping a reader leaves the other one reading.
    readers_cli(conn, &["drop", "grafana_org1"], None);
    let listed = readers_cli(conn, &["list"], None);
    assert!(
        !listed.contains("grafana_org1") && listed.contains("\torg2\t"),
        "{listed}"
    );
    common::say(&format!(
        "tenancy ({label}): org1's reader saw exactly its rows of {checked} relations, none of the others'; {} refused",
        refused.len()
    ));
}

async fn org2_schema(db: &Client, role: &str) -> String {
    db.batch_execute("RESET ROLE").await.unwrap();
    let s = common::strings(
        db,
        &format!("SELECT schema_name FROM organization_readers WHERE role_name = '{role}'"),
    )
    .await
    .remove(0);
    become_role(db, "grafana_org1").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_organisation_reads_no_row_of_another_on_timescaledb_pglite() {
    let tsdb = common::TsDb::pglite();
    one_organisation_reads_only_its_own(
        &tsdb.conn,
        tsdb.serve_config(),
        "TimescaleDB in PGlite",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_organisation_reads_no_row_of_another_on_timescaledb_native() {
    let Some(tsdb) =
        common::TsDb::native("a_reader_of_one_organisation_reads_no_row_of_another").await
    else {
        return;
    };
    one_organisation_reads_only_its_own(
        &tsdb.conn,
        tsdb.serve_config(),
        "native TimescaleDB",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_organisation_reads_no_row_of_another_on_plain_postgres() {
    let pg = common::TestCluster::start();
    let conn = pg.database("plain").await;
    let mut cfg = common::serve_config(&conn);
    cfg.storage.timescaledb = TimescaleMode::Off;
    one_organisation_reads_only_its_own(&conn, cfg, "plain PostgreSQL", true).await;
}
