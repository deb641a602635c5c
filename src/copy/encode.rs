//! Binary COPY encoding: checked rows → bytes, with no IO and no per-row
//! allocation. The format (PostgreSQL docs, "COPY", binary format): a header,
//! then per row a 16-bit field count and per field a 32-bit length (-1 for
//! NULL) followed by the value in the type's binary send format; a trailer
//! of -1. Rows of one batch are encoded back to back into one buffer; the
//! writer adds header and trailer around whichever rows it copies, so a
//! flush can be split at row boundaries without re-encoding.

use bytes::{BufMut, BytesMut};
use postgres_types::{ToSql, Type};

use crate::row::{EventRow, MessageRow, Table};

/// Signature, flags (no OIDs) and header-extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Field count -1 ends the data.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// The fields of one encoded row: each value in its type's binary form,
/// None for NULL (the inverse of the framing above). The same bytes bind as
/// query parameters in binary format.
pub fn row_fields(row: &[u8]) -> Vec<Option<&[u8]>> {
    let count = i16::from_be_bytes([row[0], row[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(row[at..at + 4].try_into().expect("4 bytes"));
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(&row[at..at + len as usize]));
            at += len as usize;
        }
    }
    out
}

/// Appends one agent_events row; `user_id` is the developer's, if named.
pub fn encode_event(buf: &mut BytesMut, row: &EventRow<'_>, project_id: i32, user_id: Option<i32>) {
    let ev = row.src;
    buf.put_i16(Table::AgentEvents.field_count());
    put_sql(buf, &row.id, &Type::UUID);
    put_i64(buf, row.ts_us);
    put_text(buf, &ev.event_type);
    put_text(buf, &ev.agent_id);
    put_text(buf, &ev.agent_version);
    put_sql(buf, &row.session_id, &Type::UUID);
    put_i32(buf, project_id);
    put_jsonb(buf, or_empty_object(&ev.context_json));
    put_jsonb(buf, or_empty_object(&ev.data_json));
    match ev.metrics_json.as_str() {
        "" => put_null(buf),
        json => put_jsonb(buf, json),
    }
    match &row.parent_event_id {
        Some(id) => put_sql(buf, id, &Type::UUID),
        None => put_null(buf),
    }
    put_sql(buf, &row.related_event_ids, &Type::UUID_ARRAY);
    put_sql(buf, &ev.tags, &Type::TEXT_ARRAY);
    put_opt_text(buf, row.severity);
    put_opt_i64(buf, ev.duration_ms);
    put_opt_i64(buf, ev.input_tokens);
    put_opt_i64(buf, ev.output_tokens);
    put_opt_i64(buf, ev.cached_tokens);
    match row.cost_nanos {
        Some(n) => put_numeric_scaled(buf, n, 9),
        None => put_null(buf),
    }
    put_opt_text(buf, ev.model.as_deref());
    match user_id {
        Some(id) => put_i32(buf, id),
        None => put_null(buf),
    }
}

/// Appends one chat_messages row; project and agent type come from its session.
pub fn encode_message(buf: &mut BytesMut, row: &MessageRow<'_>, project_id: i32, agent_type: &str) {
    let m = row.src;
    buf.put_i16(Table::ChatMessages.field_count());
    put_sql(buf, &row.id, &Type::UUID);
    put_sql(buf, &row.session_id, &Type::UUID);
    put_text(buf, &m.role);
    put_text(buf, &m.content);
    put_i64(buf, row.ts_us);
    put_i32(buf, m.sequence);
    put_jsonb(buf, or_empty_object(&m.metadata_json));
    put_opt_text(buf, m.search_content.as_deref());
    put_i32(buf, project_id);
    put_text(buf, agent_type);
}

fn or_empty_object(json: &str) -> &str {
    if json.is_empty() { "{}" } else { json }
}

fn put_null(buf: &mut BytesMut) {
    buf.put_i32(-1);
}

fn put_i32(buf: &mut BytesMut, v: i32) {
    buf.put_i32(4);
    buf.put_i32(v);
}

/// int8, and timestamptz (microseconds since 2000-01-01 UTC) alike.
fn put_i64(buf: &mut BytesMut, v: i64) {
    buf.put_i32(8);
    buf.put_i64(v);
}

fn put_opt_i64(buf: &mut BytesMut, v: Option<i64>) {
    match v {
        Some(v) => put_i64(buf, v),
        None => put_null(buf),
    }
}

fn put_text(buf: &mut BytesMut, s: &str) {
    buf.put_i32(s.len() as i32);
    buf.put_slice(s.as_bytes());
}

fn put_opt_text(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_text(buf, s),
        None => put_null(buf),
    }
}

/// jsonb's binary format is a version byte (1) and the JSON text: the
/// server parses it, so the text goes through untouched.
fn put_jsonb(buf: &mut BytesMut, json: &str) {
    buf.put_i32(json.len() as i32 + 1);
    buf.put_u8(1);
    buf.put_slice(json.as_bytes());
}

