//! Stage 8: **maintain** — what happens to stored rows after their ack.
//!
//! - [`refresh`] (TimescaleDB mode): the copy stage reports the hours it
//!   wrote late rows into; this refreshes exactly those ranges of the
//!   continuous aggregates, merged and rate-limited.
//! - [`retention`] (plain PostgreSQL mode): deletes rows past their
//!   retention window on a timer, as TimescaleDB's retention jobs would.

pub mod refresh;
pub mod retention;
