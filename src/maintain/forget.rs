//! `agent-telemetry users forget KEY`: one person's rows out of every table
//! (the right to be forgotten). In one transaction: their events (compressed
//! chunks included: TimescaleDB deletes inside them), their chat sessions'
//! messages, their chat and agent sessions, their memberships and their
//! user row, their keys revoked (`keys create --user`), and an audit row
//! with the counts (not the key: it names the person). Then, in TimescaleDB mode, every continuous aggregate is
//! refreshed over the days the rows were in, so no figure keeps them.

use std::time::SystemTime;

use serde_json::json;
use tokio_postgres::Client;

use crate::{db::error::describe, privacy::Pseudonyms};

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("no developer has the key {0:?} (nor its pseudonym, when a pseudonym secret is set)")]
    NotFound(String),
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("refresh of {view} over the forgotten rows' days: {}; run it again with `CALL refresh_continuous_aggregate('{view}', NULL, NULL)`", describe(.source))]
    Refresh {
        view: &'static str,
        source: tokio_postgres::Error,
    },
}

/// What was deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub user_id: i32,
    pub events: u64,
    pub chat_messages: u64,
    pub chat_sessions: u64,
    pub agent_sessions: u64,
    pub memberships: u64,
    /// Keys that belonged to them (`keys create --user`), now revoked.
    pub keys_revoked: u64,
    /// Continuous aggregates refreshed over the rows' days (none in plain
    /// mode, where the aggregates are views).
    pub refreshed: Vec<&'static str>,
}

impl std::fmt::Display for Forgotten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "user {} forgotten: {} events, {} chat messages, {} chat sessions, {} agent sessions, {} memberships deleted; {} keys revoked; {} aggregates refreshed",
            self.user_id,
            self.events,
            self.chat_messages,
            self.chat_sessions,
            self.agent_sessions,
            self.memberships,
            self.keys_revoked,
            self.refreshed.len()
        )
    }
}

/// Forgets the developer `key` names (as clients sent it; with
/// `pseudonyms`, its pseudonym is tried too). `actor` goes into the audit
/// log.
pub async fn forget(
    db: &mut Client,
    key: &str,
    pseudonyms: Option<&Pseudonyms>,
    actor: &str,
) -> Result<Forgotten, ForgetError> {
    let pseudonym = pseudonyms.map(|p| p.of(key)).unwrap_or_else(|| key.into());
    let tx = db.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT id FROM users WHERE key = $1 OR key = $2 FOR UPDATE",
            &[&key, &pseudonym],
        )
        .await?
    else {
        return Err(ForgetError::NotFound(key.into()));
    };
    let user_id: i32 = row.get(0);
    // The days the person's rows are in, for the refresh.
    let span = tx
        .query_one(
            "SELECT min(t), max(t) FROM (
                 SELECT \"timestamp\" AS t FROM agent_events WHERE user_id = $1
                 UNION ALL
                 SELECT m.\"timestamp\" FROM chat_messages m
                 JOIN chat_sessions s ON s.session_id = m.session_id WHERE s.user_id = $1) r",
            &[&user_id],
        )
        .await?;
    let (first, last): (Option<SystemTime>, Option<SystemTime>) = (span.get(0), span.get(1));
    let mut out = Forgotten {
        user_id,
        ..Default::default()
    };
    out.events = tx
        .execute("DELETE FROM agent_events WHERE user_id = $1", &[&user_id])
        .await?;
    out.chat_messages = tx
        .execute(
            "DELETE FROM chat_messages WHERE session_id IN
                 (SELECT session_id FROM chat_sessions WHERE user_id = $1)",
            &[&user_id],
        )
        .await?;
    out.chat_sessions = tx
        .execute("DELETE FROM chat_sessions WHERE user_id = $1", &[&user_id])
        .await?;
    out.agent_sessions = tx
        .execute("DELETE FROM agent_sessions WHERE user_id = $1", &[&user_id])
        .await?;
    out.memberships = tx
        .execute(
            "DELETE FROM organization_members WHERE user_id = $1",
            &[&user_id],
        )
        .await?;
    tx.execute("DELETE FROM users WHERE id = $1", &[&user_id])
        .await?;
    // A key of theirs names them, and would bring them back with the next
    // row it sends: revoked, and their key cleared from it.
    out.keys_revoked = tx
        .execute(
            "UPDATE api_keys SET is_active = false, user_key = NULL WHERE user_key IN ($1, $2)",
            &[&key, &pseudonym],
        )
        .await?;
    tx.execute(
        "INSERT INTO audit_log (actor, action, details) VALUES ($1, 'user.forget', $2)",
        &[
            &actor,
            &json!({
                "user_id": user_id,
                "events": out.events,
                "chat_messages": out.chat_messages,
                "chat_sessions": out.chat_sessions,
                "agent_sessions": out.agent_sessions,
                "memberships": out.memberships,
                "keys_revoked": out.keys_revoked,
            }),
        ],
    )
    .await?;
    tx.commit().await?;

    let (Some(first), Some(last)) = (first, last) else {
        return Ok(out);
    };
    // A refresh cannot run inside a transaction: after the commit, each
    // aggregate in refresh order over whole days (hourly ones included).
    let timescaledb: bool = db
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')",
            &[],
        )
        .await?
        .get(0);
    if !timescaledb {
        return Ok(out);
    }
    let window = db
        .query_one(
            "SELECT (date_trunc('day', $1::timestamptz))::text,
                    (date_trunc('day', $2::timestamptz) + INTERVAL '1 day')::text",
            &[&first, &last],
        )
        .await?;
    let (from, to): (String, String) = (window.get(0), window.get(1));
    for view in super::refresh::all_in_refresh_order() {
        db.batch_execute(&format!(
            "CALL refresh_continuous_aggregate('{view}', '{from}', '{to}')"
        ))
        .await
        .map_err(|source| ForgetError::Refresh { view, source })?;
        out.refreshed.push(view);
    }
    Ok(out)
}
