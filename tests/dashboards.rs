//! The provisioned Grafana dashboards (deploy/grafana/dashboards) against
//! the schema: every variable query and every panel's SQL, with Grafana's
//! macros and variables expanded the way Grafana's PostgreSQL datasource
//! expands them, runs as the read-only role on a database filled by
//! `loadgen`, and returns rows. On TimescaleDB (PGlite every run, native
//! where installed) and on plain PostgreSQL.

mod common;

use agent_telemetry::bench::grafana::is_db;
use common::grafana::{Grafana, dashboards};

use std::collections::{BTreeMap, BTreeSet};

use agent_telemetry::{
    config::{ServeConfig, TimescaleMode},
    loadgen::{self, LoadgenConfig},
    pb,
};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows of a query, each column as text (the simple protocol, as psql).
async fn rows(db: &Client, sql: &str, what: &str) -> Vec<Vec<Option<String>>> {
    db.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}\n{sql}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn fill(cfg: ServeConfig, conn: &str) {
    let svc = common::start_service(cfg.clone()).await;
    let summary = loadgen::run(&LoadgenConfig {
        client: agent_telemetry::config::ClientConfig::at(svc.endpoint.clone()),
        events: 6_000,
        messages: 1_500,
        streams: 2,
        batch_size: 500,
        rate: 0.0,
        window: 4,
        seed: 11,
        projects: 4,
        gzip: false,
        spread: None,
        quiet: true,
    })
    .await
    .expect("loadgen");
    assert_eq!(summary.rows_stored, 7_500, "{summary}");
    let mut client = common::client(&svc.endpoint).await;
    let ack = common::ingest(&mut client, 1, session_across_midnight()).await;
    assert_eq!(ack.stored, 2, "{ack:?}");
    drop(client);
    svc.running.shutdown().await.unwrap();
    report_agent_sessions(cfg, conn).await;
}

