//! Wiring: database (given or embedded) → migrations → pool → buffers,
//! batchers and writer → intake (and the spool) → gRPC service and OTLP
//! receivers; and the shutdown order:
//!
//! 1. drain starts (signal or [`Running::shutdown`]): health turns
//!    NOT_SERVING, no new connections, streams stop reading new batches and
//!    batchers flush at once;
//! 2. every batch already read is committed and acked, streams end with OK;
//! 3. batchers finish their last flushes; the embedded database stops.
//!
//! If that takes longer than `--shutdown-timeout`, the writer stops retrying
//! (the acks still waiting say "not stored, resend") and the service exits.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

use crate::{
    api::Api,
    auth::Authenticator,
    buffer::{TableBuffer, batcher},
    config::{ServeConfig, SpoolConfig},
    copy::{keys::KeyWindows, writer::CopyWriter},
    db::{
        self, DbError,
        dims::Dimensions,
        open::{Database, OpenError, open_database, run_migrations},
    },
    intake::{
        Intake,
        replay::{self, Backlog},
    },
    maintain::{refresh::LateRefresher, retention},
    metrics,
    net::ListenError,
    otlp,
    pb::wire::telemetry_ingest_server::TelemetryIngestServer,
    row::Table,
    spool::{
        self,
        log::{Log, LogError, Reader},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start the metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: metrics_exporter_prometheus::BuildError,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("spool: {0}")]
    Spool(#[from] LogError),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Otlp(#[from] otlp::serve::ServeError),
    #[error(transparent)]
    Privacy(#[from] crate::privacy::PrivacyError),
    #[error(transparent)]
    Redaction(#[from] crate::intake::redact::RedactError),
    #[error(transparent)]
    ContentPolicy(#[from] crate::intake::policy::PolicyError),
    #[error(
        "shutdown took longer than --shutdown-timeout ({0:?}): batches still owed were answered \"not stored, resend\""
    )]
    DeadlinePassed(Duration),
}

/// After the shutdown deadline: how long the acks "not stored, resend" of
/// the batches still owed may take to reach their clients.
const OWED_ACKS_GRACE: Duration = Duration::from_secs(5);

/// A started service.
pub struct Running {
    pub addr: SocketAddr,
    /// The OTLP receivers' addresses, when on.
    pub otlp_grpc_addr: Option<SocketAddr>,
    pub otlp_http_addr: Option<SocketAddr>,
    drain: CancellationToken,
    done: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Starts the drain and waits until the service has stopped.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.drain.cancel();
        self.wait().await
    }

    /// Waits until the service has stopped (after a signal cancelled `drain`).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.done.await.expect("server task panicked")
    }
}

