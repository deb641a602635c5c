//! Optional, beside intake: the **spool** (`--spool-dir`). With it, a batch is
//! acknowledged once its accepted rows are appended to a local write-ahead
//! log and fsynced — before the database has seen them — so clients keep
//! getting acks while the database is down or restarting.
//!
//! In: at receipt, intake validates a batch (rejections go in its ack at
//! once) and appends an [`Entry`] holding the accepted rows' protobuf, the
//! time it was received and the API key's scope ([`log`] does the files and
//! the fsyncs). Out: the [`crate::intake::replay`] task reads the entries back in order and
//! feeds each through the normal pipeline (dimensions → encode → buffer →
//! COPY); the log is truncated only behind entries whose rows are committed.
//! Replaying an entry twice (after a crash) stores nothing twice: its rows
//! keep their ids, and the writer deduplicates by (id, timestamp).
//!
//! When the spool is at `--spool-max-bytes`, batches are refused with
//! RESOURCE_EXHAUSTED: nothing is dropped silently.

pub mod log;

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use uuid::Uuid;

use crate::{
    auth::{KeyScope, Scope},
    pb::wire,
};

/// The accepted rows of one batch, as spooled.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When the batch arrived: replay validates timestamps against this
    /// "now", so an outage does not make rows too old.
    pub received_at_us: i64,
    pub scope: Scope,
    /// Each spooled row's index in the batch the client sent.
    pub indices: Vec<u32>,
    pub batch: Batch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    Events(wire::AgentEventBatch),
    Messages(wire::ChatMessageBatch),
}

impl Batch {
    pub fn sequence(&self) -> u64 {
        match self {
            Batch::Events(b) => b.sequence,
            Batch::Messages(b) => b.sequence,
        }
    }

    pub fn rows(&self) -> &[Bytes] {
        match self {
            Batch::Events(b) => &b.events,
            Batch::Messages(b) => &b.messages,
        }
    }
}

const EVENTS: u8 = 1;
const MESSAGES: u8 = 2;

