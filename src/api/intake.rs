//! Intake: one batch from the wire to the buffer. Decodes and validates each
//! row, resolves the dimensions the rows name, encodes the accepted rows into
//! one piece, takes buffer space for it and submits it. What comes back is
//! an [`Accepted`] batch whose ack resolves after commit.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    sync::{OwnedSemaphorePermit, oneshot},
    time::Instant,
};
use uuid::Uuid;

use crate::{
    ack::{FlushFailure, PieceOutcome, batch_ack},
    auth::Scope,
    buffer::{AdmitError, TableBuffer},
    copy::Piece,
    config::{Limits, PipelineConfig},
    copy::encode,
    db::dims::{Dimensions, DimsError, ProjectName},
    maintain::refresh,
    metrics, pb,
    row::Table,
    spool::{
        self, Entry,
        log::{Log, LogError},
    },
    validate::{self, Rejection, TimeWindow},
};

/// Buffer space a batch takes while intake decodes, checks and encodes it,
/// per byte of its rows' protobuf: the decoded rows (about 2×: strings plus
/// the structs around them) and the encoded piece (about 1×) exist side by
/// side.
const WORKING_SET_PER_WIRE_BYTE: usize = 3;

/// A batch refused as a whole (none of its rows is stored).
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
}

/// What intake needs, shared by every stream and call.
pub struct Intake {
    pub events: TableBuffer,
    pub messages: TableBuffer,
    pub dims: Arc<Dimensions>,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    /// Rows older than this are late (`--late-after`); None when there are
    /// no continuous aggregates to refresh (plain PostgreSQL).
    pub late_after: Option<Duration>,
    /// The disk spool (`--spool-dir`): batches are acked once appended to it.
    pub spool: Option<Log>,
}

/// A batch whose accepted rows are in the buffer.
pub struct Accepted {
    sequence: u64,
    received: usize,
    rejected: Vec<Rejection>,
    outcome: Option<oneshot::Receiver<PieceOutcome>>,
    /// Rows appended to the spool (spool mode; no outcome to wait for).
    spooled: u32,
    table: Table,
    /// Refused chat sessions of a ChatMessageBatch (kind "session").
    session_rejections: Vec<pb::RowRejection>,
}

impl Accepted {
    /// Waits for the commit of the batch's rows and builds the client's ack.
    pub async fn ack(self) -> pb::BatchAck {
        let table = self.table;
        let ack = self.outcome().await;
        metrics::ack_sent(table, ack.error.is_empty());
        ack
    }

    /// What became of the batch's rows, as an ack, without counting it as
    /// one sent (spool replay: the client had its ack at append).
    pub async fn outcome(self) -> pb::BatchAck {
        let outcome = match self.outcome {
            None => None,
            Some(rx) => Some(rx.await.unwrap_or_else(|_| PieceOutcome {
                failure: Some(FlushFailure {
                    message: "internal error: the batch's outcome was lost; resend it".into(),
                    retryable: true,
                }),
                ..Default::default()
            })),
        };
        let mut ack = batch_ack(self.sequence, self.received, self.rejected, outcome);
        ack.spooled = self.spooled;
        ack.rejected.extend(self.session_rejections);
        ack.rejected
            .sort_by(|a, b| (&a.kind, a.index).cmp(&(&b.kind, b.index)));
        ack
    }
}

/// A project name's fate under a key's scope: its id, or why its rows are refused.
type ProjectCheck = Result<i32, Rejection>;

impl Intake {
    /// A client's batch of events: spooled (with `--spool-dir`) or stored.
    pub async fn events(
        &self,
        batch: pb::wire::AgentEventBatch,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        metrics::rows_received(Table::AgentEvents, batch.events.len());
        match &self.spool {
            Some(log) => self.spool_events(log, batch, scope).await,
            None => self.store_events(batch, SystemTime::now(), scope).await,
        }
    }

    /// A client's batch of chat messages: spooled (with `--spool-dir`) or stored.
    pub async fn messages(
        &self,
        batch: pb::wire::ChatMessageBatch,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        metrics::rows_received(Table::ChatMessages, batch.messages.len());
        match &self.spool {
            Some(log) => self.spool_messages(log, batch, scope).await,
            None => self.store_messages(batch, SystemTime::now(), scope).await,
        }
    }

