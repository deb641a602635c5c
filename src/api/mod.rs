//! Stage 1: **receive**. The gRPC edge: the `TelemetryIngest` service.
//!
//! In: batches from clients, over a bidirectional stream (one ack per batch,
//! in order) or a unary call. Each batch goes through [`crate::intake`]
//! (validate → resolve → encode → buffer); its ack is sent when the writer
//! has committed its rows. Outcomes become wire acks ([`ack`]) and errors
//! `tonic::Status` ([`status`]) only here.
//!
//! A stream reads its next batch only once the previous one is admitted to
//! the buffer and fewer than `--stream-inflight` batches await their acks:
//! beyond that it stops reading, and HTTP/2 flow control slows the client.
//! On shutdown a stream stops reading, sends the acks of everything it read,
//! and ends with OK.
//!
//! Every call and every batch of a stream is authenticated ([`crate::auth`])
//! before intake sees it: a stream whose key is revoked while it runs ends
//! with UNAUTHENTICATED after the acks of the batches before.

pub mod ack;
pub mod health;
pub mod probes;
pub mod status;

use std::{future::Future, pin::Pin, sync::Arc};

use futures_util::{StreamExt, stream::FuturesOrdered};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    ack::BatchOutcome,
    auth::{Authenticator, Scope},
    intake::{Accepted, Batch, Intake, record::Record},
    pb::{self, wire},
};

type AckFuture = Pin<Box<dyn Future<Output = Result<pb::BatchAck, Status>> + Send>>;

/// A batch after admission: in the buffer awaiting commit, refused whole,
/// or refused with the whole stream (authentication).
enum Admitted {
    Accepted(Accepted),
    Refused(pb::BatchAck),
    EndStream(Status),
}
type AckStream = ReceiverStream<Result<pb::BatchAck, Status>>;

#[derive(Clone)]
pub struct Api {
    intake: Arc<Intake>,
    auth: Arc<Authenticator>,
    /// Cancelled at shutdown: streams stop reading new batches.
    drain: CancellationToken,
}

/// The `authorization` header of a request, if any (and if it is text).
fn bearer<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_owned())
}

impl Api {
    pub fn new(intake: Arc<Intake>, auth: Arc<Authenticator>, drain: CancellationToken) -> Self {
        Self {
            intake,
            auth,
            drain,
        }
    }

