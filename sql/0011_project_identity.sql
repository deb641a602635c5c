-- A project's identity is its repository's host and path
-- (docs/schema.md, "Project identity"): `https://gitlab.com/acme/api` and
-- `github.com/acme/api` are two projects, `ACME/API` and `acme/api` on
-- GitHub one. Until now `full_name` (the path alone, as first seen) was the
-- key; it stays as the display form.
--
-- Rows stored before: the host comes from the row's repository URL where
-- it has one, else it is github.com (the default of --default-git-host);
-- the path is lower-cased on the hosts that ignore case by default
-- (github.com, gitlab.com, bitbucket.org, codeberg.org). Projects that
-- were apart and now share an identity (they differed only in case) stay
-- apart, since their rows carry their ids: the oldest takes the identity,
-- the others get `#<id>` after it, and new rows go to the oldest.
ALTER TABLE projects ADD COLUMN host text, ADD COLUMN identity text;

UPDATE projects SET host = lower(coalesce(
    substring(repo_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?([^/]+)'),
    substring(repo_url FROM '^[^@/]+@([^:/]+):'),
    'github.com'));

UPDATE projects SET identity = host || '/' ||
    CASE WHEN host IN ('github.com', 'gitlab.com', 'bitbucket.org', 'codeberg.org')
         THEN lower(full_name) ELSE full_name END;

UPDATE projects p SET identity = p.identity || '#' || p.id
FROM projects older
WHERE older.identity = p.identity AND older.id < p.id;

-- The display form of a project on another host names the host.
UPDATE projects SET full_name = host || '/' || full_name WHERE host <> 'github.com';

ALTER TABLE projects
    ALTER COLUMN host SET NOT NULL,
    ALTER COLUMN identity SET NOT NULL,
    DROP CONSTRAINT projects_full_name_key,
    -- A URL is an attribute, not a key: two names of one repository may
    -- come with two spellings of its URL, and a client's URL that another
    -- project already has must not fail its batch.
    DROP CONSTRAINT projects_repo_url_key;
CREATE UNIQUE INDEX projects_identity_key ON projects (identity);
