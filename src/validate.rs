//! Stage 2, inside intake: **validate**. Every row is checked before it may
//! be encoded, because one row the database refuses would abort the whole
//! COPY it is in.
//!
//! In: one row's bytes (decoded here, so that a row with invalid UTF-8 is one
//! rejected row, not an undecodable batch) or a decoded message. Out: a typed,
//! checked row ([`EventRow`], [`MessageRow`]) that borrows the message, or a
//! [`Rejection`] that names the row's index, the field and what is wrong.
//! Pure functions: no IO, no clock reads (the caller passes `now`).

use prost::Message;
use uuid::Uuid;

use crate::{
    ack::Rejection,
    config::Limits,
    pb,
    row::{AgentSessionRow, ChatSessionRow, EventRow, MessageRow},
    time::{system_time_to_pg_us, timestamp_to_pg_us},
};

/// The accepted time window, in microseconds since the PostgreSQL epoch.
#[derive(Debug, Clone, Copy)]
pub struct TimeWindow {
    pub min_us: i64,
    pub max_us: i64,
    /// The "now" the window was built around.
    pub now_us: i64,
}

impl TimeWindow {
    pub fn around(now: std::time::SystemTime, limits: &Limits) -> Self {
        let now_us = system_time_to_pg_us(now);
        Self {
            min_us: now_us.saturating_sub(limits.max_past.as_micros() as i64),
            max_us: now_us.saturating_add(limits.max_future.as_micros() as i64),
            now_us,
        }
    }
}

/// Decodes one row of a batch. prost's error names the message and field it
/// failed in ("AgentEvent.agent_id: invalid string value: data is not UTF-8
/// encoded"); the rejection keeps the row's field and the description.
pub fn decode_row<M: Message + Default>(bytes: &[u8], index: u32) -> Result<M, Rejection> {
    M::decode(bytes).map_err(|e| {
        let text = e.to_string();
        let text = text
            .strip_prefix("failed to decode Protobuf message: ")
            .unwrap_or(&text);
        // Stack entries look like "Message.field: "; the first is the row's field.
        let mut parts = text.split(": ");
        let first = parts.next().unwrap_or_default();
        match first.split_once('.') {
            Some((_, field)) if !first.contains(' ') => {
                let rest: Vec<&str> = parts
                    .filter(|p| p.contains(' ') || !p.contains('.'))
                    .collect();
                Rejection::new(
                    index,
                    field.to_owned(),
                    format!("cannot decode: {}", rest.join(": ")),
                )
            }
            _ => Rejection::new(index, "", format!("cannot decode row: {text}")),
        }
    })
}

/// Decodes every row of a batch; rows that do not decode become rejections.
pub fn decode_rows<M: Message + Default>(
    rows: &[bytes::Bytes],
    rejected: &mut Vec<Rejection>,
) -> Vec<(u32, M)> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, bytes) in rows.iter().enumerate() {
        match decode_row::<M>(bytes, i as u32) {
            Ok(m) => out.push((i as u32, m)),
            Err(r) => rejected.push(r),
        }
    }
    out
}

/// Bytes of a text that becomes a key: an index column, a compression
/// segment-by column or a GROUP BY column of an aggregate (docs/api.md
/// lists them). The limit comes from the storage: a btree index entry holds
/// at most 2704 bytes on 8 KiB pages (PostgreSQL's BTMaxItemSize, also the
/// GIN limit near enough), and the widest index over keys,
/// `(agent_id, event_type, "timestamp")` and the compressed chunks' index on
/// `(project_id, agent_id, event_type, ...)`, holds two of them beside a
/// few fixed-width columns: 2 × (1024 + 4) + 8 + 8 + 16 fits with room to
/// spare. Values are not compressed in index entries when they are
/// incompressible, so the bound is on the raw bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// BTMaxItemSize for 8 KiB pages.
pub const BTREE_MAX_ITEM_BYTES: usize = 2704;
const _: () = assert!(2 * (MAX_KEY_BYTES + 4) + 8 + 8 + 16 + 64 <= BTREE_MAX_ITEM_BYTES);

