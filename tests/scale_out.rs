//! Several instances behind a load balancer, one database: they migrate at
//! once, upsert the same projects, machines, workspaces and sessions at once
//! (exactly one row each), store every row once, and take turns at the
//! per-database work (late-data refreshes) instead of each doing it.

mod common;

use std::time::Duration;

use agent_telemetry::{config::ServeConfig, pb};
use common::{TestService, delivery};
use futures_util::future::join_all;
use uuid::Uuid;

const INSTANCES: usize = 3;
const CLIENTS: usize = 9;
const PROJECTS: [&str; 4] = ["acme/api", "acme/web", "acme/ml", "blue/cli"];

/// Starts the instances together, so that their migrations race.
async fn instances(cfg: ServeConfig) -> Vec<TestService> {
    join_all((0..INSTANCES).map(|_| common::start_service(cfg.clone()))).await
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The chat session every client reports, with its workspace, machine and
/// project: all instances upsert the same dimension rows at the same time.
fn session(i: usize) -> pb::ChatSession {
    pb::ChatSession {
        session_id: format!("0195f3a0-5e55-7000-9000-{i:012x}"),
        workspace: Some(pb::Workspace {
            workspace_id: format!("ws-{}", i % 2),
            workspace_path: format!("/home/dev/ws-{}", i % 2),
            workspace_type: "folder".into(),
            project: Some(pb::Project {
                name: PROJECTS[i % PROJECTS.len()].into(),
                ..Default::default()
            }),
            machine: Some(pb::Machine {
                machine_id: "dev-laptop-linux".into(),
                hostname: "dev-laptop".into(),
                username: "dev".into(),
                os_type: "linux".into(),
                machine_type: "local".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        agent_type: "claude".into(),
        started_at: Some(prost_types::Timestamp {
            seconds: now_s() - 600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_database() {
    let pg = common::TestCluster::start();
    let conn = pg.database("scale").await;
    let services = instances(common::serve_config(&conn)).await;
    let endpoints: Vec<String> = services.iter().map(|s| s.endpoint.clone()).collect();

    // Every client sends messages of the same sessions (which carry the
    // session's workspace, machine and project) to its instance.
    let sessions: Vec<pb::ChatSession> = (0..6).map(session).collect();
    let chats = (0..CLIENTS).map(|c| {
        let endpoint = endpoints[c % INSTANCES].clone();
        let sessions = sessions.clone();
        async move {
            let mut client = common::client(&endpoint).await;
            let messages = sessions
                .iter()
                .enumerate()
                .map(|(k, s)| pb::ChatMessage {
                    id: Uuid::new_v4().to_string(),
                    session_id: s.session_id.clone(),
                    role: ["user", "assistant"][k % 2].into(),
                    content: format!("message {k} from client {c}"),
                    timestamp: Some(prost_types::Timestamp {
                        seconds: now_s() - 60,
                        nanos: 0,
                    }),
                    sequence: (c * 10 + k) as i32,
                    ..Default::default()
                })
                .collect();
            client
                .ingest_chat_messages(pb::ChatMessageBatch {
                    sequence: c as u64,
                    sessions,
                    messages,
                })
                .await
                .expect("ingest messages")
                .into_inner()
        }
    });
    for ack in join_all(chats).await {
        assert!(delivery::done(&ack) && ack.stored == 6, "{ack:?}");
    }

    // Events for every project from every client, spread over the instances.
    let progress = Default::default();
    let deliveries = (0..CLIENTS).map(|c| {
        let batches: Vec<pb::AgentEventBatch> = PROJECTS
            .iter()
            .enumerate()
            .flat_map(|(p, project)| delivery::batches(project, 500, 100, (p * 100) as u64))
            .collect();
        delivery::deliver(
            endpoints[c % INSTANCES].clone(),
            batches,
            None,
            std::sync::Arc::clone(&progress),
            Duration::from_secs(120),
        )
    });
    let mut total = delivery::Delivery::default();
    for d in join_all(deliveries).await {
        total.add(&d);
    }
    let sent = (CLIENTS * PROJECTS.len() * 500) as u64;
    assert_eq!((total.sent_rows, total.stored), (sent, sent), "{total:?}");

    let db = common::db(&conn).await;
    let stored = delivery::stored(&db, &total.acked_ids).await;
    assert_eq!(
        stored,
        delivery::Stored {
            rows: sent as i64,
            distinct: sent as i64,
            lost: 0
        }
    );
    // Every numbered migration of the database's mode, each applied once.
    let mode = if common::count(
        &db,
        "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .await
        > 0
    {
        "timescaledb"
    } else {
        "plain"
    };
    let numbered = |dir: &str| {
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".sql") && n.starts_with(|c: char| c.is_ascii_digit()))
            .count() as i64
    };
    let migrations = numbered("sql") + numbered(&format!("sql/{mode}"));
    for (sql, want) in [
        ("SELECT count(*) FROM schema_migrations", migrations),
        ("SELECT count(*) FROM projects", PROJECTS.len() as i64),
        (
            "SELECT count(DISTINCT full_name) FROM projects",
            PROJECTS.len() as i64,
        ),
        ("SELECT count(*) FROM machines", 1),
        ("SELECT count(*) FROM workspaces", 2),
        ("SELECT count(*) FROM chat_sessions", 6),
        ("SELECT count(*) FROM chat_messages", (CLIENTS * 6) as i64),
        ("SELECT count(*) FROM agent_events", sent as i64),
    ] {
        assert_eq!(common::count(&db, sql).await, want, "{sql}");
    }
    common::say(&format!(
        "scale-out: {INSTANCES} instances, {CLIENTS} clients: {sent} events and {} messages stored once; 4 projects, 1 machine, 2 workspaces, 6 sessions",
        CLIENTS * 6
    ));
    for s in services {
        s.running.shutdown().await.unwrap();
    }
}

/// The refresh lock's key (src/maintain/refresh.rs).
const REFRESH_LOCK: i64 = 0x6167_656e_7472_6672;

/// Late rows through three instances: their hours meet in `late_hours`, no
/// instance refreshes while another holds the refresh lock, and once it is
/// free one round refreshes them all. Needs native TimescaleDB (PGlite
/// serves one connection; plain mode has no aggregates to refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_hours_from_all_instances_are_refreshed_by_one_at_a_time() {
    let Some(tsdb) = common::TsDb::native("late_hours_from_all_instances").await else {
        return;
    };
    let mut cfg = tsdb.serve_config();
    cfg.storage.late_refresh_every = Duration::from_millis(200);
    // Each late hour refreshed at the next round (no settle period):
    // what is checked here is the figures, not when they come.
    cfg.storage.late_settle = Duration::ZERO;
    let services = instances(cfg).await;
    let db = common::db(&tsdb.conn).await;
    // The test plays the instance whose round never ends.
    db.execute("SELECT pg_advisory_lock($1)", &[&REFRESH_LOCK])
        .await
        .unwrap();

    // Instance i sends rows (3 + 24 i) hours old: three distinct late hours.
    for (i, s) in services.iter().enumerate() {
        let mut client = common::client(&s.endpoint).await;
        let events = (0..50)
            .map(|_| common::event("acme/api", (3 + 24 * i as i64) * 3600))
            .collect();
        let ack = common::ingest(&mut client, i as u64, events).await;
        assert_eq!(ack.stored, 50, "{ack:?}");
    }
    let pending = "SELECT count(*) FROM late_hours WHERE table_name = 'agent_events'";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::count(&db, pending).await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "late hours not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Five rounds' worth of time: nobody refreshed while the lock was held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(common::count(&db, pending).await, 3);

    db.execute("SELECT pg_advisory_unlock($1)", &[&REFRESH_LOCK])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::count(&db, pending).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "late hours never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The materialised part alone (no real-time union over raw rows) holds
    // every late row: the refresh ran.
    db.batch_execute(
        "ALTER MATERIALIZED VIEW agent_events_hourly SET (timescaledb.materialized_only = true)",
    )
    .await
    .unwrap();
    let materialised = common::count(
        &db,
        "SELECT coalesce(sum(event_count), 0)::bigint FROM agent_events_hourly WHERE bucket < now() - interval '2 hours'",
    )
    .await;
    assert_eq!(materialised, 150);
    for s in services {
        s.running.shutdown().await.unwrap();
    }
}
