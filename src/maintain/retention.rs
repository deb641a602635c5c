//! Retention without TimescaleDB: every `--retention-every`, delete rows
//! older than `--events-retention` / `--messages-retention`, one slice at a
//! time (`agent_telemetry_delete_expired`, sql/plain/retention.sql), each
//! slice its own short transaction so ingest never waits on a long delete.

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::StorageConfig,
    db::error::{describe, describe_pool},
    metrics,
    row::Table,
    time::pg_interval,
};

/// Arbitrary, fixed: one instance at a time runs a retention round.
const RETENTION_LOCK: i64 = 0x6167_656e_7472_6574; // "agentret"
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
            let client = match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    metrics::db_error("retention");
                    tracing::warn!(error = %describe_pool(&e), "retention: no connection; retrying next time");
                    continue;
                }
            };
            let round = super::exclusively(&client, RETENTION_LOCK, async |client| {
                for (table, keep) in &windows {
                    report(
                        *table,
                        keep,
                        delete_expired(client, *table, keep, &stop).await,
                    );
                }
            });
            if let Err(e) = round.await {
                metrics::db_error("retention");
                tracing::warn!(error = %describe(&e), "retention: lock failed; retrying next time");
            }
        }
    })
}

fn report(table: Table, keep: &str, deleted: Result<u64, tokio_postgres::Error>) {
    match deleted {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(table = table.name(), rows = n, keep = %keep, "retention: deleted expired rows")
        }
        Err(e) => {
            metrics::db_error("retention");
            tracing::warn!(table = table.name(), error = %describe(&e), "retention failed; retrying next time");
        }
    }
}

async fn delete_expired(
    client: &tokio_postgres::Client,
    table: Table,
    keep: &str,
    stop: &CancellationToken,
) -> Result<u64, tokio_postgres::Error> {
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