/// Most a cost may be for one event (guards against unit mistakes such as
/// sending micro-dollars).
const MAX_COST_USD: f64 = 1_000_000.0;

pub fn validate_event<'a>(
    ev: &'a pb::AgentEvent,
    index: u32,
    limits: &Limits,
    window: TimeWindow,
) -> Result<EventRow<'a>, Rejection> {
    let rej = |field: &'static str, reason: String| Rejection::new(index, field, reason);
    let id = optional_uuid(&ev.id)
        .map_err(|r| rej("id", r))?
        .unwrap_or_else(Uuid::new_v4);
    let ts_us = check_time(ev.timestamp.as_ref(), window).map_err(|r| rej("timestamp", r))?;
    let k = key_limit(limits);
    required_key(&ev.event_type, k).map_err(|r| rej("event_type", r))?;
    required_key(&ev.agent_id, k).map_err(|r| rej("agent_id", r))?;
    text(&ev.agent_version, limits.max_text_bytes).map_err(|r| rej("agent_version", r))?;
    let session_id = required_uuid(&ev.session_id).map_err(|r| rej("session_id", r))?;
    required_key(&ev.project, k).map_err(|r| rej("project", r))?;
    user(ev.user.as_ref(), k).map_err(|(f, r)| rej(f, r))?;
    organization(ev.organization.as_ref(), ORGANIZATION, k).map_err(|(f, r)| rej(f, r))?;
    json_object(&ev.context_json, limits.max_json_bytes).map_err(|r| rej("context_json", r))?;
    json_object(&ev.data_json, limits.max_json_bytes).map_err(|r| rej("data_json", r))?;
    json_object(&ev.metrics_json, limits.max_json_bytes).map_err(|r| rej("metrics_json", r))?;
    let parent_event_id =
        optional_uuid(&ev.parent_event_id).map_err(|r| rej("parent_event_id", r))?;
    if ev.related_event_ids.len() > limits.max_list_items {
        return Err(rej(
            "related_event_ids",
            too_many(ev.related_event_ids.len(), limits.max_list_items),
        ));
    }
    let related_event_ids = ev
        .related_event_ids
        .iter()
        .enumerate()
        .map(|(i, s)| {
            required_uuid(s)
                .map_err(|r| Rejection::new(index, format!("related_event_ids[{i}]"), r))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ev.tags.len() > limits.max_list_items {
        return Err(rej("tags", too_many(ev.tags.len(), limits.max_list_items)));
    }
    for (i, tag) in ev.tags.iter().enumerate() {
        required_key(tag, k).map_err(|r| Rejection::new(index, format!("tags[{i}]"), r))?;
    }
    let severity = match pb::Severity::try_from(ev.severity) {
        Ok(pb::Severity::Unspecified) => None,
        Ok(pb::Severity::Info) => Some("info"),
        Ok(pb::Severity::Warning) => Some("warning"),
        Ok(pb::Severity::Error) => Some("error"),
        Err(_) => {
            return Err(rej(
                "severity",
                format!("unknown Severity value {}", ev.severity),
            ));
        }
    };
    non_negative(ev.duration_ms).map_err(|r| rej("duration_ms", r))?;
    non_negative(ev.input_tokens).map_err(|r| rej("input_tokens", r))?;
    non_negative(ev.output_tokens).map_err(|r| rej("output_tokens", r))?;
    non_negative(ev.cached_tokens).map_err(|r| rej("cached_tokens", r))?;
    if let (Some(cached), Some(input)) = (ev.cached_tokens, ev.input_tokens)
        && cached > input
    {
        return Err(rej(
            "cached_tokens",
            format!("{cached} cached tokens exceed the {input} input tokens they are part of"),
        ));
    }
    let cost_nanos = ev
        .cost_usd
        .map(cost_to_nanos)
        .transpose()
        .map_err(|r| rej("cost_usd", r))?;
    if let Some(model) = &ev.model {
        required_key(model, k).map_err(|r| rej("model", r))?;
    }
    Ok(EventRow {
        index,
        src: ev,
        id,
        ts_us,
        session_id,
        parent_event_id,
        related_event_ids,
        severity,
        cost_nanos,
    })
}

pub fn validate_message<'a>(
    m: &'a pb::ChatMessage,
    index: u32,
    limits: &Limits,
    window: TimeWindow,
) -> Result<MessageRow<'a>, Rejection> {
    let rej = |field: &'static str, reason: String| Rejection::new(index, field, reason);
    let id = optional_uuid(&m.id)
        .map_err(|r| rej("id", r))?
        .unwrap_or_else(Uuid::new_v4);
    let session_id = required_uuid(&m.session_id).map_err(|r| rej("session_id", r))?;
    required_key(&m.role, key_limit(limits)).map_err(|r| rej("role", r))?;
    text(&m.content, limits.max_content_bytes).map_err(|r| rej("content", r))?;
    let ts_us = check_time(m.timestamp.as_ref(), window).map_err(|r| rej("timestamp", r))?;
    if m.sequence < 0 {
        return Err(rej(
            "sequence",
            format!("must not be negative, got {}", m.sequence),
        ));
    }
    json_object(&m.metadata_json, limits.max_json_bytes).map_err(|r| rej("metadata_json", r))?;
    if let Some(s) = &m.search_content {
        text(s, limits.max_content_bytes).map_err(|r| rej("search_content", r))?;
    }
    Ok(MessageRow {
        index,
        src: m,
        id,
        session_id,
        ts_us,
    })
}