    /// A spooled entry, replayed: through the same path as a client's batch,
    /// with timestamps checked against the time it was received.
    pub async fn store(&self, entry: Entry) -> Result<Accepted, IngestError> {
        let received_at = crate::time::from_unix_us(entry.received_at_us);
        match entry.batch {
            spool::Batch::Events(b) => self.store_events(b, received_at, &entry.scope).await,
            spool::Batch::Messages(b) => self.store_messages(b, received_at, &entry.scope).await,
        }
    }

    /// Whether `name` is a project this scope may write to (without
    /// touching the database).
    pub fn check_project(
        &self,
        scope: &Scope,
        index: u32,
        field: &'static str,
        name: &str,
    ) -> Result<(), Rejection> {
        let p = ProjectName::parse(name, &self.dims.projects_cfg)
            .map_err(|r| Rejection::new(index, field, r))?;
        if scope.allows_identity(&p.identity) {
            Ok(())
        } else {
            Err(Rejection::denied(
                index,
                field,
                scope.denial(&format!("project {:?}", p.full_name)),
            ))
        }
    }

    async fn store_events(
        &self,
        batch: pb::wire::AgentEventBatch,
        received_at: SystemTime,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = (batch.sequence, batch.events.len());
        let table = Table::AgentEvents;
        self.check_rows(table, sequence, received)?;
        let raw: usize = batch.events.iter().map(Bytes::len).sum();
        let permit = self.admit(&self.events, sequence, raw).await?;
        let window = TimeWindow::around(received_at, &self.limits);
        let mut rejected = Vec::new();
        let decoded: Vec<(u32, pb::AgentEvent)> =
            validate::decode_rows(&batch.events, &mut rejected);
        let mut rows = Vec::with_capacity(decoded.len());
        for (i, ev) in &decoded {
            match validate::validate_event(ev, *i, &self.limits, window) {
                Ok(r) => rows.push(r),
                Err(r) => rejected.push(r),
            }
        }
        // Resolve each distinct project once (usually one per batch).
        // A project outside the key's scope is refused before it is named
        // to the database (which would create it).
        let mut projects: Vec<(&str, ProjectCheck)> = Vec::new();
        for r in &rows {
            let name = r.src.project.as_str();
            if projects.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let id = match self.check_project(scope, 0, "project", name) {
                Err(rejection) => Err(rejection),
                Ok(()) => match self.dims.project_id(name).await {
                    Ok(id) => Ok(id),
                    Err(DimsError::Invalid { reason, .. }) => {
                        Err(Rejection::new(0, "project", reason))
                    }
                    Err(source) => return Err(IngestError::Dimensions { sequence, source }),
                },
            };
            projects.push((name, id));
        }
        let mut piece = PieceBuilder::new(raw, rows.len(), self.late_before());
        for r in &rows {
            match &projects
                .iter()
                .find(|(n, _)| *n == r.src.project)
                .expect("resolved above")
                .1
            {
                Ok(id) => piece.row(r.index, r.ts_us, |buf| encode::encode_event(buf, r, *id)),
                Err(why) => rejected.push(Rejection {
                    index: r.index,
                    ..why.clone()
                }),
            }
        }
        // Only the encoded piece may wait for buffer space: the request and
        // its decoded rows would otherwise sit in memory beside it, outside
        // the buffer's limit.
        drop(projects);
        drop(rows);
        drop(decoded);
        drop(batch);
        self.submit(&self.events, sequence, received, rejected, piece, permit)
            .await
    }