/// Opens the database, migrates, and starts serving. `drain` starts the
/// shutdown when cancelled.
pub async fn start(cfg: ServeConfig, drain: CancellationToken) -> Result<Running, ServerError> {
    // Settings checked before anything starts.
    let pseudonyms = crate::privacy::Pseudonyms::configured(
        cfg.security.pseudonymize_users,
        cfg.security.pseudonym_secret.as_deref(),
    )?;
    let redactor = crate::intake::redact::Redactor::configured(&cfg.redaction)?;
    match &redactor {
        Some(r) => tracing::info!(rules = r.rule_count(), "redaction on"),
        None => tracing::warn!(
            "redaction is OFF (--redaction off): credentials in commands, files, tool inputs and chat are stored as sent, readable by every dashboard user and kept in backups"
        ),
    }
    let content_policy = crate::intake::policy::ContentPolicy::configured(
        cfg.redaction.content_policy.as_deref(),
        &cfg.projects,
        cfg.limits.max_content_bytes,
    )?;
    if let Some(p) = &content_policy {
        let d = p.default_policy();
        tracing::info!(
            projects = p.project_count(),
            default_chat = d.chat.label(),
            default_files = d.files.label(),
            "content policy on"
        );
    }
    // Every port and the price table checked before the database work, so
    // that a typo fails in milliseconds rather than after migrations. The
    // metrics port stays bound: /readyz says "starting" meanwhile.
    let ready = match cfg.metrics_addr() {
        Some(addr) => {
            let (listener, local) = crate::net::bind(addr).await?;
            let handle =
                metrics::install().map_err(|source| ServerError::Metrics { addr, source })?;
            // Credentials in URLs are taken out with redaction on or off.
            metrics::zero_redactions(std::iter::once(crate::privacy::URL_USERINFO));
            if let Some(r) = &redactor {
                metrics::zero_redactions(r.kinds());
            }
            if content_policy.is_some() {
                metrics::zero_content_policy(&crate::intake::policy::Mode::CHANGING_LABELS);
            }
            tracing::info!("{}", crate::api::probes::describe(local));
            Some(crate::api::probes::serve(listener, handle, drain.clone()))
        }
        None => None,
    };
    // The service ports are released again at once: they are bound for
    // good once the service can serve, so that while it migrates clients
    // are refused (and back off) rather than left waiting.
    crate::net::bind(cfg.listen).await?;
    let otlp_checked = otlp::serve::check(&cfg).await?;
    let database = open_database(&cfg.database).await?;
    let report = run_migrations(&database.conn, &cfg.storage, cfg.limits.max_past).await?;
    tracing::info!(
        applied = report.applied.len(),
        already = report.already,
        "migrations done"
    );
    tracing::info!("storage mode: {}", report.mode);
    let layout = match &report.layout {
        Some(chosen) => {
            tracing::info!("storage layout: {chosen}");
            chosen.layout
        }
        None => db::layout::Layout::Rowstore,
    };
    metrics::storage_layout(layout.as_str());
    let pool = db::pool(&database.conn, cfg.database.pool_size)?;
    if let Some(ready) = &ready {
        ready.send_replace(Some(pool.clone()));
    }
    let timescaledb = report.mode.is_timescaledb();
    let pipeline = Pipeline::start(&cfg, &pool, timescaledb, layout, &drain);
    let spool = open_spool(&cfg.spool, &drain)?;
    let [events, messages] = pipeline.buffers.clone();
    let intake = Arc::new(Intake {
        events,
        messages,
        dims: Arc::new(Dimensions::new(pool.clone(), cfg.projects.clone())),
        limits: cfg.limits.clone(),
        pipeline: cfg.pipeline.clone(),
        late_after: timescaledb.then_some(cfg.storage.late_after),
        spool: spool.as_ref().map(|s| s.log.clone()),
        pseudonyms,
        redactor,
        content_policy,
    });
    // With the spool, the replayer is intake's first client: it must end
    // before the batchers can.
    let replayer = spool.map(|s| {
        let intake = intake.clone();
        tokio::spawn(replay::run(s.reader, intake, s.backlog, drain.clone()))
    });
    let otlp = otlp::serve::start(&cfg, otlp_checked, intake.clone(), &pool, &drain).await?;
    let (addr, serve) = serve_grpc(&cfg, intake, &pool, &drain).await?;
    let tasks = Tasks {
        otlp: otlp.tasks,
        replayer,
        batchers: pipeline.batchers,
        refresher: pipeline.refresher,
    };
    let done = tokio::spawn(stop_in_order(
        serve,
        tasks,
        (database, pool),
        pipeline.give_up,
        cfg.shutdown_timeout,
        drain.clone(),
    ));
    Ok(Running {
        addr,
        otlp_grpc_addr: otlp.grpc_addr,
        otlp_http_addr: otlp.http_addr,
        drain,
        done,
    })
}

/// What runs behind intake: one buffer and batcher per table, the writer
/// they share, and after the ack the late-data refresher (TimescaleDB) or
/// our own retention (plain PostgreSQL).
struct Pipeline {
    buffers: [TableBuffer; 2],
    batchers: Vec<JoinHandle<()>>,
    refresher: Option<JoinHandle<()>>,
    /// Cancelled when the shutdown deadline passes: the writer stops retrying.
    give_up: CancellationToken,
}

