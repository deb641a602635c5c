//! The two record kinds, as intake sees them: what a batch of each holds,
//! how a row is checked, which dimension it names, and how it is encoded.
//! Intake's steps are written once over [`Record`]; this file holds all
//! that differs between an agent event and a chat message.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use uuid::Uuid;

use super::{
    Intake,
    policy::{Changes, ContentPolicy, Policy},
    redact::{Redactor, Scan},
};
use crate::{
    ack::{Rejection, RejectionKind},
    auth::Scope,
    config::Limits,
    copy::encode,
    db::dims::{DimsError, SessionInfo},
    pb::{self, wire},
    row::{EventRow, MessageRow, Table},
    spool,
    validate::{self, TimeWindow},
};

/// The rows of a batch: as the client sent them (each row's protobuf,
/// decoded one by one, so that a row that does not decode is one rejected
/// row) or already decoded (OTLP maps its records to rows itself).
#[derive(Debug, Clone)]
pub enum Rows<W> {
    Wire(Vec<Bytes>),
    Decoded(Vec<W>),
}

impl<W: Message + Default> Rows<W> {
    pub fn len(&self) -> usize {
        match self {
            Rows::Wire(rows) => rows.len(),
            Rows::Decoded(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the rows' protobuf: what admission sizes a batch's working
    /// set by.
    pub(super) fn wire_bytes(&self) -> usize {
        match self {
            Rows::Wire(rows) => rows.iter().map(Bytes::len).sum(),
            Rows::Decoded(rows) => rows.iter().map(Message::encoded_len).sum(),
        }
    }

    /// Every row decoded, with its index in the batch; rows that do not
    /// decode become rejections. The wire bytes come back too, for the
    /// spool to keep (None when the rows came decoded).
    pub(super) fn decode(
        self,
        rejected: &mut Vec<Rejection>,
    ) -> (Vec<(u32, W)>, Option<Vec<Bytes>>) {
        match self {
            Rows::Wire(rows) => (validate::decode_rows(&rows, rejected), Some(rows)),
            Rows::Decoded(rows) => (
                rows.into_iter()
                    .enumerate()
                    .map(|(i, r)| (i as u32, r))
                    .collect(),
                None,
            ),
        }
    }
}

/// One batch of one record kind, as intake takes it.
#[derive(Debug, Clone)]
pub struct Batch<W> {
    pub sequence: u64,
    /// Chat sessions the messages name (empty for events).
    pub sessions: Vec<pb::ChatSession>,
    pub rows: Rows<W>,
}

impl From<wire::AgentEventBatch> for Batch<pb::AgentEvent> {
    fn from(b: wire::AgentEventBatch) -> Self {
        Self {
            sequence: b.sequence,
            sessions: Vec::new(),
            rows: Rows::Wire(b.events),
        }
    }
}

impl From<wire::ChatMessageBatch> for Batch<pb::ChatMessage> {
    fn from(b: wire::ChatMessageBatch) -> Self {
        Self {
            sequence: b.sequence,
            sessions: b.sessions,
            rows: Rows::Wire(b.messages),
        }
    }
}

/// One kind of record: its wire type, the typed row validation makes of
/// it, the dimension the row names, and its encoding.
///
/// Nothing here waits: what needs the database is named by
/// [`Record::lookup`] and looked up by [`Intake::look_up`], for both kinds.
pub trait Record: Message + Default + Sized + Send + Sync + 'static {
    const TABLE: Table;
    /// The checked row, borrowing the record.
    type Row<'a>: Send + Sync;
    /// What the row's dimension resolves to: what encode needs beside it.
    type Dim: Send;

    fn validate(
        &self,
        index: u32,
        limits: &Limits,
        window: TimeWindow,
    ) -> Result<Self::Row<'_>, Rejection>;

    fn index(row: &Self::Row<'_>) -> u32;

    fn ts_us(row: &Self::Row<'_>) -> i64;

    fn id(row: &Self::Row<'_>) -> Uuid;

    /// What the rows need looked up in the database before they can be
    /// encoded (`batch_sessions`: the chat sessions of the batch that were
    /// accepted, which need no look-up).
    fn lookup<'a>(intake: &Intake, rows: &[Self::Row<'a>], batch_sessions: &[Uuid]) -> Lookup<'a>;

    /// The row's dimension, from what the look-up found, or why the row is
    /// refused (outside the key's scope, unknown).
    fn resolve(
        intake: &Intake,
        row: &Self::Row<'_>,
        found: &Found<'_>,
        scope: &Scope,
    ) -> Result<Self::Dim, Rejection>;

    /// Spool mode: whether the row may be spooled, decided without writing
    /// to the database.
    fn check(
        intake: &Intake,
        row: &Self::Row<'_>,
        found: &Found<'_>,
        batch_sessions: &[Uuid],
        scope: &Scope,
    ) -> Result<(), Rejection>;

    fn encode_row(buf: &mut BytesMut, row: &Self::Row<'_>, dim: &Self::Dim);

    /// What the per-project figures count of a row once it is stored: its
    /// project and its cost in nano-USD.
    fn tally(row: &Self::Row<'_>, dim: &Self::Dim) -> (i32, i64);

    /// The spool's form of the accepted rows of a batch.
    fn spooled(sequence: u64, sessions: Vec<pb::ChatSession>, rows: Vec<Bytes>) -> spool::Batch;

    /// The row's developer, where a row of this kind has one of its own
    /// (the key's developer fills it, `--pseudonymize-users` hashes it).
    fn user_slot(&mut self) -> Option<&mut Option<pb::User>>;

    /// The record's credentials redacted, in place.
    fn redact(&mut self, redactor: &Redactor, scan: &mut Scan);

    /// The project the row names itself, where a row of this kind does
    /// (a URL's credentials are taken out of it, redaction on or off).
    fn project_mut(&mut self) -> Option<&mut String>;

    /// Whose content policy the record follows.
    fn policy_subject(&self) -> Subject<'_>;

    /// The record's content as `p` stores it, in place.
    fn apply_policy(&mut self, content: &ContentPolicy, p: Policy, changes: &mut Changes);
}

/// What names a record's project for the content policy.
pub enum Subject<'a> {
    /// The project as the row names it.
    Project(&'a str),
    /// The chat session whose project it is.
    Session(&'a str),
}

impl Record for pb::AgentEvent {
    const TABLE: Table = Table::AgentEvents;
    type Row<'a> = EventRow<'a>;
    /// The project's id, and the developer's if one is named.
    type Dim = (i32, Option<i32>);

    fn validate(
        &self,
        index: u32,
        limits: &Limits,
        window: TimeWindow,
    ) -> Result<EventRow<'_>, Rejection> {
        validate::validate_event(self, index, limits, window)
    }

    fn index(row: &EventRow<'_>) -> u32 {
        row.index
    }

    fn ts_us(row: &EventRow<'_>) -> i64 {
        row.ts_us
    }

    fn id(row: &EventRow<'_>) -> Uuid {
        row.id
    }

    fn lookup<'a>(_: &Intake, rows: &[Self::Row<'a>], _: &[Uuid]) -> Lookup<'a> {
        // Each distinct project, user, (project, organisation) and
        // (project, user) once: usually one or two of each per batch.
        let mut lookup = EventLookup::default();
        for r in rows {
            let name: &'a str = r.src.project.as_str();
            if !lookup.projects.contains(&name) {
                lookup.projects.push(name);
            }
            if let Some(u) = r.src.user.as_ref() {
                if !lookup.users.iter().any(|k| k.key == u.key) {
                    lookup.users.push(u);
                }
                if !lookup.members.contains(&(name, u.key.as_str())) {
                    lookup.members.push((name, u.key.as_str()));
                }
            }
            if let Some(o) = r.src.organization.as_ref()
                && !lookup
                    .organizations
                    .iter()
                    .any(|(p, k)| *p == name && k.key == o.key)
            {
                lookup.organizations.push((name, o));
            }
        }
        Lookup::Events(lookup)
    }

    fn resolve(
        _: &Intake,
        row: &EventRow<'_>,
        found: &Found<'_>,
        _: &Scope,
    ) -> Result<(i32, Option<i32>), Rejection> {
        let project = found.project(&row.src.project, row.index)?;
        if let Some(o) = row.src.organization.as_ref() {
            found.organization(&row.src.project, &o.key, row.index)?;
        }
        Ok((project, row.src.user.as_ref().map(|u| found.user(&u.key))))
    }

    fn check(
        _: &Intake,
        row: &EventRow<'_>,
        found: &Found<'_>,
        _: &[Uuid],
        _: &Scope,
    ) -> Result<(), Rejection> {
        found.project(&row.src.project, row.index).map(drop)
    }

    fn encode_row(buf: &mut BytesMut, row: &EventRow<'_>, &(project, user): &(i32, Option<i32>)) {
        encode::encode_event(buf, row, project, user)
    }

    fn tally(row: &EventRow<'_>, &(project, _): &(i32, Option<i32>)) -> (i32, i64) {
        (project, row.cost_nanos.unwrap_or(0))
    }

    fn user_slot(&mut self) -> Option<&mut Option<pb::User>> {
        Some(&mut self.user)
    }

    fn redact(&mut self, redactor: &Redactor, scan: &mut Scan) {
        redactor.event(self, scan)
    }

    fn project_mut(&mut self) -> Option<&mut String> {
        Some(&mut self.project)
    }

    fn policy_subject(&self) -> Subject<'_> {
        Subject::Project(&self.project)
    }

    fn apply_policy(&mut self, content: &ContentPolicy, p: Policy, changes: &mut Changes) {
        content.event(self, p, changes)
    }

    fn spooled(sequence: u64, _sessions: Vec<pb::ChatSession>, rows: Vec<Bytes>) -> spool::Batch {
        spool::Batch::Events(wire::AgentEventBatch {
            sequence,
            events: rows,
        })
    }
}

/// How long spool mode waits for the database to name unknown sessions.
pub(super) const SESSION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

impl Record for pb::ChatMessage {
    const TABLE: Table = Table::ChatMessages;
    type Row<'a> = MessageRow<'a>;
    /// The session's project and agent type, which its messages carry.
    type Dim = SessionInfo;

