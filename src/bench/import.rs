//! `agent-telemetry bench import`: whether the transcript import keeps up
//! with the service, and what `import --follow` costs a developer's
//! machine. On one scratch database, in one run:
//! - **import**: a generated Claude Code tree of `--bytes` (1 GiB by
//!   default; [`transcripts`]) imported by the `import` command, rows
//!   stored per second from its start to its exit;
//! - **service**: loadgen sending as many events as the import stored,
//!   through the same service, as fast as acks allow (`bench compare`'s
//!   service case): the service's own ingest rate;
//! - **follow, idle**: `import --follow` over `--follow-files` transcripts,
//!   caught up, then its CPU over `--idle-for` while nothing is written;
//! - **follow, delay**: lines appended to those files one at a time, each
//!   timed from its write to its row being in the table.

pub mod transcripts;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use clap::Args;

use super::{
    BenchError, cases::Service, fresh_database, leave, report::Machine, report::thousands, scratch,
};
use crate::{
    config::{DatabaseConfig, ServeConfig, StorageConfig, TimescaleMode},
    db,
    loadgen::LoadgenConfig,
};

#[derive(Debug, Clone, Args)]
pub struct ImportBenchConfig {
    /// The server to measure: DATABASE_URL, else the embedded database.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Size of the generated transcript tree, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,

    /// How far back the generated sessions start: `1h` keeps every row
    /// on time; `30days` makes the import a history of late rows.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub spread: Duration,

    /// Events loadgen stores over the same `--spread` before the import:
    /// the import's rows are then late rows into a table that holds a
    /// history already (0: an empty table).
    #[arg(long, default_value_t = 0)]
    pub history_events: u64,

    /// Transcripts `import --follow` watches in the follow cases.
    #[arg(long, default_value_t = 1000)]
    pub follow_files: usize,

    /// How long the idle follower's CPU is measured.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_for: Duration,

    /// Lines appended (one every 200 ms) to time the follower's delay.
    #[arg(long, default_value_t = 200)]
    pub follow_lines: usize,

    /// Where the generated tree is written and kept (to import it again by
    /// hand); default: a temporary folder, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,

    /// The scratch database, dropped and re-created before every case.
    #[arg(long, default_value = "agent_telemetry_bench")]
    pub bench_database: String,

    /// Use TimescaleDB: auto, require or off.
    #[arg(long, value_enum, default_value = "auto")]
    pub timescaledb: TimescaleMode,

    /// An argument for `agent-telemetry serve` (repeatable).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,

    /// The agent-telemetry binary to run. Default: this one.
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
}

/// What the import case measured.
struct Imported {
    events: i64,
    messages: i64,
    elapsed: Duration,
    peak_rss: Option<u64>,
    /// Events in the table before the import.
    history: i64,
    /// CPU seconds of the import process, and of the service meanwhile.
    cpu: f64,
    service_cpu: f64,
}

impl Imported {
    fn rate(&self) -> f64 {
        (self.events + self.messages) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the cases and returns the report (markdown).
pub async fn run(cfg: &ImportBenchConfig) -> Result<String, BenchError> {
    // History as old as the spread (and a day more) is still taken.
    let mut serve_args = vec![
        "--max-past".to_owned(),
        format!("{}s", cfg.spread.as_secs() + 86_400),
    ];
    serve_args.extend(cfg.serve_args.iter().cloned());
    let serve = ServeConfig::parse(serve_args.iter().cloned())
        .map_err(|e| BenchError::Settings(format!("--serve-arg: {e}")))?;
    let storage = StorageConfig {
        timescaledb: cfg.timescaledb,
        ..serve.storage.clone()
    };
    let (database, admin, bench) = scratch(&cfg.database, &cfg.bench_database).await?;
    let exe = match &cfg.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| BenchError::Io("current_exe".into(), e))?,
    };
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temp dir".into(), e))?;
    let tree = cfg
        .tree
        .clone()
        .unwrap_or_else(|| dir.path().join("claude"));
    eprintln!("generating {} MiB of Claude Code transcripts", cfg.mib);
    let now = SystemTime::now();
    let made = transcripts::generate(&tree, cfg.mib << 20, cfg.spread, now)
        .map_err(|e| BenchError::Io(tree.display().to_string(), e))?;

    let fresh =
        || async { fresh_database(&admin, &bench, &cfg.bench_database, &storage, &serve).await };
    let start = |name: &str| {
        Service::start(
            &exe,
            &bench,
            cfg.timescaledb,
            &serve_args,
            dir.path().join(format!("serve-{name}.log")),
        )
    };

