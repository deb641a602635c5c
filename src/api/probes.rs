//! The metrics port (`--metrics-listen`): `/metrics` for Prometheus (the
//! service's metrics and its process's: CPU, memory, open files),
//! `/healthz` (the process answers) and `/readyz` (migrated, and the pool
//! reaches the database; 503 before that, while draining and while the
//! database is away) for Kubernetes probes. Any other path is 404.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Probes {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    /// The pool once migrations are done.
    ready: watch::Receiver<Option<Pool>>,
    drain: CancellationToken,
}

/// Serves the metrics port on `listener` until the process ends (it must
/// answer scrapes through the drain). Returns the sender that marks the
/// service ready.
pub fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    drain: CancellationToken,
) -> watch::Sender<Option<Pool>> {
    let (ready_tx, ready) = watch::channel(None);
    let upkeep = handle.clone();
    // The exporter's own listener did this: without it histograms grow.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let state = Arc::new(Probes {
        handle,
        process: metrics_process::Collector::default(),
        ready,
        drain,
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics port failed");
        }
    });
    ready_tx
}

async fn metrics(State(p): State<Arc<Probes>>) -> String {
    p.process.collect();
    p.handle.render()
}

async fn readyz(State(p): State<Arc<Probes>>) -> (StatusCode, String) {
    if p.drain.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let Some(pool) = p.ready.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: migrations not done\n".into(),
        );
    };
    let check = async {
        let client = pool
            .get()
            .await
            .map_err(|e| crate::db::error::describe_pool(&e))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| crate::db::error::describe(&e))?;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database: no answer within 2 s\n".into(),
        ),
    }
}

/// The address a bound metrics listener serves on, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("Prometheus metrics at http://{addr}/metrics, probes at /healthz and /readyz")
}
