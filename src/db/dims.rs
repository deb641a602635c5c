//! Dimension rows — projects, machines, workspaces, chat sessions, agent
//! sessions — and the cache that keeps them off the hot path.
//!
//! Clients name dimensions by natural keys (a repository name or URL, a
//! machine id, a workspace id, a session UUID). The event tables store the
//! integer ids (and, for chat messages, the session's project and agent
//! type). A name is upserted once, on a cache miss; after that, resolving it
//! is a hash-map lookup. Upserts are `INSERT … ON CONFLICT`, so instances
//! racing on the same name end with one row.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::{
    config::ProjectsConfig,
    metrics, pb,
    row::{AgentSessionRow, ChatSessionRow},
    time::pg_us_to_system_time,
};

#[derive(Debug, thiserror::Error)]
pub enum DimsError {
    /// The client's value cannot name a dimension.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("database unavailable: {}", crate::db::error::describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", crate::db::error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// The project a client's name denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName {
    /// What makes two names one project: the host, lower-cased, and the
    /// path, lower-cased where the host compares names so (unique in
    /// `projects`).
    pub identity: String,
    /// The repository's host, lower-cased (the default host for a bare name).
    pub host: String,
    /// The display form, as given: "owner/repo" on the default host,
    /// "host/owner/repo" elsewhere. A project keeps the form first seen.
    pub full_name: String,
    pub owner: String,
    pub name: String,
    pub repo_url: Option<String>,
}

impl ProjectName {
    /// "owner/repo", "host/owner/repo", "https://host/owner/repo(.git)",
    /// "git@host:owner/repo(.git)", or a bare name. A name without a host
    /// means `--default-git-host`; a first segment with a dot (or a port)
    /// followed by at least two more is a host. URLs keep their text as
    /// `repo_url`; nested groups (GitLab) stay in the owner part.
    pub fn parse(input: &str, cfg: &ProjectsConfig) -> Result<Self, String> {
        let s = input.trim();
        let (host, path, repo_url) = if let Some(rest) = s.strip_prefix("git@") {
            let (host, path) = rest
                .split_once(':')
                .ok_or("an scp-style URL needs host:owner/repo")?;
            (Some(host), path, Some(s.to_owned()))
        } else if let Some((_, rest)) = s.split_once("://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            // Never a credential in the stored URL (intake strips it
            // already, and counts it; `keys create` and the policy file
            // come here directly).
            let url = crate::privacy::strip_url_userinfo(s).unwrap_or_else(|| s.to_owned());
            (Some(host), path, Some(url))
        } else {
            let trimmed = s.trim_matches('/');
            match trimmed.split_once('/') {
                Some((first, rest))
                    if (first.contains('.') || first.contains(':')) && rest.contains('/') =>
                {
                    (Some(first), rest, None)
                }
                _ => (None, trimmed, None),
            }
        };
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        if path.is_empty() {
            return Err(format!("{input:?} names no repository"));
        }
        let host = host
            .filter(|h| !h.is_empty())
            .unwrap_or(&cfg.default_git_host)
            .to_ascii_lowercase();
        let (owner, name) = match path.rsplit_once('/') {
            Some((o, n)) => (o.to_owned(), n.to_owned()),
            None => (String::new(), path.to_owned()),
        };
        let folds = cfg
            .case_insensitive_git_hosts
            .iter()
            .any(|h| h.trim().eq_ignore_ascii_case(&host));
        let key_path = if folds {
            path.to_lowercase()
        } else {
            path.to_owned()
        };
        let full_name = if host.eq_ignore_ascii_case(&cfg.default_git_host) {
            path.to_owned()
        } else {
            format!("{host}/{path}")
        };
        Ok(Self {
            identity: format!("{host}/{key_path}"),
            host,
            full_name,
            owner,
            name,
            repo_url,
        })
    }

    /// Creates the project unless one with the same identity exists (then
    /// it keeps its display form and fills in a missing URL or
    /// description); returns its id. The one upsert ingest and `keys
    /// create` share, so both agree on which project a name means.
    pub async fn upsert(
        &self,
        client: &impl tokio_postgres::GenericClient,
        repo_url: Option<&str>,
        description: Option<&str>,
    ) -> Result<i32, tokio_postgres::Error> {
        Ok(self
            .upsert_in_org(client, repo_url, description, None)
            .await?
            .0)
    }

