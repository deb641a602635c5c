-- The two high-rate tables become hypertables on their time column, with
-- columnar compression. Chunk interval and the compression/retention
-- policies come from configuration (policies.sql); docs/schema.md gives the
-- measurements behind the segment-by and order-by choices.

-- create_default_indexes => false: 0001 already made the ("timestamp" DESC)
-- index the default would add. migrate_data: a database that ran plain
-- migrations before TimescaleDB was installed keeps its rows.
SELECT create_hypertable('agent_events', by_range('timestamp', INTERVAL '1 day'),
                         create_default_indexes => false, migrate_data => true);
SELECT create_hypertable('chat_messages', by_range('timestamp', INTERVAL '1 day'),
                         create_default_indexes => false, migrate_data => true);

-- Segment by project, agent and event type (the seed's choice, and the best
-- ratio measured: docs/schema.md): the dashboards filter and group by these,
-- so a query reads only the matching segments. Order by time (the unique
-- check of a late row decompresses only batches whose time range covers
-- it), then id, which TimescaleDB asks for because it is in the unique key.
ALTER TABLE agent_events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'project_id, agent_id, event_type',
    timescaledb.compress_orderby = '"timestamp" DESC, id'
);
-- Messages: by project and agent type (what chat_activity_hourly groups
-- by); a session holds too few messages for segments of its own.
ALTER TABLE chat_messages SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'project_id, agent_type',
    timescaledb.compress_orderby = '"timestamp" DESC, id'
);
