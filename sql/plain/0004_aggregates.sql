-- Plain PostgreSQL (no TimescaleDB): the aggregate relations as ordinary
-- views with the same names, columns and bucket boundaries (date_bin from
-- the same origin as time_bucket), so every query and dashboard works
-- unchanged; they compute from the raw rows on each query. Keep in step with
-- sql/timescaledb/0004_aggregates.sql.

CREATE VIEW agent_events_hourly AS
SELECT date_bin(INTERVAL '1 hour', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
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
GROUP BY 1, project_id, agent_id, event_type;

CREATE VIEW agent_events_daily AS
SELECT date_bin(INTERVAL '1 day', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_id,
       event_type,
       sum(event_count)::bigint                              AS event_count,
       sum(error_count)::bigint                              AS error_count,
       sum(duration_count)::bigint                           AS duration_count,
       sum(duration_ms_sum)                                  AS duration_ms_sum,
       sum(duration_ms_sum) / NULLIF(sum(duration_count), 0) AS duration_ms_avg,
       max(duration_ms_max)                                  AS duration_ms_max,
       sum(input_tokens)                                     AS input_tokens,
       sum(output_tokens)                                    AS output_tokens,
       sum(cached_tokens)                                    AS cached_tokens,
       sum(cost_usd)                                         AS cost_usd
FROM agent_events_hourly
GROUP BY 1, project_id, agent_id, event_type;

CREATE VIEW llm_usage_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_id,
       model,
       count(*)                                                  AS requests,
       count(*) FILTER (WHERE severity = 'error')                AS error_count,
       sum(input_tokens)                                         AS input_tokens,
       sum(output_tokens)                                        AS output_tokens,
       sum(cached_tokens)                                        AS cached_tokens,
       sum(cost_usd)                                             AS cost_usd,
       avg(duration_ms)                                          AS latency_ms_avg,
       max(duration_ms)                                          AS latency_ms_max,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)  AS latency_ms_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS latency_ms_p95
FROM agent_events
WHERE model IS NOT NULL
GROUP BY 1, project_id, agent_id, model;

CREATE VIEW chat_activity_hourly AS
SELECT date_bin(INTERVAL '1 hour', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_type,
       role,
       count(*)                           AS messages,
       sum(octet_length(content))::bigint AS content_bytes,
       count(DISTINCT session_id)         AS sessions
FROM chat_messages
GROUP BY 1, project_id, agent_type, role;
