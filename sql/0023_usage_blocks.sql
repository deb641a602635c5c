-- Usage windows: agents' plans are metered in 5-hour windows, each starting
-- at a developer's first request after the last window ended (floored to
-- the hour, as ccusage's blocks are), across every project and agent of
-- that developer. A window is computed from the requests themselves (rows
-- with a model), so its figures are the raw rows' at every moment, late
-- rows and resends included; no aggregate holds them.
--
-- Returns each developer's windows with a request in [since, until): a
-- window that began more than five hours before `since` is seen from its
-- first request at or after `since - 5 hours`. SECURITY INVOKER (the
-- default), so an organisation's reader reads its own rows' windows
-- through its own views.
CREATE FUNCTION agent_telemetry_usage_blocks(since timestamptz, until timestamptz)
RETURNS TABLE (
    user_id        integer,
    block_start    timestamptz,
    block_end      timestamptz,
    first_activity timestamptz,
    last_activity  timestamptz,
    requests       bigint,
    input_tokens   bigint,
    output_tokens  bigint,
    cached_tokens  bigint,
    cost_usd       numeric
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r       record;
    open    boolean := false;
    who     integer;
    started timestamptz;
    first_t timestamptz;
    last_t  timestamptz;
    n bigint; i bigint; o bigint; c bigint; usd numeric;
BEGIN
    FOR r IN
        SELECT e.user_id AS uid, e."timestamp" AS ts, e.input_tokens AS it,
               e.output_tokens AS ot, e.cached_tokens AS ct, e.cost_usd AS cu
        FROM agent_events e
        WHERE e.model IS NOT NULL
          AND e."timestamp" >= since - INTERVAL '5 hours' AND e."timestamp" < until
        ORDER BY e.user_id NULLS FIRST, e."timestamp"
    LOOP
        IF open AND (r.uid IS DISTINCT FROM who OR r.ts >= started + INTERVAL '5 hours') THEN
            IF last_t >= since THEN
                user_id := who; block_start := started; block_end := started + INTERVAL '5 hours';
                first_activity := first_t; last_activity := last_t; requests := n;
                input_tokens := i; output_tokens := o; cached_tokens := c; cost_usd := usd;
                RETURN NEXT;
            END IF;
            open := false;
        END IF;
        IF NOT open THEN
            open := true; who := r.uid; started := date_trunc('hour', r.ts); first_t := r.ts;
            n := 0; i := 0; o := 0; c := 0; usd := 0;
        END IF;
        last_t := r.ts;
        n := n + 1;
        i := i + coalesce(r.it, 0);
        o := o + coalesce(r.ot, 0);
        c := c + coalesce(r.ct, 0);
        usd := usd + coalesce(r.cu, 0);
    END LOOP;
    IF open AND last_t >= since THEN
        user_id := who; block_start := started; block_end := started + INTERVAL '5 hours';
        first_activity := first_t; last_activity := last_t; requests := n;
        input_tokens := i; output_tokens := o; cached_tokens := c; cost_usd := usd;
        RETURN NEXT;
    END IF;
END
$$;
