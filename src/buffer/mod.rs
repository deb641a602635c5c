//! Stage 3: **buffer**. Bounded admission and batching, per table.
//!
//! In: a [`Piece`](crate::copy::Piece) — the encoded, accepted rows of one client batch, with
//! the channel its outcome goes to. Admission takes a byte-weighted permit
//! from the table's semaphore before intake decodes the batch (sized for its
//! working set, then shrunk to the encoded piece); the permit travels inside
//! the piece and is released only when the piece is resolved, so the bytes
//! held between a client's request and its commit never exceed
//! `--buffer-bytes`. When no
//! permit frees up within `--admission-timeout` the batch is refused
//! (RESOURCE_EXHAUSTED) instead of queueing without bound.
//!
//! Out: the [`batcher`] hands flushes (lists of pieces) to
//! [`crate::copy::writer`].

pub mod batcher;

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};

use crate::{copy::Piece, row::Table};

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "the {table} buffer is full ({capacity} bytes) and did not drain within {waited:?}; resend later"
    )]
    Full {
        table: Table,
        capacity: usize,
        waited: Duration,
    },
    #[error(
        "a batch of {bytes} bytes is larger than the whole {table} buffer ({capacity} bytes); send smaller batches"
    )]
    TooLarge {
        table: Table,
        bytes: usize,
        capacity: usize,
    },
    #[error("the service is shutting down; resend to another instance or later")]
    ShuttingDown,
}

/// One table's bounded buffer: admission, then the queue to its batcher.
#[derive(Debug, Clone)]
pub struct TableBuffer {
    table: Table,
    capacity: usize,
    space: Arc<Semaphore>,
    queue: mpsc::UnboundedSender<Piece>,
}

impl TableBuffer {
    /// A buffer and the receiving end its batcher reads. The queue itself is
    /// unbounded because admission already bounds what can be in it.
    pub fn new(table: Table, capacity: usize) -> (Self, mpsc::UnboundedReceiver<Piece>) {
        let (queue, rx) = mpsc::unbounded_channel();
        // Permits are taken in u32 units; a larger buffer would not be admissible.
        let capacity = capacity.min(u32::MAX as usize);
        let space = Arc::new(Semaphore::new(capacity));
        (
            Self {
                table,
                capacity,
                space,
                queue,
            },
            rx,
        )
    }

    pub fn table(&self) -> Table {
        self.table
    }

    /// Bytes the buffer holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits up to `timeout` for `bytes` of buffer space.
    pub async fn admit(
        &self,
        bytes: usize,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, AdmitError> {
        if bytes > self.capacity {
            return Err(AdmitError::TooLarge {
                table: self.table,
                bytes,
                capacity: self.capacity,
            });
        }
        let started = Instant::now();
        let acquire = self.space.clone().acquire_many_owned(bytes.max(1) as u32);
        let permit = match tokio::time::timeout(timeout, acquire).await {
            Ok(Ok(p)) => p,
            Ok(Err(_closed)) => return Err(AdmitError::ShuttingDown),
            Err(_) => {
                return Err(AdmitError::Full {
                    table: self.table,
                    capacity: self.capacity,
                    waited: started.elapsed(),
                });
            }
        };
        Ok(permit)
    }

    /// Hands an admitted piece to the batcher.
    pub fn submit(&self, piece: Piece) -> Result<(), AdmitError> {
        self.queue.send(piece).map_err(|_| AdmitError::ShuttingDown)
    }

    /// Bytes currently held (admitted and not yet resolved).
    pub fn used(&self) -> usize {
        self.capacity - self.space.available_permits()
    }

    /// Refuses all further admissions (shutdown).
    pub fn close(&self) {
        self.space.close();
    }
}
