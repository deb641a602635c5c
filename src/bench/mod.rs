//! `agent-telemetry bench compare`: the service against the database's own
//! COPY ceiling and against what applications write today, on one fixed set
//! of realistic events and a freshly migrated schema per run (see
//! BENCHMARKS.md for how to read the table).
//!
//! [`dataset`] makes the event set, [`cases`] runs each case, [`report`]
//! prints the machine and the table. Every run checks that the database
//! holds exactly the rows the case says it stored.

pub mod cases;
pub mod dataset;
pub mod grafana;
pub mod import;
pub mod queries;
pub mod report;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand, ValueEnum};

use self::{
    dataset::Dataset,
    report::{Machine, Runs},
};
use crate::{
    config::{DatabaseConfig, ServeConfig, StorageConfig, StorageLayout, TimescaleMode},
    db::{self, DbError, dims::Dimensions, embedded, layout::Layout},
    loadgen::LoadgenError,
    server::ServerError,
};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Compare the service with `psql \copy` and with INSERTs (BENCHMARKS.md).
    Compare(Box<CompareConfig>),
    /// Time every dashboard query, on one database or two side by side.
    Dashboards(Box<queries::DashboardsConfig>),
    /// The transcript import against the service's own rate, and what
    /// `import --follow` costs while idle and how soon it sends a line.
    Import(Box<import::ImportBenchConfig>),
}

#[derive(Debug, Clone, Args)]
pub struct CompareConfig {
    /// The server to measure: DATABASE_URL, else the embedded database. The
    /// cases run in a scratch database (--bench-database) on it.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Events in the fixed set that every case loads.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,

    /// Runs of each case; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,

    /// Cases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Case::ALL)]
    pub cases: Vec<Case>,

    /// One INSERT per event loads only this many events of the set: at a
    /// few thousand rows/s all of them would take many minutes.
    #[arg(long, default_value_t = 20_000)]
    pub single_insert_events: usize,

    /// Events per gRPC batch, and rows per multi-row INSERT.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,

    /// loadgen's concurrent streams in the service cases.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,

    /// Unacknowledged batches per loadgen stream.
    #[arg(long, default_value_t = 16)]
    pub window: usize,

    /// How long the overload case offers 3× the service's rate.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub overload_for: Duration,

    /// The scratch database, dropped and re-created before every run.
    #[arg(long, default_value = "agent_telemetry_bench")]
    pub bench_database: String,

    /// Use TimescaleDB: auto, require or off.
    #[arg(long, value_enum, default_value = "auto")]
    pub timescaledb: TimescaleMode,

    /// Storage layouts to run every case on, one after the other in this
    /// run (`columnstore,rowstore` compares them: docs/schema.md).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StorageLayout::Auto])]
    pub layouts: Vec<StorageLayout>,

    /// An argument for `agent-telemetry serve` in the service cases, e.g.
    /// `--serve-arg=--copy-concurrency=4` (repeatable).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,

    /// psql for the COPY cases. Default: the server's bindir, then PATH.
    #[arg(long)]
    pub psql: Option<PathBuf>,

    /// The agent-telemetry binary the service cases run. Default: this one.
    #[arg(long, hide = true)]
    pub service_exe: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Case {
    /// A: psql \copy (FORMAT binary), one stream.
    #[value(name = "copy-1")]
    Copy1,
    /// A: two psql \copy at once, half the rows each.
    #[value(name = "copy-2")]
    Copy2,
    /// B: loadgen → gRPC → serve → COPY, as fast as acks allow.
    #[value(name = "service")]
    Service,
    /// B with the id conflict probe off (`--id-conflict-window=0`): what
    /// the probe costs.
    #[value(name = "service-no-id-probe")]
    ServiceNoIdProbe,
    /// B at half the rate the service case reached: ack latency.
    #[value(name = "service-half-rate")]
    ServiceHalf,
    /// B with clients offering 3× the service case's rate: memory.
    #[value(name = "service-overload")]
    ServiceOverload,
    /// B with every batch sent a second time: the resend (dedupe) path.
    #[value(name = "service-resend")]
    ServiceResend,
    /// B with every other batch followed by a resend of an earlier one, so
    /// that most flushes mix new rows and resends.
    #[value(name = "service-resend-mixed")]
    ServiceResendMixed,
    /// C: multi-row INSERTs of --batch-size rows.
    #[value(name = "insert-multi")]
    InsertMulti,
    /// C: one INSERT per event.
    #[value(name = "insert-1")]
    InsertSingle,
}

impl Case {
    pub const ALL: [Case; 10] = [
        Case::Copy1,
        Case::Copy2,
        Case::Service,
        Case::ServiceNoIdProbe,
        Case::ServiceHalf,
        Case::ServiceOverload,
        Case::ServiceResend,
        Case::ServiceResendMixed,
        Case::InsertMulti,
        Case::InsertSingle,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Case::Copy1 => "A: psql \\copy binary, 1 stream",
            Case::Copy2 => "A: psql \\copy binary, 2 streams",
            Case::Service => "B: loadgen → gRPC → service → COPY",
            Case::ServiceNoIdProbe => "B without the id conflict probe",
            Case::ServiceHalf => "B at half rate",
            Case::ServiceOverload => "B under 3× overload",
            Case::ServiceResend => "B, every batch resent (all duplicates)",
            Case::ServiceResendMixed => "B, resends mixed into new batches",
            Case::InsertMulti => "C: multi-row INSERT, one per batch",
            Case::InsertSingle => "C: one INSERT per event",
        }
    }

