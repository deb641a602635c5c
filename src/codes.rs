//! The one table of error codes. Every refusal and failure in the service
//! has an [`ErrorKind`]; what each edge says for it — the gRPC code (also a
//! row rejection's `code`), the HTTP status of OTLP/HTTP, whether resending
//! the same data can succeed, and how long an OTLP exporter should wait
//! before it retries — is read from [`ErrorKind::codes`] and nowhere else.
//!
//! The HTTP statuses follow the OTLP/HTTP specification: 429, 502, 503 and
//! 504 are the ones an exporter retries; 400, 401, 403, 413, 415 and 500
//! make it drop the data.

use std::time::Duration;

use tonic::Code;

/// What kind of failure, by what the client should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The data is wrong (a field, a count over its limit): fix it;
    /// resending it unchanged fails again.
    InvalidArgument,
    /// A message or body over a size limit: split it.
    OutOfRange,
    /// An HTTP body larger than the limit once decompressed.
    PayloadTooLarge,
    /// An HTTP content type or encoding the service does not read.
    UnsupportedMedia,
    /// The buffer or the spool is full: resend later.
    Exhausted,
    /// Not possible now (the database is down, the service is shutting
    /// down, the spool cannot write): resend later, or elsewhere.
    Unavailable,
    /// The database refuses for a reason that will not pass by itself (a
    /// missing table or privilege): the operator must act first.
    Internal,
    /// No API key, or one that is not valid.
    Unauthenticated,
    /// The key may not write to the project the data names.
    PermissionDenied,
    /// A row's id is stored with another timestamp.
    AlreadyExists,
}

/// What an edge says for one [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes {
    pub grpc: Code,
    /// The gRPC code's canonical name (`RowRejection.code`).
    pub name: &'static str,
    /// OTLP/HTTP's status.
    pub http: u16,
    /// Whether resending the same data later can succeed.
    pub retryable: bool,
    /// How long an OTLP exporter should wait before retrying (gRPC
    /// `RetryInfo`, HTTP `Retry-After`); None for what is not retryable.
    pub retry_after: Option<Duration>,
}

const fn codes(grpc: Code, name: &'static str, http: u16, retry_after: Option<Duration>) -> Codes {
    Codes {
        grpc,
        name,
        http,
        retryable: retry_after.is_some(),
        retry_after,
    }
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::OutOfRange,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMedia,
        ErrorKind::Exhausted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::AlreadyExists,
    ];

    /// The table.
    pub const fn codes(self) -> Codes {
        use ErrorKind::*;
        // A full buffer drains within seconds; a database that is down
        // takes longer to come back.
        const SOON: Option<Duration> = Some(Duration::from_secs(2));
        const LATER: Option<Duration> = Some(Duration::from_secs(5));
        match self {
            InvalidArgument => codes(Code::InvalidArgument, "INVALID_ARGUMENT", 400, None),
            OutOfRange => codes(Code::OutOfRange, "OUT_OF_RANGE", 413, None),
            PayloadTooLarge => codes(Code::InvalidArgument, "INVALID_ARGUMENT", 413, None),
            UnsupportedMedia => codes(Code::InvalidArgument, "INVALID_ARGUMENT", 415, None),
            Exhausted => codes(Code::ResourceExhausted, "RESOURCE_EXHAUSTED", 429, SOON),
            Unavailable => codes(Code::Unavailable, "UNAVAILABLE", 503, LATER),
            Internal => codes(Code::Internal, "INTERNAL", 500, None),
            Unauthenticated => codes(Code::Unauthenticated, "UNAUTHENTICATED", 401, None),
            PermissionDenied => codes(Code::PermissionDenied, "PERMISSION_DENIED", 403, None),
            AlreadyExists => codes(Code::AlreadyExists, "ALREADY_EXISTS", 409, None),
        }
    }

    pub const fn retryable(self) -> bool {
        self.codes().retryable
    }
}

/// For a client: how long to wait before resending what the service
/// answered with `code`, read from the table; None when resending cannot
/// help.
pub fn retry_after(code: Code) -> Option<Duration> {
    ErrorKind::ALL
        .iter()
        .map(|k| k.codes())
        .find(|c| c.grpc == code && c.retryable)
        .and_then(|c| c.retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_resends_only_what_the_table_calls_retryable() {
        assert_eq!(retry_after(Code::Unavailable), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(Code::ResourceExhausted),
            Some(Duration::from_secs(2))
        );
        for never in [Code::InvalidArgument, Code::Internal, Code::Unauthenticated] {
            assert_eq!(retry_after(never), None, "{never:?}");
        }
    }

    #[test]
    fn docs_api_lists_the_table_as_it_is() {
        let doc = include_str!("../docs/api.md");
        for kind in ErrorKind::ALL {
            let c = kind.codes();
            let line = format!(
                "| `{kind:?}` | {} | {} | {} | {} |",
                c.name,
                c.http,
                if c.retryable { "yes" } else { "no" },
                c.retry_after
                    .map_or("—".to_owned(), |d| format!("{} s", d.as_secs()))
            );
            assert!(doc.contains(&line), "docs/api.md lacks {line}");
        }
    }

    #[test]
    fn names_are_the_grpc_codes_and_retries_match_the_otlp_rules() {
        for kind in ErrorKind::ALL {
            let c = kind.codes();
            // tonic's Debug of a code is its name in CamelCase.
            let camel: String = c
                .name
                .split('_')
                .map(|w| w[..1].to_owned() + &w[1..].to_lowercase())
                .collect();
            assert_eq!(format!("{:?}", c.grpc), camel, "{kind:?}");
            // OTLP/HTTP exporters retry exactly 429, 502, 503 and 504.
            assert_eq!(
                c.retryable,
                matches!(c.http, 429 | 502 | 503 | 504),
                "{kind:?}"
            );
        }
    }
}
