//! Faults, injected for real: the database crash-restarted or stopped while
//! clients stream, the service killed with SIGKILL, every batch resent, an
//! overload. Clients behave as docs/api.md asks (tests/common/delivery.rs):
//! they resend what was not acknowledged. Afterwards every acknowledged
//! event must be stored exactly once. Each test prints its figures.

mod common;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use agent_telemetry::{bench::cases::Service, config::TimescaleMode, pb};
use common::{
    delivery::{self, Delivery, Stored},
    say,
};

const LIMIT: Duration = Duration::from_secs(120);

fn report(test: &str, d: &Delivery, s: &Stored) {
    say(&format!(
        "{test}: sent {} events; acknowledged {} (stored {}, duplicates {}, spooled {}); \
         in the table {} ({} distinct, so {} duplicated); acknowledged but missing {}; \
         error acks {}, broken streams {}, batches resent {}",
        d.sent_rows,
        d.acked_ids.len(),
        d.stored,
        d.duplicates,
        d.spooled,
        s.rows,
        s.distinct,
        s.rows - s.distinct,
        s.lost,
        d.error_acks,
        d.broken_streams,
        d.resent_batches,
    ));
}

fn exactly_once(d: &Delivery, s: &Stored) {
    assert_eq!(
        d.acked_ids.len() as u64,
        d.sent_rows,
        "every event acknowledged in the end"
    );
    assert_eq!(s.lost, 0, "acknowledged events missing");
    assert_eq!(s.rows, s.distinct, "duplicated rows");
    assert_eq!(s.rows as u64, d.sent_rows, "rows stored");
}

fn exe() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_agent-telemetry"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_crash_restart_mid_stream_loses_and_duplicates_nothing() {
    let (pg, conn, svc) = common::service("restart").await;
    restart_mid_stream(svc, &conn, "", move || {
        pg.cluster
            .restart_immediate()
            .expect("pg_ctl restart -m immediate");
        pg
    })
    .await;
}

/// The same on native TimescaleDB in the columnstore layout (its default
/// there): the rows and their keys commit together or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_a_database_crash_restart_mid_stream_loses_and_duplicates_nothing() {
    let Some(tsdb) = native_columnstore("columnstore restart mid-stream").await else {
        return;
    };
    let svc = common::start_service(tsdb.serve_config()).await;
    let conn = tsdb.conn.clone();
    restart_mid_stream(svc, &conn, " (columnstore)", move || {
        tsdb.cluster()
            .unwrap()
            .cluster
            .restart_immediate()
            .expect("pg_ctl restart -m immediate");
        tsdb
    })
    .await;
}

/// Native TimescaleDB with its services in the columnstore layout, or None
/// (after a SKIPPED line) where it is not installed.
async fn native_columnstore(test: &str) -> Option<common::TsDb> {
    let tsdb = common::TsDb::native(test).await?;
    Some(tsdb.in_layout(agent_telemetry::config::StorageLayout::Columnstore))
}

