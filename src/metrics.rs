//! Metric names, their descriptions, and the one function per event that
//! records them (so names and labels are written once). Labels are low
//! cardinality: `table` (two values) and `reason` (a field name or a fixed
//! word). The Prometheus exporter is installed by [`crate::server`].

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::row::Table;

pub const ROWS_RECEIVED: &str = "agent_telemetry_rows_received_total";
pub const ROWS_STORED: &str = "agent_telemetry_rows_stored_total";
pub const ROWS_DUPLICATE: &str = "agent_telemetry_rows_duplicate_total";
pub const ROWS_REJECTED: &str = "agent_telemetry_rows_rejected_total";
pub const ROWS_CONFLICTING: &str = "agent_telemetry_rows_conflicting_total";
pub const ROWS_PAST_KEY_WINDOW: &str = "agent_telemetry_rows_past_key_window_total";
pub const BATCHES: &str = "agent_telemetry_batches_total";
pub const BATCHES_REFUSED: &str = "agent_telemetry_batches_refused_total";
pub const BATCH_ROWS: &str = "agent_telemetry_batch_rows";
pub const BUFFER_BYTES: &str = "agent_telemetry_buffer_bytes";
pub const FLUSH_ROWS: &str = "agent_telemetry_flush_rows";
pub const FLUSH_SECONDS: &str = "agent_telemetry_flush_duration_seconds";
pub const ACK_SECONDS: &str = "agent_telemetry_ack_latency_seconds";
pub const ACKS: &str = "agent_telemetry_acks_total";
pub const COPY_RETRIES: &str = "agent_telemetry_copy_retries_total";
pub const COPY_FAILURES: &str = "agent_telemetry_copy_failures_total";
pub const DB_ERRORS: &str = "agent_telemetry_db_errors_total";
pub const LATE_REFRESHES: &str = "agent_telemetry_late_refreshes_total";
pub const REFRESH_FAILURES: &str = "agent_telemetry_refresh_failures_total";
pub const LATE_PENDING_HOURS: &str = "agent_telemetry_late_pending_hours";
pub const RETENTION_DELETED: &str = "agent_telemetry_retention_deleted_rows_total";
pub const ROWS_SPOOLED: &str = "agent_telemetry_rows_spooled_total";
pub const SPOOL_BYTES: &str = "agent_telemetry_spool_bytes";
pub const SPOOL_PENDING_BYTES: &str = "agent_telemetry_spool_pending_bytes";
pub const SPOOL_OLDEST_AGE: &str = "agent_telemetry_spool_oldest_age_seconds";
pub const SPOOL_DISK_FREE: &str = "agent_telemetry_spool_disk_free_bytes";
pub const SPOOL_REPLAY_RETRIES: &str = "agent_telemetry_spool_replay_retries_total";
pub const SPOOL_REJECTED: &str = "agent_telemetry_spool_rejected_rows_total";
pub const AUTH_REFUSED: &str = "agent_telemetry_auth_refused_total";
pub const BUILD_INFO: &str = "agent_telemetry_build_info";
pub const STORAGE_LAYOUT: &str = "agent_telemetry_storage_layout";
pub const OTLP_EXPORTS: &str = "agent_telemetry_otlp_exports_total";
pub const OTLP_RECORDS: &str = "agent_telemetry_otlp_records_total";
pub const OTLP_IGNORED: &str = "agent_telemetry_otlp_records_ignored_total";
pub const UNPRICED: &str = "agent_telemetry_unpriced_requests_total";
pub const PRICE_RELOADS: &str = "agent_telemetry_price_table_reloads_total";
pub const REDACTIONS: &str = "agent_telemetry_redactions_total";
pub const CONTENT_POLICY: &str = "agent_telemetry_content_policy_total";
pub const CONTENT_POLICY_UNRESOLVED: &str = "agent_telemetry_content_policy_unresolved_total";
pub const STREAMS_ENDED: &str = "agent_telemetry_streams_ended_total";
pub const PROJECT_ROWS: &str = "agent_telemetry_project_rows_total";
pub const PROJECT_COST: &str = "agent_telemetry_project_cost_nano_usd_total";

/// Bucket bounds (seconds) of the latency histograms: a fast flush takes a
/// few milliseconds, a flush retried through a database restart up to
/// `--copy-retry-timeout` (30 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder, describes every metric (the process's
/// own too) and sets the counters that must read 0 before anything
/// happened. The handle renders the text `/metrics` serves
/// (`api::probes`).
pub fn install()
-> Result<metrics_exporter_prometheus::PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    // Latencies as histograms, not the exporter's default summaries:
    // bucket counts add up across instances, so a dashboard can show one
    // p99 for a whole fleet (quantiles of summaries cannot be merged).
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    zero();
    metrics_process::Collector::default().describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// One description per metric: a list, long because the metrics are many.
