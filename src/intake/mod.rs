//! Stage 2: **intake** — one batch from an edge to the buffer. The native
//! gRPC API, OTLP and spool replay all hand their batches here, and all go
//! the same way, written once for both record kinds ([`record::Record`]):
//!
//! 1. the batch's row count against `--max-batch-rows`, and buffer space for
//!    its working set ([`crate::buffer`]);
//! 2. its chat sessions, if any ([`session`]), so that its messages can name
//!    them;
//! 3. each row decoded (unless the edge hands it decoded, as OTLP does) and
//!    checked ([`crate::validate`]) into a typed row, or a [`Rejection`];
//! 4. the dimension each row names resolved ([`crate::db::dims`]: its
//!    project, or its chat session) within the API key's scope;
//! 5. the accepted rows encoded into one piece ([`crate::copy::encode`]) and
//!    submitted to the table's batcher.
//!
//! What comes back is an [`Accepted`] batch whose [`BatchOutcome`] resolves
//! after commit. With `--spool-dir`, steps 4–5 become: checked without
//! writing to the database, appended to the spool, acknowledged once on
//! disk; [`replay`] later feeds each spooled entry through steps 1–5.
//!
//! A batch refused whole is an [`IngestError`], whose [`ErrorKind`] the
//! edges look up in [`crate::codes`].

mod piece;
pub mod policy;
pub mod record;
pub mod redact;
pub mod replay;
pub mod session;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

pub use self::record::{Batch, Rows};
use self::{piece::PieceBuilder, record::Record};
use crate::{
    ack::{BatchOutcome, Failure, PieceOutcome, Rejection},
    auth::Scope,
    buffer::{AdmitError, TableBuffer},
    codes::ErrorKind,
    config::{Limits, PipelineConfig},
    db::dims::{Dimensions, DimsError, ProjectName},
    metrics,
    row::Table,
    spool::{
        self, Entry,
        log::{Log, LogError},
    },
    validate::TimeWindow,
};

/// Buffer space a batch takes while intake decodes, checks and encodes it,
/// per byte of its rows' protobuf: the decoded rows (about 2×: strings plus
/// the structs around them) and the encoded piece (about 1×) exist side by
/// side.
const WORKING_SET_PER_WIRE_BYTE: usize = 3;

/// A batch (or a session report) refused as a whole: none of its rows is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("batch {sequence}: {rows} rows, more than the limit of {max} per batch; split it")]
    TooManyRows {
        sequence: u64,
        rows: usize,
        max: usize,
    },
    #[error("batch {sequence}: {source}")]
    Admit { sequence: u64, source: AdmitError },
    #[error("batch {sequence}: {source}")]
    Dimensions { sequence: u64, source: DimsError },
    #[error("batch {sequence}: not spooled: {source}")]
    Spool { sequence: u64, source: LogError },
    #[error("{rows} sessions, more than the limit of {max} per report")]
    TooManySessions { rows: usize, max: usize },
    #[error("sessions not stored: {source}; resend")]
    Sessions { source: DimsError },
}

impl IngestError {
    /// Its line in the code table.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IngestError::TooManyRows { .. } | IngestError::TooManySessions { .. } => {
                ErrorKind::InvalidArgument
            }
            IngestError::Admit { source, .. } => match source {
                AdmitError::Full { .. } => ErrorKind::Exhausted,
                AdmitError::TooLarge { .. } => ErrorKind::InvalidArgument,
                AdmitError::ShuttingDown => ErrorKind::Unavailable,
            },
            IngestError::Dimensions { source, .. } | IngestError::Sessions { source } => {
                dims_kind(source)
            }
            IngestError::Spool { source, .. } => match source {
                LogError::Full { .. } | LogError::DiskFull { .. } => ErrorKind::Exhausted,
                LogError::Io { .. } | LogError::Closed => ErrorKind::Unavailable,
            },
        }
    }

    pub fn failure(&self) -> Failure {
        Failure {
            message: self.to_string(),
            kind: self.kind(),
        }
    }
}

