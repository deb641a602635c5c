-- Dashboards' queries run without JIT compilation. They read rollups and
-- take milliseconds, but the planner's estimates for hypertables and for
-- views with a LATERAL over agent_events (agent_session_results) exceed
-- jit_above_cost, and compiling took longer than the query: "Agent
-- sessions" spent 118 of its 138 ms compiling at 10M events, with no
-- session to show (BENCHMARKS.md, "Dashboards at scale"). Per database, for
-- the reader role Grafana logs in as; an organisation's reader roles get the
-- same from src/db/readers.rs.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        EXECUTE format('ALTER ROLE agent_telemetry_reader IN DATABASE %I SET jit = off',
                       current_database());
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot set jit = off for agent_telemetry_reader (%); dashboards then pay for JIT compilation (docs/deployment.md)', SQLERRM;
END $$;
