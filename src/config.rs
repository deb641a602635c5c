//! All settings, in one place: command-line flags, each with an environment
//! variable of the same meaning. `agent-telemetry <command> --help` prints
//! them with their defaults; docs/configuration.md explains how the defaults
//! were chosen.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agent-telemetry",
    version,
    about = "Ingest telemetry from AI coding agents into PostgreSQL/TimescaleDB"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC ingest service (migrates the database first).
    Serve(Box<ServeConfig>),
    /// Apply pending SQL migrations and exit.
    Migrate(MigrateConfig),
    /// Stream realistic synthetic events and messages to a running service.
    Loadgen(crate::loadgen::LoadgenConfig),
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value). When absent, the
    /// service starts its own PostgreSQL in --data-dir (the embedded default).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the embedded PostgreSQL's cluster, kept across restarts.
    /// Default: /var/lib/agent-telemetry when run as root, else
    /// $XDG_DATA_HOME/agent-telemetry (~/.local/share/agent-telemetry).
    #[arg(long, env = "AGENT_TELEMETRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory of the PostgreSQL server binaries for the embedded database.
    /// Default: `pg_config --bindir`, then /usr/lib/postgresql/*/bin, then PATH.
    #[arg(long, env = "AGENT_TELEMETRY_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,

    /// Connections in the pool (COPY flushes plus dimension upserts).
    #[arg(long, env = "AGENT_TELEMETRY_POOL_SIZE", default_value_t = 8)]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Address of the gRPC endpoint.
    #[arg(
        long,
        env = "AGENT_TELEMETRY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics endpoint (`/metrics`); "off" disables it.
    #[arg(long, env = "AGENT_TELEMETRY_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_optional_addr)]
    pub metrics_listen: OptionalAddr,

    /// On SIGTERM/Ctrl-C: how long to keep flushing buffered rows and sending
    /// their acks before exiting anyway. A second signal exits at once.
    #[arg(long, env = "AGENT_TELEMETRY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub pipeline: PipelineConfig,

    #[command(flatten)]
    pub limits: Limits,
}

impl ServeConfig {
    /// Defaults for every setting (what `serve` with no flags uses).
    pub fn defaults() -> Self {
        match Cli::parse_from(["agent-telemetry", "serve"]).command {
            Command::Serve(c) => *c,
            _ => unreachable!(),
        }
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.0
    }
}

/// An address, or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|e| format!("{e}"))
}

/// Buffering, batching and COPY settings.
#[derive(Debug, Clone, Args)]
pub struct PipelineConfig {
    /// Bytes of encoded rows each table may hold in memory, waiting for or
    /// in a COPY. When full, new batches wait up to --admission-timeout and
    /// are then refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AGENT_TELEMETRY_BUFFER_BYTES", default_value_t = 128 << 20)]
    pub buffer_bytes: usize,

    /// A flush starts when this many rows are buffered ...
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_ROWS", default_value_t = 10_000)]
    pub flush_rows: usize,

    /// ... or this many bytes ...
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_BYTES", default_value_t = 8 << 20)]
    pub flush_bytes: usize,

    /// ... or when the oldest buffered row has waited this long.
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_AGE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub flush_age: Duration,

    /// COPY statements that may run at once, per table.
    #[arg(long, env = "AGENT_TELEMETRY_COPY_CONCURRENCY", default_value_t = 2)]
    pub copy_concurrency: usize,

    /// How long a batch may wait for buffer space before RESOURCE_EXHAUSTED.
    #[arg(long, env = "AGENT_TELEMETRY_ADMISSION_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub admission_timeout: Duration,

    /// How long a flush keeps retrying while the database is unreachable
    /// before its batches are acked with a retryable error.
    #[arg(long, env = "AGENT_TELEMETRY_COPY_RETRY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub copy_retry_timeout: Duration,

    /// Batches of one stream that may wait for their acks at once; beyond
    /// that the stream stops reading and HTTP/2 flow control slows the client.
    #[arg(long, env = "AGENT_TELEMETRY_STREAM_INFLIGHT", default_value_t = 64)]
    pub stream_inflight: usize,
}

/// Limits on what one request may contain. Each is checked before any work
/// proportional to it is done.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest gRPC message accepted (after decompression).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub max_message_bytes: usize,

    /// Rows in one batch.
    #[arg(long, env = "AGENT_TELEMETRY_MAX_BATCH_ROWS", default_value_t = 10_000)]
    pub max_batch_rows: usize,

    /// Bytes of an identifier or name field (ids, types, tags, paths, ...).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_TEXT_BYTES", default_value_t = 4096)]
    pub max_text_bytes: usize,

    /// Bytes of a chat message's content (and search_content).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_CONTENT_BYTES", default_value_t = 1 << 20)]
    pub max_content_bytes: usize,

    /// Bytes of one JSON field.
    #[arg(long, env = "AGENT_TELEMETRY_MAX_JSON_BYTES", default_value_t = 256 << 10)]
    pub max_json_bytes: usize,

    /// Tags, and related event ids, per event.
    #[arg(long, env = "AGENT_TELEMETRY_MAX_LIST_ITEMS", default_value_t = 64)]
    pub max_list_items: usize,

    /// Oldest timestamp accepted, as an age (late data from offline clients
    /// is welcome up to this).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_PAST", default_value = "90days", value_parser = humantime::parse_duration)]
    pub max_past: Duration,

    /// How far in the future a timestamp may be (client clock skew).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_FUTURE", default_value = "15min", value_parser = humantime::parse_duration)]
    pub max_future: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        ServeConfig::defaults().limits
    }
}
