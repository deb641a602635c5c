//! TimescaleDB: hypertables, compression, continuous aggregates, policies
//! and late data. Every test runs twice: on TimescaleDB 2.23 in WASM
//! (PGlite, every CI run) and on a native TimescaleDB where one is
//! installed (else it prints `SKIPPED: native TimescaleDB not installed`).
//! The plain-PostgreSQL fallback is tested at the end.

mod common;

use std::time::Duration;

use agent_telemetry::db::layout::Layout;
use agent_telemetry::{
    config::{Limits, ServeConfig, StorageConfig, TimescaleMode},
    db::migrate::{Mode, Report},
    db::open::run_migrations,
    loadgen::{self, LoadgenConfig},
    pb,
};
use common::{
    TsDb,
    aggregates::{assert_aggregates_exact, materialise_all, noise, set_materialized_only},
};
use tokio_postgres::Client;

on_timescaledb!(
    migrate_builds_hypertables_aggregates_and_policies_once,
    a_changed_setting_alters_only_its_policy,
    aggregates_equal_direct_aggregates_over_raw_rows,
    late_events_show_up_in_hourly_and_daily_aggregates,
    todays_figures_stay_exact_after_a_same_day_late_refresh,
    every_accepted_value_fits_the_indexes_and_every_refresh,
    copy_into_a_compressed_chunk_stores_late_rows_and_counts_resends,
    compression_and_retention_jobs_act_on_the_right_chunks,
    the_columnstore_copies_into_compressed_chunks_and_finds_resends_in_its_keys,
    past_the_key_window_resends_are_found_in_the_key_archive,
);

fn storage() -> StorageConfig {
    ServeConfig::defaults().storage
}

async fn migrate(conn: &str, storage: &StorageConfig) -> Report {
    run_migrations(conn, storage, Limits::default().max_past)
        .await
        .expect("migrate")
}

use common::strings;

async fn text(db: &Client, sql: &str) -> String {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", agent_telemetry::db::error::describe(&e)))
        .get(0)
}

/// `config ->> key` of the policy job `proc` on `rel`, as interval text.
async fn job_setting(db: &Client, proc: &str, rel: &str, key: &str) -> String {
    text(
        db,
        &format!(
            "SELECT (config ->> '{key}')::interval::text FROM agent_telemetry_job('{proc}', '{rel}')"
        ),
    )
    .await
}

async fn migrate_builds_hypertables_aggregates_and_policies_once(tsdb: TsDb) {
    let first = migrate(&tsdb.conn, &storage()).await;
    assert!(
        matches!(first.mode, Mode::TimescaleDb { .. }),
        "{}",
        first.mode
    );
    assert_eq!(
        first.applied,
        [
            "0001_core.sql",
            "0002_indexes.sql",
            "timescaledb/0003_hypertables.sql",
            "timescaledb/0004_aggregates.sql",
            "0005_api_keys.sql",
            "0006_reader_role.sql",
            "0007_late_hours.sql",
            "timescaledb/0008_activity_aggregates.sql",
            "0009_group_key.sql",
            "timescaledb/0010_bounded_activity_keys.sql",
            "0011_project_identity.sql",
            "0012_users.sql",
            "0013_organizations.sql",
            "0014_safe_figures.sql",
            "timescaledb/0015_developer_daily.sql",
            "0016_team_daily_and_session_results.sql",
            "timescaledb/0017_developer_models_and_tools.sql",
            "0018_organization_keys.sql",
            "0019_organization_readers.sql",
            "0020_key_users.sql",
            "0021_settings.sql",
            "timescaledb/0022_productivity_daily.sql",
            "0023_usage_blocks.sql",
            "0024_late_hours_first_noted.sql",
            "timescaledb/0025_session_daily.sql",
            "timescaledb/0026_developer_requests_hourly.sql",
            "0027_usage_blocks_from_hours.sql",
            "0028_readers_without_jit.sql",
            "timescaledb/0029_agent_events_hourly_by_agent.sql",
            "0030_agent_session_results_since.sql"
        ]
    );
    assert_eq!(first.policies_changed().count(), 30, "{:?}", first.policies);
    let second = migrate(&tsdb.conn, &storage()).await;
    assert!(second.applied.is_empty());
    assert_eq!(second.already, 30);
    assert_eq!(
        second.policies_changed().count(),
        0,
        "{:?}",
        second.policies
    );

    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        strings(
            &db,
            "SELECT hypertable_name::text || ' ' || time_interval::text FROM timescaledb_information.dimensions
             WHERE hypertable_name IN ('agent_events', 'chat_messages') ORDER BY 1"
        )
        .await,
        ["agent_events 1 day", "chat_messages 1 day"]
    );
    // A new database on a TimescaleDB with direct compress gets the
    // columnstore layout: no unique index on the wide tables (direct
    // compress refuses them), keys in narrow tables unique by id: recent
    // ones for --key-window (2 days) and an hour's margin, moved hourly to
    // an archive that keeps them for --max-past (90 days) and that hour.
    // PGlite's TimescaleDB (2.23) has direct compress but not into a
    // hypertable with continuous aggregates: the row store there, with the
    // primary keys; native 2.28 gets the columnstore, with key tables.
    let layout = first.layout.as_ref().expect("a layout in TimescaleDB mode");
    let uniques = strings(
        &db,
        "SELECT c.relname::text || ' ' || bool_or(a.attname = 'timestamp')::text
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
         WHERE c.relname IN ('agent_events', 'chat_messages', 'agent_event_keys', 'chat_message_keys',
                             'agent_event_key_archive', 'chat_message_key_archive')
           AND i.indisunique
         GROUP BY c.relname, i.indexrelid ORDER BY 1",
    )
    .await;
    let recorded = strings(
        &db,
        "SELECT value FROM agent_telemetry_settings WHERE name = 'layout'",
    )
    .await;
    if tsdb.native {
        assert_eq!(layout.layout, Layout::Columnstore, "{layout}");
        assert!(layout.reason.contains("has direct compress"), "{layout}");
        // Unique by id alone: a plain table, not a hypertable.
        assert_eq!(
            uniques,
            [
                "agent_event_key_archive false",
                "agent_event_keys false",
                "chat_message_key_archive false",
                "chat_message_keys false"
            ]
        );
        for keys in ["agent_event_keys", "chat_message_keys"] {
            assert_eq!(
                text(
                    &db,
                    &format!(
                        "SELECT (config ->> 'drop_after')::interval::text || ' ' || schedule_interval::text
                                || ' ' || (config ->> 'archive') || ' ' || (config ->> 'archive_after')::interval::text
                         FROM timescaledb_information.jobs
                         WHERE proc_name = 'agent_telemetry_prune_keys' AND config ->> 'keys' = '{keys}'"
                    )
                )
                .await,
                format!(
                    "49:00:00 01:00:00 {} 2161:00:00", // 90 days and the hour
                    keys.replace("_keys", "_key_archive")
                )
            );
        }
        assert_eq!(recorded, ["columnstore"]);
    } else {
        assert_eq!(layout.layout, Layout::Rowstore, "{layout}");
        assert!(layout.reason.contains("has no direct compress"), "{layout}");
        assert_eq!(uniques, ["agent_events true", "chat_messages true"]);
        assert_eq!(recorded, ["rowstore"]);
    }
    assert_eq!(
        strings(
            &db,
            "SELECT view_name::text || ' ' || materialized_only::text FROM timescaledb_information.continuous_aggregates ORDER BY 1"
        )
        .await,
        [
            "agent_events_daily false",
            "agent_events_hourly false",
            "agent_events_hourly_by_agent false",
            "chat_activity_hourly false",
            "developer_daily false",
            "developer_models_daily false",
            "developer_requests_hourly false",
            "developer_tools_daily false",
            "file_activity_daily false",
            "llm_usage_daily false",
            "productivity_daily false",
            "session_daily false",
            "tool_usage_daily false"
        ],
        "all thirteen aggregates, real-time"
    );
    assert_eq!(
        strings(
            &db,
            "SELECT hypertable::text || ' ' || segmentby || ' / ' || orderby
             FROM timescaledb_information.hypertable_compression_settings
             WHERE hypertable::text IN ('agent_events', 'chat_messages') ORDER BY 1"
        )
        .await,
        [
            // By project alone for direct compress's per-flush batches.
            if tsdb.native {
                "agent_events project_id / \"timestamp\" DESC,id"
            } else {
                "agent_events project_id,agent_id,event_type / \"timestamp\" DESC,id"
            },
            "chat_messages project_id,agent_type / \"timestamp\" DESC,id"
        ]
    );
    for table in ["agent_events", "chat_messages"] {
        assert_eq!(
            job_setting(&db, "policy_compression", table, "compress_after").await,
            "7 days"
        );
    }
    assert_eq!(
        job_setting(&db, "policy_retention", "agent_events", "drop_after").await,
        "365 days"
    );
    assert_eq!(
        job_setting(&db, "policy_retention", "chat_messages", "drop_after").await,
        "180 days"
    );
    for view in [
        "agent_events_hourly",
        "agent_events_daily",
        "llm_usage_daily",
        "chat_activity_hourly",
        "developer_daily",
    ] {
        assert_eq!(
            job_setting(&db, "policy_retention", view, "drop_after").await,
            "1825 days",
            "{view}"
        );
    }
    assert_eq!(
        job_setting(
            &db,
            "policy_refresh_continuous_aggregate",
            "agent_events_hourly",
            "start_offset"
        )
        .await,
        "3 days"
    );
    assert_eq!(
        text(
            &db,
            "SELECT schedule_interval::text FROM agent_telemetry_job('policy_refresh_continuous_aggregate', 'agent_events_daily')"
        )
        .await,
        "01:00:00"
    );
}