pub fn validate_chat_session<'a>(
    s: &'a pb::ChatSession,
    index: u32,
    limits: &Limits,
    window: TimeWindow,
) -> Result<ChatSessionRow<'a>, Rejection> {
    let rej = |field: &'static str, reason: String| Rejection::new(index, field, reason);
    let t = limits.max_text_bytes;
    let k = key_limit(limits);
    let session_id = required_uuid(&s.session_id).map_err(|r| rej("session_id", r))?;
    user(s.user.as_ref(), k).map_err(|(f, r)| rej(f, r))?;
    let workspace = s
        .workspace
        .as_ref()
        .ok_or_else(|| rej("workspace", "is required".into()))?;
    required_key(&workspace.workspace_id, k).map_err(|r| rej("workspace.workspace_id", r))?;
    text(&workspace.workspace_path, t).map_err(|r| rej("workspace.workspace_path", r))?;
    text(&workspace.workspace_type, t).map_err(|r| rej("workspace.workspace_type", r))?;
    for (field, v) in [
        ("workspace.branch", &workspace.branch),
        ("workspace.commit", &workspace.commit),
    ] {
        if let Some(v) = v {
            text(v, t).map_err(|r| rej(field, r))?;
        }
    }
    let project = workspace
        .project
        .as_ref()
        .ok_or_else(|| rej("workspace.project", "is required".into()))?;
    validate_project(project, t, k).map_err(|(f, r)| rej(f, r))?;
    let machine = workspace
        .machine
        .as_ref()
        .ok_or_else(|| rej("workspace.machine", "is required".into()))?;
    required_key(&machine.machine_id, k).map_err(|r| rej("workspace.machine.machine_id", r))?;
    // hostname and machine_type are indexed (sql/0001_core.sql).
    key(&machine.hostname, k).map_err(|r| rej("workspace.machine.hostname", r))?;
    key(&machine.machine_type, k).map_err(|r| rej("workspace.machine.machine_type", r))?;
    text(&machine.username, t).map_err(|r| rej("workspace.machine.username", r))?;
    text(&machine.os_type, t).map_err(|r| rej("workspace.machine.os_type", r))?;
    for (field, v) in [
        ("workspace.machine.os_version", &machine.os_version),
        ("workspace.machine.ip_address", &machine.ip_address),
    ] {
        if let Some(v) = v {
            text(v, t).map_err(|r| rej(field, r))?;
        }
    }
    json_object(&machine.metadata_json, limits.max_json_bytes)
        .map_err(|r| rej("workspace.machine.metadata_json", r))?;
    required_key(&s.agent_type, k).map_err(|r| rej("agent_type", r))?;
    if let Some(m) = &s.model_id {
        text(m, t).map_err(|r| rej("model_id", r))?;
    }
    let started_us = check_time(s.started_at.as_ref(), window).map_err(|r| rej("started_at", r))?;
    let ended_us = s
        .ended_at
        .as_ref()
        .map(|e| check_time(Some(e), window))
        .transpose()
        .map_err(|r| rej("ended_at", r))?;
    if matches!(s.message_count, Some(n) if n < 0) {
        return Err(rej("message_count", "must not be negative".into()));
    }
    non_negative(s.total_tokens).map_err(|r| rej("total_tokens", r))?;
    Ok(ChatSessionRow {
        src: s,
        session_id,
        workspace,
        project,
        machine,
        started_us,
        ended_us,
    })
}

