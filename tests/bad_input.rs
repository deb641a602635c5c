//! The hostile-input corpus: malformed and hostile rows and requests, sent
//! to the real service, each with the exact response expected. The expected
//! responses are in `tests/bad_input/responses.txt`, one line per case, so a
//! change in any message shows in review; `BLESS=1 cargo test --test
//! bad_input` rewrites the file after a deliberate change.
//!
//! Cases cover every text field of both row types (invalid UTF-8 and NUL
//! bytes, generated from the proto descriptor, so a new field is covered by
//! itself), JSON that is invalid, not an object, 10,000 deep, 10 MB large or
//! holds `\u0000`, malformed UUIDs, timestamps at and past the protobuf
//! limits, negative figures, unknown enum values, empty batches, batches
//! over the row and byte limits, messages over the gRPC limit, SQL-looking
//! text (stored verbatim), and the fuzzer's regressions
//! (`tests/bad_input/fuzz/`).

mod common;

use common::RawEventBatch;

use std::fmt::Write;

use agent_telemetry::{loadgen::r#gen::Generator, pb};
use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};
use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
struct RawMessageBatch {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(message, repeated, tag = "2")]
    sessions: Vec<pb::ChatSession>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    messages: Vec<Vec<u8>>,
}

const BUFFER: usize = 12 << 20;

