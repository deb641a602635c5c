//! Serving OTLP: the OTLP/gRPC and OTLP/HTTP receivers that are on, each
//! on its own address, over one [`OtlpIntake`].

use std::{net::SocketAddr, sync::Arc};

use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;

use super::{OtlpIntake, OtlpSettings, grpc::OtlpGrpc};
use crate::{
    auth::Authenticator,
    config::ServeConfig,
    intake::Intake,
    net::ListenError,
    price::{PriceError, PriceTable},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Prices(#[from] PriceError),
    #[error("OTLP/gRPC receiver: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The running OTLP receivers.
pub struct Receivers {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// End once drained: they hold intake, so they end before the batchers.
    pub tasks: Vec<JoinHandle<()>>,
}

/// What can be wrong with the receivers' settings, found before the
/// database work starts: the price table, loaded, and each port, bound and
/// released at once (it is bound for good only once the service can serve,
/// so that clients are refused, not left waiting, while it migrates).
pub struct Checked {
    prices: PriceTable,
}

pub async fn check(cfg: &ServeConfig) -> Result<Checked, ServeError> {
    let o = &cfg.otlp;
    let on = o.otlp_grpc_listen.0.is_some() || o.otlp_http_listen.0.is_some();
    let prices = match &o.price_table {
        Some(path) if on => PriceTable::load(path)?,
        _ => PriceTable::default(),
    };
    for addr in [o.otlp_grpc_listen.0, o.otlp_http_listen.0]
        .into_iter()
        .flatten()
    {
        crate::net::bind(addr).await?;
    }
    Ok(Checked { prices })
}

/// Starts the OTLP/gRPC and OTLP/HTTP receivers that are on; both stop
/// taking requests when `drain` is cancelled and finish the ones they have.
pub async fn start(
    cfg: &ServeConfig,
    checked: Checked,
    intake: Arc<Intake>,
    pool: &deadpool_postgres::Pool,
    drain: &CancellationToken,
) -> Result<Receivers, ServeError> {
    let o = &cfg.otlp;
    let mut receivers = Receivers {
        grpc_addr: None,
        http_addr: None,
        tasks: Vec::new(),
    };
    let addrs = [o.otlp_grpc_listen.0, o.otlp_http_listen.0];
    if addrs.iter().all(Option::is_none) {
        return Ok(receivers);
    }
    let Checked { prices } = checked;
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
    let prices = Arc::new(arc_swap::ArcSwap::from_pointee(prices));
    // Registered here, before the receivers take requests: from now on a
    // SIGHUP reloads instead of ending the process.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => receivers.tasks.push(tokio::spawn(reload_prices_on_sighup(
            hangups,
            o.price_table.clone(),
            prices.clone(),
            drain.clone(),
        ))),
        Err(e) => {
            tracing::warn!("SIGHUP cannot be handled ({e}): the price table loads at start only")
        }
    }
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
        let (listener, local) = crate::net::bind(addr).await?;
        let svc = OtlpGrpc(otlp.clone());
        let max = o.otlp_max_message_bytes;
        // Gemini CLI always compresses with gzip; the Collector's exporters
        // may send zstd.
        let serve = crate::net::grpc_builder(cfg)?
            .add_service(
                LogsServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .max_decoding_message_size(max),
            )
            .add_service(
                TraceServiceServer::new(svc.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
                    .max_decoding_message_size(max),
            )
            .add_service(
                MetricsServiceServer::new(svc)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd)
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
        let (listener, local) = crate::net::bind(addr).await?;
        let tls = crate::net::http_tls(cfg).await?;
        let app = super::http::router(otlp, o.otlp_max_message_bytes);
        let stop = drain.clone();
        tracing::info!(addr = %local, tls = tls.is_some(), "OTLP/HTTP receiver listening");
        receivers.http_addr = Some(local);
        receivers.tasks.push(tokio::spawn(async move {
            let served = match tls {
                // axum's own server speaks plain HTTP only; axum-server
                // serves the same router over rustls.
                Some(tls) => {
                    let handle = axum_server::Handle::new();
                    let on_stop = handle.clone();
                    tokio::spawn(async move {
                        stop.cancelled().await;
                        // As axum's graceful shutdown: requests under way
                        // finish (their rows are being committed).
                        on_stop.graceful_shutdown(None);
                    });
                    match listener
                        .into_std()
                        .and_then(|l| axum_server::from_tcp_rustls(l, tls))
                    {
                        Ok(server) => server.handle(handle).serve(app.into_make_service()).await,
                        Err(e) => Err(e),
                    }
                }
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "OTLP/HTTP receiver failed");
            }
        }));
    }
    Ok(receivers)
}

/// SIGHUP reloads the price table (`--price-table`) without a restart:
/// prices change more often than services restart. A table that does not
/// load is logged and the one in use kept; requests under way finish with
/// the table they started with.
async fn reload_prices_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    path: Option<std::path::PathBuf>,
    prices: Arc<arc_swap::ArcSwap<PriceTable>>,
    drain: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = drain.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        let Some(path) = &path else {
            tracing::info!("SIGHUP: no --price-table to reload");
            continue;
        };
        match PriceTable::load(path) {
            Ok(table) => {
                tracing::info!(models = table.len(), path = %path.display(), "SIGHUP: price table reloaded");
                prices.store(Arc::new(table));
                crate::metrics::price_table_reload("ok");
            }
            Err(e) => {
                tracing::error!("SIGHUP: {e}; the price table in use is kept");
                crate::metrics::price_table_reload("error");
            }
        }
    }
}