async fn a_changed_setting_alters_only_its_policy(tsdb: TsDb) {
    migrate(&tsdb.conn, &storage()).await;
    let db = common::db(&tsdb.conn).await;
    let jobs =
        "SELECT job_id::text FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY 1";
    let before = strings(&db, jobs).await;
    // PGlite serves one client at a time: migrate only while no other is open.
    drop(db);

    let mut changed = storage();
    changed.events_retention = Duration::from_secs(400 * 86_400);
    changed.hourly_refresh_every = Duration::from_secs(5 * 60);
    changed.chunk_interval = Duration::from_secs(12 * 3_600);
    let report = migrate(&tsdb.conn, &changed).await;
    let db = common::db(&tsdb.conn).await;
    let mut what: Vec<String> = report
        .policies_changed()
        .map(|p| format!("{} {} {}", p.policy, p.relation, p.action))
        .collect();
    what.sort();
    assert_eq!(
        what,
        [
            "chunk_interval agent_events changed",
            "chunk_interval chat_messages changed",
            "refresh agent_events_hourly changed",
            "refresh agent_events_hourly_by_agent changed",
            "refresh chat_activity_hourly changed",
            "refresh developer_requests_hourly changed",
            "retention agent_events changed",
        ]
    );
    assert_eq!(
        job_setting(&db, "policy_retention", "agent_events", "drop_after").await,
        "400 days"
    );
    assert_eq!(
        text(
            &db,
            "SELECT schedule_interval::text FROM agent_telemetry_job('policy_refresh_continuous_aggregate', 'agent_events_hourly')"
        )
        .await,
        "00:05:00"
    );
    assert_eq!(
        strings(
            &db,
            "SELECT time_interval::text FROM timescaledb_information.dimensions
             WHERE hypertable_name IN ('agent_events', 'chat_messages') ORDER BY 1"
        )
        .await,
        ["12:00:00", "12:00:00"]
    );
    let after = strings(&db, jobs).await;
    let kept = before.iter().filter(|j| after.contains(j)).count();
    assert_eq!(
        kept,
        before.len() - 5,
        "only the five changed jobs were replaced"
    );
    drop(db);

    let again = migrate(&tsdb.conn, &changed).await;
    let db = common::db(&tsdb.conn).await;
    assert_eq!(again.policies_changed().count(), 0);
    assert_eq!(
        strings(&db, jobs).await,
        after,
        "unchanged settings, same jobs"
    );
    drop(db);

    // The commands that migrate without the operator's settings (keys,
    // readers) leave the policies alone: with the defaults they reset the
    // 400-day retention to 365, dropping a month the operator kept.
    for args in [
        &["keys", "create", "--project", "acme/api"][..],
        &["readers", "list"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-telemetry"))
            .args(args)
            .env("DATABASE_URL", &tsdb.conn)
            .output()
            .expect("run agent-telemetry");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        job_setting(&db, "policy_retention", "agent_events", "drop_after").await,
        "400 days"
    );
    assert_eq!(
        strings(&db, jobs).await,
        after,
        "keys and readers changed no job"
    );
}

/// Loads realistic events and messages through the service.
async fn load(cfg: ServeConfig, events: u64, messages: u64) -> common::TestService {
    let svc = common::start_service(cfg).await;
    let summary = loadgen::run(&LoadgenConfig {
        client: agent_telemetry::config::ClientConfig::at(svc.endpoint.clone()),
        events,
        messages,
        streams: 2,
        batch_size: 500,
        rate: 0.0,
        window: 4,
        seed: 7,
        projects: 4,
        gzip: false,
        spread: None,
        quiet: true,
    })
    .await
    .expect("loadgen");
    assert_eq!(summary.rows_stored, events + messages, "{summary}");
    svc
}

async fn aggregates_equal_direct_aggregates_over_raw_rows(tsdb: TsDb) {
    let svc = load(tsdb.serve_config(), 6_000, 1_500).await;
    svc.running.shutdown().await.unwrap();
    let db = common::db(&tsdb.conn).await;
    // Real-time first: nothing materialised yet, the views read raw rows.
    assert_aggregates_exact(&db).await;
    // Then the materialised figures alone.
    materialise_all(&db).await;
    set_materialized_only(&db, true).await;
    assert_aggregates_exact(&db).await;
    let llm = common::count(&db, "SELECT sum(requests)::bigint FROM llm_usage_daily").await;
    assert!(llm > 0, "LLM calls aggregated");
}

fn events_at(age_s: i64, n: usize) -> Vec<pb::AgentEvent> {
    (0..n)
        .map(|i| {
            let mut e = common::event("acme/late", age_s + i as i64 * 60);
            e.input_tokens = Some(1_000 + i as i64);
            e.output_tokens = Some(100);
            e.cost_usd = Some(0.0125);
            e.duration_ms = Some(250 + i as i64);
            e
        })
        .collect()
}

async fn late_events_show_up_in_hourly_and_daily_aggregates(tsdb: TsDb) {
    let mut cfg = tsdb.serve_config();
    // The hourly policy's window is shorter than the events' age: only the
    // service's late-data refresh can bring them into the hourly aggregate,
    // which the daily one reads.
    cfg.storage.hourly_refresh_window = Duration::from_secs(2 * 86_400);
    cfg.storage.late_refresh_every = Duration::from_millis(200);
    // A late hour waits 2 s without new late rows before its refresh.
    cfg.storage.late_settle = Duration::from_secs(2);
    migrate(&tsdb.conn, &cfg.storage).await;
    {
        // A current row, everything materialised, real-time off: from here
        // on the views show only what a refresh has put in them.
        let db = common::db(&tsdb.conn).await;
        insert_raw(&db, "30 minutes", 1).await;
        materialise_all(&db).await;
        set_materialized_only(&db, true).await;
    }

    let svc = common::start_service(cfg).await;
    let mut client = common::client(&svc.endpoint).await;
    let three_days = 3 * 86_400;
    let mut events = events_at(three_days, 90);
    let second = events.split_off(45);
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored, 45, "{ack:?}");

    let old = "bucket < now() - INTERVAL '2 days'";
    let figures = format!(
        "SELECT (SELECT coalesce(sum(event_count), 0) FROM agent_events_hourly WHERE {old})::text
             || ' ' || (SELECT coalesce(sum(event_count), 0) FROM agent_events_daily WHERE {old})::text
             || ' ' || (SELECT coalesce(sum(input_tokens), 0) FROM agent_events_hourly WHERE {old})::text
             || ' ' || (SELECT coalesce(sum(cost_usd), 0) FROM agent_events_daily WHERE {old})::text"
    );
    let want = format!(
        "90 90 {} 1.125000000",
        (0..90).map(|i| 1_000 + i).sum::<i64>()
    );
    if tsdb.native {
        // Rounds run every 200 ms, but the hours have not settled: the
        // backfill is not done with them, and they are not refreshed yet
        // (a refresh per round would have brought them in already).
        let db = common::db(&tsdb.conn).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(text(&db, &figures).await, "0 0 0 0");
        let ack = common::ingest(&mut client, 2, second).await;
        assert_eq!(ack.stored, 45, "{ack:?}");
        drop(client);
        // Then each hour once it has settled.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = text(&db, &figures).await;
            if got == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "late events not in the aggregates after 60 s: {got} (want {want})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        svc.running.shutdown().await.unwrap();
    } else {
        let ack = common::ingest(&mut client, 2, second).await;
        assert_eq!(ack.stored, 45, "{ack:?}");
        drop(client);
        // PGlite takes one client, held by the service's pool: look after
        // shutdown, once the hours have settled (the last round refreshes
        // what has; the others would wait for the next instance).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        svc.running.shutdown().await.unwrap();
        let db = common::db(&tsdb.conn).await;
        assert_eq!(text(&db, &figures).await, want);
    }
}

