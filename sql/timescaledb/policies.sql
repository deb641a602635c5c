-- Not a numbered migration: re-created on every `migrate`, then called with
-- the configured settings (src/db/migrate.rs). It makes the policies match
-- the settings and reports, per policy, whether it was created, changed or
-- left unchanged, so running migrate twice with the same settings does
-- nothing the second time.
--
-- settings: {"chunk_interval": "1 day", "compress_after": "7 days",
--   "events_retention": "365 days", "messages_retention": "180 days",
--   "aggregates_retention": "1825 days",
--   "hourly": {"start_offset": ..., "end_offset": ..., "schedule": ...},
--   "daily":  {"start_offset": ..., "end_offset": ..., "schedule": ...}}

-- The job of policy `proc` on `rel` (a hypertable or a continuous aggregate,
-- whose jobs name its materialisation hypertable).
CREATE OR REPLACE FUNCTION agent_telemetry_job(proc text, rel text)
RETURNS timescaledb_information.jobs
LANGUAGE sql STABLE AS $$
    SELECT j.*
    FROM timescaledb_information.jobs j
    WHERE j.proc_name = proc
      AND j.hypertable_name IN (
          SELECT rel
          UNION ALL
          SELECT materialization_hypertable_name
          FROM timescaledb_information.continuous_aggregates
          WHERE view_name = rel)
    ORDER BY j.job_id
    LIMIT 1
$$;

-- True when every interval in `want` equals the job's config value
-- (compared as intervals: '1 day' = '24:00:00').
CREATE OR REPLACE FUNCTION agent_telemetry_same(config jsonb, want jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT config IS NOT NULL AND bool_and((config ->> k)::interval IS NOT DISTINCT FROM (want ->> k)::interval)
    FROM jsonb_object_keys(want) AS k
$$;

CREATE OR REPLACE FUNCTION agent_telemetry_apply_policies(settings jsonb)
RETURNS TABLE (policy text, relation text, action text)
LANGUAGE plpgsql AS $$
DECLARE
    ht      text;
    rel     text;
    key     text;
    setting text;
    current interval;
    job     timescaledb_information.jobs;
    want    jsonb;
    refresh jsonb;
BEGIN
    -- Chunk interval: applies to chunks created from now on.
    FOREACH ht IN ARRAY ARRAY['agent_events', 'chat_messages'] LOOP
        policy := 'chunk_interval';
        relation := ht;
        SELECT d.time_interval INTO current
        FROM timescaledb_information.dimensions d
        WHERE d.hypertable_name = ht AND d.dimension_number = 1;
        IF current = (settings ->> 'chunk_interval')::interval THEN
            action := 'unchanged';
        ELSE
            PERFORM set_chunk_time_interval(ht, (settings ->> 'chunk_interval')::interval);
            action := 'changed';
        END IF;
        RETURN NEXT;
    END LOOP;

    -- Compression and retention: one interval each, added and removed by
    -- add_<kind>_policy / remove_<kind>_policy.
    FOR policy, rel, key, setting IN
        SELECT v.kind, v.r, v.k, settings ->> v.s
        FROM (VALUES ('compression', 'agent_events',         'compress_after', 'compress_after'),
                     ('compression', 'chat_messages',        'compress_after', 'compress_after'),
                     ('retention',   'agent_events',         'drop_after', 'events_retention'),
                     ('retention',   'chat_messages',        'drop_after', 'messages_retention'),
                     ('retention',   'agent_events_hourly',  'drop_after', 'aggregates_retention'),
                     ('retention',   'agent_events_daily',   'drop_after', 'aggregates_retention'),
                     ('retention',   'llm_usage_daily',      'drop_after', 'aggregates_retention'),
                     ('retention',   'chat_activity_hourly', 'drop_after', 'aggregates_retention'),
                     ('retention',   'tool_usage_daily',     'drop_after', 'aggregates_retention'),
                     ('retention',   'file_activity_daily',  'drop_after', 'aggregates_retention'),
                     ('retention',   'developer_daily',      'drop_after', 'aggregates_retention'),
                     ('retention',   'developer_models_daily', 'drop_after', 'aggregates_retention'),
                     ('retention',   'developer_tools_daily', 'drop_after', 'aggregates_retention'),
                     ('retention',   'productivity_daily',   'drop_after', 'aggregates_retention'),
                     ('retention',   'session_daily',        'drop_after', 'aggregates_retention'),
                     ('retention',   'developer_requests_hourly', 'drop_after', 'aggregates_retention'),
                     ('retention',   'agent_events_hourly_by_agent', 'drop_after', 'aggregates_retention'))
             AS v(kind, r, k, s)
    LOOP
        relation := rel;
        job := agent_telemetry_job('policy_' || policy, rel);
        IF agent_telemetry_same(job.config, jsonb_build_object(key, setting)) THEN
            action := 'unchanged';
        ELSE
            action := CASE WHEN job.job_id IS NULL THEN 'created' ELSE 'changed' END;
            IF job.job_id IS NOT NULL THEN
                EXECUTE format('SELECT remove_%s_policy(%L)', policy, rel);
            END IF;
            EXECUTE format('SELECT add_%s_policy(%L, %I => %L::interval)', policy, rel, key, setting);
        END IF;
        RETURN NEXT;
    END LOOP;

    -- Refresh of the continuous aggregates: hourly ones, then daily ones.
    FOR rel, refresh IN
        SELECT r, settings -> k
        FROM (VALUES ('agent_events_hourly', 'hourly'),
                     ('agent_events_hourly_by_agent', 'hourly'),
                     ('chat_activity_hourly', 'hourly'),
                     ('developer_requests_hourly', 'hourly'),
                     ('agent_events_daily', 'daily'),
                     ('llm_usage_daily', 'daily'),
                     ('tool_usage_daily', 'daily'),
                     ('file_activity_daily', 'daily'),
                     ('developer_daily', 'daily'),
                     ('developer_models_daily', 'daily'),
                     ('developer_tools_daily', 'daily'),
                     ('productivity_daily', 'daily'),
                     ('session_daily', 'daily')) AS v(r, k)
    LOOP
        policy := 'refresh';
        relation := rel;
        want := jsonb_build_object('start_offset', refresh ->> 'start_offset',
                                   'end_offset', refresh ->> 'end_offset');
        job := agent_telemetry_job('policy_refresh_continuous_aggregate', rel);
        IF agent_telemetry_same(job.config, want)
           AND job.schedule_interval = (refresh ->> 'schedule')::interval THEN
            action := 'unchanged';
        ELSE
            action := CASE WHEN job.job_id IS NULL THEN 'created' ELSE 'changed' END;
            IF job.job_id IS NOT NULL THEN
                PERFORM remove_continuous_aggregate_policy(rel);
            END IF;
            PERFORM add_continuous_aggregate_policy(rel,
                start_offset => (refresh ->> 'start_offset')::interval,
                end_offset => (refresh ->> 'end_offset')::interval,
                schedule_interval => (refresh ->> 'schedule')::interval);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