/// Whether a failure to resolve dimensions is the client's, passes by
/// itself (the database is down) or needs the operator (a missing table or
/// privilege), by SQLSTATE.
fn dims_kind(e: &DimsError) -> ErrorKind {
    use crate::db::error::{is_transient, pool_is_transient};
    match e {
        DimsError::Invalid { .. } => ErrorKind::InvalidArgument,
        DimsError::Pool(e) if !pool_is_transient(e) => ErrorKind::Internal,
        DimsError::Db(e) if !is_transient(e.code()) => ErrorKind::Internal,
        DimsError::Pool(_) | DimsError::Db(_) => ErrorKind::Unavailable,
    }
}

/// What intake needs, shared by every stream and call; built once, with
/// all its parts, by [`crate::server`].
pub struct Intake {
    pub(crate) events: TableBuffer,
    pub(crate) messages: TableBuffer,
    pub dims: Arc<Dimensions>,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    /// Rows older than this are late (`--late-after`); None when there are
    /// no continuous aggregates to refresh (plain PostgreSQL).
    pub(crate) late_after: Option<Duration>,
    /// The disk spool (`--spool-dir`): batches are acked once appended to it.
    pub(crate) spool: Option<Log>,
    /// `--pseudonymize-users`: developers stored as pseudonyms.
    pub(crate) pseudonyms: Option<crate::privacy::Pseudonyms>,
    /// Credentials redacted before anything is spooled or stored (None:
    /// `--redaction off`).
    pub(crate) redactor: Option<redact::Redactor>,
    /// How much content is stored, per project (None: all of it, no
    /// `--content-policy`).
    pub(crate) content_policy: Option<policy::ContentPolicy>,
}

/// A batch whose accepted rows are in the buffer (or the spool).
pub struct Accepted {
    sequence: u64,
    received: usize,
    rejected: Vec<Rejection>,
    outcome: Option<oneshot::Receiver<PieceOutcome>>,
    /// Rows appended to the spool (spool mode; no outcome to wait for).
    spooled: u32,
    table: Table,
    /// Refused chat sessions of a chat message batch.
    sessions_rejected: Vec<Rejection>,
}

impl Accepted {
    /// Waits for the commit of the batch's rows; counts the ack sent.
    pub async fn ack(self) -> BatchOutcome {
        let table = self.table;
        let outcome = self.outcome().await;
        metrics::ack_sent(table, outcome.failure.is_none());
        outcome
    }

    /// What became of the batch's rows, without counting an ack sent
    /// (spool replay: the client had its ack at append).
    pub async fn outcome(self) -> BatchOutcome {
        let piece = match self.outcome {
            None => None,
            Some(rx) => Some(rx.await.unwrap_or_else(|_| PieceOutcome {
                failure: Some(Failure {
                    message: "internal error: the batch's outcome was lost; resend it".into(),
                    kind: ErrorKind::Unavailable,
                }),
                ..Default::default()
            })),
        };
        let mut outcome = BatchOutcome::of(self.sequence, self.received, self.rejected, piece);
        outcome.spooled = self.spooled;
        outcome.sessions_rejected = self.sessions_rejected;
        outcome
    }
}

impl Intake {
    /// A spooled entry, replayed: through the same path as a client's batch,
    /// with timestamps checked against the time it was received.
    pub async fn store(&self, entry: Entry) -> Result<Accepted, IngestError> {
        let received_at = crate::time::from_unix_us(entry.received_at_us);
        match entry.batch {
            spool::Batch::Events(b) => self.store_batch(b.into(), received_at, &entry.scope).await,
            spool::Batch::Messages(b) => {
                self.store_batch(b.into(), received_at, &entry.scope).await
            }
        }
    }

    /// A client's batch (events or chat messages): spooled (with
    /// `--spool-dir`) or stored.
    pub async fn take<R: Record>(
        &self,
        batch: Batch<R>,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        metrics::rows_received(R::TABLE, batch.rows.len());
        match &self.spool {
            Some(log) => self.spool_batch(log, batch, scope).await,
            None => self.store_batch(batch, SystemTime::now(), scope).await,
        }
    }

