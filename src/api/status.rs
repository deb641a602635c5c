//! The one place where errors become gRPC codes. A unary call gets the
//! error as its status; a stream gets it as that batch's ack (with
//! `retryable`), so one refused batch does not end the stream and cost the
//! acks of the batches behind it.

use tonic::{Code, Status};

use super::intake::IngestError;
use crate::{auth::AuthError, buffer::AdmitError, db::dims::DimsError, pb, spool::log::LogError};

/// Code and whether resending the same batch later can succeed.
pub(crate) fn classify(e: &IngestError) -> (Code, bool) {
    match e {
        IngestError::TooManyRows { .. } => (Code::InvalidArgument, false),
        IngestError::Admit { source, .. } => match source {
            AdmitError::Full { .. } => (Code::ResourceExhausted, true),
            AdmitError::TooLarge { .. } => (Code::InvalidArgument, false),
            AdmitError::ShuttingDown => (Code::Unavailable, true),
        },
        IngestError::Dimensions { source, .. } => match source {
            DimsError::Invalid { .. } => (Code::InvalidArgument, false),
            DimsError::Pool(_) | DimsError::Db(_) => (Code::Unavailable, true),
        },
        IngestError::Spool { source, .. } => match source {
            LogError::Full { .. } => (Code::ResourceExhausted, true),
            LogError::Io { .. } | LogError::Closed => (Code::Unavailable, true),
        },
    }
}

/// Whether resending the same batch later can succeed.
pub fn retryable(e: &IngestError) -> bool {
    classify(e).1
}

pub fn auth_status(e: &AuthError) -> Status {
    count_auth_refusal(e);
    Status::new(auth_code(e), e.to_string())
}

pub(crate) fn auth_code(e: &AuthError) -> Code {
    match e {
        AuthError::Unavailable(_) => Code::Unavailable,
        _ => Code::Unauthenticated,
    }
}

/// Counts a refused request in the metrics, by reason.
pub(crate) fn count_auth_refusal(e: &AuthError) {
    crate::metrics::auth_refused(match e {
        AuthError::Missing => "missing",
        AuthError::Malformed => "malformed",
        AuthError::Invalid => "invalid",
        AuthError::Unavailable(_) => "unavailable",
    });
}

pub fn to_status(e: &IngestError) -> Status {
    Status::new(classify(e).0, e.to_string())
}

/// The ack a stream sends for a batch refused whole.
pub fn to_ack(e: &IngestError, sequence: u64, received: usize) -> pb::BatchAck {
    pb::BatchAck {
        sequence,
        received: received as u32,
        error: e.to_string(),
        retryable: classify(e).1,
        ..Default::default()
    }
}
