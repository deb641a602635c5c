//! All settings, in one place: command-line flags, each with an environment
//! variable of the same meaning. `agent-telemetry <command> --help` prints
//! them with their defaults; docs/configuration.md explains how the defaults
//! were chosen.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// `serve`'s settings alone, parsed as `agent-telemetry serve` would parse
/// them (the command line itself is the binary's, `src/main.rs`).
#[derive(Debug, Parser)]
#[command(name = "agent-telemetry serve")]
struct ServeArgs {
    #[command(flatten)]
    serve: ServeConfig,
}

/// How a client command (`loadgen`, `health`) reaches the service
/// (src/client.rs).
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// The service's gRPC endpoint: http://host:port, or https://host:port
    /// for a TLS listener (`serve --tls-cert`).
    #[arg(
        long,
        env = "AGENT_TELEMETRY_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// PEM file of the CA (or the self-signed certificate) to trust for an
    /// https endpoint. Without it, the system's trust store.
    #[arg(long, env = "AGENT_TELEMETRY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, where it is not the
    /// endpoint's host (e.g. `localhost` for https://127.0.0.1:50051).
    #[arg(long, env = "AGENT_TELEMETRY_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// API key (`keys create`), sent as `authorization: Bearer <key>`.
    #[arg(long, env = "AGENT_TELEMETRY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ClientConfig {
    /// Plain text to `endpoint`, no key.
    pub fn at(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ca_file: None,
            tls_server_name: None,
            api_key: None,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthConfig {
    #[command(flatten)]
    pub client: ClientConfig,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KeysConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub projects: ProjectsConfig,

    #[command(subcommand)]
    pub action: KeysAction,
}

/// `agent-telemetry users …`: what the service keeps of developers.
#[derive(Debug, Clone, Args)]
pub struct UsersConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(subcommand)]
    pub action: UsersAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum UsersAction {
    /// Delete one developer's rows everywhere (events, chat messages and
    /// sessions, agent sessions, memberships, the user), record it in the
    /// audit log, refresh the aggregates over their days, and print the
    /// counts. KEY is the developer's key as clients send it; with
    /// AGENT_TELEMETRY_PSEUDONYM_SECRET set, its pseudonym is found too.
    Forget { key: String },
}

/// `agent-telemetry readers …`: read-only roles of one organisation.
#[derive(Debug, Clone, Args)]
pub struct ReadersConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// The password `readers create` gives the role (it may log in only
    /// with one). From the environment: a command line is visible to every
    /// local user.
    #[arg(skip = std::env::var("AGENT_TELEMETRY_ORG_READER_PASSWORD").ok())]
    pub password: Option<String>,

    #[command(subcommand)]
    pub action: ReadersAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReadersAction {
    /// Create (or update) a role that reads one organisation's rows and
    /// nothing else: a Grafana organisation's datasource user. With
    /// AGENT_TELEMETRY_ORG_READER_PASSWORD set it may log in with it.
    Create {
        /// The organisation (its key, as clients send it).
        #[arg(long)]
        organization: String,
        /// The role's name; default agent_telemetry_reader_org_<id>.
        #[arg(long)]
        role: Option<String>,
    },
    /// List the organisation readers: role, organisation, schema, views.
    List,
    /// Drop an organisation reader role.
    Drop { role: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Create a key that may write to the given projects and to every
    /// project of the given organisations; prints it once.
    Create {
        /// A project the key may write to (repeatable), as clients name it:
        /// "owner/repo", a repository URL, or a bare name.
        #[arg(long = "project", required_unless_present = "organizations")]
        projects: Vec<String>,
        /// An organisation (its key, as clients send it; repeatable): the
        /// key writes to all its projects and creates new ones inside it.
        #[arg(long = "organization")]
        organizations: Vec<String>,
        /// The developer the key belongs to (their key, as clients send
        /// it): rows sent with it that name no developer are theirs. With
        /// AGENT_TELEMETRY_PSEUDONYM_SECRET set, their pseudonym is stored.
        #[arg(long)]
        user: Option<String>,
        /// A label for `keys list`.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys: id, label, shown prefix, projects, state, last use.
    List,
    /// Revoke a key (by id or the prefix `keys list` shows).
    Revoke { key: String },
}

/// How a client's project name becomes a project's identity (docs/schema.md,
/// "Project identity"): the repository's host and path.
#[derive(Debug, Clone, Args)]
pub struct ProjectsConfig {
    /// The host a bare "owner/repo" project name means.
    #[arg(
        long,
        global = true,
        env = "AGENT_TELEMETRY_DEFAULT_GIT_HOST",
        default_value = "github.com"
    )]
    pub default_git_host: String,

    /// Hosts whose owner and repository names compare without regard to
    /// case ("ACME/API" and "acme/api" are one repository there); on any
    /// other host names compare exactly. Comma-separated.
    #[arg(
        long,
        global = true,
        env = "AGENT_TELEMETRY_CASE_INSENSITIVE_GIT_HOSTS",
        default_value = "github.com,gitlab.com,bitbucket.org,codeberg.org",
        value_delimiter = ','
    )]
    pub case_insensitive_git_hosts: Vec<String>,
}