    /// Whether `name` is a project this scope may write to. A key's own
    /// projects are known without the database. For a key scoped to
    /// organisations, the project's organisation decides, and a new
    /// project is created inside the organisation the rows name (`named`),
    /// or the key's only one. In spool mode (`store` false) only what the
    /// cache knows is decided; the rest is decided at replay.
    pub async fn admit_project(
        &self,
        scope: &Scope,
        index: u32,
        field: &'static str,
        name: &str,
        named: Option<&str>,
        store: bool,
    ) -> Result<Result<(), Rejection>, DimsError> {
        let p = match ProjectName::parse(name, &self.dims.projects_cfg) {
            Ok(p) => p,
            Err(r) => return Ok(Err(Rejection::new(index, field, r))),
        };
        if scope.allows_identity(&p.identity) {
            return Ok(Ok(()));
        }
        let denied = |why: String| {
            Rejection::denied(
                index,
                field,
                format!(
                    "{}: {why}",
                    scope.denial(&format!("project {:?}", p.full_name))
                ),
            )
        };
        if scope.organizations().is_empty() {
            return Ok(Err(Rejection::denied(
                index,
                field,
                scope.denial(&format!("project {:?}", p.full_name)),
            )));
        }
        let verdict = if store {
            self.dims
                .project_for_organizations(name, &p, scope.organizations(), named)
                .await?
        } else {
            self.dims
                .cached_project_for_organizations(name, scope.organizations())
                .unwrap_or(Ok(()))
        };
        Ok(verdict.map_err(denied))
    }

    /// Each row's developer as stored: the key's developer where the row
    /// names none (`keys create --user`), then, with
    /// `--pseudonymize-users`, a pseudonym with no name or email (before
    /// anything is looked up, spooled or stored from the decoded rows).
    fn developers<R: Record>(&self, rows: &mut [(u32, R)], scope: &Scope) {
        for (_, r) in rows {
            if let Some(slot) = r.user_slot() {
                self.developer(slot, scope);
            }
        }
    }

