//! The COPY writer: runs one flush (a list of pieces) as
//! `COPY <table> (<columns>) FROM STDIN (FORMAT binary)` on a pooled
//! connection and resolves every piece's outcome — only after commit.
//!
//! - **Fast path:** one COPY straight into the table. In autocommit mode the
//!   COPY is its own transaction: when `finish()` returns, the rows are
//!   committed.
//! - **Resends:** a row already stored (same id and timestamp) makes the
//!   COPY fail with unique_violation. The writer then looks the flush's keys
//!   up in one query (an index probe per row), counts the rows found as
//!   duplicates, and COPYs the rest — still binary COPY, which is what keeps
//!   a client's reconnect from slowing everyone's flushes down. In the row
//!   store, should that COPY fail on a duplicate again (a row stored
//!   meanwhile by another flush, or a row twice in one flush), the rows go
//!   through a temporary staging table and `INSERT … ON CONFLICT DO
//!   NOTHING`, in one transaction. The columnstore's key tables are unique
//!   by id: the same look-up also finds ids reused with another timestamp
//!   (conflicts) and repeats within the flush, and is run again until the
//!   COPY of the rest goes through. They hold `--key-window` of keys: a
//!   flush with rows older than that looks their ids up in the stored rows
//!   before its COPY, since those rows' keys may be gone. Only flushes that
//!   contain a resend or such old rows pay for any of this.
//! - **Connection trouble** (unreachable, restarting, closed): retried with
//!   exponential backoff until `--copy-retry-timeout`, then the pieces are
//!   resolved with a retryable failure — never as stored.
//! - **A row the database refuses** although validation passed it: the flush
//!   is split in halves until the row is alone; it alone is rejected, with
//!   the database's message, and the other rows are stored.
//!
//! Decisions are made on SQLSTATE codes and connection state, never on
//! message text.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    keys::{KeyWindows, Lookup, Probe, already_stored, probe_keys, resolve_by_id, stored_keys},
    recent::{COMMITTED_KEYS, Claim, RecentKeys, Seen},
    statements::{
        Copied, CopyError, Fate, Segment, copy_deduplicated, copy_rows, keys_of, only, split,
    },
};
use crate::{
    ack::{Failure, PieceOutcome, Rejection},
    codes::ErrorKind,
    copy::Piece,
    db::layout::Layout,
    metrics,
    row::Table,
    time::pg_us_to_system_time,
};

pub struct CopyWriter {
    pool: Pool,
    retry_timeout: Duration,
    /// `--id-conflict-window` in µs (0: no probe).
    conflict_window_us: i64,
    /// Where resends are found and how rows are written (module docs).
    layout: Layout,
    /// Columnstore: which key table holds a row's key (`layout.sql`).
    key_windows: KeyWindows,
    /// Cancelled when the shutdown deadline has passed: stop retrying.
    give_up: CancellationToken,
    /// The `project` label of the per-project figures.
    labels: ProjectLabels,
    /// Per table: keys committed lately and being copied now (recent.rs).
    recent: [RecentKeys; 2],
}

/// Rows newly stored and their cost, per project id, in one flush: one
/// look-up per stored row, hence foldhash (the keys are our own ids).
type Tally = foldhash::HashMap<i32, (u64, i64)>;

/// Project id → the `project` label of `agent_telemetry_project_*`: its
/// `full_name`, for the first `max` projects this process stores rows of,
/// `other` for the rest, so that a flood of projects cannot flood
/// Prometheus with series.
struct ProjectLabels {
    max: usize,
    names: Mutex<HashMap<i32, Arc<str>>>,
}

const OTHER: &str = "other";

