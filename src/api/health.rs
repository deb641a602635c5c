//! The health client (`agent-telemetry health`): asks a running service's
//! gRPC health service whether the ingest service is serving. Container
//! health checks need no other probe.

use std::time::Duration;

use super::Api;
use crate::pb::wire::telemetry_ingest_server::TelemetryIngestServer;

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
pub async fn check(endpoint: &str, limit: Duration) -> Result<String, HealthError> {
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
