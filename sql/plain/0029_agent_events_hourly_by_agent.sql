-- Plain PostgreSQL: the view of sql/timescaledb/0029 (events per hour,
-- agent and event type over every project), so both modes show the same
-- rows.
CREATE VIEW agent_events_hourly_by_agent AS
SELECT bucket,
       agent_id,
       event_type,
       sum(event_count)::bigint                 AS event_count,
       sum(error_count)::bigint                 AS error_count
FROM agent_events_hourly
GROUP BY 1, agent_id, event_type;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON agent_events_hourly_by_agent TO agent_telemetry_reader;
    END IF;
END $$;
