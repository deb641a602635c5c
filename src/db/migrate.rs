//! Migrations: the SQL files in `sql/` (embedded at build time).
//!
//! - The storage mode is decided first ([`Mode`]): TimescaleDB when the
//!   server has it (and `--timescaledb` allows), else plain PostgreSQL. A
//!   database keeps the mode it was first migrated in.
//! - Numbered files (`0001_core.sql`) in `sql/` and in the mode's directory
//!   (`sql/timescaledb/`, `sql/plain/`) are applied in version order, each
//!   once, recorded in `schema_migrations` with a checksum.
//! - Files without a number in the mode's directory define functions and
//!   are re-created on every run; in TimescaleDB mode the policies are then
//!   made to match [`StorageConfig`] (`policies.sql`), idempotently.
//!
//! A session-level advisory lock serialises instances that start at once;
//! the second one finds nothing left to do. A file whose first line is
//! `-- agent-telemetry: no-transaction` runs outside a transaction.

use std::{fmt, time::Duration};

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::{
    config::{StorageConfig, TimescaleMode},
    time::pg_interval,
};

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
    #[error("migration {name} failed: {}", crate::db::error::describe(source))]
    Failed {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("database error while migrating: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("storage mode: {0}")]
    Mode(String),
    #[error("invalid storage settings: {0}")]
    Settings(String),
    #[error("setting the reader role's password failed: {}", crate::db::error::describe(.0))]
    ReaderRole(#[source] tokio_postgres::Error),
    #[error("applying the TimescaleDB policies failed: {}", crate::db::error::describe(.0))]
    Policies(#[source] tokio_postgres::Error),
    #[error("storage layout: {0}")]
    Layout(#[from] crate::db::layout::LayoutError),
    #[error("re-creating the organisation readers' views failed: {0}")]
    Readers(#[from] crate::db::readers::ReadersError),
}

/// How the data is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Hypertables, compression, continuous aggregates and policies.
    TimescaleDb { version: String },
    /// Plain tables, the aggregates as views; the service applies retention.
    /// `why` says what is missing for TimescaleDB mode.
    Plain { why: String },
}

impl Mode {
    fn dir(&self) -> &'static str {
        match self {
            Mode::TimescaleDb { .. } => "timescaledb",
            Mode::Plain { .. } => "plain",
        }
    }

    pub fn is_timescaledb(&self) -> bool {
        matches!(self, Mode::TimescaleDb { .. })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::TimescaleDb { version } => write!(
                f,
                "TimescaleDB {version}: hypertables, compression, continuous aggregates and retention jobs"
            ),
            Mode::Plain { why } => write!(
                f,
                "plain PostgreSQL: aggregates are views computed at query time and the service deletes expired rows itself; not TimescaleDB because {why}"
            ),
        }
    }
}

/// What one policy check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub policy: String,
    pub relation: String,
    /// "created", "changed" or "unchanged".
    pub action: String,
}

/// What a migrate run did.
#[derive(Debug)]
pub struct Report {
    pub mode: Mode,
    pub applied: Vec<String>,
    pub already: usize,
    pub policies: Vec<PolicyChange>,
    /// The event tables' layout (TimescaleDB mode, `run` only).
    pub layout: Option<crate::db::layout::Chosen>,
}

impl Report {
    /// Policies created or changed by this run.
    pub fn policies_changed(&self) -> impl Iterator<Item = &PolicyChange> {
        self.policies.iter().filter(|p| p.action != "unchanged")
    }
}

/// Applies pending migrations and makes the policies and the reader
/// password match `storage`: what `serve` and `migrate` do. `max_past`, the
/// oldest row ingest accepts, is how long the key archives keep a key.
pub async fn run(
    client: &mut Client,
    storage: &StorageConfig,
    max_past: Duration,
) -> Result<Report, MigrateError> {
    let mut report = locked(client, storage, true).await?;
    if let Mode::TimescaleDb { version } = &report.mode {
        let margin = crate::db::layout::KEY_MARGIN;
        let chosen = crate::db::layout::apply(
            client,
            storage.storage_layout,
            version,
            storage.key_window + margin,
            max_past + margin,
        )
        .await?;
        if let Some(done) = &chosen.switched {
            tracing::info!(layout = %chosen.layout, done, "storage layout switched");
        }
        report.layout = Some(chosen);
    }
    Ok(report)
}

/// Applies pending migrations only, leaving the policies and the reader
/// role as they are: for commands (`keys`, `readers`) that need the schema
/// but do not know the operator's storage settings. With the defaults they
/// would reset a retention the operator set, deleting or keeping rows
/// against their choice.
pub async fn run_pending(client: &mut Client) -> Result<Report, MigrateError> {
    // The settings only decide the mode of a database not yet migrated.
    let defaults = crate::config::ServeConfig::defaults().storage;
    locked(client, &defaults, false).await
}

async fn locked(
    client: &mut Client,
    storage: &StorageConfig,
    settings: bool,
) -> Result<Report, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = migrate_locked(client, storage, settings).await;
    // The lock is session-level: release it even when a migration failed.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

async fn migrate_locked(
    client: &mut Client,
    storage: &StorageConfig,
    settings: bool,
) -> Result<Report, MigrateError> {
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
    let applied: Vec<(i32, String, String)> = client
        .query("SELECT version, name, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mode = decide_mode(client, storage.timescaledb, &applied).await?;
    let mut report = Report {
        mode,
        applied: Vec::new(),
        already: 0,
        policies: Vec::new(),
        layout: None,
    };
    let dir = report.mode.dir();
    let in_mode = |name: &&str| match name.split_once('/') {
        None => true,
        Some((d, _)) => d == dir,
    };
    let mut numbered = Vec::new();
    let mut repeatable = Vec::new();
    for (name, sql) in SQL_FILES.iter().filter(|(n, _)| in_mode(n)) {
        let file = name.rsplit('/').next().unwrap_or(name);
        if file.starts_with(|c: char| c.is_ascii_digit()) {
            numbered.push((version_of(file)?, *name, *sql));
        } else {
            repeatable.push((*name, *sql));
        }
    }
    numbered.sort_by_key(|(v, _, _)| *v);
    for (version, name, sql) in numbered {
        let checksum = hex(&Sha256::digest(sql.as_bytes()));
        if let Some((_, was_name, was)) = applied.iter().find(|(v, _, _)| *v == version) {
            if was_name != name {
                return Err(MigrateError::Mode(format!(
                    "migration {version} was applied as {was_name}, this run would apply {name}"
                )));
            }
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
            client
                .execute(record, &[&version, &name, &checksum])
                .await?;
        } else {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await.map_err(failed)?;
            tx.execute(record, &[&version, &name, &checksum]).await?;
            tx.commit().await?;
        }
        tracing::info!(migration = name, "applied");
        report.applied.push(name.to_string());
    }
    for (name, sql) in repeatable {
        client
            .batch_execute(sql)
            .await
            .map_err(|source| MigrateError::Failed {
                name: name.to_string(),
                source,
            })?;
    }
    if !settings {
        return finish(client, report).await;
    }
    if let Some(password) = &storage.reader_password {
        set_reader_password(client, password).await?;
    }
    if report.mode.is_timescaledb() {
        report.policies = apply_policies(client, storage).await?;
        for p in report.policies_changed() {
            tracing::info!(policy = %p.policy, relation = %p.relation, action = %p.action, "policy");
        }
    }
    finish(client, report).await
}

/// What follows the migrations whatever the settings: a migration may have
/// granted the reader a new relation or changed one's columns, and every
/// organisation's views follow (src/db/readers.rs).
async fn finish(client: &mut Client, report: Report) -> Result<Report, MigrateError> {
    if !report.applied.is_empty() {
        let schemas = crate::db::readers::rebuild_all(client).await?;
        if schemas > 0 {
            tracing::info!(schemas, "organisation readers' views re-created");
        }
    }
    Ok(report)
}

pub use super::readers::READER_ROLE;

/// Gives the reader role LOGIN and `password`. ALTER ROLE takes no bind
/// parameters: the server quotes the literal itself (`format('%L')`).
async fn set_reader_password(client: &Client, password: &str) -> Result<(), MigrateError> {
    let row = client
        .query_opt(
            "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)
              WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
            &[&READER_ROLE, &password],
        )
        .await?;
    let sql: String = match row {
        Some(row) => row.get(0),
        None => {
            return Err(MigrateError::Settings(format!(
                "AGENT_TELEMETRY_READER_PASSWORD is set but the role {READER_ROLE} does not exist (the migrating user may lack CREATEROLE)"
            )));
        }
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(MigrateError::ReaderRole)?;
    tracing::info!(
        role = READER_ROLE,
        "reader role can log in with the configured password"
    );
    Ok(())
}

/// The mode recorded in `schema_migrations` if any, else what the server
/// offers and `wanted` allows. In TimescaleDB mode the extension exists when
/// this returns.
async fn decide_mode(
    client: &Client,
    wanted: TimescaleMode,
    applied: &[(i32, String, String)],
) -> Result<Mode, MigrateError> {
    let recorded = applied
        .iter()
        .find_map(|(_, name, _)| name.split_once('/').map(|(d, _)| d));
    let mode = match recorded {
        Some("plain") => Mode::Plain {
            why: "this database was set up in plain mode (a switch needs a dump and reload, docs/schema.md)".into(),
        },
        Some(_) => match create_extension(client).await {
            Ok(version) => Mode::TimescaleDb { version },
            Err(why) => {
                return Err(MigrateError::Mode(format!(
                    "this database was set up with TimescaleDB, but {why}"
                )));
            }
        },
        None if wanted == TimescaleMode::Off => Mode::Plain {
            why: "--timescaledb off".into(),
        },
        None => match create_extension(client).await {
            Ok(version) => Mode::TimescaleDb { version },
            Err(why) => Mode::Plain { why },
        },
    };
    match (&mode, wanted) {
        (Mode::Plain { why }, TimescaleMode::Require) => Err(MigrateError::Mode(format!(
            "--timescaledb require, but {why}"
        ))),
        (Mode::TimescaleDb { .. }, TimescaleMode::Off) => Err(MigrateError::Mode(
            "--timescaledb off, but this database was set up with TimescaleDB".into(),
        )),
        _ => Ok(mode),
    }
}

/// Creates the extension if needed; returns its version, or why it cannot be used.
async fn create_extension(client: &Client) -> Result<String, String> {
    let available = client
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .map_err(|e| format!("the extension list could not be read: {e}"))?;
    if available.is_none() {
        return Err("the timescaledb extension is not installed on this PostgreSQL server".into());
    }
    if let Err(e) = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        return Err(format!(
            "CREATE EXTENSION timescaledb failed ({detail}); is it in shared_preload_libraries?"
        ));
    }
    client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())
}

/// Makes the TimescaleDB policies match `storage` (sql/timescaledb/policies.sql).
async fn apply_policies(
    client: &Client,
    storage: &StorageConfig,
) -> Result<Vec<PolicyChange>, MigrateError> {
    let settings = json!({
        "chunk_interval": pg_interval(storage.chunk_interval),
        "compress_after": pg_interval(storage.compress_after),
        "events_retention": pg_interval(storage.events_retention),
        "messages_retention": pg_interval(storage.messages_retention),
        "aggregates_retention": pg_interval(storage.aggregates_retention),
        "hourly": {
            "start_offset": pg_interval(storage.hourly_refresh_window),
            "end_offset": "1 hour",
            "schedule": pg_interval(storage.hourly_refresh_every),
        },
        "daily": {
            "start_offset": pg_interval(storage.daily_refresh_window),
            "end_offset": "1 day",
            "schedule": pg_interval(storage.daily_refresh_every),
        },
    });
    let rows = client
        .query(
            "SELECT policy, relation, action FROM agent_telemetry_apply_policies($1)",
            &[&settings],
        )
        .await
        .map_err(MigrateError::Policies)?;
    Ok(rows
        .iter()
        .map(|r| PolicyChange {
            policy: r.get(0),
            relation: r.get(1),
            action: r.get(2),
        })
        .collect())
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