    // The import.
    let report = fresh().await?;
    let client = db::connect(&bench).await?;
    let machine = Machine::describe(&client, report.mode.to_string()).await?;
    let service = start("import").await?;
    if cfg.history_events > 0 {
        eprintln!(
            "history: {} events over the last {:?}",
            cfg.history_events, cfg.spread
        );
        let load = LoadgenConfig {
            client: crate::config::ClientConfig::at(service.endpoint.clone()),
            events: cfg.history_events,
            messages: 0,
            spread: Some(cfg.spread),
            seed: 77,
            quiet: true,
            ..LoadgenConfig::default()
        };
        crate::loadgen::run(&load).await?;
    }
    let history: i64 = client
        .query_one("SELECT count(*) FROM agent_events", &[])
        .await?
        .get(0);
    let _ = client.batch_execute("CHECKPOINT").await;
    eprintln!("importing {} files", made.files);
    let cpu_before = children_cpu();
    let service_cpu_before = service.pid().map_or(0.0, cpu_seconds);
    let began = Instant::now();
    let out = tokio::process::Command::new(&exe)
        .args(["import", "--source", "claude-code", "--endpoint"])
        .arg(&service.endpoint)
        .arg("--claude-dir")
        .arg(&tree)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BenchError::Io("import".into(), e))?;
    let elapsed = began.elapsed();
    let cpu = children_cpu() - cpu_before;
    let service_cpu = service.pid().map_or(0.0, cpu_seconds) - service_cpu_before;
    let peak_rss = service.peak_rss();
    // The import's failure first: a service stopped with its batches
    // still in flight fails too, and says less.
    if !out.status.success() {
        let _ = service.stop().await;
        return Err(BenchError::Case(format!(
            "import failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    service.stop().await?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0)) }
    };
    let imported = Imported {
        events: count("SELECT count(*) FROM agent_events").await? - history,
        messages: count("SELECT count(*) FROM chat_messages").await?,
        elapsed,
        peak_rss,
        history,
        cpu,
        service_cpu,
    };
    drop(client);

    // The service's own rate, on as many events and chat messages.
    eprintln!(
        "loadgen: {} events, {} chat messages",
        imported.events, imported.messages
    );
    fresh().await?;
    let service = start("loadgen").await?;
    let load = LoadgenConfig {
        client: crate::config::ClientConfig::at(service.endpoint.clone()),
        events: imported.events as u64,
        messages: imported.messages as u64,
        quiet: true,
        ..LoadgenConfig::default()
    };
    let direct = crate::loadgen::run(&load).await;
    let direct_rss = service.peak_rss();
    service.stop().await?;
    let direct = direct?;

    // Following.
    fresh().await?;
    let follow = follow(cfg, &exe, &bench, dir.path(), start("follow").await?).await?;

    leave(database, &admin, &cfg.bench_database).await?;
    let command: Vec<String> = std::env::args().collect();
    Ok(render(
        &machine,
        &command.join(" "),
        &made,
        &imported,
        &said,
        direct.rows_per_second(),
        direct_rss,
        &follow,
    ))
}

/// What the follow cases measured.
struct Followed {
    files: usize,
    rows: i64,
    idle_cpu: f64,
    idle_for: Duration,
    delays_ms: Vec<f64>,
}

/// `import --follow` over a tree of `cfg.follow_files` transcripts: caught
/// up, idle, then fed a line at a time.
async fn follow(
    cfg: &ImportBenchConfig,
    exe: &Path,
    bench: &str,
    dir: &Path,
    service: Service,
) -> Result<Followed, BenchError> {
    let tree = dir.join("follow");
    let files = transcripts::small_tree(&tree, cfg.follow_files, SystemTime::now())
        .map_err(|e| BenchError::Io(tree.display().to_string(), e))?;
    let client = db::connect(bench).await?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "import",
            "--follow",
            "--source",
            "claude-code",
            "--endpoint",
        ])
        .arg(&service.endpoint)
        .arg("--claude-dir")
        .arg(&tree)
        .arg("--state")
        .arg(dir.join("follow-state.json"))
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Io("import --follow".into(), e))?;
    let pid = child.id().unwrap_or_default();
    // Caught up: every file's rows stored, and the count still.
    let want = files.iter().map(|f| f.requests).sum::<usize>() as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let requests = "SELECT count(*) FROM agent_events WHERE event_type = 'llm_request'";
    loop {
        let n: i64 = client.query_one(requests, &[]).await?.get(0);
        if n >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Case(format!(
                "import --follow stored {n} of {want} requests in 10 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM agent_events) + (SELECT count(*) FROM chat_messages)",
            &[],
        )
        .await?
        .get(0);
    eprintln!(
        "follow: caught up ({rows} rows); idle for {:?}",
        cfg.idle_for
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(cfg.idle_for).await;
    let idle_cpu = (cpu_seconds(pid) - before) / cfg.idle_for.as_secs_f64();

    // A line at a time, to a file in turn; each timed until its row is in
    // the table (polled every 20 ms).
    eprintln!("follow: {} lines, one every 200 ms", cfg.follow_lines);
    let mut pending: Vec<(uuid::Uuid, Instant)> = Vec::new();
    let mut delays_ms = Vec::new();
    let mut next_write = Instant::now();
    let mut written = 0;
    while written < cfg.follow_lines || !pending.is_empty() {
        if written < cfg.follow_lines && Instant::now() >= next_write {
            let f = &files[written * 7 % files.len()];
            let id = transcripts::append_request(f, written, SystemTime::now())
                .map_err(|e| BenchError::Io(f.path.display().to_string(), e))?;
            pending.push((id, Instant::now()));
            written += 1;
            next_write += Duration::from_millis(200);
        }
        let ids: Vec<uuid::Uuid> = pending.iter().map(|(id, _)| *id).collect();
        let stored: Vec<uuid::Uuid> = client
            .query("SELECT id FROM agent_events WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        pending.retain(|(id, at)| {
            if stored.contains(id) {
                delays_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                false
            } else if at.elapsed() > Duration::from_secs(120) {
                // Counted as the longest wait, so it cannot hide.
                delays_ms.push(f64::INFINITY);
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    service.stop().await?;
    Ok(Followed {
        files: files.len(),
        rows,
        idle_cpu,
        idle_for: cfg.idle_for,
        delays_ms,
    })
}

/// CPU seconds (user and system) of the children waited for so far.
fn children_cpu() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        s(u.user_time()) + s(u.system_time())
    })
}

/// CPU seconds (user and system) process `pid` has used (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime
    // are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (fields.get(11).copied().unwrap_or(0.0) + fields.get(12).copied().unwrap_or(0.0)) / ticks
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[allow(clippy::too_many_arguments)]
fn render(
    machine: &Machine,
    command: &str,
    made: &transcripts::Made,
    imported: &Imported,
    said: &str,
    direct_rate: f64,
    direct_rss: Option<u64>,
    follow: &Followed,
) -> String {
    let mib = |b: Option<u64>| b.map_or("?".into(), |b| format!("{} MiB", b >> 20));
    let mut delays = follow.delays_ms.clone();
    delays.sort_by(f64::total_cmp);
    let mut head = String::new();
    super::report::header(&mut head, machine);
    format!(
        "`{command}`\n\n{head}\
         | | figure |\n|---|---:|\n\
         | transcript tree | {} MiB, {} files, {} lines |\n\
         | events in the table before the import | {} |\n\
         | import: rows stored | {} ({} events, {} chat messages) |\n\
         | import: time, rate | {:.1} s, {} rows/s |\n\
         | CPU during the import: importer, service | {:.1} s, {:.1} s |\n\
         | service alone (loadgen: as many events and chat messages) | {} rows/s |\n\
         | **import ÷ service** | **{:.2}** |\n\
         | service's peak RSS: import, loadgen | {}, {} |\n\
         | follow: files watched, rows caught up | {}, {} |\n\
         | **follow: CPU while idle** ({:?}) | **{:.3} % of a core** |\n\
         | **follow: line written → row stored**, {} lines: p50, p99, max | **{:.0} ms, {:.0} ms, {:.0} ms** |\n\n\
         import's summary:\n\n```\n{}```\n",
        made.bytes >> 20,
        made.files,
        thousands(made.lines as f64),
        thousands(imported.history as f64),
        thousands((imported.events + imported.messages) as f64),
        thousands(imported.events as f64),
        thousands(imported.messages as f64),
        imported.elapsed.as_secs_f64(),
        thousands(imported.rate()),
        imported.cpu,
        imported.service_cpu,
        thousands(direct_rate),
        imported.rate() / direct_rate,
        mib(imported.peak_rss),
        mib(direct_rss),
        follow.files,
        thousands(follow.rows as f64),
        follow.idle_for,
        follow.idle_cpu * 100.0,
        delays.len(),
        quantile(&delays, 0.5),
        quantile(&delays, 0.99),
        delays.last().copied().unwrap_or(f64::NAN),
        said
    )
}