/// Any value postgres-types can send (uuid, arrays): length placeholder,
/// value, then the length patched in — what tokio-postgres' own
/// BinaryCopyInWriter does.
fn put_sql<T: ToSql>(buf: &mut BytesMut, v: &T, ty: &Type) {
    let at = buf.len();
    buf.put_i32(0);
    match v.to_sql(ty, buf) {
        Ok(postgres_types::IsNull::No) => {
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(postgres_types::IsNull::Yes) => {
            buf.truncate(at);
            put_null(buf);
        }
        // uuid and array-of-uuid/text sends cannot fail for values that passed validation.
        Err(e) => unreachable!("encoding a validated {ty} failed: {e}"),
    }
}

/// numeric with `scale` decimal places from the integer `value × 10^scale`
/// (cost_usd is kept as whole nano-dollars, scale 9). numeric's binary form:
/// ndigits, weight, sign, dscale, then base-10000 digits, most significant
/// first, with leading and trailing zero digits left out.
pub fn put_numeric_scaled(buf: &mut BytesMut, value: i64, scale: u16) {
    // Pad the fraction to whole base-10000 digits.
    let frac_groups = scale.div_ceil(4);
    let pad = 4 * frac_groups - scale;
    let mut u = u128::from(value.unsigned_abs()) * 10u128.pow(u32::from(pad));
    let mut groups = [0u16; 12];
    let mut n = 0;
    while u > 0 {
        groups[n] = (u % 10_000) as u16;
        u /= 10_000;
        n += 1;
    }
    // groups[k] has weight k - frac_groups; drop zero groups at the low end.
    let low = groups[..n].iter().position(|&g| g != 0).unwrap_or(n);
    let ndigits = n - low;
    let weight = if ndigits == 0 {
        0
    } else {
        n as i16 - 1 - frac_groups as i16
    };
    buf.put_i32(8 + 2 * ndigits as i32);
    buf.put_i16(ndigits as i16);
    buf.put_i16(weight);
    buf.put_u16(if value < 0 { 0x4000 } else { 0 });
    buf.put_u16(scale);
    for &g in groups[low..n].iter().rev() {
        buf.put_u16(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(v: i64) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_numeric_scaled(&mut b, v, 9);
        b.to_vec()
    }

    /// The value of `column` in an encoded row of `table`.
    fn field<'a>(table: Table, row: &'a [u8], column: &str) -> Option<&'a [u8]> {
        let at = table.layout().iter().position(|c| c.name == column);
        row_fields(row)[at.expect("a column of the layout")]
    }

    #[test]
    fn encoded_rows_follow_the_one_layout() {
        // The encoder writes its fields by hand; the COPY column list and
        // the writer's key positions come from `Table::layout`. Here both
        // meet: a drift puts a value under the wrong column.
        let (id, session) = (uuid::Uuid::from_u128(7), uuid::Uuid::from_u128(8));
        let ev = crate::pb::AgentEvent {
            event_type: "tool_use".into(),
            model: Some("m".into()),
            ..Default::default()
        };
        let row = EventRow {
            index: 0,
            src: &ev,
            id,
            ts_us: 123_456,
            session_id: session,
            parent_event_id: None,
            related_event_ids: vec![],
            severity: None,
            cost_nanos: None,
        };
        let mut buf = BytesMut::new();
        encode_event(&mut buf, &row, 42, Some(9));
        let t = Table::AgentEvents;
        assert_eq!(row_fields(&buf).len(), t.field_count() as usize);
        let (i, ts) = t.key_fields();
        assert_eq!(row_fields(&buf)[i], Some(id.as_bytes().as_slice()));
        assert_eq!(
            row_fields(&buf)[ts],
            Some(123_456i64.to_be_bytes().as_slice())
        );
        assert_eq!(
            field(t, &buf, "project_id"),
            Some(42i32.to_be_bytes().as_slice())
        );
        assert_eq!(field(t, &buf, "event_type"), Some(b"tool_use".as_slice()));
        assert_eq!(
            field(t, &buf, "session_id"),
            Some(session.as_bytes().as_slice())
        );
        assert_eq!(field(t, &buf, "model"), Some(b"m".as_slice()));
        assert_eq!(
            field(t, &buf, "user_id"),
            Some(9i32.to_be_bytes().as_slice())
        );

        let m = crate::pb::ChatMessage {
            role: "user".into(),
            content: "hi".into(),
            sequence: 3,
            ..Default::default()
        };
        let row = MessageRow {
            index: 0,
            src: &m,
            id,
            session_id: session,
            ts_us: 99,
        };
        let mut buf = BytesMut::new();
        encode_message(&mut buf, &row, 5, "claude-code");
        let t = Table::ChatMessages;
        assert_eq!(row_fields(&buf).len(), t.field_count() as usize);
        let (i, ts) = t.key_fields();
        assert_eq!(row_fields(&buf)[i], Some(id.as_bytes().as_slice()));
        assert_eq!(row_fields(&buf)[ts], Some(99i64.to_be_bytes().as_slice()));
        assert_eq!(field(t, &buf, "role"), Some(b"user".as_slice()));
        assert_eq!(
            field(t, &buf, "sequence"),
            Some(3i32.to_be_bytes().as_slice())
        );
        assert_eq!(
            field(t, &buf, "project_id"),
            Some(5i32.to_be_bytes().as_slice())
        );
        assert_eq!(
            field(t, &buf, "agent_type"),
            Some(b"claude-code".as_slice())
        );
    }

    #[test]
    fn numeric_layout_matches_postgres() {
        // 1.5 = digits [1, 5000], weight 0.
        assert_eq!(
            numeric(1_500_000_000),
            vec![0, 0, 0, 12, 0, 2, 0, 0, 0, 0, 0, 9, 0, 1, 0x13, 0x88]
        );
        // 0.000000003 = digit 3000 at weight -3 (10^-12 units: 3000).
        assert_eq!(
            numeric(3),
            vec![0, 0, 0, 10, 0, 1, 0xff, 0xfd, 0, 0, 0, 9, 0x0b, 0xb8]
        );
        // zero has no digits.
        assert_eq!(numeric(0), vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        // negative sign flag.
        assert_eq!(&numeric(-1_000_000_000)[8..10], &[0x40, 0]);
    }
}
