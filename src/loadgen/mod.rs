//! `agent-telemetry loadgen`: streams realistic synthetic events ([`gen`])
//! and chat messages to a running service over N concurrent bidirectional
//! streams, at a target rate or as fast as acks allow, and reports
//! throughput and ack latency percentiles. What users try first, and what
//! the benchmarks drive the service with.

pub mod r#gen;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::{sync::Semaphore, time::Instant};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{codec::CompressionEncoding, transport::Channel};

use crate::{
    client::{self, ClientError},
    config::ClientConfig,
    pb::{self, telemetry_ingest_client::TelemetryIngestClient},
};

#[derive(Debug, Clone, Args)]
pub struct LoadgenConfig {
    /// Where the service is, its TLS trust and the API key.
    #[command(flatten)]
    pub client: ClientConfig,
    /// Agent events to send in all.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Chat messages to send in all (over their own stream).
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Concurrent event streams.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Target events per second over all streams; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unacknowledged batches each stream may have out.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Seed of the generator (same seed, same data).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distinct projects the sessions spread over.
    #[arg(long, default_value_t = 20)]
    pub projects: u32,
    /// Compress requests with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Start sessions over this long before now (e.g. `30days`) instead of
    /// the last half hour: data for timing the dashboards over a range.
    /// Older rows are late rows to the service (`serve --max-past` must
    /// cover them).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub spread: Option<Duration>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            c: LoadgenConfig,
        }
        P::parse_from(["loadgen"]).c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// tonic's `Status` display spells the code as its long description.
    #[error("the service ended the stream: {:?}: {}", .0.code(), .0.message())]
    Stream(#[from] tonic::Status),
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub rows_sent: u64,
    pub rows_stored: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Batches acked with an error (not stored).
    pub failed_batches: u64,
    pub batches: u64,
    pub elapsed: Duration,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// The first rejection or batch error, to say why rows went missing.
    pub first_problem: Option<String>,
}

impl Summary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows_stored as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "rows sent      {}", self.rows_sent)?;
        writeln!(
            f,
            "rows stored    {} (+{} duplicates, {} rejected)",
            self.rows_stored, self.duplicates, self.rejected
        )?;
        writeln!(
            f,
            "batches        {} ({} failed)",
            self.batches, self.failed_batches
        )?;
        writeln!(f, "elapsed        {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "throughput     {:.0} rows/s", self.rows_per_second())?;
        write!(
            f,
            "ack latency    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        if let Some(p) = &self.first_problem {
            write!(f, "\nfirst problem  {p}")?;
        }
        Ok(())
    }
}

/// Shared tallies of all streams.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    latency_us: Mutex<Option<Histogram<u64>>>,
    first_problem: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, ack: &pb::BatchAck, latency: Duration) {
        let problem = if !ack.error.is_empty() {
            Some(format!("batch {}: {}", ack.sequence, ack.error))
        } else {
            ack.rejected.first().map(|r| {
                format!(
                    "batch {}, row {}: {}: {} ({})",
                    ack.sequence, r.index, r.field, r.reason, r.code
                )
            })
        };
        if let Some(p) = problem {
            self.first_problem
                .lock()
                .expect("problem lock")
                .get_or_insert(p);
        }
        // Spooled rows are durable and on their way (--spool-dir).
        self.stored
            .fetch_add(u64::from(ack.stored + ack.spooled), Ordering::Relaxed);
        self.duplicates
            .fetch_add(u64::from(ack.duplicates), Ordering::Relaxed);
        self.rejected
            .fetch_add(ack.rejected.len() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        if !ack.error.is_empty() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut h = self.latency_us.lock().expect("histogram lock");
        let h = h.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
        });
        h.saturating_record(latency.as_micros() as u64);
    }
}

/// Makes the next batch of a stream and its row count, or None when the
/// stream has sent its share.
pub type MakeBatch<B> = Box<dyn FnMut(u64) -> Option<(B, usize)> + Send>;