impl Default for ProjectsConfig {
    fn default() -> Self {
        ServeConfig::defaults().projects
    }
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (URL or key=value). When absent, the
    /// service starts its own PostgreSQL in --data-dir (the embedded default).
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the embedded PostgreSQL's cluster, kept across restarts.
    /// Default: /var/lib/agent-telemetry when run as root, else
    /// $XDG_DATA_HOME/agent-telemetry (~/.local/share/agent-telemetry).
    #[arg(long, global = true, env = "AGENT_TELEMETRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory of the PostgreSQL server binaries for the embedded database.
    /// Default: `pg_config --bindir`, then /usr/lib/postgresql/*/bin, then PATH.
    #[arg(long, global = true, env = "AGENT_TELEMETRY_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,

    /// Connections in the pool (COPY flushes plus dimension upserts).
    #[arg(
        long,
        global = true,
        env = "AGENT_TELEMETRY_POOL_SIZE",
        default_value_t = 8
    )]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub storage: StorageConfig,
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

    /// Projects that get their own `project` label in the per-project
    /// metrics (rows, cost); later ones are counted as `other`. Bounds the
    /// series a project flood can create.
    #[arg(
        long,
        env = "AGENT_TELEMETRY_METRICS_MAX_PROJECTS",
        default_value_t = 100
    )]
    pub metrics_max_projects: usize,

    /// On SIGTERM/Ctrl-C: how long to keep flushing buffered rows and sending
    /// their acks before exiting anyway. A second signal exits at once.
    #[arg(long, env = "AGENT_TELEMETRY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub storage: StorageConfig,

    #[command(flatten)]
    pub pipeline: PipelineConfig,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub projects: ProjectsConfig,

    #[command(flatten)]
    pub security: SecurityConfig,

    #[command(flatten)]
    pub spool: SpoolConfig,

    #[command(flatten)]
    pub otlp: OtlpConfig,

    #[command(flatten)]
    pub redaction: RedactionConfig,
}

/// Credentials out of what agents send (docs/reliability.md, "Redaction").
#[derive(Debug, Clone, Args)]
pub struct RedactionConfig {
    /// Replace credentials (cloud, GitHub, GitLab, Slack, Stripe, OpenAI,
    /// Anthropic and Google keys, JWTs, private keys, passwords in URLs
    /// and assignments) in every text field with [REDACTED:<kind>] before
    /// anything is spooled or stored. "off" stores them as sent, and says
    /// so in a warning at start.
    #[arg(long, env = "AGENT_TELEMETRY_REDACTION", default_value = "on")]
    pub redaction: Switch,

