//! Time conversions shared by every stage: PostgreSQL's timestamps
//! (microseconds since 2000-01-01 UTC, what the binary COPY format and the
//! database's `timestamptz` hold), the Unix microseconds the spool writes,
//! and protobuf's `Timestamp`. One place, so that no stage has its own
//! epoch arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_S: i64 = 946_684_800;
/// The protobuf Timestamp range: 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z.
pub const PROTO_MIN_S: i64 = -62_135_596_800;
pub const PROTO_MAX_S: i64 = 253_402_300_799;

/// Microseconds since the PostgreSQL epoch.
pub fn system_time_to_pg_us(t: SystemTime) -> i64 {
    let unix_us = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    unix_us - PG_EPOCH_OFFSET_S * 1_000_000
}

pub fn pg_us_to_system_time(us: i64) -> SystemTime {
    let unix_us = us + PG_EPOCH_OFFSET_S * 1_000_000;
    if unix_us >= 0 {
        UNIX_EPOCH + Duration::from_micros(unix_us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(unix_us.unsigned_abs())
    }
}

/// Converts a protobuf timestamp to microseconds since the PostgreSQL epoch
/// (nanoseconds are truncated: PostgreSQL keeps microseconds).
pub fn timestamp_to_pg_us(ts: &prost_types::Timestamp) -> Result<i64, String> {
    if !(PROTO_MIN_S..=PROTO_MAX_S).contains(&ts.seconds) {
        return Err(format!(
            "seconds {} outside the protobuf Timestamp range",
            ts.seconds
        ));
    }
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(format!("nanos {} outside 0..999999999", ts.nanos));
    }
    Ok((ts.seconds - PG_EPOCH_OFFSET_S) * 1_000_000 + i64::from(ts.nanos / 1000))
}

/// A protobuf timestamp (times before the Unix epoch become the epoch).
pub fn to_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Nanoseconds since the Unix epoch (OTLP's time fields).
pub fn from_unix_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// Microseconds since the Unix epoch (the spool's receipt times); 0 before it.
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn from_unix_us(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// A duration as PostgreSQL interval text, in the largest whole unit.
pub fn pg_interval(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s > 0 && s.is_multiple_of(86_400) => format!("{} days", s / 86_400),
        _ if s > 0 && s.is_multiple_of(3_600) => format!("{} hours", s / 3_600),
        _ if s > 0 && s.is_multiple_of(60) => format!("{} minutes", s / 60),
        _ => format!("{}.{:06} seconds", s, d.subsec_micros()),
    }
}

/// Where a chat message stands in its session, for senders whose agent
/// numbers nothing: its number (`position`) where the agent gives one,
/// else seconds since 2020 (an i32 holds twice them until 2054), so that a
/// session's messages sort in the order they were said whichever process,
/// chunk or run sends them. Twice the position, so that a reply made in
/// the same moment as its prompt (its index added) comes after it.
pub fn message_sequence(position: Option<i64>, ts: SystemTime) -> i32 {
    const SINCE: u64 = 1_577_836_800; // 2020-01-01T00:00:00Z
    let position = position.unwrap_or_else(|| {
        let secs = ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        secs.saturating_sub(SINCE) as i64
    });
    i32::try_from(position.max(0).saturating_mul(2)).unwrap_or(i32::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epochs_and_formats_agree() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(pg_us_to_system_time(system_time_to_pg_us(t)), t);
        assert_eq!(from_unix_us(unix_us(t)), t);
        let ts = to_timestamp(t);
        assert_eq!(timestamp_to_pg_us(&ts), Ok(system_time_to_pg_us(t)));
        assert_eq!(
            system_time_to_pg_us(UNIX_EPOCH + Duration::from_secs(946_684_800)),
            0
        );
        assert!(
            timestamp_to_pg_us(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
    }
}
