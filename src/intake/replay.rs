//! Spool replay: spooled entries into the database, in order, for as long as the
//! service runs: each entry goes through intake's normal path (dimensions →
//! encode → buffer → COPY) and its rows' outcome is awaited like a client's
//! ack. Several entries are in flight at once (the buffer's admission
//! bounds them); the committed position advances over the entries whose
//! rows are all committed, in order, and the log is truncated behind it.
//!
//! At shutdown, replay goes on until everything spooled has been read and
//! its rows committed, within the shutdown deadline.
//!
//! When an entry cannot be stored now (database down, buffer full), replay
//! goes back to the oldest uncommitted entry and tries again after a
//! backoff; entries after it that did get stored are recognised as
//! duplicates the second time. Rows the pipeline refuses for good (a
//! message whose chat session the service never learned of, a row outside
//! its key's projects, a row the database refuses) cannot be given back to
//! a client that has its ack already: they are written, with the reason,
//! to `rejected.jsonl` in the spool directory and counted in
//! `agent_telemetry_spool_rejected_rows_total`.

use std::{
    collections::VecDeque,
    future::Future,
    io::Write,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesOrdered};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Intake;
use crate::{
    ack::BatchOutcome,
    metrics,
    spool::{
        Batch, Entry,
        log::{Position, Reader},
    },
};

/// Entries whose rows may be on their way to the database at once.
const IN_FLIGHT: usize = 32;
/// How often the committed position is written when it moves.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// Shared with the gauges: the receipt time (µs since the Unix epoch) of
/// the oldest entry not yet committed, 0 when there is none.
#[derive(Debug, Default)]
pub struct Backlog {
    pub oldest_us: AtomicI64,
}

type Pending = Pin<Box<dyn Future<Output = BatchOutcome> + Send>>;

struct InFlight {
    end: Position,
    entry: Entry,
}

/// Replays until drained. One event loop, and long for it: the committed
/// position, the entries in flight (in order) and the backoff are state
/// every branch of its `select!` reads and moves; split up, they would
/// travel as one mutable struct through every piece.
pub async fn run(
    mut reader: Reader,
    intake: Arc<Intake>,
    backlog: Arc<Backlog>,
    drain: CancellationToken,
) {
    let dead_letters = reader.dir().join("rejected.jsonl");
    let mut committed = reader.position();
    let mut written = committed;
    let mut last_write = Instant::now();
    let mut flights: VecDeque<InFlight> = VecDeque::new();
    let mut acks: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut backoff = Duration::from_millis(100);
    let mut reading = true;
    loop {
        if committed != written && (last_write.elapsed() >= COMMIT_EVERY || flights.is_empty()) {
            match reader.commit(committed) {
                Ok(()) => written = committed,
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot record the committed position")
                }
            }
            last_write = Instant::now();
        }
        backlog.oldest_us.store(
            flights.front().map_or(0, |f| f.entry.received_at_us),
            Ordering::Relaxed,
        );
        // At shutdown, intake takes no new batches; replay goes on until it
        // has read everything spooled (or the shutdown deadline ends the
        // process: the rest is replayed at the next start).
        if drain.is_cancelled() && reader.caught_up() {
            reading = false;
        }
        if !reading && flights.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(ack) = acks.next(), if !acks.is_empty() => {
                let flight = flights.pop_front().expect("one flight per ack");
                if let Some(f) = ack.failure.as_ref().filter(|f| f.retryable()) {
                    tracing::warn!(error = %f.message, retry_in = ?backoff, "spool replay: not stored; going back to the oldest uncommitted entry");
                    metrics::spool_replay_retried();
                    flights.clear();
                    acks = FuturesOrdered::new();
                    reader.seek(committed);
                    wait(backoff, &drain).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                backoff = Duration::from_millis(100);
                dead_letter(&dead_letters, &flight.entry, &ack);
                committed = flight.end;
            }
            next = reader.next(), if reading && flights.len() < IN_FLIGHT => match next {
                Ok(Some((bytes, end))) => {
                    let entry = match Entry::decode(bytes) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::error!(error = %e, ?end, "spool: undecodable entry skipped");
                            continue;
                        }
                    };
                    if flights.is_empty() {
                        backlog.oldest_us.store(entry.received_at_us, Ordering::Relaxed);
                    }
                    match intake.store(entry.clone()).await {
                        Ok(accepted) => {
                            acks.push_back(Box::pin(accepted.outcome()));
                            flights.push_back(InFlight { end, entry });
                        }
                        Err(e) if e.kind().retryable() => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "spool replay: cannot take the entry now");
                            metrics::spool_replay_retried();
                            // Let what is in flight finish first, then
                            // re-read from the oldest uncommitted entry.
                            flights_wait(&mut acks, &mut flights, &mut committed, &dead_letters).await;
                            reader.seek(committed);
                            wait(backoff, &drain).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            // Refused for good; but the committed position
                            // may pass it only if every entry before it is
                            // stored: one still failing is retried first,
                            // and this one comes round again after it.
                            if flights_wait(&mut acks, &mut flights, &mut committed, &dead_letters).await {
                                let ack = BatchOutcome::refused(entry.batch.sequence(), entry.batch.rows().len(), e.failure());
                                dead_letter(&dead_letters, &entry, &ack);
                                committed = end;
                            } else {
                                metrics::spool_replay_retried();
                                reader.seek(committed);
                                wait(backoff, &drain).await;
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                        }
                    }
                }
                Ok(None) => reading = false,
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot read; replay stops until restart");
                    reading = false;
                }
            },
            _ = drain.cancelled(), if reading && !drain.is_cancelled() => {}
        }
    }
    if committed != written
        && let Err(e) = reader.commit(committed)
    {
        tracing::error!(error = %e, "spool: cannot record the committed position");
    }
    backlog.oldest_us.store(0, Ordering::Relaxed);
    tracing::info!(?committed, "spool replay stopped");
}