async fn unary<M: Message + Send + Sync + 'static>(
    endpoint: &str,
    method: &'static str,
    msg: M,
) -> Result<pb::BatchAck, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<M, pb::BatchAck> = tonic_prost::ProstCodec::default();
    grpc.unary(
        tonic::Request::new(msg),
        PathAndQuery::from_static(method),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

/// The response, as one line: what the client is told.
fn render(answer: &Result<pb::BatchAck, tonic::Status>) -> String {
    match answer {
        Err(s) => format!("status {:?}: {}", s.code(), s.message()),
        Ok(ack) => {
            let mut out = format!(
                "received {} stored {} duplicates {}",
                ack.received, ack.stored, ack.duplicates
            );
            if !ack.error.is_empty() {
                write!(out, " error {:?} retryable {}", ack.error, ack.retryable).unwrap();
            }
            for r in &ack.rejected {
                let reason: String = r.reason.chars().take(240).collect();
                write!(
                    out,
                    "; rejected {}{} {} [{}]: {}",
                    if r.kind.is_empty() { "" } else { "session " },
                    r.index,
                    r.field,
                    r.code,
                    reason
                )
                .unwrap();
            }
            out
        }
    }
}

/// The names and numbers of a message's string fields, from the descriptor.
fn string_fields(message: &str) -> Vec<(String, i32)> {
    let fds = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let msg = fds
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == message)
        .unwrap();
    msg.field
        .iter()
        .filter(|f| f.r#type() == Type::String)
        .map(|f| (f.name().to_owned(), f.number()))
        .collect()
}

/// `row` with field `number` (appended last, so it wins, or adds an item
/// to a repeated field) set to `value` as raw bytes.
fn with_raw_field(mut row: Vec<u8>, number: i32, value: &[u8]) -> Vec<u8> {
    prost::encoding::encode_key(
        number as u32,
        prost::encoding::WireType::LengthDelimited,
        &mut row,
    );
    prost::encoding::encode_varint(value.len() as u64, &mut row);
    row.extend_from_slice(value);
    row
}

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A good event with its own id (numbered in order, so every run sends the
/// same ids), so no case's row is a resend of another's.
fn good_event() -> pb::AgentEvent {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pb::AgentEvent {
        id: format!("0195f3a0-0000-7000-8000-{n:012x}"),
        session_id: "0195f3a0-0000-7000-8000-0000000000aa".into(),
        ..common::event("acme/corpus", 60)
    }
}

fn event_case(f: impl FnOnce(&mut pb::AgentEvent)) -> Vec<u8> {
    let mut e = good_event();
    f(&mut e);
    e.encode_to_vec()
}

/// A named change to a good event.
type EventCase = (&'static str, fn(&mut pb::AgentEvent));
type JsonField = (&'static str, fn(&mut pb::AgentEvent) -> &mut String);

fn nested_json(depth: usize) -> String {
    format!("{{\"a\":{}1{}}}", "[".repeat(depth), "]".repeat(depth))
}

/// (case name, rows) for single-row event cases: each row is sent beside a
/// good row, which must be stored.
fn event_rows() -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    for (name, number) in string_fields("AgentEvent") {
        let good = good_event().encode_to_vec();
        cases.push((
            format!("event.{name} invalid UTF-8"),
            with_raw_field(good.clone(), number, b"a\xff\xfeb"),
        ));
        cases.push((
            format!("event.{name} NUL byte"),
            with_raw_field(good, number, b"a\0b"),
        ));
    }
    let json_fields: [JsonField; 3] = [
        ("context_json", |e| &mut e.context_json),
        ("data_json", |e| &mut e.data_json),
        ("metrics_json", |e| &mut e.metrics_json),
    ];
    for (name, field) in json_fields {
        let cases_for: [(&str, String); 7] = [
            ("invalid", "{\"a\":".into()),
            ("not an object", "[1,2,3]".into()),
            ("a string", "\"text\"".into()),
            ("nested 10,000 deep", nested_json(10_000)),
            (
                "10 MB large",
                format!("{{\"a\":\"{}\"}}", "x".repeat(10 << 20)),
            ),
            ("escaped NUL", r#"{"a":"x\u0000y"}"#.into()),
            (
                "duplicate keys and big numbers",
                r#"{"a":1,"a":1e400}"#.into(),
            ),
        ];
        for (what, value) in cases_for {
            cases.push((
                format!("event.{name} {what}"),
                event_case(|e| *field(e) = value),
            ));
        }
    }
    let uuid_cases: [EventCase; 6] = [
        ("id not a UUID", |e| e.id = "not-a-uuid".into()),
        ("id with braces", |e| {
            e.id = "{0195f3a0-0000-7000-8000-000000000001}".into()
        }),
        ("id too long", |e| {
            e.id = "0195f3a0-0000-7000-8000-0000000000011".into()
        }),
        ("session_id empty", |e| e.session_id.clear()),
        ("parent_event_id bad", |e| e.parent_event_id = "zzzz".into()),
        ("related_event_ids bad", |e| {
            e.related_event_ids = vec!["0195f3a0-0000-7000-8000-000000000002".into(), "x".into()]
        }),
    ];
    for (what, f) in uuid_cases {
        cases.push((format!("event {what}"), event_case(f)));
    }
    const MIN: i64 = -62_135_596_800;
    const MAX: i64 = 253_402_300_799;
    let time_cases: [(&str, Option<prost_types::Timestamp>); 8] = [
        ("timestamp missing", None),
        ("timestamp at the protobuf minimum", ts(MIN, 0)),
        ("timestamp at the protobuf maximum", ts(MAX, 999_999_999)),
        ("timestamp below the protobuf range", ts(MIN - 1, 0)),
        ("timestamp above the protobuf range", ts(MAX + 1, 0)),
        ("timestamp i64::MIN", ts(i64::MIN, 0)),
        ("timestamp nanos negative", ts(now_s() - 60, -1)),
        ("timestamp nanos 1e9", ts(now_s() - 60, 1_000_000_000)),
    ];
    for (what, t) in time_cases {
        cases.push((format!("event {what}"), event_case(|e| e.timestamp = t)));
    }
    let figure_cases: [EventCase; 10] = [
        ("input_tokens negative", |e| e.input_tokens = Some(-1)),
        ("output_tokens negative", |e| {
            e.output_tokens = Some(i64::MIN)
        }),
        ("cached_tokens negative", |e| e.cached_tokens = Some(-5)),
        ("duration_ms negative", |e| e.duration_ms = Some(-1)),
        ("cost_usd negative", |e| e.cost_usd = Some(-0.01)),
        ("cost_usd NaN", |e| e.cost_usd = Some(f64::NAN)),
        ("cost_usd infinite", |e| e.cost_usd = Some(f64::INFINITY)),
        ("cost_usd huge", |e| e.cost_usd = Some(1e300)),
        ("severity unknown enum value", |e| e.severity = 42),
        ("severity negative enum value", |e| e.severity = -1),
    ];
    for (what, f) in figure_cases {
        cases.push((format!("event {what}"), event_case(f)));
    }
    let text_cases: [EventCase; 6] = [
        ("event_type empty", |e| e.event_type.clear()),
        ("agent_version over the text limit", |e| {
            e.agent_version = "v".repeat(4097)
        }),
        ("65 tags", |e| e.tags = vec!["t".into(); 65]),
        ("an empty tag", |e| {
            e.tags = vec!["ok".into(), String::new()]
        }),
        ("project empty", |e| e.project.clear()),
        ("project a URL without a path", |e| {
            e.project = "https://github.com/".into()
        }),
    ];
    for (what, f) in text_cases {
        cases.push((format!("event {what}"), event_case(f)));
    }
    cases.push(("event truncated protobuf".into(), {
        let mut b = good_event().encode_to_vec();
        b.truncate(b.len() / 2);
        b
    }));
    cases.push(("event wrong wire type".into(), vec![0x0d, 1, 2, 3, 4]));
    cases.push(("event varint too long".into(), vec![0x78; 11]));
    cases.push(("event empty row (all defaults)".into(), Vec::new()));
    cases
}

fn chat_session() -> pb::ChatSession {
    let mut s = Generator::new(7, 1).chat_session();
    s.session_id = "0195f3a0-0000-7000-8000-0000000000cc".into();
    if let Some(p) = s.workspace.as_mut().and_then(|w| w.project.as_mut()) {
        p.name = "acme/corpus".into();
        p.repo_url = None;
    }
    s.started_at = ts(now_s() - 3_600, 0);
    s
}

/// Numbered like [`good_event`].
fn good_message() -> pb::ChatMessage {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    pb::ChatMessage {
        id: format!("0195f3a0-0000-7000-9000-{n:012x}"),
        session_id: chat_session().session_id,
        role: "user".into(),
        content: "hello".into(),
        timestamp: ts(now_s() - 60, 0),
        sequence: 1,
        metadata_json: String::new(),
        search_content: None,
    }
}

fn message_rows() -> Vec<(String, Vec<u8>)> {
    let mut cases = Vec::new();
    for (name, number) in string_fields("ChatMessage") {
        let good = good_message().encode_to_vec();
        cases.push((
            format!("message.{name} invalid UTF-8"),
            with_raw_field(good.clone(), number, b"a\xff\xfeb"),
        ));
        cases.push((
            format!("message.{name} NUL byte"),
            with_raw_field(good, number, b"a\0b"),
        ));
    }
    let m = |f: fn(&mut pb::ChatMessage)| {
        let mut m = good_message();
        f(&mut m);
        m.encode_to_vec()
    };
    cases.push(("message unknown role".into(), m(|m| m.role = "root".into())));
    cases.push((
        "message unknown session".into(),
        m(|m| m.session_id = "0195f3a0-0000-7000-8000-0000000000dd".into()),
    ));
    cases.push((
        "message content over 1 MiB".into(),
        m(|m| m.content = "x".repeat((1 << 20) + 1)),
    ));
    cases.push((
        "message metadata_json not an object".into(),
        m(|m| m.metadata_json = "null".into()),
    ));
    cases.push(("message negative sequence".into(), m(|m| m.sequence = -1)));
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_input_gets_its_exact_response() {
    let (_pg, conn, svc) = common::service_with("corpus", |c| {
        c.pipeline.buffer_bytes = BUFFER;
    })
    .await;
    let ep = svc.endpoint.as_str();
    const EVENTS: &str = "/agent_telemetry.v1.TelemetryIngest/IngestAgentEvents";
    const MESSAGES: &str = "/agent_telemetry.v1.TelemetryIngest/IngestChatMessages";
    let mut lines = Vec::new();
    let mut good_ids = 0u64;
    // Each row beside a good one: the good one must be stored.
    for (name, row) in event_rows() {
        let good = good_event();
        good_ids += 1;
        let batch = RawEventBatch {
            sequence: 1,
            events: vec![good.encode_to_vec(), row],
        };
        lines.push(format!(
            "{name} => {}",
            render(&unary(ep, EVENTS, batch).await)
        ));
    }
    let session = chat_session();
    for (name, row) in message_rows() {
        let good = good_message();
        let batch = RawMessageBatch {
            sequence: 2,
            sessions: vec![session.clone()],
            messages: vec![good.encode_to_vec(), row],
        };
        lines.push(format!(
            "{name} => {}",
            render(&unary(ep, MESSAGES, batch).await)
        ));
    }
    // Requests refused or special as a whole.
    let whole: Vec<(&str, RawEventBatch)> = vec![
        (
            "empty batch",
            RawEventBatch {
                sequence: 3,
                events: vec![],
            },
        ),
        (
            "10,001 rows",
            RawEventBatch {
                sequence: 4,
                events: vec![Vec::new(); 10_001],
            },
        ),
        (
            "13 MiB batch, over the 12 MiB buffer",
            RawEventBatch {
                sequence: 5,
                events: vec![
                    event_case(
                        |e| e.data_json = format!("{{\"a\":\"{}\"}}", "x".repeat(1 << 20))
                    );
                    13
                ],
            },
        ),
        (
            "17 MiB message, over the 16 MiB gRPC limit",
            RawEventBatch {
                sequence: 6,
                events: vec![vec![b'x'; 17 << 20]],
            },
        ),
    ];
    for (name, batch) in whole {
        lines.push(format!(
            "{name} => {}",
            render(&unary(ep, EVENTS, batch).await)
        ));
    }
    let bad_session = pb::ChatSession {
        session_id: "nope".into(),
        ..chat_session()
    };
    let batch = RawMessageBatch {
        sequence: 7,
        sessions: vec![bad_session],
        messages: vec![good_message().encode_to_vec()],
    };
    lines.push(format!(
        "a bad session and a message naming it => {}",
        render(&unary(ep, MESSAGES, batch).await)
    ));
    // SQL-looking text is data: stored verbatim, never executed.
    let sql = "'); DROP TABLE agent_events; --";
    let batch = RawEventBatch {
        sequence: 8,
        events: vec![event_case(|e| {
            e.id = "0195f3a0-0000-7000-8000-00000000fff1".into();
            e.event_type = sql.into();
            e.data_json = format!("{{\"q\":{}}}", serde_json::to_string(sql).unwrap());
            e.tags = vec!["$1".into(), "%s".into(), "\\x00".into()];
        })],
    };
    lines.push(format!(
        "SQL-looking text => {}",
        render(&unary(ep, EVENTS, batch).await)
    ));
    for (name, row) in fuzz_regressions() {
        let batch = RawEventBatch {
            sequence: 9,
            events: vec![row],
        };
        lines.push(format!(
            "fuzz {name} => {}",
            render(&unary(ep, EVENTS, batch).await)
        ));
    }

    let db = common::db(&conn).await;
    let row = db
        .query_one("SELECT event_type, data->>'q', tags FROM agent_events WHERE id = '0195f3a0-0000-7000-8000-00000000fff1'", &[])
        .await
        .expect("the SQL-looking row is stored");
    assert_eq!(row.get::<_, String>(0), sql);
    assert_eq!(row.get::<_, String>(1), sql);
    assert_eq!(row.get::<_, Vec<String>>(2), ["$1", "%s", "\\x00"]);

    let actual = lines.join("\n") + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input/responses.txt");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        for (a, e) in actual.lines().zip(expected.lines()) {
            if a != e {
                common::say(&format!("expected: {e}\n  actual: {a}"));
            }
        }
        panic!(
            "responses differ from {} ({} lines now, {} expected); BLESS=1 rewrites it after a deliberate change",
            path.display(),
            actual.lines().count(),
            expected.lines().count()
        );
    }
    // Every good row beside a bad one was stored.
    let stored = common::count(&db, "SELECT count(*) FROM agent_events").await;
    assert!(
        stored as u64 >= good_ids,
        "{stored} rows stored, {good_ids} good events sent"
    );
    svc.running.shutdown().await.unwrap();
}

/// Inputs the fuzzer found worth keeping (`fuzz/`, see docs/reliability.md):
/// each a single event row.
fn fuzz_regressions() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input/fuzz");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
