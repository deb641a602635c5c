//! Wiring: database (given or embedded) → migrations → pool → buffers,
//! batchers and writer → gRPC service; and the shutdown order:
//!
//! 1. drain starts (signal or [`Running::shutdown`]): health turns
//!    NOT_SERVING, no new connections, streams stop reading new batches and
//!    batchers flush at once;
//! 2. every batch already read is committed and acked, streams end with OK;
//! 3. batchers finish their last flushes; the embedded database stops.
//!
//! If that takes longer than `--shutdown-timeout`, the writer stops retrying
//! (the acks still waiting say "not stored, resend") and the service exits.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

use crate::{
    api::{Api, intake::Intake},
    auth::Authenticator,
    buffer::{TableBuffer, batcher},
    config::{DatabaseConfig, ServeConfig, StorageConfig},
    copy::writer::CopyWriter,
    db::{
        self, DbError,
        dims::Dimensions,
        embedded::{Cluster, ClusterOptions, EmbeddedError},
        migrate::{self, MigrateError},
    },
    maintain::{refresh::LateRefresher, retention},
    metrics,
    otlp::{OtlpIntake, OtlpSettings, grpc::OtlpGrpc, price::PriceTable},
    pb::wire::telemetry_ingest_server::TelemetryIngestServer,
    row::Table,
    spool::{self, log::LogError, replay::Backlog},
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    Prices(#[from] crate::otlp::price::PriceError),
    #[error("OTLP/HTTP server: {0}")]
    Http(std::io::Error),
    #[error("TLS: cannot read {path}: {source}")]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The database the service writes to.
pub struct Database {
    pub conn: String,
    /// The embedded cluster, when we started one (stopped at shutdown).
    pub embedded: Option<Cluster>,
    /// Whether this process started the embedded cluster (false when it was
    /// running already, e.g. under a `serve` while `keys` runs).
    pub started_here: bool,
}

impl Database {
    /// Stops the embedded cluster if this process started it (commands that
    /// run beside a service must not stop the service's database).
    pub async fn release(self) -> Result<(), EmbeddedError> {
        match self.embedded {
            Some(cluster) if self.started_here => {
                tokio::task::spawn_blocking(move || cluster.stop())
                    .await
                    .expect("embedded stop panicked")
            }
            _ => Ok(()),
        }
    }
}

const EMBEDDED_DB: &str = "agent_telemetry";

/// The embedded default's directory when none is configured.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/agent-telemetry");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("agent-telemetry")
}

/// `DATABASE_URL` if given, else the embedded cluster (initialised on first
/// use, started if not running).
pub async fn open_database(cfg: &DatabaseConfig) -> Result<Database, ServerError> {
    if let Some(url) = &cfg.database_url {
        return Ok(Database {
            conn: url.clone(),
            embedded: None,
            started_here: false,
        });
    }
    let dir = cfg.data_dir.clone().unwrap_or_else(default_data_dir);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(EmbeddedError::from)?;
        // The server's user must be able to pass through it (see embedded.rs).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(EmbeddedError::from)?;
    }
    let opts = ClusterOptions {
        data_dir: dir.join("postgres"),
        bindir: cfg.pg_bindir.clone(),
        durable: true,
        port: 5432,
        tcp: false,
    };
    let (cluster, started_here) = tokio::task::spawn_blocking(move || {
        let c = Cluster::open(opts)?;
        let running = c.is_running();
        c.start()?;
        Ok::<_, EmbeddedError>((c, !running))
    })
    .await
    .expect("embedded start panicked")?;
    tracing::info!(data_dir = %cluster.data_dir().display(), bindir = %cluster.bindir().display(), "embedded PostgreSQL running");
    db::ensure_database(&cluster.conn_string("postgres"), EMBEDDED_DB).await?;
    Ok(Database {
        conn: cluster.conn_string(EMBEDDED_DB),
        embedded: Some(cluster),
        started_here,
    })
}