    /// TOML file of more rules (`[[rule]] kind, regex`) and allow-list
    /// patterns (`[[allow]] regex`), added to the built-in rules.
    #[arg(long, env = "AGENT_TELEMETRY_REDACTION_RULES")]
    pub redaction_rules: Option<PathBuf>,

    /// TOML file of how much chat content and file content is stored, by
    /// default and per project: in full, truncated, as a SHA-256 hash, or
    /// not at all (docs/reliability.md, "Content policy"). Without it
    /// everything is stored in full.
    #[arg(long, env = "AGENT_TELEMETRY_CONTENT_POLICY")]
    pub content_policy: Option<PathBuf>,
}

/// A feature that is on unless turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl ServeConfig {
    /// Defaults for every setting (what `serve` with no flags uses).
    pub fn defaults() -> Self {
        ServeArgs::parse_from(["agent-telemetry serve"]).serve
    }

    /// `serve`'s flags as clap describes them (their names, environment
    /// variables and defaults).
    pub fn command() -> clap::Command {
        <ServeArgs as clap::CommandFactory>::command()
    }

    /// `serve`'s flags (without the program name) with their environment
    /// variables, as `agent-telemetry serve` reads them.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self, clap::Error> {
        let argv = std::iter::once("agent-telemetry serve".to_owned()).chain(args);
        ServeArgs::try_parse_from(argv).map(|a| a.serve)
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

/// The OpenTelemetry (OTLP) receivers for agents' built-in telemetry
/// (docs/otlp.md). They share the pipeline, limits and API keys of the
/// native API.
#[derive(Debug, Clone, Args)]
pub struct OtlpConfig {
    /// Address of the OTLP/gRPC receiver (logs, traces, metrics); "off"
    /// disables it.
    #[arg(long, env = "AGENT_TELEMETRY_OTLP_GRPC_LISTEN", default_value = "127.0.0.1:4317", value_parser = parse_optional_addr)]
    pub otlp_grpc_listen: OptionalAddr,

    /// Address of the OTLP/HTTP receiver (protobuf and JSON); "off" disables it.
    #[arg(long, env = "AGENT_TELEMETRY_OTLP_HTTP_LISTEN", default_value = "127.0.0.1:4318", value_parser = parse_optional_addr)]
    pub otlp_http_listen: OptionalAddr,

    /// Largest OTLP message accepted, decompressed (the OTLP specification
    /// recommends accepting 64 MiB).
    #[arg(long, env = "AGENT_TELEMETRY_OTLP_MAX_MESSAGE_BYTES", default_value = "64MiB", value_parser = size::<usize>)]
    pub otlp_max_message_bytes: usize,

    /// JSON price table for agents that send tokens but no cost:
    /// `{"models": {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}}`
    /// in USD per million tokens. Without it such rows have no cost.
    #[arg(long, env = "AGENT_TELEMETRY_PRICE_TABLE")]
    pub price_table: Option<PathBuf>,

    /// Project of OTLP rows that name none (no project attribute, no
    /// `x-project` header, a key without projects or no key).
    #[arg(
        long,
        env = "AGENT_TELEMETRY_OTLP_DEFAULT_PROJECT",
        default_value = "unattributed"
    )]
    pub otlp_default_project: String,
}

impl OtlpConfig {
    /// Both receivers off.
    pub fn off(&mut self) {
        self.otlp_grpc_listen = OptionalAddr(None);
        self.otlp_http_listen = OptionalAddr(None);
    }
}

