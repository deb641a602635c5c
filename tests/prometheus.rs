//! A real Prometheus (Debian's `prometheus`; .ci/run installs it) scrapes a
//! live service under load, with rows rejected and a batch refused whole,
//! and loads the shipped alert rules. Then every PromQL expression of the
//! *Ingest health* dashboard runs through its HTTP API and returns data,
//! and every alert rule is evaluated without error: those this run should
//! set off are pending, the others inactive. (Its own test binary: the
//! metrics recorder is global to a process.)

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use agent_telemetry::{config::OptionalAddr, pb};
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/ingest-health.json"
);
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// What Grafana puts in place of the dashboard's variables: every
/// instance, and a rate window of a few scrapes (Grafana's
/// `$__rate_interval` is at least four scrape intervals).
const RATE_WINDOW: &str = "30s";

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scraping `target` every second, evaluating the shipped rules every
    /// second.
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {ALERTS}\n\
                 scrape_configs:\n  - job_name: agent-telemetry\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian package `prometheus`; .ci/run installs it)");
        Self { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The JSON body of a GET of `path` (HTTP/1.0: never chunked).
    async fn get(&self, path: &str) -> std::io::Result<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body)
            .map_err(|e| std::io::Error::other(format!("GET {path}: {e}: {text}")))
    }

    /// Waits (up to a minute) until the first series of `expr` is `want`.
    async fn until(&self, what: &str, expr: &str, want: f64) {
        let q: String =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Refused (not listening yet) or not scraped yet: NaN.
            let got = match self.get(&format!("/api/v1/query?query={q}")).await {
                Ok(v) => value(&v["data"]["result"]),
                Err(_) => f64::NAN,
            };
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never saw {what} ({expr} = {got}, not {want}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn query(&self, expr: &str) -> Value {
        let q: String =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let v = self
            .get(&format!("/api/v1/query?query={q}"))
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].clone()
    }
}

/// The first sample's value of an instant query's first series.
fn value(result: &Value) -> f64 {
    result[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_runs_every_dashboard_query_and_alert_rule() {
    let metrics = free_port();
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().to_owned();
    let (_pg, conn, svc) = common::service_with("prometheus", |cfg| {
        cfg.metrics_listen = OptionalAddr(Some(metrics));
        cfg.spool.spool_dir = Some(dir);
        cfg.limits.max_batch_rows = 100;
    })
    .await;
    let prom = Prometheus::start(metrics);
    // The load starts once Prometheus scrapes, so that its rates see it.
    prom.until("the first scrape", "sum(up{job=\"agent-telemetry\"})", 1.0)
        .await;

    // Load for a few seconds (so rates span several scrapes): 40 good rows
    // in 8 batches, a batch of 20 with 12 bad rows, a batch of 101 refused
    // whole.
    let mut client = common::client(&svc.endpoint).await;
    for seq in 1..=8u64 {
        let events = (0..5).map(|_| common::event("acme/prom", 5)).collect();
        let ack = common::ingest(&mut client, seq, events).await;
        assert_eq!(ack.rejected.len(), 0, "{ack:?}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut events: Vec<pb::AgentEvent> = (0..20).map(|_| common::event("acme/prom", 5)).collect();
    for e in &mut events[..12] {
        e.session_id = "nope".into();
    }
    let ack = common::ingest(&mut client, 9, events).await;
    assert_eq!(ack.rejected.len(), 12, "{ack:?}");
    let refused = client
        .ingest_agent_events(pb::AgentEventBatch {
            sequence: 10,
            events: (0..101).map(|_| common::event("acme/prom", 5)).collect(),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let db = common::db(&conn).await;
    common::delivery::until_stored(&db, 48, Duration::from_secs(30)).await;

    // Until Prometheus has scraped the final counts and evaluated the rules
    // on them a few times.
    prom.until(
        "the 48 stored rows",
        "sum(agent_telemetry_rows_stored_total)",
        48.0,
    )
    .await;
    // A refused batch's rows count as received.
    prom.until(
        "161 received rows",
        "sum(agent_telemetry_rows_received_total)",
        161.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every dashboard expression returns data; the counters that moved
    // show it, with the labels the panels group by.
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((
                    panel["title"].as_str().unwrap_or("").to_owned(),
                    e.to_owned(),
                ));
            }
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (title, expr) in &exprs {
        let expr = expr
            .replace("$__rate_interval", RATE_WINDOW)
            .replace("$instance", ".*");
        let result = prom.query(&expr).await;
        assert!(
            result.as_array().is_some_and(|r| !r.is_empty()),
            "{title}: {expr} returned no data"
        );
        let has = |label: &str, v: &str| {
            result.as_array().unwrap().iter().any(|s| {
                s["metric"][label] == v && s["value"][1].as_str().is_some_and(|x| x != "0")
            })
        };
        match title.as_str() {
            "Rows stored per second" => assert!(has("table", "agent_events"), "{title}: {result}"),
            "Rows rejected per second by reason" => {
                assert!(has("reason", "session_id"), "{title}: {result}")
            }
            "Batches refused per second" => {
                assert!(has("reason", "too_many_rows"), "{title}: {result}")
            }
            "Acks per second" => assert!(has("result", "ok"), "{title}: {result}"),
            _ => {}
        }
    }

    // Every rule loaded and evaluated without error; the refusal and the
    // share of rejected rows (12 of 161, over the 5 % threshold) set theirs
    // off, nothing else did.
    let rules = prom.get("/api/v1/rules").await.unwrap();
    let rules: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let shipped = std::fs::read_to_string(Path::new(ALERTS)).unwrap();
    let count = shipped.matches("- alert:").count();
    assert_eq!(rules.len(), count, "{rules:?}");
    let firing = [
        "AgentTelemetryRefusingBatches",
        "AgentTelemetryRejectingRows",
    ];
    for r in &rules {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["health"], "ok", "{name}: {r}");
        assert!(
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001")),
            "{name} never evaluated: {r}"
        );
        let want = if firing.contains(&name) {
            "pending"
        } else {
            "inactive"
        };
        assert_eq!(r["state"], want, "{name}: {r}");
    }
    let refusing = rules
        .iter()
        .find(|r| r["name"] == "AgentTelemetryRefusingBatches")
        .unwrap();
    assert_eq!(
        refusing["alerts"][0]["labels"]["reason"], "too_many_rows",
        "{refusing}"
    );
    common::say(&format!(
        "prometheus: {} dashboard expressions returned data, {} alert rules evaluated ({} pending as expected)",
        exprs.len(),
        rules.len(),
        firing.len()
    ));
    drop(client);
    svc.running.shutdown().await.unwrap();
}