impl ProjectLabels {
    /// The labels of `ids`: known ones from memory, new ones from
    /// `projects` (one query per flush that meets a new project).
    async fn of(&self, pool: &Pool, ids: &[i32]) -> HashMap<i32, Arc<str>> {
        let (mut out, missing) = {
            let names = self.names.lock().expect("labels lock");
            let mut out = HashMap::with_capacity(ids.len());
            let mut missing = Vec::new();
            for id in ids {
                match names.get(id) {
                    Some(l) => {
                        out.insert(*id, l.clone());
                    }
                    None => missing.push(*id),
                }
            }
            (out, missing)
        };
        if missing.is_empty() {
            return out;
        }
        let found: Vec<(i32, String)> = match pool.get().await {
            Ok(client) => client
                .query(
                    "SELECT id, full_name FROM projects WHERE id = ANY($1)",
                    &[&missing],
                )
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut names = self.names.lock().expect("labels lock");
        for id in missing {
            let label: Arc<str> = match found.iter().find(|(i, _)| *i == id) {
                // Named while there is room; `other` afterwards, for good.
                Some((_, name)) if names.len() < self.max => Arc::from(name.as_str()),
                Some(_) => Arc::from(OTHER),
                // Not found (the lookup failed): counted, not remembered.
                None => {
                    out.insert(id, Arc::from(OTHER));
                    continue;
                }
            };
            names.insert(id, label.clone());
            out.insert(id, label);
        }
        out
    }
}

impl CopyWriter {
    pub fn new(
        pool: Pool,
        retry_timeout: Duration,
        conflict_window: Duration,
        layout: Layout,
        key_windows: KeyWindows,
        give_up: CancellationToken,
        max_project_labels: usize,
    ) -> Self {
        Self {
            pool,
            retry_timeout,
            conflict_window_us: conflict_window.as_micros() as i64,
            layout,
            key_windows,
            give_up,
            labels: ProjectLabels {
                max: max_project_labels,
                names: Mutex::default(),
            },
            recent: [
                RecentKeys::new(COMMITTED_KEYS),
                RecentKeys::new(COMMITTED_KEYS),
            ],
        }
    }

    fn recent(&self, table: Table) -> &RecentKeys {
        match table {
            Table::AgentEvents => &self.recent[0],
            Table::ChatMessages => &self.recent[1],
        }
    }

    /// Copies the pieces' rows and resolves each piece. Never fails: every
    /// problem ends up in the outcomes.
    pub async fn flush(&self, table: Table, pieces: Vec<Piece>) {
        let started = Instant::now();
        let rows: usize = pieces.iter().map(Piece::rows).sum();
        let mut outcomes = vec![PieceOutcome::default(); pieces.len()];
        let mut tally = Tally::default();
        // Past the shutdown deadline, what has not been copied is answered
        // "not stored, resend" at once instead of waiting for a database
        // that does not take it (a COPY waiting for a lock, say).
        let copied = tokio::select! {
            biased;
            _ = self.give_up.cancelled() => false,
            () = self.copy_all(table, &pieces, &mut outcomes, &mut tally) => true,
        };
        if !copied {
            for (piece, outcome) in pieces.iter().zip(&mut outcomes) {
                let settled = outcome.stored + outcome.duplicates + outcome.rejected.len() as u32;
                if settled < piece.rows() as u32 && outcome.failure.is_none() {
                    outcome.failure = Some(Failure {
                        message: "not stored: the service shut down (--shutdown-timeout passed) before the database took these rows; resend the batch".into(),
                        kind: ErrorKind::Unavailable,
                    });
                }
            }
        }
        metrics::flush_done(table, rows, started.elapsed());
        // Before the acks, so that what an ack reports is on /metrics by
        // then; naming a project costs one query, once per project.
        if !tally.is_empty() {
            let ids: Vec<i32> = tally.keys().copied().collect();
            let labels = self.labels.of(&self.pool, &ids).await;
            for (id, (rows, cost_nanos)) in tally {
                let label = labels.get(&id).map_or(OTHER, |l| &**l);
                metrics::project_stored(table, label, rows, cost_nanos);
            }
        }
        for (piece, outcome) in pieces.into_iter().zip(outcomes) {
            metrics::rows_stored(table, outcome.stored as u64, outcome.duplicates as u64);
            metrics::ack_latency(table, piece.enqueued.elapsed());
            // The client may have gone away; its rows are stored regardless.
            let _ = piece.done.send(outcome);
        }
    }