/// Who may connect and write, and how.
#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// Accept requests without an API key on a non-loopback address. (On
    /// loopback, keys are optional anyway: only local processes can connect.)
    /// A request that does send a key is held to that key's projects.
    #[arg(long, env = "AGENT_TELEMETRY_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Require an API key even on loopback.
    #[arg(
        long,
        env = "AGENT_TELEMETRY_REQUIRE_API_KEY",
        conflicts_with = "allow_unauthenticated"
    )]
    pub require_api_key: bool,

    /// How long a checked API key is trusted before it is looked up again:
    /// a revoked key stops working on running services within this time.
    #[arg(long, env = "AGENT_TELEMETRY_KEY_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub key_cache_ttl: Duration,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "AGENT_TELEMETRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "AGENT_TELEMETRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Store developers as pseudonyms: an HMAC-SHA256 (keyed with
    /// AGENT_TELEMETRY_PSEUDONYM_SECRET) of each developer's key in place of
    /// the key, and no name or email; OTLP rows keep no user attribute in
    /// their JSON. docs/reliability.md, "Privacy".
    #[arg(long, env = "AGENT_TELEMETRY_PSEUDONYMIZE_USERS")]
    pub pseudonymize_users: bool,

    /// The secret of --pseudonymize-users (at least 32 bytes). From the
    /// environment: a command line is visible to every local user.
    #[arg(skip = std::env::var("AGENT_TELEMETRY_PSEUDONYM_SECRET").ok())]
    pub pseudonym_secret: Option<String>,

    /// Concurrent gRPC streams per connection (HTTP/2 SETTINGS).
    #[arg(
        long,
        env = "AGENT_TELEMETRY_MAX_CONCURRENT_STREAMS",
        default_value_t = 64
    )]
    pub max_concurrent_streams: u32,
}

impl SecurityConfig {
    /// Whether a request without a key is refused when listening on `listen`.
    pub fn key_required(&self, listen: SocketAddr) -> bool {
        self.require_api_key || (!self.allow_unauthenticated && !listen.ip().is_loopback())
    }
}

/// The optional disk spool (docs/reliability.md).
#[derive(Debug, Clone, Args)]
pub struct SpoolConfig {
    /// Directory of the write-ahead spool. When set, a batch is acknowledged
    /// once its accepted rows are fsynced there, and replayed into the
    /// database from there; clients keep getting acks while the database is
    /// down. When unset, an ack means the rows are committed in the database.
    #[arg(long, env = "AGENT_TELEMETRY_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes the spool may hold; beyond it, batches are refused with
    /// RESOURCE_EXHAUSTED until replay has caught up.
    #[arg(long, env = "AGENT_TELEMETRY_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = size::<u64>)]
    pub spool_max_bytes: u64,

    /// Size at which the spool starts a new file; a file is deleted once all
    /// its batches are in the database.
    #[arg(long, env = "AGENT_TELEMETRY_SPOOL_SEGMENT_BYTES", default_value = "64MiB", value_parser = size::<u64>)]
    pub spool_segment_bytes: u64,

    /// Free space the spool leaves on its filesystem (at most a tenth of
    /// the filesystem): below it, batches are refused with
    /// RESOURCE_EXHAUSTED before the disk is full, whatever
    /// --spool-max-bytes says.
    #[arg(long, env = "AGENT_TELEMETRY_SPOOL_RESERVE_BYTES", default_value = "64MiB", value_parser = size::<u64>)]
    pub spool_reserve_bytes: u64,
}

/// Whether to use TimescaleDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimescaleMode {
    /// TimescaleDB when the server has it; plain PostgreSQL otherwise. A
    /// database keeps the mode it was first migrated in.
    Auto,
    /// Fail unless TimescaleDB can be used.
    Require,
    /// Plain PostgreSQL even where TimescaleDB is available.
    Off,
}

/// How the event tables store rows (docs/schema.md, "Storage layouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StorageLayout {
    /// The layout recorded for the database; a new database gets the
    /// columnstore where TimescaleDB has direct compress, else the row
    /// store.
    Auto,
    /// COPY straight into compressed chunks (TimescaleDB 2.21 or later);
    /// an existing database is switched to it.
    Columnstore,
    /// Row-store chunks with a primary key, compressed after
    /// --compress-after; an existing database is switched back to it.
    Rowstore,
}