/// Today's events in a daily view, and in the raw rows of the same day
/// (rows inserted "now" run a few minutes ahead, into tomorrow when the test
/// runs just before midnight: they count on neither side).
async fn today(db: &Client, view: &str, figure: &str) -> (i64, i64) {
    let raw = match view {
        "llm_usage_daily" => "count(*) FILTER (WHERE model IS NOT NULL)",
        _ => "count(*)",
    };
    let sql = format!(
        "SELECT (SELECT coalesce(sum({figure}), 0)::bigint FROM {view}
                 WHERE bucket = time_bucket(INTERVAL '1 day', now())),
                (SELECT {raw} FROM agent_events
                 WHERE time_bucket(INTERVAL '1 day', \"timestamp\") = time_bucket(INTERVAL '1 day', now()))"
    );
    let row = db.query_one(&sql, &[]).await.expect(&sql);
    (row.get(0), row.get(1))
}

async fn todays_figures_stay_exact_after_a_same_day_late_refresh(tsdb: TsDb) {
    let mut cfg = tsdb.serve_config();
    cfg.storage.late_refresh_every = Duration::from_millis(200);
    cfg.storage.late_settle = Duration::ZERO;
    migrate(&tsdb.conn, &cfg.storage).await;
    {
        // Late rows noted in the current hour and the two before it (today,
        // unless the day has just begun), as intake notes them: the round
        // at the latest at shutdown refreshes them.
        let db = common::db(&tsdb.conn).await;
        db.batch_execute(
            "INSERT INTO late_hours (table_name, hour)
             SELECT t, date_trunc('hour', now()) - h * INTERVAL '1 hour'
             FROM unnest(ARRAY['agent_events', 'chat_messages']) t, generate_series(0, 2) h",
        )
        .await
        .expect("note late hours");
    }
    let svc = load(cfg, 3_000, 600).await;
    svc.running.shutdown().await.unwrap();
    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM late_hours").await,
        0,
        "the noted hours were refreshed"
    );
    // Rows that arrive after that refresh, from today: real time must see them.
    insert_raw(&db, "0 seconds", 1_000).await;
    for (view, figure) in [
        ("agent_events_daily", "event_count"),
        ("llm_usage_daily", "requests"),
    ] {
        let (agg, raw) = today(&db, view, figure).await;
        common::say(&format!(
            "{view}: today {agg} in the aggregate, {raw} raw (native: {})",
            tsdb.native
        ));
        assert!(raw > 0, "{view}: no rows today to compare");
        assert_eq!(agg, raw, "{view} today");
    }
    assert_aggregates_exact(&db).await;
}

