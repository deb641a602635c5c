-- One row per agent session and day (per developer, project, agent and
-- model within it): what exact distinct counts of sessions and the
-- per-session panels read. Summing developer_daily's `sessions` over days,
-- agents or projects counts a session once per day and key it touched; a
-- panel counts count(DISTINCT session_id) over this view instead (a second
-- aggregation). The one rollup whose size follows sessions rather than
-- days × keys, on purpose: a few rows per session-day against the
-- session's hundreds of events. `model` is NULL for the session's events
-- that name none (rows with a model are its LLM calls). docs/schema.md,
-- "Sessions per day".
CREATE MATERIALIZED VIEW session_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp") AS bucket,
       session_id,
       user_id,
       project_id,
       agent_id,
       model,
       count(*)                                   AS events,
       sum(input_tokens)                          AS input_tokens,
       sum(output_tokens)                         AS output_tokens,
       sum(cached_tokens)                         AS cached_tokens,
       sum(cost_usd)                              AS cost_usd,
       count(*) FILTER (WHERE severity IN ('error', 'critical')
                          OR event_type = 'error_encountered') AS errors,
       min("timestamp")                           AS first_event,
       max("timestamp")                           AS last_event
FROM agent_events
GROUP BY 1, session_id, user_id, project_id, agent_id, model
WITH NO DATA;

-- A session's days (the drill-down finds its time range here first).
CREATE INDEX session_daily_session_idx ON session_daily (session_id, bucket);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON session_daily TO agent_telemetry_reader;
    END IF;
END $$;
