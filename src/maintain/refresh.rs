//! Late rows → exact refreshes of the continuous aggregates.
//!
//! A continuous aggregate's refresh policy only looks back over its window
//! (`--hourly-refresh-window`, `--daily-refresh-window`); rows replayed by an
//! offline client after that would leave their buckets wrong for good
//! (timescale/timescaledb#7960, #8132). Intake marks each row older than
//! `--late-after` with its hour; after the flush holding it, the batcher
//! hands those hours here ([`LateRefresher::note`]).
//!
//! Hours are recorded in the `late_hours` table (`sql/0007_late_hours.sql`),
//! not kept in memory: with several instances behind a load balancer, each
//! notes its hours there, and one refresh round at a time, by whichever
//! instance holds the refresh lock, refreshes them all. So N instances do
//! not refresh the same hours N times over, and hours noted just before a
//! crash are refreshed by whichever instance runs next.
//!
//! A round (every `--late-refresh-every`) takes the recorded hours that
//! have settled ([`ready`]: no late row noted in them for `--late-settle`,
//! or waiting ten times that since first noted), so that a backfill
//! re-materialises each bucket once, when it is done with it, and not at
//! every round while its rows keep landing. It merges them into ranges
//! (neighbours closer than [`MERGE_GAP_HOURS`] join, so a day of scattered
//! replays is one refresh, not dozens) and refreshes them a day at a time
//! ([`pieces`]): the hourly aggregate over the day's hours, then the daily
//! ones (which read it) over the whole day; after each day it pauses as
//! long as the day took, so the refreshes hold the database at most half
//! the time and ingest goes on beside them. It deletes the hours it
//! refreshed unless they were noted again after it read them. A failed
//! refresh leaves its hours for the next round. When every sender is gone
//! (shutdown, after the last flush) one final round records what is
//! unsaved and refreshes the settled hours without pauses; the others stay
//! recorded for the next instance's rounds (refreshing a backfill's month
//! at shutdown would outlast `--shutdown-timeout`).
//!
//! Not covered: hours a flush wrote but could not record because the
//! database went away between the COPY and the note, and the process then
//! died (docs/schema.md says how an operator refreshes a range by hand).

use std::{collections::BTreeSet, time::Duration};

use deadpool_postgres::Pool;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::{
    db::error::{describe, describe_pool},
    metrics,
    row::Table,
    time::{pg_us_to_system_time, system_time_to_pg_us},
};

const HOUR_US: i64 = 3_600_000_000;
/// Hours apart that two late hours may be and still be refreshed as one range.
pub const MERGE_GAP_HOURS: i64 = 6;

/// The aggregates built from each table, in the order they must be
/// refreshed (a hierarchical aggregate after the one it reads), with their
/// bucket width in hours.
fn aggregates(table: Table) -> &'static [(&'static str, i64)] {
    match table {
        Table::AgentEvents => &[
            ("agent_events_hourly", 1),
            ("agent_events_hourly_by_agent", 1),
            ("agent_events_daily", 24),
            ("llm_usage_daily", 24),
            ("tool_usage_daily", 24),
            ("file_activity_daily", 24),
            ("developer_daily", 24),
            ("developer_models_daily", 24),
            ("developer_tools_daily", 24),
            ("productivity_daily", 24),
            ("session_daily", 24),
            ("developer_requests_hourly", 1),
        ],
        Table::ChatMessages => &[("chat_activity_hourly", 1)],
    }
}

/// Every continuous aggregate, each after those it reads.
pub fn all_in_refresh_order() -> impl Iterator<Item = &'static str> {
    Table::ALL
        .into_iter()
        .flat_map(|t| aggregates(t).iter().map(|(view, _)| *view))
}

/// The hour (since 2000-01-01 UTC, PostgreSQL's epoch) a timestamp falls in.
pub fn hour_of(pg_us: i64) -> i64 {
    pg_us.div_euclid(HOUR_US)
}

/// Where flushes report the hours they wrote late rows into.
#[derive(Clone)]
pub struct LateRefresher {
    tx: mpsc::UnboundedSender<(Table, Vec<i64>)>,
}

