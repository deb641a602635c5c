//! Grafana's side of the provisioned dashboards (deploy/grafana/dashboards):
//! the files, and its PostgreSQL datasource's macro and variable expansion
//! (`$__timeFilter`, `$__timeGroupAlias`, `$__timeFrom`, `$__interval`,
//! variables on "All"), so that the suite and `bench dashboards` run each
//! query as Grafana would send it.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

/// The datasource uid of the database in the provisioned dashboards.
pub const DB_UID: &str = "agent-telemetry-db";

/// Every dashboard file in `dir`, by name, in name order.
pub fn dashboards(dir: &Path) -> Result<Vec<(String, Value)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let json =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
        out.push((
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            json,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Rows of a query, each column as text ("" for NULL), run with the simple
/// protocol as Grafana's datasource and psql run it.
pub async fn text_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Whether a variable or panel target queries the database (not Prometheus).
pub fn is_db(v: &Value) -> bool {
    v["datasource"]["uid"] == DB_UID
}

/// A variable that holds one value at a time (neither multi-value nor
/// "All"): Grafana opens it on its first option.
pub fn single_valued(var: &Value) -> bool {
    var["multi"] != true && var["includeAll"] != true
}

/// What Grafana substitutes: the time range, and each variable's values
/// ("All" selected: every value the variable's query returned).
pub struct Grafana {
    pub from: String,
    pub to: String,
    pub vars: BTreeMap<String, Vec<String>>,
}

/// "1h", "'1d'", "30s" → seconds.
fn seconds(interval: &str) -> Result<u64, String> {
    let s = interval.trim().trim_matches('\'');
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("interval {interval:?}"))?;
    Ok(n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("interval unit {other:?} in {interval:?}")),
    })
}

impl Grafana {
    /// Runs each database variable of `dash` in order, as Grafana does (a
    /// variable's query may use the ones before it), and sets it to every
    /// value it returned ("All"); `picked` variables get the given values
    /// instead, as a team lead picks them.
    pub async fn load_variables(
        &mut self,
        client: &tokio_postgres::Client,
        dash: &Value,
        picked: &[(&str, Vec<String>)],
    ) -> Result<(), String> {
        let empty = Vec::new();
        for var in dash["templating"]["list"].as_array().unwrap_or(&empty) {
            if !is_db(var) {
                continue;
            }
            let name = var["name"].as_str().unwrap_or_default();
            let values = match picked.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => v.clone(),
                None if single_valued(var) => {
                    // Grafana opens such a variable on its first option.
                    let mut all = self.options(client, var, name).await?;
                    all.truncate(1);
                    all
                }
                None => self.options(client, var, name).await?,
            };
            self.vars.insert(name.to_owned(), values);
        }
        Ok(())
    }

    /// A variable's options, as its query lists them.
    async fn options(
        &self,
        client: &tokio_postgres::Client,
        var: &Value,
        name: &str,
    ) -> Result<Vec<String>, String> {
        let sql = self.expand(var["query"].as_str().unwrap_or_default(), "1h")?;
        // `__value` is the second column where the query names one.
        let col = usize::from(sql.contains("__value"));
        let rows = text_rows(client, &sql).await.map_err(|e| {
            format!(
                "variable ${name}: {}\n{sql}",
                crate::db::error::describe(&e)
            )
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|mut r| (r.len() > col).then(|| r.swap_remove(col)))
            .collect())
    }

    /// Expands one query. `interval` is the panel's `$__interval` (its
    /// minimum interval, which is what Grafana uses over long ranges).
    pub fn expand(&self, sql: &str, interval: &str) -> Result<String, String> {
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
                    "interval_ms" => out.push_str(&(seconds(interval)? * 1000).to_string()),
                    other => return Err(format!("unknown Grafana macro $__{other} in {sql}")),
                }
                rest = after;
                continue;
            }
            let (args, after) = split_args(after)?;
            let arg = |i: usize| -> Result<String, String> {
                let a = args
                    .get(i)
                    .ok_or_else(|| format!("$__{name} needs argument {i}: {sql}"))?;
                Ok(a.replace("$__interval", interval))
            };
            out.push_str(&match name {
                "timeFilter" => format!("{} BETWEEN '{}' AND '{}'", arg(0)?, self.from, self.to),
                "timeFrom" => format!("'{}'", self.from),
                "timeTo" => format!("'{}'", self.to),
                "timeGroup" | "timeGroupAlias" => {
                    let s = seconds(&arg(1)?)?;
                    let group = format!("floor(extract(epoch from {})/{s})*{s}", arg(0)?);
                    if name == "timeGroupAlias" {
                        format!("{group} AS \"time\"")
                    } else {
                        group
                    }
                }
                other => return Err(format!("unknown Grafana macro $__{other} in {sql}")),
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
            // `${var:sqlstring}` quotes a single value too (a plain `$var`
            // is quoted only when the variable is multi-value or "All").
            out = out
                .replace(&format!("${{{var}:sqlstring}}"), &list)
                .replace(&format!("${{{var}}}"), &list)
                .replace(&format!("${var}"), &list);
        }
        if out.contains('$') {
            return Err(format!("unexpanded variable in {out}"));
        }
        Ok(out)
    }
}

/// "(a, f(b, c)) rest" → (["a", "f(b, c)"], " rest").
fn split_args(s: &str) -> Result<(Vec<String>, &str), String> {
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
                return Ok((args, &s[i + 1..]));
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
    Err(format!("unbalanced parentheses in {s}"))
}
