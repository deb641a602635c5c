-- Read-only roles of one organisation (`agent-telemetry readers create`):
-- which role reads which organisation, through which schema of views.
-- The views themselves are not written here: they are derived from what
-- agent_telemetry_reader may read, and re-created after every migration
-- (src/db/readers.rs), so a relation a later migration grants to the
-- reader appears in every organisation's schema too. Not readable by any
-- reader role. docs/reliability.md, "Readers of one organisation".
CREATE TABLE organization_readers (
    role_name       text        PRIMARY KEY,
    organization_id integer     NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    schema_name     text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX organization_readers_organization_idx ON organization_readers (organization_id);
