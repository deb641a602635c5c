//! Read-only roles of one organisation: what a Grafana organisation (or any
//! reader) of one tenant connects as, so that it reads no row of another.
//!
//! Row-level security cannot do this here: TimescaleDB refuses it on a
//! hypertable with compression ("compression cannot be used on table with
//! row security"), does not carry a table's policies to its chunks, and a
//! continuous aggregate is a view, which has no policies. So each
//! organisation gets a schema of `security_barrier` views, one per relation
//! the global reader role (`agent_telemetry_reader`, `sql/0006_…`) may read,
//! with the same columns, keeping only the organisation's rows:
//!
//! - `organizations`: the organisation itself; `users`: its members;
//!   `machines`: those that worked on its projects;
//! - a relation with `organization_id` (projects, `team_daily`, …): that
//!   column; one with `project_id` (every hypertable and aggregate): the
//!   organisation's projects;
//! - a rollup over every project ([`OVER_EVERY_PROJECT`]): the per-project
//!   rollup of the same figures, as the organisation reads it, summed.
//!
//! The role has USAGE on that schema and SELECT on its views only; its
//! `search_path` puts the schema before the service's, so the provisioned
//! dashboards' unqualified queries read the views unchanged, and the
//! functions they call (`time_bucket`, `agent_telemetry_hours`) still
//! resolve. The views run with their owner's rights (the migrating user),
//! so the role needs, and has, no privilege on any table.
//!
//! The views are derived from the catalog, not listed: [`rebuild_all`]
//! re-creates every organisation's schema after each migration run, so a
//! relation a later migration grants to the reader appears everywhere, and
//! one that cannot be tied to an organisation fails the migration instead
//! of being left readable or silently missing.

use std::fmt;

use serde_json::json;
use tokio_postgres::{Client, GenericClient};

use crate::db::error::describe;

/// Rollups kept over every project (no `project_id`), and how an
/// organisation reads each: the per-project rollup of the same figures,
/// read through the organisation's own view of it, summed to the same
/// columns.
const OVER_EVERY_PROJECT: &[(&str, &str)] = &[(
    "agent_events_hourly_by_agent",
    "SELECT bucket, agent_id, event_type, sum(event_count)::bigint AS event_count,
            sum(error_count)::bigint AS error_count
     FROM {org}.agent_events_hourly GROUP BY 1, 2, 3",
)];

/// The role `sql/0006_reader_role.sql` creates for dashboards.
pub const READER_ROLE: &str = "agent_telemetry_reader";

#[derive(Debug, thiserror::Error)]
pub enum ReadersError {
    #[error("no organisation with key {0:?} (it exists once a record or `keys create` names it)")]
    NoOrganization(String),
    #[error(
        "relation {0} is readable by {READER_ROLE} but has no organization_id or project_id column: say how it belongs to an organisation in src/db/readers.rs"
    )]
    Untied(String),
    #[error(
        "the role {READER_ROLE} does not exist (the migrating user lacks CREATEROLE?): organisation readers are built on its grants"
    )]
    NoReaderRole,
    #[error("the role {0:?} exists and is not an organisation reader: choose another name")]
    RoleTaken(String),
    #[error("no organisation reader role {0:?}")]
    NoSuchReader(String),
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// One organisation's reader role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub role: String,
    pub organization: String,
    pub schema: String,
    /// Views in the schema.
    pub views: usize,
    /// Whether the role may log in (a password was given).
    pub login: bool,
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "role {} reads organisation {} through {} views in schema {}{}",
            self.role,
            self.organization,
            self.views,
            self.schema,
            if self.login {
                ""
            } else {
                " (NOLOGIN: set AGENT_TELEMETRY_ORG_READER_PASSWORD to let it log in)"
            }
        )
    }
}

/// The schema of organisation `id`'s views. Keys can be 1024 bytes and
/// identifiers 63: the id, not the key, names it.
pub fn schema_of(organization_id: i32) -> String {
    format!("agent_telemetry_org_{organization_id}")
}

/// The role name used when none is given.
pub fn default_role(organization_id: i32) -> String {
    format!("agent_telemetry_reader_org_{organization_id}")
}

