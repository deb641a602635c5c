-- Choices the service makes once per database and keeps, with the reason
-- it gave: the storage layout (src/db/layout.rs), so that a restart with
-- other flags does not silently change how rows are stored.
CREATE TABLE agent_telemetry_settings (
    name   text        PRIMARY KEY,
    value  text        NOT NULL,
    reason text        NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now()
);