    async fn scope<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        self.auth
            .scope(bearer(request).as_deref())
            .await
            .map_err(|e| status::auth_status(&e))
    }

    /// A stream of batches of one record kind.
    async fn stream<B, R>(
        &self,
        request: Request<Streaming<B>>,
    ) -> Result<Response<AckStream>, Status>
    where
        B: Into<Batch<R>> + Send + 'static,
        R: Record,
    {
        // Refuse a stream without a valid key at once, not at its first batch.
        self.scope(&request).await?;
        let header = bearer(&request);
        Ok(Response::new(self.run_stream(request.into_inner(), header)))
    }

    /// One batch of one record kind, answered when its rows are committed.
    async fn unary<B, R>(&self, request: Request<B>) -> Result<Response<pb::BatchAck>, Status>
    where
        B: Into<Batch<R>>,
        R: Record,
    {
        let scope = self.scope(&request).await?;
        let accepted = self
            .intake
            .take(request.into_inner().into(), &scope)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(ack::batch_ack(&accepted.ack().await)))
    }

    /// Runs one stream: each batch goes to intake, the acks go out in order.
    /// `header` is the stream's `authorization`, checked again per batch.
    fn run_stream<B, R>(&self, mut inbound: Streaming<B>, header: Option<String>) -> AckStream
    where
        B: Into<Batch<R>> + Send + 'static,
        R: Record,
    {
        let inflight = self.intake.pipeline.stream_inflight.max(1);
        let (tx, rx) = mpsc::channel(inflight);
        let intake = self.intake.clone();
        let auth = self.auth.clone();
        let drain = self.drain.clone();
        let ends = tx.clone();
        supervised(ends, async move {
            let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
            let mut admitting: Option<Pin<Box<dyn Future<Output = Admitted> + Send>>> = None;
            let mut reading = true;
            // Why reading stopped, when the client's stream broke off with
            // an error (an oversized or undecodable message): the stream
            // ends with it once the acks before it are sent.
            let mut broken: Option<Status> = None;
            let mut last_acked: Option<u64> = None;
            loop {
                if !reading && admitting.is_none() && pending.is_empty() {
                    if let Some(status) = broken.take() {
                        let _ = tx.send(Err(status::stream_end(status, last_acked))).await;
                    }
                    break;
                }
                let can_read = reading
                    && admitting.is_none()
                    && pending.len() < inflight
                    && !drain.is_cancelled();
                tokio::select! {
                    biased;
                    Some(ack) = pending.next(), if !pending.is_empty() => {
                        let end = ack.is_err();
                        if let Ok(a) = &ack {
                            last_acked = Some(a.sequence);
                        }
                        if tx.send(ack).await.is_err() || end {
                            return; // client gone (stored rows stay stored), or refused
                        }
                    }
                    admitted = async { admitting.as_mut().expect("guarded").await }, if admitting.is_some() => {
                        admitting = None;
                        pending.push_back(match admitted {
                            Admitted::Accepted(a) => Box::pin(async move { Ok(ack::batch_ack(&a.ack().await)) }),
                            Admitted::Refused(ack) => Box::pin(std::future::ready(Ok(ack))),
                            Admitted::EndStream(status) => {
                                reading = false;
                                Box::pin(std::future::ready(Err(status)))
                            }
                        });
                    }
                    msg = inbound.message(), if can_read => match msg {
                        Ok(Some(batch)) => {
                            let batch: Batch<R> = batch.into();
                            let (sequence, received) = (batch.sequence, batch.rows.len());
                            let (intake, auth, header) =
                                (intake.clone(), auth.clone(), header.clone());
                            admitting = Some(Box::pin(async move {
                                let scope = match auth.scope(header.as_deref()).await {
                                    Ok(scope) => scope,
                                    Err(e) => return Admitted::EndStream(status::auth_status(&e)),
                                };
                                match intake.take(batch, &scope).await {
                                    Ok(accepted) => Admitted::Accepted(accepted),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "batch refused");
                                        let refused = BatchOutcome::refused(sequence, received, e.failure());
                                        Admitted::Refused(ack::batch_ack(&refused))
                                    }
                                }
                            }));
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            reading = false;
                            broken = Some(status);
                        }
                    },
                    _ = drain.cancelled(), if reading => reading = false,
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Runs a stream's task so that it cannot end the stream as if all were
/// well: should it panic (a bug), the stream ends with INTERNAL, saying that
/// the batches without an ack were not stored, instead of with OK. (A
/// panicking task drops its sender, and a response stream that simply ends
/// is an OK status to the client.)
fn supervised(
    ends: mpsc::Sender<Result<pb::BatchAck, Status>>,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let task = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "a stream's task failed; the stream ends with INTERNAL");
            let _ = ends
                .send(Err(Status::new(
                    crate::codes::ErrorKind::Internal.codes().grpc,
                    "the service failed while taking this stream's batches (a bug, logged); batches without an ack were not stored: resend them",
                )))
                .await;
        }
    });
}

#[tonic::async_trait]
impl wire::telemetry_ingest_server::TelemetryIngest for Api {
    type StreamAgentEventsStream = AckStream;
    type StreamChatMessagesStream = AckStream;

    async fn stream_agent_events(
        &self,
        request: Request<Streaming<wire::AgentEventBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        self.stream(request).await
    }

    async fn stream_chat_messages(
        &self,
        request: Request<Streaming<wire::ChatMessageBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        self.stream(request).await
    }

    async fn ingest_agent_events(
        &self,
        request: Request<wire::AgentEventBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        self.unary(request).await
    }

    async fn ingest_chat_messages(
        &self,
        request: Request<wire::ChatMessageBatch>,
    ) -> Result<Response<pb::BatchAck>, Status> {
        self.unary(request).await
    }

    async fn report_sessions(
        &self,
        request: Request<pb::SessionReport>,
    ) -> Result<Response<pb::SessionReportAck>, Status> {
        let scope = self.scope(&request).await?;
        let outcome = self
            .intake
            .report_sessions(&request.into_inner(), &scope)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(ack::session_report_ack(&outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_whose_task_panics_ends_with_internal_not_ok() {
        let (tx, mut rx) = mpsc::channel(4);
        let acks = tx.clone();
        supervised(tx, async move {
            acks.send(Ok(pb::BatchAck {
                sequence: 1,
                ..Default::default()
            }))
            .await
            .unwrap();
            panic!("a bug in intake");
        });
        assert_eq!(rx.recv().await.unwrap().unwrap().sequence, 1);
        let end = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Internal, "{end:?}");
        assert!(end.message().contains("resend"), "{end:?}");
        assert!(rx.recv().await.is_none(), "then the stream ends");
    }

    #[tokio::test]
    async fn a_stream_whose_task_ends_normally_gets_nothing_more() {
        let (tx, mut rx) = mpsc::channel::<Result<pb::BatchAck, Status>>(4);
        supervised(tx, async {});
        assert!(rx.recv().await.is_none());
    }
}