fn validate_project(
    p: &pb::Project,
    max: usize,
    key_max: usize,
) -> Result<(), (&'static str, String)> {
    required_key(&p.name, key_max).map_err(|r| ("workspace.project.name", r))?;
    if let Some(u) = &p.repo_url {
        key(u, key_max).map_err(|r| ("workspace.project.repo_url", r))?;
    }
    if let Some(d) = &p.description {
        text(d, max).map_err(|r| ("workspace.project.description", r))?;
    }
    organization(
        p.organization.as_ref(),
        [
            "workspace.project.organization.key",
            "workspace.project.organization.display_name",
        ],
        key_max,
    )
}

pub const OUTCOMES: [&str; 4] = ["success", "failure", "partial", "cancelled"];

pub fn validate_agent_session<'a>(
    s: &'a pb::AgentSession,
    index: u32,
    limits: &Limits,
    window: TimeWindow,
) -> Result<AgentSessionRow<'a>, Rejection> {
    let rej = |field: &'static str, reason: String| Rejection::new(index, field, reason);
    let t = limits.max_text_bytes;
    let k = key_limit(limits);
    let id = required_uuid(&s.id).map_err(|r| rej("id", r))?;
    required_key(&s.agent_id, k).map_err(|r| rej("agent_id", r))?;
    text(&s.agent_version, t).map_err(|r| rej("agent_version", r))?;
    required_key(&s.project, k).map_err(|r| rej("project", r))?;
    user(s.user.as_ref(), k).map_err(|(f, r)| rej(f, r))?;
    organization(s.organization.as_ref(), ORGANIZATION, k).map_err(|(f, r)| rej(f, r))?;
    let start_us = check_time(s.start_time.as_ref(), window).map_err(|r| rej("start_time", r))?;
    let end_us = s
        .end_time
        .as_ref()
        .map(|e| check_time(Some(e), window))
        .transpose()
        .map_err(|r| rej("end_time", r))?;
    if matches!(end_us, Some(e) if e < start_us) {
        return Err(rej("end_time", "is before start_time".into()));
    }
    if matches!(s.duration_s, Some(d) if d < 0) {
        return Err(rej("duration_s", "must not be negative".into()));
    }
    json_object(&s.context_json, limits.max_json_bytes).map_err(|r| rej("context_json", r))?;
    json_object(&s.metrics_json, limits.max_json_bytes).map_err(|r| rej("metrics_json", r))?;
    if !s.outcome.is_empty() && !OUTCOMES.contains(&s.outcome.as_str()) {
        return Err(rej(
            "outcome",
            format!(
                "{:?} is not one of {OUTCOMES:?} (or empty while running)",
                s.outcome
            ),
        ));
    }
    if let Some(q) = s.quality_score
        && !(0.0..=100.0).contains(&q)
    {
        return Err(rej("quality_score", format!("{q} is outside 0..100")));
    }
    Ok(AgentSessionRow {
        src: s,
        id,
        start_us,
        end_us,
    })
}

