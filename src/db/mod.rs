//! The database: connection pool, migrations ([`migrate`]), the dimension
//! rows and their cache ([`dims`]), and the embedded PostgreSQL the service
//! runs when no `DATABASE_URL` is given ([`embedded`]), and opening
//! whichever of the two a command uses ([`open`]), and the read-only roles
//! of one organisation ([`readers`]), and chat sessions' figures counted
//! from their rows ([`totals`]).

pub mod dims;
pub mod embedded;
pub mod error;
pub mod layout;
pub mod migrate;
pub mod open;
pub mod readers;
pub mod totals;

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database connection string: {}", error::chain(.0))]
    Config(#[source] tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("cannot connect to the database: {}", error::describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("database error: {}", error::describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

pub fn parse_config(conn: &str) -> Result<tokio_postgres::Config, DbError> {
    tokio_postgres::Config::from_str(conn).map_err(DbError::Config)
}

/// A pool of `size` connections. Connections are opened lazily and
/// re-opened after the database restarts.
pub fn pool(conn: &str, size: usize) -> Result<Pool, DbError> {
    let mut cfg = parse_config(conn)?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("agent-telemetry");
    }
    cfg.connect_timeout(Duration::from_secs(5));
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .build()?)
}

/// One connection outside the pool (migrations, admin work).
pub async fn connect(conn: &str) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = parse_config(conn)?
        .connect(NoTls)
        .await
        .map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// `name` as an SQL identifier, for statements that take no parameters
/// (CREATE/DROP DATABASE).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates database `name` through `admin_conn` unless it exists.
pub async fn ensure_database(admin_conn: &str, name: &str) -> Result<(), DbError> {
    let client = connect(admin_conn).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    if let Err(e) = client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
        .await
    {
        // Another instance may have created it meanwhile.
        if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
            return Err(e.into());
        }
    }
    Ok(())
}
