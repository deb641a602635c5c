//! Ids of rows made from an agent's own ids: the same call, tool use or
//! message gets the same row id whichever edge brings it (the transcript
//! importer, or the agent's OTLP export where it names the same id), so
//! that reading it twice stores it once. UUIDs version 5 under a namespace
//! of this service's. Below every stage.

use uuid::Uuid;

/// The namespace of rows derived from agents' ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6a1e_73c2_5d04_4f0b_9b7e_2c11_d5a4_0e38);

/// A session: the agent's own id when it is a UUID (Claude Code's, Gemini
/// CLI's), else one derived from it.
pub fn session(agent: &str, id: &str) -> Uuid {
    Uuid::parse_str(id)
        .unwrap_or_else(|_| Uuid::new_v5(&NAMESPACE, format!("{agent}\0session\0{id}").as_bytes()))
}

/// A row of `kind` (`request`: a model call by its request id; `tool`: a
/// tool use by its id; `message`: a chat message by the transcript line's
/// uuid) of `agent`.
pub fn agent_row(agent: &str, kind: &str, key: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{agent}\0{kind}\0{key}").as_bytes())
}
