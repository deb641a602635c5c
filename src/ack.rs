//! Stage 5: **ack**. What became of a batch's rows, as typed values: row
//! [`Rejection`]s, a piece's [`PieceOutcome`] and a batch's
//! [`BatchOutcome`]. A piece's outcome is produced by [`crate::copy::writer`]
//! only after the COPY holding its rows has committed (or finally failed), so
//! an outcome built from it never claims more than the database holds.
//!
//! The wire form (`pb::BatchAck`) is built from a [`BatchOutcome`] at the
//! gRPC edge alone (`crate::api::ack`); OTLP and spool replay read the
//! typed outcome.

use std::borrow::Cow;

use crate::codes::ErrorKind;

/// Why one row (or one session of a batch) was not accepted. Resending it
/// unchanged will not help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position of the row in its batch, from 0.
    pub index: u32,
    pub field: Cow<'static, str>,
    pub reason: String,
    pub kind: RejectionKind,
}

/// What kind of refusal a row got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// Content the service cannot store.
    Invalid,
    /// The row names a project its API key may not write to.
    Denied,
    /// The row's id is stored with another timestamp.
    Conflict,
}

impl RejectionKind {
    /// Its line in the code table (`RowRejection.code` is the gRPC name).
    pub const fn error_kind(self) -> ErrorKind {
        match self {
            RejectionKind::Invalid => ErrorKind::InvalidArgument,
            RejectionKind::Denied => ErrorKind::PermissionDenied,
            RejectionKind::Conflict => ErrorKind::AlreadyExists,
        }
    }
}

impl Rejection {
    pub fn new(index: u32, field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            index,
            field: field.into(),
            reason: reason.into(),
            kind: RejectionKind::Invalid,
        }
    }

    pub fn denied(index: u32, field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Denied,
            ..Self::new(index, field, reason)
        }
    }

    pub fn conflict(index: u32, reason: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Conflict,
            ..Self::new(index, "id", reason)
        }
    }

    /// The same refusal for the row at `index`.
    pub fn at(&self, index: u32) -> Self {
        Self {
            index,
            ..self.clone()
        }
    }
}

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
    pub failure: Option<Failure>,
}

/// Why a batch, or the accepted rows of one, were not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub kind: ErrorKind,
}

impl Failure {
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

/// What became of one batch: the typed form of its ack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub sequence: u64,
    /// Rows the batch held (sessions not counted).
    pub received: u32,
    pub stored: u32,
    pub duplicates: u32,
    pub conflicts: u32,
    /// Rows appended to the spool (spool mode), to be stored by replay.
    pub spooled: u32,
    /// Rows refused, by validation or by the database, in index order.
    pub rejected: Vec<Rejection>,
    /// Chat sessions of the batch that were refused (their messages are
    /// refused too when the service knows no other copy of the session).
    pub sessions_rejected: Vec<Rejection>,
    /// Set when the batch was refused whole, or its accepted rows could not
    /// be committed: the client should resend when it is retryable.
    pub failure: Option<Failure>,
}

impl BatchOutcome {
    /// A batch refused whole: none of its rows is stored.
    pub fn refused(sequence: u64, received: usize, failure: Failure) -> Self {
        Self {
            sequence,
            received: received as u32,
            failure: Some(failure),
            ..Default::default()
        }
    }

    /// A batch's outcome from the rows validation refused and the outcome
    /// of the rows it accepted (`None` when it accepted none).
    pub fn of(
        sequence: u64,
        received: usize,
        mut rejected: Vec<Rejection>,
        piece: Option<PieceOutcome>,
    ) -> Self {
        let mut out = Self {
            sequence,
            received: received as u32,
            ..Default::default()
        };
        if let Some(p) = piece {
            out.stored = p.stored;
            out.duplicates = p.duplicates;
            out.conflicts = p.conflicts;
            rejected.extend(p.rejected);
            out.failure = p.failure;
        }
        rejected.sort_by_key(|r| r.index);
        out.rejected = rejected;
        out
    }

    /// Whether the batch should be sent again.
    pub fn retryable(&self) -> bool {
        self.failure.as_ref().is_some_and(Failure::retryable)
    }

    /// Rows neither stored, found stored, spooled nor rejected one by one:
    /// those of a failure.
    pub fn lost(&self) -> u32 {
        self.received.saturating_sub(
            self.stored + self.duplicates + self.spooled + self.rejected.len() as u32,
        )
    }
}