impl Pipeline {
    fn start(
        cfg: &ServeConfig,
        pool: &Pool,
        timescaledb: bool,
        layout: db::layout::Layout,
        drain: &CancellationToken,
    ) -> Self {
        let give_up = CancellationToken::new();
        let writer = Arc::new(CopyWriter::new(
            pool.clone(),
            cfg.pipeline.copy_retry_timeout,
            cfg.pipeline.id_conflict_window,
            layout,
            KeyWindows {
                recent: cfg.storage.key_window,
                archive: cfg.limits.max_past,
            },
            give_up.clone(),
            cfg.metrics_max_projects,
        ));
        let (late, refresher) = if timescaledb {
            let (late, task) = LateRefresher::spawn(
                pool.clone(),
                cfg.storage.late_refresh_every,
                cfg.storage.late_after,
                cfg.storage.late_settle,
            );
            (Some(late), Some(task))
        } else {
            retention::spawn(pool.clone(), &cfg.storage, drain.clone());
            (None, None)
        };
        let mut batchers = Vec::new();
        let buffers = Table::ALL.map(|table| {
            let (buffer, queue) = TableBuffer::new(table, cfg.pipeline.buffer_bytes);
            batchers.push(tokio::spawn(batcher::run(
                table,
                queue,
                writer.clone(),
                late.clone(),
                cfg.pipeline.clone(),
                drain.clone(),
            )));
            buffer
        });
        // `late` is dropped here: the batchers hold the only senders, so the
        // refresher's last round runs once they have all finished.
        spawn_buffer_gauges(buffers.to_vec(), drain.clone());
        Self {
            buffers,
            batchers,
            refresher,
            give_up,
        }
    }
}

/// The opened spool: intake appends to `log`, replay reads `reader`.
struct OpenSpool {
    log: Log,
    reader: Reader,
    backlog: Arc<Backlog>,
}

fn open_spool(
    cfg: &SpoolConfig,
    drain: &CancellationToken,
) -> Result<Option<OpenSpool>, ServerError> {
    let Some(dir) = &cfg.spool_dir else {
        return Ok(None);
    };
    let segment = cfg
        .spool_segment_bytes
        .min(cfg.spool_max_bytes / 4)
        .max(1 << 20);
    let (log, reader, recovery) =
        spool::log::open(dir, cfg.spool_max_bytes, segment, cfg.spool_reserve_bytes)?;
    tracing::info!(dir = %dir.display(), segments = recovery.segments, bytes = log.used(), torn_bytes = recovery.torn_bytes, "spool open; acks mean fsynced to the spool");
    let backlog = Arc::new(Backlog::default());
    spawn_spool_gauges(log.clone(), backlog.clone(), drain.clone());
    Ok(Some(OpenSpool {
        log,
        reader,
        backlog,
    }))
}

type Served = Result<(), tonic::transport::Error>;

/// Binds the native gRPC API (with health and reflection) and starts
/// serving it until `drain`; health turns NOT_SERVING as the drain starts.
async fn serve_grpc(
    cfg: &ServeConfig,
    intake: Arc<Intake>,
    pool: &Pool,
    drain: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<Served>), ServerError> {
    let auth = Arc::new(Authenticator::new(
        pool.clone(),
        cfg.security.key_required(cfg.listen),
        cfg.security.key_cache_ttl,
    ));
    if !auth.required() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "accepting requests without an API key (--allow-unauthenticated)");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TelemetryIngestServer<Api>>().await;
    let ingest = TelemetryIngestServer::new(Api::new(intake, auth, drain.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(cfg.limits.max_message_bytes);
    let (listener, addr) = crate::net::bind(cfg.listen).await?;
    tracing::info!(%addr, "gRPC ingest service listening");
    // Reflection lets grpcurl, grpcui and Postman call the service without
    // the proto files. Both versions: grpcurl before 1.9 asks v1alpha only.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let stop = drain.clone();
    let serve = crate::net::grpc_builder(cfg)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(cfg.security.max_concurrent_streams)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            stop.cancelled().await;
            health.set_not_serving::<TelemetryIngestServer<Api>>().await;
        });
    Ok((addr, tokio::spawn(serve)))
}