async fn every_accepted_value_fits_the_indexes_and_every_refresh(tsdb: TsDb) {
    use rand::SeedableRng;
    const K: usize = agent_telemetry::validate::MAX_KEY_BYTES;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(15);
    let svc = common::start_service(tsdb.serve_config()).await;
    let mut client = common::client(&svc.endpoint).await;

    // At the limit: every key field of one event at once (the composite
    // index and the compressed segments hold two or three of them).
    let project = format!("acme/{}", noise(&mut rng, K - 5));
    let mut at_limit = common::event(&project, 120);
    at_limit.agent_id = noise(&mut rng, K);
    at_limit.event_type = "tool_use".into();
    at_limit.model = Some(noise(&mut rng, K));
    at_limit.tags = vec![noise(&mut rng, K)];
    let mut long_type = common::event("acme/limits", 120);
    long_type.agent_id = noise(&mut rng, K);
    long_type.event_type = noise(&mut rng, K);
    // Keys inside data, where validation sets no limit: the aggregates group
    // them by a bounded form. Two long tool names that share their first
    // 240 characters must stay apart.
    let shared = noise(&mut rng, 3_000);
    let tool = |name: &str| {
        let mut e = common::event("acme/limits", 120);
        e.data_json = serde_json::json!({ "tool_name": name }).to_string();
        e
    };
    let tool_a = tool(&format!("{shared}a"));
    let tool_b = tool(&format!("{shared}b"));
    let tool_at_limit = tool(&noise(&mut rng, K));
    let mut file = common::event("acme/limits", 120);
    file.event_type = "file_write".into();
    file.data_json =
        serde_json::json!({ "path": noise(&mut rng, 100_000), "lines_added": 3 }).to_string();
    // Line counts that are no count: "1.5", "many", 1e30 and 20 digits are
    // valid JSON but no bigint; a cast of them failed every refresh of
    // file_activity_daily. Not counted now, by it and developer_daily.
    let lines = |v: serde_json::Value| {
        let mut e = common::event("acme/limits", 120);
        e.event_type = "file_modify".into();
        e.data_json =
            serde_json::json!({ "path": "src/lib.rs", "lines_added": v, "lines_removed": 2 })
                .to_string();
        e
    };
    let counts = [
        lines("1.5".into()),
        lines("many".into()),
        lines(serde_json::json!(1e30)),
        lines(serde_json::from_str("99999999999999999999").unwrap()),
        lines(serde_json::json!(7)),
    ];
    // Productivity keys that are no count or no flag: a commit event
    // counts one unless it says how many; an accepted flag that is not
    // true or false counts neither way.
    let work = |event_type: &str, data: serde_json::Value| {
        let mut e = common::event("acme/limits", 120);
        e.event_type = event_type.into();
        e.data_json = data.to_string();
        e
    };
    let productivity = [
        work("git_commit", serde_json::json!({ "commits": "many" })),
        work("git_commit", serde_json::json!({ "commits": 3 })),
        work("git_commit", serde_json::json!({})),
        work("pull_request", serde_json::json!({ "pull_requests": 1e30 })),
        work("tool_decision", serde_json::json!({ "accepted": "yes" })),
        work("tool_decision", serde_json::json!({ "accepted": true })),
        work(
            "tool_decision",
            serde_json::json!({ "accepted": false, "tool_name": noise(&mut rng, 100_000) }),
        ),
    ];
    let limits_probe = file.id.clone();
    let mut accepted = vec![at_limit, long_type, tool_a, tool_b, tool_at_limit, file];
    accepted.extend(counts);
    accepted.extend(productivity);

    // One byte over, field by field: each rejected, naming its field.
    let mut over = Vec::new();
    let mut e = common::event("acme/limits", 120);
    e.agent_id = noise(&mut rng, K + 1);
    over.push(("agent_id", e));
    let mut e = common::event("acme/limits", 120);
    e.event_type = noise(&mut rng, K + 1);
    over.push(("event_type", e));
    let mut e = common::event("acme/limits", 120);
    e.project = format!("acme/{}", noise(&mut rng, K - 4));
    over.push(("project", e));
    let mut e = common::event("acme/limits", 120);
    e.model = Some(noise(&mut rng, K + 1));
    over.push(("model", e));
    let mut e = common::event("acme/limits", 120);
    e.tags = vec!["ok".into(), noise(&mut rng, K + 1)];
    over.push(("tags[1]", e));

    let mut events = accepted.clone();
    events.extend(over.iter().map(|(_, e)| e.clone()));
    let ack = common::ingest(&mut client, 1, events).await;
    assert_eq!(ack.stored as usize, accepted.len(), "{:?}", ack.rejected);
    let fields: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    let want: Vec<(u32, &str)> = over
        .iter()
        .enumerate()
        .map(|(i, (f, _))| ((accepted.len() + i) as u32, *f))
        .collect();
    assert_eq!(fields, want, "{:?}", ack.rejected);
    for r in &ack.rejected {
        assert!(
            r.reason
                .contains(&format!("more than the limit of {K} for a key field")),
            "{r:?}"
        );
    }

    // Chat: a session and a message with every key field at the limit.
    let mut generator = agent_telemetry::loadgen::r#gen::Generator::new(15, 1);
    let mut session = generator.chat_session();
    session.agent_type = noise(&mut rng, K);
    let ws = session.workspace.as_mut().unwrap();
    ws.workspace_id = noise(&mut rng, K);
    ws.project.as_mut().unwrap().name = format!("acme/{}", noise(&mut rng, K - 5));
    let m = ws.machine.as_mut().unwrap();
    m.machine_id = noise(&mut rng, K);
    m.hostname = noise(&mut rng, K);
    m.machine_type = noise(&mut rng, K);
    let (mut message, _) = generator.message();
    message.session_id = session.session_id.clone();
    message.role = noise(&mut rng, K);
    let mut over_role = message.clone();
    over_role.id = uuid::Uuid::new_v4().to_string();
    over_role.role = noise(&mut rng, K + 1);
    let ack = client
        .ingest_chat_messages(pb::ChatMessageBatch {
            sequence: 2,
            sessions: vec![session],
            messages: vec![message.clone(), over_role],
        })
        .await
        .expect("chat batch")
        .into_inner();
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(
        ack.rejected
            .iter()
            .map(|r| r.field.as_str())
            .collect::<Vec<_>>(),
        ["role"],
        "{ack:?}"
    );
    svc.running.shutdown().await.unwrap();

    let db = common::db(&tsdb.conn).await;
    // Stored verbatim.
    for e in &accepted {
        let id: uuid::Uuid = e.id.parse().unwrap();
        let row = db
            .query_one(
                "SELECT agent_id, event_type, model, tags, data::text FROM agent_events WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), e.agent_id);
        assert_eq!(row.get::<_, String>(1), e.event_type);
        assert_eq!(row.get::<_, Option<String>>(2), e.model);
        assert_eq!(row.get::<_, Vec<String>>(3), e.tags);
        let data: serde_json::Value = serde_json::from_str(&row.get::<_, String>(4)).unwrap();
        assert_eq!(
            data,
            serde_json::from_str::<serde_json::Value>(&e.data_json).unwrap()
        );
    }
    // Compression: the segment-by columns hold the keys at their limit.
    db.batch_execute(
        "SELECT compress_chunk(c) FROM show_chunks('agent_events') c;
         SELECT compress_chunk(c) FROM show_chunks('chat_messages') c",
    )
    .await
    .expect("compress every chunk");
    // Every aggregate refreshes, and equals the raw rows, in real time and
    // materialised only.
    assert_aggregates_exact(&db).await;
    materialise_all(&db).await;
    set_materialized_only(&db, true).await;
    assert_aggregates_exact(&db).await;
    let tools = strings(
        &db,
        "SELECT octet_length(tool_name)::text FROM tool_usage_daily ORDER BY 1",
    )
    .await;
    // read_file (the event at the limit, its own agent), the key at the
    // limit as it is, and the two long names apart, bounded.
    assert_eq!(tools, ["1024", "285", "285", "9"], "{tools:?}");
    let longest = common::count(
        &db,
        "SELECT max(octet_length(file_path))::bigint FROM file_activity_daily",
    )
    .await;
    assert!(longest <= K as i64, "bounded file path: {longest} bytes");
    // Of the five line counts, only the 7 is one.
    assert_eq!(
        strings(
            &db,
            "SELECT lines_added::text || ' ' || lines_removed::text || ' ' || writes::text
             FROM file_activity_daily WHERE file_path = 'src/lib.rs'"
        )
        .await,
        ["7 10 5"]
    );
    // lines: 3 (the long path) + 7; commits: 1 + 3 + 1; one pull request;
    // "yes" is no decision.
    assert_eq!(
        strings(
            &db,
            &format!(
                "SELECT sum(lines_added) || ' ' || sum(lines_removed) || ' ' || sum(tools_accepted)
                        || ' ' || sum(tools_rejected) || ' ' || sum(commits) || ' ' || sum(pull_requests)
                 FROM productivity_daily
                 WHERE project_id = (SELECT project_id FROM agent_events WHERE id = '{limits_probe}')"
            )
        )
        .await,
        ["10 10 1 1 5 1"],
        "lines+ lines- accepted rejected commits pull-requests"
    );
}

async fn copy_into_a_compressed_chunk_stores_late_rows_and_counts_resends(tsdb: TsDb) {
    let svc = common::start_service(tsdb.serve_config()).await;
    let mut client = common::client(&svc.endpoint).await;
    let ten_days = 10 * 86_400;
    let first = events_at(ten_days, 200);
    let ack = common::ingest(&mut client, 1, first.clone()).await;
    assert_eq!(ack.stored, 200);
    // Stopped while we compress: PGlite serves one client at a time.
    drop(client);
    svc.running.shutdown().await.unwrap();
    {
        let db = common::db(&tsdb.conn).await;
        // Native TimescaleDB's scheduler may be compressing the same chunk
        // (the compression policy starts at once): a deadlock between the
        // two is settled by aborting one, and this one is tried again.
        let mut tries = 0;
        let compressed: i64 = loop {
            match db
                .query_one(
                    "SELECT count(compress_chunk(c, if_not_compressed => true))
                     FROM show_chunks('agent_events', older_than => now() - INTERVAL '8 days') c",
                    &[],
                )
                .await
            {
                Ok(row) => break row.get(0),
                Err(e)
                    if e.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                        && tries < 5 =>
                {
                    tries += 1
                }
                Err(e) => panic!("compress: {}", agent_telemetry::db::error::describe(&e)),
            }
        };
        assert!(compressed >= 1, "a chunk was compressed");
    }
    let svc = common::start_service(tsdb.serve_config()).await;
    let mut client = common::client(&svc.endpoint).await;
    // Late rows into the compressed chunk's range, then a resend of the first batch.
    let ack = common::ingest(&mut client, 2, events_at(ten_days + 30, 150)).await;
    assert_eq!((ack.stored, ack.duplicates), (150, 0), "{ack:?}");
    let ack = common::ingest(&mut client, 3, first).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 200), "{ack:?}");
    drop(client);
    svc.running.shutdown().await.unwrap();

    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        350
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM timescaledb_information.chunks
             WHERE hypertable_name = 'agent_events' AND is_compressed"
        )
        .await,
        common::count(
            &db,
            "SELECT count(*) FROM show_chunks('agent_events', older_than => now() - INTERVAL '8 days')"
        )
        .await,
        "the old chunks are still compressed"
    );
}

