-- What the "Agent activity" dashboard ranks over long ranges: tools and
-- files per day. Both read the raw rows (a tool or file name is not in the
-- hourly aggregate's grouping) and answer in real time like the others.
-- Conventions they rely on (docs/api.md): a `tool_use` event names its
-- tool in data.tool_name (and data.success = false when it failed); a
-- file event (`file_read`, `file_write`, `file_modify`) names its file in
-- data.path. sql/plain/0008_activity_aggregates.sql defines the same
-- relations as views; keep the two in step.

CREATE MATERIALIZED VIEW tool_usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")                             AS bucket,
       project_id,
       agent_id,
       data ->> 'tool_name'                                                   AS tool_name,
       count(*)                                                               AS calls,
       count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error') AS failures,
       count(duration_ms)                                                     AS duration_count,
       sum(duration_ms)                                                       AS duration_ms_sum
FROM agent_events
WHERE event_type = 'tool_use' AND data ? 'tool_name'
GROUP BY 1, project_id, agent_id, data ->> 'tool_name'
WITH NO DATA;

CREATE MATERIALIZED VIEW file_activity_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp") AS bucket,
       project_id,
       agent_id,
       data ->> 'path'                            AS file_path,
       count(*) FILTER (WHERE event_type = 'file_read')  AS reads,
       count(*) FILTER (WHERE event_type <> 'file_read') AS writes,
       sum((data ->> 'lines_added')::bigint)      AS lines_added,
       sum((data ->> 'lines_removed')::bigint)    AS lines_removed
FROM agent_events
WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'
GROUP BY 1, project_id, agent_id, data ->> 'path'
WITH NO DATA;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON tool_usage_daily, file_activity_daily TO agent_telemetry_reader;
    END IF;
END $$;
