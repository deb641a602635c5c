//! What every TimescaleDB test checks: each continuous aggregate against
//! the same figures computed directly from the raw rows, in real time and
//! materialised only; and the inputs that reach the storage's limits.

use tokio_postgres::Client;

/// Each test as `<name>::pglite` and `<name>::native` (the test file has
/// `TsDb` in scope).
#[macro_export]
macro_rules! on_timescaledb {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pglite() {
                super::$name(super::TsDb::pglite()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                if let Some(db) = super::TsDb::native(concat!(stringify!($name), "::native")).await {
                    super::$name(db).await
                }
            }
        }
    )*};
}

pub const ORIGIN: &str = "TIMESTAMPTZ '2000-01-03 00:00:00+00'";

/// (view, its columns, the same figures computed directly from raw rows).
pub fn direct_aggregates() -> Vec<(&'static str, &'static str, String)> {
    let events = |width: &str, filter: &str, keys: &str, figures: &str| {
        format!(
            "SELECT date_bin(INTERVAL '{width}', \"timestamp\", {ORIGIN}) AS bucket, {keys}, {figures}
             FROM agent_events {filter} GROUP BY 1, {keys}"
        )
    };
    let event_figures = "count(*), count(*) FILTER (WHERE severity = 'error'), count(duration_ms),
        sum(duration_ms), max(duration_ms), sum(input_tokens), sum(output_tokens),
        sum(cached_tokens), sum(cost_usd)";
    vec![
        (
            "agent_events_hourly",
            "bucket, project_id, agent_id, event_type, event_count, error_count, duration_count,
             duration_ms_sum, duration_ms_max, input_tokens, output_tokens, cached_tokens,
             cost_usd, duration_ms_avg",
            events(
                "1 hour",
                "",
                "project_id, agent_id, event_type",
                &format!("{event_figures}, avg(duration_ms)"),
            ),
        ),
        (
            "agent_events_hourly_by_agent",
            "bucket, agent_id, event_type, event_count, error_count",
            events(
                "1 hour",
                "",
                "agent_id, event_type",
                "count(*), count(*) FILTER (WHERE severity = 'error')",
            ),
        ),
        (
            "agent_events_daily",
            "bucket, project_id, agent_id, event_type, event_count, error_count, duration_count,
             duration_ms_sum, duration_ms_max, input_tokens, output_tokens, cached_tokens,
             cost_usd, duration_ms_avg",
            events(
                "1 day",
                "",
                "project_id, agent_id, event_type",
                &format!(
                    "{event_figures}, sum(duration_ms) / NULLIF(count(duration_ms), 0)"
                ),
            ),
        ),
        (
            "llm_usage_daily",
            "bucket, project_id, agent_id, model, requests, error_count, input_tokens,
             output_tokens, cached_tokens, cost_usd, latency_ms_avg, latency_ms_max,
             latency_ms_p50, latency_ms_p95",
            events(
                "1 day",
                "WHERE model IS NOT NULL",
                "project_id, agent_id, model",
                "count(*), count(*) FILTER (WHERE severity = 'error'), sum(input_tokens),
                 sum(output_tokens), sum(cached_tokens), sum(cost_usd), avg(duration_ms),
                 max(duration_ms), percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)",
            ),
        ),
        (
            "tool_usage_daily",
            "bucket, project_id, agent_id, tool_name, calls, failures, duration_count, duration_ms_sum",
            events(
                "1 day",
                "WHERE event_type = 'tool_use' AND data ? 'tool_name'",
                "project_id, agent_id, agent_telemetry_group_key(data ->> 'tool_name')",
                "count(*), count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error'),
                 count(duration_ms), sum(duration_ms)",
            ),
        ),
        (
            "file_activity_daily",
            "bucket, project_id, agent_id, file_path, reads, writes, lines_added, lines_removed",
            events(
                "1 day",
                "WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'",
                "project_id, agent_id, agent_telemetry_group_key(data ->> 'path')",
                "count(*) FILTER (WHERE event_type = 'file_read'),
                 count(*) FILTER (WHERE event_type <> 'file_read'),
                 sum(agent_telemetry_count(data ->> 'lines_added')),
                 sum(agent_telemetry_count(data ->> 'lines_removed'))",
            ),
        ),
        (
            "developer_daily",
            DEVELOPER_COLUMNS,
            developer_direct(),
        ),
        (
            "developer_models_daily",
            "bucket, user_id, project_id, agent_id, model, requests, error_count, input_tokens,
             output_tokens, cached_tokens, cost_usd",
            events(
                "1 day",
                "WHERE model IS NOT NULL",
                "user_id, project_id, agent_id, model",
                "count(*), count(*) FILTER (WHERE severity = 'error'), sum(input_tokens),
                 sum(output_tokens), sum(cached_tokens), sum(cost_usd)",
            ),
        ),
        (
            "developer_tools_daily",
            "bucket, user_id, project_id, agent_id, tool_name, calls, failures, duration_count,
             duration_ms_sum",
            events(
                "1 day",
                "WHERE event_type = 'tool_use' AND data ? 'tool_name'",
                "user_id, project_id, agent_id, agent_telemetry_group_key(data ->> 'tool_name')",
                "count(*), count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error'),
                 count(duration_ms), sum(duration_ms)",
            ),
        ),
        (
            "productivity_daily",
            "bucket, user_id, project_id, agent_id, files_modified, lines_added, lines_removed,
             tools_accepted, tools_rejected, commits, pull_requests",
            events(
                "1 day",
                "WHERE event_type IN ('file_write', 'file_modify', 'metric', 'git_commit', 'pull_request')
                    OR data ? 'accepted'",
                "user_id, project_id, agent_id",
                "count(DISTINCT agent_telemetry_group_key(data ->> 'path'))
                     FILTER (WHERE event_type IN ('file_write', 'file_modify')),
                 sum(agent_telemetry_count(data ->> 'lines_added'))
                     FILTER (WHERE event_type IN ('file_write', 'file_modify', 'metric')),
                 sum(agent_telemetry_count(data ->> 'lines_removed'))
                     FILTER (WHERE event_type IN ('file_write', 'file_modify', 'metric')),
                 count(*) FILTER (WHERE data ->> 'accepted' = 'true'),
                 count(*) FILTER (WHERE data ->> 'accepted' = 'false'),
                 sum(CASE WHEN event_type = 'git_commit'
                          THEN coalesce(agent_telemetry_count(data ->> 'commits'), 1)
                          WHEN event_type = 'metric'
                          THEN agent_telemetry_count(data ->> 'commits') END),
                 sum(CASE WHEN event_type = 'pull_request'
                          THEN coalesce(agent_telemetry_count(data ->> 'pull_requests'), 1)
                          WHEN event_type = 'metric'
                          THEN agent_telemetry_count(data ->> 'pull_requests') END)",
            ),
        ),
        (
            "session_daily",
            "bucket, session_id, user_id, project_id, agent_id, model, events, input_tokens,
             output_tokens, cached_tokens, cost_usd, errors, first_event, last_event",
            events(
                "1 day",
                "",
                "session_id, user_id, project_id, agent_id, model",
                "count(*), sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(cost_usd),
                 count(*) FILTER (WHERE severity IN ('error', 'critical')
                                    OR event_type = 'error_encountered'),
                 min(\"timestamp\"), max(\"timestamp\")",
            ),
        ),
        (
            "developer_requests_hourly",
            "bucket, user_id, project_id, requests, input_tokens, output_tokens, cached_tokens,
             cost_usd, first_request, last_request",
            events(
                "1 hour",
                "WHERE model IS NOT NULL",
                "user_id, project_id",
                "count(*), sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(cost_usd),
                 min(\"timestamp\"), max(\"timestamp\")",
            ),
        ),
        (
            "team_daily",
            "bucket, organization_id, developers, sessions, events, llm_requests, input_tokens,
             output_tokens, cached_tokens, cost_usd, tool_calls, tool_errors, files_modified,
             lines_added, lines_removed, commands, errors, active_minutes",
            format!(
                "SELECT d.bucket, p.organization_id, count(DISTINCT d.user_id), sum(d.sessions),
                        sum(d.events), sum(d.llm_requests), sum(d.input_tokens), sum(d.output_tokens),
                        sum(d.cached_tokens), sum(d.cost_usd), sum(d.tool_calls), sum(d.tool_errors),
                        sum(d.files_modified), sum(d.lines_added), sum(d.lines_removed),
                        sum(d.commands), sum(d.errors), sum(d.active_minutes)
                 FROM ({}) d JOIN projects p ON p.id = d.project_id GROUP BY 1, 2",
                developer_direct()
            ),
        ),
        (
            "chat_activity_hourly",
            "bucket, project_id, agent_type, role, messages, content_bytes, sessions",
            format!(
                "SELECT date_bin(INTERVAL '1 hour', \"timestamp\", {ORIGIN}) AS bucket, project_id, agent_type,
                        role, count(*), sum(octet_length(content)), count(DISTINCT session_id)
                 FROM chat_messages GROUP BY 1, 2, 3, 4"
            ),
        ),
    ]
}

const DEVELOPER_COLUMNS: &str = "bucket, user_id, project_id, agent_id, sessions, events,
    llm_requests, input_tokens, output_tokens, cached_tokens, cost_usd, tool_calls, tool_errors,
    files_modified, lines_added, lines_removed, commands, errors, active_minutes";

/// developer_daily's figures, from the raw rows (an active minute: a
/// minute with at least one event; a modified file: a distinct path).
fn developer_direct() -> String {
    format!(
        "SELECT date_bin(INTERVAL '1 day', \"timestamp\", {ORIGIN}) AS bucket, user_id, project_id, agent_id,
                count(DISTINCT session_id) AS sessions, count(*) AS events,
                count(*) FILTER (WHERE model IS NOT NULL) AS llm_requests,
                sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                sum(cached_tokens) AS cached_tokens, sum(cost_usd) AS cost_usd,
                count(*) FILTER (WHERE event_type = 'tool_use') AS tool_calls,
                count(*) FILTER (WHERE event_type = 'tool_use'
                                   AND (data ->> 'success' = 'false' OR severity = 'error')) AS tool_errors,
                count(DISTINCT CASE WHEN event_type IN ('file_write', 'file_modify')
                                    THEN agent_telemetry_group_key(data ->> 'path') END) AS files_modified,
                sum(agent_telemetry_count(data ->> 'lines_added'))
                    FILTER (WHERE event_type IN ('file_write', 'file_modify')) AS lines_added,
                sum(agent_telemetry_count(data ->> 'lines_removed'))
                    FILTER (WHERE event_type IN ('file_write', 'file_modify')) AS lines_removed,
                count(*) FILTER (WHERE event_type = 'command_execution') AS commands,
                count(*) FILTER (WHERE severity = 'error' OR event_type = 'error_encountered') AS errors,
                count(DISTINCT date_trunc('minute', \"timestamp\")) AS active_minutes
         FROM agent_events GROUP BY 1, 2, 3, 4"
    )
}

/// Asserts each aggregate holds exactly the direct figures, and is not empty.
pub async fn assert_aggregates_exact(db: &Client) {
    for (view, _, _) in direct_aggregates() {
        let rows = super::count(db, &format!("SELECT count(*) FROM {view}")).await;
        assert!(rows > 0, "{view} is empty");
    }
    assert_aggregates_match(db, |_| "true".into()).await;
}

/// Asserts each aggregate holds exactly the direct figures in the buckets
/// `filter(view)` (an SQL condition on `bucket`) selects.
pub async fn assert_aggregates_match(db: &Client, filter: impl Fn(&str) -> String) {
    for (view, cols, direct) in direct_aggregates() {
        let cond = filter(view);
        let mine = format!("SELECT {cols} FROM {view} WHERE {cond}");
        let direct = format!("SELECT * FROM ({direct}) d WHERE {cond}");
        let diff = super::count(
            db,
            &format!(
                "SELECT count(*) FROM (({mine} EXCEPT ALL {direct}) UNION ALL ({direct} EXCEPT ALL {mine})) d"
            ),
        )
        .await;
        if diff != 0 {
            let rows = super::grafana::text_rows(
                db,
                &format!(
                    "(SELECT 'aggregate' AS side, * FROM ({mine} EXCEPT ALL {direct}) a LIMIT 10)
                     UNION ALL (SELECT 'raw rows', * FROM ({direct} EXCEPT ALL {mine}) r LIMIT 10)"
                ),
            )
            .await;
            panic!("{view} differs from the raw rows in {diff} rows ({cond}): {rows:?}");
        }
    }
}

/// Whether `view` has hourly buckets (else daily).
pub fn is_hourly(view: &str) -> bool {
    view.ends_with("_hourly")
}

pub const VIEWS_IN_REFRESH_ORDER: [&str; 13] = [
    "agent_events_hourly",
    "agent_events_hourly_by_agent",
    "agent_events_daily",
    "llm_usage_daily",
    "tool_usage_daily",
    "file_activity_daily",
    "developer_daily",
    "developer_models_daily",
    "developer_tools_daily",
    "productivity_daily",
    "session_daily",
    "developer_requests_hourly",
    "chat_activity_hourly",
];

/// Materialises everything, then turns real-time off so that only
/// materialised figures are read.
pub async fn materialise_all(db: &Client) {
    // Native TimescaleDB's scheduler runs the refresh policies by itself; a
    // policy run colliding with the refresh below failed it once ("refresh
    // file_activity_daily: db error"). Off the schedule, only ours run.
    db.batch_execute(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
         WHERE proc_name = 'policy_refresh_continuous_aggregate'",
    )
    .await
    .expect("take the refresh policies off the schedule");
    for view in VIEWS_IN_REFRESH_ORDER {
        let sql = format!("CALL refresh_continuous_aggregate('{view}', NULL, NULL)");
        execute_allowing_a_collision(db, &sql).await;
    }
}

/// Runs `sql` (a refresh or a job), once more if it fails: a policy run of
/// native TimescaleDB's scheduler already under way when the schedule was
/// changed can collide with it once.
pub async fn execute_allowing_a_collision(db: &Client, sql: &str) {
    let mut attempt = 1;
    while let Err(e) = db.batch_execute(sql).await {
        assert!(attempt < 3, "{sql}: {e:?}");
        eprintln!("{sql}, attempt {attempt}: {e:?}; again");
        attempt += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn set_materialized_only(db: &Client, on: bool) {
    for view in VIEWS_IN_REFRESH_ORDER {
        db.batch_execute(&format!(
            "ALTER MATERIALIZED VIEW {view} SET (timescaledb.materialized_only = {on})"
        ))
        .await
        .unwrap_or_else(|e| panic!("{view}: {e}"));
    }
}

/// `bytes` bytes of incompressible text (random letters and digits, some
/// of them two bytes long), so no index entry gets smaller by compression.
pub fn noise(rng: &mut impl rand::Rng, bytes: usize) -> String {
    const CHARS: &[char] = &[
        'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'k', 'm', 'n', 'p', 'q', 'r', 's', 't', 'w', 'x',
        'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'é', 'ß', 'ø',
    ];
    let mut s = String::with_capacity(bytes);
    while s.len() < bytes {
        let c = CHARS[rng.random_range(0..CHARS.len())];
        if s.len() + c.len_utf8() <= bytes {
            s.push(c);
        } else {
            s.push('z');
        }
    }
    s
}
