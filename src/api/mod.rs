//! Stage 1: **receive**. The gRPC edge: the `TelemetryIngest` service.
//!
//! In: batches from clients, over a bidirectional stream (one ack per batch,
//! in order) or a unary call. Each batch goes through [`intake`] (validate →
//! encode → buffer); its ack is sent when the writer has committed its rows.
//! Errors become `tonic::Status` only here ([`status`]).
//!
//! A stream reads its next batch only once the previous one is admitted to
//! the buffer and fewer than `--stream-inflight` batches await their acks:
//! beyond that it stops reading, and HTTP/2 flow control slows the client.
//! On shutdown a stream stops reading, sends the acks of everything it read,
//! and ends with OK.

pub mod intake;
pub mod status;

use std::{future::Future, pin::Pin, sync::Arc, time::SystemTime};

use futures_util::{StreamExt, stream::FuturesOrdered};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use self::intake::{Accepted, IngestError, Intake};
use crate::{
    pb::{self, wire},
    validate::{self, TimeWindow},
};

type AckFuture = Pin<Box<dyn Future<Output = pb::BatchAck> + Send>>;

/// A batch after admission: in the buffer awaiting commit, or refused whole.
enum Admitted {
    Accepted(Accepted),
    Refused(pb::BatchAck),
}
type AckStream = ReceiverStream<Result<pb::BatchAck, Status>>;

#[derive(Clone)]
pub struct Api {
    intake: Arc<Intake>,
    /// Cancelled at shutdown: streams stop reading new batches.
    drain: CancellationToken,
}

impl Api {
    pub fn new(intake: Arc<Intake>, drain: CancellationToken) -> Self {
        Self { intake, drain }
    }

    /// Runs one stream: `accept` admits a batch, the acks go out in order.
    fn run_stream<B, F, Fut>(
        &self,
        mut inbound: Streaming<B>,
        size: fn(&B) -> (u64, usize),
        accept: F,
    ) -> AckStream
    where
        B: Send + 'static,
        F: Fn(Arc<Intake>, B) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Accepted, IngestError>> + Send + 'static,
    {
        let inflight = self.intake.pipeline.stream_inflight.max(1);
        let (tx, rx) = mpsc::channel(inflight);
        let intake = self.intake.clone();
        let drain = self.drain.clone();
        tokio::spawn(async move {
            let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut admitting: Option<Pin<Box<dyn Future<Output = Admitted> + Send>>> = None;
            let mut reading = true;
            loop {
                if !reading && admitting.is_none() && pending.is_empty() {
                    break;
                }
                let can_read = reading
                    && admitting.is_none()
                    && pending.len() < inflight
                    && !drain.is_cancelled();
                tokio::select! {
                    biased;
                    Some(ack) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return; // client gone; stored rows stay stored
                        }
                    }
                    admitted = async { admitting.as_mut().expect("guarded").await }, if admitting.is_some() => {
                        admitting = None;
                        pending.push_back(match admitted {
                            Admitted::Accepted(a) => Box::pin(a.ack()),
                            Admitted::Refused(ack) => Box::pin(std::future::ready(ack)),
                        });
                    }
                    msg = inbound.message(), if can_read => match msg {
                        Ok(Some(batch)) => {
                            let (sequence, received) = size(&batch);
                            let fut = accept(intake.clone(), batch);
                            admitting = Some(Box::pin(async move {
                                match fut.await {
                                    Ok(accepted) => Admitted::Accepted(accepted),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "batch refused");
                                        Admitted::Refused(status::to_ack(&e, sequence, received))
                                    }
                                }
                            }));
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            tracing::debug!(%status, "stream broke off");
                            reading = false;
                        }
                    },
                    _ = drain.cancelled(), if reading => reading = false,
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl wire::telemetry_ingest_server::TelemetryIngest for Api {
    type StreamAgentEventsStream = AckStream;
    type StreamChatMessagesStream = AckStream;

    async fn stream_agent_events(
        &self,
        request: Request<Streaming<wire::AgentEventBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        Ok(Response::new(self.run_stream(
            request.into_inner(),
            |b| (b.sequence, b.events.len()),
            |intake, batch| async move { intake.events(batch).await },
        )))
    }

    async fn stream_chat_messages(
        &self,
        request: Request<Streaming<wire::ChatMessageBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        Ok(Response::new(self.run_stream(
            request.into_inner(),
            |b| (b.sequence, b.messages.len()),
            |intake, batch| async move { intake.messages(batch).await },
        )))
    }

    async fn ingest_agent_events(
        &self,
        request: Request<wire::AgentEventBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        let accepted = self
            .intake
            .events(request.into_inner())
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(accepted.ack().await))
    }

    async fn ingest_chat_messages(
        &self,
        request: Request<wire::ChatMessageBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        let accepted = self
            .intake
            .messages(request.into_inner())
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(accepted.ack().await))
    }

    async fn report_sessions(
        &self,
        request: Request<pb::SessionReport>,
    ) -> Result<Response<pb::SessionReportAck>, Status> {
        let report = request.into_inner();
        let limits = &self.intake.limits;
        let rows = report.chat_sessions.len() + report.agent_sessions.len();
        if rows > limits.max_batch_rows {
            return Err(Status::invalid_argument(format!(
                "{rows} sessions, more than the limit of {} per report",
                limits.max_batch_rows
            )));
        }
        let window = TimeWindow::around(SystemTime::now(), limits);
        let dims = &self.intake.dims;
        let mut ack = pb::SessionReportAck::default();
        let unavailable = |e: crate::db::dims::DimsError| {
            Status::unavailable(format!("sessions not stored: {e}; resend"))
        };
        let rejection = |kind: &str, r: validate::Rejection| pb::RowRejection {
            kind: kind.into(),
            ..r.into()
        };
        for (i, s) in report.chat_sessions.iter().enumerate() {
            match validate::validate_chat_session(s, i as u32, limits, window) {
                Ok(row) => match dims.upsert_chat_session(&row).await {
                    Ok(_) => ack.chat_sessions_stored += 1,
                    Err(crate::db::dims::DimsError::Invalid { field, reason }) => {
                        ack.rejected.push(rejection(
                            "chat_session",
                            validate::Rejection::new(i as u32, field, reason),
                        ))
                    }
                    Err(e) => return Err(unavailable(e)),
                },
                Err(r) => ack.rejected.push(rejection("chat_session", r)),
            }
        }
        for (i, s) in report.agent_sessions.iter().enumerate() {
            match validate::validate_agent_session(s, i as u32, limits, window) {
                Ok(row) => match dims.upsert_agent_session(&row).await {
                    Ok(()) => ack.agent_sessions_stored += 1,
                    Err(crate::db::dims::DimsError::Invalid { field, reason }) => {
                        ack.rejected.push(rejection(
                            "agent_session",
                            validate::Rejection::new(i as u32, field, reason),
                        ))
                    }
                    Err(e) => return Err(unavailable(e)),
                },
                Err(r) => ack.rejected.push(rejection("agent_session", r)),
            }
        }
        Ok(Response::new(ack))
    }
}