/// The tasks that end, in this order, once the drain has started.
struct Tasks {
    /// The receivers hold intake: they end before the batchers can.
    otlp: Vec<JoinHandle<()>>,
    replayer: Option<JoinHandle<()>>,
    batchers: Vec<JoinHandle<()>>,
    refresher: Option<JoinHandle<()>>,
}

/// Waits for the drain, then for every task in order within `deadline`.
/// Past it, `give_up` makes the writer answer every batch still owed "not
/// stored, resend" at once, those acks go out (within [`OWED_ACKS_GRACE`]),
/// and the result is [`ServerError::DeadlinePassed`], so that the process
/// exits non-zero and a supervisor sees an unclean stop. Stops the embedded
/// database last.
/// How long the pool's connections get to close before the embedded
/// database stops (each needs one poll of its task to send its Terminate).
const CONNECTIONS_CLOSE: Duration = Duration::from_millis(200);

async fn stop_in_order(
    serve: JoinHandle<Served>,
    tasks: Tasks,
    (database, pool): (Database, Pool),
    give_up: CancellationToken,
    deadline: Duration,
    drain: CancellationToken,
) -> Result<(), ServerError> {
    drain.cancelled().await;
    let mut all_done = Box::pin(async {
        let served = serve.await.expect("gRPC server panicked");
        for task in tasks.otlp {
            let _ = task.await;
        }
        if let Some(r) = tasks.replayer {
            let _ = r.await;
        }
        for b in tasks.batchers {
            let _ = b.await;
        }
        if let Some(r) = tasks.refresher {
            let _ = r.await;
        }
        served
    });
    let result = match tokio::time::timeout(deadline, &mut all_done).await {
        Ok(r) => r.map_err(ServerError::from),
        Err(_) => {
            tracing::error!(
                ?deadline,
                "shutdown deadline passed: answering the batches still owed \"not stored, resend\""
            );
            give_up.cancel();
            if tokio::time::timeout(OWED_ACKS_GRACE, &mut all_done)
                .await
                .is_err()
            {
                tracing::error!(
                    "some owed acks could not be sent; their clients resend unacknowledged batches"
                );
            }
            Err(ServerError::DeadlinePassed(deadline))
        }
    };
    // The pool's connections end before the database does: stopping it
    // under them would log each one's end as a connection error. Closing
    // drops the idle ones; each connection's task then says goodbye to the
    // server when next polled, which the pause lets happen.
    pool.close();
    if database.embedded.is_some() {
        tokio::time::sleep(CONNECTIONS_CLOSE).await;
    }
    // The service owns its embedded cluster, even one a crash left running.
    if let Err(e) = database.stop().await {
        tracing::error!(error = %e, "stopping the embedded PostgreSQL failed");
    }
    tracing::info!("stopped");
    result
}

fn spawn_buffer_gauges(buffers: Vec<TableBuffer>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.is_cancelled() {
            tick.tick().await;
            for b in &buffers {
                metrics::buffer_fill(b.table(), b.used());
            }
        }
    });
}

fn spawn_spool_gauges(log: Log, backlog: Arc<Backlog>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.is_cancelled() {
            tick.tick().await;
            let oldest = backlog.oldest_us.load(std::sync::atomic::Ordering::Relaxed);
            let age = if oldest == 0 {
                Duration::ZERO
            } else {
                std::time::SystemTime::now()
                    .duration_since(crate::time::from_unix_us(oldest))
                    .unwrap_or_default()
            };
            metrics::spool_state(log.used(), log.pending(), age, log.disk_free());
        }
    });
}