fn too_many(n: usize, max: usize) -> String {
    format!("{n} items, more than the limit of {max}")
}

/// A developer, when one is named: its key like any key field; its name
/// and email are shown and grouped by in dashboards, so held to the same
/// bound. The error names the field.
pub fn user(u: Option<&pb::User>, max: usize) -> Result<(), (&'static str, String)> {
    let Some(u) = u else { return Ok(()) };
    required_key(&u.key, max).map_err(|r| ("user.key", r))?;
    key(&u.display_name, max).map_err(|r| ("user.display_name", r))?;
    key(&u.email, max).map_err(|r| ("user.email", r))
}

/// An organisation, when one is named: key and name as the user's. The
/// error names the field (`fields`: the key's and the name's proto field
/// where this message sits).
pub fn organization(
    o: Option<&pb::Organization>,
    fields: [&'static str; 2],
    max: usize,
) -> Result<(), (&'static str, String)> {
    let Some(o) = o else { return Ok(()) };
    required_key(&o.key, max).map_err(|r| (fields[0], r))?;
    key(&o.display_name, max).map_err(|r| (fields[1], r))
}

/// Where `Organization` sits on events and agent sessions.
const ORGANIZATION: [&str; 2] = ["organization.key", "organization.display_name"];

/// Text PostgreSQL will take: no NUL character, at most `max` bytes.
pub fn text(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} bytes, more than the limit of {max}", s.len()));
    }
    if let Some(pos) = s.bytes().position(|b| b == 0) {
        return Err(format!(
            "contains a NUL character at byte {pos}; PostgreSQL text cannot hold NUL"
        ));
    }
    Ok(())
}

/// The limit of a key field: [`MAX_KEY_BYTES`], or `--max-text-bytes` where
/// that is smaller.
pub fn key_limit(limits: &Limits) -> usize {
    limits.max_text_bytes.min(MAX_KEY_BYTES)
}

/// Text that becomes a key (see [`MAX_KEY_BYTES`]): at most `max` bytes.
pub fn key(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!(
            "{} bytes, more than the limit of {max} for a key field (it is indexed and grouped by; docs/api.md)",
            s.len()
        ));
    }
    text(s, max)
}

pub fn required_key(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    key(s, max)
}

pub fn required_uuid(s: &str) -> Result<Uuid, String> {
    if s.is_empty() {
        return Err("is required (a UUID)".into());
    }
    parse_uuid(s)
}

pub fn optional_uuid(s: &str) -> Result<Option<Uuid>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_uuid(s).map(Some)
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, String> {
    if s.len() > 45 {
        return Err(format!("not a UUID ({} bytes)", s.len()));
    }
    Uuid::try_parse(s).map_err(|e| format!("not a UUID: {e}"))
}

pub fn check_time(ts: Option<&prost_types::Timestamp>, window: TimeWindow) -> Result<i64, String> {
    let ts = ts.ok_or_else(|| "is required".to_string())?;
    let us = timestamp_to_pg_us(ts)?;
    if us < window.min_us {
        return Err(format!(
            "{} is older than the accepted window (see --max-past)",
            display_time(ts)
        ));
    }
    if us > window.max_us {
        return Err(format!(
            "{} is too far in the future (see --max-future)",
            display_time(ts)
        ));
    }
    Ok(us)
}

fn display_time(ts: &prost_types::Timestamp) -> String {
    ts.to_string()
}

fn non_negative(v: Option<i64>) -> Result<(), String> {
    match v {
        Some(n) if n < 0 => Err(format!("must not be negative, got {n}")),
        _ => Ok(()),
    }
}