    /// As [`Self::upsert`], with the project's organisation, if it has one.
    /// A project it creates is created in `new_in` (an existing project
    /// keeps its organisation): in one statement, so that a concurrent
    /// writer never sees the new project outside its organisation.
    pub async fn upsert_in_org(
        &self,
        client: &impl tokio_postgres::GenericClient,
        repo_url: Option<&str>,
        description: Option<&str>,
        new_in: Option<i32>,
    ) -> Result<(i32, Option<i32>), tokio_postgres::Error> {
        let repo_url = repo_url.or(self.repo_url.as_deref());
        let row = client
            .query_one(
                "INSERT INTO projects (name, full_name, host, identity, repo_url, repo_owner, repo_name, description, organization_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $1, $7, $8)
                 ON CONFLICT (identity) DO UPDATE SET
                    repo_url = COALESCE(projects.repo_url, EXCLUDED.repo_url),
                    description = COALESCE(EXCLUDED.description, projects.description),
                    updated_at = now()
                 RETURNING id, organization_id",
                &[
                    &self.name,
                    &self.full_name,
                    &self.host,
                    &self.identity,
                    &repo_url,
                    &self.owner,
                    &description,
                    &new_in,
                ],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}

/// Creates or updates the user `key` names; given fields replace stored
/// ones, empty ones keep them.
async fn upsert_user(client: &impl GenericClient, u: &pb::User) -> Result<i32, DimsError> {
    let name = (!u.display_name.is_empty()).then_some(u.display_name.as_str());
    let email = (!u.email.is_empty()).then_some(u.email.as_str());
    let row = client
        .query_one(
            "INSERT INTO users (key, display_name, email) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET
                display_name = COALESCE(EXCLUDED.display_name, users.display_name),
                email = COALESCE(EXCLUDED.email, users.email),
                updated_at = now()
             RETURNING id",
            &[&u.key, &name, &email],
        )
        .await
        .inspect_err(|_| metrics::db_error("upsert_user"))?;
    Ok(row.get(0))
}

/// Creates or updates the organisation `key` names; a given display name
/// replaces the stored one. The one upsert ingest and `keys create
/// --organization` share.
pub async fn upsert_organization(
    client: &impl GenericClient,
    key: &str,
    display_name: Option<&str>,
) -> Result<i32, tokio_postgres::Error> {
    let row = client
        .query_one(
            "INSERT INTO organizations (key, display_name) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET
                display_name = COALESCE(EXCLUDED.display_name, organizations.display_name),
                updated_at = now()
             RETURNING id",
            &[&key, &display_name],
        )
        .await
        .inspect_err(|_| metrics::db_error("upsert_organization"))?;
    Ok(row.get(0))
}

/// A client's organisation, upserted.
async fn upsert_client_organization(
    client: &impl GenericClient,
    o: &pb::Organization,
) -> Result<i32, DimsError> {
    let name = (!o.display_name.is_empty()).then_some(o.display_name.as_str());
    Ok(upsert_organization(client, &o.key, name).await?)
}

/// Puts a project in organisation `org_id` unless it is in one already.
/// Ok(Err(reason)) when it is in another: a project belongs to the first
/// organisation named for it (docs/schema.md, "Organisations").
async fn join_organization(
    client: &impl GenericClient,
    project_id: i32,
    org_id: i32,
    org_key: &str,
) -> Result<Result<(), String>, DimsError> {
    // The outer SELECT sees the row as before the UPDATE: a project moved
    // now still shows no organisation there.
    let row = client
        .query_one(
            "WITH moved AS (
                 UPDATE projects SET organization_id = $2, updated_at = now()
                 WHERE id = $1 AND organization_id IS NULL RETURNING organization_id)
             SELECT COALESCE((SELECT organization_id FROM moved), p.organization_id), p.full_name, o.key
             FROM projects p LEFT JOIN organizations o ON o.id = p.organization_id
             WHERE p.id = $1",
            &[&project_id, &org_id],
        )
        .await
        .inspect_err(|_| metrics::db_error("join_organization"))?;
    let (mut now, project, mut other): (Option<i32>, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if now.is_none() {
        // Another writer put the project in an organisation after this
        // statement's snapshot was taken (its UPDATE waited for that one and
        // then matched nothing): read what it committed.
        let row = client
            .query_one(
                "SELECT p.organization_id, o.key FROM projects p
                 LEFT JOIN organizations o ON o.id = p.organization_id WHERE p.id = $1",
                &[&project_id],
            )
            .await
            .inspect_err(|_| metrics::db_error("join_organization"))?;
        (now, other) = (row.get(0), row.get(1));
    }
    if now == Some(org_id) {
        return Ok(Ok(()));
    }
    Ok(Err(format!(
        "project {project:?} belongs to organisation {:?}, not {org_key:?}; a project stays in the first organisation named for it",
        other.unwrap_or_default()
    )))
}

/// Whether organisation `org` is one of `orgs`, and why not.
fn in_organizations(org: i32, orgs: &[(i32, String)]) -> Result<(), String> {
    if orgs.iter().any(|(id, _)| *id == org) {
        Ok(())
    } else {
        Err("the project is in another organisation".into())
    }
}

/// Records a developer as a member of an organisation (role member unless
/// set otherwise by hand).
async fn add_member(
    client: &impl GenericClient,
    org_id: i32,
    user_id: i32,
) -> Result<(), DimsError> {
    client
        .execute(
            "INSERT INTO organization_members (organization_id, user_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&org_id, &user_id],
        )
        .await
        .inspect_err(|_| metrics::db_error("add_member"))?;
    Ok(())
}

/// What chat messages need from their session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub project_id: i32,
    pub agent_type: Arc<str>,
    /// The project's identity: whose content policy its messages follow.
    pub project: Arc<str>,
}

pub struct Dimensions {
    pool: Pool,
    /// How project names become identities.
    pub projects_cfg: ProjectsConfig,
    /// Client's project string → id. Never invalidated: project ids do not change.
    projects: RwLock<HashMap<String, i32>>,
    /// Chat session → what its messages carry. Updated on every session upsert.
    chat_sessions: RwLock<HashMap<Uuid, SessionInfo>>,
    /// User key → (id, whether a display name or email is stored). Never
    /// invalidated: user ids do not change.
    users: RwLock<HashMap<String, (i32, bool)>>,
    /// Organisation key → id. Never invalidated, as users.
    organizations: RwLock<HashMap<String, i32>>,
    /// Project id → its organisation, once known (a project never leaves
    /// one by ingest; moved by hand, a restart forgets the old one).
    project_orgs: RwLock<HashMap<i32, i32>>,
    /// (organisation, user) pairs recorded as members.
    members: RwLock<HashSet<(i32, i32)>>,
}

impl Dimensions {
    /// The pool the cache reads and writes through.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn new(pool: Pool, projects_cfg: ProjectsConfig) -> Self {
        Self {
            pool,
            projects_cfg,
            projects: RwLock::default(),
            chat_sessions: RwLock::default(),
            users: RwLock::default(),
            organizations: RwLock::default(),
            project_orgs: RwLock::default(),
            members: RwLock::default(),
        }
    }