    fn is_service(self) -> bool {
        matches!(
            self,
            Case::Service
                | Case::ServiceNoIdProbe
                | Case::ServiceHalf
                | Case::ServiceOverload
                | Case::ServiceResend
                | Case::ServiceResendMixed
        )
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            self.to_possible_value()
                .expect("no skipped cases")
                .get_name(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {}", crate::db::error::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Open(#[from] crate::db::open::OpenError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("loadgen: {0}")]
    Loadgen(#[from] LoadgenError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("cannot make the event set: {0}")]
    Dataset(String),
    #[error("{0}")]
    Case(String),
    #[error("invalid setting: {0}")]
    Settings(String),
    #[error("{case}, run {run}: the database holds {found} rows, the case stored {stored}")]
    Count {
        case: Case,
        run: usize,
        found: i64,
        stored: u64,
    },
}

/// Runs the comparison and returns the report (markdown). Progress goes to
/// stderr.
pub async fn run(cfg: &CompareConfig) -> Result<String, BenchError> {
    let mut cases = cfg.cases.clone();
    cases.sort();
    cases.dedup();
    // The service's settings as its process will parse them (flags given
    // through --serve-arg, plus the environment it inherits).
    let serve = serve_config(cfg)?;
    let storage = StorageConfig {
        timescaledb: cfg.timescaledb,
        ..serve.storage.clone()
    };
    let (database, admin, bench) = scratch(&cfg.database, &cfg.bench_database).await?;
    let (psql, exe) = tools(cfg)?;

    eprintln!("generating {} events", cfg.events);
    let dataset = Dataset::generate(cfg.events, cfg.batch_size)?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temp dir".into(), e))?;
    let (whole, halves) = copy_files(&dataset, dir.path(), &cases)?;
    let mut machine = None;
    let mut sections: Vec<report::Section> = Vec::new();
    for &layout in &cfg.layouts {
        let storage = StorageConfig {
            storage_layout: layout,
            ..storage.clone()
        };
        // The layout this database gets, as the runs will have it.
        let chosen = fresh_database(&admin, &bench, &cfg.bench_database, &storage, &serve)
            .await?
            .layout;
        let setup = cases::Setup {
            cfg,
            dataset: &dataset,
            admin: admin.clone(),
            bench: bench.clone(),
            storage,
            columnstore: chosen
                .as_ref()
                .is_some_and(|c| c.layout == Layout::Columnstore),
            serve: serve.clone(),
            psql: psql.clone(),
            exe: exe.clone(),
            whole: whole.clone(),
            halves: halves.clone(),
            logs: dir.path().to_owned(),
        };
        let results = run_cases(&setup, &cases, &mut machine).await?;
        sections.push(report::Section {
            layout: chosen.map_or_else(
                || "rowstore (plain PostgreSQL)".to_owned(),
                |c| c.to_string(),
            ),
            columnstore: setup.columnstore,
            results,
        });
    }
    leave(database, &admin, &cfg.bench_database).await?;
    let machine = machine.ok_or_else(|| BenchError::Settings("no case was run".into()))?;
    let command: Vec<String> = std::env::args().collect();
    let limits = report::Limits {
        flush_age_ms: serve.pipeline.flush_age.as_secs_f64() * 1000.0,
        buffer_bytes: serve.pipeline.buffer_bytes as u64,
    };
    Ok(report::render(
        &machine,
        &command.join(" "),
        &sections,
        &limits,
    ))
}

/// The server to measure (`DATABASE_URL`, else the embedded one) and the
/// connection strings of its admin database and of the scratch database
/// `name` the runs use.
pub(crate) async fn scratch(
    database: &DatabaseConfig,
    name: &str,
) -> Result<(db::open::Database, String, String), BenchError> {
    let database = db::open::open_database(database).await?;
    let (admin, bench) = match &database.embedded {
        Some(cluster) => (cluster.conn_string("postgres"), cluster.conn_string(name)),
        None => (database.conn.clone(), with_dbname(&database.conn, name)?),
    };
    Ok((database, admin, bench))
}

/// Leaves the server as it was found: the scratch database dropped, and
/// an embedded cluster this run started stopped.
pub(crate) async fn leave(
    database: db::open::Database,
    admin: &str,
    name: &str,
) -> Result<(), BenchError> {
    let admin_client = db::connect(admin).await?;
    admin_client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            db::quote_ident(name)
        ))
        .await?;
    drop(admin_client);
    // Only a cluster this run started: a service may be using it.
    database
        .release()
        .await
        .map_err(|e| BenchError::Open(e.into()))
}

/// Every case on one layout, each `--runs` times.
async fn run_cases(
    setup: &cases::Setup<'_>,
    cases: &[Case],
    machine: &mut Option<Machine>,
) -> Result<Vec<(Case, Runs)>, BenchError> {
    let cfg = setup.cfg;
    let mut results: Vec<(Case, Runs)> = Vec::new();
    for &case in cases {
        let service_rate = results
            .iter()
            .find(|(c, _)| *c == Case::Service)
            .and_then(|(_, r)| r.rate());
        if matches!(case, Case::ServiceHalf | Case::ServiceOverload) && service_rate.is_none() {
            return Err(BenchError::Settings(format!(
                "case {case} is paced by the rate of case service: run that too"
            )));
        }
        let mut runs = Runs::default();
        for run in 1..=cfg.runs.max(1) {
            let (stored, elapsed) =
                one_run(setup, (case, run), service_rate, &mut runs, machine).await?;
            let rate = stored as f64 / elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "{case} run {run}: {stored} rows in {:.2} s, {} rows/s",
                elapsed.as_secs_f64(),
                report::thousands(rate)
            );
            runs.rows = stored;
            runs.rows_per_s.push(rate);
        }
        results.push((case, runs));
    }
    Ok(results)
}

