-- The bounded form in which the aggregates group a key they take from
-- inside `data` (a tool name, a file path), where validation sets no limit.
-- A continuous aggregate keeps an index on each GROUP BY column of its
-- materialisation table; a btree entry holds at most 2704 bytes, so one
-- 3 KB tool name or a 100 KB path would make every later refresh of the
-- aggregate fail, for every project. Keys up to 1024 bytes (the limit of
-- every validated key field, src/validate.rs) stay as they are; a longer
-- one becomes its first 240 characters, '…#', and 16 hex digits of its
-- md5: at most 980 bytes, and distinct keys stay apart.
CREATE FUNCTION agent_telemetry_group_key(key text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN octet_length(key) <= 1024 THEN key
        ELSE left(key, 240) || '…#' || left(md5(key), 16)
    END
$$;
