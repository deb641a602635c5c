//! The statements a flush runs and the rows it runs them on: a flush is a
//! list of [`Segment`]s (runs of rows of its pieces), each COPY is one
//! binary `COPY … FROM STDIN` of some of them, committed when it returns,
//! and [`CopyError`] keeps PostgreSQL's message, detail and SQLSTATE. The
//! writer (writer.rs) decides which rows go in which COPY; the key look-ups
//! (keys.rs) decide which are new.

use std::{collections::HashMap, ops::Range};

use bytes::Bytes;
use deadpool_postgres::{Object, PoolError};
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::encode::{HEADER, TRAILER};
use crate::{copy::Piece, db::layout::Layout, row::Table, time::system_time_to_pg_us};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no database connection: {}", crate::db::error::describe_pool(.0))]
    Pool(#[from] PoolError),
    #[error("database error: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl CopyError {
    pub(super) fn code(&self) -> Option<&SqlState> {
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

    pub(super) fn is_unique_violation(&self) -> bool {
        self.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// The proto field of the value the database complained about, where
    /// it says which: the column it names ("COPY agent_events, line 1,
    /// column data: ..."), or the index whose row the value did not fit.
    pub(super) fn field(&self, table: Table) -> Option<&'static str> {
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
    pub(super) fn db_message(&self) -> String {
        match self {
            CopyError::Db(e) => crate::db::error::describe(e),
            other => other.to_string(),
        }
    }
}

/// A run of rows of one piece.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) piece: usize,
    pub(super) rows: Range<usize>,
}

/// What one successful COPY attempt did with the rows of its segments.
pub(super) enum Copied {
    /// Every row was new.
    All,
    /// Per row, in segment order.
    PerRow(Vec<Fate>),
}

/// What became of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Stored,
    /// Its key was stored already (a resend), or came earlier in the flush.
    Duplicate,
    /// Its id is stored with another timestamp (this one, in µs): not
    /// stored (docs/reliability.md, "One id, one row").
    Conflict(i64),
}

/// One COPY of the rows of `set`, committed when this returns Ok.
/// - rowstore: straight into the table, in autocommit; its primary key
///   refuses a stored row (unique_violation).
/// - columnstore: in one transaction, the rows' keys into the key tables
///   (which refuse a stored key; the keys `archived` picks into the
///   archive) and the rows, with direct compress, into the table's
///   compressed chunks.
pub(super) async fn copy_rows(
    client: &Object,
    table: Table,
    layout: Layout,
    pieces: &[Piece],
    set: &[Segment],
    archived: impl Fn(&(Uuid, i64)) -> bool,
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
        let (archived, recent): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| archived(k));
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
pub(super) async fn send_key_copy(
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

/// The keys of the rows of `set`, in order.
pub(super) fn keys_of(pieces: &[Piece], set: &[Segment]) -> Vec<(Uuid, i64)> {
    set.iter()
        .flat_map(|seg| pieces[seg.piece].row_keys[seg.rows.clone()].iter().copied())
        .collect()
}

/// The rows of `set` (numbered in order) that `keep` selects, as segments.
pub(super) fn only(set: &[Segment], keep: impl Fn(usize) -> bool) -> Vec<Segment> {
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

pub(super) async fn send_copy(
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
pub(super) async fn copy_deduplicated(
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

/// Splits a set of segments after `at` rows.
pub(super) fn split(set: Vec<Segment>, mut at: usize) -> (Vec<Segment>, Vec<Segment>) {
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
