//! Opening the database a command works on: `DATABASE_URL` when given,
//! else the embedded cluster ([`super::embedded`]), started if it is not
//! running; and migrating it after the storage settings are checked.

use std::{path::PathBuf, time::Duration};

use super::{
    DbError,
    embedded::{Cluster, ClusterOptions, EmbeddedError},
    migrate::{self, MigrateError},
};
use crate::config::{DatabaseConfig, StorageConfig};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// The database the service writes to.
pub struct Database {
    pub conn: String,
    /// The embedded cluster, when we started one (stopped at shutdown).
    pub embedded: Option<Cluster>,
    /// Whether this process started the embedded cluster (false when it was
    /// running already, e.g. under a `serve` while `keys` runs).
    pub started_here: bool,
}

impl Database {
    /// Stops the embedded cluster if this process started it (commands that
    /// run beside a service must not stop the service's database).
    /// Stops the embedded cluster, whoever started it (the service owns
    /// its database: one left running by a crash stops with it too).
    pub async fn stop(self) -> Result<(), EmbeddedError> {
        Database {
            started_here: true,
            ..self
        }
        .release()
        .await
    }

    pub async fn release(self) -> Result<(), EmbeddedError> {
        match self.embedded {
            Some(cluster) if self.started_here => {
                tokio::task::spawn_blocking(move || cluster.stop())
                    .await
                    .expect("embedded stop panicked")
            }
            _ => Ok(()),
        }
    }
}

const EMBEDDED_DB: &str = "agent_telemetry";

/// The embedded default's directory when none is configured.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/agent-telemetry");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("agent-telemetry")
}

/// `DATABASE_URL` if given, else the embedded cluster (initialised on first
/// use, started if not running).
pub async fn open_database(cfg: &DatabaseConfig) -> Result<Database, OpenError> {
    if let Some(url) = &cfg.database_url {
        return Ok(Database {
            conn: url.clone(),
            embedded: None,
            started_here: false,
        });
    }
    let dir = cfg.data_dir.clone().unwrap_or_else(default_data_dir);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(EmbeddedError::from)?;
        // The server's user must be able to pass through it (see embedded.rs).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(EmbeddedError::from)?;
    }
    let opts = ClusterOptions {
        data_dir: dir.join("postgres"),
        bindir: cfg.pg_bindir.clone(),
        durable: true,
        port: 5432,
        tcp: false,
    };
    let (cluster, started_here) = tokio::task::spawn_blocking(move || {
        let c = Cluster::open(opts)?;
        let running = c.is_running();
        c.start()?;
        Ok::<_, EmbeddedError>((c, !running))
    })
    .await
    .expect("embedded start panicked")?;
    tracing::info!(data_dir = %cluster.data_dir().display(), bindir = %cluster.bindir().display(), "embedded PostgreSQL running");
    super::ensure_database(&cluster.conn_string("postgres"), EMBEDDED_DB).await?;
    Ok(Database {
        conn: cluster.conn_string(EMBEDDED_DB),
        embedded: Some(cluster),
        started_here,
    })
}

/// Checks the storage settings, then migrates. `max_past` is the oldest row
/// ingest accepts (retention must keep rows longer than that).
pub async fn run_migrations(
    conn: &str,
    storage: &StorageConfig,
    max_past: Duration,
) -> Result<migrate::Report, OpenError> {
    storage.check(max_past).map_err(MigrateError::Settings)?;
    // One connection, closed before the pool opens: some servers (the test
    // suite's PGlite) take one client at a time.
    let mut client = super::connect(conn).await?;
    Ok(migrate::run(&mut client, storage, max_past).await?)
}

/// Applies pending migrations only, the policies and the reader role left
/// as they are (`keys`, `readers`: [`migrate::run_pending`]).
pub async fn run_pending_migrations(conn: &str) -> Result<migrate::Report, OpenError> {
    let mut client = super::connect(conn).await?;
    Ok(migrate::run_pending(&mut client).await?)
}
