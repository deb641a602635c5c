-- API keys (the seed's ApiKey: only a SHA-256 hash of the key is stored,
-- an active flag, last use) scoped to projects, and the audit trail of key
-- management (the seed's AuditLog). Low write rate: foreign keys are fine.
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    -- SHA-256 of the whole key. Keys are 256 random bits, so a plain hash
    -- (no salt, no slow KDF) cannot be reversed by guessing.
    key_hash     bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    -- The key's first characters, shown by `keys list` to tell keys apart.
    key_prefix   text        NOT NULL,
    is_active    boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

CREATE TABLE api_key_projects (
    key_id     uuid    NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    project_id integer NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, project_id)
);
CREATE INDEX api_key_projects_project_idx ON api_key_projects (project_id);

CREATE TABLE audit_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    -- Who did it: the operating-system user running the command.
    actor      text        NOT NULL,
    action     text        NOT NULL,
    key_id     uuid,
    details    jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