impl LateRefresher {
    /// Starts the refresher. It ends after every clone has been dropped and
    /// its last round has run.
    /// `late_after` is intake's `--late-after`: rows younger than it are
    /// not noted, so no refresh may reach buckets they can still land in.
    /// `settle` is `--late-settle` ([`ready`]).
    pub fn spawn(
        pool: Pool,
        every: Duration,
        late_after: Duration,
        settle: Duration,
    ) -> (Self, JoinHandle<()>) {
        metrics::zero_refreshes(
            Table::ALL
                .into_iter()
                .flat_map(|t| aggregates(t).iter().map(|(view, _)| *view)),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let late_after_us = late_after.as_micros() as i64;
        (
            Self { tx },
            tokio::spawn(run(pool, rx, every, late_after_us, settle)),
        )
    }

    /// Hours (see [`hour_of`]) that now hold late rows of `table`.
    pub fn note(&self, table: Table, hours: Vec<i64>) {
        if !hours.is_empty() {
            // Only fails after shutdown, when no refresh could run anyway.
            let _ = self.tx.send((table, hours));
        }
    }
}

/// Arbitrary, fixed: the advisory lock that makes one instance at a time
/// run a refresh round.
const REFRESH_LOCK: i64 = 0x6167_656e_7472_6672; // "agentrfr"
/// Hours from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_HOURS: i64 = 262_968;

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<(Table, Vec<i64>)>,
    every: Duration,
    late_after_us: i64,
    settle: Duration,
) {
    // Hours noted here but not yet recorded in `late_hours`.
    let mut unsaved: [BTreeSet<i64>; 2] = Default::default();
    let mut next_round = Instant::now() + every;
    let mut open = true;
    while open {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((table, hours)) => {
                    unsaved[table as usize].extend(hours);
                    if let Err(e) = save(&pool, &mut unsaved).await {
                        tracing::warn!(error = %e, "cannot record late hours yet; retrying");
                        metrics::db_error("late_refresh");
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(next_round) => {
                round(&pool, &mut unsaved, late_after_us, settle, true).await;
                next_round = Instant::now() + every;
            }
        }
    }
    // The last round: what has settled, without pauses.
    round(&pool, &mut unsaved, late_after_us, settle, false).await;
    let lost: usize = unsaved.iter().map(BTreeSet::len).sum();
    if lost > 0 {
        tracing::warn!(
            hours = lost,
            "late hours not recorded at shutdown: their aggregates need a manual refresh (docs/schema.md)"
        );
    }
}

/// A round's database failure, shown with PostgreSQL's full message.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("{}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

type DbResult<T> = Result<T, RoundError>;

/// Records `unsaved` in `late_hours` (a repeat notes the hour again).
async fn save(pool: &Pool, unsaved: &mut [BTreeSet<i64>; 2]) -> DbResult<()> {
    if unsaved.iter().all(BTreeSet::is_empty) {
        return Ok(());
    }
    let client = pool.get().await?;
    for table in Table::ALL {
        let hours: Vec<i64> = unsaved[table as usize]
            .iter()
            .map(|h| h + PG_EPOCH_UNIX_HOURS)
            .collect();
        if hours.is_empty() {
            continue;
        }
        client
            .execute(
                "INSERT INTO late_hours (table_name, hour)
                 SELECT $1, to_timestamp(h * 3600) FROM unnest($2::bigint[]) AS h
                 ON CONFLICT (table_name, hour) DO UPDATE SET noted_at = now()",
                &[&table.name(), &hours],
            )
            .await?;
        unsaved[table as usize].clear();
    }
    Ok(())
}

/// Records what is unsaved, then, if no other instance is running a round,
/// refreshes the recorded hours that are [`ready`] after `settle`, pausing
/// after each day when `pause`. What fails or waits stays recorded.
async fn round(
    pool: &Pool,
    unsaved: &mut [BTreeSet<i64>; 2],
    late_after_us: i64,
    settle: Duration,
    pause: bool,
) {
    if let Err(e) = save(pool, unsaved).await {
        tracing::warn!(error = %e, "cannot record late hours yet; retrying next round");
        metrics::db_error("late_refresh");
        return;
    }
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %describe_pool(&e), "late-data refresh: no connection; retrying next round");
            return;
        }
    };
    let work = async |client: &tokio_postgres::Client| {
        refresh_recorded(client, late_after_us, settle, pause).await
    };
    match super::exclusively(&client, REFRESH_LOCK, work).await {
        Ok(Some(Ok(()))) | Ok(None) => {} // done, or another instance is on it
        Ok(Some(Err(e))) => {
            tracing::warn!(error = %e, "late-data refresh failed; retrying next round");
            metrics::db_error("late_refresh");
        }
        Err(e) => {
            tracing::warn!(error = %describe(&e), "late-data refresh: lock failed; retrying next round");
            metrics::db_error("late_refresh");
        }
    }
}

