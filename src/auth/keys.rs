//! API key management (`agent-telemetry keys …`): create, list, revoke.
//! Every change is recorded in `audit_log` in the same transaction, so
//! there is no key without its audit row.

use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::{config::ProjectsConfig, db::dims::ProjectName};

/// Every key starts with this, so leaked keys are recognisable (secret
/// scanners) and a wrong value is told apart from a wrong key.
pub const PREFIX: &str = "atk_";
/// Characters of a key shown by `keys list`.
const SHOWN: usize = PREFIX.len() + 8;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database error: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("project {name:?}: {reason}")]
    Project { name: String, reason: String },
    #[error("a key needs at least one --project or --organization")]
    NoProject,
    #[error("an --organization needs a key (the organisation's key, as clients send it)")]
    Organization,
    #[error("--user: {0}")]
    User(String),
    #[error("no key matches {0:?} (give its id or the prefix `keys list` shows)")]
    NotFound(String),
    #[error("{0:?} matches several keys; give more of it")]
    Ambiguous(String),
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Who runs `command` (`keys`, `users`), for the audit trail: the
/// operating-system user.
pub fn actor(command: &str) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::Uid::effective()));
    format!("{user} (agent-telemetry {command})")
}

/// A new key, as created.
#[derive(Debug)]
pub struct Created {
    pub id: Uuid,
    /// The key itself: shown once, never stored.
    pub key: String,
    pub projects: Vec<String>,
}

pub async fn create(
    db: &mut Client,
    name: &str,
    projects: &[String],
    projects_cfg: &ProjectsConfig,
) -> Result<Created, KeyError> {
    create_scoped(db, name, projects, &[], None, projects_cfg).await
}

/// A key for the given projects and for every project of the given
/// organisations (by key; created when missing), belonging to developer
/// `user` if given, as `keys create --project … --organization … --user …`
/// makes it. `user` is stored as given: with `--pseudonymize-users`, the
/// caller passes the pseudonym.
pub async fn create_scoped(
    db: &mut Client,
    name: &str,
    projects: &[String],
    organizations: &[String],
    user: Option<&str>,
    projects_cfg: &ProjectsConfig,
) -> Result<Created, KeyError> {
    if projects.is_empty() && organizations.is_empty() {
        return Err(KeyError::NoProject);
    }
    if let Some(u) = user {
        crate::validate::required_key(u, crate::validate::MAX_KEY_BYTES).map_err(KeyError::User)?;
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{PREFIX}{}", hex(&secret));
    let id = Uuid::new_v4();
    let tx = db.transaction().await?;
    tx.execute(
        "INSERT INTO api_keys (id, name, key_hash, key_prefix, user_key) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &name, &hash(&key).as_slice(), &&key[..SHOWN], &user],
    )
    .await?;
    let mut full_names = Vec::new();
    for p in projects {
        let parsed = ProjectName::parse(p, projects_cfg).map_err(|reason| KeyError::Project {
            name: p.clone(),
            reason,
        })?;
        let project_id = parsed.upsert(&tx, None, None).await?;
        tx.execute(
            "INSERT INTO api_key_projects (key_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&id, &project_id],
        )
        .await?;
        full_names.push(parsed.full_name);
    }
    for org in organizations {
        if org.is_empty() {
            return Err(KeyError::Organization);
        }
        let org_id = crate::db::dims::upsert_organization(&tx, org, None).await?;
        tx.execute(
            "INSERT INTO api_key_organizations (key_id, organization_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&id, &org_id],
        )
        .await?;
    }
    audit(
        &tx,
        "key.create",
        id,
        json!({"name": name, "projects": full_names, "organizations": organizations, "key_prefix": &key[..SHOWN]}),
    )
    .await?;
    tx.commit().await?;
    Ok(Created {
        id,
        key,
        projects: full_names,
    })
}

/// One row of `keys list`.
#[derive(Debug)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub active: bool,
    pub projects: Vec<String>,
    pub created_at: std::time::SystemTime,
    pub last_used_at: Option<std::time::SystemTime>,
}

pub async fn list(db: &Client) -> Result<Vec<KeyInfo>, KeyError> {
    let rows = db
        .query(
            "SELECT k.id, k.name, k.key_prefix, k.is_active, k.created_at, k.last_used_at,
                    coalesce(array_agg(p.full_name ORDER BY p.full_name)
                             FILTER (WHERE p.id IS NOT NULL), '{}')
                    || coalesce((SELECT array_agg('organization:' || o.key ORDER BY o.key)
                                 FROM api_key_organizations ko
                                 JOIN organizations o ON o.id = ko.organization_id
                                 WHERE ko.key_id = k.id), '{}')
                    || CASE WHEN k.user_key IS NULL THEN '{}' ELSE array['user:' || k.user_key] END
             FROM api_keys k
             LEFT JOIN api_key_projects kp ON kp.key_id = k.id
             LEFT JOIN projects p ON p.id = kp.project_id
             GROUP BY k.id ORDER BY k.created_at",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            id: r.get(0),
            name: r.get(1),
            prefix: r.get(2),
            active: r.get(3),
            created_at: r.get(4),
            last_used_at: r.get(5),
            projects: r.get(6),
        })
        .collect())
}

/// Revokes the key whose id (or shown prefix) is `which`. Running services
/// stop accepting it within `--key-cache-ttl`.
pub async fn revoke(db: &mut Client, which: &str) -> Result<Uuid, KeyError> {
    let tx = db.transaction().await?;
    let rows = tx
        .query(
            "SELECT id FROM api_keys WHERE id::text = $1 OR key_prefix = $1 OR (length($1) >= 8 AND id::text LIKE $1 || '%')",
            &[&which],
        )
        .await?;
    let id: Uuid = match rows.as_slice() {
        [] => return Err(KeyError::NotFound(which.to_owned())),
        [one] => one.get(0),
        _ => return Err(KeyError::Ambiguous(which.to_owned())),
    };
    let changed = tx
        .execute(
            "UPDATE api_keys SET is_active = false, revoked_at = now() WHERE id = $1 AND is_active",
            &[&id],
        )
        .await?;
    audit(&tx, "key.revoke", id, json!({"was_active": changed == 1})).await?;
    tx.commit().await?;
    Ok(id)
}

async fn audit(
    tx: &tokio_postgres::Transaction<'_>,
    action: &str,
    key_id: Uuid,
    details: serde_json::Value,
) -> Result<(), KeyError> {
    tx.execute(
        "INSERT INTO audit_log (actor, action, key_id, details) VALUES ($1, $2, $3, $4)",
        &[&actor("keys"), &action, &key_id, &details],
    )
    .await?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