    fn validate(
        &self,
        index: u32,
        limits: &Limits,
        window: TimeWindow,
    ) -> Result<MessageRow<'_>, Rejection> {
        validate::validate_message(self, index, limits, window)
    }

    fn index(row: &MessageRow<'_>) -> u32 {
        row.index
    }

    fn ts_us(row: &MessageRow<'_>) -> i64 {
        row.ts_us
    }

    fn id(row: &MessageRow<'_>) -> Uuid {
        row.id
    }

    fn lookup<'a>(intake: &Intake, rows: &[Self::Row<'a>], batch_sessions: &[Uuid]) -> Lookup<'a> {
        // The sessions neither in this batch nor cached, each once.
        let mut missing: Vec<Uuid> = rows
            .iter()
            .map(|r| r.session_id)
            .filter(|id| !batch_sessions.contains(id) && intake.dims.cached_session(id).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        Lookup::Sessions(missing)
    }

    fn resolve(
        intake: &Intake,
        row: &MessageRow<'_>,
        _: &Found<'_>,
        scope: &Scope,
    ) -> Result<SessionInfo, Rejection> {
        session_of(intake, scope, row)
    }

    fn check(
        intake: &Intake,
        row: &MessageRow<'_>,
        found: &Found<'_>,
        batch_sessions: &[Uuid],
        scope: &Scope,
    ) -> Result<(), Rejection> {
        if batch_sessions.contains(&row.session_id) {
            return Ok(());
        }
        match session_of(intake, scope, row) {
            Ok(_) => Ok(()),
            Err(why) if why.kind == RejectionKind::Denied || found.sessions_looked_up => Err(why),
            // Unknown while the database cannot say: replay decides.
            Err(_) => Ok(()),
        }
    }

    fn encode_row(buf: &mut BytesMut, row: &MessageRow<'_>, session: &SessionInfo) {
        encode::encode_message(buf, row, session.project_id, &session.agent_type)
    }

    fn tally(_: &MessageRow<'_>, session: &SessionInfo) -> (i32, i64) {
        (session.project_id, 0)
    }

    fn user_slot(&mut self) -> Option<&mut Option<pb::User>> {
        // A message's developer is its session's.
        None
    }

    fn redact(&mut self, redactor: &Redactor, scan: &mut Scan) {
        redactor.message(self, scan)
    }

    fn project_mut(&mut self) -> Option<&mut String> {
        None
    }

    fn policy_subject(&self) -> Subject<'_> {
        Subject::Session(&self.session_id)
    }

    fn apply_policy(&mut self, _: &ContentPolicy, p: Policy, changes: &mut Changes) {
        ContentPolicy::message(self, p.chat, changes)
    }

    fn spooled(sequence: u64, sessions: Vec<pb::ChatSession>, rows: Vec<Bytes>) -> spool::Batch {
        spool::Batch::Messages(wire::ChatMessageBatch {
            sequence,
            sessions,
            messages: rows,
        })
    }
}

