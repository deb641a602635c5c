-- Per-developer figures, and file_activity_daily counting lines safely.
--
-- file_activity_daily summed (data ->> 'lines_added')::bigint: one event
-- with "lines_added": "1.5" (valid JSON, so accepted) failed every later
-- refresh of it. Re-created with agent_telemetry_count (sql/0014), as 0010
-- re-created it before: it starts empty and reads the raw rows in real time
-- until its policy and the late-data refresher materialise it.
--
-- developer_daily: per day, developer (user_id; NULL for rows that name
-- none), project and agent. Sessions are distinct session ids; active
-- minutes are distinct minutes with at least one event; files modified are
-- distinct paths (in their bounded form) of file_write and file_modify
-- events; lines as file_activity_daily counts them; commands are
-- command_execution events; errors are error-severity or error_encountered
-- events. Every distinct count is exact per bucket: a bucket is
-- materialised whole or read from the raw rows whole. docs/schema.md,
-- "Per-developer and per-organisation figures".

DROP MATERIALIZED VIEW file_activity_daily;

CREATE MATERIALIZED VIEW file_activity_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")            AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'path')            AS file_path,
       count(*) FILTER (WHERE event_type = 'file_read')       AS reads,
       count(*) FILTER (WHERE event_type <> 'file_read')      AS writes,
       sum(agent_telemetry_count(data ->> 'lines_added'))    AS lines_added,
       sum(agent_telemetry_count(data ->> 'lines_removed'))  AS lines_removed
FROM agent_events
WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'path')
WITH NO DATA;

CREATE MATERIALIZED VIEW developer_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")                            AS bucket,
       user_id,
       project_id,
       agent_id,
       count(DISTINCT session_id)                                            AS sessions,
       count(*)                                                              AS events,
       count(*) FILTER (WHERE model IS NOT NULL)                             AS llm_requests,
       sum(input_tokens)                                                     AS input_tokens,
       sum(output_tokens)                                                    AS output_tokens,
       sum(cached_tokens)                                                    AS cached_tokens,
       sum(cost_usd)                                                         AS cost_usd,
       count(*) FILTER (WHERE event_type = 'tool_use')                       AS tool_calls,
       count(*) FILTER (WHERE event_type = 'tool_use'
                          AND (data ->> 'success' = 'false' OR severity = 'error')) AS tool_errors,
       count(DISTINCT agent_telemetry_group_key(data ->> 'path'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify'))        AS files_modified,
       sum(agent_telemetry_count(data ->> 'lines_added'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify'))        AS lines_added,
       sum(agent_telemetry_count(data ->> 'lines_removed'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify'))        AS lines_removed,
       count(*) FILTER (WHERE event_type = 'command_execution')              AS commands,
       count(*) FILTER (WHERE severity = 'error'
                          OR event_type = 'error_encountered')               AS errors,
       count(DISTINCT time_bucket(INTERVAL '1 minute', "timestamp"))         AS active_minutes
FROM agent_events
GROUP BY 1, user_id, project_id, agent_id
WITH NO DATA;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON file_activity_daily, developer_daily TO agent_telemetry_reader;
    END IF;
END $$;