pub fn describe() {
    describe_counter!(ROWS_RECEIVED, "Rows received in batches, per table");
    describe_counter!(
        PRICE_RELOADS,
        "Price table reloads on SIGHUP, by result (ok, error: the table in use kept)"
    );
    describe_counter!(
        REDACTIONS,
        "Secrets replaced by [REDACTED:<kind>] before storage, per table and kind"
    );
    describe_counter!(
        CONTENT_POLICY,
        "Texts the content policy truncated, hashed or did not store, per table and mode"
    );
    describe_counter!(
        CONTENT_POLICY_UNRESOLVED,
        "Chat messages spooled under the strictest content policy because their session's project was not known yet"
    );
    describe_counter!(
        ROWS_STORED,
        "Rows newly committed to the database, per table"
    );
    describe_counter!(
        ROWS_DUPLICATE,
        "Rows received again that were already stored (resends), per table"
    );
    describe_counter!(
        ROWS_REJECTED,
        "Rows refused, per table and reason (the offending field, or 'database')"
    );
    describe_counter!(
        ROWS_CONFLICTING,
        "Rows not stored because their id is stored with another timestamp, per table"
    );
    describe_counter!(
        ROWS_PAST_KEY_WINDOW,
        "Columnstore: rows older than --key-window looked up in the stored rows before their COPY, per table (once per look-up)"
    );
    describe_counter!(BATCHES, "Batches received, per table");
    describe_counter!(
        BATCHES_REFUSED,
        "Batches refused whole, per table and reason (buffer_full, too_large, shutdown, ...)"
    );
    describe_histogram!(BATCH_ROWS, "Rows per received batch");
    describe_gauge!(
        BUFFER_BYTES,
        "Bytes of encoded rows held in the buffer, per table"
    );
    describe_histogram!(FLUSH_ROWS, "Rows per COPY flush");
    describe_histogram!(
        FLUSH_SECONDS,
        "Duration of a flush (COPY and commit, retries included)"
    );
    describe_histogram!(
        ACK_SECONDS,
        "Time from a batch entering the buffer to its commit"
    );
    describe_counter!(ACKS, "Acks sent, per table and result (ok, error)");
    describe_counter!(
        COPY_RETRIES,
        "COPY attempts retried after a connection-level error"
    );
    describe_counter!(
        COPY_FAILURES,
        "Flushes given up after retries (their batches were acked with an error)"
    );
    describe_counter!(
        DB_ERRORS,
        "Database errors outside COPY (dimension upserts, lookups, refreshes, retention)"
    );
    describe_counter!(
        LATE_REFRESHES,
        "Continuous-aggregate refreshes run for late rows, per aggregate"
    );
    describe_counter!(
        REFRESH_FAILURES,
        "Late-data refreshes of a continuous aggregate that failed, per aggregate (the log has PostgreSQL's message)"
    );
    describe_gauge!(
        LATE_PENDING_HOURS,
        "Hours holding late rows whose aggregates are not yet refreshed"
    );
    describe_counter!(
        RETENTION_DELETED,
        "Rows deleted by the service's own retention (plain PostgreSQL mode), per table"
    );
    describe_counter!(
        ROWS_SPOOLED,
        "Rows appended to the disk spool and acknowledged, per table"
    );
    describe_gauge!(SPOOL_BYTES, "Bytes in the disk spool's files");
    describe_gauge!(
        SPOOL_PENDING_BYTES,
        "Bytes in the disk spool not yet in the database"
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the service's version");
    describe_gauge!(
        STORAGE_LAYOUT,
        "1 for the event tables' storage layout in use (label layout: columnstore or rowstore)"
    );
    describe_gauge!(
        SPOOL_DISK_FREE,
        "Free bytes on the spool's filesystem (appends stop at --spool-reserve-bytes)"
    );
    describe_gauge!(
        SPOOL_OLDEST_AGE,
        "Age of the oldest spooled batch not yet in the database (0 when none)"
    );
    describe_counter!(
        SPOOL_REPLAY_RETRIES,
        "Times spool replay went back to retry (database down, buffer full)"
    );
    describe_counter!(
        SPOOL_REJECTED,
        "Spooled rows refused at replay, kept in the spool's rejected.jsonl"
    );
    describe_counter!(
        AUTH_REFUSED,
        "Requests refused by authentication, per reason"
    );
    describe_counter!(
        OTLP_EXPORTS,
        "OTLP exports answered, per signal and result (ok, partial, or the refusal)"
    );
    describe_counter!(
        STREAMS_ENDED,
        "Streams ended by a message the service could not take, per reason (message_too_large, undecodable, broken)"
    );
    describe_counter!(
        OTLP_RECORDS,
        "OTLP records mapped to rows, per signal and agent (other: any unlisted agent)"
    );
    describe_counter!(
        UNPRICED,
        "Requests with tokens and no cost whose model the price table lacks (stored without a cost; the model is logged once)"
    );
    describe_counter!(
        OTLP_IGNORED,
        "OTLP records accepted and not stored, per signal: they repeat another record's figures or are an agent's internal output (docs/otlp.md, \"What is not stored\")"
    );
    describe_counter!(
        PROJECT_ROWS,
        "Rows newly stored, per table and project (the project's full name for the first --metrics-max-projects projects, then other)"
    );
    describe_counter!(
        PROJECT_COST,
        "Cost of the agent events newly stored, in nano-USD (USD x 1e9), per project as agent_telemetry_project_rows_total labels it"
    );
}

/// Registers every counter and histogram at 0, with the label values known
/// at start-up. A Prometheus series that first appears at its first
/// increment has no earlier sample, so `rate()` and `increase()` miss that
/// first increment: three refused batches on a fresh instance would read
/// as none.
pub fn zero() {
    for table in Table::ALL {
        let t = table.name();
        for name in [
            BATCHES,
            ROWS_RECEIVED,
            ROWS_STORED,
            ROWS_DUPLICATE,
            ROWS_CONFLICTING,
            ROWS_PAST_KEY_WINDOW,
            COPY_RETRIES,
            COPY_FAILURES,
            ROWS_SPOOLED,
            RETENTION_DELETED,
        ] {
            counter!(name, "table" => t).absolute(0);
        }
        for result in ["ok", "error"] {
            counter!(ACKS, "table" => t, "result" => result).absolute(0);
        }
        for reason in BATCH_REFUSALS {
            counter!(BATCHES_REFUSED, "table" => t, "reason" => *reason).absolute(0);
        }
        for reason in table
            .proto_fields()
            .iter()
            .copied()
            .chain(["database", "row", "sessions"])
        {
            counter!(ROWS_REJECTED, "table" => t, "reason" => reason).absolute(0);
        }
        for name in [BATCH_ROWS, FLUSH_ROWS, FLUSH_SECONDS, ACK_SECONDS] {
            let _ = histogram!(name, "table" => t);
        }
        gauge!(BUFFER_BYTES, "table" => t).set(0.0);
    }
    for op in DB_OPERATIONS {
        counter!(DB_ERRORS, "operation" => *op).absolute(0);
    }
    for reason in ["missing", "malformed", "invalid", "unavailable"] {
        counter!(AUTH_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in ["message_too_large", "undecodable", "broken"] {
        counter!(STREAMS_ENDED, "reason" => reason).absolute(0);
    }
    counter!(SPOOL_REPLAY_RETRIES).absolute(0);
    counter!(SPOOL_REJECTED).absolute(0);
    counter!(UNPRICED).absolute(0);
    for signal in ["logs", "traces", "metrics"] {
        for result in [
            "ok",
            "partial",
            "unauthenticated",
            "permission_denied",
            "retry",
            "refused",
        ] {
            counter!(OTLP_EXPORTS, "signal" => signal, "result" => result).absolute(0);
        }
        for agent in OTLP_AGENTS.iter().chain(&["other"]) {
            counter!(OTLP_RECORDS, "signal" => signal, "agent" => *agent).absolute(0);
        }
        counter!(OTLP_IGNORED, "signal" => signal).absolute(0);
    }
}

/// The reasons a batch is refused whole (the `reason` label).
pub const BATCH_REFUSALS: &[&str] = &[
    "too_many_rows",
    "buffer_full",
    "too_large",
    "shutdown",
    "spool_full",
    "spool_disk_full",
    "spool_error",
];

/// The `operation` label of [`DB_ERRORS`].
const DB_OPERATIONS: &[&str] = &[
    "upsert_project",
    "upsert_chat_session",
    "upsert_agent_session",
    "upsert_user",
    "load_sessions",
    "late_refresh",
    "retention",
];

/// Agents with a label of their own in [`OTLP_RECORDS`].
const OTLP_AGENTS: &[&str] = &["claude-code", "gemini-cli", "codex", "github-copilot"];

/// The late-data refresher's aggregates at 0 (TimescaleDB mode only).
pub fn zero_refreshes(aggregates: impl IntoIterator<Item = &'static str>) {
    for a in aggregates {
        counter!(LATE_REFRESHES, "aggregate" => a).absolute(0);
        counter!(REFRESH_FAILURES, "aggregate" => a).absolute(0);
    }
}

pub fn rows_received(table: Table, n: usize) {
    counter!(BATCHES, "table" => table.name()).increment(1);
    counter!(ROWS_RECEIVED, "table" => table.name()).increment(n as u64);
    histogram!(BATCH_ROWS, "table" => table.name()).record(n as f64);
}

/// `reason` is the rejected field ("tags[3]" counts as "tags", a session's
/// "sessions[0].workspace" as "sessions", none as "row"), so the label
/// keeps to the values [`zero`] registers.
pub fn rows_rejected(table: Table, reason: &str, n: u64) {
    let label = reason.split(['[', '.']).next().unwrap_or_default();
    let label = if label.is_empty() { "row" } else { label };
    counter!(ROWS_REJECTED, "table" => table.name(), "reason" => label.to_owned()).increment(n);
}

pub fn rows_conflicting(table: Table, n: u64) {
    counter!(ROWS_CONFLICTING, "table" => table.name()).increment(n);
}

pub fn rows_past_key_window(table: Table, n: u64) {
    counter!(ROWS_PAST_KEY_WINDOW, "table" => table.name()).increment(n);
}

pub fn batch_refused(table: Table, reason: &'static str) {
    counter!(BATCHES_REFUSED, "table" => table.name(), "reason" => reason).increment(1);
}

/// Rows newly stored of one project, and their cost (events only).
pub fn project_stored(table: Table, project: &str, rows: u64, cost_nanos: i64) {
    counter!(PROJECT_ROWS, "table" => table.name(), "project" => project.to_owned())
        .increment(rows);
    if table == Table::AgentEvents {
        counter!(PROJECT_COST, "project" => project.to_owned()).increment(cost_nanos.max(0) as u64);
    }
}

pub fn rows_stored(table: Table, stored: u64, duplicates: u64) {
    counter!(ROWS_STORED, "table" => table.name()).increment(stored);
    if duplicates > 0 {
        counter!(ROWS_DUPLICATE, "table" => table.name()).increment(duplicates);
    }
}

pub fn buffer_fill(table: Table, bytes: usize) {
    gauge!(BUFFER_BYTES, "table" => table.name()).set(bytes as f64);
}

pub fn flush_done(table: Table, rows: usize, took: Duration) {
    histogram!(FLUSH_ROWS, "table" => table.name()).record(rows as f64);
    histogram!(FLUSH_SECONDS, "table" => table.name()).record(took.as_secs_f64());
}

pub fn ack_latency(table: Table, took: Duration) {
    histogram!(ACK_SECONDS, "table" => table.name()).record(took.as_secs_f64());
}

pub fn ack_sent(table: Table, ok: bool) {
    counter!(ACKS, "table" => table.name(), "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

pub fn copy_retried(table: Table) {
    counter!(COPY_RETRIES, "table" => table.name()).increment(1);
}

pub fn copy_failed(table: Table) {
    counter!(COPY_FAILURES, "table" => table.name()).increment(1);
}

pub fn db_error(operation: &'static str) {
    counter!(DB_ERRORS, "operation" => operation).increment(1);
}

pub fn late_refreshed(aggregate: &'static str) {
    counter!(LATE_REFRESHES, "aggregate" => aggregate).increment(1);
}

pub fn refresh_failed(aggregate: &'static str) {
    counter!(REFRESH_FAILURES, "aggregate" => aggregate).increment(1);
}

/// Where redacted spans are counted (the `table` label of [`REDACTIONS`]):
/// the two row tables and the two session tables.
pub const REDACTION_TABLES: &[&str] = &[
    "agent_events",
    "chat_messages",
    "chat_sessions",
    "agent_sessions",
];

/// Every kind at 0 for every table, so that a rate over it exists before
/// the first secret arrives.
pub fn zero_redactions<'a>(kinds: impl Iterator<Item = &'a str>) {
    for kind in kinds {
        for &t in REDACTION_TABLES {
            counter!(REDACTIONS, "table" => t, "kind" => kind.to_owned()).absolute(0);
        }
    }
}

/// Redacted spans of one table, per kind (intake's `Hits`).
pub fn redacted<'a>(table: &'static str, hits: impl Iterator<Item = (&'a str, u64)>) {
    for (kind, n) in hits {
        counter!(REDACTIONS, "table" => table, "kind" => kind.to_owned()).increment(n);
    }
}

/// URLs whose userinfo an edge took out before intake (OTLP attributes),
/// under the redaction kind intake counts the same under.
pub fn url_userinfo_stripped(table: &'static str, n: u64) {
    counter!(REDACTIONS, "table" => table, "kind" => crate::privacy::URL_USERINFO).increment(n);
}

/// Every mode that changes content at 0 for both tables, with
/// `--content-policy` (the policy's labels).
pub fn zero_content_policy(modes: &[&'static str]) {
    for t in ["agent_events", "chat_messages"] {
        for &mode in modes {
            counter!(CONTENT_POLICY, "table" => t, "mode" => mode).absolute(0);
        }
    }
    counter!(CONTENT_POLICY_UNRESOLVED, "table" => "chat_messages").absolute(0);
}

/// Rows the content policy changed, per mode (intake's `Changes`).
pub fn content_policy(table: &'static str, changes: impl Iterator<Item = (&'static str, u64)>) {
    for (mode, n) in changes {
        counter!(CONTENT_POLICY, "table" => table, "mode" => mode).increment(n);
    }
}

pub fn content_policy_unresolved(rows: u64) {
    if rows > 0 {
        counter!(CONTENT_POLICY_UNRESOLVED, "table" => "chat_messages").increment(rows);
    }
}

pub fn price_table_reload(result: &'static str) {
    counter!(PRICE_RELOADS, "result" => result).increment(1);
}

pub fn storage_layout(layout: &'static str) {
    gauge!(STORAGE_LAYOUT, "layout" => layout).set(1.0);
}

pub fn late_pending(hours: usize) {
    gauge!(LATE_PENDING_HOURS).set(hours as f64);
}

pub fn retention_deleted(table: Table, rows: u64) {
    counter!(RETENTION_DELETED, "table" => table.name()).increment(rows);
}

pub fn rows_spooled(table: Table, n: usize) {
    counter!(ROWS_SPOOLED, "table" => table.name()).increment(n as u64);
}

pub fn spool_state(bytes: u64, pending: u64, oldest_age: Duration, disk_free: Option<u64>) {
    gauge!(SPOOL_BYTES).set(bytes as f64);
    gauge!(SPOOL_PENDING_BYTES).set(pending as f64);
    gauge!(SPOOL_OLDEST_AGE).set(oldest_age.as_secs_f64());
    if let Some(free) = disk_free {
        gauge!(SPOOL_DISK_FREE).set(free as f64);
    }
}

pub fn spool_replay_retried() {
    counter!(SPOOL_REPLAY_RETRIES).increment(1);
}

pub fn spool_rejected(rows: usize) {
    counter!(SPOOL_REJECTED).increment(rows as u64);
}

/// One OTLP export answered: `signal` logs/traces/metrics, `result` ok,
/// partial or the refusal's kind.
pub fn otlp_export(signal: &'static str, result: &'static str) {
    counter!(OTLP_EXPORTS, "signal" => signal, "result" => result).increment(1);
}

/// OTLP records mapped, per signal and agent.
pub fn otlp_records(signal: &'static str, agent: &str, n: usize) {
    // service.name is the sender's choice: only known agents get a label
    // of their own, so that the series stay few.
    let agent: &'static str = OTLP_AGENTS
        .iter()
        .find(|a| **a == agent)
        .copied()
        .unwrap_or("other");
    counter!(OTLP_RECORDS, "signal" => signal, "agent" => agent).increment(n as u64);
}

/// A request priced by no entry of the price table.
pub fn unpriced_request() {
    counter!(UNPRICED).increment(1);
}

/// OTLP records accepted and not stored, per signal.
pub fn otlp_ignored(signal: &'static str, n: usize) {
    if n > 0 {
        counter!(OTLP_IGNORED, "signal" => signal).increment(n as u64);
    }
}

pub fn stream_ended(reason: &'static str) {
    counter!(STREAMS_ENDED, "reason" => reason).increment(1);
}

pub fn auth_refused(reason: &'static str) {
    counter!(AUTH_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../docs/metrics.md");
        let src = include_str!("metrics.rs");
        let names: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|n| n.starts_with("agent_telemetry_"))
            .collect();
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/metrics.md lacks {name}"
            );
        }
    }
}