/// Cost in USD → whole nano-dollars, the scale of `cost_usd numeric(18,9)`,
/// so that sums in the database are exact.
pub fn cost_to_nanos(usd: f64) -> Result<i64, String> {
    if !usd.is_finite() {
        return Err(format!("must be a finite number, got {usd}"));
    }
    if usd < 0.0 {
        return Err(format!("must not be negative, got {usd}"));
    }
    if usd > MAX_COST_USD {
        return Err(format!(
            "{usd:e} USD is more than the limit of {MAX_COST_USD} for one event"
        ));
    }
    Ok((usd * 1e9).round() as i64)
}

/// Deepest nesting of JSON objects and arrays accepted. PostgreSQL's jsonb
/// parser recurses per level and fails with "stack depth limit exceeded"
/// somewhere in the thousands; real telemetry stays far below this.
pub const MAX_JSON_DEPTH: usize = 64;

/// JSON text that jsonb will take and that is an object (or empty, meaning
/// the column's default). Validated without building a tree: a byte scan
/// checks nesting depth and `\u0000` escapes, then serde's `IgnoredAny`
/// checks the syntax.
pub fn json_object(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > max {
        return Err(format!(
            "{} bytes of JSON, more than the limit of {max}",
            s.len()
        ));
    }
    match s.trim_start().as_bytes().first() {
        Some(b'{') => {}
        _ => return Err("must be a JSON object ({...})".into()),
    }
    scan_json(s)?;
    serde_json::from_str::<serde::de::IgnoredAny>(s).map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(())
}

