-- The read-only role dashboards connect as (Grafana's datasource): SELECT on
-- the data tables and the aggregates, nothing on API keys or the audit log,
-- no writes. It is created NOLOGIN; `migrate` (and `serve`) give it LOGIN
-- and a password when AGENT_TELEMETRY_READER_PASSWORD is set, so no secret
-- is written into a migration. A later migration that adds a relation the
-- dashboards read grants it here too.
--
-- Roles belong to the cluster, not the database: another database's
-- migration may have created it already, or be creating it right now
-- (duplicate_object, or unique_violation when the two race). A migrating
-- user without CREATEROLE gets a warning and no role, not a failed upgrade.
DO $$
BEGIN
    CREATE ROLE agent_telemetry_reader NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot create role agent_telemetry_reader (%); grant it to a role of your own by hand (docs/deployment.md)', SQLERRM;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO agent_telemetry_reader', current_schema());
        GRANT SELECT ON projects, machines, machine_projects, workspaces,
                        chat_sessions, agent_sessions, agent_events, chat_messages,
                        agent_events_hourly, agent_events_daily, llm_usage_daily,
                        chat_activity_hourly
            TO agent_telemetry_reader;
    END IF;
END $$;