    /// Resolves an organisation to its id, creating it on first sight.
    pub async fn organization_id(&self, o: &pb::Organization) -> Result<i32, DimsError> {
        if let Some(id) = self.organizations.read().expect("cache lock").get(&o.key) {
            return Ok(*id);
        }
        let client = self.pool.get().await?;
        let id = upsert_client_organization(&**client, o).await?;
        self.organizations
            .write()
            .expect("cache lock")
            .insert(o.key.clone(), id);
        Ok(id)
    }

    /// What the cache knows of whether a key scoped to `orgs` may write to
    /// project `name`: None when it does not know.
    pub fn cached_project_for_organizations(
        &self,
        name: &str,
        orgs: &[(i32, String)],
    ) -> Option<Result<(), String>> {
        let id = self.cached_project(name)?;
        let org = self.cached_project_org(id)?;
        Some(in_organizations(org, orgs))
    }

    /// Whether a key scoped to `orgs` may write to project `name`: yes when
    /// the project is in one of them; a project that does not exist yet is
    /// created inside `named` (one of them) or the key's only one.
    pub async fn project_for_organizations(
        &self,
        name: &str,
        p: &ProjectName,
        orgs: &[(i32, String)],
        named: Option<&str>,
    ) -> Result<Result<(), String>, DimsError> {
        if let Some(known) = self.cached_project_for_organizations(name, orgs) {
            return Ok(known);
        }
        let client = self.pool.get().await?;
        let found = client
            .query_opt(
                "SELECT id, organization_id FROM projects WHERE identity = $1",
                &[&p.identity],
            )
            .await
            .inspect_err(|_| metrics::db_error("project_for_organizations"))?;
        let (id, org) = match found {
            Some(r) => (r.get::<_, i32>(0), r.get::<_, Option<i32>>(1)),
            None => {
                let target = match (named, orgs) {
                    (Some(key), _) => orgs.iter().find(|(_, k)| k == key).ok_or_else(|| {
                        format!("organisation {key:?} is not one the key writes to")
                    }),
                    (None, [only]) => Ok(only),
                    (None, _) => Err(format!(
                        "the key writes to several organisations: name the organisation of the new project {:?}",
                        p.full_name
                    )),
                };
                let (org_id, org_key) = match target {
                    Ok(t) => t,
                    Err(why) => return Ok(Err(why)),
                };
                let (id, org) = p
                    .upsert_in_org(&**client, None, None, Some(*org_id))
                    .await
                    .inspect_err(|_| metrics::db_error("upsert_project"))?;
                match org {
                    Some(org) => (id, Some(org)),
                    None => match join_organization(&**client, id, *org_id, org_key).await? {
                        Ok(()) => (id, Some(*org_id)),
                        Err(why) => return Ok(Err(why)),
                    },
                }
            }
        };
        self.projects
            .write()
            .expect("cache lock")
            .insert(name.to_owned(), id);
        let Some(org) = org else {
            return Ok(Err("the project is in no organisation".into()));
        };
        self.project_orgs
            .write()
            .expect("cache lock")
            .insert(id, org);
        Ok(in_organizations(org, orgs))
    }

