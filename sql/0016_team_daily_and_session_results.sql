-- Per-organisation figures and per-agent-session results, in both storage
-- modes the same views (docs/schema.md, "Per-developer and per-organisation
-- figures").
--
-- team_daily: developer_daily summed per day and the organisation of each
-- row's project (NULL: projects in no organisation), read through the
-- projects table, so a project moved to another organisation moves its
-- history. `developers` is the distinct developers with a row that day;
-- `sessions` and `active_minutes` are developer_daily's summed: a session
-- that two developers, projects or agents touched counts once for each,
-- and active minutes are developer-minutes. Real time wherever
-- developer_daily is.
CREATE VIEW team_daily AS
SELECT d.bucket,
       p.organization_id,
       count(DISTINCT d.user_id)          AS developers,
       sum(d.sessions)::bigint            AS sessions,
       sum(d.events)::bigint              AS events,
       sum(d.llm_requests)::bigint        AS llm_requests,
       sum(d.input_tokens)                AS input_tokens,
       sum(d.output_tokens)               AS output_tokens,
       sum(d.cached_tokens)               AS cached_tokens,
       sum(d.cost_usd)                    AS cost_usd,
       sum(d.tool_calls)::bigint          AS tool_calls,
       sum(d.tool_errors)::bigint         AS tool_errors,
       sum(d.files_modified)::bigint      AS files_modified,
       sum(d.lines_added)                 AS lines_added,
       sum(d.lines_removed)               AS lines_removed,
       sum(d.commands)::bigint            AS commands,
       sum(d.errors)::bigint              AS errors,
       sum(d.active_minutes)::bigint      AS active_minutes
FROM developer_daily d
JOIN projects p ON p.id = d.project_id
GROUP BY d.bucket, p.organization_id;

-- What one agent session did and cost (the devlog design's per-run
-- results): the session as reported, and its events' figures. The git
-- branch is the session's context.git_branch, else the one its events name
-- most; hours saved is the client's estimate in metrics
-- (estimated_hours_saved), NULL when none or not a number.
CREATE VIEW agent_session_results AS
SELECT s.id                                                        AS session_id,
       s.agent_id,
       s.project_id,
       s.user_id,
       s.start_time,
       s.end_time,
       COALESCE(s.duration, extract(epoch FROM s.end_time - s.start_time)::integer) AS duration_s,
       s.outcome,
       s.quality_score,
       COALESCE(s.context ->> 'git_branch', e.git_branch)          AS git_branch,
       agent_telemetry_hours(s.metrics ->> 'estimated_hours_saved') AS hours_saved,
       COALESCE(e.events, 0)                                       AS events,
       COALESCE(e.llm_requests, 0)                                 AS llm_requests,
       e.input_tokens,
       e.output_tokens,
       e.cached_tokens,
       e.cost_usd,
       COALESCE(e.tool_calls, 0)                                   AS tool_calls,
       COALESCE(e.files_modified, 0)                               AS files_modified,
       e.lines_added,
       e.lines_removed
FROM agent_sessions s
LEFT JOIN LATERAL (
    SELECT count(*)                                                  AS events,
           count(*) FILTER (WHERE ev.model IS NOT NULL)              AS llm_requests,
           sum(ev.input_tokens)                                      AS input_tokens,
           sum(ev.output_tokens)                                     AS output_tokens,
           sum(ev.cached_tokens)                                     AS cached_tokens,
           sum(ev.cost_usd)                                          AS cost_usd,
           count(*) FILTER (WHERE ev.event_type = 'tool_use')        AS tool_calls,
           count(DISTINCT agent_telemetry_group_key(ev.data ->> 'path'))
               FILTER (WHERE ev.event_type IN ('file_write', 'file_modify')) AS files_modified,
           sum(agent_telemetry_count(ev.data ->> 'lines_added'))
               FILTER (WHERE ev.event_type IN ('file_write', 'file_modify')) AS lines_added,
           sum(agent_telemetry_count(ev.data ->> 'lines_removed'))
               FILTER (WHERE ev.event_type IN ('file_write', 'file_modify')) AS lines_removed,
           mode() WITHIN GROUP (ORDER BY ev.context ->> 'git_branch') AS git_branch
    FROM agent_events ev
    WHERE ev.session_id = s.id
) e ON true;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'agent_telemetry_reader') THEN
        GRANT SELECT ON team_daily, agent_session_results TO agent_telemetry_reader;
    END IF;
END $$;