/// Inserts `n` bare events `age` ago (bypassing ingest's time window).
async fn insert_raw(db: &Client, age: &str, n: i32) {
    db.execute(
        &format!(
            "INSERT INTO agent_events (id, \"timestamp\", event_type, agent_id, agent_version, session_id, project_id)
             SELECT gen_random_uuid(), now() - INTERVAL '{age}' + g * INTERVAL '1 second',
                    'tool_use', 'claude-code', '2.0', gen_random_uuid(), 1
             FROM generate_series(1, $1) g"
        ),
        &[&n],
    )
    .await
    .expect("insert raw rows");
}

/// Runs agent_events' policy job `proc` now, as its schedule would.
async fn run_policy_job(db: &Client, proc: &str) {
    let job: i32 = db
        .query_one(
            &format!("SELECT job_id FROM agent_telemetry_job('{proc}', 'agent_events')"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("find the {proc} job: {e}"))
        .get(0);
    // The scheduler may start the same job by itself (native TimescaleDB
    // runs background workers); take it off the schedule, and if a run of
    // ours collided with one already under way, run it again.
    let _ = db
        .batch_execute(&format!("SELECT alter_job({job}, scheduled => false)"))
        .await;
    for attempt in 1..=3 {
        match db.batch_execute(&format!("CALL run_job({job})")).await {
            Ok(()) => return,
            Err(e) if attempt < 3 => {
                common::say(&format!(
                    "run the {proc} job, attempt {attempt}: {e}; again"
                ));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => panic!("run the {proc} job: {e}"),
        }
    }
}

async fn compression_and_retention_jobs_act_on_the_right_chunks(tsdb: TsDb) {
    migrate(&tsdb.conn, &storage()).await;
    let db = common::db(&tsdb.conn).await;
    // Native TimescaleDB's scheduler starts new policy jobs by itself: its
    // retention job could drop the 400-day-old chunk before the compression
    // run below counts it (seen: 1 compressed chunk instead of 2). The test
    // runs the jobs itself, so none runs on schedule.
    db.batch_execute(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
         WHERE hypertable_name = 'agent_events'",
    )
    .await
    .expect("take the jobs off the schedule");
    insert_raw(&db, "400 days", 100).await;
    insert_raw(&db, "10 days", 100).await;
    insert_raw(&db, "2 hours", 100).await;
    let compressed = "SELECT count(*) FROM timescaledb_information.chunks
                      WHERE hypertable_name = 'agent_events' AND is_compressed";
    assert_eq!(common::count(&db, compressed).await, 0);

    run_policy_job(&db, "policy_compression").await;
    assert_eq!(
        common::count(&db, compressed).await,
        2,
        "the 400- and 10-day-old chunks are compressed, today's is not"
    );

    run_policy_job(&db, "policy_retention").await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        200,
        "only the rows past 365 days were dropped"
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE \"timestamp\" < now() - INTERVAL '365 days'"
        )
        .await,
        0
    );
}

// ---- Plain PostgreSQL (no TimescaleDB) ----

fn plain_storage() -> StorageConfig {
    let mut s = storage();
    s.timescaledb = TimescaleMode::Off;
    s
}

#[tokio::test]
async fn plain_postgres_gets_the_same_relations_as_views() {
    let pg = common::TestCluster::start();
    let conn = pg.database("plain").await;
    let report = migrate(&conn, &plain_storage()).await;
    assert_eq!(
        report.mode,
        Mode::Plain {
            why: "--timescaledb off".into()
        }
    );
    assert_eq!(
        report.applied,
        [
            "0001_core.sql",
            "0002_indexes.sql",
            "plain/0004_aggregates.sql",
            "0005_api_keys.sql",
            "0006_reader_role.sql",
            "0007_late_hours.sql",
            "plain/0008_activity_aggregates.sql",
            "0009_group_key.sql",
            "plain/0010_bounded_activity_keys.sql",
            "0011_project_identity.sql",
            "0012_users.sql",
            "0013_organizations.sql",
            "0014_safe_figures.sql",
            "plain/0015_developer_daily.sql",
            "0016_team_daily_and_session_results.sql",
            "plain/0017_developer_models_and_tools.sql",
            "0018_organization_keys.sql",
            "0019_organization_readers.sql",
            "0020_key_users.sql",
            "0021_settings.sql",
            "plain/0022_productivity_daily.sql",
            "0023_usage_blocks.sql",
            "0024_late_hours_first_noted.sql",
            "plain/0025_session_daily.sql",
            "plain/0026_developer_requests_hourly.sql",
            "0027_usage_blocks_from_hours.sql",
            "0028_readers_without_jit.sql",
            "plain/0029_agent_events_hourly_by_agent.sql",
            "0030_agent_session_results_since.sql"
        ]
    );
    assert!(migrate(&conn, &plain_storage()).await.applied.is_empty());
    let db = common::db(&conn).await;
    assert_eq!(
        strings(
            &db,
            "SELECT table_name::text FROM information_schema.views WHERE table_schema = 'public' ORDER BY 1"
        )
        .await,
        [
            "agent_events_daily",
            "agent_events_hourly",
            "agent_events_hourly_by_agent",
            "agent_session_results",
            "chat_activity_hourly",
            "developer_daily",
            "developer_models_daily",
            "developer_requests_hourly",
            "developer_tools_daily",
            "file_activity_daily",
            "llm_usage_daily",
            "productivity_daily",
            "session_daily",
            "team_daily",
            "tool_usage_daily"
        ]
    );
    drop(db);
    let mut cfg = common::serve_config(&conn);
    cfg.storage = plain_storage();
    let svc = load(cfg, 3_000, 600).await;
    svc.running.shutdown().await.unwrap();
    assert_aggregates_exact(&common::db(&conn).await).await;
}