/// Waits for every entry in flight, in order, advancing `committed` over
/// those stored; stops advancing at the first that was not. Whether all
/// were stored.
async fn flights_wait(
    acks: &mut FuturesOrdered<Pending>,
    flights: &mut VecDeque<InFlight>,
    committed: &mut Position,
    dead_letters: &PathBuf,
) -> bool {
    let mut failed = false;
    while let Some(ack) = acks.next().await {
        let flight = flights.pop_front().expect("one flight per ack");
        if failed || ack.retryable() {
            failed = true;
            continue;
        }
        dead_letter(dead_letters, &flight.entry, &ack);
        *committed = flight.end;
    }
    !failed
}

async fn wait(d: Duration, drain: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = drain.cancelled() => {}
    }
}

/// Writes the rows of `entry` that its replay refused for good.
fn dead_letter(path: &PathBuf, entry: &Entry, outcome: &BatchOutcome) {
    let rows = entry.batch.rows();
    let kind = match entry.batch {
        Batch::Events(_) => "agent_event",
        Batch::Messages(_) => "chat_message",
    };
    // Indexes in the client's batch, as its ack would have given them.
    let client_index = |i: usize| entry.indices.get(i).copied().unwrap_or(i as u32);
    let mut lines = Vec::new();
    if let Some(f) = &outcome.failure {
        for (i, row) in rows.iter().enumerate() {
            lines.push(line(entry, client_index(i), kind, row, "", &f.message));
        }
    }
    for r in &outcome.rejected {
        if let Some(row) = rows.get(r.index as usize) {
            let i = client_index(r.index as usize);
            lines.push(line(entry, i, kind, row, &r.field, &r.reason));
        }
    }
    if let Batch::Messages(b) = &entry.batch {
        for r in &outcome.sessions_rejected {
            if let Some(s) = b.sessions.get(r.index as usize) {
                let row = prost::Message::encode_to_vec(s);
                lines.push(line(
                    entry,
                    r.index,
                    "chat_session",
                    &row,
                    &r.field,
                    &r.reason,
                ));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    tracing::error!(rows = lines.len(), file = %path.display(), "spool replay: rows refused after their batch was acknowledged; kept in the file");
    metrics::spool_rejected(lines.len());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            for l in &lines {
                writeln!(f, "{l}")?;
            }
            f.sync_data()
        });
    if let Err(e) = written {
        tracing::error!(error = %e, file = %path.display(), "cannot write refused rows; they are in the log above");
        for l in &lines {
            tracing::error!(row = %l, "refused spooled row");
        }
    }
}

fn line(entry: &Entry, index: u32, kind: &str, row: &[u8], field: &str, reason: &str) -> String {
    json!({
        "received_at_us": entry.received_at_us,
        "written_at_us": crate::time::unix_us(std::time::SystemTime::now()),
        "sequence": entry.batch.sequence(),
        "index": index,
        "kind": kind,
        "field": field,
        "reason": reason,
        "row_protobuf_hex": row.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    })
    .to_string()
}