/// What the rows of a batch need looked up before they can be encoded.
pub enum Lookup<'a> {
    Events(EventLookup<'a>),
    /// The chat sessions the messages name that are not cached.
    Sessions(Vec<Uuid>),
}

/// What the events of a batch name, each once.
#[derive(Default)]
pub struct EventLookup<'a> {
    pub projects: Vec<&'a str>,
    pub users: Vec<&'a pb::User>,
    /// (project, the organisation a row names for it).
    pub organizations: Vec<(&'a str, &'a pb::Organization)>,
    /// (project, user key): the developer becomes a member of the
    /// project's organisation.
    pub members: Vec<(&'a str, &'a str)>,
}

/// What a [`Lookup`] found.
#[derive(Debug, Default)]
pub struct Found<'a> {
    /// Each project name's id, or why rows naming it are refused.
    pub projects: Vec<(&'a str, Result<i32, Rejection>)>,
    /// Each user key's id (store mode only).
    pub users: Vec<(&'a str, i32)>,
    /// (project, organisation key): whether the project is in it (store
    /// mode only; in spool mode, replay finds out).
    pub organizations: Vec<(&'a str, &'a str, Result<(), Rejection>)>,
    /// Whether the database answered for the missing sessions (they are
    /// in the cache now, if they exist).
    pub sessions_looked_up: bool,
}

impl Found<'_> {
    fn project(&self, name: &str, index: u32) -> Result<i32, Rejection> {
        let (_, verdict) = self
            .projects
            .iter()
            .find(|(n, _)| *n == name)
            .expect("every project of the batch was looked up");
        verdict.as_ref().copied().map_err(|why| why.at(index))
    }

    fn organization(&self, project: &str, key: &str, index: u32) -> Result<(), Rejection> {
        match self
            .organizations
            .iter()
            .find(|(p, k, _)| *p == project && *k == key)
        {
            Some((_, _, Err(why))) => Err(why.at(index)),
            _ => Ok(()),
        }
    }

    fn user(&self, key: &str) -> i32 {
        self.users
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, id)| *id)
            .expect("every user of the batch was looked up")
    }
}