/// How the stored data is laid out and kept: chunking, compression,
/// retention, and the refresh of the continuous aggregates. `migrate` (and
/// `serve`, which migrates first) applies these idempotently: a changed value
/// alters the existing policy, an unchanged one leaves it alone.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Use TimescaleDB: auto, require or off.
    #[arg(
        long,
        env = "AGENT_TELEMETRY_TIMESCALEDB",
        value_enum,
        default_value = "auto"
    )]
    pub timescaledb: TimescaleMode,

    /// How the event tables store rows (TimescaleDB mode): see
    /// docs/schema.md, "Storage layouts".
    #[arg(
        long,
        env = "AGENT_TELEMETRY_STORAGE_LAYOUT",
        value_enum,
        default_value = "auto"
    )]
    pub storage_layout: StorageLayout,

    /// Columnstore layout: how long the key tables keep a row's key, by the
    /// row's timestamp. A resend of a younger row is found by the key
    /// table's unique index alone; of an older one, by a look-up in the
    /// stored rows first (docs/reliability.md, "Resends are harmless"). Either
    /// is exact; this decides the key tables' size and which resends pay
    /// for the look-up.
    #[arg(long, env = "AGENT_TELEMETRY_KEY_WINDOW", default_value = "2days", value_parser = humantime::parse_duration)]
    pub key_window: Duration,

    /// Password of the read-only role `agent_telemetry_reader` that
    /// dashboards connect as. When set, migrating gives the role LOGIN and
    /// this password (every run, so a changed secret takes effect on the next
    /// start); when unset, the role stays NOLOGIN.
    #[arg(long, env = "AGENT_TELEMETRY_READER_PASSWORD", hide_env_values = true)]
    pub reader_password: Option<String>,

    /// Time span of one hypertable chunk (applies to chunks created from now on).
    #[arg(long, env = "AGENT_TELEMETRY_CHUNK_INTERVAL", default_value = "1day", value_parser = humantime::parse_duration)]
    pub chunk_interval: Duration,

    /// Chunks whose data is all older than this are compressed.
    #[arg(long, env = "AGENT_TELEMETRY_COMPRESS_AFTER", default_value = "7days", value_parser = humantime::parse_duration)]
    pub compress_after: Duration,

    /// Raw agent events older than this are dropped.
    #[arg(long, env = "AGENT_TELEMETRY_EVENTS_RETENTION", default_value = "365days", value_parser = humantime::parse_duration)]
    pub events_retention: Duration,

    /// Raw chat messages older than this are dropped.
    #[arg(long, env = "AGENT_TELEMETRY_MESSAGES_RETENTION", default_value = "180days", value_parser = humantime::parse_duration)]
    pub messages_retention: Duration,

    /// Rows of the aggregates (hourly and daily) older than this are dropped.
    #[arg(long, env = "AGENT_TELEMETRY_AGGREGATES_RETENTION", default_value = "1825days", value_parser = humantime::parse_duration)]
    pub aggregates_retention: Duration,

    /// How often the hourly aggregates' refresh policy runs.
    #[arg(long, env = "AGENT_TELEMETRY_HOURLY_REFRESH_EVERY", default_value = "15min", value_parser = humantime::parse_duration)]
    pub hourly_refresh_every: Duration,

    /// How far back each scheduled refresh of the hourly aggregates looks.
    #[arg(long, env = "AGENT_TELEMETRY_HOURLY_REFRESH_WINDOW", default_value = "3days", value_parser = humantime::parse_duration)]
    pub hourly_refresh_window: Duration,

    /// How often the daily aggregates' refresh policy runs.
    #[arg(long, env = "AGENT_TELEMETRY_DAILY_REFRESH_EVERY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub daily_refresh_every: Duration,

    /// How far back each scheduled refresh of the daily aggregates looks.
    #[arg(long, env = "AGENT_TELEMETRY_DAILY_REFRESH_WINDOW", default_value = "7days", value_parser = humantime::parse_duration)]
    pub daily_refresh_window: Duration,

    /// Rows older than this when they are stored are "late": their hour may
    /// already be materialised, so the service refreshes exactly the affected
    /// ranges of the aggregates after the flush.
    #[arg(long, env = "AGENT_TELEMETRY_LATE_AFTER", default_value = "1h", value_parser = humantime::parse_duration)]
    pub late_after: Duration,

    /// At most one round of late-data refreshes per this interval; ranges
    /// that arrive meanwhile are merged into the next round.
    #[arg(long, env = "AGENT_TELEMETRY_LATE_REFRESH_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub late_refresh_every: Duration,

    /// A late hour is refreshed once no late row has landed in it for this
    /// long (or once it has waited ten times this since first noted): a
    /// backfill re-materialises each bucket once, when it is done with it,
    /// not at every round while its rows keep coming. Until then the
    /// bucket's materialised figures lack the rows (docs/schema.md).
    #[arg(long, env = "AGENT_TELEMETRY_LATE_SETTLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub late_settle: Duration,

    /// Plain PostgreSQL only: how often the service deletes rows past their
    /// retention window (TimescaleDB does this with its own jobs).
    #[arg(long, env = "AGENT_TELEMETRY_RETENTION_EVERY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention_every: Duration,
}

