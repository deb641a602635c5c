-- LLM requests per hour, developer and project: what the 5-hour usage
-- windows are computed from (sql/0027). A window starts on the hour, so
-- every hour lies wholly inside one window and the windows computed from
-- these rows equal those computed from the requests themselves, while the
-- rows read follow hours × developers × projects, not requests. The
-- project is kept so an organisation's reader sees its own projects' hours
-- only (src/db/readers.rs).
CREATE MATERIALIZED VIEW developer_requests_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
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
GROUP BY 1, user_id, project_id
WITH NO DATA;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON developer_requests_hourly TO agent_telemetry_reader;
    END IF;
END $$;
