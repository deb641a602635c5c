//! agent-telemetry: ingests telemetry from AI coding agents into
//! PostgreSQL/TimescaleDB.
//!
//! The data's way through the service, one module per stage; each imports
//! only the stages below it:
//!
//! 1. [`api`] and [`otlp`] **receive** — the edges. The native gRPC API and
//!    the OTLP receivers; wire types live here and only here: batches come
//!    in, typed outcomes go out as `BatchAck`s, OTLP responses and statuses,
//!    with the codes of [`codes`].
//! 2. [`intake`] — one batch to the buffer, the same way for every edge and
//!    for spool replay: [`validate`] checks every row (one bad row would
//!    abort the whole COPY) into a typed [`row`] or a rejection naming the
//!    row, field and reason; [`db::dims`] resolves the projects and chat
//!    sessions rows name; [`copy::encode`] writes the accepted rows in
//!    PostgreSQL's binary COPY format into one piece per batch. With
//!    `--spool-dir`, batches are appended to the [`spool`] instead and
//!    replayed from it.
//! 3. [`buffer`] — bounded admission (a byte-weighted semaphore per table)
//!    and the batcher, which gathers pieces into flushes by rows, bytes or age.
//! 4. [`copy::writer`] **copy** — runs each flush as one
//!    `COPY … FROM STDIN (FORMAT binary)` on a pooled connection, retries
//!    what can be retried, isolates rows the database refuses, and resolves
//!    every piece's outcome only after commit.
//! 5. [`ack`] — the typed outcomes: a row's rejection, a piece's and a
//!    batch's outcome.
//! 6. [`maintain`] — after the ack: refreshes the continuous aggregates over
//!    the hours late rows went into (TimescaleDB), deletes expired rows
//!    (plain PostgreSQL, where no retention job does it), and forgets one
//!    person's rows on request (`users forget`).
//!
//! Below every stage: [`row`] (tables, their column layout, typed rows),
//! [`codes`] (the error code table), [`time`], [`config`] (all settings),
//! [`metrics`], [`pb`], [`privacy`] (pseudonyms). Around them: [`db`] (pool, migrations, the embedded
//! PostgreSQL), [`auth`], [`net`], [`server`] (wiring and shutdown order),
//! [`loadgen`], [`bench`], and [`client`] (how `loadgen` and `health`
//! reach a service: endpoint, TLS, API key).

pub mod ack;
pub mod api;
pub mod auth;
pub mod bench;
pub mod buffer;
pub mod client;
pub mod codes;
pub mod config;
pub mod copy;
pub mod db;
pub mod ids;
pub mod import;
pub mod intake;
pub mod loadgen;
pub mod maintain;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod pb;
pub mod price;
pub mod privacy;
pub mod row;
pub mod server;
pub mod shutdown;
pub mod spool;
pub mod time;
pub mod validate;
