//! agent-telemetry: ingests telemetry from AI coding agents into
//! PostgreSQL/TimescaleDB.
//!
//! The data's way through the service, one module per stage:
//!
//! 1. [`api`] **receive** — the gRPC edge. Decodes each batch row by row,
//!    maps every error to a `tonic::Status` (only here), and sends one ack
//!    per batch, in order.
//! 2. [`validate`] — checks every row before it may reach a COPY (one bad row
//!    would abort the whole COPY) and turns it into a typed row, or into a
//!    [`validate::Rejection`] naming the row, field and reason.
//! 3. [`db::dims`] resolves the natural keys clients send (project names,
//!    chat session ids) to database ids through an in-memory cache.
//! 4. [`copy::encode`] **encode** — writes accepted rows in PostgreSQL's
//!    binary COPY format straight into one buffer per batch (a [`buffer::Piece`]).
//! 5. [`buffer`] — bounded admission (a byte-weighted semaphore per table)
//!    and the batcher, which gathers pieces into flushes by rows, bytes or age.
//! 6. [`copy::writer`] **copy** — runs each flush as one
//!    `COPY … FROM STDIN (FORMAT binary)` on a pooled connection, retries
//!    what can be retried, isolates rows the database refuses, and resolves
//!    every piece's outcome only after commit.
//! 7. [`ack`] — what a piece's outcome is, and how a batch's ack is built
//!    from it.
//! 8. [`maintain`] — after the ack: refreshes the continuous aggregates over
//!    the hours late rows went into (TimescaleDB), or deletes expired rows
//!    (plain PostgreSQL, where no retention job does it).
//!
//! Around them: [`config`] (all settings), [`db`] (pool, migrations, the
//! embedded PostgreSQL), [`server`] (wiring and shutdown order),
//! [`metrics`], [`loadgen`], [`bench`].

pub mod ack;
pub mod api;
pub mod auth;
pub mod bench;
pub mod buffer;
pub mod config;
pub mod copy;
pub mod db;
pub mod loadgen;
pub mod maintain;
pub mod metrics;
pub mod otlp;
pub mod pb;
pub mod row;
pub mod server;
pub mod shutdown;
pub mod spool;
pub mod time;
pub mod validate;
