//! The machine a comparison ran on, and the table it prints.

use std::fmt::Write;

use super::{BenchError, Case};

/// What the figures depend on besides our code.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub postgres: String,
    pub timescaledb: Option<String>,
    pub storage_mode: String,
    pub durability: String,
    pub build: &'static str,
}

impl Machine {
    pub async fn describe(
        client: &tokio_postgres::Client,
        storage_mode: String,
    ) -> Result<Self, BenchError> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let postgres: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let timescaledb: Option<String> = client
            .query_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        let row = client
            .query_one(
                "SELECT current_setting('fsync'), current_setting('synchronous_commit'), \
                 current_setting('shared_buffers'), current_setting('max_wal_size')",
                &[],
            )
            .await?;
        let durability = format!(
            "fsync={}, synchronous_commit={}, shared_buffers={}, max_wal_size={}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
        Ok(Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            postgres,
            timescaledb,
            storage_mode,
            durability,
            build: if cfg!(debug_assertions) {
                "debug (figures are not representative: use --release)"
            } else {
                "release"
            },
        })
    }
}

/// All runs of one case.
#[derive(Debug, Default, Clone)]
pub struct Runs {
    pub rows: u64,
    pub rows_per_s: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub peak_rss: Vec<u64>,
    /// Offered rate (B at half rate and under overload).
    pub offered: Option<f64>,
    /// Batches refused or failed (overload).
    pub failed_batches: Vec<u64>,
}

impl Runs {
    pub fn rate(&self) -> Option<f64> {
        median(&self.rows_per_s)
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn median_u64(v: &[u64]) -> Option<f64> {
    median(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

/// Limits the targets are checked against, from the service's settings.
pub struct Limits {
    pub flush_age_ms: f64,
    pub buffer_bytes: u64,
}

/// The cases of one storage layout.
pub struct Section {
    /// The layout as chosen, with its reason.
    pub layout: String,
    pub columnstore: bool,
    pub results: Vec<(Case, Runs)>,
}

/// The report: machine, then per layout one table of all cases with its
/// ratios and targets, then the layouts against each other.
pub fn render(machine: &Machine, command: &str, sections: &[Section], limits: &Limits) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "command: `{command}`\n");
    header(&mut out, machine);
    for section in sections {
        if sections.len() > 1 {
            let _ = writeln!(out, "### layout: {}\n", section.layout);
        }
        layout_table(&mut out, &section.results, limits);
        out.push('\n');
    }
    let rate = |columnstore: bool, c: Case| {
        sections
            .iter()
            .find(|s| s.columnstore == columnstore)?
            .results
            .iter()
            .find(|(k, _)| *k == c)?
            .1
            .rate()
    };
    let mut targets = Vec::new();
    let mut ratio = |what: &str, a: Option<f64>, b: Option<f64>, min: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            let r = a / b;
            targets.push(format!(
                "| {what} | {r:.2} | ≥ {min} | {} |",
                if r >= min { "met" } else { "not met" }
            ));
        }
    };
    let service = rate(true, Case::Service);
    ratio(
        "service on columnstore / service on rowstore",
        service,
        rate(false, Case::Service),
        1.6,
    );
    ratio(
        "service on columnstore / psql \\copy ×2 into the row store",
        service,
        rate(false, Case::Copy2),
        1.5,
    );
    ratio(
        "service on columnstore / psql \\copy ×2 with direct compress",
        service,
        rate(true, Case::Copy2),
        0.8,
    );
    ratio(
        "service on columnstore / multi-row INSERT into the row store",
        service,
        rate(false, Case::InsertMulti),
        3.0,
    );
    ratio(
        "mixed resends / fresh rows, on columnstore",
        rate(true, Case::ServiceResendMixed),
        service,
        0.5,
    );
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "### the layouts against each other\n\n| target | measured | wanted | |\n|---|---:|---|---|"
        );
        for t in targets {
            let _ = writeln!(out, "{t}");
        }
    }
    out
}