/// Creates (or updates) `role`, reading organisation `organization` only:
/// its schema of views, USAGE and SELECT there, its search_path, and LOGIN
/// with `password` when one is given. Recorded in the audit log.
pub async fn create(
    client: &mut Client,
    organization: &str,
    role: Option<&str>,
    password: Option<&str>,
    actor: &str,
) -> Result<Reader, ReadersError> {
    let tx = client.transaction().await?;
    let org: i32 = tx
        .query_opt(
            "SELECT id FROM organizations WHERE key = $1",
            &[&organization],
        )
        .await?
        .ok_or_else(|| ReadersError::NoOrganization(organization.to_owned()))?
        .get(0);
    let role = role.map(str::to_owned).unwrap_or_else(|| default_role(org));
    let exists = tx
        .query_opt("SELECT FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some();
    let ours = tx
        .query_opt(
            "SELECT organization_id FROM organization_readers WHERE role_name = $1",
            &[&role],
        )
        .await?
        .map(|r| r.get::<_, i32>(0));
    match (exists, ours) {
        // A role of someone else's: granting it a tenant's rows would widen
        // what it reads, never narrow it.
        (true, None) => return Err(ReadersError::RoleTaken(role)),
        // Moving a reader to another organisation would leave its old
        // grants; drop it first.
        (_, Some(o)) if o != org => return Err(ReadersError::RoleTaken(role)),
        (false, _) => {
            tx.batch_execute(&format!("CREATE ROLE {} NOLOGIN", ident(&role)))
                .await?;
        }
        (true, Some(_)) => {}
    }
    let schema = schema_of(org);
    tx.execute(
        "INSERT INTO organization_readers (role_name, organization_id, schema_name) VALUES ($1, $2, $3)
         ON CONFLICT (role_name) DO NOTHING",
        &[&role, &org, &schema],
    )
    .await?;
    let views = build(&tx, org).await?;
    let login = match password {
        Some(p) => {
            let sql: String = tx
                .query_one(
                    "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                    &[&role, &p],
                )
                .await?
                .get(0);
            tx.batch_execute(&sql).await?;
            true
        }
        None => tx
            .query_one(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await?
            .get(0),
    };
    tx.execute(
        "INSERT INTO audit_log (actor, action, details) VALUES ($1, 'reader.create', $2)",
        &[
            &actor,
            &json!({ "role": role, "organization": organization, "schema": schema, "views": views }),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Reader {
        role,
        organization: organization.to_owned(),
        schema,
        views,
        login,
    })
}

/// Every organisation reader, with its view count.
pub async fn list(client: &Client) -> Result<Vec<Reader>, ReadersError> {
    let rows = client
        .query(
            "SELECT r.role_name, o.key, r.schema_name,
                    (SELECT count(*) FROM pg_views v WHERE v.schemaname = r.schema_name),
                    coalesce((SELECT rolcanlogin FROM pg_roles WHERE rolname = r.role_name), false)
             FROM organization_readers r JOIN organizations o ON o.id = r.organization_id
             ORDER BY o.key, r.role_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Reader {
            role: r.get(0),
            organization: r.get(1),
            schema: r.get(2),
            views: r.get::<_, i64>(3) as usize,
            login: r.get(4),
        })
        .collect())
}

/// Drops `role`; the organisation's schema goes with its last reader.
pub async fn drop(client: &mut Client, role: &str, actor: &str) -> Result<(), ReadersError> {
    let tx = client.transaction().await?;
    let org: i32 = tx
        .query_opt(
            "DELETE FROM organization_readers WHERE role_name = $1 RETURNING organization_id",
            &[&role],
        )
        .await?
        .ok_or_else(|| ReadersError::NoSuchReader(role.to_owned()))?
        .get(0);
    let others = tx
        .query_one(
            "SELECT count(*) FROM organization_readers WHERE organization_id = $1",
            &[&org],
        )
        .await?
        .get::<_, i64>(0);
    let schema = schema_of(org);
    if others == 0 {
        tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&schema)))
            .await?;
    } else {
        tx.batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}; REVOKE USAGE ON SCHEMA {s} FROM {r}",
            s = ident(&schema),
            r = ident(role)
        ))
        .await?;
    }
    tx.batch_execute(&format!(
        "REVOKE USAGE ON SCHEMA {} FROM {r}; DROP ROLE IF EXISTS {r}",
        ident(&current_schema(&tx).await?),
        r = ident(role)
    ))
    .await?;
    tx.execute(
        "INSERT INTO audit_log (actor, action, details) VALUES ($1, 'reader.drop', $2)",
        &[&actor, &json!({ "role": role, "organization_id": org })],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Re-creates every organisation's schema of views (after migrations: a
/// relation may have been added, or columns). Returns how many schemas.
pub async fn rebuild_all(client: &mut Client) -> Result<usize, ReadersError> {
    let tx = client.transaction().await?;
    let orgs: Vec<i32> = tx
        .query(
            "SELECT DISTINCT organization_id FROM organization_readers ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for &org in &orgs {
        build(&tx, org).await?;
    }
    tx.commit().await?;
    Ok(orgs.len())
}

/// (Re-)creates organisation `org`'s schema and grants it to its roles.
/// Returns the number of views.
async fn build(tx: &impl GenericClient, org: i32) -> Result<usize, ReadersError> {
    if tx
        .query_opt("SELECT FROM pg_roles WHERE rolname = $1", &[&READER_ROLE])
        .await?
        .is_none()
    {
        return Err(ReadersError::NoReaderRole);
    }
    let base = current_schema(tx).await?;
    let schema = schema_of(org);
    // Every relation of the service's schema the reader may read, with the
    // columns it may read (users: not the email).
    let relations = tx
        .query(
            "SELECT c.relname::text, array_agg(a.attname::text ORDER BY a.attnum)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p')
               AND has_column_privilege($1, c.oid, a.attnum, 'SELECT')
             GROUP BY c.relname ORDER BY c.relname",
            &[&READER_ROLE],
        )
        .await?;
    let b = ident(&base);
    let projects = format!("SELECT id FROM {b}.projects WHERE organization_id = {org}");
    let mut sql = format!(
        "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s};\n",
        s = ident(&schema)
    );
    let mut summed = Vec::new();
    for row in &relations {
        let name: String = row.get(0);
        let columns: Vec<String> = row.get(1);
        let has = |c: &str| columns.iter().any(|x| x == c);
        if let Some((_, body)) = OVER_EVERY_PROJECT.iter().find(|(n, _)| *n == name) {
            summed.push((name, body));
            continue;
        }
        let filter = match name.as_str() {
            "organizations" => format!("id = {org}"),
            "users" => format!(
                "id IN (SELECT user_id FROM {b}.organization_members WHERE organization_id = {org})"
            ),
            "machines" => format!(
                "id IN (SELECT machine_id FROM {b}.machine_projects WHERE project_id IN ({projects}))"
            ),
            _ if has("organization_id") => format!("organization_id = {org}"),
            _ if has("project_id") => format!("project_id IN ({projects})"),
            _ => return Err(ReadersError::Untied(name)),
        };
        let list = columns
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        sql.push_str(&format!(
            "CREATE VIEW {s}.{n} WITH (security_barrier) AS SELECT {list} FROM {b}.{n} WHERE {filter};\n",
            s = ident(&schema),
            n = ident(&name),
        ));
    }
    // After the views they read.
    for (name, body) in summed {
        sql.push_str(&format!(
            "CREATE VIEW {s}.{n} WITH (security_barrier) AS {body};\n",
            s = ident(&schema),
            n = ident(&name),
            body = body.replace("{org}", &ident(&schema)),
        ));
    }
    let roles: Vec<String> = tx
        .query(
            "SELECT role_name FROM organization_readers WHERE organization_id = $1",
            &[&org],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for role in &roles {
        // The service's schema: USAGE only, for its functions and types;
        // its tables stay unreadable (no SELECT on them). No JIT, as for
        // agent_telemetry_reader (sql/0028_readers_without_jit.sql).
        sql.push_str(&format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT USAGE ON SCHEMA {b} TO {r};
             GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r};
             ALTER ROLE {r} SET search_path = {s}, {b};
             ALTER ROLE {r} SET jit = off;\n",
            s = ident(&schema),
            r = ident(role),
        ));
    }
    tx.batch_execute(&sql).await?;
    Ok(relations.len())
}

async fn current_schema(tx: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(tx
        .query_one("SELECT current_schema()::text", &[])
        .await?
        .get(0))
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(ident("grafana_acme"), "\"grafana_acme\"");
        assert_eq!(
            ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
    }
}
