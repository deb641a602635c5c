-- API keys scoped to organisations: such a key writes to every project of
-- its organisations (and creates new projects inside them), and to no
-- other organisation's project, as well as to the projects it names
-- (api_key_projects). docs/reliability.md, "Keys and organisations".
CREATE TABLE api_key_organizations (
    key_id          uuid    NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    organization_id integer NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, organization_id)
);
CREATE INDEX api_key_organizations_org_idx ON api_key_organizations (organization_id);