pub fn header(out: &mut String, machine: &Machine) {
    let _ = writeln!(
        out,
        "machine: {} cores ({}), {:.1} GiB memory; PostgreSQL {}; TimescaleDB {}; {}; service build: {}",
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.postgres,
        machine.timescaledb.as_deref().unwrap_or("not installed"),
        machine.durability,
        machine.build
    );
    let _ = writeln!(out, "storage mode: {}\n", machine.storage_mode);
}

/// One layout's table of cases, its ratios and targets.
fn layout_table(out: &mut String, results: &[(Case, Runs)], limits: &Limits) {
    let get = |c: Case| results.iter().find(|(k, _)| *k == c).map(|(_, r)| r);
    let _ = writeln!(
        out,
        "| case | rows | rows/s (median) | runs (rows/s) | ack p50 / p99 (ms) | service peak RSS |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---|---:|");
    for (case, r) in results {
        let runs: Vec<String> = r.rows_per_s.iter().map(|x| thousands(*x)).collect();
        let latency = match (median(&r.p50_ms), median(&r.p99_ms)) {
            (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
            _ => "—".into(),
        };
        let rss =
            median_u64(&r.peak_rss).map_or("—".into(), |b| format!("{:.0} MiB", b / 1048576.0));
        let mut what = case.describe().to_owned();
        if let Some(o) = r.offered {
            let _ = write!(what, ", offered {} rows/s", thousands(o));
        }
        if let Some(f) = median_u64(&r.failed_batches).filter(|f| *f > 0.0) {
            let _ = write!(what, ", {f:.0} batches refused (median)");
        }
        let _ = writeln!(
            out,
            "| {what} | {} | **{}** | {} | {latency} | {rss} |",
            thousands(r.rows as f64),
            r.rate().map_or("—".into(), thousands),
            runs.join(", ")
        );
    }
    let b = get(Case::Service).and_then(Runs::rate);
    let mut targets = Vec::new();
    let ratio = |target: Case, min: f64, what: &str, targets: &mut Vec<String>| {
        if let (Some(b), Some(x)) = (b, get(target).and_then(Runs::rate)) {
            let r = b / x;
            targets.push(format!(
                "| B / {what} | {r:.2} | ≥ {min} | {} |",
                if r >= min { "met" } else { "not met" }
            ));
        }
    };
    ratio(Case::Copy1, 1.0, "A (one stream)", &mut targets);
    // What the id conflict probe (one query per flush) may cost.
    ratio(
        Case::ServiceNoIdProbe,
        0.9,
        "B without the id conflict probe",
        &mut targets,
    );
    ratio(Case::Copy2, 0.8, "A (two streams)", &mut targets);
    ratio(Case::InsertMulti, 3.0, "C (multi-row INSERT)", &mut targets);
    ratio(
        Case::InsertSingle,
        3.0,
        "C (one INSERT per event)",
        &mut targets,
    );
    if let Some(p99) = get(Case::ServiceHalf).and_then(|r| median(&r.p99_ms)) {
        let limit = limits.flush_age_ms + 50.0;
        targets.push(format!(
            "| ack p99 at half rate (ms) | {p99:.1} | ≤ {limit:.0} (flush age + 50 ms) | {} |",
            if p99 <= limit { "met" } else { "not met" }
        ));
    }
    if let Some(rss) = get(Case::ServiceOverload).and_then(|r| r.peak_rss.iter().max().copied()) {
        let limit = limits.buffer_bytes + (64 << 20);
        targets.push(format!(
            "| peak RSS under 3× overload (MiB, worst run) | {:.0} | ≤ {:.0} (buffer + 64 MiB) | {} |",
            rss as f64 / 1048576.0,
            limit as f64 / 1048576.0,
            if rss <= limit { "met" } else { "not met" }
        ));
    }
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "\n| target | measured | wanted | |\n|---|---:|---|---|"
        );
        for t in targets {
            let _ = writeln!(out, "{t}");
        }
    }
}

/// 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
