//! Sessions: the chat sessions a chat message batch carries, and the
//! `ReportSessions` call (chat and agent sessions on their own). One step
//! for both: validate, check the project against the key's scope, then
//! (unless spooling) upsert through the dimension cache.

use std::time::SystemTime;

use uuid::Uuid;

use super::{IngestError, Intake};
use crate::{
    ack::Rejection,
    auth::Scope,
    db::dims::DimsError,
    pb,
    validate::{self, TimeWindow},
};

/// The chat sessions of one batch, checked.
#[derive(Debug, Default)]
pub(super) struct BatchSessions {
    /// (index in the batch, session id) of each accepted session.
    pub accepted: Vec<(usize, Uuid)>,
    pub rejected: Vec<Rejection>,
}

impl BatchSessions {
    pub fn ids(&self) -> Vec<Uuid> {
        self.accepted.iter().map(|&(_, id)| id).collect()
    }
}

/// What a session report stored and refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionsOutcome {
    pub chat_sessions_stored: u32,
    pub agent_sessions_stored: u32,
    pub chat_sessions_rejected: Vec<Rejection>,
    pub agent_sessions_rejected: Vec<Rejection>,
}

/// A row that is the client's fault is Ok(Err); the database's is Err.
type Checked<T> = Result<Result<T, Rejection>, DimsError>;

/// An `Invalid` answer of the dimension cache is the row's fault.
fn rejected_by_dims<T>(index: u32, e: DimsError) -> Checked<T> {
    match e {
        DimsError::Invalid { field, reason } => Ok(Err(Rejection::new(index, field, reason))),
        other => Err(other),
    }
}

impl Intake {
    /// One chat session: validated, within the key's scope, and upserted
    /// when `store` (spool mode checks it only; replay stores it).
    async fn chat_session(
        &self,
        s: &pb::ChatSession,
        index: u32,
        scope: &Scope,
        window: TimeWindow,
        store: bool,
    ) -> Checked<Uuid> {
        let row = match validate::validate_chat_session(s, index, &self.limits, window) {
            Ok(row) => row,
            Err(why) => return Ok(Err(why)),
        };
        let project = &row.project.name;
        let named = row.project.organization.as_ref().map(|o| o.key.as_str());
        let field = "workspace.project.name";
        if let Err(why) = self
            .admit_project(scope, index, field, project, named, store)
            .await?
        {
            return Ok(Err(why));
        }
        if store && let Err(e) = self.dims.upsert_chat_session(&row).await {
            return rejected_by_dims(index, e);
        }
        Ok(Ok(row.session_id))
    }

    /// The sessions of a chat message batch, before its messages (which
    /// name them).
    pub(super) async fn batch_sessions(
        &self,
        sessions: &[pb::ChatSession],
        scope: &Scope,
        window: TimeWindow,
        store: bool,
    ) -> Result<BatchSessions, DimsError> {
        let mut out = BatchSessions::default();
        for (i, s) in sessions.iter().enumerate() {
            match self.chat_session(s, i as u32, scope, window, store).await? {
                Ok(id) => out.accepted.push((i, id)),
                Err(why) => out.rejected.push(why),
            }
        }
        Ok(out)
    }

    /// `ReportSessions`: chat and agent sessions, each stored or refused on
    /// its own; a database failure fails the whole report (resend it).
    pub async fn report_sessions(
        &self,
        report: &pb::SessionReport,
        scope: &Scope,
    ) -> Result<SessionsOutcome, IngestError> {
        let mut report = report.clone();
        self.session_developers(
            report
                .chat_sessions
                .iter_mut()
                .map(|s| &mut s.user)
                .chain(report.agent_sessions.iter_mut().map(|s| &mut s.user)),
            scope,
        );
        self.redact_chat_sessions(&mut report.chat_sessions);
        let mut scan = super::redact::Scan::default();
        for s in &mut report.agent_sessions {
            super::redact::strip_url_userinfo(&mut s.project, &mut scan.hits);
            if let Some(redactor) = &self.redactor {
                redactor.agent_session(s, &mut scan);
            }
        }
        crate::metrics::redacted("agent_sessions", scan.hits.iter());
        let rows = report.chat_sessions.len() + report.agent_sessions.len();
        if rows > self.limits.max_batch_rows {
            return Err(IngestError::TooManySessions {
                rows,
                max: self.limits.max_batch_rows,
            });
        }
        let window = TimeWindow::around(SystemTime::now(), &self.limits);
        let failed = |source| IngestError::Sessions { source };
        let mut out = SessionsOutcome::default();
        for (i, s) in report.chat_sessions.iter().enumerate() {
            match self.chat_session(s, i as u32, scope, window, true).await {
                Ok(Ok(_)) => out.chat_sessions_stored += 1,
                Ok(Err(why)) => out.chat_sessions_rejected.push(why),
                Err(source) => return Err(failed(source)),
            }
        }
        for (i, s) in report.agent_sessions.iter().enumerate() {
            match self.agent_session(s, i as u32, scope, window).await {
                Ok(Ok(())) => out.agent_sessions_stored += 1,
                Ok(Err(why)) => out.agent_sessions_rejected.push(why),
                Err(source) => return Err(failed(source)),
            }
        }
        Ok(out)
    }

    /// Counts the chat sessions' messages and tokens again from their
    /// committed rows (the OTLP edge's sessions, whose exporters never
    /// report them; [`crate::db::totals`]).
    pub async fn recount_chat_sessions(&self, ids: &[Uuid]) -> Result<u64, IngestError> {
        crate::db::totals::recount_chat_sessions(self.dims.pool(), ids)
            .await
            .map_err(|source| IngestError::Sessions { source })
    }

    async fn agent_session(
        &self,
        s: &pb::AgentSession,
        index: u32,
        scope: &Scope,
        window: TimeWindow,
    ) -> Checked<()> {
        let row = match validate::validate_agent_session(s, index, &self.limits, window) {
            Ok(row) => row,
            Err(why) => return Ok(Err(why)),
        };
        let named = s.organization.as_ref().map(|o| o.key.as_str());
        if let Err(why) = self
            .admit_project(scope, index, "project", &s.project, named, true)
            .await?
        {
            return Ok(Err(why));
        }
        match self.dims.upsert_agent_session(&row).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => rejected_by_dims(index, e),
        }
    }
}