impl Runs {
    fn record_service(&mut self, r: &cases::ServiceRun) {
        self.p50_ms.push(r.summary.latency_p50_ms);
        self.p99_ms.push(r.summary.latency_p99_ms);
        self.failed_batches.push(r.summary.failed_batches);
        if let Some(rss) = r.peak_rss {
            self.peak_rss.push(rss);
        }
    }
}

/// The `psql` the COPY cases run (`--psql`, the server's bindir, else
/// PATH) and the `agent-telemetry` binary the service cases start.
fn tools(cfg: &CompareConfig) -> Result<(PathBuf, PathBuf), BenchError> {
    let psql = match &cfg.psql {
        Some(p) => p.clone(),
        None => embedded::find_bindir(cfg.database.pg_bindir.as_deref())
            .map(|d| d.join("psql"))
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("psql")),
    };
    let exe = match &cfg.service_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| BenchError::Io("current_exe".into(), e))?,
    };
    Ok((psql, exe))
}

/// The set as COPY files: whole (one stream) and in halves (two), for the
/// cases that run.
fn copy_files(
    dataset: &Dataset,
    dir: &std::path::Path,
    cases: &[Case],
) -> Result<(PathBuf, [PathBuf; 2]), BenchError> {
    let whole = dir.join("events.bin");
    let halves = [dir.join("half-1.bin"), dir.join("half-2.bin")];
    if cases.contains(&Case::Copy1) {
        dataset.write_copy_file(&whole, 0..dataset.len())?;
    }
    if cases.contains(&Case::Copy2) {
        let mid = dataset.len() / 2;
        dataset.write_copy_file(&halves[0], 0..mid)?;
        dataset.write_copy_file(&halves[1], mid..dataset.len())?;
    }
    Ok((whole, halves))
}

/// One run of one case: a fresh schema (its day's chunk created, a
/// checkpoint taken), the case, and a count of the table against what the
/// case says it stored. Describes the machine on the first run.
async fn one_run(
    setup: &cases::Setup<'_>,
    (case, run): (Case, usize),
    service_rate: Option<f64>,
    runs: &mut Runs,
    machine: &mut Option<Machine>,
) -> Result<(u64, Duration), BenchError> {
    let s = setup;
    let name = &s.cfg.bench_database;
    let report = fresh_database(&s.admin, &s.bench, name, &s.storage, &s.serve).await?;
    let client = db::connect(&setup.bench).await?;
    create_chunks(&client, setup.dataset.span_us).await?;
    if machine.is_none() {
        *machine = Some(Machine::describe(&client, report.mode.to_string()).await?);
    }
    if !case.is_service() {
        create_dims(&setup.bench, setup.dataset).await?;
    }
    // Start every run without a checkpoint owed by the one before.
    // Needs superuser or pg_checkpoint; harmless to skip otherwise.
    let _ = client.batch_execute("CHECKPOINT").await;
    let log = s.logs.join(format!("serve-{case}-{run}.log"));
    let (stored, elapsed) = cases::run(setup, case, run, service_rate, log, runs).await?;
    let found: i64 = client
        .query_one("SELECT count(*) FROM agent_events", &[])
        .await?
        .get(0);
    if found != stored as i64 {
        return Err(BenchError::Count {
            case,
            run,
            found,
            stored,
        });
    }
    Ok((stored, elapsed))
}

