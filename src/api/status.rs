//! The one place where errors become gRPC codes. A unary call gets the
//! error as its status; a stream gets it as that batch's ack (with
//! `retryable`), so one refused batch does not end the stream and cost the
//! acks of the batches behind it.

use tonic::{Code, Status};

use super::intake::IngestError;
use crate::{auth::AuthError, buffer::AdmitError, db::dims::DimsError, pb, spool::log::LogError};

/// Code and whether resending the same batch later can succeed.
fn classify(e: &IngestError) -> (Code, bool) {
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
    let (code, reason) = match e {
        AuthError::Missing => (Code::Unauthenticated, "missing"),
        AuthError::Malformed => (Code::Unauthenticated, "malformed"),
        AuthError::Invalid => (Code::Unauthenticated, "invalid"),
        AuthError::Unavailable(_) => (Code::Unavailable, "unavailable"),
    };
    crate::metrics::auth_refused(reason);
    Status::new(code, e.to_string())
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