    /// The organisation a project is known to belong to.
    pub fn cached_project_org(&self, project_id: i32) -> Option<i32> {
        self.project_orgs
            .read()
            .expect("cache lock")
            .get(&project_id)
            .copied()
    }

    /// Puts the project in the organisation unless it is in one; Ok(Err)
    /// with the reason when it is in another.
    pub async fn join_organization(
        &self,
        project_id: i32,
        o: &pb::Organization,
    ) -> Result<Result<(), String>, DimsError> {
        let org_id = self.organization_id(o).await?;
        if self.cached_project_org(project_id) == Some(org_id) {
            return Ok(Ok(()));
        }
        let client = self.pool.get().await?;
        if let Err(why) = join_organization(&**client, project_id, org_id, &o.key).await? {
            return Ok(Err(why));
        }
        self.project_orgs
            .write()
            .expect("cache lock")
            .insert(project_id, org_id);
        Ok(Ok(()))
    }

    /// Records the developer as a member of the organisation, once per
    /// process.
    pub async fn add_member(&self, org_id: i32, user_id: i32) -> Result<(), DimsError> {
        if self
            .members
            .read()
            .expect("cache lock")
            .contains(&(org_id, user_id))
        {
            return Ok(());
        }
        let client = self.pool.get().await?;
        add_member(&**client, org_id, user_id).await?;
        self.members
            .write()
            .expect("cache lock")
            .insert((org_id, user_id));
        Ok(())
    }

    pub fn cached_project(&self, name: &str) -> Option<i32> {
        self.projects.read().expect("cache lock").get(name).copied()
    }

