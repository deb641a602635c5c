//! The price table reloads on SIGHUP without a restart; a table that does
//! not load leaves the one in use. Its own test binary: the signal goes to
//! the whole test process.

mod common;

use common::otlp_text as text;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_telemetry::config::OptionalAddr;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};

/// A Gemini CLI api_response of 1M input and 100k output tokens, no cost.
fn response(n: u64) -> ExportLogsServiceRequest {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + n;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "gemini-cli"),
                    text("project.name", "acme/prices"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: nanos,
                    observed_time_unix_nano: nanos,
                    attributes: vec![
                        text("event.name", "gemini_cli.api_response"),
                        text("session.id", "2b7d9e41-5c6a-4f3b-8e2d-1a9c7b5e3f77"),
                        text("model", "gemini-2.5-pro"),
                        text("input_token_count", "1000000"),
                        text("output_token_count", "100000"),
                        text("request.n", &n.to_string()),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn table(input: f64) -> String {
    format!(r#"{{"models": {{"gemini-2.5-pro": {{"input": {input}, "output": 10.0}}}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_price_table_and_a_bad_one_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.json");
    std::fs::write(&path, table(1.0)).unwrap();
    let prices = path.clone();
    let (_pg, conn, svc) = common::service_with("price_reload", |c| {
        c.otlp.otlp_grpc_listen = OptionalAddr(Some("127.0.0.1:0".parse().unwrap()));
        c.otlp.price_table = Some(prices);
    })
    .await;
    let db = common::db(&conn).await;
    let endpoint = format!("http://{}", svc.running.otlp_grpc_addr.unwrap());
    let mut logs = LogsServiceClient::connect(endpoint).await.unwrap();
    // Sends record n and returns its stored cost.
    let mut n = 0u64;
    let mut cost = async || {
        n += 1;
        logs.export(response(n)).await.unwrap();
        common::wait_for("the record", Duration::from_secs(10), || async {
            common::count(&db, &format!("SELECT count(*) FROM agent_events WHERE data->>'request.n' = '{n}' OR context->>'request.n' = '{n}'")).await == 1
        })
        .await;
        common::strings(&db, &format!("SELECT cost_usd::text FROM agent_events WHERE data->>'request.n' = '{n}' OR context->>'request.n' = '{n}'")).await[0].clone()
    };
    // 1M input at 1.0 and 100k output at 10.0 per million.
    assert_eq!(cost().await, "2.000000000");

    std::fs::write(&path, table(3.0)).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut reloaded = String::new();
    for _ in 0..50 {
        reloaded = cost().await;
        if reloaded != "2.000000000" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reloaded, "4.000000000", "the new input price");

    std::fs::write(
        &path,
        r#"{"models": {"gemini-2.5-pro": {"input": -1, "output": 10}}}"#,
    )
    .unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cost().await,
        "4.000000000",
        "a bad table leaves the one in use"
    );
    svc.running.shutdown().await.unwrap();
}
