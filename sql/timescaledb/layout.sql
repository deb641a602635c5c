-- The storage layouts of the two event tables (docs/schema.md, "Storage
-- layouts"), switched by agent_telemetry_set_layout, idempotently:
--
-- rowstore: the primary key (id, "timestamp") on agent_events and
--   chat_messages finds resends; COPY builds row-store tuples and indexes.
-- columnstore: no unique index on the wide tables, so TimescaleDB's direct
--   compress can COPY straight into compressed chunks (it refuses a table
--   with a unique index). Resends are found in narrow key tables,
--   agent_event_keys and chat_message_keys, COPYed in the same
--   transaction: one (id, "timestamp") pair per row, kept for
--   `key_window` (longer than any row intake accepts, --max-past plus a
--   margin for the spool), then dropped with their chunks.
--
-- A switch to columnstore fills the key tables from the rows of the key
-- window and drops the primary keys; a switch back re-creates them (which
-- fails if a duplicate got in, and then changes nothing).
CREATE OR REPLACE FUNCTION agent_telemetry_set_layout(layout text, key_window interval)
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
            has_pk boolean := EXISTS (SELECT FROM pg_constraint WHERE conrelid = t::regclass AND contype = 'p');
        BEGIN
            IF layout = 'columnstore' THEN
                IF to_regclass(keys) IS NULL THEN
                    EXECUTE format('CREATE TABLE %I (id uuid NOT NULL, "timestamp" timestamptz NOT NULL, PRIMARY KEY (id, "timestamp"))', keys);
                    PERFORM create_hypertable(keys, by_range('timestamp',
                        (SELECT d.time_interval FROM timescaledb_information.dimensions d
                         WHERE d.hypertable_name = t AND d.dimension_number = 1)),
                        create_default_indexes => false);
                END IF;
                IF has_pk THEN
                    EXECUTE format('INSERT INTO %I (id, "timestamp") SELECT id, "timestamp" FROM %I
                                    WHERE "timestamp" > now() - %L::interval ON CONFLICT DO NOTHING', keys, t, key_window);
                    GET DIAGNOSTICS n = ROW_COUNT;
                    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, t || '_pkey');
                    done := done || format('%s: %s keys copied to %s, primary key dropped; ', t, n, keys);
                END IF;
                IF (agent_telemetry_job('policy_retention', keys)).job_id IS NULL
                   OR NOT agent_telemetry_same((agent_telemetry_job('policy_retention', keys)).config,
                                               jsonb_build_object('drop_after', key_window::text)) THEN
                    IF (agent_telemetry_job('policy_retention', keys)).job_id IS NOT NULL THEN
                        PERFORM remove_retention_policy(keys);
                    END IF;
                    PERFORM add_retention_policy(keys, drop_after => key_window);
                END IF;
            ELSE
                IF NOT has_pk THEN
                    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id, "timestamp")', t);
                    done := done || format('%s: primary key re-created; ', t);
                END IF;
                IF to_regclass(keys) IS NOT NULL THEN
                    EXECUTE format('DROP TABLE %I', keys);
                    done := done || format('%s dropped; ', keys);
                END IF;
            END IF;
        END;
    END LOOP;
    RETURN done;
END $$;
