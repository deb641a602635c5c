-- tool_usage_daily and file_activity_daily group by keys taken from inside
-- `data`, with no limit: re-created to group by their bounded form
-- (agent_telemetry_group_key, sql/0009_group_key.sql), so that no accepted
-- row can make their refreshes fail. Otherwise as in 0008. They start
-- empty and read the raw rows in real time until their policies (re-added
-- by the policy step of every migrate) and the late-data refresher
-- materialise them; history older than the raw retention is not rebuilt
-- (docs/schema.md).

DROP MATERIALIZED VIEW tool_usage_daily;
DROP MATERIALIZED VIEW file_activity_daily;

CREATE MATERIALIZED VIEW tool_usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")                             AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'tool_name')                        AS tool_name,
       count(*)                                                               AS calls,
       count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error') AS failures,
       count(duration_ms)                                                     AS duration_count,
       sum(duration_ms)                                                       AS duration_ms_sum
FROM agent_events
WHERE event_type = 'tool_use' AND data ? 'tool_name'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'tool_name')
WITH NO DATA;

CREATE MATERIALIZED VIEW file_activity_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', "timestamp")       AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'path')       AS file_path,
       count(*) FILTER (WHERE event_type = 'file_read')  AS reads,
       count(*) FILTER (WHERE event_type <> 'file_read') AS writes,
       sum((data ->> 'lines_added')::bigint)            AS lines_added,
       sum((data ->> 'lines_removed')::bigint)          AS lines_removed
FROM agent_events
WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'path')
WITH NO DATA;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON tool_usage_daily, file_activity_daily TO agent_telemetry_reader;
    END IF;
END $$;
