//! Stage 7: **ack**. What became of a batch's rows, and the `BatchAck` the
//! client gets for it. A piece's outcome is produced by [`crate::copy::writer`]
//! only after the COPY holding its rows has committed (or finally failed), so
//! an ack built from it never claims more than the database holds.

use crate::{pb, validate::Rejection};

/// The outcome of one piece (the accepted rows of one batch).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PieceOutcome {
    /// Rows newly committed.
    pub stored: u32,
    /// Rows found already stored (same id and timestamp): a resend.
    pub duplicates: u32,
    /// Rows whose id is stored with another timestamp (each also in
    /// `rejected`).
    pub conflicts: u32,
    /// Rows the database refused although they passed validation.
    pub rejected: Vec<Rejection>,
    /// Set when some rows could not be committed at all.
    pub failure: Option<FlushFailure>,
}

/// Accepted rows that could not be committed; the client should resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushFailure {
    pub message: String,
    pub retryable: bool,
}

/// Builds a batch's ack from the rows validation refused and the outcome of
/// the rows it accepted (`None` when it accepted none).
pub fn batch_ack(
    sequence: u64,
    received: usize,
    mut rejected: Vec<Rejection>,
    outcome: Option<PieceOutcome>,
) -> pb::BatchAck {
    let mut ack = pb::BatchAck {
        sequence,
        received: received as u32,
        ..Default::default()
    };
    if let Some(o) = outcome {
        ack.stored = o.stored;
        ack.duplicates = o.duplicates;
        ack.conflicts = o.conflicts;
        rejected.extend(o.rejected);
        if let Some(f) = o.failure {
            ack.error = f.message;
            ack.retryable = f.retryable;
        }
    }
    rejected.sort_by_key(|r| r.index);
    ack.rejected = rejected.into_iter().map(Into::into).collect();
    ack
}