/// Two LLM calls of one session, a minute before and a minute after
/// yesterday's midnight (UTC): a session the daily rollups see on two days,
/// which a count of sessions over the range must count once.
fn session_across_midnight() -> Vec<pb::AgentEvent> {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let midnight_age = now_s.rem_euclid(86_400) + 86_400;
    let session = uuid::Uuid::new_v4().to_string();
    [midnight_age + 60, midnight_age - 60]
        .into_iter()
        .map(|age| pb::AgentEvent {
            event_type: "llm_request".into(),
            session_id: session.clone(),
            model: Some("claude-sonnet-4-5".into()),
            input_tokens: Some(1_000),
            output_tokens: Some(100),
            cost_usd: Some(0.25),
            user: Some(loadgen::r#gen::developer(3)),
            ..common::event("org1/service-1", age)
        })
        .collect()
}

/// Each generated session reported as an editor extension reports it at
/// its end (loadgen sends events only): its time span, an outcome, its
/// branch and a client's estimate of hours saved.
async fn report_agent_sessions(cfg: ServeConfig, conn: &str) {
    // Read while the service is stopped: PGlite serves one client at a time.
    let db = common::db(conn).await;
    let sessions = db
        .query(
            "SELECT e.session_id::text, min(e.agent_id), min(p.full_name), min(e.\"timestamp\"), max(e.\"timestamp\"),
                    min(u.key), min(e.context ->> 'git_branch')
             FROM agent_events e JOIN projects p ON p.id = e.project_id LEFT JOIN users u ON u.id = e.user_id
             GROUP BY e.session_id",
            &[],
        )
        .await
        .expect("the generated sessions");
    let ts = |t: std::time::SystemTime| Some(prost_types::Timestamp::from(t));
    let agent_sessions: Vec<pb::AgentSession> = sessions
        .iter()
        .enumerate()
        .map(|(i, r)| pb::AgentSession {
            id: r.get(0),
            agent_id: r.get(1),
            agent_version: "1.0".into(),
            project: r.get(2),
            start_time: ts(r.get(3)),
            end_time: ts(r.get(4)),
            context_json: serde_json::json!({ "git_branch": r.get::<_, Option<String>>(6) })
                .to_string(),
            metrics_json: serde_json::json!({ "estimated_hours_saved": (i % 4) as f64 * 0.5 })
                .to_string(),
            outcome: ["success", "partial", "failure"][i % 3].into(),
            user: r.get::<_, Option<String>>(5).map(|key| pb::User {
                key,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    drop(db);
    let svc = common::start_service(cfg).await;
    let mut client = common::client(&svc.endpoint).await;
    let ack = client
        .report_sessions(pb::SessionReport {
            chat_sessions: Vec::new(),
            agent_sessions: agent_sessions.clone(),
        })
        .await
        .expect("report the sessions")
        .into_inner();
    assert_eq!(
        ack.agent_sessions_stored as usize,
        agent_sessions.len(),
        "{ack:?}"
    );
    svc.running.shutdown().await.unwrap();
}

/// Fills the database, then runs every query as the reader role, and again
/// as a reader of one organisation (src/db/readers.rs): Grafana's
/// organisation of one tenant reads the same dashboards through its views.
async fn every_query_returns_rows(conn: &str, mut cfg: ServeConfig, label: &str) {
    cfg.storage.reader_password = Some("grafana".into());
    fill(cfg, conn).await;
    let db = common::db(conn).await;
    db.batch_execute("SET ROLE agent_telemetry_reader")
        .await
        .expect("the reader role exists");
    let queries = every_query(&db).await;
    common::say(&format!(
        "dashboards ({label}): {queries} queries ran as agent_telemetry_reader, each returned rows"
    ));
    assert!(queries >= 25, "only {queries} SQL queries found");
    session_drill_down_shows_the_picked_session(&db, label).await;
    productivity_totals_are_the_raw_rows(&db, label).await;
    usage_windows_are_the_raw_requests(&db, label).await;
    sessions_are_counted_once(&db, label).await;
    hourly_panels_count_every_event_either_way(&db, label).await;
    agent_sessions_are_the_views_rows(&db, label).await;
    drop(db);

    let out = common::cli(
        conn,
        &[
            "readers",
            "create",
            "--organization",
            "org1",
            "--role",
            "grafana_org1",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = common::db(conn).await;
    // As a login would: the role and its search_path.
    let path = common::strings(
        &db,
        "SELECT substr(c, 13) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole,
                unnest(s.setconfig) c
         WHERE r.rolname = 'grafana_org1' AND c LIKE 'search_path=%'",
    )
    .await
    .remove(0);
    // Dashboards' short queries are not JIT-compiled (sql/0028).
    let no_jit = common::strings(
        &db,
        "SELECT DISTINCT r.rolname::text FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole,
                unnest(s.setconfig) c
         WHERE c = 'jit=off' AND r.rolname IN ('agent_telemetry_reader', 'grafana_org1')
           AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
         ORDER BY 1",
    )
    .await;
    assert_eq!(no_jit, ["agent_telemetry_reader", "grafana_org1"]);
    db.batch_execute(&format!("SET ROLE grafana_org1; SET search_path = {path}"))
        .await
        .unwrap();
    let again = every_query(&db).await;
    assert_eq!(again, queries);
    common::say(&format!(
        "dashboards ({label}): the same {again} queries ran as org1's reader, each returned rows"
    ));
}

/// The session drill-down with one session picked, as a team lead picks
/// it from its list: the totals are the session's raw rows aggregated, the
/// timeline is every one of its events in time order, the prompts and
/// replies every one of its messages in sequence.
async fn session_drill_down_shows_the_picked_session(db: &Client, label: &str) {
    use common::grafana::{panel, panel_with};
    let file = "session.json";
    let recent = panel(db, file, "Recent agent sessions", 30).await;
    assert!(recent.len() >= 10, "{recent:?}");
    // The busiest of the listed sessions.
    let pick = recent
        .iter()
        .max_by_key(|r| r[5].parse::<i64>().unwrap())
        .unwrap()[0]
        .clone();
    let picked = [("session", vec![pick.clone()])];
    let direct = rows(
        db,
        &format!(
            "SELECT count(*), round(sum(cost_usd), 4), sum(input_tokens), min(agent_id)
             FROM agent_events WHERE session_id = '{pick}'"
        ),
        "the session's raw rows",
    )
    .await
    .remove(0);
    // The list's own figures for it are its raw rows too.
    let listed = recent.iter().find(|r| r[0] == pick).unwrap();
    assert_eq!(
        Some(listed[5].clone()),
        direct[0],
        "Recent agent sessions' events for {pick}: {listed:?}"
    );
    let totals = panel_with(db, file, "Totals", 30, &picked).await;
    assert_eq!(totals.len(), 1, "{totals:?}");
    let t = &totals[0];
    assert_eq!(
        (
            Some(t[4].clone()),
            Some(t[9].clone()),
            Some(t[6].clone()),
            Some(t[3].clone())
        ),
        (
            direct[0].clone(),
            direct[1].clone(),
            direct[2].clone(),
            direct[3].clone()
        ),
        "Totals (events, cost, input tokens, agent) against the raw rows: {t:?}"
    );
    let timeline = panel_with(db, file, "Timeline", 30, &picked).await;
    assert_eq!(Some(timeline.len().to_string()), direct[0], "every event");
    assert!(
        timeline.windows(2).all(|w| w[0][0] <= w[1][0]),
        "in time order"
    );
    // Loadgen's chat sessions are not its agent runs: the busiest one, as
    // picked from the same list.
    let busiest = rows(
        db,
        "SELECT session_id::text, count(*)::text FROM chat_messages GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        "the busiest chat session",
    )
    .await
    .remove(0);
    let chat_pick = busiest[0].clone().unwrap();
    let chat = panel_with(
        db,
        file,
        "Prompts and replies",
        30,
        &[("session", vec![chat_pick])],
    )
    .await;
    assert_eq!(Some(chat.len().to_string()), busiest[1], "every message");
    assert!(
        chat.windows(2)
            .all(|w| w[0][2].parse::<i64>().unwrap() <= w[1][2].parse::<i64>().unwrap()),
        "in sequence"
    );
    common::say(&format!(
        "dashboards ({label}): session drill-down of {pick}: {} events, {} messages, totals as the raw rows",
        timeline.len(),
        chat.len()
    ));
}

/// The Productivity dashboard's totals, all projects, agents and
/// developers, against the same figures computed from the raw rows.
async fn productivity_totals_are_the_raw_rows(db: &Client, label: &str) {
    let totals = common::grafana::panel(db, "productivity.json", "Totals", 30).await;
    assert_eq!(totals.len(), 1, "{totals:?}");
    let t = &totals[0];
    let direct = rows(
        db,
        "WITH e AS (SELECT * FROM agent_events WHERE \"timestamp\" > now() - INTERVAL '31 days')
         SELECT (SELECT sum(agent_telemetry_count(data ->> 'lines_added')) FROM e
                 WHERE event_type IN ('file_write', 'file_modify', 'metric')),
                (SELECT sum(agent_telemetry_count(data ->> 'lines_removed')) FROM e
                 WHERE event_type IN ('file_write', 'file_modify', 'metric')),
                (SELECT sum(n) FROM (SELECT count(DISTINCT agent_telemetry_group_key(data ->> 'path')) AS n
                                     FROM e WHERE event_type IN ('file_write', 'file_modify')
                                     GROUP BY date_trunc('day', \"timestamp\" AT TIME ZONE 'UTC'),
                                              user_id, project_id, agent_id) f),
                (SELECT count(*) FROM e WHERE data ->> 'accepted' = 'true'),
                (SELECT count(*) FROM e WHERE data ->> 'accepted' = 'false'),
                (SELECT count(*) FROM e WHERE event_type = 'git_commit'),
                (SELECT count(*) FROM e WHERE event_type = 'pull_request')",
        "productivity from the raw rows",
    )
    .await
    .remove(0);
    let shown: Vec<Option<String>> = [0, 1, 2, 3, 4, 6, 7]
        .iter()
        .map(|&i| Some(t[i].clone()))
        .collect();
    assert_eq!(
        shown, direct,
        "Totals (lines added, removed, files modified, accepted, rejected, commits, pull requests) against the raw rows: {t:?}"
    );
    for (i, what) in [
        (3, "accepted"),
        (4, "rejected"),
        (6, "commits"),
        (7, "pull requests"),
    ] {
        assert!(t[i].parse::<i64>().unwrap() > 0, "{what}: {t:?}");
    }
    common::say(&format!(
        "dashboards ({label}): productivity totals as the raw rows: {}",
        t.join(" | ")
    ));
}

/// The Developers dashboard's 5-hour usage windows against the raw
/// requests, windowed here as the agents' plans meter them: a developer's
/// window starts at their first request after the last window ended,
/// floored to the hour, and lasts five hours; the first window is seen
/// from the hour five hours before the range.
async fn usage_windows_are_the_raw_requests(db: &Client, label: &str) {
    let days = 30;
    let shown: BTreeSet<(String, i64, i64)> =
        common::grafana::panel(db, "developers.json", "Usage windows (5-hour blocks)", days)
            .await
            .into_iter()
            .map(|r| (r[0].clone(), r[3].parse().unwrap(), r[4].parse().unwrap()))
            .collect();
    let requests = db
        .query(
            &format!(
                "SELECT coalesce(u.display_name, u.key, '(no developer)'), e.user_id,
                        extract(epoch FROM e.\"timestamp\")::float8,
                        extract(epoch FROM date_trunc('hour', e.\"timestamp\"))::float8,
                        coalesce(e.input_tokens, 0) + coalesce(e.output_tokens, 0),
                        extract(epoch FROM now() - INTERVAL '{days} days')::float8
                 FROM agent_events e LEFT JOIN users u ON u.id = e.user_id
                 WHERE e.model IS NOT NULL
                   AND e.\"timestamp\" >= date_trunc('hour', now() - INTERVAL '{days} days' - INTERVAL '5 hours')
                 ORDER BY e.user_id NULLS FIRST, e.\"timestamp\""
            ),
            &[],
        )
        .await
        .unwrap();
    // (developer, user id, start, last request, requests, tokens)
    let mut windows: Vec<(String, Option<i32>, f64, f64, i64, i64)> = Vec::new();
    let mut since = 0.0;
    for r in &requests {
        let (who, id, at, hour, tokens): (String, Option<i32>, f64, f64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        since = r.get(5);
        match windows.last_mut() {
            Some(w) if w.1 == id && at < w.2 + 5.0 * 3600.0 => {
                w.3 = at;
                w.4 += 1;
                w.5 += tokens;
            }
            _ => windows.push((who, id, hour, at, 1, tokens)),
        }
    }
    let direct: BTreeSet<(String, i64, i64)> = windows
        .into_iter()
        .filter(|w| w.3 >= since)
        .map(|w| (w.0, w.4, w.5))
        .collect();
    assert!(!direct.is_empty(), "the fill has requests");
    assert_eq!(shown, direct, "usage windows against the raw requests");
    common::say(&format!(
        "dashboards ({label}): {} usage windows as the raw requests",
        shown.len()
    ));
}

/// Sessions over the range, per developer, are the raw rows' distinct
/// sessions (the session across midnight counted once, not once a day),
/// and the most expensive sessions' costs are their raw LLM calls' costs.
async fn sessions_are_counted_once(db: &Client, label: &str) {
    let per_developer: BTreeSet<(String, String)> =
        common::grafana::panel(db, "developers.json", "Per developer", 30)
            .await
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
    let raw: BTreeSet<(String, String)> = rows(
        db,
        "SELECT coalesce(u.display_name, u.key, '(no developer)'), count(DISTINCT e.session_id)::text
         FROM agent_events e LEFT JOIN users u ON u.id = e.user_id GROUP BY 1",
        "sessions per developer from the raw rows",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect();
    assert_eq!(per_developer, raw, "Per developer: sessions");
    let costly = common::grafana::panel(db, "llm-cost.json", "Most expensive sessions", 30).await;
    assert!(!costly.is_empty());
    for r in &costly {
        let raw = rows(
            db,
            &format!(
                "SELECT round(sum(cost_usd), 4)::text, count(*)::text FROM agent_events
                 WHERE session_id = '{}' AND model IS NOT NULL",
                r[0]
            ),
            "a session's calls from the raw rows",
        )
        .await
        .remove(0);
        assert_eq!(
            (Some(r[4].clone()), Some(r[3].clone())),
            (raw[0].clone(), raw[1].clone()),
            "Most expensive sessions: cost and requests of {r:?}"
        );
    }
    let across = rows(
        db,
        "SELECT session_id::text FROM agent_events WHERE cost_usd = 0.25 GROUP BY 1
         HAVING count(DISTINCT date_trunc('day', \"timestamp\")) = 2",
        "the session across midnight",
    )
    .await;
    assert_eq!(across.len(), 1, "the fill has a session across midnight");
    common::say(&format!(
        "dashboards ({label}): sessions per developer and the {} most expensive sessions as the raw rows, a session across midnight counted once",
        costly.len()
    ));
}

/// The Agent activity dashboard's hourly panels read the rollup over every
/// project when every project is selected and the per-project one when some
/// are: either way, their events are the raw rows'.
async fn hourly_panels_count_every_event_either_way(db: &Client, label: &str) {
    let events = |table: Vec<Vec<String>>| -> i64 {
        table.iter().map(|r| r[2].parse::<i64>().unwrap()).sum()
    };
    let raw = |filter: &str| {
        let sql = format!("SELECT count(*)::text FROM agent_events {filter}");
        async move {
            rows(db, &sql, "events from the raw rows").await[0][0]
                .clone()
                .unwrap()
        }
    };
    let all = events(
        common::grafana::panel(db, "agent-activity.json", "Events per hour by type", 30).await,
    );
    assert_eq!(
        all.to_string(),
        raw("").await,
        "every project (the rollup over every project)"
    );
    let some: Vec<String> = rows(
        db,
        "SELECT id::text FROM projects ORDER BY id OFFSET 1",
        "projects",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert!(!some.is_empty());
    let picked = [("project", some.clone())];
    let part = events(
        common::grafana::panel_with(
            db,
            "agent-activity.json",
            "Events per hour by type",
            30,
            &picked,
        )
        .await,
    );
    assert_eq!(
        part.to_string(),
        raw(&format!("WHERE project_id IN ({})", some.join(", "))).await,
        "all projects but one (the per-project rollup)"
    );
    assert!(0 < part && part < all, "{part} of {all}");
    common::say(&format!(
        "dashboards ({label}): events per hour, every project and all but one, as the raw rows: {all}, {part}"
    ));
}

/// agent_session_results_since (what "Agent sessions" reads, bounded for
/// the planner) holds the view's rows: all of them from the beginning of
/// time, and the fill's sessions from the range's start less a day.
async fn agent_sessions_are_the_views_rows(db: &Client, label: &str) {
    let differ = |since: &str| {
        let sql = format!(
            "SELECT count(*)::text FROM ((SELECT * FROM agent_session_results
                 EXCEPT ALL SELECT * FROM agent_session_results_since({since}))
              UNION ALL (SELECT * FROM agent_session_results_since({since})
                 EXCEPT ALL SELECT * FROM agent_session_results)) d"
        );
        async move {
            rows(db, &sql, "the view against the function").await[0][0]
                .clone()
                .unwrap()
        }
    };
    assert_eq!(differ("'-infinity'").await, "0");
    assert_eq!(differ("now() - INTERVAL '31 days'").await, "0");
    let shown = common::grafana::panel(db, "developers.json", "Agent sessions", 30).await;
    assert!(!shown.is_empty());
    common::say(&format!(
        "dashboards ({label}): Agent sessions: {} sessions, the view's rows",
        shown.len()
    ));
}

/// Runs every variable and panel query; returns how many.
async fn every_query(db: &Client) -> usize {
    let db = &db;
    let now = std::time::SystemTime::now();
    let fmt = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let mut grafana = Grafana {
        from: fmt(now - std::time::Duration::from_secs(30 * 86_400)),
        to: fmt(now + std::time::Duration::from_secs(60)),
        vars: BTreeMap::new(),
    };
    let mut queries = 0;
    for (file, dash) in dashboards() {
        // Variables first: a panel's query uses their values.
        grafana.vars.clear();
        for var in dash["templating"]["list"].as_array().unwrap() {
            if !is_db(var) {
                continue;
            }
            let name = var["name"].as_str().unwrap();
            let sql = grafana
                .expand(var["query"].as_str().unwrap(), "1h")
                .unwrap();
            let what = format!("{file}: variable ${name}");
            let found = rows(db, &sql, &what).await;
            assert!(!found.is_empty(), "{what} has no values\n{sql}");
            // `__value` is the second column where the query names one.
            let col = if sql.contains("__value") { 1 } else { 0 };
            let values = found.into_iter().filter_map(|r| r[col].clone()).collect();
            grafana.vars.insert(name.to_owned(), values);
            queries += 1;
        }
        for panel in dash["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            let interval = panel["interval"].as_str().unwrap_or("1h");
            for target in panel["targets"].as_array().unwrap() {
                if !is_db(target) {
                    continue;
                }
                let sql = grafana
                    .expand(target["rawSql"].as_str().unwrap(), interval)
                    .unwrap();
                let what = format!("{file}: panel {title:?}");
                let found = rows(db, &sql, &what).await;
                assert!(!found.is_empty(), "{what} returned no rows\n{sql}");
                queries += 1;
            }
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_rows_on_timescaledb_pglite() {
    let tsdb = common::TsDb::pglite();
    every_query_returns_rows(&tsdb.conn, tsdb.serve_config(), "TimescaleDB in PGlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_rows_on_timescaledb_native() {
    let Some(tsdb) = common::TsDb::native("every_dashboard_query_returns_rows_on_native").await
    else {
        return;
    };
    every_query_returns_rows(&tsdb.conn, tsdb.serve_config(), "native TimescaleDB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_rows_on_plain_postgres() {
    let pg = common::TestCluster::start();
    let conn = pg.database("plain").await;
    let mut cfg = common::serve_config(&conn);
    cfg.storage.timescaledb = TimescaleMode::Off;
    every_query_returns_rows(&conn, cfg, "plain PostgreSQL").await;
}

/// The expander itself, on Grafana's documented expansions.
#[test]
fn macros_expand_as_grafana_expands_them() {
    let g = Grafana {
        from: "2026-11-01T00:00:00Z".into(),
        to: "2026-11-02T00:00:00Z".into(),
        vars: [("project".to_owned(), vec!["1".to_owned(), "o'k".to_owned()])]
            .into_iter()
            .collect(),
    };
    assert_eq!(
        g.expand(
            "SELECT $__timeGroupAlias(bucket, $__interval), x FROM t WHERE $__timeFilter(bucket) AND p IN ($project) AND b > $__timeFrom()",
            "1h"
        )
        .unwrap(),
        "SELECT floor(extract(epoch from bucket)/3600)*3600 AS \"time\", x FROM t WHERE bucket BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-02T00:00:00Z' AND p IN ('1','o''k') AND b > '2026-11-01T00:00:00Z'"
    );
    assert_eq!(
        g.expand("p IN (${project:sqlstring})", "1h").unwrap(),
        "p IN ('1','o''k')"
    );
    assert_eq!(
        g.expand("$__timeGroup(date_trunc('day', t), '1d')", "1h")
            .unwrap(),
        "floor(extract(epoch from date_trunc('day', t))/86400)*86400"
    );
}