    /// The same for the sessions of a batch or a report.
    pub(super) fn session_developers<'a>(
        &self,
        slots: impl Iterator<Item = &'a mut Option<crate::pb::User>>,
        scope: &Scope,
    ) {
        for slot in slots {
            self.developer(slot, scope);
        }
    }

    fn developer(&self, slot: &mut Option<crate::pb::User>, scope: &Scope) {
        if slot.as_ref().is_none_or(|u| u.key.is_empty())
            && let Some(key) = scope.user()
        {
            *slot = Some(crate::pb::User {
                key: key.to_owned(),
                ..Default::default()
            });
        }
        if let (Some(p), Some(u)) = (&self.pseudonyms, slot.as_mut()) {
            p.user(u);
        }
    }

    /// Step 3's first part: each decoded row's credentials redacted; the
    /// indices of the rows that changed, in order.
    fn redact_rows<R: Record>(&self, rows: &mut [(u32, R)]) -> Vec<u32> {
        let mut scan = redact::Scan::default();
        let mut changed = Vec::new();
        for (i, r) in rows {
            let before = scan.hits.total();
            if let Some(p) = r.project_mut() {
                redact::strip_url_userinfo(p, &mut scan.hits);
            }
            if let Some(redactor) = &self.redactor {
                r.redact(redactor, &mut scan);
            }
            if scan.hits.total() > before {
                changed.push(*i);
            }
        }
        metrics::redacted(R::TABLE.name(), scan.hits.iter());
        changed
    }

    /// Step 3's second part: each decoded row's content as its project's
    /// policy stores it; the indices of the rows that changed, in order. A
    /// message's project is its session's: from the cache, else the
    /// database (briefly, in spool mode), else the batch's announcement of
    /// it, else unknown, and then the strictest policy applies.
    async fn apply_content_policy<R: Record>(
        &self,
        rows: &mut [(u32, R)],
        sessions: &[crate::pb::ChatSession],
        store: bool,
    ) -> Result<Vec<u32>, DimsError> {
        use self::record::Subject;
        let Some(content) = &self.content_policy else {
            return Ok(Vec::new());
        };
        let session = |id: &str| uuid::Uuid::parse_str(id).ok();
        let missing: Vec<uuid::Uuid> = {
            let mut m: Vec<_> = rows
                .iter()
                .filter_map(|(_, r)| match r.policy_subject() {
                    Subject::Session(id) => session(id),
                    Subject::Project(_) => None,
                })
                .filter(|id| self.dims.cached_session(id).is_none())
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            if store {
                self.dims.load_sessions(&missing).await?;
            } else {
                // The database may be down: the spool does not wait for it.
                let lookup = self.dims.load_sessions(&missing);
                let _ = tokio::time::timeout(record::SESSION_LOOKUP_TIMEOUT, lookup).await;
            }
        }
        let announced = |id: &str| {
            sessions
                .iter()
                .find(|s| s.session_id == id)
                .and_then(|s| s.workspace.as_ref()?.project.as_ref())
                .map(|p| content.for_name(&p.name))
        };
        // Usually one or two projects a batch: each looked up once.
        let mut seen: Vec<(String, policy::Policy)> = Vec::new();
        let mut changes = policy::Changes::default();
        let mut changed = Vec::new();
        let mut unresolved = 0;
        for (i, r) in rows.iter_mut() {
            let p = match r.policy_subject() {
                Subject::Project(name) => match seen.iter().find(|(n, _)| n == name) {
                    Some((_, p)) => *p,
                    None => {
                        let p = content.for_name(name);
                        seen.push((name.to_owned(), p));
                        p
                    }
                },
                Subject::Session(id) => {
                    match session(id).and_then(|u| self.dims.cached_session(&u)) {
                        Some(s) => content.for_identity(&s.project),
                        None => announced(id).unwrap_or_else(|| {
                            unresolved += 1;
                            content.strictest()
                        }),
                    }
                }
            };
            let before = changes.total();
            r.apply_policy(content, p, &mut changes);
            if changes.total() > before {
                changed.push(*i);
            }
        }
        metrics::content_policy(R::TABLE.name(), changes.iter());
        if !store {
            metrics::content_policy_unresolved(unresolved);
        }
        Ok(changed)
    }

    /// The same for the chat sessions a batch or a report carries.
    pub(super) fn redact_chat_sessions(&self, sessions: &mut [crate::pb::ChatSession]) {
        let mut scan = redact::Scan::default();
        for s in sessions {
            if let Some(p) = s.workspace.as_mut().and_then(|w| w.project.as_mut()) {
                redact::strip_url_userinfo(&mut p.name, &mut scan.hits);
                if let Some(url) = p.repo_url.as_mut() {
                    redact::strip_url_userinfo(url, &mut scan.hits);
                }
            }
            if let Some(redactor) = &self.redactor {
                redactor.chat_session(s, &mut scan);
            }
        }
        metrics::redacted("chat_sessions", scan.hits.iter());
    }

    fn buffer(&self, table: Table) -> &TableBuffer {
        match table {
            Table::AgentEvents => &self.events,
            Table::ChatMessages => &self.messages,
        }
    }

    /// Steps 1–5: the batch's accepted rows into the buffer.
    async fn store_batch<R: Record>(
        &self,
        batch: Batch<R>,
        received_at: SystemTime,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = self.check_batch(&batch)?;
        let (mut sessions, rows) = (batch.sessions, batch.rows);
        self.session_developers(sessions.iter_mut().map(|s| &mut s.user), scope);
        self.redact_chat_sessions(&mut sessions);
        let raw = rows.wire_bytes();
        let buffer = self.buffer(R::TABLE);
        let permit = self.admit(buffer, sequence, raw).await?;
        let window = TimeWindow::around(received_at, &self.limits);
        let dims_error = |source| IngestError::Dimensions { sequence, source };
        let sessions_rejected = self
            .batch_sessions(&sessions, scope, window, true)
            .await
            .map_err(dims_error)?
            .rejected;
        let mut rejected = Vec::new();
        let (mut decoded, wire) = rows.decode(&mut rejected);
        self.developers(&mut decoded, scope);
        self.redact_rows(&mut decoded);
        self.apply_content_policy(&mut decoded, &sessions, true)
            .await
            .map_err(dims_error)?;
        drop(wire);
        let checked = self.validate_all(&decoded, window, &mut rejected);
        let lookup = R::lookup(self, &checked, &[]);
        let found = self
            .look_up(lookup, scope, true)
            .await
            .map_err(dims_error)?;
        let mut piece = PieceBuilder::new(raw, checked.len(), self.late_before());
        for row in &checked {
            match R::resolve(self, row, &found, scope) {
                Ok(dim) => piece.row(
                    R::index(row),
                    (R::id(row), R::ts_us(row)),
                    R::tally(row, &dim),
                    |buf| R::encode_row(buf, row, &dim),
                ),
                Err(why) => rejected.push(why),
            }
        }
        // Only the encoded piece may wait for buffer space: the request and
        // its decoded rows would otherwise sit in memory beside it, outside
        // the buffer's limit.
        drop(found);
        drop(checked);
        drop(decoded);
        drop(sessions);
        let mut accepted = self
            .submit(buffer, sequence, received, rejected, piece, permit)
            .await?;
        accepted.sessions_rejected = sessions_rejected;
        Ok(accepted)
    }

    /// Spool mode: validates the batch (rejections go in its ack now),
    /// appends its accepted rows to the spool, and acks once they are on
    /// disk. The database is not needed: a message whose session the
    /// service does not know yet (and cannot look up, the database being
    /// down) is spooled all the same; replay resolves it.
    async fn spool_batch<R: Record>(
        &self,
        log: &Log,
        batch: Batch<R>,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = self.check_batch(&batch)?;
        let (mut sessions, rows) = (batch.sessions, batch.rows);
        self.session_developers(sessions.iter_mut().map(|s| &mut s.user), scope);
        self.redact_chat_sessions(&mut sessions);
        let now = SystemTime::now();
        let window = TimeWindow::around(now, &self.limits);
        let checked_sessions = self
            .batch_sessions(&sessions, scope, window, false)
            .await
            .map_err(|source| IngestError::Dimensions { sequence, source })?;
        let mut rejected = Vec::new();
        let (mut decoded, wire) = rows.decode(&mut rejected);
        self.developers(&mut decoded, scope);
        let mut changed = self.redact_rows(&mut decoded);
        changed.extend(
            self.apply_content_policy(&mut decoded, &sessions, false)
                .await
                .map_err(|source| IngestError::Dimensions { sequence, source })?,
        );
        changed.sort_unstable();
        changed.dedup();
        let checked = self.validate_all(&decoded, window, &mut rejected);
        let batch_sessions = checked_sessions.ids();
        let lookup = R::lookup(self, &checked, &batch_sessions);
        let found = self
            .look_up(lookup, scope, false)
            .await
            .map_err(|source| IngestError::Dimensions { sequence, source })?;
        let mut indices = Vec::with_capacity(checked.len());
        for row in &checked {
            match R::check(self, row, &found, &batch_sessions, scope) {
                Ok(()) => indices.push(R::index(row)),
                Err(why) => rejected.push(why),
            }
        }
        // What the client sent, unless redaction or the content policy
        // changed it: the spool holds only what may be stored.
        let reencoded = |i: u32| {
            let at = decoded
                .binary_search_by_key(&i, |(j, _)| *j)
                .expect("an accepted row was decoded");
            Bytes::from(decoded[at].1.encode_to_vec())
        };
        let kept: Vec<Bytes> = match &wire {
            Some(wire) => indices
                .iter()
                .map(|&i| {
                    if changed.binary_search(&i).is_ok() {
                        reencoded(i)
                    } else {
                        wire[i as usize].clone()
                    }
                })
                .collect(),
            // Rows handed decoded have no gaps: row i is decoded[i].
            None => indices
                .iter()
                .map(|&i| Bytes::from(decoded[i as usize].1.encode_to_vec()))
                .collect(),
        };
        let sessions = checked_sessions
            .accepted
            .iter()
            .map(|&(i, _)| sessions[i].clone())
            .collect();
        let entry = Entry {
            received_at_us: crate::time::unix_us(now),
            scope: scope.clone(),
            indices,
            batch: R::spooled(sequence, sessions, kept),
        };
        let mut accepted = self
            .append(log, R::TABLE, received, rejected, entry)
            .await?;
        accepted.sessions_rejected = checked_sessions.rejected;
        Ok(accepted)
    }

    /// Step 3: each decoded row checked into its typed row.
    fn validate_all<'a, R: Record>(
        &self,
        decoded: &'a [(u32, R)],
        window: TimeWindow,
        rejected: &mut Vec<Rejection>,
    ) -> Vec<R::Row<'a>> {
        let mut rows = Vec::with_capacity(decoded.len());
        for (i, wire) in decoded {
            match wire.validate(*i, &self.limits, window) {
                Ok(r) => rows.push(r),
                Err(r) => rejected.push(r),
            }
        }
        rows
    }

    async fn append(
        &self,
        log: &Log,
        table: Table,
        received: usize,
        rejected: Vec<Rejection>,
        entry: Entry,
    ) -> Result<Accepted, IngestError> {
        let sequence = entry.batch.sequence();
        count_rejections(table, &rejected);
        let spooled = entry.batch.rows().len();
        let has_sessions =
            matches!(&entry.batch, spool::Batch::Messages(b) if !b.sessions.is_empty());
        if spooled > 0 || has_sessions {
            log.append(&entry.encode()).await.map_err(|source| {
                metrics::batch_refused(
                    table,
                    match source {
                        LogError::Full { .. } => "spool_full",
                        LogError::DiskFull { .. } => "spool_disk_full",
                        _ => "spool_error",
                    },
                );
                IngestError::Spool { sequence, source }
            })?;
            metrics::rows_spooled(table, spooled);
        }
        Ok(Accepted {
            sequence,
            received,
            rejected,
            outcome: None,
            spooled: spooled as u32,
            table,
            sessions_rejected: Vec::new(),
        })
    }

    /// Rows older than this are late (None: no aggregates to keep right).
    /// Always against the present: a replayed row is late by when it is
    /// stored, not by when it was received.
    fn late_before(&self) -> Option<i64> {
        let now_us = crate::time::system_time_to_pg_us(SystemTime::now());
        self.late_after.map(|d| now_us - d.as_micros() as i64)
    }

    /// The batch's sequence and rows received, if it is within
    /// `--max-batch-rows`. Session descriptors count against the limit, not
    /// as rows received.
    fn check_batch<R: Record>(&self, batch: &Batch<R>) -> Result<(u64, usize), IngestError> {
        let (sequence, received) = (batch.sequence, batch.rows.len());
        let rows = received + batch.sessions.len();
        if rows > self.limits.max_batch_rows {
            metrics::batch_refused(R::TABLE, "too_many_rows");
            return Err(IngestError::TooManyRows {
                sequence,
                rows,
                max: self.limits.max_batch_rows,
            });
        }
        Ok((sequence, received))
    }

    /// Takes buffer space for a batch of `wire_bytes` of rows before any
    /// work on it: its decoded rows and encoded piece then count against
    /// `--buffer-bytes` too, so that memory stays bounded however many
    /// streams send at once. [`Self::submit`] shrinks it to the piece.
    async fn admit(
        &self,
        buffer: &TableBuffer,
        sequence: u64,
        wire_bytes: usize,
    ) -> Result<OwnedSemaphorePermit, IngestError> {
        // A batch larger than the whole buffer is refused as too large
        // (the encoded rows are at least as large as their protobuf).
        let working = (wire_bytes * WORKING_SET_PER_WIRE_BYTE)
            .min(buffer.capacity())
            .max(wire_bytes);
        buffer
            .admit(working, self.pipeline.admission_timeout)
            .await
            .map_err(|source| refused(buffer.table(), sequence, source))
    }

    async fn submit(
        &self,
        buffer: &TableBuffer,
        sequence: u64,
        received: usize,
        rejected: Vec<Rejection>,
        piece: PieceBuilder,
        permit: OwnedSemaphorePermit,
    ) -> Result<Accepted, IngestError> {
        let table = buffer.table();
        count_rejections(table, &rejected);
        let mut accepted = Accepted {
            sequence,
            received,
            rejected,
            outcome: None,
            spooled: 0,
            table,
            sessions_rejected: Vec::new(),
        };
        if piece.is_empty() {
            return Ok(accepted);
        }
        let (piece, outcome) = piece
            .finish(buffer, permit, self.pipeline.admission_timeout)
            .await
            .map_err(|source| refused(table, sequence, source))?;
        buffer
            .submit(piece)
            .map_err(|source| IngestError::Admit { sequence, source })?;
        accepted.outcome = Some(outcome);
        Ok(accepted)
    }
}

fn count_rejections(table: Table, rejected: &[Rejection]) {
    for r in rejected {
        metrics::rows_rejected(table, &r.field, 1);
    }
}

fn refused(table: Table, sequence: u64, source: AdmitError) -> IngestError {
    metrics::batch_refused(
        table,
        match &source {
            AdmitError::Full { .. } => "buffer_full",
            AdmitError::TooLarge { .. } => "too_large",
            AdmitError::ShuttingDown => "shutdown",
        },
    );
    IngestError::Admit { sequence, source }
}
