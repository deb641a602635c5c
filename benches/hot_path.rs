//! The hot ingest path on batches of 1,000 realistic events (the loadgen
//! generator): protobuf decode, validation, binary-COPY encoding, and the
//! three together — the CPU work the service does per batch before COPY.
//! Run: `cargo bench --bench hot_path`. Figures are per core (single thread).

use std::time::SystemTime;

use agent_telemetry::{
    config::Limits,
    copy::encode::encode_event,
    loadgen::r#gen::Generator,
    pb,
    row::EventRow,
    validate::{self, TimeWindow},
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

const BATCH: usize = 1000;

fn wire_batch() -> Bytes {
    let events = Generator::new(42, 20).events(BATCH);
    Bytes::from(
        pb::AgentEventBatch {
            sequence: 1,
            events,
        }
        .encode_to_vec(),
    )
}

fn decode(bytes: &Bytes) -> Vec<(u32, pb::AgentEvent)> {
    let batch = pb::wire::AgentEventBatch::decode(bytes.clone()).expect("batch");
    let mut rejected = Vec::new();
    validate::decode_rows(&batch.events, &mut rejected)
}

fn validate_all<'a>(
    decoded: &'a [(u32, pb::AgentEvent)],
    limits: &Limits,
    window: TimeWindow,
) -> Vec<EventRow<'a>> {
    decoded
        .iter()
        .filter_map(|(i, e)| validate::validate_event(e, *i, limits, window).ok())
        .collect()
}

fn encode_all(rows: &[EventRow<'_>], capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(capacity);
    for r in rows {
        encode_event(&mut buf, r, 7, Some(3));
    }
    buf
}

/// What the service does per batch before COPY: all three stages.
fn pipeline(bytes: &Bytes, limits: &Limits, window: TimeWindow, capacity: usize) -> BytesMut {
    let decoded = decode(bytes);
    let rows = validate_all(&decoded, limits, window);
    encode_all(&rows, capacity)
}

fn hot_path(c: &mut Criterion) {
    let bytes = wire_batch();
    let limits = Limits::default();
    let window = TimeWindow::around(SystemTime::now(), &limits);
    let decoded = decode(&bytes);
    let rows = validate_all(&decoded, &limits, window);
    assert_eq!(rows.len(), BATCH, "every generated event is valid");
    let encoded_len = encode_all(&rows, 0).len();

    let mut g = c.benchmark_group("events");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decode", |b| b.iter(|| decode(&bytes)));
    g.bench_function("validate", |b| {
        b.iter(|| validate_all(&decoded, &limits, window))
    });
    g.bench_function("encode", |b| b.iter(|| encode_all(&rows, encoded_len)));
    g.bench_function("decode+validate+encode", |b| {
        b.iter(|| pipeline(&bytes, &limits, window, encoded_len))
    });
    g.finish();

    let mut g = c.benchmark_group("bytes");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decode+validate+encode (protobuf bytes in)", |b| {
        b.iter(|| pipeline(&bytes, &limits, window, encoded_len))
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
