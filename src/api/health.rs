//! The health client (`agent-telemetry health`): asks a running service's
//! gRPC health service whether the ingest service is serving, over plain
//! text or TLS (src/client.rs). Container health checks need no other
//! probe.

use std::time::Duration;

use super::Api;
use crate::{
    client::{self, ClientError},
    config::ClientConfig,
    pb::wire::telemetry_ingest_server::TelemetryIngestServer,
};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Connect(#[from] ClientError),
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
pub async fn check(cfg: &ClientConfig, limit: Duration) -> Result<String, HealthError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let endpoint = cfg.endpoint.as_str();
    let check = async {
        let channel = client::connect(cfg, limit).await?;
        let key = client::bearer(cfg)?;
        let service = <TelemetryIngestServer<Api> as tonic::server::NamedService>::NAME;
        let status = HealthClient::new(channel)
            .check(client::authorized(
                &key,
                HealthCheckRequest {
                    service: service.to_owned(),
                },
            ))
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
