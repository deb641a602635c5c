//! OTLP/HTTP: `POST /v1/logs`, `/v1/traces` and `/v1/metrics` with a
//! protobuf (`application/x-protobuf`) or JSON (`application/json`) body,
//! gzip- or zstd-compressed or not. Copilot exports HTTP/JSON by default and its CLI
//! speaks nothing else. The one place where [`OtlpError`] becomes an HTTP
//! status, with a `google.rpc.Status` body in the request's encoding, as
//! the OTLP specification asks: 429 and 503 with `Retry-After` when a retry
//! can help, 400, 401 and 403 when it cannot.

use std::{future::Future, io::Read, sync::Arc};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
};
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use super::{OtlpError, OtlpIntake, Outcome, RequestMeta};
use crate::codes::ErrorKind;

#[derive(Clone)]
struct HttpState {
    otlp: Arc<OtlpIntake>,
    /// Largest body after decompression.
    max_bytes: usize,
}

pub fn router(otlp: Arc<OtlpIntake>, max_bytes: usize) -> Router {
    Router::new()
        .route("/v1/logs", post(logs))
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(HttpState { otlp, max_bytes })
}

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// Why a body could not be read (before any row is looked at).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    ContentType(String),
    #[error("unsupported content encoding {0:?}: send gzip, zstd or none")]
    ContentEncoding(String),
    #[error("the {0} body does not decompress: {1}")]
    Decompress(&'static str, std::io::Error),
    #[error("the body is larger than {0} bytes decompressed")]
    TooLarge(usize),
    #[error("the body is not a valid OTLP protobuf message: {0}")]
    Protobuf(prost::DecodeError),
    #[error("the body is not a valid OTLP JSON message: {0}")]
    Json(serde_json::Error),
}

impl BodyError {
    fn kind(&self) -> ErrorKind {
        match self {
            BodyError::ContentType(_) | BodyError::ContentEncoding(_) => {
                ErrorKind::UnsupportedMedia
            }
            BodyError::TooLarge(_) => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(BodyError::ContentType(ct.to_owned())),
    }
}

fn decode<T: Message + Default + DeserializeOwned>(
    headers: &HeaderMap,
    body: Bytes,
    encoding: Encoding,
    max_bytes: usize,
) -> Result<T, BodyError> {
    let ce = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = match ce.as_str() {
        "" | "identity" => body,
        "gzip" => inflate("gzip", flate2::read::GzDecoder::new(&body[..]), max_bytes)?,
        "zstd" => {
            let decoder = zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| BodyError::Decompress("zstd", e))?;
            inflate("zstd", decoder, max_bytes)?
        }
        other => return Err(BodyError::ContentEncoding(other.to_owned())),
    };
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(BodyError::Protobuf),
        Encoding::Json => serde_json::from_slice(&body).map_err(BodyError::Json),
    }
}

/// A compressed body, read up to one byte past the limit: a small body
/// that inflates without bound is refused, not held.
fn inflate(name: &'static str, r: impl Read, max_bytes: usize) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    r.take(max_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Decompress(name, e))?;
    if out.len() > max_bytes {
        return Err(BodyError::TooLarge(max_bytes));
    }
    Ok(Bytes::from(out))
}

fn reply<T: Message + Serialize>(status: StatusCode, encoding: Encoding, msg: &T) -> Response {
    let (ct, body) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", msg.encode_to_vec()),
        Encoding::Json => (
            "application/json",
            serde_json::to_vec(msg).expect("OTLP messages serialise"),
        ),
    };
    (status, [(header::CONTENT_TYPE, ct)], body).into_response()
}

/// A failed request's answer: a `google.rpc.Status` in the request's
/// encoding, with the HTTP status, code and `Retry-After` of the code table.
fn failure(kind: ErrorKind, message: String, encoding: Encoding) -> Response {
    let codes = kind.codes();
    let status = StatusCode::from_u16(codes.http).expect("the code table holds valid statuses");
    let code = codes.grpc;
    let mut response = match encoding {
        Encoding::Protobuf => {
            let s = tonic_types::pb::Status {
                code: code as i32,
                message,
                details: Vec::new(),
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                s.encode_to_vec(),
            )
                .into_response()
        }
        Encoding::Json => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "code": code as i32, "message": message }).to_string(),
        )
            .into_response(),
    };
    if let Some(after) = codes.retry_after {
        let secs = after.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs).expect("digits"),
        );
    }
    response
}

fn error_response(e: &OtlpError, encoding: Encoding) -> Response {
    failure(e.kind(), e.to_string(), encoding)
}

fn meta(headers: &HeaderMap) -> RequestMeta {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    };
    RequestMeta {
        authorization: header("authorization"),
        project: header("x-project"),
    }
}

/// Decode, hand to intake, answer: the same for all three signals.
async fn handle<Req, Resp, F, Fut>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Bytes,
    export: F,
    respond: impl FnOnce(Outcome) -> Resp,
) -> Response
where
    Req: Message + Default + DeserializeOwned,
    Resp: Message + Serialize,
    F: FnOnce(Req, RequestMeta) -> Fut,
    Fut: Future<Output = Result<Outcome, OtlpError>>,
{
    let encoding = match encoding_of(headers) {
        Ok(e) => e,
        Err(e) => return failure(e.kind(), e.to_string(), Encoding::Json),
    };
    let request: Req = match decode(headers, body, encoding, state.max_bytes) {
        Ok(r) => r,
        Err(e) => return failure(e.kind(), e.to_string(), encoding),
    };
    match export(request, meta(headers)).await {
        Ok(outcome) => reply(StatusCode::OK, encoding, &respond(outcome)),
        Err(e) => error_response(&e, encoding),
    }
}

async fn logs(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let otlp = s.otlp.clone();
    handle(
        &s,
        &headers,
        body,
        |req: ExportLogsServiceRequest, meta| async move { otlp.logs(req, &meta).await },
        |o| ExportLogsServiceResponse {
            partial_success: o.partial(|rejected_log_records, error_message| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        },
    )
    .await
}

async fn traces(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let otlp = s.otlp.clone();
    handle(
        &s,
        &headers,
        body,
        |req: ExportTraceServiceRequest, meta| async move { otlp.traces(req, &meta).await },
        |o| ExportTraceServiceResponse {
            partial_success: o.partial(|rejected_spans, error_message| ExportTracePartialSuccess {
                rejected_spans,
                error_message,
            }),
        },
    )
    .await
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let otlp = s.otlp.clone();
    handle(
        &s,
        &headers,
        body,
        |req: ExportMetricsServiceRequest, meta| async move { otlp.metrics(req, &meta).await },
        |o| ExportMetricsServiceResponse {
            partial_success: o.partial(|rejected_data_points, error_message| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        },
    )
    .await
}
