-- The storage layouts of the two event tables (docs/schema.md, "Storage
-- layouts"), switched by agent_telemetry_set_layout, idempotently:
--
-- rowstore: the primary key (id, "timestamp") on agent_events and
--   chat_messages finds resends; COPY builds row-store tuples and indexes.
-- columnstore: no unique index on the wide tables, so TimescaleDB's direct
--   compress can COPY straight into compressed chunks (it refuses a table
--   with a unique index). Resends are found in narrow key tables, COPYed in
--   the same transaction: one (id, "timestamp") pair per row, unique by id,
--   so the COPY itself refuses an id stored before with any timestamp (a
--   resend, or an id reused with another time: docs/reliability.md, "One
--   id, one row") and no probe is needed before it. A hypertable's unique
--   index must hold its time column, so the key tables are plain tables,
--   two per event table:
--   - agent_event_keys, chat_message_keys: the keys of rows younger than
--     `key_window` (--key-window plus an hour for the clocks' difference),
--     where on-time rows' keys go. Small, so the COPY's B-tree inserts stay
--     in memory.
--   - agent_event_key_archive, chat_message_key_archive: the keys of older
--     rows, kept for `archive_window` (--max-past plus that hour: a row
--     older than --max-past is refused, so its key is never asked for).
--     Late rows' keys go here directly; the retention job moves the other
--     table's keys here as they age. A flush with rows past the key window
--     looks their ids up in both tables' primary keys before its COPY: one
--     index probe per id, whatever the table's size or the rows' spread in
--     time (BENCHMARKS.md, "Late rows at scale").
--   A BRIN index on the time finds the keys to move or delete, as keys
--   arrive in about time order. A row older than the archive window
--   (replayed from a spool after a long outage) is looked up in the wide
--   table's rows as well, so a missing key costs a look-up, not exactness.
--   (Key tables that were hypertables keyed by (id, "timestamp"), as first
--   built, are rebuilt from the rows of the key window.)
--
-- A switch to columnstore fills the key tables from the rows of the key
-- window and drops the primary keys; a switch back re-creates them (which
-- fails if a duplicate got in, and then changes nothing).
--
-- agent_events' segment-by follows the layout (docs/schema.md,
-- "Compression"): the row store's compress_chunk of whole chunks
-- compresses best by project, agent and event type; direct compress
-- writes each flush's rows as batches of their own, and by project alone
-- a 10,000-row flush makes 20 batches of about 500 rows instead of
-- hundreds of a few rows: half the COPY's time and a fifth of its size as
-- written, measured. A change applies to chunks compressed from then on.

-- The key tables' retention job: keys older than config.drop_after move to
-- config.archive, whose keys older than config.archive_after go. Under the
-- advisory lock (src/db/layout.rs, KEY_PRUNE_LOCK, "agentkey") that a
-- flush with rows past the key window holds shared from its look-up in
-- the key tables to its commit: a key committed meanwhile by another flush
-- is not moved out of the table that flush's key COPY goes to before that
-- COPY meets it.
CREATE OR REPLACE PROCEDURE agent_telemetry_prune_keys(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7018690069354210681);
    IF to_regclass(config ->> 'archive') IS NULL THEN
        EXECUTE format('DELETE FROM %I WHERE "timestamp" < now() - %L::interval',
                       config ->> 'keys', config ->> 'drop_after');
        RETURN;
    END IF;
    EXECUTE format('WITH aged AS (DELETE FROM %I WHERE "timestamp" < now() - %L::interval RETURNING id, "timestamp")
                    INSERT INTO %I (id, "timestamp") SELECT id, "timestamp" FROM aged
                    WHERE "timestamp" >= now() - %L::interval ON CONFLICT DO NOTHING',
                   config ->> 'keys', config ->> 'drop_after', config ->> 'archive', config ->> 'archive_after');
    EXECUTE format('DELETE FROM %I WHERE "timestamp" < now() - %L::interval',
                   config ->> 'archive', config ->> 'archive_after');
END $$;

-- Before the archive window, the function took two arguments.
DROP FUNCTION IF EXISTS agent_telemetry_set_layout(text, interval);

CREATE OR REPLACE FUNCTION agent_telemetry_set_layout(layout text, key_window interval, archive_window interval)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t      text;
    done   text := '';
    n      bigint;
BEGIN
    IF layout NOT IN ('columnstore', 'rowstore') THEN
        RAISE EXCEPTION 'unknown storage layout %', layout;
    END IF;
    FOREACH t IN ARRAY ARRAY['agent_events', 'chat_messages'] LOOP
        DECLARE
            keys text := CASE t WHEN 'agent_events' THEN 'agent_event_keys' ELSE 'chat_message_keys' END;
            archive text := CASE t WHEN 'agent_events' THEN 'agent_event_key_archive' ELSE 'chat_message_key_archive' END;
            kept interval;
            horizon interval := archive_window;
            has_pk boolean := EXISTS (SELECT FROM pg_constraint WHERE conrelid = t::regclass AND contype = 'p');
            prune  record;
            segment text := CASE layout WHEN 'columnstore' THEN 'project_id' ELSE 'project_id,agent_id,event_type' END;
        BEGIN
            IF t = 'agent_events' AND (SELECT c.segmentby FROM timescaledb_information.hypertable_compression_settings c
                                       WHERE c.hypertable = t::regclass) IS DISTINCT FROM segment THEN
                EXECUTE format('ALTER TABLE %I SET (timescaledb.compress_segmentby = %L)', t, segment);
                done := done || format('%s: segment by %s; ', t, segment);
            END IF;
            SELECT j.job_id, j.config INTO prune FROM timescaledb_information.jobs j
            WHERE j.proc_name = 'agent_telemetry_prune_keys' AND j.config ->> 'keys' = keys;
            IF layout = 'columnstore' THEN
                IF EXISTS (SELECT FROM timescaledb_information.hypertables h WHERE h.hypertable_name = keys) THEN
                    EXECUTE format('DROP TABLE %I', keys);
                    done := done || format('%s: rebuilt unique by id; ', keys);
                END IF;
                IF to_regclass(keys) IS NULL THEN
                    EXECUTE format('CREATE TABLE %I (id uuid PRIMARY KEY, "timestamp" timestamptz NOT NULL)', keys);
                    EXECUTE format('CREATE INDEX %I ON %I USING brin ("timestamp")', keys || '_timestamp', keys);
                    -- From the rows of the key window; of an id stored with
                    -- several timestamps, the earliest.
                    EXECUTE format('INSERT INTO %I (id, "timestamp") SELECT id, "timestamp" FROM %I
                                    WHERE "timestamp" > now() - %L::interval ORDER BY "timestamp"
                                    ON CONFLICT DO NOTHING', keys, t, key_window);
                    GET DIAGNOSTICS n = ROW_COUNT;
                    done := done || format('%s: %s keys copied to %s; ', t, n, keys);
                END IF;
                IF has_pk THEN
                    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, t || '_pkey');
                    done := done || format('%s: primary key dropped; ', t);
                END IF;
                -- The archive window only grows (two services started with
                -- different --max-past would otherwise empty and refill it
                -- in turn); keys of the span it grows by come from the rows.
                kept := (prune.config ->> 'archive_after')::interval;
                IF to_regclass(archive) IS NULL THEN
                    kept := NULL;
                    EXECUTE format('CREATE TABLE %I (id uuid PRIMARY KEY, "timestamp" timestamptz NOT NULL)', archive);
                    EXECUTE format('CREATE INDEX %I ON %I USING brin ("timestamp")', archive || '_timestamp', archive);
                END IF;
                IF kept IS NULL OR kept < horizon THEN
                    EXECUTE format('INSERT INTO %I (id, "timestamp") SELECT id, "timestamp" FROM %I
                                    WHERE "timestamp" > now() - %L::interval AND "timestamp" <= now() - %L::interval
                                    ORDER BY id ON CONFLICT DO NOTHING',
                                   archive, t, horizon, coalesce(kept, key_window));
                    GET DIAGNOSTICS n = ROW_COUNT;
                    done := done || format('%s: %s keys copied to %s; ', t, n, archive);
                ELSE
                    horizon := kept;
                END IF;
                IF prune.job_id IS NULL
                   OR prune.config ->> 'archive' IS DISTINCT FROM archive
                   OR NOT agent_telemetry_same(prune.config, jsonb_build_object(
                              'drop_after', key_window::text, 'archive_after', horizon::text)) THEN
                    IF prune.job_id IS NOT NULL THEN
                        PERFORM delete_job(prune.job_id);
                    END IF;
                    PERFORM add_job('agent_telemetry_prune_keys', '1 hour',
                                    config => jsonb_build_object('keys', keys, 'drop_after', key_window::text,
                                                                 'archive', archive, 'archive_after', horizon::text));
                END IF;
            ELSE
                IF prune.job_id IS NOT NULL THEN
                    PERFORM delete_job(prune.job_id);
                END IF;
                IF NOT has_pk THEN
                    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id, "timestamp")', t);
                    done := done || format('%s: primary key re-created; ', t);
                END IF;
                IF to_regclass(keys) IS NOT NULL THEN
                    EXECUTE format('DROP TABLE %I', keys);
                    done := done || format('%s dropped; ', keys);
                END IF;
                IF to_regclass(archive) IS NOT NULL THEN
                    EXECUTE format('DROP TABLE %I', archive);
                    done := done || format('%s dropped; ', archive);
                END IF;
            END IF;
        END;
    END LOOP;
    RETURN done;
END $$;
