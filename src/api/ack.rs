//! The wire form of outcomes: a [`BatchOutcome`] becomes the client's
//! `BatchAck`, a [`SessionsOutcome`] its `SessionReportAck`, here and
//! nowhere else. Row rejections carry their code's gRPC name from the code
//! table ([`crate::codes`]) and, for what is not a row of the batch itself,
//! their kind (`session`, `chat_session`, `agent_session`).

use crate::{
    ack::{BatchOutcome, Rejection},
    intake::session::SessionsOutcome,
    pb,
};

fn row_rejection(r: &Rejection, kind: &str) -> pb::RowRejection {
    pb::RowRejection {
        index: r.index,
        field: r.field.to_string(),
        reason: r.reason.clone(),
        kind: kind.into(),
        code: r.kind.error_kind().codes().name.into(),
    }
}

/// Rows first (kind ""), each group in index order.
pub fn batch_ack(o: &BatchOutcome) -> pb::BatchAck {
    let rows = o.rejected.iter().map(|r| row_rejection(r, ""));
    let sessions = o
        .sessions_rejected
        .iter()
        .map(|r| row_rejection(r, "session"));
    pb::BatchAck {
        sequence: o.sequence,
        received: o.received,
        stored: o.stored,
        duplicates: o.duplicates,
        conflicts: o.conflicts,
        spooled: o.spooled,
        rejected: rows.chain(sessions).collect(),
        error: o
            .failure
            .as_ref()
            .map(|f| f.message.clone())
            .unwrap_or_default(),
        retryable: o.retryable(),
    }
}

pub fn session_report_ack(o: &SessionsOutcome) -> pb::SessionReportAck {
    let of = |list: &'_ [Rejection], kind: &'static str| {
        list.iter()
            .map(move |r| row_rejection(r, kind))
            .collect::<Vec<_>>()
    };
    let mut rejected = of(&o.chat_sessions_rejected, "chat_session");
    rejected.extend(of(&o.agent_sessions_rejected, "agent_session"));
    pb::SessionReportAck {
        chat_sessions_stored: o.chat_sessions_stored,
        agent_sessions_stored: o.agent_sessions_stored,
        rejected,
    }
}