/// Generates events and messages as it sends them (`agent-telemetry loadgen`).
pub async fn run(cfg: &LoadgenConfig) -> Result<Summary, LoadgenError> {
    let streams = cfg.streams.max(1);
    let makers = (0..streams)
        .map(|i| {
            let share =
                cfg.events / streams as u64 + u64::from((i as u64) < cfg.events % streams as u64);
            let generator = spread(
                cfg,
                r#gen::Generator::new(
                    cfg.seed.wrapping_mul(1000).wrapping_add(i as u64),
                    cfg.projects,
                ),
            );
            generated(generator, share, cfg.batch_size)
        })
        .collect();
    send(cfg, makers, cfg.messages).await
}

fn spread(cfg: &LoadgenConfig, g: r#gen::Generator) -> r#gen::Generator {
    match cfg.spread {
        Some(d) => g.with_spread_us(d.as_micros() as i64),
        None => g,
    }
}

/// Sends a fixed set of event batches, spread round-robin over
/// `cfg.streams` streams (the benchmark harness: every case loads exactly
/// the same rows). With `repeat_for`, the streams go through the set again
/// and again until that much time has passed, each pass after the first
/// with new event ids, so that every row sent is a new row.
/// `cfg.events` and `cfg.messages` are not used.
pub async fn run_fixed(
    cfg: &LoadgenConfig,
    batches: Arc<Vec<Vec<pb::AgentEvent>>>,
    repeat_for: Option<Duration>,
) -> Result<Summary, LoadgenError> {
    let streams = cfg.streams.max(1);
    let until = repeat_for.map(|d| Instant::now() + d);
    // Encoded once, before the clock starts: what a pass sends is these
    // bytes behind each batch's sequence number (RawBatch).
    let encoded: Arc<Vec<Bytes>> =
        Arc::new(batches.iter().map(|b| encode_events(b.clone())).collect());
    let makers = (0..streams)
        .map(|i| {
            let (batches, encoded) = (batches.clone(), encoded.clone());
            let mut next = i;
            Box::new(move |sequence| {
                let pass = next / batches.len().max(1);
                if pass > 0 && until.is_none_or(|t| Instant::now() >= t) {
                    return None;
                }
                let at = next % batches.len().max(1);
                next += streams;
                let n = batches.get(at)?.len();
                let events = if pass == 0 {
                    encoded[at].clone()
                } else {
                    let mut events = batches[at].clone();
                    for e in &mut events {
                        e.id = uuid::Uuid::new_v4().to_string();
                    }
                    encode_events(events)
                };
                Some((RawBatch { sequence, events }, n))
            }) as MakeBatch<RawBatch>
        })
        .collect();
    send(cfg, makers, 0).await
}

/// An `AgentEventBatch` as it goes on the wire: its events already
/// encoded (field 2, repeated), its sequence number (field 1) written in
/// front when it is sent. A protobuf message is the concatenation of its
/// fields, so the service decodes exactly the batch `encode_events` was
/// given with this sequence number. The benchmark's fixed set is encoded
/// once instead of being cloned and encoded again for every send: on a
/// 2-core machine the client's CPU is taken from the service and the
/// database it measures (BENCHMARKS.md).
pub struct RawBatch {
    pub sequence: u64,
    pub events: Bytes,
}

impl RawBatch {
    /// The batch's wire form: its sequence number, then its events.
    fn write(&self, dst: &mut impl bytes::BufMut) {
        prost::encoding::uint64::encode(1, &self.sequence, dst);
        dst.put_slice(&self.events);
    }
}

/// The events of a batch in their wire form, without a sequence number.
pub fn encode_events(events: Vec<pb::AgentEvent>) -> Bytes {
    use prost::Message;
    let batch = pb::AgentEventBatch {
        sequence: 0,
        events,
    };
    Bytes::from(batch.encode_to_vec())
}

/// The client codec of `StreamAgentEvents` for [`RawBatch`]es; acks are
/// decoded as the generated client does.
#[derive(Default)]
struct RawEvents;

struct RawEventsEncoder;

impl tonic::codec::Encoder for RawEventsEncoder {
    type Item = RawBatch;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: RawBatch,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.write(dst);
        Ok(())
    }
}

