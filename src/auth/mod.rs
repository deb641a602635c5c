//! Who may write where. Clients send `authorization: Bearer <key>`; the key
//! (only its SHA-256 is stored, see [`keys`]) names the projects it may
//! write to. [`Authenticator::scope`] turns the header into a [`Scope`];
//! intake rejects every row outside it with PERMISSION_DENIED, beside the
//! rows inside it, which are stored.
//!
//! Keys are looked up once and cached for `--key-cache-ttl`: revoking a key
//! takes effect on running services within that time, also on streams
//! opened before (the scope is checked per batch). While the database is
//! unreachable, a key that was valid at its last check stays valid, so that
//! an outage (with the spool on) does not turn into refused batches.

pub mod keys;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::time::Instant;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this service requires an API key: send `authorization: Bearer <key>` (create one with `agent-telemetry keys create --project NAME`)"
    )]
    Missing,
    #[error("the authorization header must be `Bearer <key>`")]
    Malformed,
    #[error("unknown or revoked API key")]
    Invalid,
    #[error("cannot check the API key: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Its line in the code table.
    pub fn kind(&self) -> crate::codes::ErrorKind {
        match self {
            AuthError::Unavailable(_) => crate::codes::ErrorKind::Unavailable,
            _ => crate::codes::ErrorKind::Unauthenticated,
        }
    }

    /// Counts the refused request in the metrics, by reason.
    pub fn count(&self) {
        crate::metrics::auth_refused(match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Invalid => "invalid",
            AuthError::Unavailable(_) => "unavailable",
        });
    }
}

/// The projects a key may write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScope {
    pub key_id: Uuid,
    /// (project id, identity: docs/schema.md, "Project identity").
    pub projects: Vec<(i32, String)>,
    /// (organisation id, key): every project of these, and new projects
    /// created inside them.
    pub organizations: Vec<(i32, String)>,
    /// The developer the key belongs to (`keys create --user`): rows that
    /// name none are theirs.
    pub user: Option<String>,
}

/// What a request may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any project: no key required here and none sent.
    Any,
    Key(Arc<KeyScope>),
}