    async fn store_messages(
        &self,
        batch: pb::wire::ChatMessageBatch,
        received_at: SystemTime,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = (batch.sequence, batch.messages.len());
        let table = Table::ChatMessages;
        // Session descriptors count against the batch limit, not as rows received.
        self.check_rows(table, sequence, received + batch.sessions.len())?;
        let raw: usize = batch.messages.iter().map(Bytes::len).sum();
        let permit = self.admit(&self.messages, sequence, raw).await?;
        let window = TimeWindow::around(received_at, &self.limits);
        let mut session_rejections = Vec::new();
        // Sessions first, so the messages below can name them.
        for (i, s) in batch.sessions.iter().enumerate() {
            let reject = |r: Rejection| pb::RowRejection {
                kind: "session".into(),
                ..r.into()
            };
            let checked = validate::validate_chat_session(s, i as u32, &self.limits, window)
                .and_then(|row| {
                    self.check_project(scope, i as u32, "workspace.project.name", &row.project.name)
                        .map(|()| row)
                });
            match checked {
                Ok(row) => match self.dims.upsert_chat_session(&row).await {
                    Ok(_) => {}
                    Err(DimsError::Invalid { field, reason }) => {
                        session_rejections.push(reject(Rejection::new(i as u32, field, reason)))
                    }
                    Err(source) => return Err(IngestError::Dimensions { sequence, source }),
                },
                Err(r) => session_rejections.push(reject(r)),
            }
        }
        let mut row_rejections = Vec::new();
        let decoded: Vec<(u32, pb::ChatMessage)> =
            validate::decode_rows(&batch.messages, &mut row_rejections);
        let mut rows = Vec::with_capacity(decoded.len());
        for (i, m) in &decoded {
            match validate::validate_message(m, *i, &self.limits, window) {
                Ok(r) => rows.push(r),
                Err(r) => row_rejections.push(r),
            }
        }
        let mut missing: Vec<Uuid> = rows
            .iter()
            .map(|r| r.session_id)
            .filter(|id| self.dims.cached_session(id).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if let Err(source) = self.dims.load_sessions(&missing).await {
            return Err(IngestError::Dimensions { sequence, source });
        }
        let mut piece = PieceBuilder::new(raw, rows.len(), self.late_before());
        for r in &rows {
            match self.dims.cached_session(&r.session_id) {
                Some(s) if !scope.allows_id(s.project_id) => {
                    row_rejections.push(Rejection::denied(
                        r.index,
                        "session_id",
                        scope.denial(&format!("the project of chat session {}", r.session_id)),
                    ))
                }
                Some(s) => piece.row(r.index, r.ts_us, |buf| {
                    encode::encode_message(buf, r, s.project_id, &s.agent_type)
                }),
                None => row_rejections.push(unknown_session(r.index, r.session_id)),
            }
        }
        drop(rows);
        drop(decoded);
        drop(batch);
        let mut accepted = self
            .submit(
                &self.messages,
                sequence,
                received,
                row_rejections,
                piece,
                permit,
            )
            .await?;
        accepted.session_rejections = session_rejections;
        Ok(accepted)
    }

    /// Spool mode: validates the batch (rejections go in its ack now),
    /// appends its accepted rows to the spool, and acks once they are on
    /// disk. The database is not needed.
    async fn spool_events(
        &self,
        log: &Log,
        batch: pb::wire::AgentEventBatch,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = (batch.sequence, batch.events.len());
        let table = Table::AgentEvents;
        self.check_rows(table, sequence, received)?;
        let now = SystemTime::now();
        let window = TimeWindow::around(now, &self.limits);
        let mut rejected = Vec::new();
        let decoded: Vec<(u32, pb::AgentEvent)> =
            validate::decode_rows(&batch.events, &mut rejected);
        let mut projects: Vec<(&str, Result<(), Rejection>)> = Vec::new();
        let mut indices = Vec::with_capacity(decoded.len());
        for (i, ev) in &decoded {
            if let Err(r) = validate::validate_event(ev, *i, &self.limits, window) {
                rejected.push(r);
                continue;
            }
            let name = ev.project.as_str();
            let check = match projects.iter().find(|(n, _)| *n == name) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = self.check_project(scope, 0, "project", name);
                    projects.push((name, c.clone()));
                    c
                }
            };
            match check {
                Ok(()) => indices.push(*i),
                Err(why) => rejected.push(Rejection { index: *i, ..why }),
            }
        }
        let rows = indices
            .iter()
            .map(|&i| batch.events[i as usize].clone())
            .collect();
        let entry = Entry {
            received_at_us: crate::time::unix_us(now),
            scope: scope.clone(),
            indices,
            batch: spool::Batch::Events(pb::wire::AgentEventBatch {
                sequence,
                events: rows,
            }),
        };
        self.append(log, table, received, rejected, entry).await
    }

    /// Spool mode for chat messages. A message whose session the service
    /// does not know yet (and cannot look up, the database being down) is
    /// spooled all the same; replay resolves it.
    async fn spool_messages(
        &self,
        log: &Log,
        batch: pb::wire::ChatMessageBatch,
        scope: &Scope,
    ) -> Result<Accepted, IngestError> {
        let (sequence, received) = (batch.sequence, batch.messages.len());
        let table = Table::ChatMessages;
        self.check_rows(table, sequence, received + batch.sessions.len())?;
        let now = SystemTime::now();
        let window = TimeWindow::around(now, &self.limits);
        let mut rejected = Vec::new();
        let mut sessions = Vec::new();
        let mut session_ids = Vec::new();
        for (i, s) in batch.sessions.iter().enumerate() {
            let checked = validate::validate_chat_session(s, i as u32, &self.limits, window)
                .and_then(|row| {
                    self.check_project(scope, i as u32, "workspace.project.name", &row.project.name)
                        .map(|()| row.session_id)
                });
            match checked {
                Ok(id) => {
                    session_ids.push(id);
                    sessions.push(s.clone());
                }
                Err(r) => rejected.push(pb::RowRejection {
                    kind: "session".into(),
                    ..r.into()
                }),
            }
        }
        let mut row_rejections = Vec::new();
        let decoded: Vec<(u32, pb::ChatMessage)> =
            validate::decode_rows(&batch.messages, &mut row_rejections);
        let mut valid = Vec::with_capacity(decoded.len());
        for (i, m) in &decoded {
            match validate::validate_message(m, *i, &self.limits, window) {
                Ok(r) => valid.push((*i, r.session_id)),
                Err(r) => row_rejections.push(r),
            }
        }
        // Sessions neither in this batch nor cached: one lookup, briefly;
        // with the database down they stay unknown until replay.
        let mut missing: Vec<Uuid> = valid
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !session_ids.contains(id) && self.dims.cached_session(id).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let looked_up = !missing.is_empty()
            && matches!(
                tokio::time::timeout(SESSION_LOOKUP_TIMEOUT, self.dims.load_sessions(&missing))
                    .await,
                Ok(Ok(()))
            );
        let mut indices = Vec::with_capacity(valid.len());
        for (i, id) in valid {
            if session_ids.contains(&id) {
                indices.push(i);
                continue;
            }
            match self.dims.cached_session(&id) {
                Some(s) if !scope.allows_id(s.project_id) => {
                    row_rejections.push(Rejection::denied(
                        i,
                        "session_id",
                        scope.denial(&format!("the project of chat session {id}")),
                    ))
                }
                Some(_) => indices.push(i),
                None if looked_up => row_rejections.push(unknown_session(i, id)),
                None => indices.push(i),
            }
        }
        let rows = indices
            .iter()
            .map(|&i| batch.messages[i as usize].clone())
            .collect();
        let entry = Entry {
            received_at_us: crate::time::unix_us(now),
            scope: scope.clone(),
            indices,
            batch: spool::Batch::Messages(pb::wire::ChatMessageBatch {
                sequence,
                sessions,
                messages: rows,
            }),
        };
        let mut accepted = self
            .append(log, table, received, row_rejections, entry)
            .await?;
        accepted.session_rejections = rejected;
        Ok(accepted)
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
        for r in &rejected {
            metrics::rows_rejected(table, &r.field, 1);
        }
        let spooled = entry.batch.rows().len();
        let has_sessions =
            matches!(&entry.batch, spool::Batch::Messages(b) if !b.sessions.is_empty());
        if spooled > 0 || has_sessions {
            log.append(&entry.encode()).await.map_err(|source| {
                metrics::batch_refused(
                    table,
                    match source {
                        LogError::Full { .. } => "spool_full",
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
            session_rejections: Vec::new(),
        })
    }

    /// Rows older than this are late (None: no aggregates to keep right).
    /// Always against the present: a replayed row is late by when it is
    /// stored, not by when it was received.
    fn late_before(&self) -> Option<i64> {
        let now_us = crate::time::system_time_to_pg_us(SystemTime::now());
        self.late_after.map(|d| now_us - d.as_micros() as i64)
    }

    fn check_rows(&self, table: Table, sequence: u64, rows: usize) -> Result<(), IngestError> {
        if rows > self.limits.max_batch_rows {
            metrics::batch_refused(table, "too_many_rows");
            return Err(IngestError::TooManyRows {
                sequence,
                rows,
                max: self.limits.max_batch_rows,
            });
        }
        Ok(())
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
            .map_err(|source| self.refused(buffer.table(), sequence, source))
    }

    fn refused(&self, table: Table, sequence: u64, source: AdmitError) -> IngestError {
        metrics::batch_refused(table, admit_reason(&source));
        IngestError::Admit { sequence, source }
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
        for r in &rejected {
            metrics::rows_rejected(table, &r.field, 1);
        }
        let mut accepted = Accepted {
            sequence,
            received,
            rejected,
            outcome: None,
            spooled: 0,
            table,
            session_rejections: Vec::new(),
        };
        if piece.row_ends.is_empty() {
            return Ok(accepted);
        }
        // Keep exactly the encoded bytes, in memory and in the buffer's count:
        // not the headroom reserved for encoding (a copy costs ~0.05 µs a
        // row), nor the working set the permit covered until now.
        let data = if piece.data.capacity() - piece.data.len() > piece.data.len() / 8 {
            Bytes::copy_from_slice(&piece.data)
        } else {
            piece.data.freeze()
        };
        let permit = if data.len() <= permit.num_permits() {
            let mut permit = permit;
            permit
                .split(data.len().max(1))
                .expect("fewer permits than held")
        } else {
            // Encoded larger than estimated (never seen): take the difference.
            drop(permit);
            buffer
                .admit(data.len(), self.pipeline.admission_timeout)
                .await
                .map_err(|source| self.refused(table, sequence, source))?
        };
        let (done, outcome) = oneshot::channel();
        buffer
            .submit(Piece {
                data,
                row_ends: piece.row_ends,
                row_index: piece.row_index,
                late_hours: piece.late_hours.into_iter().collect(),
                enqueued: Instant::now(),
                done,
                permit,
            })
            .map_err(|source| IngestError::Admit { sequence, source })?;
        accepted.outcome = Some(outcome);
        Ok(accepted)
    }
}

/// How long spool mode waits for the database to name unknown sessions.
const SESSION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

fn unknown_session(index: u32, id: Uuid) -> Rejection {
    Rejection::new(
        index,
        "session_id",
        format!(
            "unknown chat session {id}: send it in this batch's `sessions` or through ReportSessions first"
        ),
    )
}

fn admit_reason(e: &AdmitError) -> &'static str {
    match e {
        AdmitError::Full { .. } => "buffer_full",
        AdmitError::TooLarge { .. } => "too_large",
        AdmitError::ShuttingDown => "shutdown",
    }
}

/// Accumulates encoded rows and their boundaries.
struct PieceBuilder {
    data: BytesMut,
    row_ends: Vec<u32>,
    row_index: Vec<u32>,
    /// Rows older than this are late; their hours are collected.
    late_before_us: Option<i64>,
    late_hours: BTreeSet<i64>,
}

impl PieceBuilder {
    /// The binary form is a little larger than protobuf's (fixed-width
    /// lengths per field), so reserve with some headroom.
    fn new(raw_bytes: usize, rows: usize, late_before_us: Option<i64>) -> Self {
        Self {
            data: BytesMut::with_capacity(raw_bytes + raw_bytes / 2 + rows * 64),
            row_ends: Vec::with_capacity(rows),
            row_index: Vec::with_capacity(rows),
            late_before_us,
            late_hours: BTreeSet::new(),
        }
    }

    fn row(&mut self, index: u32, ts_us: i64, encode: impl FnOnce(&mut BytesMut)) {
        if self.late_before_us.is_some_and(|before| ts_us < before) {
            self.late_hours.insert(refresh::hour_of(ts_us));
        }
        encode(&mut self.data);
        self.row_ends.push(self.data.len() as u32);
        self.row_index.push(index);
    }
}
