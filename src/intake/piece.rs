//! Step 5 of intake: accepted rows encoded back to back into one piece,
//! and the piece sized down to exactly its bytes before it goes to the
//! buffer.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use tokio::{
    sync::{OwnedSemaphorePermit, oneshot},
    time::{Duration, Instant},
};
use uuid::Uuid;

use crate::{
    ack::PieceOutcome,
    buffer::{AdmitError, TableBuffer},
    copy::Piece,
    maintain::refresh,
};

/// Accumulates encoded rows and their boundaries.
pub(super) struct PieceBuilder {
    data: BytesMut,
    row_ends: Vec<u32>,
    row_index: Vec<u32>,
    row_tally: Vec<(i32, i64)>,
    row_keys: Vec<(Uuid, i64)>,
    /// Rows older than this are late; their hours are collected.
    late_before_us: Option<i64>,
    late_hours: BTreeSet<i64>,
}

impl PieceBuilder {
    /// The binary form is a little larger than protobuf's (fixed-width
    /// lengths per field), so reserve with some headroom.
    pub(super) fn new(raw_bytes: usize, rows: usize, late_before_us: Option<i64>) -> Self {
        Self {
            data: BytesMut::with_capacity(raw_bytes + raw_bytes / 2 + rows * 64),
            row_ends: Vec::with_capacity(rows),
            row_index: Vec::with_capacity(rows),
            row_tally: Vec::with_capacity(rows),
            row_keys: Vec::with_capacity(rows),
            late_before_us,
            late_hours: BTreeSet::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.row_ends.is_empty()
    }

    pub(super) fn row(
        &mut self,
        index: u32,
        key: (Uuid, i64),
        tally: (i32, i64),
        encode: impl FnOnce(&mut BytesMut),
    ) {
        let (_, ts_us) = key;
        if self.late_before_us.is_some_and(|before| ts_us < before) {
            self.late_hours.insert(refresh::hour_of(ts_us));
        }
        encode(&mut self.data);
        self.row_ends.push(self.data.len() as u32);
        self.row_index.push(index);
        self.row_tally.push(tally);
        self.row_keys.push(key);
    }

    /// The piece, holding exactly its encoded bytes, in memory and in the
    /// buffer's count: not the headroom reserved for encoding (a copy costs
    /// ~0.05 µs a row), nor the working set `permit` covered until now.
    pub(super) async fn finish(
        self,
        buffer: &TableBuffer,
        permit: OwnedSemaphorePermit,
        admission_timeout: Duration,
    ) -> Result<(Piece, oneshot::Receiver<PieceOutcome>), AdmitError> {
        let data = if self.data.capacity() - self.data.len() > self.data.len() / 8 {
            Bytes::copy_from_slice(&self.data)
        } else {
            self.data.freeze()
        };
        let permit = if data.len() <= permit.num_permits() {
            let mut permit = permit;
            permit
                .split(data.len().max(1))
                .expect("fewer permits than held")
        } else {
            // Encoded larger than estimated (never seen): take the difference.
            drop(permit);
            buffer.admit(data.len(), admission_timeout).await?
        };
        let (done, outcome) = oneshot::channel();
        let piece = Piece {
            data,
            row_ends: self.row_ends,
            row_index: self.row_index,
            row_tally: self.row_tally,
            row_keys: self.row_keys,
            late_hours: self.late_hours.into_iter().collect(),
            enqueued: Instant::now(),
            done,
            permit,
        };
        Ok((piece, outcome))
    }
}
