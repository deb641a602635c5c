//! The cases of `bench compare`, each loading rows into a freshly migrated
//! database and timing it:
//!
//! - **A** `psql \copy … (FORMAT binary)` of the set's rows, one or two
//!   parallel processes: what the database itself takes.
//! - **B** the service as users run it — `agent-telemetry serve` as its own
//!   process, loadgen streaming the set over gRPC — timed from the first
//!   send to the last ack; also at half that rate (ack latency) and under a
//!   sustained 3× overload (peak memory).
//! - **C** what applications write today: one INSERT per event, and
//!   multi-row INSERTs of 1,000 rows (an ORM's `createMany`).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use bytes::BytesMut;
use postgres_types::{IsNull, ToSql, Type, to_sql_checked};
use tokio::{process::Child, time::Instant};

use super::{BenchError, Case, CompareConfig, dataset::Dataset, report::Runs};
use crate::{
    config::{ClientConfig, ServeConfig, StorageConfig, TimescaleMode},
    copy::encode,
    db,
    loadgen::{self, LoadgenConfig, Summary},
    row::Table,
};

/// `psql \copy` of each file, all at once; the time until the last is done.
/// `direct_compress`: with TimescaleDB's direct compress on (the
/// columnstore layout's COPY), set through PGOPTIONS.
pub async fn psql_copy(
    psql: &Path,
    conn: &str,
    files: &[PathBuf],
    direct_compress: bool,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let runs = files.iter().map(|f| {
        let copy = format!(
            "\\copy agent_events ({}) FROM '{}' WITH (FORMAT binary)",
            Table::AgentEvents.columns(),
            f.display()
        );
        let mut cmd = tokio::process::Command::new(psql);
        if direct_compress {
            cmd.env("PGOPTIONS", "-c timescaledb.enable_direct_compress_copy=on");
        }
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", &copy])
            .stdin(Stdio::null())
            .output()
    });
    for out in futures_util::future::join_all(runs).await {
        let out = out.map_err(|e| BenchError::Io(psql.display().to_string(), e))?;
        if !out.status.success() {
            return Err(BenchError::Case(format!(
                "psql \\copy failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(started.elapsed())
}

/// One value already in its type's binary form (or NULL), bound as is. The
/// server infers each parameter's type from the INSERT's target column, and
/// binary parameters use the same format as binary COPY.
#[derive(Debug)]
struct Raw<'a>(Option<&'a [u8]>);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// INSERTs of `per_statement` rows each (1: one INSERT per event), the first
/// `rows` rows of the set, one connection, each statement its own
/// transaction — as an application server writes them.
pub async fn insert(
    conn: &str,
    dataset: &Dataset,
    rows: usize,
    per_statement: usize,
) -> Result<Duration, BenchError> {
    let client = db::connect(conn).await?;
    let per_statement = per_statement.max(1);
    let fields = Table::AgentEvents.field_count() as usize;
    let statement = |n: usize| {
        let values: Vec<String> = (0..n)
            .map(|r| {
                let params: Vec<String> = (1..=fields)
                    .map(|f| format!("${}", r * fields + f))
                    .collect();
                format!("({})", params.join(","))
            })
            .collect();
        format!(
            "INSERT INTO agent_events ({}) VALUES {}",
            Table::AgentEvents.columns(),
            values.join(",")
        )
    };
    let full = client.prepare(&statement(per_statement)).await?;
    let started = Instant::now();
    let mut at = 0;
    while at < rows {
        let n = per_statement.min(rows - at);
        let stmt = if n == per_statement {
            full.clone()
        } else {
            client.prepare(&statement(n)).await?
        };
        let values: Vec<Raw<'_>> = (at..at + n)
            .flat_map(|i| encode::row_fields(dataset.row(i)))
            .map(Raw)
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        client.execute(&stmt, &params).await?;
        at += n;
    }
    Ok(started.elapsed())
}

/// A running `agent-telemetry serve` child process.
pub struct Service {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
}

impl Service {
    /// Starts the service on a free port and waits until it accepts
    /// connections (it listens only after migrating).
    pub async fn start(
        exe: &Path,
        conn: &str,
        mode: TimescaleMode,
        extra: &[String],
        log: PathBuf,
    ) -> Result<Self, BenchError> {
        Self::start_on(free_port()?, exe, conn, mode, extra, log).await
    }

    /// [`Self::start`] on a given address (a restart where clients reconnect).
    pub async fn start_on(
        addr: SocketAddr,
        exe: &Path,
        conn: &str,
        mode: TimescaleMode,
        extra: &[String],
        log: PathBuf,
    ) -> Result<Self, BenchError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| BenchError::Io(log.display().to_string(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::Io(log.display().to_string(), e))?;
        let mode = format!("{mode:?}").to_lowercase();
        let mut child = tokio::process::Command::new(exe)
            .arg("serve")
            .args(["--listen", &addr.to_string(), "--metrics-listen", "off"])
            // Several services run side by side: none takes the OTLP ports.
            .args(["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"])
            .args(["--timescaledb", &mode])
            .args(extra)
            .env("DATABASE_URL", conn)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Io(exe.display().to_string(), e))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| BenchError::Io("serve".into(), e))?
            {
                return Err(BenchError::Case(format!(
                    "agent-telemetry serve exited ({status}) before listening:\n{}",
                    tail(&log)
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Case(format!(
                    "agent-telemetry serve did not listen within 2 minutes:\n{}",
                    tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            child,
            endpoint: format!("http://{addr}"),
            log,
        })
    }

    /// The most memory the process has held resident so far (Linux: VmHWM).
    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub async fn wait(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// SIGKILL: the process dies at once, with nothing flushed or acked.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .map_err(|_| {
                BenchError::Case("agent-telemetry serve did not stop within 2 minutes".into())
            })?
            .map_err(|e| BenchError::Io("serve".into(), e))?;
        if !status.success() {
            return Err(BenchError::Case(format!(
                "agent-telemetry serve exited with {status}:\n{}",
                tail(&self.log)
            )));
        }
        Ok(())
    }
}

/// What one run of a B case measured.
pub struct ServiceRun {
    pub summary: Summary,
    pub peak_rss: Option<u64>,
}

/// Streams `batches` to the service through loadgen (once, or over and
/// over for `repeat_for`), then stops the service.
pub async fn through_service(
    service: Service,
    load: LoadgenConfig,
    batches: Arc<Vec<Vec<crate::pb::AgentEvent>>>,
    repeat_for: Option<Duration>,
) -> Result<ServiceRun, BenchError> {
    let load = LoadgenConfig {
        client: ClientConfig::at(service.endpoint.clone()),
        ..load
    };
    let result = loadgen::run_fixed(&load, batches, repeat_for).await;
    let peak_rss = service.peak_rss();
    let stopped = service.stop().await;
    let summary = result?;
    stopped?;
    Ok(ServiceRun { summary, peak_rss })
}

/// Streams `batches` once (untimed), then again: what the second pass
/// measured is the resend path, every row a duplicate.
pub async fn resent_through_service(
    service: Service,
    load: LoadgenConfig,
    batches: Arc<Vec<Vec<crate::pb::AgentEvent>>>,
) -> Result<ServiceRun, BenchError> {
    let load = LoadgenConfig {
        client: ClientConfig::at(service.endpoint.clone()),
        ..load
    };
    let first = loadgen::run_fixed(&load, batches.clone(), None).await;
    let second = match first {
        Ok(_) => loadgen::run_fixed(&load, batches, None).await,
        Err(e) => Err(e),
    };
    let peak_rss = service.peak_rss();
    let stopped = service.stop().await;
    let summary = second?;
    stopped?;
    Ok(ServiceRun { summary, peak_rss })
}

pub fn free_port() -> Result<SocketAddr, BenchError> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Io("127.0.0.1:0".into(), e))?;
    l.local_addr()
        .map_err(|e| BenchError::Io("127.0.0.1:0".into(), e))
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What every case of one `bench compare` run shares.
pub struct Setup<'a> {
    pub cfg: &'a CompareConfig,
    pub dataset: &'a Dataset,
    /// Connection strings: the server's maintenance database, and the
    /// scratch database every run re-creates.
    pub admin: String,
    pub bench: String,
    pub storage: StorageConfig,
    /// The run's layout is the columnstore: psql's COPY uses direct
    /// compress too.
    pub columnstore: bool,
    /// The settings the service under test runs with.
    pub serve: ServeConfig,
    pub psql: PathBuf,
    /// The `agent-telemetry` binary the service cases run.
    pub exe: PathBuf,
    /// The set as one COPY file, and as two halves.
    pub whole: PathBuf,
    pub halves: [PathBuf; 2],
    /// Where each run's service log goes.
    pub logs: PathBuf,
}

/// One run of one case on a fresh schema: the rows it stored and how long
/// it took. One arm per case, each the whole of its case: long because the
/// cases are many. `service_rate` is the service case's median, which the paced
/// cases need; `log` takes a started service's output.
pub async fn run(
    s: &Setup<'_>,
    case: Case,
    run: usize,
    service_rate: Option<f64>,
    log: PathBuf,
    runs: &mut Runs,
) -> Result<(u64, Duration), BenchError> {
    let load = LoadgenConfig {
        streams: s.cfg.streams,
        window: s.cfg.window,
        batch_size: s.cfg.batch_size,
        quiet: true,
        messages: 0,
        ..LoadgenConfig::default()
    };
    let mut serve_args = s.cfg.serve_args.clone();
    if case == Case::ServiceNoIdProbe {
        serve_args.retain(|a| !a.starts_with("--id-conflict-window"));
        serve_args.push("--id-conflict-window=0s".into());
    }
    let start_service = || {
        Service::start(
            &s.exe,
            &s.bench,
            s.cfg.timescaledb,
            &serve_args,
            log.clone(),
        )
    };
    let done = match case {
        Case::Copy1 => (
            s.dataset.len() as u64,
            psql_copy(
                &s.psql,
                &s.bench,
                std::slice::from_ref(&s.whole),
                s.columnstore,
            )
            .await?,
        ),
        Case::Copy2 => (
            s.dataset.len() as u64,
            psql_copy(&s.psql, &s.bench, &s.halves, s.columnstore).await?,
        ),
        Case::InsertMulti => (
            s.dataset.len() as u64,
            insert(&s.bench, s.dataset, s.dataset.len(), s.cfg.batch_size).await?,
        ),
        Case::InsertSingle => {
            let n = s.cfg.single_insert_events.min(s.dataset.len());
            (n as u64, insert(&s.bench, s.dataset, n, 1).await?)
        }
        Case::Service | Case::ServiceNoIdProbe | Case::ServiceHalf => {
            let rate = match case {
                Case::ServiceHalf => service_rate.unwrap_or(0.0) / 2.0,
                _ => 0.0,
            };
            runs.offered = (rate > 0.0).then_some(rate);
            let r = through_service(
                start_service().await?,
                LoadgenConfig { rate, ..load },
                s.dataset.batches.clone(),
                None,
            )
            .await?;
            if r.summary.rows_stored != s.dataset.len() as u64 {
                return Err(BenchError::Case(format!(
                    "{case}, run {run}: the service stored {} of {} rows; what loadgen saw:\n{}",
                    r.summary.rows_stored,
                    s.dataset.len(),
                    r.summary
                )));
            }
            runs.record_service(&r);
            (r.summary.rows_stored, r.summary.elapsed)
        }
        Case::ServiceResend => {
            let r = resent_through_service(start_service().await?, load, s.dataset.batches.clone())
                .await?;
            if r.summary.duplicates != s.dataset.len() as u64 {
                return Err(BenchError::Case(format!(
                    "{case}, run {run}: {} of {} resent rows were recognised as duplicates",
                    r.summary.duplicates,
                    s.dataset.len()
                )));
            }
            runs.record_service(&r);
            (s.dataset.len() as u64, r.summary.elapsed)
        }
        Case::ServiceResendMixed => {
            // After every other batch, a resend of the one sent four
            // batches before: a reconnecting client's pattern.
            let set = &s.dataset.batches;
            let mut mixed = Vec::with_capacity(set.len() * 3 / 2);
            for (i, b) in set.iter().enumerate() {
                mixed.push(b.clone());
                if i >= 4 && i % 2 == 0 {
                    mixed.push(set[i - 4].clone());
                }
            }
            let resent: u64 =
                mixed.iter().map(|b| b.len() as u64).sum::<u64>() - s.dataset.len() as u64;
            let r = through_service(start_service().await?, load, Arc::new(mixed), None).await?;
            if r.summary.rows_stored != s.dataset.len() as u64 || r.summary.duplicates != resent {
                return Err(BenchError::Case(format!(
                    "{case}, run {run}: {} stored and {} duplicates; expected {} and {resent}",
                    r.summary.rows_stored,
                    r.summary.duplicates,
                    s.dataset.len()
                )));
            }
            runs.record_service(&r);
            (r.summary.rows_stored, r.summary.elapsed)
        }
        Case::ServiceOverload => {
            let rate = 3.0 * service_rate.unwrap_or(0.0);
            runs.offered = Some(rate);
            // Enough streams and unacked batches per stream that the
            // clients keep offering the rate while acks are slow;
            // the set goes round (with new ids) for --overload-for.
            let r = through_service(
                start_service().await?,
                LoadgenConfig {
                    rate,
                    streams: 16,
                    window: 64,
                    ..load
                },
                s.dataset.batches.clone(),
                Some(s.cfg.overload_for),
            )
            .await?;
            runs.record_service(&r);
            (r.summary.rows_stored, r.summary.elapsed)
        }
    };
    Ok(done)
}