/// One pass over the bytes, aware of strings and escapes: refuses nesting
/// deeper than [`MAX_JSON_DEPTH`] and `\u0000` (jsonb cannot hold NUL).
/// Inside a string only `"` and `\` matter, so it jumps between them
/// (memchr) instead of looking at every byte: most of a JSON text is
/// inside strings, and this check was half of `json_object`'s cost
/// (BENCHMARKS.md, "Where the columnstore service's CPU goes"). Syntax is
/// serde's to check; an unterminated string simply ends the scan.
fn scan_json(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(at) = b
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return Ok(());
                    };
                    i += at;
                    if b[i] == b'"' {
                        break;
                    }
                    if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                        return Err(format!(
                            "contains \\u0000 at byte {i}; PostgreSQL jsonb cannot hold NUL"
                        ));
                    }
                    i += 2; // the backslash and the character it escapes
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(format!(
                        "nested deeper than {MAX_JSON_DEPTH} levels (at byte {i})"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan as it was, byte by byte: the reference the jumping scan
    /// must agree with.
    fn scan_json_bytewise(s: &str) -> Result<(), String> {
        let b = s.as_bytes();
        let (mut depth, mut in_string, mut i) = (0usize, false, 0);
        while i < b.len() {
            match b[i] {
                b'\\' if in_string => {
                    if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000") {
                        return Err(format!(
                            "contains \\u0000 at byte {i}; PostgreSQL jsonb cannot hold NUL"
                        ));
                    }
                    i += 1;
                }
                b'"' => in_string = !in_string,
                b'{' | b'[' if !in_string => {
                    depth += 1;
                    if depth > MAX_JSON_DEPTH {
                        return Err(format!(
                            "nested deeper than {MAX_JSON_DEPTH} levels (at byte {i})"
                        ));
                    }
                }
                b'}' | b']' if !in_string => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    #[test]
    fn the_jumping_scan_agrees_with_the_bytewise_one() {
        use rand::{Rng, SeedableRng, rngs::SmallRng};
        // Texts made of the bytes that matter, so that strings, escapes,
        // NUL escapes, nesting and unterminated strings all occur often.
        let pieces = [
            "\"", "\\", "\\u0000", "\\u00", "u0000", "{", "}", "[", "]", "a", ":", ",", "é", "\\\"",
        ];
        let mut rng = SmallRng::seed_from_u64(1);
        let (mut ok, mut nul, mut deep) = (0, 0, 0);
        for _ in 0..20_000 {
            let n = rng.random_range(0..200);
            let mut text: String = (0..n)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            if rng.random_bool(0.3) {
                text = format!("{}{text}", "[".repeat(rng.random_range(55..70)));
            }
            let found = scan_json(&text);
            assert_eq!(found, scan_json_bytewise(&text), "{text:?}");
            match found {
                Ok(()) => ok += 1,
                Err(e) if e.contains("u0000") => nul += 1,
                Err(_) => deep += 1,
            }
        }
        // Every outcome occurs often enough to have been compared.
        assert!(
            ok > 1_000 && nul > 1_000 && deep > 1_000,
            "{ok} {nul} {deep}"
        );
        for text in crate::loadgen::r#gen::Generator::new(3, 5)
            .events(500)
            .iter()
            .flat_map(|e| {
                [
                    e.data_json.clone(),
                    e.context_json.clone(),
                    e.metrics_json.clone(),
                ]
            })
        {
            assert_eq!(scan_json(&text), scan_json_bytewise(&text), "{text:?}");
        }
    }

    #[test]
    fn json_checks_name_the_problem() {
        assert!(json_object("", 100).is_ok());
        assert!(json_object(r#"{"a":[1,2,{"b":null}]}"#, 100).is_ok());
        assert!(json_object("[1]", 100).unwrap_err().contains("object"));
        assert!(json_object("{", 100).unwrap_err().contains("invalid JSON"));
        assert!(
            json_object(r#"{"a":"x\u0000"}"#, 100)
                .unwrap_err()
                .contains("\\u0000")
        );
        assert!(
            json_object(r#"{"a":"x\\u0000"}"#, 100).is_ok(),
            "an escaped backslash is not a NUL escape"
        );
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            json_object(&deep, 1 << 20)
                .unwrap_err()
                .contains("nested deeper than 64")
        );
        assert!(json_object(r#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}"#, 1000).is_ok(), "brackets inside strings do not nest");
        assert!(
            json_object(&"x".repeat(101), 100)
                .unwrap_err()
                .contains("limit of 100")
        );
    }

    #[test]
    fn text_refuses_nul_and_oversize() {
        assert!(text("abc", 3).is_ok());
        assert!(text("abcd", 3).unwrap_err().contains("limit of 3"));
        assert!(
            text("a\0b", 10)
                .unwrap_err()
                .contains("NUL character at byte 1")
        );
    }

    #[test]
    fn timestamps_convert_and_respect_limits() {
        let ts = prost_types::Timestamp {
            seconds: crate::time::PG_EPOCH_OFFSET_S + 1,
            nanos: 2_500,
        };
        assert_eq!(timestamp_to_pg_us(&ts).unwrap(), 1_000_002);
        assert!(
            timestamp_to_pg_us(&prost_types::Timestamp {
                seconds: crate::time::PROTO_MAX_S + 1,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            timestamp_to_pg_us(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        let w = TimeWindow {
            min_us: 0,
            max_us: 10,
            now_us: 5,
        };
        assert!(check_time(None, w).unwrap_err().contains("required"));
        assert!(
            check_time(
                Some(&prost_types::Timestamp {
                    seconds: crate::time::PG_EPOCH_OFFSET_S - 1,
                    nanos: 0
                }),
                w
            )
            .unwrap_err()
            .contains("older")
        );
    }

    #[test]
    fn cost_is_exact_in_nanodollars() {
        assert_eq!(cost_to_nanos(0.000_003).unwrap(), 3_000);
        assert_eq!(cost_to_nanos(1.5).unwrap(), 1_500_000_000);
        assert!(cost_to_nanos(-0.1).is_err());
        assert!(cost_to_nanos(f64::NAN).is_err());
    }

    #[test]
    fn decode_errors_name_the_field() {
        // Field 4 (agent_id), length 2, bytes 0xff 0xfe: not UTF-8.
        let r = decode_row::<pb::AgentEvent>(&[0x22, 2, 0xff, 0xfe], 7).unwrap_err();
        assert_eq!(r.index, 7);
        assert_eq!(r.field, "agent_id");
        assert!(r.reason.contains("UTF-8"), "{}", r.reason);
    }
}