async fn refresh_recorded(
    client: &tokio_postgres::Client,
    late_after_us: i64,
    settle: Duration,
    pause: bool,
) -> DbResult<()> {
    // Taken before the read: an hour noted after this may hold rows the
    // refreshes below do not see, so its row must survive the delete. It is
    // also the database's "now" that bounds every refresh (see [`clamp`]).
    let read_at: std::time::SystemTime = client.query_one("SELECT now()", &[]).await?.get(0);
    let settled = hour_of(system_time_to_pg_us(read_at) - late_after_us);
    let mut pending = 0;
    for table in Table::ALL {
        let recorded = client
            .query(
                "SELECT (extract(epoch FROM hour) / 3600)::bigint, noted_at, first_noted_at
                 FROM late_hours WHERE table_name = $1",
                &[&table.name()],
            )
            .await?;
        let hours: BTreeSet<i64> = recorded
            .iter()
            .filter(|r| ready(r.get(1), r.get(2), read_at, settle))
            .map(|r| r.get::<_, i64>(0) - PG_EPOCH_UNIX_HOURS)
            .collect();
        let mut done = Vec::new();
        let days: Vec<std::ops::Range<i64>> = merge(&hours).into_iter().flat_map(pieces).collect();
        for (i, day) in days.iter().enumerate() {
            let began = Instant::now();
            if refresh(client, table, day.clone(), settled).await {
                done.extend(hours.range(day.clone()).map(|h| h + PG_EPOCH_UNIX_HOURS));
            }
            // Half the time at most, while ingest goes on: the last round
            // (shutdown) does not wait.
            if pause && i + 1 < days.len() {
                tokio::time::sleep(began.elapsed()).await;
            }
        }
        pending += recorded.len() - done.len();
        client
            .execute(
                "DELETE FROM late_hours WHERE table_name = $1
                    AND hour = ANY (SELECT to_timestamp(h * 3600) FROM unnest($2::bigint[]) AS h)
                    AND noted_at <= $3",
                &[&table.name(), &done, &read_at],
            )
            .await?;
    }
    metrics::late_pending(pending);
    Ok(())
}

/// Whether a late hour, last noted at `noted` and first at `first`, is due
/// for its refresh at `now`: no late row noted in it for `settle` (a
/// backfill is done with it), or waiting ten times that since first noted
/// (an hour a steady trickle of late rows keeps noting is refreshed all the
/// same).
pub fn ready(
    noted: std::time::SystemTime,
    first: std::time::SystemTime,
    now: std::time::SystemTime,
    settle: Duration,
) -> bool {
    let waited = |since: std::time::SystemTime| now.duration_since(since).unwrap_or_default();
    waited(noted) >= settle || waited(first) >= settle.saturating_mul(10)
}

/// An hour range cut at day boundaries: each piece is refreshed on its own
/// (the hourly aggregate over its hours, the daily ones over its day), so
/// one refresh statement's cost is a day's rows whatever the range.
pub fn pieces(range: std::ops::Range<i64>) -> Vec<std::ops::Range<i64>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let day_end = (at.div_euclid(24) + 1) * 24;
        let end = day_end.min(range.end);
        out.push(at..end);
        at = end;
    }
    out
}

/// Sorted hours → half-open hour ranges, joining gaps up to [`MERGE_GAP_HOURS`].
pub fn merge(hours: &BTreeSet<i64>) -> Vec<std::ops::Range<i64>> {
    let mut ranges: Vec<std::ops::Range<i64>> = Vec::new();
    for &h in hours {
        match ranges.last_mut() {
            Some(r) if h - r.end < MERGE_GAP_HOURS => r.end = h + 1,
            _ => ranges.push(h..h + 1),
        }
    }
    ranges
}

/// The buckets of width `width` (hours) to refresh for late rows in
/// `hours`: whole buckets covering them, but only buckets that end by the
/// hour `settled` (the hour of now − `--late-after`) starts.
///
/// Refreshing a bucket moves the aggregate's watermark past it, and
/// real-time aggregation reads raw rows only from the watermark on. A row
/// younger than `--late-after` is not noted, so a bucket it can still land
/// in must stay above the watermark: materialising today's daily bucket
/// would freeze today's figures at what was there at the refresh, until the
/// day is over and the policy runs again. The buckets left out need no
/// refresh: nothing has moved the watermark over them (the policies' end
/// offsets are at least `--late-after`), so real time reads them raw.
pub fn clamp(
    hours: std::ops::Range<i64>,
    width: i64,
    settled: i64,
) -> Option<std::ops::Range<i64>> {
    let start = hours.start.div_euclid(width) * width;
    let end = (hours.end + width - 1).div_euclid(width) * width;
    let end = end.min(settled.div_euclid(width) * width);
    (start < end).then_some(start..end)
}

