//! Stages 4 and 6: **encode** and **copy**.
//!
//! [`encode`] is pure: checked rows in, bytes of PostgreSQL's binary COPY
//! format out (one buffer per batch, no per-row allocation). [`writer`] does
//! the IO: one `COPY … FROM STDIN (FORMAT binary)` per flush, committed before
//! any piece of it is resolved.

pub mod encode;
pub mod writer;

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

    /// Columns in the order the encoder writes them.
    pub fn columns(self) -> &'static str {
        match self {
            Table::AgentEvents => encode::EVENT_COLUMNS,
            Table::ChatMessages => encode::MESSAGE_COLUMNS,
        }
    }

    /// The proto field a column is encoded from, so that a row the
    /// database refuses is rejected by the name the client knows.
    pub fn proto_field(self, column: &str) -> Option<&'static str> {
        self.columns_and_fields()
            .iter()
            .find(|(c, _)| *c == column.trim_matches('"'))
            .map(|(_, f)| *f)
    }

    /// The proto fields of the table's rows (each once).
    pub fn proto_fields(self) -> Vec<&'static str> {
        let mut fields: Vec<&'static str> = Vec::new();
        for (_, f) in self.columns_and_fields() {
            if !fields.contains(f) {
                fields.push(f);
            }
        }
        fields
    }

    fn columns_and_fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Table::AgentEvents => &[
                ("id", "id"),
                ("timestamp", "timestamp"),
                ("event_type", "event_type"),
                ("agent_id", "agent_id"),
                ("agent_version", "agent_version"),
                ("session_id", "session_id"),
                ("project_id", "project"),
                ("context", "context_json"),
                ("data", "data_json"),
                ("metrics", "metrics_json"),
                ("parent_event_id", "parent_event_id"),
                ("related_event_ids", "related_event_ids"),
                ("tags", "tags"),
                ("severity", "severity"),
                ("duration_ms", "duration_ms"),
                ("input_tokens", "input_tokens"),
                ("output_tokens", "output_tokens"),
                ("cached_tokens", "cached_tokens"),
                ("cost_usd", "cost_usd"),
                ("model", "model"),
            ],
            Table::ChatMessages => &[
                ("id", "id"),
                ("session_id", "session_id"),
                ("role", "role"),
                ("content", "content"),
                ("timestamp", "timestamp"),
                ("sequence", "sequence"),
                ("metadata", "metadata_json"),
                ("search_content", "search_content"),
                ("project_id", "session_id"),
                ("agent_type", "session_id"),
            ],
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copied_column_names_its_proto_field() {
        // The column → field table is kept by hand beside the encoder's
        // column list: a column added to one must be added to the other, or
        // a row the database refuses would be rejected with no field.
        for table in Table::ALL {
            let columns: Vec<&str> = table.columns().split(',').map(str::trim).collect();
            let mapped: Vec<&str> = table.columns_and_fields().iter().map(|(c, _)| *c).collect();
            assert_eq!(
                columns
                    .iter()
                    .map(|c| c.trim_matches('"'))
                    .collect::<Vec<_>>(),
                mapped,
                "{table}"
            );
        }
        assert_eq!(
            Table::AgentEvents.proto_field("\"data\""),
            Some("data_json")
        );
        assert_eq!(
            Table::ChatMessages.proto_field("metadata"),
            Some("metadata_json")
        );
    }
}
