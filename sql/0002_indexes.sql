-- The rest of the seed's indexes on agent_events, each kept only where a
-- query needs it, since every index is paid for on every inserted row
-- (docs/schema.md has the measured cost of each; 0001 has time, session and
-- project). Composite indexes end with time: every query has a time range.

-- "By agent" and "by agent and event type" (one index serves both). Queries
-- by event type alone read the aggregates, or compressed segments, which
-- are segmented by it.
CREATE INDEX agent_events_agent_type_idx
    ON agent_events (agent_id, event_type, "timestamp" DESC);

-- "By tag": tags are few and repeated, so GIN's pending list absorbs them
-- almost for free (measured).
CREATE INDEX agent_events_tags_idx ON agent_events USING gin (tags);

-- "By severity" means "the warnings and errors": a partial index over the
-- rare rows instead of an index over every row's severity.
CREATE INDEX agent_events_problems_idx
    ON agent_events ("timestamp" DESC) WHERE severity IN ('warning', 'error');
