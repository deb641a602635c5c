//! Counters count from the first event: every counter and histogram the
//! dashboards read exists at 0 from start-up, so a real Prometheus's
//! `increase()` sees the first refused batches. (Its own test binary: the
//! metrics recorder is global to a process.)

mod common;

use std::{net::SocketAddr, time::Duration};

use agent_telemetry::{config::OptionalAddr, pb};

/// A Prometheus server (Debian's `prometheus`) scraping `target` every
/// second, on a port of its own; stopped on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: agent-telemetry\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run prometheus (Debian package `prometheus`; .ci/run installs it)");
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The value of instant query `q`, if it has exactly one series.
    async fn value(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let response = common::http_get(self.addr, &path).await.ok()?;
        let body = &response[response.find("\r\n\r\n")? + 4..];
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `q` has one series whose value `ok` accepts.
    async fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.value(q).await;
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{q}: {v:?} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_exist_at_zero_and_increase_counts_the_first_refusals() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let conf = tempfile::tempdir().unwrap();
    let policy = conf.path().join("policy.toml");
    std::fs::write(&policy, "[default]\nfiles = \"hash\"\n").unwrap();
    let (_pg, _conn, svc) = common::service_with("metrics_at_start", |cfg| {
        cfg.metrics_listen = OptionalAddr(Some(metrics));
        cfg.limits.max_batch_rows = 2;
        cfg.redaction.content_policy = Some(policy);
    })
    .await;

    // Before any traffic: the series the dashboards read, at 0.
    let text = common::scrape(metrics).await;
    for series in [
        r#"agent_telemetry_batches_refused_total{table="agent_events",reason="too_many_rows"} 0"#,
        r#"agent_telemetry_batches_refused_total{table="chat_messages",reason="buffer_full"} 0"#,
        r#"agent_telemetry_rows_rejected_total{table="agent_events",reason="data_json"} 0"#,
        r#"agent_telemetry_rows_rejected_total{table="agent_events",reason="database"} 0"#,
        r#"agent_telemetry_rows_stored_total{table="agent_events"} 0"#,
        r#"agent_telemetry_acks_total{table="chat_messages",result="error"} 0"#,
        r#"agent_telemetry_streams_ended_total{reason="message_too_large"} 0"#,
        r#"agent_telemetry_ack_latency_seconds_count{table="agent_events"} 0"#,
        r#"agent_telemetry_flush_duration_seconds_bucket{table="chat_messages",le="+Inf"} 0"#,
        r#"agent_telemetry_redactions_total{table="agent_events",kind="github-token"} 0"#,
        r#"agent_telemetry_redactions_total{table="chat_sessions",kind="secret-field"} 0"#,
        r#"agent_telemetry_redactions_total{table="agent_events",kind="url-userinfo"} 0"#,
        r#"agent_telemetry_content_policy_total{table="agent_events",mode="hashed"} 0"#,
        r#"agent_telemetry_content_policy_total{table="chat_messages",mode="not_stored"} 0"#,
        r#"agent_telemetry_content_policy_unresolved_total{table="chat_messages"} 0"#,
    ] {
        assert!(
            text.contains(series),
            "missing at start-up: {series}\n{text}"
        );
    }

    // The service's build and its process, beside its own metrics.
    for series in [
        &format!(
            r#"agent_telemetry_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )[..],
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(series), "missing: {series}\n{text}");
    }
    // Probes for Kubernetes; nothing else on the port.
    for (path, status, body) in [
        ("/healthz", "200", "ok"),
        ("/readyz", "200", "ready"),
        ("/", "404", ""),
        ("/metrics/x", "404", ""),
    ] {
        let response = common::http_get(metrics, path).await.unwrap();
        let first = response.lines().next().unwrap_or_default().to_owned();
        assert!(
            first.contains(status) && response.contains(body),
            "{path}: {response}"
        );
    }

    let prometheus = Prometheus::start(metrics);
    let refused =
        r#"agent_telemetry_batches_refused_total{table="agent_events",reason="too_many_rows"}"#;
    // Prometheus has a sample of the counter at 0 ...
    prometheus.wait_for(refused, |v| v == 0.0).await;
    // ... then three batches are refused ...
    let mut client = common::client(&svc.endpoint).await;
    for sequence in 1..=3 {
        let too_many = (0..3).map(|_| common::event("acme/metrics", 5)).collect();
        let status = client
            .ingest_agent_events(pb::AgentEventBatch {
                sequence,
                events: too_many,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    prometheus.wait_for(refused, |v| v == 3.0).await;
    // ... and increase() over them counts all three (it read 0 before
    // the counters were registered at start-up).
    let increase = prometheus
        .wait_for(&format!("increase({refused}[1m])"), |v| v > 0.0)
        .await;
    common::say(&format!("increase() over 3 refused batches: {increase}"));
    assert!(
        (2.9..=6.0).contains(&increase),
        "increase() over 3 refused batches: {increase}"
    );

    // A secret counts under its kind.
    let mut secret = common::event("acme/metrics", 5);
    secret.data_json =
        r#"{"command":"export GITHUB_TOKEN=ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"}"#.into();
    let ack = common::ingest(&mut client, 4, vec![secret]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    let text = common::scrape(metrics).await;
    let counted = r#"agent_telemetry_redactions_total{table="agent_events",kind="github-token"} 1"#;
    assert!(text.contains(counted), "{text}");

    // A token in a project's URL is taken out and counted.
    let in_url = common::event(
        "https://ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8@github.com/acme/metrics.git",
        5,
    );
    let ack = common::ingest(&mut client, 6, vec![in_url]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    let text = common::scrape(metrics).await;
    let counted = r#"agent_telemetry_redactions_total{table="agent_events",kind="url-userinfo"} 1"#;
    assert!(text.contains(counted), "{text}");

    // A file's contents the policy hashes count under its mode.
    let mut edit = common::event("acme/metrics", 5);
    edit.data_json = r#"{"path":"a.rs","content":"fn main() {}"}"#.into();
    let ack = common::ingest(&mut client, 5, vec![edit]).await;
    assert_eq!(ack.stored, 1, "{ack:?}");
    let text = common::scrape(metrics).await;
    let counted = r#"agent_telemetry_content_policy_total{table="agent_events",mode="hashed"} 1"#;
    assert!(text.contains(counted), "{text}");
    svc.running.shutdown().await.unwrap();
}
