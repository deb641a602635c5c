//! decode → validate → encode over arbitrary bytes, as a whole batch of
//! each kind and as one row of each kind; plus the spool's entry decoder
//! (a damaged spool file is hostile input too). Nothing may panic, and an
//! accepted row must encode.
#![no_main]

use std::{sync::LazyLock, time::SystemTime};

use agent_telemetry::{
    config::Limits,
    copy::encode,
    pb::{self, wire},
    spool::Entry,
    validate::{self, TimeWindow},
};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message;

static LIMITS: LazyLock<Limits> = LazyLock::new(Limits::default);

fn events(rows: &[Bytes], window: TimeWindow) {
    let mut rejected = Vec::new();
    let decoded: Vec<(u32, pb::AgentEvent)> = validate::decode_rows(rows, &mut rejected);
    let mut buf = BytesMut::new();
    for (i, ev) in &decoded {
        if let Ok(row) = validate::validate_event(ev, *i, &LIMITS, window) {
            encode::encode_event(&mut buf, &row, 1, None);
        }
    }
}

fn messages(rows: &[Bytes], window: TimeWindow) {
    let mut rejected = Vec::new();
    let decoded: Vec<(u32, pb::ChatMessage)> = validate::decode_rows(rows, &mut rejected);
    let mut buf = BytesMut::new();
    for (i, m) in &decoded {
        if let Ok(row) = validate::validate_message(m, *i, &LIMITS, window) {
            encode::encode_message(&mut buf, &row, 1, "agent");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // A fixed "now" keeps every run reproducible.
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000);
    let window = TimeWindow::around(now, &LIMITS);
    let bytes = Bytes::copy_from_slice(data);
    events(std::slice::from_ref(&bytes), window);
    messages(std::slice::from_ref(&bytes), window);
    if let Ok(batch) = wire::AgentEventBatch::decode(bytes.clone()) {
        events(&batch.events, window);
    }
    if let Ok(batch) = wire::ChatMessageBatch::decode(bytes.clone()) {
        messages(&batch.messages, window);
        for (i, s) in batch.sessions.iter().enumerate() {
            let _ = validate::validate_chat_session(s, i as u32, &LIMITS, window);
        }
    }
    let _ = Entry::decode(bytes);
});
