//! gRPC statuses at the edge. The code of each is read from the code table
//! ([`crate::codes`]). A unary call gets a refused batch as its status; a
//! stream gets it as that batch's ack (with `retryable`), so one refused
//! batch does not end the stream and cost the acks of the batches behind it.

use tonic::{Code, Status};

use crate::{auth::AuthError, codes::ErrorKind, intake::IngestError};

pub fn to_status(e: &IngestError) -> Status {
    Status::new(e.kind().codes().grpc, e.to_string())
}

pub fn auth_status(e: &AuthError) -> Status {
    e.count();
    Status::new(e.kind().codes().grpc, e.to_string())
}

/// The status a stream ends with when the client's side of it broke off
/// with an error (tonic's decoder refused a message), after the acks of
/// the batches before it. It names the limit and the last batch
/// acknowledged, so that the client knows what to split and what to
/// resend; a stream never ends with OK when a batch was left unread.
pub(crate) fn stream_end(cause: Status, last_acked: Option<u64>) -> Status {
    let last = match last_acked {
        Some(s) => format!("the last batch acknowledged on this stream is sequence {s}"),
        None => "no batch on this stream was acknowledged".into(),
    };
    let (code, reason, text) = match stream_limit(&cause) {
        Some(Limit::Encoded { size, limit }) => (
            ErrorKind::OutOfRange.codes().grpc,
            "message_too_large",
            format!(
                "message of {size} bytes over the limit of {limit} (--max-message-bytes): split the batch"
            ),
        ),
        Some(Limit::Decompressed { limit }) => (
            ErrorKind::OutOfRange.codes().grpc,
            "message_too_large",
            format!(
                "message over the limit of {limit} bytes once decompressed (--max-message-bytes): split the batch"
            ),
        ),
        None => match cause.code() {
            // The client went away or reset the stream: nobody reads this.
            Code::Cancelled | Code::Unknown => (
                cause.code(),
                "broken",
                format!("stream broke off: {}", cause.message()),
            ),
            code => (
                code,
                "undecodable",
                format!("message cannot be read: {}", cause.message()),
            ),
        },
    };
    crate::metrics::stream_ended(reason);
    let message = format!("{text}; {last}; later batches were not read: resend them");
    if reason == "broken" {
        tracing::debug!(%message, "stream ended");
    } else {
        tracing::warn!(%message, "stream ended by a message it could not take");
    }
    Status::new(code, message)
}

enum Limit {
    Encoded { size: u64, limit: u64 },
    Decompressed { limit: u64 },
}

/// Reads tonic's own decoder errors (tonic 0.14: "decoded message length
/// too large: found N bytes, the limit is: M bytes", "size limit, of M
/// bytes, exceeded while decompressing message"). Unknown text is no limit.
fn stream_limit(s: &Status) -> Option<Limit> {
    let m = s.message();
    let number_after = |key: &str| -> Option<u64> {
        let rest = &m[m.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    if s.code() == Code::OutOfRange && m.contains("message length too large") {
        return Some(Limit::Encoded {
            size: number_after("found ")?,
            limit: number_after("limit is: ")?,
        });
    }
    if m.contains("exceeded while decompressing") {
        return Some(Limit::Decompressed {
            limit: number_after("size limit, of ")?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_message_ends_the_stream_naming_sizes_and_last_ack() {
        let cause = Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        );
        let s = stream_end(cause, Some(7));
        assert_eq!(s.code(), Code::OutOfRange);
        assert!(
            s.message()
                .starts_with("message of 5000 bytes over the limit of 4096"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("split the batch"), "{}", s.message());
        assert!(s.message().contains("sequence 7"), "{}", s.message());

        let gz = Status::resource_exhausted(
            "Error decompressing: size limit, of 4096 bytes, exceeded while decompressing message",
        );
        let s = stream_end(gz, None);
        assert_eq!(s.code(), Code::OutOfRange, "split, not retry: {s:?}");
        assert!(
            s.message()
                .contains("limit of 4096 bytes once decompressed")
        );
        assert!(
            s.message()
                .contains("no batch on this stream was acknowledged")
        );

        let bad = Status::internal("failed to decode Protobuf message: invalid wire type");
        let s = stream_end(bad, Some(1));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("invalid wire type"), "{}", s.message());
    }
}
