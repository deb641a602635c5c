//! The writing thread: appends in groups, one fsync a group (group
//! commit), a new segment when one is full, after a failed write, or when
//! asked to *cut* one whose every record is committed.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{LogError, Position, segment_path};

pub(super) struct Append {
    pub(super) framed: Vec<u8>,
    pub(super) done: oneshot::Sender<Result<Position, LogError>>,
}

/// What the writer thread is asked to do, in order.
pub(super) enum Msg {
    Append(Append),
    /// If every byte of the segment being written is committed: start a
    /// new one and delete it. Answers with the bytes freed.
    Cut(oneshot::Sender<u64>),
}

pub(super) struct Writer {
    pub(super) dir: Arc<PathBuf>,
    pub(super) file: File,
    pub(super) at: Position,
    pub(super) segment_bytes: u64,
    pub(super) durable: watch::Sender<Position>,
    pub(super) unwritten: Arc<AtomicU64>,
    /// Where replay has got to: a cut deletes the segment being written
    /// only when it is wholly before this.
    pub(super) committed: watch::Receiver<Position>,
    /// The log's byte counts, which a cut lowers ([`super::Log`]).
    pub(super) used: Arc<AtomicU64>,
    pub(super) done: Arc<AtomicU64>,
    pub(super) starved: Arc<AtomicBool>,
    /// After a failed write: the next one starts a new segment first.
    pub(super) needs_new_segment: bool,
    /// Test hook: the next write fails half-way with ENOSPC.
    #[cfg(test)]
    pub(super) fail_next: Arc<AtomicBool>,
}

#[cfg(test)]
thread_local! {
    /// What `open` hands the writer as its fault hook (tests only).
    pub(super) static FAIL_NEXT_WRITE: Arc<AtomicBool> = Arc::default();
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // Group commit: everything that queued up while the last fsync ran
        // is written and synced together; a cut asked for meanwhile comes
        // after the group, in the order it was asked.
        while let Some(first) = rx.blocking_recv() {
            let first = match first {
                Msg::Append(a) => a,
                Msg::Cut(reply) => {
                    let _ = reply.send(self.cut());
                    continue;
                }
            };
            let mut cut = None;
            let mut group = vec![first];
            let mut bytes = group[0].framed.len();
            while bytes < 16 << 20 {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => {
                        bytes += a.framed.len();
                        group.push(a);
                    }
                    Ok(Msg::Cut(reply)) => {
                        cut = Some(reply);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let result = self.write(&group);
            self.unwritten.fetch_sub(bytes as u64, Ordering::AcqRel);
            if let Err(e) = &result {
                // Its batches are not acknowledged (the clients resend);
                // what the disk holds of them is cut off or left behind in
                // this segment, and the next append goes to a new one.
                tracing::warn!(error = %e, dir = %self.dir.display(), "spool write failed; its batches are refused (resend), the next append starts a new segment");
                self.recover();
            }
            for a in group {
                let _ = a
                    .done
                    .send(result.as_ref().map(|_| self.at).map_err(|e| LogError::Io {
                        path: self.dir.to_path_buf(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    }));
            }
            if let Some(reply) = cut {
                let _ = reply.send(self.cut());
            }
        }
    }

    /// Starts a new segment and deletes the one being written, when every
    /// byte of it is committed; returns the bytes freed (0 when it is not
    /// wholly committed, empty, or a new segment cannot be made yet).
    fn cut(&mut self) -> u64 {
        let committed = *self.committed.borrow();
        if self.at.offset == 0 || committed < self.at || self.needs_new_segment {
            return 0;
        }
        let old = segment_path(&self.dir, self.at.segment);
        if let Err(e) = self.rotate() {
            tracing::warn!(error = %e, "spool: cannot start a new segment to free the replayed one yet");
            return 0;
        }
        let len = fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&old) {
            Ok(()) => {
                self.used.fetch_sub(len, Ordering::AcqRel);
                let _ = self
                    .done
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                        Some(d.saturating_sub(len))
                    });
                tracing::info!(segment = %old.display(), bytes = len, "spool: the replayed segment being written is deleted; appends go to a new one");
                self.starved.store(false, Ordering::Release);
                len
            }
            // The replayer deleted it first (and counted it).
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(error = %e, segment = %old.display(), "spool: cannot delete a replayed segment");
                0
            }
        }
    }

    fn write(&mut self, group: &[Append]) -> io::Result<()> {
        if self.needs_new_segment {
            self.rotate()?;
            self.needs_new_segment = false;
        }
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.framed.len()).sum());
        for a in group {
            buf.extend_from_slice(&a.framed);
        }
        #[cfg(test)]
        if self.fail_next.swap(false, Ordering::AcqRel) {
            self.file.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.at.offset += buf.len() as u64;
        self.durable.send_replace(self.at);
        if self.at.offset >= self.segment_bytes
            && let Err(e) = self.rotate()
        {
            // The group is durable: only the next one must wait for a new
            // segment.
            tracing::warn!(error = %e, "spool: cannot start a new segment yet; the next append tries again");
            self.needs_new_segment = true;
        }
        Ok(())
    }

    /// After a failed write: the segment cut back to its last durable
    /// record (best effort: a reader stops at what is not a whole record
    /// anyway), and a new segment for the next append, now or then.
    fn recover(&mut self) {
        let _ = self.file.set_len(self.at.offset);
        self.needs_new_segment = true;
        match self.rotate() {
            Ok(()) => self.needs_new_segment = false,
            Err(e) => {
                tracing::warn!(error = %e, "spool: cannot start a new segment yet; the next append tries again")
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.at.segment + 1;
        let path = segment_path(&self.dir, next);
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        File::open(&*self.dir)?.sync_all()?;
        self.at = Position {
            segment: next,
            offset: 0,
        };
        self.durable.send_replace(self.at);
        Ok(())
    }
}
