//! What a row is, below every stage: the tables rows are copied into,
//! their column layout (one definition, from which the COPY column list,
//! the encoder's field count and the writer's key positions all come), and
//! the typed, checked rows that validation hands on and the encoder writes.
//! Wire types stay at the edges; from validation on, the service holds these.

use std::sync::LazyLock;

use uuid::Uuid;

use crate::pb;

/// One column of a table's COPY layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// The proto field the value comes from (a chat message's project and
    /// agent type come from its session, named by `session_id`).
    pub field: &'static str,
}

const fn col(name: &'static str, field: &'static str) -> Column {
    Column { name, field }
}

const EVENT_LAYOUT: &[Column] = &[
    col("id", "id"),
    col("timestamp", "timestamp"),
    col("event_type", "event_type"),
    col("agent_id", "agent_id"),
    col("agent_version", "agent_version"),
    col("session_id", "session_id"),
    col("project_id", "project"),
    col("context", "context_json"),
    col("data", "data_json"),
    col("metrics", "metrics_json"),
    col("parent_event_id", "parent_event_id"),
    col("related_event_ids", "related_event_ids"),
    col("tags", "tags"),
    col("severity", "severity"),
    col("duration_ms", "duration_ms"),
    col("input_tokens", "input_tokens"),
    col("output_tokens", "output_tokens"),
    col("cached_tokens", "cached_tokens"),
    col("cost_usd", "cost_usd"),
    col("model", "model"),
    col("user_id", "user"),
];

const MESSAGE_LAYOUT: &[Column] = &[
    col("id", "id"),
    col("session_id", "session_id"),
    col("role", "role"),
    col("content", "content"),
    col("timestamp", "timestamp"),
    col("sequence", "sequence"),
    col("metadata", "metadata_json"),
    col("search_content", "search_content"),
    col("project_id", "session_id"),
    col("agent_type", "session_id"),
];

/// Where `name` stands in `layout` (a compile-time error when it is absent,
/// for the key columns the writer reads back).
const fn position(layout: &[Column], name: &str) -> usize {
    let mut i = 0;
    while i < layout.len() {
        if eq(layout[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("key column missing from the row layout")
}

const fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `timestamp` is a keyword in SQL: quote it (and only it) in column lists.
fn quoted(name: &str) -> String {
    if name == "timestamp" {
        format!("\"{name}\"")
    } else {
        name.to_owned()
    }
}

/// The tables rows are copied into. Each has its own buffer and batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    AgentEvents,
    ChatMessages,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::AgentEvents, Table::ChatMessages];

    pub fn name(self) -> &'static str {
        match self {
            Table::AgentEvents => "agent_events",
            Table::ChatMessages => "chat_messages",
        }
    }

    /// The table of its rows' keys in the columnstore layout
    /// (`sql/timescaledb/layout.sql`).
    pub fn keys_name(self) -> &'static str {
        match self {
            Table::AgentEvents => "agent_event_keys",
            Table::ChatMessages => "chat_message_keys",
        }
    }

    /// Columnstore: the key table of rows past the key window (same
    /// file, same shape).
    pub fn key_archive_name(self) -> &'static str {
        match self {
            Table::AgentEvents => "agent_event_key_archive",
            Table::ChatMessages => "chat_message_key_archive",
        }
    }

    /// The columns a row is copied into, in the order the encoder writes
    /// them, each with the proto field its value comes from: the one
    /// definition of the row layout. The COPY column list, the field count
    /// the encoder writes and the positions of the key fields the writer
    /// reads back are all derived from it.
    pub const fn layout(self) -> &'static [Column] {
        match self {
            Table::AgentEvents => EVENT_LAYOUT,
            Table::ChatMessages => MESSAGE_LAYOUT,
        }
    }

    /// The layout's column names, comma-separated, for `COPY t (…)`.
    pub fn columns(self) -> &'static str {
        static LISTS: LazyLock<[String; 2]> = LazyLock::new(|| {
            Table::ALL.map(|t| {
                t.layout()
                    .iter()
                    .map(|c| quoted(c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        });
        &LISTS[self as usize]
    }

    /// Fields per encoded row.
    pub const fn field_count(self) -> i16 {
        self.layout().len() as i16
    }

    /// Positions of the key columns (`id`, `timestamp`) in an encoded row.
    pub const fn key_fields(self) -> (usize, usize) {
        (
            position(self.layout(), "id"),
            position(self.layout(), "timestamp"),
        )
    }

    /// The proto field a column is encoded from, so that a row the
    /// database refuses is rejected by the name the client knows.
    pub fn proto_field(self, column: &str) -> Option<&'static str> {
        let column = column.trim_matches('"');
        self.layout()
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.field)
    }

    /// The proto fields of the table's rows (each once).
    pub fn proto_fields(self) -> Vec<&'static str> {
        let mut fields: Vec<&'static str> = Vec::new();
        for c in self.layout() {
            if !fields.contains(&c.field) {
                fields.push(c.field);
            }
        }
        fields
    }

    /// The proto field whose value is the widest text key of one of the
    /// table's indexes (sql/0001, sql/0002), for "index row size exceeds
    /// maximum" errors, which name the index, not the column.
    pub fn proto_field_of_index(self, index: &str) -> Option<&'static str> {
        match (self, index) {
            (Table::AgentEvents, "agent_events_agent_type_idx") => Some("agent_id"),
            (Table::AgentEvents, "agent_events_tags_idx") => Some("tags"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A checked AgentEvent, borrowing its message. `project` is still the
/// client's name for it; [`crate::db::dims`] resolves it to an id.
#[derive(Debug)]
pub struct EventRow<'a> {
    pub index: u32,
    pub src: &'a pb::AgentEvent,
    pub id: Uuid,
    pub ts_us: i64,
    pub session_id: Uuid,
    pub parent_event_id: Option<Uuid>,
    pub related_event_ids: Vec<Uuid>,
    pub severity: Option<&'static str>,
    pub cost_nanos: Option<i64>,
}

/// A checked ChatMessage, borrowing its message.
#[derive(Debug)]
pub struct MessageRow<'a> {
    pub index: u32,
    pub src: &'a pb::ChatMessage,
    pub id: Uuid,
    pub session_id: Uuid,
    pub ts_us: i64,
}

/// A checked ChatSession (with its workspace, machine and project).
#[derive(Debug)]
pub struct ChatSessionRow<'a> {
    pub src: &'a pb::ChatSession,
    pub session_id: Uuid,
    pub workspace: &'a pb::Workspace,
    pub project: &'a pb::Project,
    pub machine: &'a pb::Machine,
    pub started_us: i64,
    pub ended_us: Option<i64>,
}

/// A checked AgentSession.
#[derive(Debug)]
pub struct AgentSessionRow<'a> {
    pub src: &'a pb::AgentSession,
    pub id: Uuid,
    pub start_us: i64,
    pub end_us: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_gives_columns_fields_and_key_positions() {
        assert!(
            Table::AgentEvents
                .columns()
                .starts_with("id, \"timestamp\", event_type")
        );
        assert_eq!(Table::AgentEvents.field_count(), 21);
        assert_eq!(Table::AgentEvents.key_fields(), (0, 1));
        assert_eq!(Table::ChatMessages.key_fields(), (0, 4));
        assert_eq!(
            Table::AgentEvents.proto_field("\"data\""),
            Some("data_json")
        );
        assert_eq!(
            Table::ChatMessages.proto_field("metadata"),
            Some("metadata_json")
        );
        for t in Table::ALL {
            assert_eq!(
                t.columns().split(", ").count(),
                t.field_count() as usize,
                "{t}"
            );
        }
    }
}
