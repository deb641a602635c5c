//! The spool's files: an append-only log of records split into numbered
//! segment files, written by one thread that fsyncs once for every group of
//! appends waiting (group commit), and read back in order by the replayer.
//!
//! Record framing: `magic u32 | length u32 | crc32 u32 | payload`, all
//! little-endian. At open, every segment is scanned: a record cut short or
//! failing its checksum at the end of the newest segment is a torn write
//! (the process died inside an append that was never acknowledged) and is
//! truncated away; anywhere else it is damage, reported, and the rest of
//! that segment is skipped. Appends always go to a new segment after open,
//! so segments written before are never modified again.
//!
//! Where replay has got to (the *committed* position: everything before it
//! is in the database) is kept in the file `committed`: two fixed slots,
//! written in turn in place (no new file, no new block), each with a
//! sequence number and a checksum, so that recording it needs no free space
//! and a torn write leaves the other slot. Segments wholly before it are
//! deleted first, which frees space on a full disk; the position itself may
//! lag after a crash, which only makes replay offer rows again that the
//! database recognises as duplicates.
//!
//! The segment being written is freed too once every record in it is
//! committed: an append that finds no room while committed bytes are still
//! on disk asks the writer to *cut* (start a new segment and delete the
//! committed one) and then looks again, and [`open`] deletes the segments
//! wholly committed before a restart. So a spool whose every byte sits in
//! one segment (a segment size above the disk's or the limit's) still
//! gives its space back once replay has stored it.
//!
//! A full disk: an append is refused before the disk fills, when the
//! spool's filesystem has less free space than the append plus a reserve
//! ([`LogError::DiskFull`], RESOURCE_EXHAUSTED for the client). A write or
//! fsync that fails all the same (ENOSPC, EIO) fails its appends only: the
//! segment is cut back to its last durable record and the next append goes
//! to a new segment, so no acknowledged record ever follows bytes of
//! unknown state in a file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

mod writer;

#[cfg(test)]
use writer::FAIL_NEXT_WRITE;
use writer::{Append, Msg, Writer};

const MAGIC: u32 = 0x3153_5441; // "ATS1"
const HEADER: usize = 12;
const SEGMENT_SUFFIX: &str = ".spool";

/// A place in the log: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("spool directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the spool is full ({used} of {limit} bytes): the database has not taken the spooled rows yet; resend later"
    )]
    Full { used: u64, limit: u64 },
    #[error(
        "the spool is full: its filesystem has {free} bytes free, and {reserve} stay in reserve ({needed} needed for this batch); the database has not taken the spooled rows yet; resend later"
    )]
    DiskFull {
        free: u64,
        needed: u64,
        reserve: u64,
    },
    #[error("the spool writer has stopped")]
    Closed,
}

/// Free bytes of the filesystem holding `dir` (for an unprivileged user),
/// and its size.
pub fn disk_space(dir: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let unit = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * unit,
        st.blocks() as u64 * unit,
    ))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}{SEGMENT_SUFFIX}"))
}

fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let name = e.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the record at the reader's position. `Ok(None)`: no whole, valid
/// record there (end of the segment, or a bad one).
fn read_record(file: &mut File) -> io::Result<Option<Bytes>> {
    let mut header = [0u8; HEADER];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return Ok(None);
    }
    let mut payload = vec![0u8; word(4) as usize];
    match file.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != word(8) {
        return Ok(None);
    }
    Ok(Some(Bytes::from(payload)))
}

/// Scans a segment; returns the end of its last valid record.
fn valid_end(path: &Path) -> Result<(u64, u64), LogError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut end = 0;
    while read_record(&mut file).map_err(io_err(path))?.is_some() {
        end = file.stream_position().map_err(io_err(path))?;
    }
    Ok((end, len))
}

/// What [`open`] found and repaired.
#[derive(Debug, Default)]
pub struct Recovery {
    pub segments: usize,
    /// Bytes of a torn last record cut off the newest segment.
    pub torn_bytes: u64,
    /// Bytes skipped after damage in older segments.
    pub damaged_bytes: u64,
}