    /// The probe, then COPYs until every row of `pieces` is stored, found
    /// stored, rejected or failed, each recorded in `outcomes`.
    async fn copy_all(
        &self,
        table: Table,
        pieces: &[Piece],
        outcomes: &mut [PieceOutcome],
        tally: &mut Tally,
    ) {
        let all: Vec<Segment> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| Segment {
                piece: i,
                rows: 0..p.rows(),
            })
            .collect();
        // The claim holds this flush's keys until it is done.
        let (all, _claim) = self.skip_recent(table, pieces, all, outcomes).await;
        // One probe of the flush's keys: rows already stored (a resend) are
        // counted as duplicates and not copied, which spares the resend path
        // a failed COPY; rows whose id is stored with another timestamp are
        // rejected (docs/reliability.md, "One id, one row").
        let all = match self.probe(table, pieces, &all).await {
            Ok(probed) => {
                let mut conflicting = 0;
                let rows = all
                    .iter()
                    .flat_map(|s| s.rows.clone().map(move |r| (s.piece, r)));
                for ((seg, r), p) in rows.zip(&probed) {
                    match *p {
                        Probe::New => {}
                        Probe::Stored => outcomes[seg].duplicates += 1,
                        Probe::Conflict(stored_us) => {
                            conflicting += 1;
                            reject_conflict(pieces, outcomes, seg, r, stored_us);
                        }
                    }
                }
                metrics::rows_conflicting(table, conflicting);
                only(&all, |n| probed[n] == Probe::New)
            }
            // The probe is an extra: without it the COPY below still stores
            // every row exactly once per (id, timestamp).
            Err(e) => {
                tracing::warn!(%table, error = %e, "id probe failed; copying without it");
                all
            }
        };
        // Work list instead of recursion: sets of rows still to copy.
        let mut work = if all.is_empty() { vec![] } else { vec![all] };
        while let Some(set) = work.pop() {
            match self.copy_with_retry(table, pieces, &set).await {
                Ok(copied) => {
                    self.remember(table, pieces, &set, &copied);
                    record(table, &set, copied, pieces, outcomes, tally)
                }
                Err(e) if e.is_row_error() => {
                    let n: usize = set.iter().map(|s| s.rows.len()).sum();
                    if n == 1 {
                        let seg = &set[0];
                        let index = pieces[seg.piece].row_index[seg.rows.start];
                        let field = e.field(table).unwrap_or_default();
                        tracing::warn!(%table, index, field, error = %e, "database refused a row that passed validation");
                        metrics::rows_rejected(table, "database", 1);
                        outcomes[seg.piece].rejected.push(Rejection::new(
                            index,
                            field,
                            format!("refused by the database: {}", e.db_message()),
                        ));
                    } else {
                        let (a, b) = split(set, n / 2);
                        work.push(b);
                        work.push(a);
                    }
                }
                Err(e) => {
                    // A transient failure that outlasted the retries can
                    // pass; a permanent one (a privilege, a missing table)
                    // needs the operator first, and says so.
                    let retryable = e.is_retriable();
                    tracing::error!(%table, error = %e, retryable, "COPY failed; its batches are acked with the error");
                    metrics::copy_failed(table);
                    let message = if retryable {
                        format!("not stored: {e}; resend the batch")
                    } else {
                        format!(
                            "not stored: {e}; the database refuses this table's COPY until its operator fixes it"
                        )
                    };
                    for seg in &set {
                        outcomes[seg.piece].failure = Some(Failure {
                            message: message.clone(),
                            kind: if retryable {
                                ErrorKind::Unavailable
                            } else {
                                ErrorKind::Internal
                            },
                        });
                    }
                }
            }
        }
    }