#[tokio::test]
async fn plain_postgres_retention_is_applied_by_the_service() {
    let pg = common::TestCluster::start();
    let conn = pg.database("plain_retention").await;
    migrate(&conn, &plain_storage()).await;
    let db = common::db(&conn).await;
    insert_raw(&db, "400 days", 30_000).await;
    insert_raw(&db, "300 days", 100).await;
    let mut cfg = common::serve_config(&conn);
    cfg.storage = plain_storage();
    cfg.storage.retention_every = Duration::from_millis(200);
    let svc = common::start_service(cfg).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while common::count(&db, "SELECT count(*) FROM agent_events").await != 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired rows not deleted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM agent_events WHERE \"timestamp\" > now() - INTERVAL '365 days'"
        )
        .await,
        100,
        "rows inside the window are kept"
    );
    svc.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn settings_that_would_lose_data_are_refused() {
    let mut s = storage();
    s.events_retention = Duration::from_secs(30 * 86_400);
    let err = run_migrations("host=/nonexistent dbname=x", &s, Limits::default().max_past)
        .await
        .expect_err("refused before connecting");
    assert!(
        err.to_string()
            .contains("raw retention must exceed --max-past"),
        "{err}"
    );
    let mut s = storage();
    s.key_window = Duration::from_secs(3_599);
    let err = run_migrations("host=/nonexistent dbname=x", &s, Limits::default().max_past)
        .await
        .expect_err("refused before connecting");
    assert!(
        err.to_string().contains("--key-window must be at least 1h"),
        "{err}"
    );
}

// ---- Native TimescaleDB only: what PGlite (no background workers) cannot show ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_policy_fires_on_its_schedule_native() {
    let Some(tsdb) = TsDb::native("refresh_policy_fires_on_its_schedule_native").await else {
        return;
    };
    let mut s = storage();
    s.hourly_refresh_every = Duration::from_secs(1);
    migrate(&tsdb.conn, &s).await;
    let db = common::db(&tsdb.conn).await;
    db.batch_execute(
        "ALTER MATERIALIZED VIEW agent_events_hourly SET (timescaledb.materialized_only = true)",
    )
    .await
    .unwrap();
    insert_raw(&db, "5 hours", 40).await;
    // Nothing refreshes this aggregate but its policy's job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sql = "SELECT coalesce(sum(event_count), 0)::bigint FROM agent_events_hourly";
    while common::count(&db, sql).await != 40 {
        if let Some(err) = scheduler_broken(&db).await {
            common::say(&format!(
                "SKIPPED: refresh_policy_fires_on_its_schedule_native: this native TimescaleDB's scheduler fails every job it starts ({err}); docs/schema.md, \"Testing on TimescaleDB\""
            ));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh policy did not run within 60 s: {:?}",
            strings(
                &db,
                "SELECT coalesce(last_run_status, 'never') || ' ' || total_failures::text
                 FROM timescaledb_information.job_stats WHERE job_id >= 1000"
            )
            .await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The error of a job the native scheduler started, when it is the one
/// every scheduled job fails with on this build (SQLSTATE 24000, "cannot
/// drop portal"), whatever the job: the scheduler cannot run anything.
async fn scheduler_broken(db: &Client) -> Option<String> {
    db.query_opt(
        "SELECT format('job %s %s: %s', job_id, proc_name, err_message)
         FROM timescaledb_information.job_errors
         WHERE sqlerrcode = '24000' AND err_message LIKE 'cannot drop portal%'
         ORDER BY start_time LIMIT 1",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

/// Rows of `table` in the row-store part of its chunks (the heap): none
/// when direct compress took every COPY.
async fn heap_rows(db: &Client, table: &str) -> i64 {
    common::count(
        db,
        &format!(
            "SELECT coalesce(sum((xpath('/row/c/text()',
                        query_to_xml(format('SELECT count(*) AS c FROM ONLY %s', ch), false, true, '')))[1]::text::bigint), 0)::bigint
             FROM show_chunks('{table}') ch"
        ),
    )
    .await
}

/// Runs the key tables' retention job for agent_event_keys now.
async fn prune_keys(db: &Client) {
    let prune = common::count(
        db,
        "SELECT job_id::bigint FROM timescaledb_information.jobs
         WHERE proc_name = 'agent_telemetry_prune_keys' AND config ->> 'keys' = 'agent_event_keys'",
    )
    .await;
    db.batch_execute(&format!("CALL run_job({prune})"))
        .await
        .unwrap();
}

