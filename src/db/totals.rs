//! A chat session's figures counted from its rows: its messages, and the
//! tokens of its events. A client of the native API reports them itself;
//! an OTLP exporter never does (each export holds a few records of a
//! session), so the OTLP edge has them counted again after each export's
//! rows are committed. Counting, not adding, keeps them exact when an
//! export is resent.

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::dims::DimsError;

/// Sets `message_count` and `total_tokens` (input + output) of the chat
/// sessions `ids` to what their rows hold now. Events and messages are
/// looked for from a day before the session started, so that the
/// hypertables' chunks before it are not read.
pub async fn recount_chat_sessions(pool: &Pool, ids: &[Uuid]) -> Result<u64, DimsError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE chat_sessions cs SET
                message_count = (SELECT count(*) FROM chat_messages m
                                 WHERE m.session_id = cs.session_id
                                   AND m.\"timestamp\" >= cs.started_at - interval '1 day'),
                total_tokens = (SELECT coalesce(sum(coalesce(e.input_tokens, 0) + coalesce(e.output_tokens, 0)), 0)
                                FROM agent_events e
                                WHERE e.session_id = cs.session_id
                                  AND e.\"timestamp\" >= cs.started_at - interval '1 day')
             WHERE cs.session_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(n)
}