impl Scope {
    /// Whether rows of the project with this identity may be written.
    pub fn allows_identity(&self, identity: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Key(k) => k.projects.iter().any(|(_, n)| n == identity),
        }
    }

    /// Whether rows of project `id`, in organisation `org` (if known), may
    /// be written.
    pub fn allows_id(&self, id: i32, org: Option<i32>) -> bool {
        match self {
            Scope::Any => true,
            Scope::Key(k) => {
                k.projects.iter().any(|(i, _)| *i == id)
                    || org.is_some_and(|o| k.organizations.iter().any(|(i, _)| *i == o))
            }
        }
    }

    /// The organisations a key may write to (none without a key: there,
    /// every project is allowed anyway).
    /// The key's developer, for rows that name none.
    pub fn user(&self) -> Option<&str> {
        match self {
            Scope::Any => None,
            Scope::Key(k) => k.user.as_deref(),
        }
    }

    pub fn organizations(&self) -> &[(i32, String)] {
        match self {
            Scope::Any => &[],
            Scope::Key(k) => &k.organizations,
        }
    }

    /// The reason given for a row outside the scope; `what` names the
    /// project ("project \"acme/api\"", "the project of chat session …").
    pub fn denial(&self, what: &str) -> String {
        match self {
            Scope::Any => String::new(),
            Scope::Key(k) if k.organizations.is_empty() => {
                format!("the API key {} may not write to {what}", k.key_id)
            }
            Scope::Key(k) => format!(
                "the API key {} may not write to {what} (it writes to the projects of organisation {})",
                k.key_id,
                k.organizations
                    .iter()
                    .map(|(_, key)| format!("{key:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

struct Cached {
    checked: Instant,
    /// None: no such key, or revoked.
    scope: Option<Arc<KeyScope>>,
}

pub struct Authenticator {
    pool: Pool,
    /// Whether a request without a key is refused.
    required: bool,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// Entries beyond this are dropped wholesale: a flood of random keys must
/// not grow memory without bound.
const CACHE_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(pool: Pool, required: bool, ttl: Duration) -> Self {
        Self {
            pool,
            required,
            ttl,
            cache: Mutex::default(),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The scope of a request with this `authorization` header value.
    pub async fn scope(&self, header: Option<&str>) -> Result<Scope, AuthError> {
        // `Bearer ` with nothing after it (a script's `Bearer $KEY` with KEY
        // unset) is no key, not a malformed one: where keys are optional it
        // passes, where they are required it is refused as missing.
        let header = header
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("bearer"));
        let Some(value) = header else {
            return if self.required {
                Err(AuthError::Missing)
            } else {
                Ok(Scope::Any)
            };
        };
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Malformed)?;
        let hash = keys::hash(key);
        let stale = {
            let cache = self.cache.lock().expect("key cache lock");
            match cache.get(&hash) {
                Some(c) if c.checked.elapsed() < self.ttl => {
                    return c.scope.clone().map(Scope::Key).ok_or(AuthError::Invalid);
                }
                Some(c) => c.scope.clone(),
                None => None,
            }
        };
        let scope = match self.look_up(&hash).await {
            Ok(scope) => scope,
            Err(e) => {
                return match stale {
                    Some(s) => Ok(Scope::Key(s)),
                    None => Err(AuthError::Unavailable(e)),
                };
            }
        };
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            hash,
            Cached {
                checked: Instant::now(),
                scope: scope.clone(),
            },
        );
        scope.map(Scope::Key).ok_or(AuthError::Invalid)
    }

    async fn look_up(&self, hash: &[u8; 32]) -> Result<Option<Arc<KeyScope>>, String> {
        use crate::db::error::{describe, describe_pool};
        let client = self.pool.get().await.map_err(|e| describe_pool(&e))?;
        // One row per project and per organisation of the key (a key has
        // at least one of either).
        let rows = client
            .query(
                "SELECT k.id, p.id, p.identity, NULL::integer, NULL::text, k.user_key
                 FROM api_keys k
                 JOIN api_key_projects kp ON kp.key_id = k.id
                 JOIN projects p ON p.id = kp.project_id
                 WHERE k.key_hash = $1 AND k.is_active
                 UNION ALL
                 SELECT k.id, NULL, NULL, o.id, o.key, k.user_key
                 FROM api_keys k
                 JOIN api_key_organizations ko ON ko.key_id = k.id
                 JOIN organizations o ON o.id = ko.organization_id
                 WHERE k.key_hash = $1 AND k.is_active",
                &[&hash.as_slice()],
            )
            .await
            .map_err(|e| describe(&e))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let key_id: Uuid = first.get(0);
        // At most once a minute per key, however often it is checked.
        client
            .execute(
                "UPDATE api_keys SET last_used_at = now()
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
                &[&key_id],
            )
            .await
            .map_err(|e| describe(&e))?;
        let (mut projects, mut organizations) = (Vec::new(), Vec::new());
        for r in &rows {
            match (r.get::<_, Option<i32>>(1), r.get::<_, Option<i32>>(3)) {
                (Some(id), _) => projects.push((id, r.get(2))),
                (None, Some(id)) => organizations.push((id, r.get(4))),
                (None, None) => {}
            }
        }
        Ok(Some(Arc::new(KeyScope {
            key_id,
            projects,
            organizations,
            user: first.get(5),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(required: bool) -> Authenticator {
        // Never connected: these headers are decided before any look-up.
        let pool = crate::db::pool("host=/nonexistent dbname=x", 1).unwrap();
        Authenticator::new(pool, required, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn an_empty_bearer_token_is_no_key() {
        for header in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Bearer"),
            Some("bearer  "),
        ] {
            assert_eq!(
                store(false).scope(header).await.unwrap(),
                Scope::Any,
                "{header:?}"
            );
            assert!(
                matches!(store(true).scope(header).await, Err(AuthError::Missing)),
                "{header:?}"
            );
        }
        assert!(matches!(
            store(false).scope(Some("Basic abc")).await,
            Err(AuthError::Malformed)
        ));
    }
}