    /// Resolves a project name to its id, creating the project on first sight.
    pub async fn project_id(&self, name: &str) -> Result<i32, DimsError> {
        if let Some(id) = self.cached_project(name) {
            return Ok(id);
        }
        let id = self.upsert_project(name, None, None).await?;
        self.projects
            .write()
            .expect("cache lock")
            .insert(name.to_owned(), id);
        Ok(id)
    }

    /// Resolves a user to its id, creating the user on first sight with
    /// the display name and email given then. Later sightings are served
    /// from the cache (one upsert per user and process, and one more when a
    /// user first seen without a name or email is named); a session report
    /// updates the row (see [`Self::session_user`]).
    pub async fn user_id(&self, user: &pb::User) -> Result<i32, DimsError> {
        let gives = !user.display_name.is_empty() || !user.email.is_empty();
        if let Some(&(id, named)) = self.users.read().expect("cache lock").get(&user.key)
            && (named || !gives)
        {
            return Ok(id);
        }
        let client = self.pool.get().await?;
        let id = upsert_user(&**client, user).await?;
        self.users
            .write()
            .expect("cache lock")
            .insert(user.key.clone(), (id, gives));
        Ok(id)
    }

    /// A session's user: its id, always upserted (sessions are few, and they
    /// are where a display name or email changes), None when none is named.
    async fn session_user(
        &self,
        client: &impl GenericClient,
        user: Option<&pb::User>,
    ) -> Result<Option<i32>, DimsError> {
        let Some(user) = user else {
            return Ok(None);
        };
        // Not cached: the session's transaction may still roll back.
        Ok(Some(upsert_user(client, user).await?))
    }

    async fn upsert_project(
        &self,
        name: &str,
        repo_url: Option<&str>,
        description: Option<&str>,
    ) -> Result<i32, DimsError> {
        let p =
            ProjectName::parse(name, &self.projects_cfg).map_err(|reason| DimsError::Invalid {
                field: "project",
                reason,
            })?;
        let client = self.pool.get().await?;
        let (id, org) = p
            .upsert_in_org(&**client, repo_url, description, None)
            .await
            .inspect_err(|_| metrics::db_error("upsert_project"))?;
        if let Some(org) = org {
            self.project_orgs
                .write()
                .expect("cache lock")
                .insert(id, org);
        }
        Ok(id)
    }

    pub fn cached_session(&self, id: &Uuid) -> Option<SessionInfo> {
        self.chat_sessions
            .read()
            .expect("cache lock")
            .get(id)
            .cloned()
    }

