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
    ops::Range,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use deadpool_postgres::{Object, Pool, PoolError};
use futures_util::SinkExt;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    encode::{HEADER, TRAILER},
    recent::{COMMITTED_KEYS, Claim, RecentKeys, Seen},
};
use crate::{
    ack::{Failure, PieceOutcome, Rejection},
    codes::ErrorKind,
    copy::Piece,
    db::layout::{KEY_PRUNE_LOCK, Layout},
    metrics,
    row::Table,
    time::{pg_us_to_system_time, system_time_to_pg_us},
};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no database connection: {}", crate::db::error::describe_pool(.0))]
    Pool(#[from] PoolError),
    #[error("database error: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl CopyError {
    fn code(&self) -> Option<&SqlState> {
        match self {
            CopyError::Db(e) => e.code(),
            CopyError::Pool(PoolError::Backend(e)) => e.code(),
            CopyError::Pool(_) => None,
        }
    }

    /// Worth trying again on another (or a new) connection: the database was
    /// unreachable, restarting, overloaded, or the connection broke.
    pub fn is_retriable(&self) -> bool {
        match self {
            CopyError::Db(e) => crate::db::error::is_transient(e.code()),
            CopyError::Pool(e) => crate::db::error::pool_is_transient(e),
        }
    }

    /// The rows themselves are at fault (a value the database will not take).
    pub fn is_row_error(&self) -> bool {
        match self.code() {
            Some(code) => {
                let c = code.code();
                (c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
                    && *code != SqlState::UNIQUE_VIOLATION
            }
            None => false,
        }
    }

    fn is_unique_violation(&self) -> bool {
        self.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// The proto field of the value the database complained about, where
    /// it says which: the column it names ("COPY agent_events, line 1,
    /// column data: ..."), or the index whose row the value did not fit.
    fn field(&self, table: Table) -> Option<&'static str> {
        let CopyError::Db(e) = self else { return None };
        let db = e.as_db_error()?;
        let column = db.column().map(str::to_owned).or_else(|| {
            let w = db.where_()?;
            let rest = &w[w.find("column ")? + 7..];
            Some(rest.split([':', ' ', ',']).next()?.to_owned())
        });
        match column {
            Some(c) => table.proto_field(&c),
            None => {
                let m = db.message();
                let index = m.split('"').nth(1)?;
                table.proto_field_of_index(index)
            }
        }
    }

    /// PostgreSQL's message, SQLSTATE and detail.
    fn db_message(&self) -> String {
        match self {
            CopyError::Db(e) => crate::db::error::describe(e),
            other => other.to_string(),
        }
    }
}

/// A run of rows of one piece.
#[derive(Debug, Clone)]
struct Segment {
    piece: usize,
    rows: Range<usize>,
}

/// What one successful COPY attempt did with the rows of its segments.
enum Copied {
    /// Every row was new.
    All,
    /// Per row, in segment order.
    PerRow(Vec<Fate>),
}

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored,
    /// Its key was stored already (a resend), or came earlier in the flush.
    Duplicate,
    /// Its id is stored with another timestamp (this one, in µs): not
    /// stored (docs/reliability.md, "One id, one row").
    Conflict(i64),
}

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
        match copy_rows(&client, table, layout, pieces, set, &past).await {
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
                match copy_rows(&client, table, layout, pieces, &fresh, &past).await {
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

/// One COPY of the rows of `set`, committed when this returns Ok.
/// - rowstore: straight into the table, in autocommit; its primary key
///   refuses a stored row (unique_violation).
/// - columnstore: in one transaction, the rows' keys into the key tables
///   (which refuse a stored key; a row past the key window's into the
///   archive) and the rows, with direct compress, into the table's
///   compressed chunks.
async fn copy_rows(
    client: &Object,
    table: Table,
    layout: Layout,
    pieces: &[Piece],
    set: &[Segment],
    past: &PastKeyWindow,
) -> Result<(), CopyError> {
    let copy = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.name(),
        table.columns()
    );
    if layout == Layout::Rowstore {
        return send_copy(client, &copy, pieces, set).await.map(drop);
    }
    client
        .batch_execute("BEGIN; SET LOCAL timescaledb.enable_direct_compress_copy = on")
        .await?;
    let result = async {
        // In id order, the B-tree inserts of one flush walk its leaf pages
        // in order instead of at random: 0.64 -> 0.50 s for 300,000 keys
        // in 10,000-key COPYs into a table of 300,000 (BENCHMARKS.md,
        // "Where the columnstore service's CPU goes").
        let mut keys = keys_of(pieces, set);
        keys.sort_unstable();
        let (archived, recent): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| past.archived(k));
        for (into, keys) in [
            (table.keys_name(), recent),
            (table.key_archive_name(), archived),
        ] {
            if !keys.is_empty() {
                send_key_copy(client, into, &keys).await?;
            }
        }
        send_copy(client, &copy, pieces, set).await?;
        client.batch_execute("COMMIT").await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        // Leave the pooled connection clean; if even that fails, the pool
        // drops the connection on recycle.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// The keys of a flush into a key table: two binary fields a row.
async fn send_key_copy(
    client: &Object,
    into: &str,
    keys: &[(Uuid, i64)],
) -> Result<u64, CopyError> {
    let mut buf = bytes::BytesMut::with_capacity(HEADER.len() + keys.len() * 38 + 2);
    buf.extend_from_slice(HEADER);
    for (id, ts) in keys {
        buf.extend_from_slice(&2i16.to_be_bytes());
        buf.extend_from_slice(&16i32.to_be_bytes());
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&ts.to_be_bytes());
    }
    buf.extend_from_slice(TRAILER);
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            "COPY {into} (id, \"timestamp\") FROM STDIN (FORMAT binary)"
        ))
        .await?;
    futures_util::pin_mut!(sink);
    sink.feed(buf.freeze()).await?;
    Ok(sink.finish().await?)
}

