//! The batcher: gathers one table's pieces into flushes and hands each to
//! the COPY writer. A flush starts when the gathered rows reach
//! `--flush-rows`, their bytes `--flush-bytes`, or the oldest piece has
//! waited `--flush-age`. At most `--copy-concurrency` flushes run at once;
//! while all are busy, pieces keep gathering (up to the flush size) and the
//! buffer's admission limit pushes back on clients.
//!
//! After a flush, the hours its late rows fall in go to the late-data
//! refresher (TimescaleDB mode).
//!
//! On drain (shutdown) every gathered piece is flushed at once; the batcher
//! ends when its queue is closed and every flush it started has finished.

use std::sync::Arc;

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::Piece;
use crate::{
    config::PipelineConfig, copy::Table, copy::writer::CopyWriter, maintain::refresh::LateRefresher,
};

pub async fn run(
    table: Table,
    mut queue: mpsc::UnboundedReceiver<Piece>,
    writer: Arc<CopyWriter>,
    late: Option<LateRefresher>,
    cfg: PipelineConfig,
    drain: CancellationToken,
) {
    let copy_slots = Arc::new(Semaphore::new(cfg.copy_concurrency.max(1)));
    let mut flushes = JoinSet::new();
    let mut gathered: Vec<Piece> = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    let mut open = true;
    while open || !gathered.is_empty() {
        let deadline = gathered.first().map(|p| p.enqueued + cfg.flush_age);
        let draining = drain.is_cancelled();
        let due = !gathered.is_empty()
            && (draining || rows >= cfg.flush_rows || bytes >= cfg.flush_bytes);
        if !due {
            tokio::select! {
                piece = queue.recv(), if open => match piece {
                    Some(p) => {
                        rows += p.rows();
                        bytes += p.data.len();
                        gathered.push(p);
                    }
                    None => open = false,
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let flush = std::mem::take(&mut gathered);
                    (rows, bytes) = (0, 0);
                    start_flush(table, flush, &writer, &late, &copy_slots, &mut flushes).await;
                }
                _ = drain.cancelled(), if !draining => {}
                Some(_) = flushes.join_next(), if !flushes.is_empty() => {}
            }
            if !open && !gathered.is_empty() {
                // Queue closed: flush what is left at once.
                let flush = std::mem::take(&mut gathered);
                (rows, bytes) = (0, 0);
                start_flush(table, flush, &writer, &late, &copy_slots, &mut flushes).await;
            }
            continue;
        }
        let flush = std::mem::take(&mut gathered);
        (rows, bytes) = (0, 0);
        start_flush(table, flush, &writer, &late, &copy_slots, &mut flushes).await;
    }
    while flushes.join_next().await.is_some() {}
}

/// Waits for a free COPY slot, then runs the flush in its own task.
async fn start_flush(
    table: Table,
    pieces: Vec<Piece>,
    writer: &Arc<CopyWriter>,
    late: &Option<LateRefresher>,
    slots: &Arc<Semaphore>,
    flushes: &mut JoinSet<()>,
) {
    if pieces.is_empty() {
        return;
    }
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("copy slots are never closed");
    let writer = writer.clone();
    let late = late.clone();
    flushes.spawn(async move {
        // Empty unless intake marks late rows (TimescaleDB mode).
        let late_hours: Vec<i64> = pieces
            .iter()
            .flat_map(|p| p.late_hours.iter().copied())
            .collect();
        writer.flush(table, pieces).await;
        drop(slot);
        // Noted even when the flush failed: a refresh of an unchanged range
        // is harmless, and the client's resend will be noted again anyway.
        if let Some(late) = late {
            late.note(table, late_hours);
        }
    });
}
