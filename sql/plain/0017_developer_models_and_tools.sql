-- Plain PostgreSQL: the views of sql/timescaledb/0017.
-- What the Developers dashboard ranks per developer: models and tools per
-- day, developer, project and agent (developer_daily has neither: a model
-- or a tool in its grouping would split its sessions and active minutes).
-- As llm_usage_daily and tool_usage_daily with user_id added; the tool
-- name in its bounded form (agent_telemetry_group_key).

CREATE VIEW developer_models_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       user_id,
       project_id,
       agent_id,
       model,
       count(*)                                          AS requests,
       count(*) FILTER (WHERE severity = 'error')        AS error_count,
       sum(input_tokens)                                 AS input_tokens,
       sum(output_tokens)                                AS output_tokens,
       sum(cached_tokens)                                AS cached_tokens,
       sum(cost_usd)                                     AS cost_usd
FROM agent_events
WHERE model IS NOT NULL
GROUP BY 1, user_id, project_id, agent_id, model;

CREATE VIEW developer_tools_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       user_id,
       project_id,
       agent_id,
       agent_telemetry_group_key(data ->> 'tool_name')   AS tool_name,
       count(*)                                          AS calls,
       count(*) FILTER (WHERE data ->> 'success' = 'false' OR severity = 'error') AS failures,
       count(duration_ms)                                AS duration_count,
       sum(duration_ms)                                  AS duration_ms_sum
FROM agent_events
WHERE event_type = 'tool_use' AND data ? 'tool_name'
GROUP BY 1, user_id, project_id, agent_id, agent_telemetry_group_key(data ->> 'tool_name');

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON developer_models_daily, developer_tools_daily TO agent_telemetry_reader;
    END IF;
END $$;
