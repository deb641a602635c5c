//! Retention without TimescaleDB: every `--retention-every`, delete rows
//! older than `--events-retention` / `--messages-retention`, one slice at a
//! time (`agent_telemetry_delete_expired`, sql/plain/retention.sql), each
//! slice its own short transaction so ingest never waits on a long delete.

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{config::StorageConfig, copy::Table, db::migrate::pg_interval, metrics};

/// Rows deleted per statement.
const SLICE_ROWS: i32 = 10_000;

pub fn spawn(pool: Pool, storage: &StorageConfig, stop: CancellationToken) -> JoinHandle<()> {
    let windows = [
        (Table::AgentEvents, pg_interval(storage.events_retention)),
        (Table::ChatMessages, pg_interval(storage.messages_retention)),
    ];
    let every = storage.retention_every;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            for (table, keep) in &windows {
                match delete_expired(&pool, *table, keep, &stop).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(table = table.name(), rows = n, keep = %keep, "retention: deleted expired rows")
                    }
                    Err(e) => {
                        metrics::db_error("retention");
                        tracing::warn!(table = table.name(), error = %e, "retention failed; retrying next time");
                    }
                }
            }
        }
    })
}

async fn delete_expired(
    pool: &Pool,
    table: Table,
    keep: &str,
    stop: &CancellationToken,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    let mut total = 0u64;
    while !stop.is_cancelled() {
        let n: i64 = client
            .query_one(
                "SELECT agent_telemetry_delete_expired($1::text::regclass, $2::text::interval, $3)",
                &[&table.name(), &keep, &SLICE_ROWS],
            )
            .await?
            .get(0);
        total += n as u64;
        metrics::retention_deleted(table, n as u64);
        if n < SLICE_ROWS as i64 {
            break;
        }
    }
    Ok(total)
}
