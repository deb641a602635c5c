-- Plain PostgreSQL: the views of sql/timescaledb/0015 (file_activity_daily
-- counting lines with agent_telemetry_count; developer_daily), so both
-- modes show the same rows.

CREATE OR REPLACE VIEW file_activity_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'path')            AS file_path,
       count(*) FILTER (WHERE event_type = 'file_read')       AS reads,
       count(*) FILTER (WHERE event_type <> 'file_read')      AS writes,
       sum(agent_telemetry_count(data ->> 'lines_added'))    AS lines_added,
       sum(agent_telemetry_count(data ->> 'lines_removed'))  AS lines_removed
FROM agent_events
WHERE event_type IN ('file_read', 'file_write', 'file_modify') AND data ? 'path'
GROUP BY 1, project_id, agent_id, agent_telemetry_group_key(data ->> 'path');

CREATE VIEW developer_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
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
       count(DISTINCT date_trunc('minute', "timestamp"))         AS active_minutes
FROM agent_events
GROUP BY 1, user_id, project_id, agent_id;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON developer_daily TO agent_telemetry_reader;
    END IF;
END $$;
