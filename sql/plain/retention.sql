-- Not a numbered migration: re-created on every `migrate`. Without
-- TimescaleDB there are no retention jobs, so the service deletes expired
-- rows on a timer (--retention-every, src/maintain/retention.rs), calling
-- this once per slice: each call is its own short transaction, so retention
-- never holds locks or a snapshot for long. Returns the rows deleted; the
-- caller repeats while it returns `batch_rows`. The aggregates are views
-- over the raw rows here, so they shrink with them (docs/schema.md).
CREATE OR REPLACE FUNCTION agent_telemetry_delete_expired(
    rel regclass, keep interval, batch_rows integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format(
        'DELETE FROM %s WHERE ctid = ANY (ARRAY(
             SELECT ctid FROM %s WHERE "timestamp" < now() - $1 LIMIT $2))',
        rel, rel)
    USING keep, batch_rows;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
