//! What a database error says, in full, and whether it can pass.
//!
//! tokio-postgres' `Display` prints only "db error" for anything the server
//! reported, and "error connecting to server" without the reason: the
//! message, detail, hint and SQLSTATE sit in its source. Every place that
//! shows a database error (CLI, logs, acks, OTLP responses) goes through
//! [`describe`], and every place that decides whether to try again goes
//! through [`is_transient`], which reads the SQLSTATE, never the text.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// One line: PostgreSQL's severity, message and SQLSTATE, then its detail,
/// hint and context where it gave them; for a client-side error (IO,
/// connect, TLS), the whole cause chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        for (label, part) in [
            ("detail", db.detail()),
            ("hint", db.hint()),
            ("where", db.where_()),
        ] {
            if let Some(part) = part {
                s.push_str(&format!("; {label}: {part}"));
            }
        }
        return s;
    }
    chain(e)
}

/// As [`describe`], for an error of the connection pool.
pub fn describe_pool(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => format!("cannot open a connection: {}", describe(e)),
        PoolError::Timeout(_) => format!("{e} (the database did not answer in time)"),
        other => other.to_string(),
    }
}

/// `e` and each of its sources, joined with ": " (a source whose text is
/// already there is left out).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // A tokio-postgres error below says "db error": show what it holds,
        // which includes its own sources, and stop there.
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            let text = describe(pg);
            if !s.contains(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            break;
        }
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Worth trying again on another (or a new) connection: the database was
/// unreachable, restarting, overloaded, or the connection broke. Anything
/// else the server reported (a missing table, a privilege, a bad value) is
/// permanent until someone changes the database or the data.
pub fn is_transient(code: Option<&SqlState>) -> bool {
    match code {
        // No SQLSTATE: IO error, closed connection, timeout.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // admin/crash shutdown, cannot connect now
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED // statement timeout
        }
    }
}

/// [`is_transient`] for a pool error: a server-reported failure to open a
/// connection (wrong password, unknown database) is permanent.
pub fn pool_is_transient(e: &PoolError) -> bool {
    match e {
        PoolError::Backend(e) => is_transient(e.code()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_sqlstates_are_not_transient() {
        assert!(is_transient(None));
        assert!(is_transient(Some(&SqlState::ADMIN_SHUTDOWN)));
        assert!(is_transient(Some(&SqlState::CONNECTION_FAILURE)));
        assert!(is_transient(Some(&SqlState::TOO_MANY_CONNECTIONS)));
        assert!(!is_transient(Some(&SqlState::INSUFFICIENT_PRIVILEGE)));
        assert!(!is_transient(Some(&SqlState::UNDEFINED_TABLE)));
        assert!(!is_transient(Some(&SqlState::INVALID_PASSWORD)));
    }

    #[test]
    fn a_chain_names_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("error connecting to server")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(chain(&Outer(io)), "error connecting to server: refused");
    }
}