impl Intake {
    /// Looks up what `lookup` names: the projects (each checked against the
    /// key's scope first, and only then named to the database, which would
    /// create it; in spool mode, `store` false, only checked), or the
    /// missing chat sessions (in spool mode briefly: with the database down
    /// they stay unknown until replay).
    pub(super) async fn look_up<'a>(
        &self,
        lookup: Lookup<'a>,
        scope: &Scope,
        store: bool,
    ) -> Result<Found<'a>, DimsError> {
        let mut found = Found::default();
        match lookup {
            Lookup::Events(lookup) => {
                let users = lookup.users;
                for name in lookup.projects {
                    // The organisation the batch's rows name for it, if any:
                    // where a key scoped to organisations creates it.
                    let named = lookup
                        .organizations
                        .iter()
                        .find(|(p, _)| *p == name)
                        .map(|(_, o)| o.key.as_str());
                    let admitted = self
                        .admit_project(scope, 0, "project", name, named, store)
                        .await?;
                    let verdict = match admitted {
                        Err(why) => Err(why),
                        // Spool mode only checks: the id is not needed.
                        Ok(()) if !store => Ok(0),
                        Ok(()) => match self.dims.project_id(name).await {
                            Ok(id) => Ok(id),
                            Err(DimsError::Invalid { reason, .. }) => {
                                Err(Rejection::new(0, "project", reason))
                            }
                            Err(e) => return Err(e),
                        },
                    };
                    found.projects.push((name, verdict));
                }
                // Users only for a batch with rows to store: a request
                // whose every project is outside the key's scope creates
                // no user row.
                if store && found.projects.iter().any(|(_, v)| v.is_ok()) {
                    for u in users {
                        let id = self.dims.user_id(u).await?;
                        found.users.push((u.key.as_str(), id));
                    }
                    self.join_organizations(lookup.organizations, lookup.members, &mut found)
                        .await?;
                }
            }
            Lookup::Sessions(missing) if store => {
                self.dims.load_sessions(&missing).await?;
                found.sessions_looked_up = true;
            }
            Lookup::Sessions(missing) => {
                let lookup = self.dims.load_sessions(&missing);
                found.sessions_looked_up = !missing.is_empty()
                    && matches!(
                        tokio::time::timeout(SESSION_LOOKUP_TIMEOUT, lookup).await,
                        Ok(Ok(()))
                    );
            }
        }
        Ok(found)
    }
}

