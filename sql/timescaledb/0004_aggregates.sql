-- Continuous aggregates: what the dashboards read. All four answer in real
-- time (materialized_only = false): buckets not yet materialised are
-- computed from the raw rows at query time. Refresh and retention policies
-- are configuration (policies.sql); late rows are refreshed by the service
-- (src/maintain/refresh.rs). sql/plain/0004_aggregates.sql defines the same
-- relations as plain views; keep the two in step.

-- Per hour, project, agent and event type. Sums are kept beside averages so
-- the daily rollup can compute exact averages from them.
CREATE MATERIALIZED VIEW agent_events_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
       project_id,
       agent_id,
       event_type,
       count(*)                                  AS event_count,
       count(*) FILTER (WHERE severity = 'error') AS error_count,
       count(duration_ms)                        AS duration_count,
       sum(duration_ms)                          AS duration_ms_sum,
       avg(duration_ms)                          AS duration_ms_avg,
       max(duration_ms)                          AS duration_ms_max,
       sum(input_tokens)                         AS input_tokens,
       sum(output_tokens)                        AS output_tokens,
       sum(cached_tokens)                        AS cached_tokens,
       sum(cost_usd)                             AS cost_usd
FROM agent_events
GROUP BY bucket, project_id, agent_id, event_type
WITH NO DATA;

-- Per day, built on the hourly aggregate (hierarchical): a day's refresh
-- reads 24 hourly rows per group instead of every raw event.
CREATE MATERIALIZED VIEW agent_events_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket)             AS bucket,
       project_id,
       agent_id,
       event_type,
       sum(event_count)::bigint                          AS event_count,
       sum(error_count)::bigint                          AS error_count,
       sum(duration_count)::bigint                       AS duration_count,
       sum(duration_ms_sum)                              AS duration_ms_sum,
       sum(duration_ms_sum) / NULLIF(sum(duration_count), 0) AS duration_ms_avg,
       max(duration_ms_max)                              AS duration_ms_max,
       sum(input_tokens)                                 AS input_tokens,
       sum(output_tokens)                                AS output_tokens,
       sum(cached_tokens)                                AS cached_tokens,
       sum(cost_usd)                                     AS cost_usd
FROM agent_events_hourly
GROUP BY 1, project_id, agent_id, event_type
WITH NO DATA;

-- LLM calls per day, project, agent and model: an event that names a model
-- is one call. Percentiles are exact per day (TimescaleDB 2.7+ finalises
-- ordered-set aggregates in continuous aggregates); they cannot be rolled up
-- further, which is why this view reads the raw rows.
CREATE MATERIALIZED VIEW llm_usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")                          AS bucket,
       project_id,
       agent_id,
       model,
       count(*)                                                            AS requests,
       count(*) FILTER (WHERE severity = 'error')                          AS error_count,
       sum(input_tokens)                                                   AS input_tokens,
       sum(output_tokens)                                                  AS output_tokens,
       sum(cached_tokens)                                                  AS cached_tokens,
       sum(cost_usd)                                                       AS cost_usd,
       avg(duration_ms)                                                    AS latency_ms_avg,
       max(duration_ms)                                                    AS latency_ms_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)            AS latency_ms_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)           AS latency_ms_p95
FROM agent_events
WHERE model IS NOT NULL
GROUP BY 1, project_id, agent_id, model
WITH NO DATA;

-- Chat activity per hour, project, agent type and role.
CREATE MATERIALIZED VIEW chat_activity_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
       project_id,
       agent_type,
       role,
       count(*)                                    AS messages,
       sum(octet_length(content))::bigint          AS content_bytes,
       count(DISTINCT session_id)                  AS sessions
FROM chat_messages
GROUP BY bucket, project_id, agent_type, role
WITH NO DATA;
