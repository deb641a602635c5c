//! OTLP/gRPC: the collector's `LogsService`, `TraceService` and
//! `MetricsService`. The one place where [`OtlpError`] becomes a gRPC
//! status: RESOURCE_EXHAUSTED and UNAVAILABLE carry `RetryInfo` (the OTLP
//! exporters wait that long before retrying), other refusals carry none, so
//! the exporter drops the data instead of retrying in vain.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::LogsService,
    },
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::MetricsService,
    },
    trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::TraceService,
    },
};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{OtlpError, OtlpIntake, RequestMeta};

#[derive(Clone)]
pub struct OtlpGrpc(pub Arc<OtlpIntake>);

fn meta<T>(request: &Request<T>) -> RequestMeta {
    let header = |name: &str| {
        request
            .metadata()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    };
    RequestMeta {
        authorization: header("authorization"),
        project: header("x-project"),
    }
}

pub fn to_status(e: &OtlpError) -> Status {
    let code = e.kind().codes().grpc;
    match e.retry_after() {
        Some(delay) => Status::with_error_details(
            code,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::new(code, e.to_string()),
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let meta = meta(&request);
        let outcome = self.0.logs(request.into_inner(), &meta).await;
        let outcome = outcome.map_err(|e| to_status(&e))?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: outcome.partial(|rejected_log_records, error_message| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let meta = meta(&request);
        let outcome = self.0.traces(request.into_inner(), &meta).await;
        let outcome = outcome.map_err(|e| to_status(&e))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: outcome.partial(|rejected_spans, error_message| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let meta = meta(&request);
        let outcome = self.0.metrics(request.into_inner(), &meta).await;
        let outcome = outcome.map_err(|e| to_status(&e))?;
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: outcome.partial(|rejected_data_points, error_message| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::{buffer::AdmitError, intake::IngestError, row::Table};

    #[test]
    fn retry_info_only_where_a_retry_can_help() {
        let full = OtlpError::Refused(IngestError::Admit {
            sequence: 0,
            source: AdmitError::Full {
                table: Table::AgentEvents,
                capacity: 1,
                waited: Duration::from_secs(1),
            },
        });
        let s = to_status(&full);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(2))
        );
        let too_many = OtlpError::Refused(IngestError::TooManyRows {
            sequence: 0,
            rows: 10,
            max: 5,
        });
        let s = to_status(&too_many);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.get_details_retry_info().is_none());
        let s = to_status(&OtlpError::NotStored("database down".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.get_details_retry_info().is_some());
    }
}
