//! The batcher: gathers one table's pieces into flushes and hands each to
//! the COPY writer, at most `--copy-concurrency` at a time.
//!
//! When no COPY of the table is running, whatever has gathered is flushed
//! at once: at moderate rates a batch waits for nothing but its own COPY.
//! While COPYs run, pieces gather, and a free slot takes them when they
//! reach `--flush-rows` or `--flush-bytes`, when the oldest has waited
//! `--flush-age`, or when the running COPYs are done. So flushes grow by
//! themselves as the database gets busier (fewer, larger COPYs, which is
//! what it takes best), and shrink again when it is not. A flush takes at
//! most about `--flush-rows` rows; the rest wait for the next slot, and the
//! buffer's admission limit pushes back on clients.
//!
//! After a flush, the hours its late rows fall in go to the late-data
//! refresher (TimescaleDB mode).
//!
//! On drain (shutdown) every gathered piece is flushed without waiting; the
//! batcher ends when its queue is closed and every flush it started has
//! finished.

use std::{collections::VecDeque, sync::Arc};

use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::Piece;
use crate::{
    config::PipelineConfig, copy::writer::CopyWriter, maintain::refresh::LateRefresher, row::Table,
};

pub async fn run(
    table: Table,
    mut queue: mpsc::UnboundedReceiver<Piece>,
    writer: Arc<CopyWriter>,
    late: Option<LateRefresher>,
    cfg: PipelineConfig,
    drain: CancellationToken,
) {
    let slots = cfg.copy_concurrency.max(1);
    let mut flushes = JoinSet::new();
    let mut gathered = Gathered::default();
    let mut open = true;
    loop {
        let closing = !open || drain.is_cancelled();
        while flushes.len() < slots {
            let Some(oldest) = gathered.oldest() else {
                break;
            };
            let due = flushes.is_empty()
                || closing
                || gathered.rows >= cfg.flush_rows
                || gathered.bytes >= cfg.flush_bytes
                || oldest.elapsed() >= cfg.flush_age;
            if !due {
                break;
            }
            let flush = gathered.take(cfg.flush_rows, cfg.flush_bytes);
            start_flush(table, flush, &writer, &late, &mut flushes);
        }
        if !open && gathered.pieces.is_empty() {
            break;
        }
        // The age limit matters only while a slot is free to act on it.
        let deadline = gathered
            .oldest()
            .filter(|_| flushes.len() < slots)
            .map(|t| t + cfg.flush_age);
        tokio::select! {
            piece = queue.recv(), if open => match piece {
                Some(p) => {
                    gathered.push(p);
                    // Take everything already queued before deciding.
                    while let Ok(p) = queue.try_recv() {
                        gathered.push(p);
                    }
                }
                None => open = false,
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            _ = drain.cancelled(), if !drain.is_cancelled() => {}
            Some(_) = flushes.join_next(), if !flushes.is_empty() => {}
        }
    }
    while flushes.join_next().await.is_some() {}
}

/// Pieces waiting for a flush, oldest first.
#[derive(Default)]
struct Gathered {
    pieces: VecDeque<Piece>,
    rows: usize,
    bytes: usize,
}

impl Gathered {
    fn push(&mut self, p: Piece) {
        self.rows += p.rows();
        self.bytes += p.data.len();
        self.pieces.push_back(p);
    }

    fn oldest(&self) -> Option<Instant> {
        self.pieces.front().map(|p| p.enqueued)
    }

    /// The oldest pieces, until they hold `rows` rows or `bytes` bytes.
    fn take(&mut self, rows: usize, bytes: usize) -> Vec<Piece> {
        let (mut r, mut b) = (0, 0);
        let mut out = Vec::new();
        while r < rows && b < bytes {
            let Some(p) = self.pieces.pop_front() else {
                break;
            };
            r += p.rows();
            b += p.data.len();
            out.push(p);
        }
        self.rows -= r;
        self.bytes -= b;
        out
    }
}

/// Runs the flush in its own task.
fn start_flush(
    table: Table,
    pieces: Vec<Piece>,
    writer: &Arc<CopyWriter>,
    late: &Option<LateRefresher>,
    flushes: &mut JoinSet<()>,
) {
    let writer = writer.clone();
    let late = late.clone();
    flushes.spawn(async move {
        // Empty unless intake marks late rows (TimescaleDB mode).
        let late_hours: Vec<i64> = pieces
            .iter()
            .flat_map(|p| p.late_hours.iter().copied())
            .collect();
        writer.flush(table, pieces).await;
        // Noted even when the flush failed: a refresh of an unchanged range
        // is harmless, and the client's resend will be noted again anyway.
        if let Some(late) = late {
            late.note(table, late_hours);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::{Semaphore, oneshot};

    use super::*;

    fn piece(rows: usize, space: &Arc<Semaphore>) -> Piece {
        Piece {
            data: Bytes::from(vec![0u8; rows * 10]),
            row_ends: (1..=rows as u32).map(|r| r * 10).collect(),
            row_index: (0..rows as u32).collect(),
            row_tally: vec![(1, 0); rows],
            row_keys: (0..rows as u128)
                .map(|r| (uuid::Uuid::from_u128(r), 0))
                .collect(),
            late_hours: Vec::new(),
            enqueued: Instant::now(),
            done: oneshot::channel().0,
            permit: space.clone().try_acquire_owned().expect("permit"),
        }
    }

    #[test]
    fn a_flush_takes_the_oldest_pieces_up_to_its_size() {
        let space = Arc::new(Semaphore::new(10));
        let mut g = Gathered::default();
        for rows in [4, 4, 4, 4] {
            g.push(piece(rows, &space));
        }
        assert_eq!((g.rows, g.bytes), (16, 160));
        // 10 rows wanted: whole pieces until reached (4 + 4 + 4).
        let taken = g.take(10, usize::MAX);
        assert_eq!(taken.iter().map(Piece::rows).sum::<usize>(), 12);
        assert_eq!((g.rows, g.bytes, g.pieces.len()), (4, 40, 1));
        // The byte limit stops it too; one piece at least.
        assert_eq!(g.take(usize::MAX, 1).len(), 1);
        assert_eq!((g.rows, g.bytes), (0, 0));
        assert!(g.take(10, 10).is_empty());
    }
}