impl Intake {
    /// The projects join the organisations their rows name (or the rows
    /// are refused where a project is in another one); each developer
    /// becomes a member of their projects' organisations.
    async fn join_organizations<'a>(
        &self,
        organizations: Vec<(&'a str, &'a pb::Organization)>,
        members: Vec<(&'a str, &'a str)>,
        found: &mut Found<'a>,
    ) -> Result<(), DimsError> {
        let project_id = |found: &Found<'_>, name: &str| {
            found
                .projects
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.as_ref().ok().copied())
        };
        for (project, o) in organizations {
            let Some(id) = project_id(found, project) else {
                continue;
            };
            let verdict = self
                .dims
                .join_organization(id, o)
                .await?
                .map_err(|reason| Rejection::new(0, "organization.key", reason));
            found.organizations.push((project, o.key.as_str(), verdict));
        }
        for (project, key) in members {
            let Some(org) =
                project_id(found, project).and_then(|id| self.dims.cached_project_org(id))
            else {
                continue;
            };
            let user = found.user(key);
            self.dims.add_member(org, user).await?;
        }
        Ok(())
    }
}

/// A message's session from the cache, within the key's scope.
fn session_of(
    intake: &Intake,
    scope: &Scope,
    r: &MessageRow<'_>,
) -> Result<SessionInfo, Rejection> {
    match intake.dims.cached_session(&r.session_id) {
        Some(s) if !scope.allows_id(s.project_id, intake.dims.cached_project_org(s.project_id)) => {
            Err(Rejection::denied(
                r.index,
                "session_id",
                scope.denial(&format!("the project of chat session {}", r.session_id)),
            ))
        }
        Some(s) => Ok(s),
        None => Err(Rejection::new(
            r.index,
            "session_id",
            format!(
                "unknown chat session {}: send it in this batch's `sessions` or through ReportSessions first",
                r.session_id
            ),
        )),
    }
}
