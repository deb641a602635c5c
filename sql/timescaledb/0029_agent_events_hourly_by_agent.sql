-- Events per hour, agent and event type over every project: what the Agent
-- activity dashboard's hourly panels read when every project is selected
-- (the usual view, "All"). agent_events_hourly keeps the project in its
-- key, so a month of it holds hours × projects × agents × event types
-- rows, filling as events grow (224k rows at 10M events over 30 days,
-- 0.2–0.35 s per panel); this one holds hours × agents × event types.
-- It reads the raw rows, as agent_events_hourly does: built on that one
-- (hierarchical), a refresh of both over a range that holds the current
-- hour after rows were deleted there (`users forget`) left the deleted
-- rows in this one on TimescaleDB 2.28.3. A panel with some projects picked reads
-- agent_events_hourly as before (docs/schema.md, "Rollups without the
-- project"). An organisation's reader reads it as its own projects'
-- agent_events_hourly summed (src/db/readers.rs).
CREATE MATERIALIZED VIEW agent_events_hourly_by_agent
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
       agent_id,
       event_type,
       count(*)                                   AS event_count,
       count(*) FILTER (WHERE severity = 'error') AS error_count
FROM agent_events
GROUP BY 1, agent_id, event_type
WITH NO DATA;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON agent_events_hourly_by_agent TO agent_telemetry_reader;
    END IF;
END $$;
