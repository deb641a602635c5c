-- Figures the aggregates take from inside `data` (lines added and removed)
-- as counts: an integer of up to 18 digits, else NULL (not counted). A cast
-- such as (data ->> 'lines_added')::bigint fails on "1.5", "many" or 1e30,
-- which validation accepts inside a JSON object, and a failed cast fails
-- the whole refresh of the aggregate, for every project. Not counted is
-- the honest answer for a value that is not a count.
CREATE FUNCTION agent_telemetry_count(v text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v ~ '^-?[0-9]{1,18}$' THEN v::bigint END
$$;

-- A client's estimate of hours saved (agent_sessions.metrics): a decimal
-- of up to 9 digits before and 6 after the point, else NULL.
CREATE FUNCTION agent_telemetry_hours(v text)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v ~ '^-?[0-9]{1,9}(\.[0-9]{1,6})?$' THEN v::numeric END
$$;