    /// Looks up chat sessions missing from the cache (one query for all).
    pub async fn load_sessions(&self, ids: &[Uuid]) -> Result<(), DimsError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT s.session_id, s.project_id, s.agent_type, p.organization_id, p.identity
                 FROM chat_sessions s JOIN projects p ON p.id = s.project_id
                 WHERE s.session_id = ANY($1)",
                &[&ids],
            )
            .await
            .inspect_err(|_| metrics::db_error("load_sessions"))?;
        {
            // The projects' organisations: a key scoped to organisations
            // checks a message's project by them.
            let mut orgs = self.project_orgs.write().expect("cache lock");
            for r in &rows {
                if let Some(org) = r.get::<_, Option<i32>>(3) {
                    orgs.insert(r.get(1), org);
                }
            }
        }
        let mut cache = self.chat_sessions.write().expect("cache lock");
        for r in rows {
            let agent_type: String = r.get(2);
            let project: String = r.get(4);
            cache.insert(
                r.get(0),
                SessionInfo {
                    project_id: r.get(1),
                    agent_type: agent_type.into(),
                    project: project.into(),
                },
            );
        }
        Ok(())
    }

    /// Creates or updates a chat session with its workspace, machine and project.
    pub async fn upsert_chat_session(
        &self,
        s: &ChatSessionRow<'_>,
    ) -> Result<SessionInfo, DimsError> {
        let project_id = self
            .upsert_project(
                &s.project.name,
                s.project.repo_url.as_deref(),
                s.project.description.as_deref(),
            )
            .await?;
        let m = s.machine;
        let w = s.workspace;
        let metadata = if m.metadata_json.is_empty() {
            "{}"
        } else {
            &m.metadata_json
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let machine_id: i32 = tx
            .query_one(
                "INSERT INTO machines (machine_id, hostname, username, os_type, os_version, machine_type, ip_address, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb)
                 ON CONFLICT (machine_id) DO UPDATE SET
                    hostname = EXCLUDED.hostname, username = EXCLUDED.username, os_type = EXCLUDED.os_type,
                    os_version = COALESCE(EXCLUDED.os_version, machines.os_version), machine_type = EXCLUDED.machine_type,
                    ip_address = COALESCE(EXCLUDED.ip_address, machines.ip_address),
                    metadata = machines.metadata || EXCLUDED.metadata, last_seen_at = now()
                 RETURNING id",
                &[&m.machine_id, &m.hostname, &m.username, &m.os_type, &m.os_version, &m.machine_type, &m.ip_address, &metadata],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO machine_projects (machine_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&machine_id, &project_id],
        )
        .await?;
        let workspace_id: i32 = tx
            .query_one(
                "INSERT INTO workspaces (project_id, machine_id, workspace_id, workspace_path, workspace_type, branch, \"commit\")
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (workspace_id) DO UPDATE SET
                    project_id = EXCLUDED.project_id, machine_id = EXCLUDED.machine_id,
                    workspace_path = EXCLUDED.workspace_path, workspace_type = EXCLUDED.workspace_type,
                    branch = COALESCE(EXCLUDED.branch, workspaces.branch), \"commit\" = COALESCE(EXCLUDED.\"commit\", workspaces.\"commit\"),
                    last_seen_at = now()
                 RETURNING id",
                &[&project_id, &machine_id, &w.workspace_id, &w.workspace_path, &w.workspace_type, &w.branch, &w.commit],
            )
            .await?
            .get(0);
        let src = s.src;
        let user_id = self.session_user(&*tx, src.user.as_ref()).await?;
        let org = session_organization(
            &*tx,
            project_id,
            s.project.organization.as_ref(),
            user_id,
            "workspace.project.organization.key",
        )
        .await?;
        // A session's project and agent type are fixed by its first
        // announcement: its messages carry both, so a later announcement
        // naming others would split them between two projects while the
        // session row took the last writer's. Such an announcement updates
        // nothing (the WHERE below) and is rejected whole.
        let updated = tx
            .query_opt(
            "INSERT INTO chat_sessions (session_id, workspace_id, project_id, agent_type, model_id, started_at, ended_at, message_count, total_tokens, user_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8::int4, 0), COALESCE($9::int8, 0), $10)
             ON CONFLICT (session_id) DO UPDATE SET
                workspace_id = EXCLUDED.workspace_id,
                user_id = COALESCE(EXCLUDED.user_id, chat_sessions.user_id),
                model_id = COALESCE(EXCLUDED.model_id, chat_sessions.model_id),
                started_at = LEAST(chat_sessions.started_at, EXCLUDED.started_at),
                ended_at = COALESCE(EXCLUDED.ended_at, chat_sessions.ended_at),
                message_count = CASE WHEN $8::int4 IS NULL THEN chat_sessions.message_count ELSE EXCLUDED.message_count END,
                total_tokens = CASE WHEN $9::int8 IS NULL THEN chat_sessions.total_tokens ELSE EXCLUDED.total_tokens END
             WHERE chat_sessions.project_id = EXCLUDED.project_id
               AND chat_sessions.agent_type = EXCLUDED.agent_type
             RETURNING 1",
            &[
                &s.session_id,
                &workspace_id,
                &project_id,
                &src.agent_type,
                &src.model_id,
                &pg_us_to_system_time(s.started_us),
                &s.ended_us.map(pg_us_to_system_time),
                &src.message_count,
                &src.total_tokens,
                &user_id,
            ],
        )
        .await?;
        if updated.is_none() {
            let stored = tx
                .query_one(
                    "SELECT p.full_name, s.agent_type FROM chat_sessions s
                     JOIN projects p ON p.id = s.project_id WHERE s.session_id = $1",
                    &[&s.session_id],
                )
                .await?;
            let (project, agent_type): (String, String) = (stored.get(0), stored.get(1));
            // Dropping the transaction rolls back the machine and workspace
            // upserts of this announcement too.
            let (field, reason) = if agent_type != src.agent_type {
                (
                    "agent_type",
                    format!(
                        "chat session {} was announced with agent type {agent_type:?}; a session keeps its first agent type (start a new session id for another)",
                        s.session_id
                    ),
                )
            } else {
                (
                    "workspace.project.name",
                    format!(
                        "chat session {} belongs to project {project:?} since its first announcement; a session's messages stay with one project (start a new session id for another)",
                        s.session_id
                    ),
                )
            };
            return Err(DimsError::Invalid { field, reason });
        }
        tx.commit()
            .await
            .inspect_err(|_| metrics::db_error("upsert_chat_session"))?;
        if let Some(org) = org {
            self.project_orgs
                .write()
                .expect("cache lock")
                .insert(project_id, org);
        }
        let identity = ProjectName::parse(&s.project.name, &self.projects_cfg)
            .map_or_else(|_| s.project.name.clone(), |p| p.identity);
        let info = SessionInfo {
            project_id,
            agent_type: src.agent_type.as_str().into(),
            project: identity.into(),
        };
        self.chat_sessions
            .write()
            .expect("cache lock")
            .insert(s.session_id, info.clone());
        Ok(info)
    }

    /// Creates or updates an agent session: start, end, outcome. Fields the
    /// client leaves empty keep their stored value, so a session can be
    /// reported at its start and again at its end. Its start only moves
    /// earlier and its end only later: reports that arrive out of order (a
    /// resend, a spool replay, OTLP exports of one session) do not shrink it.
    pub async fn upsert_agent_session(&self, s: &AgentSessionRow<'_>) -> Result<(), DimsError> {
        let project_id = self.project_id(&s.src.project).await?;
        let src: &pb::AgentSession = s.src;
        let context = if src.context_json.is_empty() {
            "{}"
        } else {
            &src.context_json
        };
        let metrics_json = if src.metrics_json.is_empty() {
            "{}"
        } else {
            &src.metrics_json
        };
        let outcome = (!src.outcome.is_empty()).then_some(src.outcome.as_str());
        let quality = src.quality_score.map(|q| format!("{q:.2}"));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let user_id = self.session_user(&*tx, src.user.as_ref()).await?;
        session_organization(
            &*tx,
            project_id,
            src.organization.as_ref(),
            user_id,
            "organization.key",
        )
        .await?;
        tx
            .execute(
                "INSERT INTO agent_sessions (id, agent_id, agent_version, project_id, start_time, end_time, duration, context, metrics, outcome, quality_score, user_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9::text::jsonb, $10, $11::text::numeric, $12)
                 ON CONFLICT (id) DO UPDATE SET
                    agent_version = EXCLUDED.agent_version, project_id = EXCLUDED.project_id,
                    user_id = COALESCE(EXCLUDED.user_id, agent_sessions.user_id),
                    start_time = LEAST(agent_sessions.start_time, EXCLUDED.start_time),
                    end_time = GREATEST(EXCLUDED.end_time, agent_sessions.end_time),
                    duration = COALESCE(EXCLUDED.duration, agent_sessions.duration),
                    context = agent_sessions.context || EXCLUDED.context,
                    metrics = agent_sessions.metrics || EXCLUDED.metrics,
                    outcome = COALESCE(EXCLUDED.outcome, agent_sessions.outcome),
                    quality_score = COALESCE(EXCLUDED.quality_score, agent_sessions.quality_score),
                    updated_at = now()",
                &[
                    &s.id,
                    &src.agent_id,
                    &src.agent_version,
                    &project_id,
                    &pg_us_to_system_time(s.start_us),
                    &s.end_us.map(pg_us_to_system_time),
                    &src.duration_s,
                    &context,
                    &metrics_json,
                    &outcome,
                    &quality,
                    &user_id,
                ],
            )
            .await
            .inspect_err(|_| metrics::db_error("upsert_agent_session"))?;
        tx.commit()
            .await
            .inspect_err(|_| metrics::db_error("upsert_agent_session"))?;
        Ok(())
    }
}