impl Entry {
    /// `kind | received_at | scope | indices | batch (protobuf)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.batch.rows().iter().map(|r| r.len() + 4).sum::<usize>());
        let (kind, batch) = match &self.batch {
            Batch::Events(b) => (EVENTS, b.encode_to_vec()),
            Batch::Messages(b) => (MESSAGES, b.encode_to_vec()),
        };
        out.put_u8(kind);
        out.put_i64_le(self.received_at_us);
        match &self.scope {
            Scope::Any => out.put_u8(0),
            Scope::Key(k) => {
                // Tag 1: projects only (what older versions wrote); tag 2:
                // projects, then organisations; tag 3: both, then the
                // key's developer. Each version writes the oldest tag that
                // holds the scope, so a spool stays readable by the
                // version before as long as its keys allow.
                let tag = match (&k.user, k.organizations.is_empty()) {
                    (Some(_), _) => 3,
                    (None, false) => 2,
                    (None, true) => 1,
                };
                out.put_u8(tag);
                out.put_slice(k.key_id.as_bytes());
                put_pairs(&mut out, &k.projects);
                if tag >= 2 {
                    put_pairs(&mut out, &k.organizations);
                }
                if let Some(user) = &k.user {
                    out.put_u32_le(user.len() as u32);
                    out.put_slice(user.as_bytes());
                }
            }
        }
        out.put_u32_le(self.indices.len() as u32);
        for i in &self.indices {
            out.put_u32_le(*i);
        }
        out.extend_from_slice(&batch);
        out
    }

    pub fn decode(mut b: Bytes) -> Result<Self, String> {
        fn need(b: &Bytes, n: usize) -> Result<(), String> {
            if b.remaining() < n {
                return Err("entry cut short".into());
            }
            Ok(())
        }
        need(&b, 10)?;
        let kind = b.get_u8();
        let received_at_us = b.get_i64_le();
        let scope = match b.get_u8() {
            0 => Scope::Any,
            tag @ (1..=3) => {
                need(&b, 20)?;
                let key_id = Uuid::from_slice(&b.split_to(16)).map_err(|e| e.to_string())?;
                let projects = get_pairs(&mut b)?;
                let organizations = if tag >= 2 {
                    get_pairs(&mut b)?
                } else {
                    Vec::new()
                };
                let user = if tag == 3 {
                    need(&b, 4)?;
                    let len = b.get_u32_le() as usize;
                    need(&b, len)?;
                    Some(String::from_utf8(b.split_to(len).to_vec()).map_err(|e| e.to_string())?)
                } else {
                    None
                };
                Scope::Key(Arc::new(KeyScope {
                    key_id,
                    projects,
                    organizations,
                    user,
                }))
            }
            other => return Err(format!("unknown scope tag {other}")),
        };
        need(&b, 4)?;
        let n = b.get_u32_le() as usize;
        need(&b, n * 4)?;
        let indices = (0..n).map(|_| b.get_u32_le()).collect();
        let batch = match kind {
            EVENTS => Batch::Events(wire::AgentEventBatch::decode(b).map_err(|e| e.to_string())?),
            MESSAGES => {
                Batch::Messages(wire::ChatMessageBatch::decode(b).map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unknown entry kind {other}")),
        };
        Ok(Self {
            received_at_us,
            scope,
            indices,
            batch,
        })
    }
}

/// (id, name) pairs: a count, then each id and length-prefixed name.
fn put_pairs(out: &mut Vec<u8>, pairs: &[(i32, String)]) {
    out.put_u32_le(pairs.len() as u32);
    for (id, name) in pairs {
        out.put_i32_le(*id);
        out.put_u32_le(name.len() as u32);
        out.put_slice(name.as_bytes());
    }
}

fn get_pairs(b: &mut Bytes) -> Result<Vec<(i32, String)>, String> {
    if b.remaining() < 4 {
        return Err("entry cut short".into());
    }
    let n = b.get_u32_le() as usize;
    let mut pairs = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if b.remaining() < 8 {
            return Err("entry cut short".into());
        }
        let id = b.get_i32_le();
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return Err("entry cut short".into());
        }
        let name = String::from_utf8(b.split_to(len).to_vec()).map_err(|e| e.to_string())?;
        pairs.push((id, name));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let entry = Entry {
            received_at_us: 1_700_000_000_123_456,
            scope: Scope::Key(Arc::new(KeyScope {
                key_id: Uuid::new_v4(),
                projects: vec![(3, "acme/api".into()), (9, "web".into())],
                organizations: vec![],
                user: None,
            })),
            indices: vec![0, 2, 5],
            batch: Batch::Messages(wire::ChatMessageBatch {
                sequence: 42,
                sessions: vec![],
                messages: vec![Bytes::from_static(b"\x0a\x01x"), Bytes::new()],
            }),
        };
        assert_eq!(Entry::decode(Bytes::from(entry.encode())).unwrap(), entry);
        // An organisation key (tag 2), with and without projects; a
        // developer's key (tag 3), with and without organisations.
        for (projects, organizations, user) in [
            (
                vec![],
                vec![(4, "globex".into()), (5, "initech".into())],
                None,
            ),
            (
                vec![(3, "acme/api".to_owned())],
                vec![(4, "globex".into())],
                None,
            ),
            (
                vec![(3, "acme/api".to_owned())],
                vec![],
                Some("ada@example.com".into()),
            ),
            (vec![], vec![(4, "globex".into())], Some("ßø".into())),
        ] {
            let with_user = user.is_some();
            let key = Entry {
                scope: Scope::Key(Arc::new(KeyScope {
                    key_id: Uuid::new_v4(),
                    projects,
                    organizations,
                    user,
                })),
                ..entry.clone()
            };
            let bytes = key.encode();
            assert_eq!(bytes[9], if with_user { 3 } else { 2 });
            assert_eq!(Entry::decode(Bytes::from(bytes)).unwrap(), key);
        }
        let plain = Entry {
            scope: Scope::Any,
            batch: Batch::Events(wire::AgentEventBatch {
                sequence: 7,
                events: vec![Bytes::from_static(b"abc")],
            }),
            ..entry
        };
        assert_eq!(Entry::decode(Bytes::from(plain.encode())).unwrap(), plain);
        let cut = plain.encode();
        assert!(Entry::decode(Bytes::copy_from_slice(&cut[..12])).is_err());
    }
}
