//! `bench dashboards`: every SQL query of the provisioned dashboards, as
//! Grafana sends it (variables on "All", the last `--range`, as the reader
//! role with the settings it logs in with), timed on one
//! database, or on two side by side (`--against`: the other storage layout
//! over the same events), or on several (the same shape at growing sizes,
//! with each size's growth over the one before). Each query runs once to
//! warm the cache, then `--runs` times; the median is reported.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::Args;
use tokio_postgres::Client;

use super::{
    BenchError,
    grafana::{self, Grafana},
    report,
};
use crate::config::DatabaseConfig;

#[derive(Debug, Args)]
pub struct DashboardsConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Further databases (connection strings) to time the same queries on,
    /// side by side: the same events in the other storage layout (one:
    /// a ratio column), or the same shape at larger sizes (several: each
    /// column's growth over the one before).
    #[arg(long)]
    pub against: Vec<String>,

    /// Timed runs per query (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,

    /// The dashboards' time range, ending now.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub range: Duration,

    /// The dashboard files.
    #[arg(long, default_value = "deploy/grafana/dashboards")]
    pub dir: PathBuf,
}

/// One query's median time on each database.
struct Timed {
    what: String,
    ms: Vec<f64>,
    rows: usize,
}

pub async fn run(cfg: &DashboardsConfig) -> Result<String, BenchError> {
    let dashboards = grafana::dashboards(&cfg.dir).map_err(BenchError::Case)?;
    let db = crate::db::open::open_database(&cfg.database).await?;
    let mut conns = vec![db.conn.clone()];
    conns.extend(cfg.against.iter().cloned());
    let now = std::time::SystemTime::now();
    let fmt = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let (from, to) = (fmt(now - cfg.range), fmt(now + Duration::from_secs(60)));
    let mut labels = Vec::new();
    let mut table: Vec<Timed> = Vec::new();
    for (n, conn) in conns.iter().enumerate() {
        let client = crate::db::connect(conn).await?;
        labels.push(describe(&client).await?);
        as_grafana(&client).await?;
        let mut i = 0;
        for (file, dash) in &dashboards {
            let mut g = Grafana {
                from: from.clone(),
                to: to.clone(),
                vars: Default::default(),
            };
            g.load_variables(&client, dash, &[])
                .await
                .map_err(BenchError::Case)?;
            let empty = Vec::new();
            for panel in dash["panels"].as_array().unwrap_or(&empty) {
                let title = panel["title"].as_str().unwrap_or_default();
                let interval = panel["interval"].as_str().unwrap_or("1h");
                for target in panel["targets"].as_array().unwrap_or(&empty) {
                    if !grafana::is_db(target) {
                        continue;
                    }
                    let sql = g
                        .expand(target["rawSql"].as_str().unwrap_or_default(), interval)
                        .map_err(BenchError::Case)?;
                    let found = rows(&client, &sql).await?.len();
                    let mut times = Vec::with_capacity(cfg.runs);
                    for _ in 0..cfg.runs.max(1) {
                        let started = std::time::Instant::now();
                        rows(&client, &sql).await?;
                        times.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    let ms = report::median(&times).unwrap_or(0.0);
                    if n == 0 {
                        table.push(Timed {
                            what: format!("{} · {title}", file.trim_end_matches(".json")),
                            ms: vec![ms],
                            rows: found,
                        });
                    } else if let Some(t) = table.get_mut(i) {
                        t.ms.push(ms);
                    }
                    i += 1;
                }
            }
        }
    }
    db.release().await.map_err(|e| BenchError::Open(e.into()))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dashboard queries, last {}, median of {} runs after a warm-up (ms)\n",
        humantime::format_duration(cfg.range),
        cfg.runs.max(1)
    );
    let extra = Extra::of(labels.len());
    let _ = writeln!(
        out,
        "| query | rows (first) | {}{} |",
        labels.join(" | "),
        extra.headings()
    );
    let _ = writeln!(
        out,
        "|---|---:|{}{}",
        "---:|".repeat(labels.len()),
        "---:|".repeat(extra.columns())
    );
    for t in &table {
        let cells: Vec<String> = t.ms.iter().map(|m| format!("{m:.1}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {}{} |",
            t.what,
            t.rows,
            cells.join(" | "),
            extra.cells(&t.ms)
        );
    }
    let totals: Vec<String> = (0..labels.len())
        .map(|k| {
            format!(
                "{:.0}",
                table.iter().filter_map(|t| t.ms.get(k)).sum::<f64>()
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "| all {} queries | | {} |{}",
        table.len(),
        totals.join(" | "),
        " |".repeat(extra.columns())
    );
    Ok(out)
}

/// The columns after the times: none for one database, the first's time
/// over the second's for two (two layouts of the same events), each
/// database's time over the one before for more (one shape, growing sizes).
enum Extra {
    None,
    Ratio,
    Growth(usize),
}

impl Extra {
    fn of(databases: usize) -> Self {
        match databases {
            0 | 1 => Self::None,
            2 => Self::Ratio,
            n => Self::Growth(n - 1),
        }
    }

    fn columns(&self) -> usize {
        match self {
            Self::None => 0,
            Self::Ratio => 1,
            Self::Growth(n) => *n,
        }
    }

    fn headings(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Ratio => " | ratio".to_owned(),
            Self::Growth(n) => (1..=*n)
                .map(|k| format!(" | growth {}→{}", k, k + 1))
                .collect(),
        }
    }

    fn cells(&self, ms: &[f64]) -> String {
        let over = |a: Option<&f64>, b: Option<&f64>| match (a, b) {
            (Some(a), Some(b)) if *b > 0.0 => format!(" | {:.2}", a / b),
            _ => " | —".to_owned(),
        };
        match self {
            Self::None => String::new(),
            Self::Ratio => over(ms.first(), ms.get(1)),
            Self::Growth(n) => (1..=*n).map(|k| over(ms.get(k), ms.get(k - 1))).collect(),
        }
    }
}

/// "columnstore, 1,000,000 events" for a column heading.
async fn describe(client: &Client) -> Result<String, BenchError> {
    let layout = crate::db::layout::recorded(client)
        .await?
        .map_or("rowstore", |l| l.as_str());
    let events: i64 = client
        .query_one("SELECT count(*) FROM agent_events", &[])
        .await?
        .get(0);
    Ok(format!(
        "{layout}, {} events",
        report::thousands(events as f64)
    ))
}

/// Makes the session what Grafana's is: the reader role, with the settings
/// that role logs in with (sql/0028: no JIT).
async fn as_grafana(client: &Client) -> Result<(), BenchError> {
    let role = crate::db::readers::READER_ROLE;
    let settings = client
        .query(
            "SELECT split_part(c, '=', 1), substr(c, strpos(c, '=') + 1)
             FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) c
             WHERE r.rolname = $1
               AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))",
            &[&role],
        )
        .await?;
    for s in &settings {
        let (name, value): (String, String) = (s.get(0), s.get(1));
        client
            .execute("SELECT set_config($1, $2, false)", &[&name, &value])
            .await?;
    }
    client
        .batch_execute(&format!("SET ROLE {role}"))
        .await
        .map_err(BenchError::from)
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>, BenchError> {
    grafana::text_rows(client, sql)
        .await
        .map_err(|e| BenchError::Case(format!("{}\n{sql}", crate::db::error::describe(&e))))
}
