//! Stages 4 and 6: **encode** and **copy**.
//!
//! [`encode`] is pure: checked rows in, bytes of PostgreSQL's binary COPY
//! format out (one buffer per batch, no per-row allocation). [`writer`] does
//! the IO: one `COPY … FROM STDIN (FORMAT binary)` per flush, committed before
//! any piece of it is resolved.

pub mod encode;
pub mod writer;