/// `serve`'s settings with the --serve-arg flags, as the child will see them.
fn serve_config(cfg: &CompareConfig) -> Result<ServeConfig, BenchError> {
    ServeConfig::parse(cfg.serve_args.iter().cloned())
        .map_err(|e| BenchError::Settings(format!("--serve-arg: {e}")))
}

/// Drops and re-creates the scratch database, then migrates it.
pub(crate) async fn fresh_database(
    admin: &str,
    bench: &str,
    name: &str,
    storage: &StorageConfig,
    serve: &ServeConfig,
) -> Result<crate::db::migrate::Report, BenchError> {
    let client = db::connect(admin).await?;
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    if current == name {
        return Err(BenchError::Settings(format!(
            "--bench-database {name} is the database DATABASE_URL names; it would be dropped"
        )));
    }
    let q = db::quote_ident(name);
    // Two statements: CREATE DATABASE cannot run in the implicit
    // transaction of a multi-statement query.
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE {q}"))
        .await?;
    drop(client);
    Ok(db::open::run_migrations(bench, storage, serve.limits.max_past).await?)
}

/// Makes the hypertable chunks the set's rows fall into, as they exist in
/// steady operation. On a brand-new chunk, concurrent loads serialise: the
/// first to create it holds a lock on the hypertable until it commits, so
/// two parallel one-transaction `\copy`s would run one after the other.
async fn create_chunks(
    client: &tokio_postgres::Client,
    span_us: (i64, i64),
) -> Result<(), BenchError> {
    for ts in [span_us.0, span_us.1] {
        client
            .execute(
                "INSERT INTO agent_events (id, \"timestamp\", event_type, agent_id, agent_version, session_id, project_id) \
                 VALUES (gen_random_uuid(), $1, 'warm-up', 'bench', '', gen_random_uuid(), 0)",
                &[&crate::time::pg_us_to_system_time(ts)],
            )
            .await?;
    }
    client.execute("DELETE FROM agent_events", &[]).await?;
    Ok(())
}

/// The set's projects, created through the service's own code in the
/// order the encoded rows number them.
/// The projects and developers the set's rows name, with the ids its COPY
/// file carries (the COPY and INSERT cases skip the service's look-ups).
async fn create_dims(bench: &str, dataset: &Dataset) -> Result<(), BenchError> {
    let dims = Dimensions::new(db::pool(bench, 1)?, Default::default());
    for (i, u) in dataset.users.iter().enumerate() {
        let id = dims
            .user_id(u)
            .await
            .map_err(|e| BenchError::Case(format!("user {}: {e}", u.key)))?;
        if id != i as i32 + 1 {
            return Err(BenchError::Case(format!(
                "user {} got id {id} on a fresh database, expected {}",
                u.key,
                i + 1
            )));
        }
    }
    for (i, name) in dataset.projects.iter().enumerate() {
        let id = dims
            .project_id(name)
            .await
            .map_err(|e| BenchError::Case(format!("project {name}: {e}")))?;
        if id != i as i32 + 1 {
            return Err(BenchError::Case(format!(
                "project {name} got id {id} on a fresh database, expected {}",
                i + 1
            )));
        }
    }
    Ok(())
}

/// The same connection settings with another database, as key=value (which
/// both tokio-postgres and psql read).
fn with_dbname(conn: &str, dbname: &str) -> Result<String, BenchError> {
    use tokio_postgres::config::Host;
    let cfg = db::parse_config(conn)?;
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = cfg.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(pw) = cfg.get_password() {
        parts.push(format!("password={}", quote(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={}", quote(dbname)));
    Ok(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_dbname_keeps_the_rest() {
        let s = with_dbname("postgresql://u:p'w@db.example:6543/main", "scratch").unwrap();
        assert_eq!(
            s,
            "host='db.example' port=6543 user='u' password='p\\'w' dbname='scratch'"
        );
        let c = db::parse_config(&s).unwrap();
        assert_eq!(c.get_dbname(), Some("scratch"));
        assert_eq!(c.get_password(), Some(&b"p'w"[..]));
    }

    #[test]
    fn cases_parse_by_name() {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            c: CompareConfig,
        }
        let p = <P as clap::Parser>::parse_from([
            "x",
            "--cases",
            "copy-1,service",
            "--serve-arg=--flush-age=50ms",
        ]);
        assert_eq!(p.c.cases, vec![Case::Copy1, Case::Service]);
        assert_eq!(
            serve_config(&p.c).unwrap().pipeline.flush_age,
            Duration::from_millis(50)
        );
    }
}
