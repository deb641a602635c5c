-- Plain PostgreSQL: the view of sql/timescaledb/0026 (LLM requests per
-- hour, developer and project), so both modes show the same rows.
CREATE VIEW developer_requests_hourly AS
SELECT date_trunc('hour', "timestamp")             AS bucket,
       user_id,
       project_id,
       count(*)                                    AS requests,
       sum(input_tokens)                           AS input_tokens,
       sum(output_tokens)                          AS output_tokens,
       sum(cached_tokens)                          AS cached_tokens,
       sum(cost_usd)                               AS cost_usd,
       min("timestamp")                            AS first_request,
       max("timestamp")                            AS last_request
FROM agent_events
WHERE model IS NOT NULL
GROUP BY 1, user_id, project_id;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON developer_requests_hourly TO agent_telemetry_reader;
    END IF;
END $$;