/// 200,000 events over 4 streams; after 40,000 acks `restart` restarts the
/// database (and hands back what keeps it alive).
async fn restart_mid_stream<T: Send + 'static>(
    svc: common::TestService,
    conn: &str,
    label: &str,
    restart: impl FnOnce() -> T + Send + 'static,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (endpoint, progress) = (svc.endpoint.clone(), progress.clone());
        async move {
            delivery::deliver_parallel(&endpoint, "acme/restart", 200_000, 4, 500, progress, LIMIT)
                .await
        }
    });
    delivery::when_acked(&progress, 40_000).await;
    // The cluster comes back: dropping it would remove it.
    let _pg = tokio::task::spawn_blocking(restart).await.unwrap();
    let d = load.await.unwrap();
    let db = common::db(conn).await;
    let s = delivery::stored(&db, &d.acked_ids).await;
    report(
        &format!("database restarted (-m immediate) under 4 streams{label}"),
        &d,
        &s,
    );
    exactly_once(&d, &s);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_down_30s_with_the_spool_acks_continue_and_rows_arrive_once() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (pg, conn, svc) = common::service_with("spool_outage", |c| {
        c.spool.spool_dir = Some(dir);
    })
    .await;
    spool_outage(&pg, &conn, svc, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_database_down_30s_with_the_spool_acks_continue_and_rows_arrive_once() {
    let Some(tsdb) = native_columnstore("columnstore outage with the spool").await else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = tsdb.serve_config();
    cfg.spool.spool_dir = Some(spool.path().to_owned());
    let svc = common::start_service(cfg).await;
    spool_outage(tsdb.cluster().unwrap(), &tsdb.conn, svc, " (columnstore)").await;
}

/// 10,000 rows, then 30 s with the database stopped and one batch a
/// second, each acked as spooled; then every row stored once.
async fn spool_outage(pg: &common::TestCluster, conn: &str, svc: common::TestService, label: &str) {
    let db = common::db(conn).await;
    let progress = Arc::new(AtomicU64::new(0));
    let mut total = delivery::deliver(
        svc.endpoint.clone(),
        delivery::batches("acme/outage", 10_000, 500, 0),
        None,
        progress.clone(),
        LIMIT,
    )
    .await;
    drop(db);
    pg.cluster.stop().expect("stop PostgreSQL");
    // 30 s without a database: one batch a second, each acked as spooled.
    let mut during = Delivery::default();
    for i in 0..30u64 {
        let started = std::time::Instant::now();
        let d = delivery::deliver(
            svc.endpoint.clone(),
            delivery::batches("acme/outage", 500, 500, 1_000 + i),
            None,
            progress.clone(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            d.spooled, 500,
            "acked as spooled while the database is down"
        );
        assert_eq!(d.resent_batches, 0, "no resend needed with the spool");
        during.add(&d);
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    }
    total.add(&during);
    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(conn).await;
    let n = delivery::until_stored(&db, total.sent_rows as i64, Duration::from_secs(120)).await;
    let s = delivery::stored(&db, &total.acked_ids).await;
    report(
        &format!("database stopped 30 s, spool on{label}"),
        &total,
        &s,
    );
    assert_eq!(n, 25_000);
    exactly_once(&total, &s);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_down_without_the_spool_gets_errors_never_a_false_ack() {
    let (pg, conn, svc) = common::service_with("no_spool_outage", |c| {
        c.pipeline.copy_retry_timeout = Duration::from_secs(2);
    })
    .await;
    outage_without_spool(&pg, &conn, svc, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_database_down_without_the_spool_gets_errors_never_a_false_ack() {
    let Some(tsdb) = native_columnstore("columnstore outage without the spool").await else {
        return;
    };
    let mut cfg = tsdb.serve_config();
    cfg.pipeline.copy_retry_timeout = Duration::from_secs(2);
    let svc = common::start_service(cfg).await;
    outage_without_spool(tsdb.cluster().unwrap(), &tsdb.conn, svc, " (columnstore)").await;
}

/// 1,000 rows, then the database stopped: every batch is refused or acked
/// with a retryable error; once it is back, the client's resends store
/// each row once.
async fn outage_without_spool(
    pg: &common::TestCluster,
    conn: &str,
    svc: common::TestService,
    label: &str,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let mut total = delivery::deliver(
        svc.endpoint.clone(),
        delivery::batches("acme/nospool", 1_000, 500, 0),
        None,
        progress.clone(),
        LIMIT,
    )
    .await;
    pg.cluster.stop().expect("stop PostgreSQL");
    let mut client = common::client(&svc.endpoint).await;
    let mut refused = Vec::new();
    for (i, b) in delivery::batches("acme/nospool", 5_000, 500, 100)
        .into_iter()
        .enumerate()
    {
        let answer = client.ingest_agent_events(b.clone()).await;
        match answer {
            Ok(ack) => {
                let ack = ack.into_inner();
                assert!(
                    !delivery::done(&ack),
                    "batch {i} acknowledged as done with the database down: {ack:?}"
                );
                assert!(ack.retryable, "{ack:?}");
            }
            Err(status) => assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ),
                "{status:?}"
            ),
        }
        refused.push(b);
    }
    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(conn).await;
    assert_eq!(
        delivery::stored(&db, &total.acked_ids).await.rows,
        1_000,
        "only the batches acknowledged before the outage are stored"
    );
    // The client resends what was refused.
    let again = delivery::deliver(svc.endpoint.clone(), refused, None, progress, LIMIT).await;
    total.add(&again);
    let s = delivery::stored(&db, &total.acked_ids).await;
    report(&format!("database stopped, spool off{label}"), &total, &s);
    exactly_once(&total, &s);
    svc.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_killed_mid_stream_with_the_spool_then_resends_store_everything_once() {
    let pg = common::TestCluster::start();
    let conn = pg.database("killed").await;
    killed_mid_stream(&conn, &[], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_service_killed_mid_stream_with_the_spool_then_resends_store_everything_once()
 {
    let Some(tsdb) = common::TsDb::native("columnstore service killed").await else {
        return;
    };
    let layout = ["--storage-layout=columnstore".to_owned()];
    killed_mid_stream(&tsdb.conn, &layout, " (columnstore)").await;
}

/// 100,000 rows over 4 streams; after 30,000 acks the service is killed
/// (SIGKILL) and started again on the same port and spool.
async fn killed_mid_stream(conn: &str, extra: &[String], label: &str) {
    let work = tempfile::tempdir().unwrap();
    let mut args = vec![
        format!("--spool-dir={}", work.path().join("spool").display()),
        "--shutdown-timeout=10s".to_owned(),
    ];
    args.extend_from_slice(extra);
    let log = work.path().join("serve.log");
    let svc = Service::start(exe(), conn, TimescaleMode::Auto, &args, log.clone())
        .await
        .expect("start service");
    let endpoint = svc.endpoint.clone();
    let progress = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (endpoint, progress) = (endpoint.clone(), progress.clone());
        async move {
            delivery::deliver_parallel(&endpoint, "acme/killed", 100_000, 4, 500, progress, LIMIT)
                .await
        }
    });
    delivery::when_acked(&progress, 30_000).await;
    svc.kill().await;
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    common::wait_for(
        "the killed service's port to close",
        Duration::from_secs(10),
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    let svc = Service::start_on(addr, exe(), conn, TimescaleMode::Auto, &args, log)
        .await
        .expect("restart service");
    let d = load.await.unwrap();
    let db = common::db(conn).await;
    let n = delivery::until_stored(&db, 100_000, Duration::from_secs(120)).await;
    let s = delivery::stored(&db, &d.acked_ids).await;
    report(
        &format!("service killed (SIGKILL) under 4 streams, spool on{label}"),
        &d,
        &s,
    );
    assert_eq!(n, 100_000);
    exactly_once(&d, &s);
    svc.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_batch_sent_three_times_at_once_is_stored_once() {
    let (_pg, conn, svc) = common::service("thrice").await;
    three_times_at_once(svc, &conn, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_every_batch_sent_three_times_at_once_is_stored_once() {
    let Some(tsdb) = common::TsDb::native("columnstore triple resends").await else {
        return;
    };
    three_times_at_once_on_the_columnstore(tsdb, " (columnstore)").await;
}

/// The same on every CI run: PGlite's TimescaleDB (2.23) falls back to the
/// row store's chunks, but the key tables alone decide, as on native; one
/// connection, so the three sends meet in the recent keys and the key
/// table rather than in concurrent COPYs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_columnstore_in_pglite_every_batch_sent_three_times_at_once_is_stored_once() {
    three_times_at_once_on_the_columnstore(common::TsDb::pglite(), " (columnstore, PGlite)").await;
}

async fn three_times_at_once_on_the_columnstore(tsdb: common::TsDb, label: &str) {
    let tsdb = tsdb.in_layout(agent_telemetry::config::StorageLayout::Columnstore);
    let svc = common::start_service(tsdb.serve_config()).await;
    three_times_at_once(svc, &tsdb.conn, label).await;
    let db = common::db(&tsdb.conn).await;
    assert_eq!(
        common::count(&db, "SELECT count(*) FROM agent_event_keys").await,
        20_000
    );
}

async fn three_times_at_once(svc: common::TestService, conn: &str, label: &str) {
    let batches = delivery::batches("acme/thrice", 20_000, 500, 0);
    let progress = Arc::new(AtomicU64::new(0));
    let sends: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(delivery::deliver(
                svc.endpoint.clone(),
                batches.clone(),
                None,
                progress.clone(),
                LIMIT,
            ))
        })
        .collect();
    let mut total = Delivery::default();
    for s in sends {
        total.add(&s.await.unwrap());
    }
    // Stopped first: PGlite serves one connection at a time.
    svc.running.shutdown().await.unwrap();
    let db = common::db(conn).await;
    let s = delivery::stored(&db, &total.acked_ids).await;
    report(
        &format!("every batch sent three times, concurrently{label}"),
        &total,
        &s,
    );
    assert_eq!(
        total.stored, 20_000,
        "each row stored by exactly one of the sends"
    );
    assert_eq!(
        total.duplicates, 40_000,
        "the other two sends see duplicates"
    );
    assert_eq!((s.rows, s.distinct, s.lost), (20_000, 20_000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_keeps_memory_bounded_and_loses_nothing() {
    let pg = common::TestCluster::start();
    let conn = pg.database("overload").await;
    let work = tempfile::tempdir().unwrap();
    // A short admission timeout: at 200 ms a fast machine's database
    // emptied the 8 MiB in time and refused almost nothing (3 batches, or
    // none with the suite's other tests beside it).
    let args = vec![
        "--buffer-bytes=8388608".to_owned(),
        "--admission-timeout=20ms".to_owned(),
    ];
    let svc = Service::start(
        exe(),
        &conn,
        TimescaleMode::Auto,
        &args,
        work.path().join("serve.log"),
    )
    .await
    .expect("start service");
    let progress = Arc::new(AtomicU64::new(0));
    let d = delivery::deliver_parallel(
        &svc.endpoint,
        "acme/overload",
        200_000,
        16,
        1_000,
        progress,
        LIMIT,
    )
    .await;
    let rss = svc.peak_rss().expect("VmHWM");
    let db = common::db(&conn).await;
    let s = delivery::stored(&db, &d.acked_ids).await;
    report(
        "16 streams offering far more than the database takes, 8 MiB buffers",
        &d,
        &s,
    );
    say(&format!("overload: peak RSS {} MiB", rss >> 20));
    exactly_once(&d, &s);
    assert!(
        d.error_acks > 0,
        "the overload was real: some batches were refused"
    );
    // Two 8 MiB buffers, 16 streams' requests in flight, the runtime.
    assert!(rss < 160 << 20, "peak RSS {} MiB", rss >> 20);
    svc.stop().await.expect("clean stop");
}

/// A `serve` process on a fresh database whose `agent_events` a test
/// transaction holds locked (`db`): nothing can be written until it ends.
struct Locked {
    _pg: common::TestCluster,
    conn: String,
    _work: tempfile::TempDir,
    /// The service's stdout and stderr.
    log: std::path::PathBuf,
    svc: Service,
    db: tokio_postgres::Client,
}

impl Locked {
    async fn start(name: &str, shutdown_timeout: &str) -> Self {
        let pg = common::TestCluster::start();
        let conn = pg.database(name).await;
        let work = tempfile::tempdir().unwrap();
        let log = work.path().join("serve.log");
        let args = [format!("--shutdown-timeout={shutdown_timeout}")];
        let svc = Service::start(exe(), &conn, TimescaleMode::Auto, &args, log.clone())
            .await
            .expect("start service");
        let db = common::db(&conn).await;
        db.batch_execute("BEGIN; LOCK TABLE agent_events IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        Self {
            _pg: pg,
            conn,
            _work: work,
            log,
            svc,
            db,
        }
    }
}

#[tokio::test]
async fn a_second_signal_exits_at_once_leaving_only_unacknowledged_batches() {
    // A database that takes nothing: the drain cannot finish by itself.
    let locked = Locked::start("signals", "10min").await;
    let (conn, log, svc, db) = (&locked.conn, &locked.log, locked.svc, &locked.db);
    let mut client = common::client(&svc.endpoint).await;
    let pending = tokio::spawn(async move {
        client
            .ingest_agent_events(pb::AgentEventBatch {
                sequence: 1,
                events: vec![common::event("acme/signals", 60)],
            })
            .await
    });
    common::until_writer_waits_for_lock(conn).await;
    let pid = svc.pid().expect("pid");
    let term = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    };
    term();
    common::wait_for(
        "the first signal's drain",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("shutting down: draining")
        },
    )
    .await;
    let mut svc = svc;
    assert!(
        svc.is_running(),
        "the first signal drains, waiting for the database"
    );
    term();
    let status = svc
        .wait(Duration::from_secs(10))
        .await
        .expect("exited after the second signal");
    assert_eq!(status.code(), Some(130));
    let answer = pending.await.unwrap();
    assert!(
        answer.is_err(),
        "the unacknowledged batch got no ack: {answer:?}"
    );
    db.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_shutdown_deadline_owed_batches_are_acked_not_stored_and_the_exit_is_unclean() {
    // A table the database does not let anyone write: the drain cannot
    // finish by the deadline.
    let locked = Locked::start("deadline", "2s").await;
    let (conn, log, svc, db) = (&locked.conn, &locked.log, locked.svc, &locked.db);
    let mut client = common::client(&svc.endpoint).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = client
        .stream_agent_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for sequence in 1..=3 {
        tx.send(pb::AgentEventBatch {
            sequence,
            events: (0..50)
                .map(|_| common::event(&format!("acme/deadline-{sequence}"), 60))
                .collect(),
        })
        .await
        .unwrap();
    }
    common::until_projects(conn, 3).await;
    common::until_writer_waits_for_lock(conn).await;
    let pid = svc.pid().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Every batch read gets its ack: not stored, resend.
    let mut got = Vec::new();
    while let Some(ack) = tokio_stream::StreamExt::next(&mut acks).await {
        got.push(ack.expect("the stream ends with its acks, not GOAWAY"));
    }
    drop(tx);
    assert_eq!(
        got.iter().map(|a| a.sequence).collect::<Vec<_>>(),
        [1, 2, 3],
        "{got:?}"
    );
    for a in &got {
        assert!(
            a.stored == 0
                && a.retryable
                && a.error.contains("not stored")
                && a.error.contains("resend"),
            "{a:?}"
        );
    }
    let status = svc
        .wait(Duration::from_secs(30))
        .await
        .expect("exited after the deadline");
    assert_eq!(status.code(), Some(1), "an unclean stop is not exit 0");
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(
        logged.contains("shutdown took longer than --shutdown-timeout"),
        "{logged}"
    );
    db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        common::count(db, "SELECT count(*) FROM agent_events").await,
        0
    );
    say(&format!(
        "past the shutdown deadline: {} owed batches acked \"{}\", exit status {:?}",
        got.len(),
        got[0].error,
        status.code()
    ));
}

/// Sends `batches` one by one to a spooling service whose database is
/// down: each is acked as spooled, or refused with RESOURCE_EXHAUSTED
/// "… spool is full …". What was acked, what was refused, and the last
/// refusal's message.
async fn spool_until_refused(
    endpoint: &str,
    batches: Vec<pb::AgentEventBatch>,
) -> (Delivery, Vec<pb::AgentEventBatch>, String) {
    let mut client = common::client(endpoint).await;
    let mut acked = Delivery::default();
    let (mut refused, mut message) = (Vec::new(), String::new());
    for b in batches {
        match client.ingest_agent_events(b.clone()).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                assert!(delivery::done(&ack) && ack.spooled == 500, "{ack:?}");
                acked.sent_rows += 500;
                acked.spooled += 500;
                acked
                    .acked_ids
                    .extend(b.events.iter().map(|e| e.id.parse::<uuid::Uuid>().unwrap()));
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::ResourceExhausted,
                    "refused as full, not as a broken writer: {status:?}"
                );
                assert!(status.message().contains("spool is full"), "{status:?}");
                message = status.message().to_owned();
                refused.push(b);
            }
        }
    }
    (acked, refused, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_refuses_with_resource_exhausted_and_drops_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (pg, conn, svc) = common::service_with("spool_full", |c| {
        c.spool.spool_dir = Some(dir);
        c.spool.spool_max_bytes = 4 << 20;
    })
    .await;
    pg.cluster.stop().expect("stop PostgreSQL");
    let (acked, refused, _) = spool_until_refused(
        &svc.endpoint,
        delivery::batches("acme/full", 40_000, 500, 0),
    )
    .await;
    assert!(
        !refused.is_empty() && acked.spooled > 0,
        "the spool filled up"
    );
    say(&format!(
        "spool full (4 MiB, database down): {} events acked as spooled, {} refused with RESOURCE_EXHAUSTED",
        acked.spooled,
        refused.len() * 500
    ));
    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(&conn).await;
    let what = "spool full, then the database back and the refused batches resent";
    resend_and_check_once(&svc, &db, refused, acked, 40_000, what).await;
    svc.running.shutdown().await.unwrap();
}

/// Resends the `refused` batches until acked, waits for `total` rows, and
/// checks that every acknowledged event is stored exactly once.
async fn resend_and_check_once(
    svc: &common::TestService,
    db: &tokio_postgres::Client,
    refused: Vec<pb::AgentEventBatch>,
    mut acked: Delivery,
    total: i64,
    what: &str,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let again = delivery::deliver(svc.endpoint.clone(), refused, None, progress, LIMIT).await;
    acked.add(&again);
    delivery::until_stored(db, total, Duration::from_secs(120)).await;
    let s = delivery::stored(db, &acked.acked_ids).await;
    report(what, &acked, &s);
    exactly_once(&acked, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spool_keeps_key_scopes_and_keeps_what_replay_cannot_store() {
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (pg, conn, svc) = common::service_with("spool_scopes", |c| {
        c.spool.spool_dir = Some(dir);
        c.security.require_api_key = true;
    })
    .await;
    let mut db = common::db(&conn).await;
    let key = agent_telemetry::auth::keys::create(
        &mut db,
        "spool",
        &["acme/api".into()],
        &Default::default(),
    )
    .await
    .unwrap()
    .key;
    let with_key = |b: pb::AgentEventBatch| {
        let mut r = tonic::Request::new(b);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    };
    let mut client = common::client(&svc.endpoint).await;
    // The key is checked once while the database is up; during the outage
    // the service trusts that check.
    let ack = client
        .ingest_agent_events(with_key(pb::AgentEventBatch {
            sequence: 0,
            events: vec![common::event("acme/api", 60)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.spooled, 1, "{ack:?}");
    // Scopes are enforced at receipt, without the database.
    drop(db);
    pg.cluster.stop().expect("stop PostgreSQL");
    let ack = client
        .ingest_agent_events(with_key(pb::AgentEventBatch {
            sequence: 1,
            events: vec![common::event("acme/api", 60), common::event("other/x", 60)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.spooled, ack.rejected.len()), (1, 1), "{ack:?}");
    assert_eq!(ack.rejected[0].code, "PERMISSION_DENIED");
    // A message naming a session nobody reported: with the database down
    // it cannot be checked, so it is spooled; replay cannot store it, and
    // keeps it in rejected.jsonl.
    let mut request = tonic::Request::new(pb::ChatMessageBatch {
        sequence: 2,
        sessions: vec![],
        messages: vec![pb::ChatMessage {
            id: uuid::Uuid::new_v4().to_string(),
            session_id: uuid::Uuid::new_v4().to_string(),
            role: "user".into(),
            content: "hello".into(),
            timestamp: common::event("x", 60).timestamp,
            ..Default::default()
        }],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let ack = client
        .ingest_chat_messages(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.spooled, 1, "{ack:?}");
    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(&conn).await;
    let dead = spool.path().join("rejected.jsonl");
    let stored = delivery::until_stored(&db, 2, Duration::from_secs(60)).await;
    assert_eq!(
        stored,
        2,
        "both spooled events stored; refused at replay: {}",
        std::fs::read_to_string(&dead).unwrap_or_default()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !dead.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&dead).expect("rejected.jsonl written");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "chat_message");
    assert_eq!(line["field"], "session_id");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("unknown chat session"),
        "{line}"
    );
    assert_eq!(line["sequence"], 2);
    svc.running.shutdown().await.unwrap();
}

/// A tmpfs of `mib` MiB mounted at a temporary directory, unmounted on drop.
/// None (and a SKIPPED line saying why) where this process may not mount.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64, test: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                say(&format!(
                    "SKIPPED: {test}: cannot mount a tmpfs here ({}); it runs as root",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                say(&format!("SKIPPED: {test}: no mount command ({e})"));
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a failed test may leave files open on it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_under_the_spool_refuses_then_recovers_by_itself() {
    full_disk_recovers(
        "a_full_disk_under_the_spool_refuses_then_recovers_by_itself",
        1 << 20,
    )
    .await;
}

/// The whole spool is the one segment being written (its size is above the
/// disk's), so no segment is ever wholly before the replayed position:
/// that segment must still be given back once replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_holding_one_segment_recovers_too() {
    full_disk_recovers("a_full_disk_holding_one_segment_recovers_too", 1 << 30).await;
}

async fn full_disk_recovers(test: &str, segment_bytes: u64) {
    // About 30 MB of spool entries: twice what the filesystem holds.
    const EVENTS: usize = 100_000;
    let Some(disk) = SmallDisk::mount(16, test) else {
        return;
    };
    let dir = disk.dir.path().join("spool");
    let (pg, conn, svc) = common::service_with("spool_disk", |c| {
        c.spool.spool_dir = Some(dir.clone());
        // Far more than the filesystem holds: the disk is the limit.
        c.spool.spool_max_bytes = 1 << 30;
        c.spool.spool_segment_bytes = segment_bytes;
        c.spool.spool_reserve_bytes = 1 << 20;
    })
    .await;
    pg.cluster.stop().expect("stop PostgreSQL");
    let (acked, refused, message) = spool_until_refused(
        &svc.endpoint,
        delivery::batches("acme/disk", EVENTS, 500, 0),
    )
    .await;
    assert!(
        message.contains("the spool is full: its filesystem has")
            && message.contains("resend later"),
        "{message}"
    );
    assert!(
        !refused.is_empty() && acked.spooled > 0,
        "the disk filled up"
    );
    let (free, _) = agent_telemetry::spool::log::disk_space(&dir).unwrap();
    say(&format!(
        "full disk (16 MiB tmpfs, database down): {} events acked as spooled, {} refused with RESOURCE_EXHAUSTED, {free} bytes left free; {message}",
        acked.spooled,
        refused.len() * 500,
    ));
    // Something else takes the rest of the disk: replay must record its
    // position and delete segments with no byte free.
    let filler = disk.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
    }
    assert!(agent_telemetry::spool::log::disk_space(&dir).unwrap().0 < 64 << 10);
    // The database comes back: the same service drains the spool, frees
    // the disk and takes the refused batches.
    pg.cluster.start().expect("start PostgreSQL");
    let db = common::db(&conn).await;
    delivery::until_stored(&db, acked.spooled as i64, Duration::from_secs(120)).await;
    common::wait_for(
        "replay to free the disk",
        Duration::from_secs(60),
        || async { agent_telemetry::spool::log::disk_space(&dir).unwrap().0 > 8 << 20 },
    )
    .await;
    let what = "full disk, then the database back and the refused batches resent";
    resend_and_check_once(&svc, &db, refused, acked, EVENTS as i64, what).await;
    svc.running.shutdown().await.unwrap();
    drop(disk);
}
