-- Plain PostgreSQL: the views of sql/timescaledb/0010 (the same bounded
-- keys, agent_telemetry_group_key), so both modes show the same rows.

CREATE OR REPLACE VIEW tool_usage_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'tool_name')                        AS tool_name,
       count(*)                                                               AS calls,
       count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error') AS failures,
       count(duration_ms)                                                     AS duration_count,
       sum(duration_ms)                                                       AS duration_ms_sum
FROM agent_events
WHERE event_type = 'tool_use' AND data ? 'tool_name'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'tool_name');

CREATE OR REPLACE VIEW file_activity_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'path')       AS file_path,
       count(*) FILTER (WHERE event_type = 'file_read')  AS reads,
       count(*) FILTER (WHERE event_type <> 'file_read') AS writes,
       sum((data ->> 'lines_added')::bigint)            AS lines_added,
       sum((data ->> 'lines_removed')::bigint)          AS lines_removed
FROM agent_events
WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'path');