impl StorageConfig {
    /// Settings that would lose data or leave aggregates wrong, refused
    /// before anything is changed. `max_past` is the oldest row ingest accepts.
    pub fn check(&self, max_past: Duration) -> Result<(), String> {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        let rules = [
            (
                self.late_settle <= hour,
                "--late-settle must be at most 1h: a late hour waits up to ten times it for its refresh, and its materialised figures lack its late rows until then",
            ),
            (
                self.chunk_interval >= Duration::from_secs(60),
                "--chunk-interval must be at least 1 minute",
            ),
            (
                self.late_after >= Duration::from_secs(60) && self.late_after <= hour,
                "--late-after must be between 1min and 1h: the hourly policy materialises hours that ended one hour ago, so a row older than that must count as late, or its hour stays wrong until the next policy run",
            ),
            (
                self.hourly_refresh_window >= 3 * hour && self.daily_refresh_window >= 3 * day,
                "refresh windows must cover two buckets beyond the end offset (at least 3h hourly, 3days daily)",
            ),
            (
                self.events_retention > max_past + self.daily_refresh_window
                    && self.messages_retention > max_past + self.hourly_refresh_window,
                "raw retention must exceed --max-past plus the refresh window: an aggregate refreshed over dropped raw data loses its rows",
            ),
            (
                self.aggregates_retention >= self.events_retention
                    && self.aggregates_retention >= self.messages_retention,
                "--aggregates-retention must be at least the raw retention windows",
            ),
            (
                self.compress_after >= hour,
                "--compress-after must be at least 1h",
            ),
            (
                self.key_window >= hour,
                "--key-window must be at least 1h: resends come seconds to minutes after the first send, and each one past the window costs a look-up in the stored rows",
            ),
        ];
        match rules.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err((*why).to_owned()),
            None => Ok(()),
        }
    }
}

/// Buffering, batching and COPY settings.
#[derive(Debug, Clone, Args)]
pub struct PipelineConfig {
    /// Bytes each table may hold in memory: encoded rows waiting for or in a
    /// COPY, and batches being decoded and encoded (3× their protobuf size
    /// until encoded). When full, new batches wait up to
    /// --admission-timeout and are then refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AGENT_TELEMETRY_BUFFER_BYTES", default_value = "128MiB", value_parser = size::<usize>)]
    pub buffer_bytes: usize,

    /// When no COPY of a table is running, a flush starts at once with
    /// whatever has arrived. While COPYs run, a free COPY slot starts the
    /// next flush when this many rows have gathered ...
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_ROWS", default_value_t = 10_000)]
    pub flush_rows: usize,

    /// ... or this many bytes ...
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_BYTES", default_value = "8MiB", value_parser = size::<usize>)]
    pub flush_bytes: usize,