/// Per row of `set`, in order: whether a row with its key is stored already
/// (or comes earlier in the same set).
async fn already_stored(
    client: &Object,
    table: Table,
    pieces: &[Piece],
    set: &[Segment],
) -> Result<Vec<bool>, CopyError> {
    let keys = keys_of(pieces, set);
    let found = stored_keys(client, table, &keys, 0, Lookup::ByIndex).await?;
    // A row twice in one flush (resent while the first send was still
    // buffered) is stored once: later occurrences count as duplicates.
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    Ok(keys
        .iter()
        .map(|k| found.get(&k.0).is_some_and(|ts| ts.contains(&k.1)) || !seen.insert(*k))
        .collect())
}

/// The keys of the rows of `set`, in order.
fn keys_of(pieces: &[Piece], set: &[Segment]) -> Vec<(Uuid, i64)> {
    set.iter()
        .flat_map(|seg| pieces[seg.piece].row_keys[seg.rows.clone()].iter().copied())
        .collect()
}

/// How a look-up in a wide table finds its ids.
#[derive(Clone, Copy)]
enum Lookup {
    /// `id = ANY($1)`: the row store's primary key (id, timestamp), probed
    /// once per id and chunk.
    ByIndex,
    /// `id IN (SELECT unnest($1))`: a hash join over the rows of the time
    /// range, which is what compressed chunks without an index on id
    /// offer. (`= ANY` of a parameter searches the array per row in a
    /// generic plan: 934 ms against 18 ms for 10,000 ids spread over a
    /// day's compressed rows, measured.)
    ByScan,
}