impl tonic::codec::Codec for RawEvents {
    type Encode = RawBatch;
    type Decode = pb::BatchAck;
    type Encoder = RawEventsEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::BatchAck>;

    fn encoder(&mut self) -> Self::Encoder {
        RawEventsEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Batches of at most `batch_size` generated events, `total` in all.
fn generated(
    mut generator: r#gen::Generator,
    total: u64,
    batch_size: usize,
) -> MakeBatch<RawBatch> {
    let mut left = total;
    Box::new(move |sequence| {
        if left == 0 {
            return None;
        }
        let n = left.min(batch_size.max(1) as u64) as usize;
        left -= n as u64;
        let events = encode_events(generator.events(n));
        Some((RawBatch { sequence, events }, n))
    })
}

/// Runs one stream per event maker, plus a generated message stream when
/// `messages` > 0, and sums up what they did.
async fn send(
    cfg: &LoadgenConfig,
    makers: Vec<MakeBatch<RawBatch>>,
    messages: u64,
) -> Result<Summary, LoadgenError> {
    let channel = client::connect(&cfg.client, Duration::from_secs(10)).await?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let streams = makers.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, make) in makers.into_iter().enumerate() {
        let (cfg, tally, channel) = (cfg.clone(), tally.clone(), channel.clone());
        tasks.spawn(async move {
            // Streams take turns, as independent clients would, instead of
            // all sending at the same instant.
            let pace = pacing(&cfg, streams).map(|every| Pace {
                every,
                first_after: every * index as u32 / streams as u32,
            });
            event_stream(&cfg, channel, pace, make, tally).await
        });
    }
    if messages > 0 {
        let (cfg, tally, channel) = (cfg.clone(), tally.clone(), channel.clone());
        tasks.spawn(async move { message_stream(&cfg, channel, messages, tally).await });
    }
    let progress = (!cfg.quiet).then(|| {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let stored = tally.stored.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "[{secs:6.1} s] {stored} rows stored, {:.0} rows/s",
                    stored as f64 / secs
                );
            }
        })
    });
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            result = Err(e);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    result?;
    let elapsed = started.elapsed();
    let h = tally.latency_us.lock().expect("histogram lock").take();
    let q = |p: f64| {
        h.as_ref()
            .map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0)
    };
    Ok(Summary {
        rows_sent: tally.sent.load(Ordering::Relaxed),
        rows_stored: tally.stored.load(Ordering::Relaxed),
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        rejected: tally.rejected.load(Ordering::Relaxed),
        first_problem: tally.first_problem.lock().expect("problem lock").take(),
        failed_batches: tally.failed.load(Ordering::Relaxed),
        batches: tally.batches.load(Ordering::Relaxed),
        elapsed,
        latency_p50_ms: q(0.5),
        latency_p99_ms: q(0.99),
        latency_max_ms: h.as_ref().map_or(0.0, |h| h.max() as f64 / 1000.0),
    })
}

/// Largest response either of loadgen's clients (the generated one and the
/// raw event-batch one) accepts.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

fn client(cfg: &LoadgenConfig, channel: Channel) -> TelemetryIngestClient<Channel> {
    let c = TelemetryIngestClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    if cfg.gzip {
        c.send_compressed(CompressionEncoding::Gzip)
    } else {
        c
    }
}

/// When a stream sends its batches.
#[derive(Debug, Clone, Copy)]
struct Pace {
    every: Duration,
    first_after: Duration,
}

/// Time between batches of one stream for the target rate (None: no pacing).
fn pacing(cfg: &LoadgenConfig, streams: usize) -> Option<Duration> {
    (cfg.rate > 0.0)
        .then(|| Duration::from_secs_f64(cfg.batch_size as f64 * streams as f64 / cfg.rate))
}

