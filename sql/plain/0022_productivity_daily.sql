-- Plain PostgreSQL: the view of sql/timescaledb/0022.
-- Productivity figures: what the agents' work produced, per day, developer
-- (user_id; NULL for rows that name none), project and agent.
--
-- - files_modified: distinct paths (bounded form) of file_write and
--   file_modify events, as developer_daily counts them;
-- - lines_added / lines_removed: counted on file_write and file_modify
--   events and on the metric rows of agents that export line counters
--   (Claude Code's lines_of_code, delta points only: the OTLP mapping puts
--   the count in data.lines_added / data.lines_removed);
-- - tool decisions: rows whose data.accepted is true or false (the OTLP
--   mapping sets it from Claude Code's and Codex's tool_decision and
--   Gemini CLI's tool_call; native clients set it themselves);
-- - commits / pull_requests: a git_commit (pull_request) event counts its
--   data.commits (data.pull_requests), else one; a metric row counts its
--   data.commits (data.pull_requests) (Claude Code's commit and
--   pull_request counters).
--
-- Every figure goes through agent_telemetry_count or a text comparison, so
-- no accepted JSON value can make a refresh fail. docs/schema.md,
-- "Productivity figures".

CREATE VIEW productivity_daily AS
SELECT date_bin(INTERVAL '1 day', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       user_id,
       project_id,
       agent_id,
       count(DISTINCT agent_telemetry_group_key(data ->> 'path'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify'))        AS files_modified,
       sum(agent_telemetry_count(data ->> 'lines_added'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify', 'metric')) AS lines_added,
       sum(agent_telemetry_count(data ->> 'lines_removed'))
           FILTER (WHERE event_type IN ('file_write', 'file_modify', 'metric')) AS lines_removed,
       count(*) FILTER (WHERE data ->> 'accepted' = 'true')                  AS tools_accepted,
       count(*) FILTER (WHERE data ->> 'accepted' = 'false')                 AS tools_rejected,
       sum(CASE WHEN event_type = 'git_commit'
                THEN coalesce(agent_telemetry_count(data ->> 'commits'), 1)
                WHEN event_type = 'metric'
                THEN agent_telemetry_count(data ->> 'commits') END)          AS commits,
       sum(CASE WHEN event_type = 'pull_request'
                THEN coalesce(agent_telemetry_count(data ->> 'pull_requests'), 1)
                WHEN event_type = 'metric'
                THEN agent_telemetry_count(data ->> 'pull_requests') END)    AS pull_requests
FROM agent_events
WHERE event_type IN ('file_write', 'file_modify', 'metric', 'git_commit', 'pull_request')
   OR data ? 'accepted'
GROUP BY 1, user_id, project_id, agent_id;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON productivity_daily TO agent_telemetry_reader;
    END IF;
END $$;