/// Checks the storage settings, then migrates. `max_past` is the oldest row
/// ingest accepts (retention must keep rows longer than that).
pub async fn run_migrations(
    conn: &str,
    storage: &StorageConfig,
    max_past: Duration,
) -> Result<migrate::Report, ServerError> {
    storage.check(max_past).map_err(MigrateError::Settings)?;
    // One connection, closed before the pool opens: some servers (the test
    // suite's PGlite) take one client at a time.
    let mut client = db::connect(conn).await?;
    Ok(migrate::run(&mut client, storage).await?)
}

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
    if let Some(addr) = cfg.metrics_addr() {
        // Latencies as histograms, not the exporter's default summaries:
        // bucket counts add up across instances, so a dashboard can show
        // one p99 for a whole fleet (quantiles of summaries cannot be merged).
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                crate::metrics::LATENCY_BUCKETS,
            )
            .and_then(|b| b.install())
            .map_err(|source| ServerError::Metrics { addr, source })?;
        metrics::describe();
        metrics::zero();
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    let database = open_database(&cfg.database).await?;
    let report = run_migrations(&database.conn, &cfg.storage, cfg.limits.max_past).await?;
    tracing::info!(
        applied = report.applied.len(),
        already = report.already,
        "migrations done"
    );
    tracing::info!("storage mode: {}", report.mode);

    let pool = db::pool(&database.conn, cfg.database.pool_size)?;
    let give_up = CancellationToken::new();
    let writer = Arc::new(CopyWriter::new(
        pool.clone(),
        cfg.pipeline.copy_retry_timeout,
        cfg.pipeline.id_conflict_window,
        give_up.clone(),
    ));
    // After the ack: late-data refreshes (TimescaleDB) or our own retention (plain).
    let timescaledb = report.mode.is_timescaledb();
    let (late, refresher) = if timescaledb {
        let (late, task) = LateRefresher::spawn(
            pool.clone(),
            cfg.storage.late_refresh_every,
            cfg.storage.late_after,
        );
        (Some(late), Some(task))
    } else {
        retention::spawn(pool.clone(), &cfg.storage, drain.clone());
        (None, None)
    };
    let mut batchers = Vec::new();
    let mut buffers = Vec::new();
    for table in Table::ALL {
        let (buffer, queue) = TableBuffer::new(table, cfg.pipeline.buffer_bytes);
        batchers.push(tokio::spawn(batcher::run(
            table,
            queue,
            writer.clone(),
            late.clone(),
            cfg.pipeline.clone(),
            drain.clone(),
        )));
        buffers.push(buffer);
    }
    spawn_buffer_gauges(buffers.clone(), drain.clone());
    let mut intake = Intake {
        events: buffers[0].clone(),
        messages: buffers[1].clone(),
        dims: Arc::new(Dimensions::new(pool.clone(), cfg.projects.clone())),
        limits: cfg.limits.clone(),
        pipeline: cfg.pipeline.clone(),
        late_after: timescaledb.then_some(cfg.storage.late_after),
        spool: None,
    };
    drop(buffers);
    // The batchers hold the only senders now: the refresher's last round
    // runs once they have all finished.
    drop(late);
    let auth = Arc::new(Authenticator::new(
        pool.clone(),
        cfg.security.key_required(cfg.listen),
        cfg.security.key_cache_ttl,
    ));
    if !auth.required() && !cfg.listen.ip().is_loopback() {
        tracing::warn!(listen = %cfg.listen, "accepting requests without an API key (--allow-unauthenticated)");
    }
    // With the spool, the replayer is intake's first client: it must end
    // before the batchers can.
    let replayer = match &cfg.spool.spool_dir {
        None => None,
        Some(dir) => {
            let segment = cfg
                .spool
                .spool_segment_bytes
                .min(cfg.spool.spool_max_bytes / 4)
                .max(1 << 20);
            let (log, reader, recovery) =
                spool::log::open(dir, cfg.spool.spool_max_bytes, segment)?;
            tracing::info!(dir = %dir.display(), segments = recovery.segments, bytes = log.used(), torn_bytes = recovery.torn_bytes, "spool open; acks mean fsynced to the spool");
            intake.spool = Some(log.clone());
            let backlog = Arc::new(Backlog::default());
            spawn_spool_gauges(log, backlog.clone(), drain.clone());
            Some((reader, backlog))
        }
    };
    let intake = Arc::new(intake);
    let replayer = replayer.map(|(reader, backlog)| {
        tokio::spawn(spool::replay::run(
            reader,
            intake.clone(),
            backlog,
            drain.clone(),
        ))
    });

    let otlp = start_otlp(&cfg, intake.clone(), &pool, &drain).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TelemetryIngestServer<Api>>().await;
    let ingest = TelemetryIngestServer::new(Api::new(intake, auth, drain.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(cfg.limits.max_message_bytes);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(%addr, "gRPC ingest service listening");

    let stop = drain.clone();
    let builder = grpc_builder(&cfg)?;
    // Reflection lets grpcurl, grpcui and Postman call the service without
    // the proto files. Both versions: grpcurl before 1.9 asks v1alpha only.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let serve = builder
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
    let deadline = cfg.shutdown_timeout;
    let drain_started = drain.clone();
    let done = tokio::spawn(async move {
        let serve = tokio::spawn(serve);
        drain_started.cancelled().await;
        let drained = tokio::time::timeout(deadline, async {
            let served = serve.await.expect("gRPC server panicked");
            // The receivers hold intake: they end before the batchers can.
            for task in otlp.tasks {
                let _ = task.await;
            }
            if let Some(r) = replayer {
                let _ = r.await;
            }
            for b in batchers {
                let _ = b.await;
            }
            if let Some(r) = refresher {
                let _ = r.await;
            }
            served
        })
        .await;
        let result = match drained {
            Ok(r) => r.map_err(ServerError::from),
            Err(_) => {
                tracing::error!(
                    ?deadline,
                    "shutdown deadline passed: exiting with unacknowledged batches left to their clients"
                );
                give_up.cancel();
                Ok(())
            }
        };
        if let Some(cluster) = database.embedded {
            let stopped = tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .expect("embedded stop panicked");
            if let Err(e) = stopped {
                tracing::error!(error = %e, "stopping the embedded PostgreSQL failed");
            }
        }
        tracing::info!("stopped");
        result
    });
    Ok(Running {
        addr,
        otlp_grpc_addr: otlp.grpc_addr,
        otlp_http_addr: otlp.http_addr,
        drain,
        done,
    })
}

/// A tonic server builder with the TLS settings, if any.
fn grpc_builder(cfg: &ServeConfig) -> Result<tonic::transport::Server, ServerError> {
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&cfg.security.tls_cert, &cfg.security.tls_key) {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ServerError::Tls {
                path: path.clone(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        tracing::info!(cert = %cert.display(), "serving gRPC over TLS");
    }
    Ok(builder)
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Listen { addr, source })?;
    Ok((listener, local))
}

/// The running OTLP receivers.
struct OtlpReceivers {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the OTLP/gRPC and OTLP/HTTP receivers that are on; both stop
/// taking requests when `drain` is cancelled and finish the ones they have.
async fn start_otlp(
    cfg: &ServeConfig,
    intake: Arc<Intake>,
    pool: &deadpool_postgres::Pool,
    drain: &CancellationToken,
) -> Result<OtlpReceivers, ServerError> {
    let o = &cfg.otlp;
    let mut receivers = OtlpReceivers {
        grpc_addr: None,
        http_addr: None,
        tasks: Vec::new(),
    };
    let addrs = [o.otlp_grpc_listen.0, o.otlp_http_listen.0];
    if addrs.iter().all(Option::is_none) {
        return Ok(receivers);
    }
    let prices = match &o.price_table {
        Some(path) => PriceTable::load(path)?,
        None => PriceTable::default(),
    };
    // Keys are required as for the native API, by the receivers' own addresses.
    let required = addrs
        .iter()
        .flatten()
        .any(|a| cfg.security.key_required(*a));
    let auth = Arc::new(Authenticator::new(
        pool.clone(),
        required,
        cfg.security.key_cache_ttl,
    ));
    let otlp = Arc::new(OtlpIntake::new(
        intake,
        auth,
        OtlpSettings {
            prices,
            default_project: o.otlp_default_project.clone(),
        },
    ));
    if let Some(addr) = o.otlp_grpc_listen.0 {
        use opentelemetry_proto::tonic::collector::{
            logs::v1::logs_service_server::LogsServiceServer,
            metrics::v1::metrics_service_server::MetricsServiceServer,
            trace::v1::trace_service_server::TraceServiceServer,
        };
        let (listener, local) = bind(addr).await?;
        let svc = OtlpGrpc(otlp.clone());
        let max = o.otlp_max_message_bytes;
        // Gemini CLI always compresses with gzip.
        let serve = grpc_builder(cfg)?
            .add_service(
                LogsServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            )
            .add_service(
                TraceServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            )
            .add_service(
                MetricsServiceServer::new(svc)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                let stop = drain.clone();
                async move { stop.cancelled().await }
            });
        tracing::info!(addr = %local, "OTLP/gRPC receiver listening");
        receivers.grpc_addr = Some(local);
        receivers.tasks.push(tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "OTLP/gRPC receiver failed");
            }
        }));
    }
    if let Some(addr) = o.otlp_http_listen.0 {
        let (listener, local) = bind(addr).await?;
        if cfg.security.tls_cert.is_some() {
            tracing::warn!(addr = %local, "the OTLP/HTTP receiver serves plain HTTP: put a TLS proxy in front of it");
        }
        let app = crate::otlp::http::router(otlp, o.otlp_max_message_bytes);
        let stop = drain.clone();
        tracing::info!(addr = %local, "OTLP/HTTP receiver listening");
        receivers.http_addr = Some(local);
        receivers.tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %ServerError::Http(e), "OTLP/HTTP receiver failed");
            }
        }));
    }
    Ok(receivers)
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