/// The timestamps stored for each id of `keys` in the wide table, within
/// their time range widened by `margin_us`. The time range lets the
/// planner skip other chunks (and, compressed, other batches).
async fn stored_keys(
    client: &Object,
    table: Table,
    keys: &[(Uuid, i64)],
    margin_us: i64,
    lookup: Lookup,
) -> Result<HashMap<Uuid, Vec<i64>>, CopyError> {
    let keyed = table.name();
    let matching = match lookup {
        Lookup::ByIndex => "id = ANY($1)",
        Lookup::ByScan => "id IN (SELECT unnest($1::uuid[]))",
    };
    // Prepared once per connection: planning `= ANY` of a fresh 10,000-id
    // array each time costs more than the lookups (about 20 ms measured),
    // and a custom plan for so many ids turns to a scan of the chunk.
    let statement = client
        .prepare_cached(&format!(
            "SELECT id, \"timestamp\" FROM {keyed} WHERE {matching} AND \"timestamp\" BETWEEN $2 AND $3"
        ))
        .await?;
    let mut stored: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for cluster in time_clusters(keys, margin_us) {
        let ids: Vec<Uuid> = cluster.iter().map(|k| k.0).collect();
        let (from, to) = (cluster[0].1, cluster[cluster.len() - 1].1);
        let found = client
            .query(
                &statement,
                &[
                    &ids,
                    &pg_us_to_system_time(from.saturating_sub(margin_us)),
                    &pg_us_to_system_time(to.saturating_add(margin_us)),
                ],
            )
            .await?;
        for row in &found {
            stored
                .entry(row.get(0))
                .or_default()
                .push(system_time_to_pg_us(row.get(1)));
        }
    }
    Ok(stored)
}

/// The keys in time order, cut where two neighbours are further apart than
/// the ranges either side would scan (twice the margin, plus an hour for
/// the cost of one more query): each cluster is looked up over its own
/// range. The rows of a backfill come session by session, a few hours
/// each, on days far apart; looked up over one range from the first to the
/// last, a flush scanned every day between (measured on 6M events over 30
/// days, 10,000 ids: 932 ms over the whole month, 18–43 ms within six
/// hours, and 256 ms as 50 one-hour sessions on random days against 585 ms
/// over their whole range). Rows spread evenly over the month make one
/// cluster, as before.
fn time_clusters(keys: &[(Uuid, i64)], margin_us: i64) -> Vec<Vec<(Uuid, i64)>> {
    const HOUR_US: i64 = 3_600_000_000;
    let mut sorted = keys.to_vec();
    sorted.sort_unstable_by_key(|k| k.1);
    let gap = margin_us.saturating_mul(2).saturating_add(HOUR_US);
    let mut clusters: Vec<Vec<(Uuid, i64)>> = Vec::new();
    for k in sorted {
        match clusters.last_mut() {
            Some(c) if k.1 - c[c.len() - 1].1 <= gap => c.push(k),
            _ => clusters.push(vec![k]),
        }
    }
    clusters
}

/// What the table holds of one row's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Nothing: copy it.
    New,
    /// The same id and timestamp: a resend, a duplicate.
    Stored,
    /// The id with another timestamp (this one, in µs).
    Conflict(i64),
}

/// Per key, in order: [`Probe::Stored`] when the key is stored; else
/// [`Probe::Conflict`] when its id is stored with another timestamp within
/// `w` µs, or comes earlier in the same flush with another one; else new.
/// (A key twice in one flush, not stored, is new both times: the COPY path
/// stores it once and counts the other as a duplicate.)
fn probe_keys(keys: &[(Uuid, i64)], stored: &HashMap<Uuid, Vec<i64>>, w: i64) -> Vec<Probe> {
    let mut first_in_flush: HashMap<Uuid, i64> = HashMap::with_capacity(keys.len());
    keys.iter()
        .map(|&(id, ts)| {
            let there = stored.get(&id).map(Vec::as_slice).unwrap_or_default();
            if there.contains(&ts) {
                return Probe::Stored;
            }
            let other = there
                .iter()
                .copied()
                .find(|s| (s - ts).abs() <= w)
                .or_else(|| {
                    let first = *first_in_flush.entry(id).or_insert(ts);
                    (first != ts && (first - ts).abs() <= w).then_some(first)
                });
            other.map_or(Probe::New, Probe::Conflict)
        })
        .collect()
}

fn rfc3339_us(us: i64) -> String {
    humantime::format_rfc3339_micros(pg_us_to_system_time(us)).to_string()
}

/// The rows of `set` (numbered in order) that `keep` selects, as segments.
fn only(set: &[Segment], keep: impl Fn(usize) -> bool) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut n = 0;
    for seg in set {
        for r in seg.rows.clone() {
            if keep(n) {
                match out.last_mut() {
                    Some(last) if last.piece == seg.piece && last.rows.end == r => {
                        last.rows.end = r + 1
                    }
                    _ => out.push(Segment {
                        piece: seg.piece,
                        rows: r..r + 1,
                    }),
                }
            }
            n += 1;
        }
    }
    out
}

