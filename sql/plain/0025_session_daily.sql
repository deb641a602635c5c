-- Plain PostgreSQL: the view of sql/timescaledb/0025 (one row per agent
-- session, day, developer, project, agent and model), so both modes show
-- the same rows.
CREATE VIEW session_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
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
GROUP BY 1, session_id, user_id, project_id, agent_id, model;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON session_daily TO agent_telemetry_reader;
    END IF;
END $$;
