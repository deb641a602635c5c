//! Which rows of a flush are stored already, looked up by key: the row
//! store's probe of its primary key, and the columnstore's key tables — the
//! recent keys, the key archive ([`KeyWindows`]) and, past the archive's
//! window, the stored rows themselves — with the resend path that settles
//! each row of a flush that met a stored id ([`resolve_by_id`]).

use std::{collections::HashMap, time::Duration};

use deadpool_postgres::Object;
use uuid::Uuid;

use super::statements::{Copied, CopyError, Fate, Segment, copy_rows, keys_of, only};
use crate::{
    copy::Piece,
    db::layout::{KEY_PRUNE_LOCK, Layout},
    metrics,
    row::Table,
    time::{pg_us_to_system_time, system_time_to_pg_us},
};

/// Per row of `set`, in order: whether a row with its key is stored already
/// (or comes earlier in the same set).
pub(super) async fn already_stored(
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

/// How a look-up in a wide table finds its ids.
#[derive(Clone, Copy)]
pub(super) enum Lookup {
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
pub(super) async fn stored_keys(
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
pub(super) fn time_clusters(keys: &[(Uuid, i64)], margin_us: i64) -> Vec<Vec<(Uuid, i64)>> {
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
pub(super) enum Probe {
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
pub(super) fn probe_keys(
    keys: &[(Uuid, i64)],
    stored: &HashMap<Uuid, Vec<i64>>,
    w: i64,
) -> Vec<Probe> {
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
    pub(super) fn at(&self, now: std::time::SystemTime, margin_us: i64) -> PastKeyWindow {
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
pub(super) struct PastKeyWindow {
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
    pub(super) fn holds(&self, key: &(Uuid, i64)) -> bool {
        key.1 < self.before_us.saturating_add(self.margin_us)
    }

    /// Its key goes to the archive.
    pub(super) fn archived(&self, key: &(Uuid, i64)) -> bool {
        key.1 < self.before_us
    }

    /// Its key may be gone from the archive too.
    pub(super) fn beyond_archive(&self, key: &(Uuid, i64)) -> bool {
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
pub(super) async fn resolve_by_id(
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
        let archived = old.iter().filter(|k| past.archived(k)).count();
        let locked = archived > 0;
        if locked {
            metrics::rows_past_key_window(table, archived as u64);
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
            match copy_rows(client, table, Layout::Columnstore, pieces, &fresh, |k| {
                past.archived(k)
            })
            .await
            {
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
pub(super) fn settle_repeats(
    keys: &[(Uuid, i64)],
    fates: &mut [Option<Fate>],
    repeats: &[Option<usize>],
) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_age_picks_its_key_table_and_its_look_up() {
        const H: i64 = 3_600_000_000;
        let now = std::time::SystemTime::now();
        let now_us = system_time_to_pg_us(now);
        let windows = KeyWindows {
            recent: Duration::from_secs(48 * 3_600),
            archive: Duration::from_secs(90 * 24 * 3_600),
        };
        let past = windows.at(now, H);
        const M: i64 = H / 60;
        let key = |minutes_ago: i64| (Uuid::nil(), now_us - minutes_ago * M);
        // (minutes ago, looked up first, key archived, looked for in the rows)
        for (ago, holds, archived, beyond) in [
            (60, false, false, false),
            (46 * 60 + 59, false, false, false),
            (47 * 60 + 1, true, false, false), // within the conflict window of the edge
            (48 * 60 + 1, true, true, false),
            (90 * 24 * 60 - 1, true, true, false),
            (90 * 24 * 60 + 1, true, true, true), // a spool replayed after 90 days
        ] {
            let k = key(ago);
            assert_eq!(
                (past.holds(&k), past.archived(&k), past.beyond_archive(&k)),
                (holds, archived, beyond),
                "{ago} min ago"
            );
        }
    }

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
}