/// The writing end: appends records, durable when the call returns.
#[derive(Clone)]
pub struct Log {
    dir: Arc<PathBuf>,
    appends: mpsc::UnboundedSender<Msg>,
    /// Bytes in segment files, plus appends accepted and not yet written.
    used: Arc<AtomicU64>,
    /// Of those, the bytes before the committed position (in the database
    /// already, their segments not yet deleted).
    done: Arc<AtomicU64>,
    limit: u64,
    /// Free space the spool leaves on its filesystem (see [`open`]).
    reserve: u64,
    /// Bytes of appends accepted and not yet written: the free space the
    /// filesystem reports does not count them yet.
    unwritten: Arc<AtomicU64>,
    /// Whether appends are being refused for lack of disk space (logged
    /// when it changes).
    refusing: Arc<AtomicBool>,
    /// An append was refused for room and no cut has freed any since.
    starved: Arc<AtomicBool>,
    /// Segment files' ends as known durable: what the reader may read up to.
    durable: watch::Receiver<Position>,
}

/// Opens (creating if needed) the spool in `dir`, repairs a torn tail, and
/// starts the writer thread on a new segment. Returns the log, a reader at
/// the committed position, and what recovery did. `reserve` is the free
/// space appends leave on the filesystem, at most a tenth of its size (a
/// small filesystem would otherwise take nothing).
pub fn open(
    dir: &Path,
    limit: u64,
    segment_bytes: u64,
    reserve: u64,
) -> Result<(Log, Reader, Recovery), LogError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let existing = segments(dir)?;
    let mut recovery = Recovery {
        segments: existing.len(),
        ..Default::default()
    };
    let mut used = 0;
    let mut ends = std::collections::BTreeMap::new();
    for (i, &n) in existing.iter().enumerate() {
        let path = segment_path(dir, n);
        let (end, len) = valid_end(&path)?;
        if end < len {
            if i + 1 == existing.len() {
                tracing::warn!(segment = %path.display(), bytes = len - end, "spool: torn write at the end (an append that was never acknowledged); cut off");
                recovery.torn_bytes += len - end;
            } else {
                tracing::error!(segment = %path.display(), offset = end, bytes = len - end, "spool: damaged record; the rest of this segment is skipped");
                recovery.damaged_bytes += len - end;
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(end).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        used += end;
        ends.insert(n, end);
    }
    let (mut committed, seq) = match read_committed(dir) {
        Some((p, seq)) if ends.contains_key(&p.segment) => (p, seq),
        found => (
            Position {
                segment: existing.first().copied().unwrap_or(1),
                offset: 0,
            },
            found.map_or(0, |(_, seq)| seq),
        ),
    };
    // Segments wholly committed before the restart (the last of them may
    // have been the one being written): their space is given back now, so
    // a spool that filled its disk and was then replayed takes appends at
    // once.
    let spent: Vec<u64> = ends
        .iter()
        .filter(|&(&n, &end)| {
            n < committed.segment || (n == committed.segment && committed.offset >= end)
        })
        .map(|(&n, _)| n)
        .collect();
    for n in spent {
        let path = segment_path(dir, n);
        match fs::remove_file(&path) {
            Ok(()) => used -= ends.remove(&n).unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    let first_new = existing.last().map_or(1, |n| n + 1);
    if !ends.contains_key(&committed.segment) {
        // All of it is in the database: replay starts at the next segment.
        committed = Position {
            segment: ends.keys().next().copied().unwrap_or(first_new),
            offset: 0,
        };
    }
    let (_, size) = disk_space(dir).map_err(io_err(dir))?;
    let reserve = reserve.min(size / 10);
    let path = segment_path(dir, first_new);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    let start = Position {
        segment: first_new,
        offset: 0,
    };
    let (durable_tx, durable) = watch::channel(start);
    let (committed_tx, committed_rx) = watch::channel(committed);
    let (appends, rx) = mpsc::unbounded_channel();
    // Segments wholly before the committed position stay until the first
    // commit deletes them.
    let done: u64 = ends
        .range(..committed.segment)
        .map(|(_, end)| end)
        .sum::<u64>()
        + ends.get(&committed.segment).map_or(0, |_| committed.offset);
    let used = Arc::new(AtomicU64::new(used));
    let done = Arc::new(AtomicU64::new(done));
    let unwritten = Arc::new(AtomicU64::new(0));
    let starved = Arc::new(AtomicBool::new(false));
    let dir = Arc::new(dir.to_owned());
    let writer = Writer {
        dir: dir.clone(),
        file,
        at: start,
        segment_bytes,
        durable: durable_tx,
        unwritten: unwritten.clone(),
        committed: committed_rx,
        used: used.clone(),
        done: done.clone(),
        starved: starved.clone(),
        needs_new_segment: false,
        #[cfg(test)]
        fail_next: FAIL_NEXT_WRITE.with(|f| f.clone()),
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(io_err(&dir))?;
    let log = Log {
        dir: dir.clone(),
        appends,
        used: used.clone(),
        done: done.clone(),
        limit,
        reserve,
        unwritten,
        refusing: Arc::default(),
        starved: starved.clone(),
        durable: durable.clone(),
    };
    let mut reader = Reader {
        dir,
        at: committed,
        file: None,
        durable,
        used,
        done,
        committed: None,
        committed_at: committed_tx,
        starved,
        // Weak: the writer thread ends when the last `Log` is dropped,
        // which is how the reader learns that nothing more will come.
        writer: log.appends.downgrade(),
        seq,
    };
    // The position's slots: kept when they exist, else made now while
    // there is likely room (on a full disk, the first commit makes them
    // after deleting segments).
    let slots = reader.dir.join(COMMITTED);
    if fs::metadata(&slots).is_ok_and(|m| m.len() == 2 * SLOT as u64) {
        reader.committed = OpenOptions::new().write(true).open(&slots).ok();
    }
    if reader.committed.is_none()
        && let Err(e) = reader.prepare_committed(committed)
    {
        tracing::warn!(error = %e, "spool: cannot prepare the committed-position file yet; retried at the next commit");
    }
    Ok((log, reader, recovery))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

const COMMITTED: &str = "committed";
/// Bytes of one slot of the `committed` file.
const SLOT: usize = 64;

/// One slot: `seq segment:offset crc` padded to [`SLOT`] bytes.
fn slot_text(seq: u64, pos: Position) -> [u8; SLOT] {
    let body = format!("{seq} {}:{}", pos.segment, pos.offset);
    let line = format!("{body} {:08x}", crc32fast::hash(body.as_bytes()));
    let mut out = [b' '; SLOT];
    out[..line.len()].copy_from_slice(line.as_bytes());
    out[SLOT - 1] = b'\n';
    out
}

fn parse_slot(slot: &[u8]) -> Option<(Position, u64)> {
    let text = std::str::from_utf8(slot).ok()?.trim();
    let (body, crc) = text.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let (seq, pos) = body.split_once(' ')?;
    let (s, o) = pos.split_once(':')?;
    let pos = Position {
        segment: s.parse().ok()?,
        offset: o.parse().ok()?,
    };
    Some((pos, seq.parse().ok()?))
}

/// The committed position and its slot's sequence number: the newer of
/// the two valid slots, or the one-line text of older spools (sequence 0).
fn read_committed(dir: &Path) -> Option<(Position, u64)> {
    let bytes = fs::read(dir.join(COMMITTED)).ok()?;
    if bytes.len() == 2 * SLOT {
        return bytes
            .chunks(SLOT)
            .filter_map(parse_slot)
            .max_by_key(|(_, seq)| *seq);
    }
    let text = String::from_utf8(bytes).ok()?;
    let (s, o) = text.trim().split_once(':')?;
    let pos = Position {
        segment: s.parse().ok()?,
        offset: o.parse().ok()?,
    };
    Some((pos, 0))
}

impl Log {
    /// Appends one record and returns once it is on disk (fsynced), or
    /// [`LogError::Full`] at once when the spool has no room for it.
    pub async fn append(&self, payload: &[u8]) -> Result<Position, LogError> {
        match self.try_append(payload).await {
            Err(LogError::Full { .. } | LogError::DiskFull { .. }) => {
                // Committed bytes may still be on disk (the segment being
                // written, replayed): the writer frees them if so (a cut
                // replay asked for may be under way: this one waits behind
                // it), and the append looks again, once.
                self.cut().await;
                let again = self.try_append(payload).await;
                if matches!(
                    again,
                    Err(LogError::Full { .. } | LogError::DiskFull { .. })
                ) {
                    // Replay frees the segment being written once it has
                    // caught up, without waiting for the next append.
                    self.starved.store(true, Ordering::Release);
                }
                again
            }
            other => other,
        }
    }

    /// Asks the writer to start a new segment and delete the one it was
    /// writing, if every byte of it is committed. Returns the bytes freed.
    async fn cut(&self) -> u64 {
        let (tx, rx) = oneshot::channel();
        if self.appends.send(Msg::Cut(tx)).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    async fn try_append(&self, payload: &[u8]) -> Result<Position, LogError> {
        let framed = frame(payload);
        let n = framed.len() as u64;
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return Err(LogError::Full {
                used: before,
                limit: self.limit,
            });
        }
        let pending = self.unwritten.fetch_add(n, Ordering::AcqRel);
        let undo = || {
            self.used.fetch_sub(n, Ordering::AcqRel);
            self.unwritten.fetch_sub(n, Ordering::AcqRel);
        };
        if let Err(e) = self.check_disk(pending + n) {
            undo();
            return Err(e);
        }
        let (done, rx) = oneshot::channel();
        if self
            .appends
            .send(Msg::Append(Append { framed, done }))
            .is_err()
        {
            undo();
            return Err(LogError::Closed);
        }
        // The writer has taken the bytes off `unwritten` once it tried them.
        let written = rx.await.map_err(|_| LogError::Closed)?;
        if written.is_err() {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
        written
    }

    /// Refuses an append of `needed` bytes (with those accepted before it
    /// and not yet written) that would leave less than the reserve free.
    fn check_disk(&self, needed: u64) -> Result<(), LogError> {
        let (free, _) = disk_space(&self.dir).map_err(io_err(&self.dir))?;
        let short = free < needed.saturating_add(self.reserve);
        if short != self.refusing.swap(short, Ordering::AcqRel) {
            if short {
                tracing::warn!(dir = %self.dir.display(), free, reserve = self.reserve, "spool: its filesystem is nearly full; batches are refused (RESOURCE_EXHAUSTED) until replay frees space");
            } else {
                tracing::info!(dir = %self.dir.display(), free, "spool: disk space again; batches are taken");
            }
        }
        if short {
            return Err(LogError::DiskFull {
                free,
                needed,
                reserve: self.reserve,
            });
        }
        Ok(())
    }

    /// Free bytes on the spool's filesystem (None when it cannot be read).
    pub fn disk_free(&self) -> Option<u64> {
        disk_space(&self.dir).ok().map(|(free, _)| free)
    }

    /// Bytes the spool holds on disk (and is about to write).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes the spool holds that are not in the database yet: what it
    /// used less what was committed (a segment is deleted only once
    /// wholly read, so a drained spool still holds its last one).
    pub fn pending(&self) -> u64 {
        self.used()
            .saturating_sub(self.done.load(Ordering::Acquire))
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of what is durable now.
    pub fn durable_end(&self) -> Position {
        *self.durable.borrow()
    }
}

/// The reading end, used by the replayer alone.
pub struct Reader {
    dir: Arc<PathBuf>,
    at: Position,
    file: Option<File>,
    durable: watch::Receiver<Position>,
    used: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    /// The `committed` file with its two slots, once made.
    committed: Option<File>,
    /// The committed position, for the writer's cuts.
    committed_at: watch::Sender<Position>,
    /// Set by a refused append: a commit that reaches the durable end asks
    /// the writer to cut, so the space comes back before the next append.
    starved: Arc<AtomicBool>,
    writer: mpsc::WeakUnboundedSender<Msg>,
    /// Sequence number of the last slot written.
    seq: u64,
}

impl Reader {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn position(&self) -> Position {
        self.at
    }

    /// Whether every durable record has been read.
    pub fn caught_up(&self) -> bool {
        self.at >= *self.durable.borrow()
    }

    /// Moves the reader back (to re-read records after a failed replay).
    pub fn seek(&mut self, to: Position) {
        self.at = to;
        self.file = None;
    }

    /// The next record and the position after it; waits for one to be
    /// appended when the reader has caught up. `None` when the writer is gone.
    pub async fn next(&mut self) -> Result<Option<(Bytes, Position)>, LogError> {
        loop {
            let durable = *self.durable.borrow_and_update();
            if self.at >= durable {
                if self.durable.changed().await.is_err() {
                    return Ok(None);
                }
                continue;
            }
            let path = segment_path(&self.dir, self.at.segment);
            if self.file.is_none() {
                match File::open(&path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.at.offset))
                            .map_err(io_err(&path))?;
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.next_segment();
                        continue;
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            let file = self.file.as_mut().expect("opened above");
            match read_record(file).map_err(io_err(&path))? {
                Some(payload) => {
                    self.at.offset = file.stream_position().map_err(io_err(&path))?;
                    return Ok(Some((payload, self.at)));
                }
                // The end of an older segment (valid records end there, as
                // recovery made sure): on to the next one.
                None if self.at.segment < durable.segment => self.next_segment(),
                None => {
                    // Durable end not reached but no whole record: cannot
                    // happen for a synced append; re-read after the next one.
                    self.file = None;
                    if self.durable.changed().await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn next_segment(&mut self) {
        self.at = Position {
            segment: self.at.segment + 1,
            offset: 0,
        };
        self.file = None;
    }

    /// Everything before `pos` is in the database: deletes the segments
    /// wholly before it, then records it. In that order, so that on a full
    /// disk the deletes make room first; a crash between the two only
    /// replays rows again (recognised as duplicates).
    pub fn commit(&mut self, pos: Position) -> Result<(), LogError> {
        let dir = self.dir.clone();
        for n in segments(&dir)? {
            if n >= pos.segment {
                break;
            }
            let path = segment_path(&dir, n);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.used.fetch_sub(len, Ordering::AcqRel);
                }
                // The writer cut and deleted it (and counted it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        // A segment the writer has cut away holds no committed bytes.
        let on_disk = segment_path(&dir, pos.segment).exists();
        self.done
            .store(if on_disk { pos.offset } else { 0 }, Ordering::Release);
        self.committed_at.send_replace(pos);
        if self.starved.load(Ordering::Acquire) && pos >= *self.durable.borrow() {
            // Nobody waits for the answer: the next append sees the room.
            if let Some(writer) = self.writer.upgrade() {
                let _ = writer.send(Msg::Cut(oneshot::channel().0));
            }
        }
        let Some(file) = &self.committed else {
            return self.prepare_committed(pos);
        };
        // In place, in the slot not holding the newest position.
        let seq = self.seq + 1;
        let path = dir.join(COMMITTED);
        file.write_all_at(&slot_text(seq, pos), (seq % 2) * SLOT as u64)
            .and_then(|()| file.sync_data())
            .map_err(io_err(&path))?;
        self.seq = seq;
        Ok(())
    }

    /// Makes the `committed` file with both slots holding `pos` (through a
    /// temporary file and a rename: it needs a little free space, once).
    fn prepare_committed(&mut self, pos: Position) -> Result<(), LogError> {
        let dir = self.dir.clone();
        let tmp = dir.join("committed.tmp");
        let seq = self.seq + 1;
        let mut content = slot_text(seq, pos).to_vec();
        content.extend_from_slice(&slot_text(seq, pos));
        let written =
            File::create(&tmp).and_then(|mut f| f.write_all(&content).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        fs::rename(&tmp, dir.join(COMMITTED)).map_err(io_err(&dir))?;
        sync_dir(&dir)?;
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join(COMMITTED))
            .map_err(io_err(&dir))?;
        self.committed = Some(file);
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
