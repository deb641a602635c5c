-- agent_session_results (sql/0016) for sessions whose events begin at or
-- after `since`: the same rows, with the LATERAL over agent_events bounded
-- by `since` as well as by the session. The view's LATERAL names the
-- session alone, so the planner planned every chunk of agent_events for it
-- (0.4 s of planning at 100M events over a year, for no session at all); a
-- SQL function of one SELECT is inlined, `since` becomes the constant the
-- dashboard passes, and chunks before it are excluded while planning. The
-- Developers dashboard's "Agent sessions" passes the range's start less a
-- day: a listed session started in the range, so its events are after it
-- unless the client's clock put them more than a day before the session's
-- reported start. Runs with the caller's rights and names its relations
-- unqualified, so an organisation's reader reads its own views.
CREATE FUNCTION agent_session_results_since(since timestamptz)
RETURNS SETOF agent_session_results
LANGUAGE sql STABLE AS $$
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
    WHERE ev.session_id = s.id AND ev."timestamp" >= since
) e ON true
$$;