/// A session's organisation, inside its transaction (nothing cached: it may
/// still roll back): the project joins it, or the session is refused when
/// the project is in another; its developer becomes a member of the
/// project's organisation. Returns the project's organisation.
async fn session_organization(
    tx: &impl GenericClient,
    project_id: i32,
    org: Option<&pb::Organization>,
    user_id: Option<i32>,
    field: &'static str,
) -> Result<Option<i32>, DimsError> {
    if let Some(o) = org {
        let org_id = upsert_client_organization(tx, o).await?;
        join_organization(tx, project_id, org_id, &o.key)
            .await?
            .map_err(|reason| DimsError::Invalid { field, reason })?;
    }
    let org: Option<i32> = tx
        .query_one(
            "SELECT organization_id FROM projects WHERE id = $1",
            &[&project_id],
        )
        .await?
        .get(0);
    if let (Some(org_id), Some(user_id)) = (org, user_id) {
        add_member(tx, org_id, user_id).await?;
    }
    Ok(org)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_from_names_and_urls() {
        let cfg = ProjectsConfig::default();
        let parse = |s| ProjectName::parse(s, &cfg).unwrap();
        let p = parse("codervisor/devlog");
        assert_eq!(
            (
                p.full_name.as_str(),
                p.identity.as_str(),
                p.owner.as_str(),
                p.name.as_str(),
                p.repo_url
            ),
            (
                "codervisor/devlog",
                "github.com/codervisor/devlog",
                "codervisor",
                "devlog",
                None
            )
        );
        let p = parse("git@github.com:codervisor/devlog.git");
        assert_eq!(p.full_name, "codervisor/devlog");
        assert_eq!(
            p.repo_url.as_deref(),
            Some("git@github.com:codervisor/devlog.git")
        );
        let p = parse("https://gitlab.com/group/sub/repo/");
        assert_eq!(
            (p.full_name.as_str(), p.owner.as_str(), p.name.as_str()),
            ("gitlab.com/group/sub/repo", "group/sub", "repo")
        );
        assert_eq!(parse("scratch").owner, "");
        // A token in the URL is never kept.
        let p = parse("https://ghp_0123456789abcdef@github.com/acme/api.git");
        assert_eq!(
            p.repo_url.as_deref(),
            Some("https://github.com/acme/api.git")
        );
        assert_eq!(p.identity, "github.com/acme/api");
        assert!(ProjectName::parse("https://github.com/", &cfg).is_err());
    }

    #[test]
    fn the_host_is_part_of_a_projects_identity() {
        let cfg = ProjectsConfig::default();
        let id = |s| ProjectName::parse(s, &cfg).unwrap().identity;
        // Another host, another repository.
        assert_ne!(
            id("https://gitlab.com/acme/api.git"),
            id("github.com/acme/api")
        );
        // One repository however it is named; GitHub and GitLab ignore case.
        assert_eq!(id("github.com/acme/api"), id("acme/api"));
        assert_eq!(id("ACME/API"), id("acme/api"));
        assert_eq!(id("https://github.com/ACME/api.git"), id("acme/api"));
        assert_eq!(id("git@github.com:acme/api.git"), id("acme/api"));
        assert_eq!(
            id("https://user@GitLab.com/Acme/API"),
            id("gitlab.com/acme/api")
        );
        // A host not known to ignore case compares names exactly.
        assert_ne!(
            id("git.example.com/Acme/api"),
            id("git.example.com/acme/api")
        );
        // The display form keeps the case first seen.
        assert_eq!(
            ProjectName::parse("ACME/API", &cfg).unwrap().full_name,
            "ACME/API"
        );
        // Another default host.
        let gitlab = ProjectsConfig {
            default_git_host: "gitlab.com".into(),
            ..ProjectsConfig::default()
        };
        let p = ProjectName::parse("acme/api", &gitlab).unwrap();
        assert_eq!(
            (p.identity.as_str(), p.full_name.as_str()),
            ("gitlab.com/acme/api", "acme/api")
        );
    }
}