    /// `all` without the rows whose keys this process committed lately
    /// (counted as duplicates), after waiting for the flushes that are
    /// copying some of its keys now (recent.rs); and this flush's claim on
    /// the rest, to hold until it is done.
    async fn skip_recent<'a>(
        &'a self,
        table: Table,
        pieces: &[Piece],
        all: Vec<Segment>,
        outcomes: &mut [PieceOutcome],
    ) -> (Vec<Segment>, Claim<'a>) {
        let keys = keys_of(pieces, &all);
        let recent = self.recent(table);
        let (seen, claim) = recent.claim(&keys);
        let mut duplicate: Vec<bool> = seen.iter().map(|s| *s == Seen::Committed).collect();
        let waiting: Vec<usize> = (0..keys.len())
            .filter(|&n| seen[n] == Seen::InFlight)
            .collect();
        if !waiting.is_empty() {
            let waited: Vec<_> = waiting.iter().map(|&n| keys[n]).collect();
            for (&n, committed) in waiting.iter().zip(recent.settle(&waited).await) {
                duplicate[n] = committed;
            }
        }
        if !duplicate.contains(&true) {
            return (all, claim);
        }
        let pieces_of_rows = all
            .iter()
            .flat_map(|s| s.rows.clone().map(move |_| s.piece));
        for (piece, &dup) in pieces_of_rows.zip(&duplicate) {
            if dup {
                outcomes[piece].duplicates += 1;
            }
        }
        (only(&all, |n| !duplicate[n]), claim)
    }

    /// The keys of the rows of `set` that are stored now, as `copied` says.
    fn remember(&self, table: Table, pieces: &[Piece], set: &[Segment], copied: &Copied) {
        let keys = keys_of(pieces, set);
        let recent = self.recent(table);
        match copied {
            Copied::All => recent.committed(keys),
            Copied::PerRow(fates) => recent.committed(
                keys.into_iter()
                    .zip(fates)
                    .filter(|(_, f)| matches!(f, Fate::Stored | Fate::Duplicate))
                    .map(|(k, _)| k),
            ),
        }
    }

    /// Per row of `set`, in order: what the table already holds of its id
    /// (see [`probe_keys`]). One query per flush, over the flush's time
    /// range widened by the conflict window; the primary key `(id,
    /// timestamp)` answers it per chunk. With the window at 0, no probe:
    /// every row is taken as new, and the COPY's unique check finds resends.
    /// On the columnstore, no probe either: its key tables are unique by
    /// id, so the key COPY itself refuses a resend and a reused id alike
    /// ([`resolve_by_id`]).
    async fn probe(
        &self,
        table: Table,
        pieces: &[Piece],
        set: &[Segment],
    ) -> Result<Vec<Probe>, CopyError> {
        let keys = keys_of(pieces, set);
        if self.conflict_window_us == 0 || self.layout == Layout::Columnstore || keys.is_empty() {
            return Ok(vec![Probe::New; keys.len()]);
        }
        let w = self.conflict_window_us;
        let client = self.pool.get().await?;
        let stored = stored_keys(&client, table, &keys, w, Lookup::ByIndex).await?;
        Ok(probe_keys(&keys, &stored, w))
    }

    async fn copy_with_retry(
        &self,
        table: Table,
        pieces: &[Piece],
        set: &[Segment],
    ) -> Result<Copied, CopyError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.attempt(table, pieces, set).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if e.is_retriable()
                        && started.elapsed() < self.retry_timeout
                        && !self.give_up.is_cancelled() =>
                {
                    tracing::warn!(%table, error = %e, retry_in = ?backoff, "COPY failed; retrying");
                    metrics::copy_retried(table);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.give_up.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn attempt(
        &self,
        table: Table,
        pieces: &[Piece],
        set: &[Segment],
    ) -> Result<Copied, CopyError> {
        let client = self.pool.get().await?;
        let layout = self.layout;
        let past = self
            .key_windows
            .at(std::time::SystemTime::now(), self.conflict_window_us);
        if layout == Layout::Columnstore && keys_of(pieces, set).iter().any(|k| past.holds(k)) {
            // The key of a row stored before may be in the archive, where
            // this COPY's keys would not meet it: look first.
            return resolve_by_id(&client, table, pieces, set, None, past).await;
        }
        match copy_rows(&client, table, layout, pieces, set, |k| past.archived(k)).await {
            Ok(()) => Ok(Copied::All),
            Err(e) if e.is_unique_violation() && layout == Layout::Columnstore => {
                resolve_by_id(&client, table, pieces, set, Some(e), past).await
            }
            Err(e) if e.is_unique_violation() => {
                let stored = already_stored(&client, table, pieces, set).await?;
                let fate = |stored: bool| {
                    if stored {
                        Fate::Duplicate
                    } else {
                        Fate::Stored
                    }
                };
                let fresh = only(set, |i| !stored[i]);
                if fresh.is_empty() {
                    return Ok(Copied::PerRow(vec![Fate::Duplicate; stored.len()]));
                }
                match copy_rows(&client, table, layout, pieces, &fresh, |k| past.archived(k)).await
                {
                    Ok(()) => Ok(Copied::PerRow(stored.into_iter().map(fate).collect())),
                    Err(e) if e.is_unique_violation() => {
                        copy_deduplicated(&client, table, pieces, set).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

fn rfc3339_us(us: i64) -> String {
    humantime::format_rfc3339_micros(pg_us_to_system_time(us)).to_string()
}

/// Row `r` of piece `seg` is not stored: its id is stored with `stored_us`.
fn reject_conflict(
    pieces: &[Piece],
    outcomes: &mut [PieceOutcome],
    seg: usize,
    r: usize,
    stored_us: i64,
) {
    let index = pieces[seg].row_index[r];
    let (_, ts) = pieces[seg].row_keys[r];
    outcomes[seg].conflicts += 1;
    outcomes[seg].rejected.push(Rejection::conflict(
        index,
        format!(
            "a row with this id is stored with timestamp {}; this one has {}: an id names one row, so it was not stored (give a new row a new id)",
            rfc3339_us(stored_us),
            rfc3339_us(ts)
        ),
    ));
}

fn record(
    table: Table,
    set: &[Segment],
    copied: Copied,
    pieces: &[Piece],
    outcomes: &mut [PieceOutcome],
    tally: &mut Tally,
) {
    let mut stored = |outcome: &mut PieceOutcome, seg: &Segment, r: usize| {
        outcome.stored += 1;
        if let Some(&(project, cost)) = pieces[seg.piece].row_tally.get(r) {
            let t = tally.entry(project).or_default();
            t.0 += 1;
            t.1 = t.1.saturating_add(cost.max(0));
        }
    };
    match copied {
        Copied::All => {
            for seg in set {
                for r in seg.rows.clone() {
                    stored(&mut outcomes[seg.piece], seg, r);
                }
            }
        }
        Copied::PerRow(fates) => {
            let mut fates = fates.into_iter();
            let mut conflicting = 0;
            for seg in set {
                for r in seg.rows.clone() {
                    match fates.next().unwrap_or(Fate::Duplicate) {
                        Fate::Stored => stored(&mut outcomes[seg.piece], seg, r),
                        Fate::Duplicate => outcomes[seg.piece].duplicates += 1,
                        Fate::Conflict(stored_us) => {
                            conflicting += 1;
                            reject_conflict(pieces, outcomes, seg.piece, r, stored_us);
                        }
                    }
                }
            }
            if conflicting > 0 {
                metrics::rows_conflicting(table, conflicting);
            }
        }
    }
}
