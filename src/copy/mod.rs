//! Stage 4: **copy**, and the format it copies.
//!
//! [`encode`] is pure: checked rows in, bytes of PostgreSQL's binary COPY
//! format out (one buffer per batch, no per-row allocation); intake calls it
//! (stage 2) and hands the bytes on as a [`Piece`]. [`writer`] does the IO:
//! one `COPY … FROM STDIN (FORMAT binary)` per flush, committed before any
//! piece of it is resolved, with the statements of [`statements`];
//! [`keys`] finds which rows are stored already (resends, reused ids);
//! [`recent`] remembers the keys it committed lately and is copying now, so
//! that a client's resend costs no failed COPY.

pub mod encode;
pub mod keys;
mod recent;
mod statements;
pub mod writer;

use std::ops::Range;

use bytes::Bytes;
use tokio::{
    sync::{OwnedSemaphorePermit, oneshot},
    time::Instant,
};

use crate::ack::PieceOutcome;

/// The accepted rows of one batch, encoded, on their way to a COPY.
#[derive(Debug)]
pub struct Piece {
    /// Rows in binary COPY format, back to back (no header or trailer).
    pub data: Bytes,
    /// End offset in `data` of each row, so a flush can be split by row.
    pub row_ends: Vec<u32>,
    /// The client's index of each row in its batch (rejected rows leave gaps).
    pub row_index: Vec<u32>,
    /// Each row's project and cost (nano-USD), counted per project once
    /// the row is newly stored (`agent_telemetry_project_*`).
    pub row_tally: Vec<(i32, i64)>,
    /// Each row's key (id, timestamp in µs since 2000-01-01), as intake
    /// checked it: what the writer dedupes by, without parsing the bytes.
    pub row_keys: Vec<(uuid::Uuid, i64)>,
    /// Hours holding late rows of this piece, sorted (see
    /// [`crate::maintain::refresh`]); usually empty.
    pub late_hours: Vec<i64>,
    pub enqueued: Instant,
    /// Where the outcome goes; resolved only after commit.
    pub done: oneshot::Sender<PieceOutcome>,
    /// Buffer space held until the piece is resolved (dropped with it).
    pub permit: OwnedSemaphorePermit,
}

impl Piece {
    pub fn rows(&self) -> usize {
        self.row_ends.len()
    }

    /// Bytes of rows `rows` (a range of row positions in this piece).
    pub fn slice(&self, rows: Range<usize>) -> Bytes {
        let start = if rows.start == 0 {
            0
        } else {
            self.row_ends[rows.start - 1] as usize
        };
        let end = if rows.end == 0 {
            0
        } else {
            self.row_ends[rows.end - 1] as usize
        };
        self.data.slice(start..end)
    }
}
