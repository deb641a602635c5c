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
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