    /// ... or when the oldest gathered row has waited this long (or when the
    /// running COPYs are done). A flush takes at most about --flush-rows rows.
    #[arg(long, env = "AGENT_TELEMETRY_FLUSH_AGE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub flush_age: Duration,

    /// How far apart two timestamps of one id may be and still be found as a
    /// conflict: a row whose id is stored with another timestamp within
    /// this of its own is not stored again but rejected (`ALREADY_EXISTS`,
    /// counted in `BatchAck.conflicts`). Each flush probes its ids over its
    /// time range widened by this; 0 turns the probe off (then such a row is
    /// stored as a second one). docs/reliability.md.
    #[arg(long, env = "AGENT_TELEMETRY_ID_CONFLICT_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub id_conflict_window: Duration,

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
    #[arg(long, env = "AGENT_TELEMETRY_MAX_MESSAGE_BYTES", default_value = "16MiB", value_parser = size::<usize>)]
    pub max_message_bytes: usize,

    /// Rows in one batch.
    #[arg(long, env = "AGENT_TELEMETRY_MAX_BATCH_ROWS", default_value_t = 10_000)]
    pub max_batch_rows: usize,

    /// Bytes of an identifier or name field (ids, types, tags, paths, ...).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_TEXT_BYTES", default_value = "4KiB", value_parser = size::<usize>)]
    pub max_text_bytes: usize,

    /// Bytes of a chat message's content (and search_content).
    #[arg(long, env = "AGENT_TELEMETRY_MAX_CONTENT_BYTES", default_value = "1MiB", value_parser = size::<usize>)]
    pub max_content_bytes: usize,

    /// Bytes of one JSON field.
    #[arg(long, env = "AGENT_TELEMETRY_MAX_JSON_BYTES", default_value = "256KiB", value_parser = size::<usize>)]
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

/// A size flag: bytes, or with a unit as the docs write them ("128MiB",
/// "64 KiB", "1GB" = 10^9 bytes; `bytesize`'s syntax).
fn size<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let bytes = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{s:?} is not a size ({e}); write bytes or e.g. 128MiB"))?
        .as_u64();
    T::try_from(bytes).map_err(|_| format!("{s:?} is too large"))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes_take_units_as_the_docs_write_them() {
        assert_eq!(size::<usize>("128MiB"), Ok(128 << 20));
        assert_eq!(size::<usize>("128 MiB"), Ok(128 << 20));
        assert_eq!(size::<u64>("1GiB"), Ok(1 << 30));
        assert_eq!(size::<u64>("1GB"), Ok(1_000_000_000));
        assert_eq!(size::<usize>("4096"), Ok(4096));
        assert_eq!(size::<usize>("256KiB"), Ok(256 << 10));
        assert!(size::<usize>("lots").unwrap_err().contains("is not a size"));
        let d = ServeConfig::defaults();
        assert_eq!(d.pipeline.buffer_bytes, 128 << 20);
        assert_eq!(d.limits.max_text_bytes, 4096);
        assert_eq!(d.spool.spool_max_bytes, 1 << 30);
    }

    #[test]
    fn late_settle_is_taken_up_to_an_hour() {
        let mut s = ServeConfig::defaults().storage;
        let max_past = ServeConfig::defaults().limits.max_past;
        s.late_settle = Duration::from_secs(3600);
        assert_eq!(s.check(max_past), Ok(()));
        s.late_settle = Duration::from_secs(3601);
        assert!(s.check(max_past).unwrap_err().contains("--late-settle"));
    }
}

