//! Migrations: the numbered SQL files in `sql/` (embedded at build time),
//! applied in order, each once, recorded in `schema_migrations` with a
//! checksum. A session-level advisory lock serialises instances that start
//! at once; the second one finds nothing left to do.
//!
//! A file whose first line is `-- agent-telemetry: no-transaction` runs
//! outside a transaction (some TimescaleDB statements refuse to run inside one).

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Arbitrary, fixed: the advisory lock all instances agree on.
const LOCK_KEY: i64 = 0x6167_656e_7474_656c; // "agenttel"
const NO_TRANSACTION: &str = "-- agent-telemetry: no-transaction";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file name {0:?} does not start with a number")]
    BadName(String),
    #[error(
        "migration {name} was changed after it was applied (checksum {applied} in the database, {now} now); add a new migration instead"
    )]
    Changed {
        name: String,
        applied: String,
        now: String,
    },
    #[error("migration {name} failed: {source}")]
    Failed {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("database error while migrating: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// What a migrate run did.
#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<String>,
    pub already: usize,
}

pub async fn run(client: &mut Client) -> Result<Report, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(client).await;
    // The lock is session-level: release it even when a migration failed.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

async fn apply_pending(client: &mut Client) -> Result<Report, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied: Vec<(i32, String)> = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut report = Report::default();
    for (name, sql) in MIGRATIONS {
        let version = version_of(name)?;
        let checksum = hex(&Sha256::digest(sql.as_bytes()));
        if let Some((_, was)) = applied.iter().find(|(v, _)| *v == version) {
            if *was != checksum {
                return Err(MigrateError::Changed {
                    name: name.to_string(),
                    applied: was.clone(),
                    now: checksum,
                });
            }
            report.already += 1;
            continue;
        }
        let failed = |source| MigrateError::Failed {
            name: name.to_string(),
            source,
        };
        let record = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
        if sql.starts_with(NO_TRANSACTION) {
            client.batch_execute(sql).await.map_err(failed)?;
            client.execute(record, &[&version, name, &checksum]).await?;
        } else {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await.map_err(failed)?;
            tx.execute(record, &[&version, name, &checksum]).await?;
            tx.commit().await?;
        }
        tracing::info!(migration = name, "applied");
        report.applied.push(name.to_string());
    }
    Ok(report)
}

fn version_of(name: &str) -> Result<i32, MigrateError> {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .map_err(|_| MigrateError::BadName(name.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
