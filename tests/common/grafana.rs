//! Grafana's side of the dashboards for tests: the provisioned dashboard
//! files, and its PostgreSQL datasource's macro and variable expansion.

use std::collections::BTreeMap;

use serde_json::Value;

pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/dashboards");
pub const DB_UID: &str = "agent-telemetry-db";

pub fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(DIR)
        .expect("dashboards directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What Grafana substitutes: the time range, and each variable's values
/// ("All" selected: every value the variable's query returned).
pub struct Grafana {
    pub from: String,
    pub to: String,
    pub vars: BTreeMap<String, Vec<String>>,
}

/// "1h", "'1d'", "30s" → seconds.
fn seconds(interval: &str) -> u64 {
    let s = interval.trim().trim_matches('\'');
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("interval {interval:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => panic!("interval unit {other:?} in {interval:?}"),
    }
}

impl Grafana {
    /// Expands one query. `interval` is the panel's `$__interval` (its
    /// minimum interval, which is what Grafana uses over long ranges).
    pub fn expand(&self, sql: &str, interval: &str) -> String {
        let mut out = String::new();
        let mut rest = sql;
        while let Some(at) = rest.find("$__") {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 3..];
            let name_len = tail
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(tail.len());
            let name = &tail[..name_len];
            let after = &tail[name_len..];
            if !after.starts_with('(') {
                // A macro without arguments.
                match name {
                    "interval" => out.push_str(interval),
                    "interval_ms" => out.push_str(&(seconds(interval) * 1000).to_string()),
                    other => panic!("unknown Grafana macro $__{other} in {sql}"),
                }
                rest = after;
                continue;
            }
            let (args, after) = split_args(after);
            let arg = |i: usize| -> String {
                let a = args
                    .get(i)
                    .unwrap_or_else(|| panic!("$__{name} needs argument {i}: {sql}"));
                a.replace("$__interval", interval)
            };
            out.push_str(&match name {
                "timeFilter" => format!("{} BETWEEN '{}' AND '{}'", arg(0), self.from, self.to),
                "timeFrom" => format!("'{}'", self.from),
                "timeTo" => format!("'{}'", self.to),
                "timeGroup" | "timeGroupAlias" => {
                    let s = seconds(&arg(1));
                    let group = format!("floor(extract(epoch from {})/{s})*{s}", arg(0));
                    if name == "timeGroupAlias" {
                        format!("{group} AS \"time\"")
                    } else {
                        group
                    }
                }
                other => panic!("unknown Grafana macro $__{other} in {sql}"),
            });
            rest = after;
        }
        out.push_str(rest);
        for (var, values) in &self.vars {
            let list = values
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(",");
            out = out
                .replace(&format!("${{{var}}}"), &list)
                .replace(&format!("${var}"), &list);
        }
        assert!(!out.contains('$'), "unexpanded variable in {out}");
        out
    }
}

/// "(a, f(b, c)) rest" → (["a", "f(b, c)"], " rest").
fn split_args(s: &str) -> (Vec<String>, &str) {
    let mut depth = 0;
    let mut args = vec![String::new()];
    for (i, c) in s.char_indices() {
        match c {
            '(' if depth == 0 => {
                depth = 1;
                continue;
            }
            '(' => depth += 1,
            ')' if depth == 1 => {
                let args = args
                    .into_iter()
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
                return (args, &s[i + 1..]);
            }
            ')' => depth -= 1,
            ',' if depth == 1 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().unwrap().push(c);
    }
    panic!("unbalanced parentheses in {s}");
}

/// Rows of a query, each column as text ("" for NULL), run with the simple
/// protocol as psql runs it.
pub async fn text_rows(db: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    db.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
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
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["datasource"]["uid"] != DB_UID {
            continue;
        }
        let sql = grafana.expand(var["query"].as_str().unwrap(), "1h");
        let col = usize::from(sql.contains("__value"));
        let values = text_rows(db, &sql)
            .await
            .into_iter()
            .map(|r| r[col].clone())
            .collect();
        let name = var["name"].as_str().unwrap();
        let values = picked
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or(values);
        grafana.vars.insert(name.to_owned(), values);
    }
    let target = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?} in {file}"));
    let sql = grafana.expand(
        target["targets"][0]["rawSql"].as_str().unwrap(),
        target["interval"].as_str().unwrap_or("1h"),
    );
    text_rows(db, &sql).await
}
