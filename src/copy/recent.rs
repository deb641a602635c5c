//! Keys this process committed lately, and keys its flushes are copying
//! right now: a reconnecting client resends the batches it holds no ack
//! for, and those are the rows sent last, often still being copied. A row
//! whose key is among the committed ones is a duplicate without a word to
//! the database; one whose key another flush is copying waits for that
//! flush instead of a COPY that would block on its transaction, fail with
//! `unique_violation` and be rolled back. Only exact keys are held: an id
//! with another timestamp, and every key this process has not seen (another
//! instance's, an older one's), still goes to the database, which decides.
//!
//! Waits only ever point at flushes registered earlier (a flush's keys are
//! classified and its own registered in one step, and it waits for no key
//! registered after that), so two flushes never wait for each other.

use std::{
    collections::{VecDeque, hash_map::Entry},
    sync::Mutex,
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use tokio::sync::Notify;
use uuid::Uuid;

/// (id, timestamp in µs): a row's key.
pub type Key = (Uuid, i64);

/// How many committed keys are kept per table (about 2 MiB): twice a
/// client stream's window of unacknowledged batches at the defaults (16
/// batches of 1,000 rows), which is what a reconnect resends. 100,000
/// cost 8 MiB of peak RSS under overload (BENCHMARKS.md), over its bound.
pub const COMMITTED_KEYS: usize = 32_768;

pub struct RecentKeys {
    inner: Mutex<Inner>,
    /// Told whenever a flush releases its keys.
    released: Notify,
}

/// Every row of every flush passes through these sets four or five times,
/// so they hash with foldhash rather than SipHash: with SipHash they took
/// 11 % of the service's CPU samples at 100,000 rows/s, with foldhash 6 %
/// (BENCHMARKS.md, "Where the columnstore service's CPU goes"). Its
/// per-process random seed is what stands against a client choosing ids
/// that collide; the ids are the client's own rows' either way.
struct Inner {
    committed: HashSet<Key>,
    /// In the order committed: the oldest are forgotten first.
    order: VecDeque<Key>,
    /// Each key being copied, with the flush that claimed it.
    in_flight: HashMap<Key, u64>,
    /// The number of the next claim.
    next_claim: u64,
    capacity: usize,
}

/// What [`RecentKeys::claim`] found for each key, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Committed by this process: a duplicate.
    Committed,
    /// Being copied by an earlier flush: wait for it ([`RecentKeys::settle`]).
    InFlight,
    /// Neither: this flush copies it (and has claimed it).
    New,
}

/// The keys one flush claimed; released (and waiters told) when dropped,
/// whether the flush committed, failed or was cancelled.
pub struct Claim<'a> {
    recent: &'a RecentKeys,
    keys: Vec<Key>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut inner = self.recent.inner.lock().expect("recent keys lock");
        for k in &self.keys {
            inner.in_flight.remove(k);
        }
        drop(inner);
        self.recent.released.notify_waiters();
    }
}

impl RecentKeys {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                committed: HashSet::with_capacity(capacity.min(1 << 16)),
                order: VecDeque::new(),
                in_flight: HashMap::new(),
                next_claim: 0,
                capacity,
            }),
            released: Notify::new(),
        }
    }

    /// Classifies `keys` and claims the new ones, in one step. A key twice
    /// in `keys` is new once; the repeat is left to the copy stage, which
    /// counts it as a duplicate.
    pub fn claim(&self, keys: &[Key]) -> (Vec<Seen>, Claim<'_>) {
        let mut guard = self.inner.lock().expect("recent keys lock");
        let inner = &mut *guard;
        let me = inner.next_claim;
        inner.next_claim += 1;
        let mut claimed = Vec::with_capacity(keys.len());
        let seen = keys
            .iter()
            .map(|k| {
                if inner.committed.contains(k) {
                    return Seen::Committed;
                }
                match inner.in_flight.entry(*k) {
                    Entry::Vacant(v) => {
                        v.insert(me);
                        claimed.push(*k);
                        Seen::New
                    }
                    // A repeat within this flush.
                    Entry::Occupied(o) if *o.get() == me => Seen::New,
                    Entry::Occupied(_) => Seen::InFlight,
                }
            })
            .collect();
        drop(guard);
        (
            seen,
            Claim {
                recent: self,
                keys: claimed,
            },
        )
    }

    /// Waits until no key of `waiting` is in flight any more; then, per
    /// key, whether it was committed meanwhile (else the other flush did
    /// not store it, and the caller copies it).
    pub async fn settle(&self, waiting: &[Key]) -> Vec<bool> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let inner = self.inner.lock().expect("recent keys lock");
                if !waiting.iter().any(|k| inner.in_flight.contains_key(k)) {
                    return waiting
                        .iter()
                        .map(|k| inner.committed.contains(k))
                        .collect();
                }
            }
            released.await;
        }
    }

    /// `keys` are committed (stored now, or found stored).
    pub fn committed(&self, keys: impl IntoIterator<Item = Key>) {
        let mut inner = self.inner.lock().expect("recent keys lock");
        if inner.capacity == 0 {
            return;
        }
        for k in keys {
            if inner.committed.insert(k) {
                inner.order.push_back(k);
            }
        }
        while inner.order.len() > inner.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.committed.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u128) -> Key {
        (Uuid::from_u128(n), n as i64)
    }

    #[tokio::test]
    async fn a_key_is_committed_in_flight_or_new_and_claims_are_released_on_drop() {
        let recent = RecentKeys::new(2);
        let (seen, first) = recent.claim(&[key(1), key(2), key(1)]);
        assert_eq!(seen, [Seen::New, Seen::New, Seen::New]);
        let (seen, second) = recent.claim(&[key(2), key(3)]);
        assert_eq!(seen, [Seen::InFlight, Seen::New]);
        recent.committed([key(1), key(2)]);
        drop(first);
        // key 2 was committed by the first flush: the second need not copy it.
        assert_eq!(recent.settle(&[key(2)]).await, [true]);
        drop(second);
        let (seen, _third) = recent.claim(&[key(1), key(2), key(3)]);
        assert_eq!(seen, [Seen::Committed, Seen::Committed, Seen::New]);
        // Past the capacity, the oldest committed key is forgotten.
        recent.committed([key(4)]);
        let (seen, _) = recent.claim(&[key(1), key(4)]);
        assert_eq!(seen, [Seen::New, Seen::Committed]);
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_flush_it_waits_for_fails() {
        let recent = std::sync::Arc::new(RecentKeys::new(10));
        let (_, claim) = recent.claim(&[key(7)]);
        let waiter = {
            let recent = recent.clone();
            tokio::spawn(async move { recent.settle(&[key(7)]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        // Not committed: released by a failed (or cancelled) flush.
        drop(claim);
        assert_eq!(waiter.await.unwrap(), [false]);
    }
}
