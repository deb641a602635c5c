//! A client that does what docs/api.md asks of one: it keeps every batch
//! until an ack says the batch is done, and resends the rest after an error
//! ack, a refused batch or a broken connection, until all are done.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agent_telemetry::pb::{self, telemetry_ingest_client::TelemetryIngestClient};
use uuid::Uuid;

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Delivery {
    pub sent_rows: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub spooled: u64,
    /// Acks that said "not done, resend".
    pub error_acks: u64,
    pub broken_streams: u64,
    /// Batches sent again (after an error ack or a broken stream).
    pub resent_batches: u64,
    /// Ids of every row an ack said was done.
    pub acked_ids: Vec<Uuid>,
}

impl Delivery {
    pub fn add(&mut self, o: &Delivery) {
        self.sent_rows += o.sent_rows;
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.spooled += o.spooled;
        self.error_acks += o.error_acks;
        self.broken_streams += o.broken_streams;
        self.resent_batches += o.resent_batches;
        self.acked_ids.extend_from_slice(&o.acked_ids);
    }
}

/// A batch is done when nothing in it is left to resend.
pub fn done(ack: &pb::BatchAck) -> bool {
    ack.error.is_empty()
        && ack.stored + ack.duplicates + ack.spooled + ack.rejected.len() as u32 == ack.received
}

/// `n` valid events for `project` in batches of `size`, sequence from `first`.
pub fn batches(project: &str, n: usize, size: usize, first: u64) -> Vec<pb::AgentEventBatch> {
    (0..n.div_ceil(size))
        .map(|i| pb::AgentEventBatch {
            sequence: first + i as u64,
            events: (0..size.min(n - i * size))
                .map(|_| super::event(project, 60))
                .collect(),
        })
        .collect()
}

/// Streams `batches` until every one is done, reconnecting and resending as
/// needed; `progress` counts rows acknowledged so far. Panics after `limit`.
pub async fn deliver(
    endpoint: String,
    batches: Vec<pb::AgentEventBatch>,
    key: Option<String>,
    progress: Arc<AtomicU64>,
    limit: Duration,
) -> Delivery {
    let mut d = Delivery {
        sent_rows: batches.iter().map(|b| b.events.len() as u64).sum(),
        ..Default::default()
    };
    let mut pending: BTreeMap<u64, pb::AgentEventBatch> =
        batches.into_iter().map(|b| (b.sequence, b)).collect();
    let started = Instant::now();
    let mut round = 0;
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "{} batches still not done after {limit:?}: {:?}",
            pending.len(),
            Delivery {
                acked_ids: vec![],
                ..d.clone()
            }
        );
        if round > 0 {
            d.resent_batches += pending.len() as u64;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        round += 1;
        let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        else {
            d.broken_streams += 1;
            continue;
        };
        let mut client = TelemetryIngestClient::new(channel).max_decoding_message_size(64 << 20);
        let mut request = tonic::Request::new(tokio_stream::iter(
            pending.values().cloned().collect::<Vec<_>>(),
        ));
        if let Some(k) = &key {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        let mut acks = match client.stream_agent_events(request).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                d.broken_streams += 1;
                continue;
            }
        };
        loop {
            match acks.message().await {
                Ok(Some(ack)) if done(&ack) => {
                    let Some(batch) = pending.remove(&ack.sequence) else {
                        continue;
                    };
                    d.stored += ack.stored as u64;
                    d.duplicates += ack.duplicates as u64;
                    d.spooled += ack.spooled as u64;
                    let rejected: Vec<u32> = ack.rejected.iter().map(|r| r.index).collect();
                    for (i, e) in batch.events.iter().enumerate() {
                        if !rejected.contains(&(i as u32)) {
                            d.acked_ids.push(e.id.parse().unwrap());
                        }
                    }
                    progress.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                }
                Ok(Some(_)) => d.error_acks += 1,
                Ok(None) => break,
                Err(_) => {
                    d.broken_streams += 1;
                    break;
                }
            }
        }
    }
    d
}

/// `streams` clients at once, each delivering its share of `n` events.
pub async fn deliver_parallel(
    endpoint: &str,
    project: &str,
    n: usize,
    streams: usize,
    batch: usize,
    progress: Arc<AtomicU64>,
    limit: Duration,
) -> Delivery {
    let mut tasks = Vec::new();
    for s in 0..streams {
        let share = batches(project, n / streams, batch, (s as u64) << 32);
        tasks.push(tokio::spawn(deliver(
            endpoint.to_owned(),
            share,
            None,
            progress.clone(),
            limit,
        )));
    }
    let mut total = Delivery::default();
    for t in tasks {
        total.add(&t.await.expect("delivery task"));
    }
    total
}

/// Rows stored in total, distinct ids among them, and acknowledged ids missing.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub rows: i64,
    pub distinct: i64,
    pub lost: i64,
}

pub async fn stored(db: &tokio_postgres::Client, acked: &[Uuid]) -> Stored {
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT id),
                    (SELECT count(*) FROM unnest($1::uuid[]) a(id)
                     WHERE NOT EXISTS (SELECT 1 FROM agent_events e WHERE e.id = a.id))
             FROM agent_events",
            &[&acked],
        )
        .await
        .expect("count stored rows");
    Stored {
        rows: row.get(0),
        distinct: row.get(1),
        lost: row.get(2),
    }
}

/// Waits until `progress` reaches `rows` (the fault is injected then).
pub async fn when_acked(progress: &AtomicU64, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.load(Ordering::Relaxed) < rows {
        assert!(
            Instant::now() < deadline,
            "no progress to {rows} rows acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the table holds `rows` rows (spool replay is asynchronous).
pub async fn until_stored(db: &tokio_postgres::Client, rows: i64, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let n = super::count(db, "SELECT count(*) FROM agent_events").await;
        if n >= rows || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