/// Sends the batches `make` makes over one stream, `window` unacked at
/// most, and records each ack.
async fn drive<B: Send + 'static>(
    cfg: &LoadgenConfig,
    pace: Option<Pace>,
    tally: Arc<Tally>,
    mut make: MakeBatch<B>,
    open: impl AsyncFnOnce(ReceiverStream<B>) -> Result<tonic::Streaming<pb::BatchAck>, tonic::Status>,
) -> Result<(), LoadgenError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<B>(cfg.window.max(1));
    let window = Arc::new(Semaphore::new(cfg.window.max(1)));
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let producer = {
        let (window, sent_at, tally) = (window.clone(), sent_at.clone(), tally.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut next = Instant::now() + pace.map_or(Duration::ZERO, |p| p.first_after);
            loop {
                window.acquire().await.expect("window open").forget();
                if let Some(p) = pace {
                    tokio::time::sleep_until(next).await;
                    next += p.every;
                }
                let Some((batch, n)) = make(seq) else { break };
                sent_at.lock().expect("lock").insert(seq, Instant::now());
                tally.sent.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send(batch).await.is_err() {
                    break;
                }
                seq += 1;
            }
        })
    };
    let mut acks = open(ReceiverStream::new(rx)).await?;
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        let sent = sent_at.lock().expect("lock").remove(&ack.sequence);
        tally.record(&ack, sent.map_or(Duration::ZERO, |t| t.elapsed()));
        window.add_permits(1);
        if producer.is_finished() && sent_at.lock().expect("lock").is_empty() {
            break;
        }
    }
    producer.abort();
    Ok(())
}

async fn event_stream(
    cfg: &LoadgenConfig,
    channel: Channel,
    pace: Option<Pace>,
    make: MakeBatch<RawBatch>,
    tally: Arc<Tally>,
) -> Result<(), LoadgenError> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    if cfg.gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    let key = client::bearer(&cfg.client)?;
    drive(cfg, pace, tally, make, async |rx| {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("service not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/agent_telemetry.v1.TelemetryIngest/StreamAgentEvents",
        );
        Ok(grpc
            .streaming(client::authorized(&key, rx), path, RawEvents)
            .await?
            .into_inner())
    })
    .await
}

async fn message_stream(
    cfg: &LoadgenConfig,
    channel: Channel,
    total: u64,
    tally: Arc<Tally>,
) -> Result<(), LoadgenError> {
    let mut generator = spread(
        cfg,
        r#gen::Generator::new(cfg.seed.wrapping_mul(1000).wrapping_add(999), cfg.projects),
    );
    let mut c = client(cfg, channel);
    let key = client::bearer(&cfg.client)?;
    let batch_size = cfg.batch_size.max(1);
    let mut left = total;
    let make: MakeBatch<pb::ChatMessageBatch> = Box::new(move |sequence| {
        if left == 0 {
            return None;
        }
        let n = left.min(batch_size as u64) as usize;
        left -= n as u64;
        let mut batch = pb::ChatMessageBatch {
            sequence,
            ..Default::default()
        };
        for _ in 0..n {
            let (m, opened) = generator.message();
            batch.sessions.extend(opened);
            batch.messages.push(m);
        }
        Some((batch, n))
    });
    let pace = (cfg.rate > 0.0 && cfg.events > 0).then(|| {
        let share = cfg.messages as f64 / cfg.events as f64;
        Pace {
            every: Duration::from_secs_f64(cfg.batch_size as f64 / (cfg.rate * share)),
            first_after: Duration::ZERO,
        }
    });
    drive(cfg, pace, tally, make, async |rx| {
        Ok(c.stream_chat_messages(client::authorized(&key, rx))
            .await?
            .into_inner())
    })
    .await
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_raw_batch_decodes_as_the_batch_it_was_made_from() {
        let events = r#gen::Generator::new(7, 3).events(5);
        for sequence in [0, 1, 300, u64::MAX] {
            let raw = RawBatch {
                sequence,
                events: encode_events(events.clone()),
            };
            let mut wire = bytes::BytesMut::new();
            raw.write(&mut wire);
            let batch = pb::AgentEventBatch::decode(wire.freeze()).expect("decodes");
            assert_eq!(batch.sequence, sequence);
            assert_eq!(batch.events, events);
        }
    }
}
