//! Late rows → exact refreshes of the continuous aggregates.
//!
//! A continuous aggregate's refresh policy only looks back over its window
//! (`--hourly-refresh-window`, `--daily-refresh-window`); rows replayed by an
//! offline client after that would leave their buckets wrong for good
//! (timescale/timescaledb#7960, #8132). Intake marks each row older than
//! `--late-after` with its hour; after the flush holding it, the batcher
//! hands those hours here ([`LateRefresher::note`]).
//!
//! Hours are gathered per table, merged into ranges (neighbours closer than
//! [`MERGE_GAP_HOURS`] join, so a day of scattered replays is one refresh,
//! not dozens), and refreshed at most once per `--late-refresh-every`: the
//! hourly aggregate over the hour-aligned range, then the daily ones (which
//! read it) over the range widened to whole days. A failed refresh keeps its
//! hours for the next round. When every sender is gone (shutdown, after the
//! last flush) one final round runs.
//!
//! Not covered: hours noted but not refreshed when the process dies
//! (docs/schema.md says how an operator refreshes a range by hand).

use std::{collections::BTreeSet, time::Duration};

use deadpool_postgres::Pool;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::{copy::Table, metrics, validate::pg_us_to_system_time};

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
            ("agent_events_daily", 24),
            ("llm_usage_daily", 24),
        ],
        Table::ChatMessages => &[("chat_activity_hourly", 1)],
    }
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
    pub fn spawn(pool: Pool, every: Duration) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(pool, rx, every)))
    }

    /// Hours (see [`hour_of`]) that now hold late rows of `table`.
    pub fn note(&self, table: Table, hours: Vec<i64>) {
        if !hours.is_empty() {
            // Only fails after shutdown, when no refresh could run anyway.
            let _ = self.tx.send((table, hours));
        }
    }
}

async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<(Table, Vec<i64>)>, every: Duration) {
    let mut pending: [BTreeSet<i64>; 2] = Default::default();
    let mut next_round = Instant::now();
    let mut open = true;
    while open {
        let waiting = pending.iter().any(|p| !p.is_empty());
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((table, hours)) => pending[table as usize].extend(hours),
                None => open = false,
            },
            _ = tokio::time::sleep_until(next_round), if waiting => {
                round(&pool, &mut pending).await;
                next_round = Instant::now() + every;
            }
        }
        metrics::late_pending(pending.iter().map(BTreeSet::len).sum());
    }
    round(&pool, &mut pending).await;
}

/// Refreshes every pending range; what fails stays pending.
async fn round(pool: &Pool, pending: &mut [BTreeSet<i64>; 2]) {
    for table in Table::ALL {
        let hours = std::mem::take(&mut pending[table as usize]);
        for range in merge(&hours) {
            if let Err(e) = refresh(pool, table, range.clone()).await {
                tracing::warn!(table = table.name(), error = %e, "late-data refresh failed; retrying next round");
                metrics::db_error("late_refresh");
                pending[table as usize].extend(hours.range(range));
            }
        }
    }
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

async fn refresh(
    pool: &Pool,
    table: Table,
    hours: std::ops::Range<i64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    for &(view, width) in aggregates(table) {
        let start = hours.start.div_euclid(width) * width;
        let end = (hours.end + width - 1).div_euclid(width) * width;
        // refresh_continuous_aggregate refuses to run in a transaction
        // block, which the extended protocol's implicit one can count as;
        // the simple protocol with literals we formatted ourselves avoids it.
        let sql = format!(
            "CALL refresh_continuous_aggregate('{view}', '{}', '{}')",
            rfc3339(start),
            rfc3339(end)
        );
        let began = Instant::now();
        client.batch_execute(&sql).await?;
        metrics::late_refreshed(view);
        tracing::debug!(view, from = %rfc3339(start), to = %rfc3339(end), took = ?began.elapsed(), "late-data refresh");
    }
    Ok(())
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
    fn hours_are_utc_hours_since_2000() {
        assert_eq!(hour_of(0), 0);
        assert_eq!(hour_of(HOUR_US - 1), 0);
        assert_eq!(hour_of(-1), -1);
        assert_eq!(rfc3339(24), "2000-01-02T00:00:00Z");
    }
}