async fn send_copy(
    client: &Object,
    statement: &str,
    pieces: &[Piece],
    set: &[Segment],
) -> Result<u64, CopyError> {
    let sink = client.copy_in::<_, Bytes>(statement).await?;
    futures_util::pin_mut!(sink);
    sink.feed(Bytes::from_static(HEADER)).await?;
    for seg in set {
        sink.feed(pieces[seg.piece].slice(seg.rows.clone())).await?;
    }
    sink.feed(Bytes::from_static(TRAILER)).await?;
    Ok(sink.finish().await?)
}

/// The row store's last resort: COPY into a session-local staging table,
/// then move the rows that are not there yet, all in one transaction.
async fn copy_deduplicated(
    client: &Object,
    table: Table,
    pieces: &[Piece],
    set: &[Segment],
) -> Result<Copied, CopyError> {
    let name = table.name();
    let cols = table.columns();
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {name}_staging (LIKE {name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ))
            .await?;
        send_copy(client, &format!("COPY {name}_staging ({cols}) FROM STDIN (FORMAT binary)"), pieces, set).await?;
        let insert = format!(
            "INSERT INTO {name} ({cols}) SELECT {cols} FROM {name}_staging ORDER BY id, \"timestamp\" ON CONFLICT DO NOTHING \
             RETURNING id, \"timestamp\""
        );
        let inserted = client.query(&insert, &[]).await?;
        Ok::<_, CopyError>(inserted)
    }
    .await;
    let inserted = match result {
        Ok(rows) => {
            client.batch_execute("COMMIT").await?;
            rows
        }
        Err(e) => {
            // Leave the pooled connection clean; if even that fails, the pool
            // drops the connection on recycle.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    // Which rows were new: the first occurrence of each inserted key.
    let mut new: HashMap<(Uuid, i64), u32> = HashMap::with_capacity(inserted.len());
    for row in &inserted {
        let ts: std::time::SystemTime = row.get(1);
        *new.entry((row.get(0), system_time_to_pg_us(ts)))
            .or_default() += 1;
    }
    let mut flags = Vec::new();
    for seg in set {
        let piece = &pieces[seg.piece];
        for r in seg.rows.clone() {
            let key = piece.row_keys[r];
            let fate = match new.get_mut(&key) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Fate::Stored
                }
                _ => Fate::Duplicate,
            };
            flags.push(fate);
        }
    }
    Ok(Copied::PerRow(flags))
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

/// Columnstore: how long, by a row's timestamp, each key table holds its
/// key (`sql/timescaledb/layout.sql`): the recent keys `--key-window`, the
/// archive `--max-past` (each with an hour's margin in the database, for
/// the clocks' difference).
#[derive(Debug, Clone, Copy)]
pub struct KeyWindows {
    pub recent: Duration,
    pub archive: Duration,
}

impl KeyWindows {
    /// The windows as seen `now`; `margin_us` is `--id-conflict-window`.
    fn at(&self, now: std::time::SystemTime, margin_us: i64) -> PastKeyWindow {
        let now = system_time_to_pg_us(now);
        let ago =
            |d: Duration| now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        PastKeyWindow {
            before_us: ago(self.recent),
            archive_before_us: ago(self.archive),
            margin_us,
        }
    }
}

/// Columnstore: which rows are past the key window, whose keys are (or
/// go) in the archive, and which are past the archive's window too.
#[derive(Clone, Copy)]
struct PastKeyWindow {
    /// Rows with timestamps before this (µs) are past the key window.
    before_us: i64,
    /// ... and before this, past the archive's (a spool replayed after a
    /// long outage): their ids are looked for in the stored rows.
    archive_before_us: i64,
    /// How far around a row's time a stored id with another timestamp is
    /// a conflict: `--id-conflict-window`.
    margin_us: i64,
}

