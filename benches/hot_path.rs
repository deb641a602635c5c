//! The hot ingest path on batches of 1,000 realistic events (the loadgen
//! generator): protobuf decode, validation, binary-COPY encoding, and the
//! three together — the CPU work the service does per batch before COPY.
//! The same with redaction (`--redaction on`, the default) on the same
//! data, which holds no secret, and on events that each carry one.
//! Run: `cargo bench --bench hot_path`. Figures are per core (single thread).

use std::time::SystemTime;

use agent_telemetry::{
    config::Limits,
    copy::encode::encode_event,
    intake::redact::{Redactor, Scan},
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
#[inline(never)]
fn pipeline(bytes: &Bytes, limits: &Limits, window: TimeWindow, capacity: usize) -> BytesMut {
    let decoded = decode(bytes);
    let rows = validate_all(&decoded, limits, window);
    encode_all(&rows, capacity)
}

/// The pipeline with each decoded event redacted first, as intake does.
#[inline(never)]
fn pipeline_redacted(
    bytes: &Bytes,
    redactor: &Redactor,
    limits: &Limits,
    window: TimeWindow,
    capacity: usize,
) -> (BytesMut, u64) {
    let mut decoded = decode(bytes);
    let mut scan = Scan::default();
    for (_, e) in &mut decoded {
        redactor.event(e, &mut scan);
    }
    let rows = validate_all(&decoded, limits, window);
    (encode_all(&rows, capacity), scan.hits.total())
}

/// The loadgen events with a credential in each one's command or context.
fn secret_batch() -> Bytes {
    let mut events = Generator::new(42, 20).events(BATCH);
    for (i, e) in events.iter_mut().enumerate() {
        e.data_json = match i % 4 {
            0 => format!(
                r#"{{"command":"export GITHUB_TOKEN=ghp_{:036} && gh pr list"}}"#,
                i
            ),
            1 => format!(r#"{{"command":"psql postgres://app:pw{i:08}x@db:5432/app"}}"#),
            2 => format!(
                r#"{{"env":{{"AWS_ACCESS_KEY_ID":"AKIA{:016}","password":"p{i}"}}}}"#,
                0
            )
            .replace("AKIA0000000000000000", "AKIAZ7QX2MBN4VJ3KTWE"),
            _ => format!(r#"{{"prompt":"my key is sk-proj-{:048} ok"}}"#, i),
        };
    }
    Bytes::from(
        pb::AgentEventBatch {
            sequence: 1,
            events,
        }
        .encode_to_vec(),
    )
}

fn redaction(c: &mut Criterion) {
    let redactor = Redactor::new(None).expect("built-in rules");
    let limits = Limits::default();
    let window = TimeWindow::around(SystemTime::now(), &limits);
    let mut g = c.benchmark_group("redaction");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, bytes) in [
        ("loadgen", wire_batch()),
        ("a secret per event", secret_batch()),
    ] {
        let (encoded, hits) = pipeline_redacted(&bytes, &redactor, &limits, window, 0);
        assert_eq!(hits == 0, name == "loadgen", "{name}: {hits} redactions");
        assert!(hits >= BATCH as u64 || name == "loadgen", "{name}: {hits}");
        let len = encoded.len();
        g.bench_function(format!("{name}: decode+validate+encode"), |b| {
            b.iter(|| pipeline(&bytes, &limits, window, len))
        });
        g.bench_function(format!("{name}: decode+redact+validate+encode"), |b| {
            b.iter(|| pipeline_redacted(&bytes, &redactor, &limits, window, len))
        });
    }
    g.finish();
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

criterion_group!(benches, hot_path, redaction);
criterion_main!(benches);