/// Refreshes every aggregate of `table` over `hours` (each clamped by
/// [`clamp`] to what is `settled`). One aggregate's failure does not hold back the others; it is
/// logged with PostgreSQL's full message and counted, and the range is
/// reported not done (false) so the next round tries it again.
async fn refresh(
    client: &tokio_postgres::Client,
    table: Table,
    hours: std::ops::Range<i64>,
    settled: i64,
) -> bool {
    let mut all_done = true;
    for &(view, width) in aggregates(table) {
        let Some(range) = clamp(hours.clone(), width, settled) else {
            continue;
        };
        // refresh_continuous_aggregate refuses to run in a transaction
        // block, which the extended protocol's implicit one can count as;
        // the simple protocol with literals we formatted ourselves avoids it.
        let sql = format!(
            "CALL refresh_continuous_aggregate('{view}', '{}', '{}')",
            rfc3339(range.start),
            rfc3339(range.end)
        );
        let began = Instant::now();
        match client.batch_execute(&sql).await {
            Ok(()) => {
                metrics::late_refreshed(view);
                tracing::debug!(view, from = %rfc3339(range.start), to = %rfc3339(range.end), took = ?began.elapsed(), "late-data refresh");
            }
            Err(e) => {
                all_done = false;
                metrics::refresh_failed(view);
                tracing::warn!(
                    view,
                    from = %rfc3339(range.start),
                    to = %rfc3339(range.end),
                    error = %describe(&e),
                    "late-data refresh of one aggregate failed; the others go on, this one is retried next round"
                );
            }
        }
    }
    all_done
}

fn rfc3339(hour: i64) -> String {
    humantime::format_rfc3339(pg_us_to_system_time(hour * HOUR_US)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_hours_merge_and_distant_ones_do_not() {
        let hours: BTreeSet<i64> = [10, 11, 13, 18, 30, 31].into_iter().collect();
        assert_eq!(merge(&hours), vec![10..19, 30..32]);
        assert!(merge(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn no_refresh_reaches_the_current_bucket() {
        // Now less --late-after is in hour 50 (day 2 runs from hour 48 to 72).
        assert_eq!(clamp(10..12, 1, 50), Some(10..12));
        assert_eq!(clamp(10..12, 24, 50), Some(0..24));
        // Late rows today: earlier hours are refreshed, the current hour
        // and today's daily bucket are left to real time.
        assert_eq!(clamp(48..51, 1, 50), Some(48..50));
        assert_eq!(clamp(48..51, 24, 50), None);
        assert_eq!(clamp(40..51, 24, 50), Some(24..48));
        assert_eq!(clamp(50..51, 1, 50), None);
    }

    #[test]
    fn ranges_are_refreshed_a_day_at_a_time() {
        assert_eq!(pieces(10..12), vec![10..12]);
        assert_eq!(pieces(20..50), vec![20..24, 24..48, 48..50]);
        assert_eq!(pieces(-3..2), vec![-3..0, 0..2]);
        assert!(pieces(5..5).is_empty());
    }

    #[test]
    fn an_hour_waits_until_its_rows_stop_or_it_has_waited_long() {
        use std::time::{Duration as D, UNIX_EPOCH};
        let at = |s: u64| UNIX_EPOCH + D::from_secs(s);
        let settle = D::from_secs(60);
        // Noted 30 s ago: rows are still landing.
        assert!(!ready(at(970), at(900), at(1000), settle));
        // Quiet for a minute: due.
        assert!(ready(at(940), at(900), at(1000), settle));
        // Noted a moment ago, but first noted ten settle periods ago.
        assert!(ready(at(999), at(400), at(1000), settle));
        assert!(!ready(at(999), at(401), at(1000), settle));
    }

    #[test]
    fn hours_are_utc_hours_since_2000() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR_US - 1), 0);
        assert_eq!(hour_of(-1), -1);
        assert_eq!(rfc3339(24), "2000-01-02T00:00:00Z");
    }
}