impl PastKeyWindow {
    /// Its id needs a look-up before the COPY: past the key window, or so
    /// close to it that an archived key of the same id with a time within
    /// the conflict window may exist.
    fn holds(&self, key: &(Uuid, i64)) -> bool {
        key.1 < self.before_us.saturating_add(self.margin_us)
    }

    /// Its key goes to the archive.
    fn archived(&self, key: &(Uuid, i64)) -> bool {
        key.1 < self.before_us
    }

    /// Its key may be gone from the archive too.
    fn beyond_archive(&self, key: &(Uuid, i64)) -> bool {
        key.1 < self.archive_before_us
    }
}

/// The columnstore's resend path, after its COPY met a stored id
/// (`first`), or before any COPY when rows of `set` are past the key
/// window. The ids are looked up in both key tables' primary keys (one
/// probe per id, whatever the rows' time or the table's size): after a
/// COPY met a key, all of them; before any COPY, those of rows past the
/// key window, whose stored keys may be in the archive, where a COPY into
/// the recent keys would not meet them (and the other way round). Rows
/// past the archive's window too are looked for in the wide table's rows
/// around their times. A row whose key is stored is a duplicate, one whose
/// id is stored with another timestamp a conflict, and so is a later row
/// of the flush that repeats an earlier one's id with another time (with
/// the same time, a duplicate). The rest are COPYed, keys included, in one
/// transaction as always: the key tables' unique indexes still settle two
/// flushes racing to store one id.
async fn resolve_by_id(
    client: &Object,
    table: Table,
    pieces: &[Piece],
    set: &[Segment],
    first: Option<CopyError>,
    past: PastKeyWindow,
) -> Result<Copied, CopyError> {
    let keys = keys_of(pieces, set);
    let mut fates: Vec<Option<Fate>> = vec![None; keys.len()];
    // Before any COPY, only the ids of rows past the key window are looked
    // up: a key the recent key table holds makes the COPY fail, and the
    // next round looks up all.
    let mut in_keys = first.is_some();
    let mut last = first;
    // Per row: the earlier row of the flush whose fate decides its own.
    let mut repeats: Vec<Option<usize>> = vec![None; keys.len()];
    // Another round only when the COPY of the new rows met a key another
    // flush committed after the look-up: that row is classified next time,
    // so each round settles at least one row.
    for _ in 0..=keys.len() {
        let open: Vec<usize> = (0..keys.len()).filter(|&n| fates[n].is_none()).collect();
        let old: Vec<(Uuid, i64)> = open
            .iter()
            .map(|&n| keys[n])
            .filter(|k| past.holds(k))
            .collect();
        // The key tables' retention job moves keys to the archive (and
        // deletes them there) under this lock, taken exclusively: held from
        // the look-up to the COPY's commit, it keeps a key another flush
        // commits meanwhile from leaving the table this flush's key COPY
        // goes to before that COPY meets it.
        // Only a key past the window proper can move; one in the band
        // before it (within the conflict window) stays where its COPY goes.
        let locked = old.iter().any(|k| past.archived(k));
        if locked {
            metrics::rows_past_key_window(table, old.len() as u64);
            client
                .execute("SELECT pg_advisory_lock_shared($1)", &[&KEY_PRUNE_LOCK])
                .await?;
        }
        let round: Result<Option<CopyError>, CopyError> = async {
            let mut stored: HashMap<Uuid, Vec<i64>> = HashMap::with_capacity(open.len());
            let ids: Vec<Uuid> = if in_keys {
                open.iter().map(|&n| keys[n].0).collect()
            } else {
                old.iter().map(|k| k.0).collect()
            };
            if !ids.is_empty() {
                // Prepared once per connection: a generic plan probes the
                // primary key once per id (planning a 10,000-id array each
                // time costs more than the probes).
                let statement = client.prepare_cached(&key_lookup(table)).await?;
                for row in client.query(&statement, &[&ids]).await? {
                    stored
                        .entry(row.get(0))
                        .or_default()
                        .push(system_time_to_pg_us(row.get(1)));
                }
            }
            let beyond: Vec<(Uuid, i64)> = old
                .iter()
                .copied()
                .filter(|k| past.beyond_archive(k))
                .collect();
            if !beyond.is_empty() {
                let rows =
                    stored_keys(client, table, &beyond, past.margin_us, Lookup::ByScan).await?;
                for (id, times) in rows {
                    stored.entry(id).or_default().extend(times);
                }
            }
            // A later row of the flush with an id not found stored waits
            // for its first occurrence's fate, which the COPY below or a
            // later round (whose look-up may find the id) decides.
            let mut first_in_flush: HashMap<Uuid, usize> = HashMap::with_capacity(open.len());
            for &n in &open {
                let (id, ts) = keys[n];
                let there = stored.get(&id).map(Vec::as_slice).unwrap_or_default();
                repeats[n] = None;
                fates[n] = match there.first() {
                    _ if there.contains(&ts) => Some(Fate::Duplicate),
                    Some(&s) => Some(Fate::Conflict(s)),
                    None => {
                        repeats[n] = first_in_flush.get(&id).copied();
                        first_in_flush.entry(id).or_insert(n);
                        None
                    }
                };
            }
            let fresh = only(set, |n| fates[n].is_none() && repeats[n].is_none());
            if fresh.is_empty() {
                return Ok(None);
            }
            match copy_rows(client, table, Layout::Columnstore, pieces, &fresh, &past).await {
                Ok(()) => {
                    for (f, r) in fates.iter_mut().zip(&repeats) {
                        if f.is_none() && r.is_none() {
                            *f = Some(Fate::Stored);
                        }
                    }
                    Ok(None)
                }
                Err(e) if e.is_unique_violation() => Ok(Some(e)),
                Err(e) => Err(e),
            }
        }
        .await;
        if locked {
            // A connection that fails here is dropped, and its lock with it.
            let _ = client
                .execute("SELECT pg_advisory_unlock_shared($1)", &[&KEY_PRUNE_LOCK])
                .await;
        }
        in_keys = true;
        match round? {
            None => break,
            Some(e) => last = Some(e),
        }
    }
    settle_repeats(&keys, &mut fates, &repeats);
    if fates.iter().any(Option::is_none) {
        // Every round ends settled or after a unique_violation.
        return Err(last.expect("an unsettled round met a unique_violation"));
    }
    Ok(Copied::PerRow(fates.into_iter().flatten().collect()))
}

