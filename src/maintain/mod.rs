//! Stage 6: **maintain** — what happens to stored rows after their ack.
//!
//! - [`refresh`] (TimescaleDB mode): the copy stage reports the hours it
//!   wrote late rows into; this refreshes exactly those ranges of the
//!   continuous aggregates, merged and rate-limited.
//! - [`retention`] (plain PostgreSQL mode): deletes rows past their
//!   retention window on a timer, as TimescaleDB's retention jobs would.
//! - [`forget`] (`users forget`): one person's rows out of every table, and
//!   the aggregates refreshed over their days.
//!
//! Both are per database, not per instance: when several instances share
//! one database, each round runs in whichever instance takes its lock
//! ([`exclusively`]); the others skip that round.

pub mod forget;
pub mod refresh;
pub mod retention;

/// Runs `work` on `client` unless another session holds the advisory lock
/// `key` (then `Ok(None)`: someone else is doing this round). The lock is
/// session-level, so it is released here, on the same connection, before
/// the pooled connection is handed back.
pub(crate) async fn exclusively<T>(
    client: &tokio_postgres::Client,
    key: i64,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> Result<Option<T>, tokio_postgres::Error> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let out = work(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await?;
    Ok(Some(out))
}