/// Past `--key-window` a row's key is in the key archive, where the
/// retention job moves aged keys and late rows' keys go directly; a resend
/// is found there by a look-up before its COPY. Rows 3 to 8 hours old with
/// a 1-hour window: their keys moved by the retention job, a new process
/// (no memory of them) is sent them again, alone, mixed with new rows,
/// with ids reused 30 s away, and twice at once; every id is stored once
/// and the aggregates equal the raw rows.
async fn past_the_key_window_resends_are_found_in_the_key_archive(tsdb: TsDb) {
    let mut cfg = tsdb.serve_config();
    cfg.storage.storage_layout = agent_telemetry::config::StorageLayout::Columnstore;
    cfg.storage.key_window = Duration::from_secs(3_600);
    let old = events_at(3 * 3_600, 300);
    let recent = events_at(60, 20);
    let first: Vec<_> = old.iter().chain(&recent).cloned().collect();
    let svc = common::start_service(cfg.clone()).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, first.clone()).await;
    assert_eq!(ack.stored, 320, "{ack:?}");
    drop(client);
    // PGlite has one connection: the service lets go of it first.
    svc.running.shutdown().await.unwrap();
    let db = common::db(&tsdb.conn).await;
    // (Native TimescaleDB's scheduler may have run the job already: it
    // starts a new job at once.)
    prune_keys(&db).await;
    // Older than the window and its hour of margin: only the recent keys
    // are left, the rest moved to the archive, where only the look-up
    // before the COPY can find them.
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_event_keys").await,
        20
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_event_key_archive").await,
        300
    );
    drop(db);

    let svc = common::start_service(cfg.clone()).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 2, first.clone()).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 320), "{ack:?}");
    // Half resent, half new rows past the window.
    let fresh_old = events_at(4 * 3_600 + 30, 100);
    let mut mixed = old[150..].to_vec();
    mixed.extend(fresh_old.iter().cloned());
    let ack = common::ingest(&mut client, 3, mixed).await;
    assert_eq!((ack.stored, ack.duplicates), (100, 150), "{ack:?}");
    // Ids of stored rows with their times moved by 30 s: conflicts.
    let mut reused = old[..3].to_vec();
    for e in &mut reused {
        e.timestamp.as_mut().unwrap().seconds += 30;
    }
    let ack = common::ingest(&mut client, 4, reused).await;
    assert_eq!((ack.stored, ack.conflicts), (0, 3), "{ack:?}");
    assert!(
        ack.rejected
            .iter()
            .all(|r| r.code == "ALREADY_EXISTS" && r.reason.contains("is stored with timestamp")),
        "{ack:?}"
    );
    // One row past the window sends the flush down the look-first path;
    // with it, a recent row's id moved by 30 s, twice: its key is found
    // only when the COPY meets it, and the repeat follows the first's fate
    // (a conflict), not a duplicate of a row never stored.
    let mut moved = recent[0].clone();
    moved.timestamp.as_mut().unwrap().seconds += 30;
    let mut batch = events_at(4 * 3_600 + 50, 1);
    batch.extend([moved.clone(), moved]);
    let ack = common::ingest(&mut client, 8, batch).await;
    assert_eq!(
        (ack.stored, ack.duplicates, ack.conflicts),
        (1, 0, 2),
        "{ack:?}"
    );
    // New rows past the window, sent on two streams at once: the key
    // table's unique index settles the race, past the window too.
    let twice = events_at(5 * 3_600 + 45, 200);
    let mut other = common::client(&svc.endpoint).await;
    let (a, b) = tokio::join!(
        common::ingest(&mut client, 5, twice.clone()),
        common::ingest(&mut other, 1, twice.clone())
    );
    assert_eq!(
        (a.stored + b.stored, a.duplicates + b.duplicates),
        (200, 200),
        "{a:?} {b:?}"
    );
    let mut stored_in_all = 621;
    if tsdb.native {
        // The writer and the retention job share a lock (PGlite serves one
        // connection, so only native can hold it from outside): while the
        // job holds it, a flush with rows past the window waits, one with
        // recent rows does not.
        let db = common::db(&tsdb.conn).await;
        db.execute(
            "SELECT pg_advisory_lock($1)",
            &[&agent_telemetry::db::layout::KEY_PRUNE_LOCK],
        )
        .await
        .unwrap();
        let ack = common::ingest(&mut client, 6, events_at(30, 5)).await;
        assert_eq!(ack.stored, 5, "{ack:?}");
        let waiting = tokio::spawn({
            let mut client = client.clone();
            async move { common::ingest(&mut client, 7, events_at(6 * 3_600, 5)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiting.is_finished(),
            "stored past the window while the job held the lock"
        );
        db.execute(
            "SELECT pg_advisory_unlock($1)",
            &[&agent_telemetry::db::layout::KEY_PRUNE_LOCK],
        )
        .await
        .unwrap();
        let ack = waiting.await.unwrap();
        assert_eq!(ack.stored, 5, "{ack:?}");
        // And the job waits for a flush that holds it.
        db.execute(
            "SELECT pg_advisory_lock_shared($1)",
            &[&agent_telemetry::db::layout::KEY_PRUNE_LOCK],
        )
        .await
        .unwrap();
        let job = common::db(&tsdb.conn).await;
        job.batch_execute("SET lock_timeout = '200ms'")
            .await
            .unwrap();
        let prune = common::count(
            &job,
            "SELECT job_id::bigint FROM timescaledb_information.jobs
             WHERE proc_name = 'agent_telemetry_prune_keys' AND config ->> 'keys' = 'agent_event_keys'",
        )
        .await;
        let err = job
            .batch_execute(&format!("CALL run_job({prune})"))
            .await
            .expect_err("the job waits for the lock");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{}",
            agent_telemetry::db::error::describe(&err)
        );
        stored_in_all += 10;
        the_key_lookup_reads_a_few_pages_per_id(&db).await;
    }
    drop((client, other));
    svc.running.shutdown().await.unwrap();

    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        stored_in_all
    );
    assert_eq!(
        common::count(&db, "SELECT count(DISTINCT id) FROM agent_events").await,
        stored_in_all
    );
    common::aggregates::assert_aggregates_match(&db, |_| "true".into()).await;
}

/// The look-up a flush with rows past the key window makes, as the writer
/// prepares it (a generic plan), over an archive of 200,000 keys: the
/// archive's primary key probed per id, no scan of it nor of the stored
/// rows, and a bounded number of pages read per id (3.4 measured here; a
/// scan of the stored rows, as before the archive, read them all). Keeps the late-row path
/// from growing with the table again (BENCHMARKS.md, "Late rows at scale").
async fn the_key_lookup_reads_a_few_pages_per_id(db: &Client) {
    db.batch_execute(
        "INSERT INTO agent_event_key_archive
             SELECT gen_random_uuid(), now() - interval '30 days' * random() FROM generate_series(1, 200000);
         ANALYZE agent_event_key_archive; ANALYZE agent_event_keys",
    )
    .await
    .unwrap();
    let lookup = agent_telemetry::copy::keys::key_lookup(agent_telemetry::row::Table::AgentEvents);
    db.batch_execute(&format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE lookup(uuid[]) AS {lookup}"
    ))
    .await
    .unwrap();
    // 1,000 ids: 500 stored, 500 new.
    let ids: String = db
        .query_one(
            "SELECT array_agg(id)::text FROM (
                 (SELECT id FROM agent_event_key_archive ORDER BY random() LIMIT 500)
                 UNION ALL SELECT gen_random_uuid() FROM generate_series(1, 500)) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plan = strings(
        db,
        &format!("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE lookup('{ids}')"),
    )
    .await
    .join("\n");
    // (The recent keys, 25 here, may be read whole: that table is bounded
    // by the key window.)
    assert!(
        !plan.contains("Seq Scan on agent_event_key_archive") && !plan.contains("agent_events"),
        "{plan}"
    );
    assert!(
        plan.contains("Index Scan using agent_event_key_archive_pkey")
            || plan.contains("Bitmap Index Scan on agent_event_key_archive_pkey"),
        "{plan}"
    );
    assert!(
        plan.starts_with("Append")
            && plan
                .lines()
                .next()
                .unwrap()
                .contains("actual rows=500 loops=1"),
        "{plan}"
    );
    // The top node's buffers: every page the look-up touched.
    let pages: u64 = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
        .expect("buffers in the plan")
        .split(' ')
        .filter_map(|kv| kv.split_once('=')?.1.parse::<u64>().ok())
        .sum();
    assert!(pages <= 10 * 1_000, "{pages} pages for 1,000 ids: {plan}");
    db.batch_execute("DEALLOCATE lookup; RESET plan_cache_mode")
        .await
        .unwrap();
}

