//! Grafana's side of the dashboards for tests: the provisioned dashboard
//! files and the expansion of their queries (the library's
//! `bench::grafana`), and the rows a panel shows.

use std::collections::BTreeMap;

use serde_json::Value;

pub use agent_telemetry::bench::grafana::Grafana;

pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/dashboards");

pub fn dashboards() -> Vec<(String, Value)> {
    agent_telemetry::bench::grafana::dashboards(std::path::Path::new(DIR)).unwrap()
}

/// Rows of a query, each column as text ("" for NULL).
pub async fn text_rows(db: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    agent_telemetry::bench::grafana::text_rows(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
}

/// What a team lead sees in one panel: its SQL expanded as Grafana expands
/// it over the last `days` days, every variable on "All" (each variable's
/// own query run first, in the dashboard's order, as Grafana does).
pub async fn panel(
    db: &tokio_postgres::Client,
    file: &str,
    title: &str,
    days: u64,
) -> Vec<Vec<String>> {
    panel_with(db, file, title, days, &[]).await
}

/// [`panel`] with some variables set to the given values (as a team lead
/// picks them), the others on "All".
pub async fn panel_with(
    db: &tokio_postgres::Client,
    file: &str,
    title: &str,
    days: u64,
    picked: &[(&str, Vec<String>)],
) -> Vec<Vec<String>> {
    let (_, dash) = dashboards()
        .into_iter()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("no dashboard {file}"));
    let now = std::time::SystemTime::now();
    let fmt = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let mut grafana = Grafana {
        from: fmt(now - std::time::Duration::from_secs(days * 86_400)),
        to: fmt(now + std::time::Duration::from_secs(60)),
        vars: BTreeMap::new(),
    };
    grafana.load_variables(db, &dash, picked).await.unwrap();
    let target = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?} in {file}"));
    let sql = grafana
        .expand(
            target["targets"][0]["rawSql"].as_str().unwrap(),
            target["interval"].as_str().unwrap_or("1h"),
        )
        .unwrap();
    text_rows(db, &sql).await
}