/// The look-up of ids (`$1`, a uuid array) in both key tables: one probe
/// of each primary key per id. Public for the test that keeps it so.
pub fn key_lookup(table: Table) -> String {
    format!(
        "SELECT id, \"timestamp\" FROM {} WHERE id = ANY($1) \
         UNION ALL SELECT id, \"timestamp\" FROM {} WHERE id = ANY($1)",
        table.keys_name(),
        table.key_archive_name()
    )
}

/// The fates of rows that repeat an earlier row's id in one flush, from
/// that row's: stored or found stored with its own time, the repeat is a
/// duplicate with the same time and a conflict with another; in conflict
/// with a stored time, the repeat is a duplicate of that row if it has
/// that time, else a conflict with it too.
fn settle_repeats(keys: &[(Uuid, i64)], fates: &mut [Option<Fate>], repeats: &[Option<usize>]) {
    for (n, first) in repeats.iter().enumerate() {
        let Some(first) = *first else { continue };
        let ts = keys[n].1;
        let stored = match fates[first] {
            Some(Fate::Stored | Fate::Duplicate) => keys[first].1,
            Some(Fate::Conflict(s)) => s,
            None => continue,
        };
        fates[n] = Some(if ts == stored {
            Fate::Duplicate
        } else {
            Fate::Conflict(stored)
        });
    }
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

/// Splits a set of segments after `at` rows.
fn split(set: Vec<Segment>, mut at: usize) -> (Vec<Segment>, Vec<Segment>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for seg in set {
        let n = seg.rows.len();
        if at >= n {
            at -= n;
            a.push(seg);
        } else if at == 0 {
            b.push(seg);
        } else {
            let mid = seg.rows.start + at;
            a.push(Segment {
                piece: seg.piece,
                rows: seg.rows.start..mid,
            });
            b.push(Segment {
                piece: seg.piece,
                rows: mid..seg.rows.end,
            });
            at = 0;
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_far_apart_in_time_are_looked_up_apart() {
        const H: i64 = 3_600_000_000;
        let id = |n: u128| Uuid::from_u128(n);
        let keys = [
            (id(1), 100 * H),
            (id(2), 2 * H),
            (id(3), 101 * H),
            (id(4), 2 * H + 5),
            (id(5), 5 * H + 10),
        ];
        // Margin 1 h: neighbours more than 3 h apart start a new cluster.
        let clusters = time_clusters(&keys, H);
        let ids: Vec<Vec<u128>> = clusters
            .iter()
            .map(|c| c.iter().map(|k| k.0.as_u128()).collect())
            .collect();
        assert_eq!(ids, vec![vec![2, 4], vec![5], vec![1, 3]]);
        // Evenly spread keys: one range, as before.
        let even: Vec<(Uuid, i64)> = (0..100).map(|n| (id(n), n as i64 * H)).collect();
        assert_eq!(time_clusters(&even, H).len(), 1);
        assert!(time_clusters(&[], H).is_empty());
    }

    #[test]
    fn only_keeps_the_selected_rows_as_runs() {
        let set = vec![
            Segment {
                piece: 0,
                rows: 2..6,
            },
            Segment {
                piece: 1,
                rows: 0..3,
            },
        ];
        // Rows numbered 0..7 in order; keep all but numbers 1 and 4.
        let kept = only(&set, |n| n != 1 && n != 4);
        assert_eq!(
            kept.iter()
                .map(|s| (s.piece, s.rows.clone()))
                .collect::<Vec<_>>(),
            vec![(0, 2..3), (0, 4..6), (1, 1..3)]
        );
    }

    #[test]
    fn an_id_with_another_timestamp_is_a_conflict_within_the_window() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let stored: HashMap<Uuid, Vec<i64>> = [(a, vec![1_000]), (b, vec![5_000])].into();
        let keys = [
            (a, 1_000), // a resend: a duplicate, not copied again
            (a, 1_500), // the same id, another timestamp
            (b, 9_000), // beyond the window of 2,000
            (c, 100),   // new ...
            (c, 100),   // ... twice in one flush: a duplicate
            (c, 200),   // ... and again with another timestamp
        ];
        use Probe::*;
        assert_eq!(
            probe_keys(&keys, &stored, 2_000),
            [Stored, Conflict(1_000), New, New, New, Conflict(100)]
        );
    }

    #[test]
    fn a_repeat_in_a_flush_follows_its_first_rows_fate() {
        let id = |n: u128| Uuid::from_u128(n);
        let keys = [
            (id(1), 10),
            (id(1), 10),
            (id(1), 11),
            (id(2), 20),
            (id(2), 20),
            (id(2), 30),
            (id(3), 40),
        ];
        let mut fates = [
            Some(Fate::Stored),
            None,
            None,
            // The first id-2 row conflicts with a row stored at 30.
            Some(Fate::Conflict(30)),
            None,
            None,
            Some(Fate::Duplicate),
        ];
        let repeats = [None, Some(0), Some(0), None, Some(3), Some(3), None];
        settle_repeats(&keys, &mut fates, &repeats);
        assert_eq!(
            fates,
            [
                Some(Fate::Stored),
                Some(Fate::Duplicate),
                Some(Fate::Conflict(10)),
                Some(Fate::Conflict(30)),
                Some(Fate::Conflict(30)),
                Some(Fate::Duplicate),
                Some(Fate::Duplicate),
            ]
        );
    }

    #[test]
    fn split_cuts_at_row_boundaries() {
        let set = vec![
            Segment {
                piece: 0,
                rows: 0..3,
            },
            Segment {
                piece: 1,
                rows: 0..2,
            },
        ];
        let (a, b) = split(set, 4);
        assert_eq!(
            a.iter()
                .map(|s| (s.piece, s.rows.clone()))
                .collect::<Vec<_>>(),
            vec![(0, 0..3), (1, 0..1)]
        );
        assert_eq!(
            b.iter()
                .map(|s| (s.piece, s.rows.clone()))
                .collect::<Vec<_>>(),
            vec![(1, 1..2)]
        );
    }
}