/// What is wrong with a settings file (`--config`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the settings file {path} is not TOML: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "{path}: {key:?} is not a setting of {command} (the settings are the long flags `agent-telemetry {command} --help` lists, without the dashes)"
    )]
    Unknown {
        path: PathBuf,
        key: String,
        command: String,
    },
    #[error(
        "{path}: {key:?} is not a setting of any command (keys are the long flags `agent-telemetry <command> --help` lists, without the dashes)"
    )]
    UnknownAnywhere { path: PathBuf, key: String },
    #[error("{path}: [{table}] is not a command (tables are per command: [serve], [loadgen], …)")]
    UnknownTable { path: PathBuf, table: String },
    #[error("{path}: {key}: {why}")]
    BadValue {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// The command line with the settings file's values added where neither
/// the command line nor the environment gives the setting: flags >
/// environment > file > defaults (docs/configuration.md, "A settings
/// file").
///
/// The file is TOML. Its keys are long flags without the dashes
/// (`buffer-bytes = "128MiB"`, `listen = "0.0.0.0:50051"`); top-level keys
/// apply to every command that has the flag (a key no command has is an
/// error), a `[serve]`, `[loadgen]`, … table to that command only. Values
/// go through the same parsers as on the command line, so a bad one is
/// refused as the flag would be.
///
/// Returns the arguments and, for an error message, the flags the file
/// added.
pub fn args_with_file(
    cmd: clap::Command,
    args: Vec<std::ffi::OsString>,
) -> Result<(Vec<std::ffi::OsString>, Vec<String>), ConfigFileError> {
    use clap::parser::ValueSource;
    // Lenient: a setting the file will supply may be missing here.
    let matches = cmd.clone().ignore_errors(true).get_matches_from(&args);
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok((args, Vec::new()));
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok((args, Vec::new()));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigFileError::Parse {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let command = cmd
        .find_subcommand(name)
        .expect("the matched subcommand exists")
        .clone();
    let arg_of = |c: &clap::Command, key: &str| -> Option<clap::Arg> {
        let long = key.replace('_', "-");
        c.get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .cloned()
    };
    // By the flag's id: a command's own table beats the top level.
    let mut settings: std::collections::BTreeMap<String, (String, toml::Value, clap::Arg)> =
        std::collections::BTreeMap::new();
    let tables_last = table
        .iter()
        .filter(|(_, v)| !v.is_table())
        .chain(table.iter().filter(|(_, v)| v.is_table()));
    for (key, value) in tables_last {
        if let toml::Value::Table(inner) = value {
            let Some(of) = cmd.find_subcommand(key) else {
                return Err(ConfigFileError::UnknownTable {
                    path,
                    table: key.clone(),
                });
            };
            for (k, v) in inner {
                let arg = arg_of(of, k).ok_or_else(|| ConfigFileError::Unknown {
                    path: path.clone(),
                    key: k.clone(),
                    command: key.clone(),
                })?;
                if key == name {
                    let id = arg.get_id().to_string();
                    settings.insert(id, (format!("[{key}] {k}"), v.clone(), arg));
                }
            }
            continue;
        }
        match arg_of(&command, key) {
            Some(arg) => {
                settings.insert(arg.get_id().to_string(), (key.clone(), value.clone(), arg));
            }
            None if cmd.get_subcommands().any(|c| arg_of(c, key).is_some()) => {}
            None => {
                return Err(ConfigFileError::UnknownAnywhere {
                    path,
                    key: key.clone(),
                });
            }
        }
    }
    let mut added: Vec<String> = Vec::new();
    for (key, value, arg) in settings.into_values() {
        let id = arg.get_id().as_str();
        if matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = arg.get_long().expect("found by its long name");
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
        let values = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !takes_value => {
                    if b {
                        added.push(format!("--{long}"));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigFileError::BadValue {
                        path,
                        key,
                        why: format!("{} is not a flag's value", other.type_str()),
                    });
                }
            };
            added.push(format!("--{long}={text}"));
        }
    }
    // Right after the subcommand, before any subcommand of it.
    let at = args
        .iter()
        .skip(1)
        .position(|a| a.to_str() == Some(name))
        .map_or(args.len(), |i| i + 2);
    let mut out = args;
    out.splice(at..at, added.iter().map(Into::into));
    Ok((out, added))
}