fn spawn_spool_gauges(log: spool::log::Log, backlog: Arc<Backlog>, stop: CancellationToken) {
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
            metrics::spool_state(log.used(), age);
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("health check of {endpoint} failed: {status}")]
    Check {
        endpoint: String,
        status: tonic::Status,
    },
    #[error("{endpoint} is not serving ({status})")]
    NotServing { endpoint: String, status: String },
    #[error("no answer from {0} in time")]
    Timeout(String),
}

/// Asks `endpoint`'s gRPC health service about the ingest service (not the
/// server as a whole: that turns NOT_SERVING as soon as a drain starts).
pub async fn health_check(endpoint: &str, limit: Duration) -> Result<String, HealthError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map(|e| e.connect_timeout(limit))
            .map_err(|source| HealthError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect()
            .await
            .map_err(|source| HealthError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let service = <TelemetryIngestServer<Api> as tonic::server::NamedService>::NAME;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|status| HealthError::Check {
                endpoint: endpoint.to_owned(),
                status,
            })?
            .into_inner()
            .status();
        match status {
            ServingStatus::Serving => Ok(format!("{service}: SERVING")),
            other => Err(HealthError::NotServing {
                endpoint: endpoint.to_owned(),
                status: other.as_str_name().to_owned(),
            }),
        }
    };
    tokio::time::timeout(limit, check)
        .await
        .map_err(|_| HealthError::Timeout(endpoint.to_owned()))?
}