/// The columnstore layout end to end: the service's flushes land in
/// compressed chunks (direct compress took them: no row in any chunk's
/// heap), every key in the key table, a resent batch is counted as
/// duplicates and stored once; switching to the row store re-creates the
/// primary key over the same rows, and back again.
async fn the_columnstore_copies_into_compressed_chunks_and_finds_resends_in_its_keys(tsdb: TsDb) {
    let mut cfg = tsdb.serve_config();
    cfg.storage.storage_layout = agent_telemetry::config::StorageLayout::Columnstore;
    let svc = common::start_service(cfg.clone()).await;
    let mut client = common::client(&svc.endpoint).await;
    let batch = events_at(3_600, 500);
    let ack = common::ingest(&mut client, 1, batch.clone()).await;
    assert_eq!(ack.stored, 500, "{ack:?}");
    let ack = common::ingest(&mut client, 2, batch.clone()).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 500), "{ack:?}");
    // Half old, half new: the new half is stored.
    let mut mixed = batch[250..].to_vec();
    mixed.extend(events_at(1_800, 250));
    let ack = common::ingest(&mut client, 3, mixed).await;
    assert_eq!((ack.stored, ack.duplicates), (250, 250), "{ack:?}");
    // An id reused with another timestamp is a conflict at any distance in
    // the key window (the key table is unique by id; --id-conflict-window
    // is the row store's): 90 s later, two days earlier. Within one batch,
    // a repeat with another time is a conflict, with the same time a
    // duplicate; the first of each is stored.
    let mut reused = batch[..2].to_vec();
    reused[0].timestamp.as_mut().unwrap().seconds += 90;
    reused[1].timestamp.as_mut().unwrap().seconds -= 2 * 86_400;
    let twice = events_at(900, 2);
    let mut later = twice[0].clone();
    later.timestamp.as_mut().unwrap().seconds += 30;
    reused.extend([twice[0].clone(), later, twice[1].clone(), twice[1].clone()]);
    let ack = common::ingest(&mut client, 4, reused).await;
    assert_eq!(
        (ack.stored, ack.duplicates, ack.conflicts),
        (2, 1, 3),
        "{ack:?}"
    );
    let refused: Vec<(u32, &str, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.index, r.field.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            (0, "id", "ALREADY_EXISTS"),
            (1, "id", "ALREADY_EXISTS"),
            (3, "id", "ALREADY_EXISTS")
        ],
        "{ack:?}"
    );
    assert!(
        ack.rejected[0].reason.contains("is stored with timestamp"),
        "{ack:?}"
    );
    drop(client);
    svc.running.shutdown().await.unwrap();

    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_events").await,
        752
    );
    assert_eq!(
        common::count(&db, "SELECT count(DISTINCT id) FROM agent_events").await,
        752
    );
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_event_keys").await,
        752
    );
    // The key tables' retention job deletes keys past the key window and
    // its margin (--key-window 2 days + 1 hour) and no other.
    db.batch_execute(
        "INSERT INTO agent_event_keys VALUES
             ('00000000-0000-4000-8000-000000000001', now() - interval '2 days'),
             ('00000000-0000-4000-8000-000000000002', now() - interval '2 days 2 hours')",
    )
    .await
    .unwrap();
    prune_keys(&db).await;
    assert_eq!(
        strings(
            &db,
            "SELECT id::text FROM agent_event_keys WHERE id::text LIKE '00000000-%'"
        )
        .await,
        ["00000000-0000-4000-8000-000000000001"]
    );
    db.batch_execute(
        "DELETE FROM agent_event_keys WHERE id = '00000000-0000-4000-8000-000000000001'",
    )
    .await
    .unwrap();
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_event_keys").await,
        752
    );
    drop(db);
    // A resend to a new process, which has no memory of the keys: the key
    // COPY refuses them and the key table's look-up finds them.
    let svc = common::start_service(cfg.clone()).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 5, batch.clone()).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 500), "{ack:?}");
    drop(client);
    svc.running.shutdown().await.unwrap();
    let db = common::db(&tsdb.conn).await;
    // Native 2.28: every flush went to the columnstore. PGlite's 2.23
    // falls back to the row store (continuous aggregates), and says so.
    let in_heap = heap_rows(&db, "agent_events").await;
    let reason = strings(
        &db,
        "SELECT reason FROM agent_telemetry_settings WHERE name = 'layout'",
    )
    .await;
    assert_eq!(in_heap, if tsdb.native { 0 } else { 752 }, "{reason:?}");
    common::aggregates::assert_aggregates_match(&db, |_| "true".into()).await;
    if tsdb.native {
        // Recompression: direct compress leaves its chunks "unordered", in
        // the small batches of each flush; the compression policy (its
        // default `recompress`) compresses them again once they are older
        // than --compress-after. Its job, run now with a delay that takes
        // every chunk.
        // One row per chunk: the events span nine hours back from now, one
        // daily chunk or two (before 09:20 UTC they reach into yesterday).
        let status = "SELECT ch.status::text FROM _timescaledb_catalog.chunk ch
                      JOIN _timescaledb_catalog.hypertable h ON h.id = ch.hypertable_id
                      WHERE h.table_name = 'agent_events'
                      ORDER BY ch.id";
        let before = strings(&db, status).await;
        assert!(
            !before.is_empty() && before.iter().all(|s| s != "1"),
            "not fully compressed yet: {before:?}"
        );
        db.batch_execute(
            "SELECT alter_job(job_id, config => jsonb_set(config, '{compress_after}', '\"-1 day\"'))
             FROM timescaledb_information.jobs
             WHERE proc_name = 'policy_compression' AND hypertable_name = 'agent_events'",
        )
        .await
        .unwrap();
        let job = strings(
            &db,
            "SELECT job_id::text FROM timescaledb_information.jobs
             WHERE proc_name = 'policy_compression' AND hypertable_name = 'agent_events'",
        )
        .await
        .remove(0);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // A negative delay takes the chunk of today, which ends tonight.
        db.batch_execute(&format!("CALL run_job({job})"))
            .await
            .unwrap();
        let after = strings(&db, status).await;
        assert_eq!(after.len(), before.len(), "{before:?} -> {after:?}");
        assert!(
            after.iter().all(|s| s == "1"),
            "every chunk recompressed by the policy: {after:?}"
        );
        assert_eq!(
            common::count(&db, "SELECT count(*) FROM agent_events").await,
            752
        );
        common::aggregates::assert_aggregates_match(&db, |_| "true".into()).await;
    }
    drop(db);
    let chosen = migrate(&tsdb.conn, &cfg.storage).await.layout.unwrap();
    assert_eq!(
        chosen
            .reason
            .contains("direct compress did not take a test COPY"),
        !tsdb.native,
        "{chosen}"
    );

    // To the row store and back, by the flag.
    let mut storage = storage();
    storage.storage_layout = agent_telemetry::config::StorageLayout::Rowstore;
    let report = migrate(&tsdb.conn, &storage).await;
    let chosen = report.layout.unwrap();
    assert_eq!(chosen.layout, Layout::Rowstore);
    assert!(
        chosen
            .switched
            .as_deref()
            .unwrap_or("")
            .contains("agent_events: primary key re-created"),
        "{chosen:?}"
    );
    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        strings(&db, "SELECT conname::text FROM pg_constraint WHERE conrelid = 'agent_events'::regclass AND contype = 'p'").await,
        ["agent_events_pkey"]
    );
    assert_eq!(
        common::count(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname = 'agent_event_keys'"
        )
        .await,
        0
    );
    drop(db);
    // auto keeps what is recorded.
    let report = migrate(&tsdb.conn, &self::storage()).await;
    assert_eq!(report.layout.unwrap().layout, Layout::Rowstore);
    storage.storage_layout = agent_telemetry::config::StorageLayout::Columnstore;
    let chosen = migrate(&tsdb.conn, &storage).await.layout.unwrap();
    assert!(
        chosen
            .switched
            .as_deref()
            .unwrap_or("")
            .contains("agent_events: 752 keys copied to agent_event_keys"),
        "{chosen:?}"
    );
    // A resend after the switch back is still found.
    let svc = common::start_service(cfg).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 4, batch).await;
    assert_eq!((ack.stored, ack.duplicates), (0, 500), "{ack:?}");
    drop(client);
    svc.running.shutdown().await.unwrap();
}
