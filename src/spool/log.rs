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
//! is in the database) is kept in the file `committed`. Segments wholly
//! before it are deleted; the position itself may lag after a crash, which
//! only makes replay offer rows again that the database recognises as
//! duplicates.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

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
    #[error("the spool writer has stopped")]
    Closed,
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

struct Append {
    framed: Vec<u8>,
    done: oneshot::Sender<Result<Position, LogError>>,
}

/// The writing end: appends records, durable when the call returns.
#[derive(Clone)]
pub struct Log {
    dir: Arc<PathBuf>,
    appends: mpsc::UnboundedSender<Append>,
    /// Bytes in segment files, plus appends accepted and not yet written.
    used: Arc<AtomicU64>,
    limit: u64,
    /// Segment files' ends as known durable: what the reader may read up to.
    durable: watch::Receiver<Position>,
}

/// Opens (creating if needed) the spool in `dir`, repairs a torn tail, and
/// starts the writer thread on a new segment. Returns the log, a reader at
/// the committed position, and what recovery did.
pub fn open(
    dir: &Path,
    limit: u64,
    segment_bytes: u64,
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
    let committed = read_committed(dir)
        .filter(|p| ends.contains_key(&p.segment))
        .unwrap_or(Position {
            segment: existing.first().copied().unwrap_or(1),
            offset: 0,
        });
    let first_new = existing.last().map_or(1, |n| n + 1);
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
    let (appends, rx) = mpsc::unbounded_channel();
    let used = Arc::new(AtomicU64::new(used));
    let dir = Arc::new(dir.to_owned());
    let writer = Writer {
        dir: dir.clone(),
        file,
        at: start,
        segment_bytes,
        durable: durable_tx,
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(io_err(&dir))?;
    let log = Log {
        dir: dir.clone(),
        appends,
        used: used.clone(),
        limit,
        durable: durable.clone(),
    };
    let reader = Reader {
        dir,
        at: committed,
        file: None,
        durable,
        used,
    };
    Ok((log, reader, recovery))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

const COMMITTED: &str = "committed";

fn read_committed(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(COMMITTED)).ok()?;
    let (s, o) = text.trim().split_once(':')?;
    Some(Position {
        segment: s.parse().ok()?,
        offset: o.parse().ok()?,
    })
}

impl Log {
    /// Appends one record and returns once it is on disk (fsynced), or
    /// [`LogError::Full`] at once when the spool has no room for it.
    pub async fn append(&self, payload: &[u8]) -> Result<Position, LogError> {
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
        let (done, rx) = oneshot::channel();
        if self.appends.send(Append { framed, done }).is_err() {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return Err(LogError::Closed);
        }
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Bytes the spool holds on disk (and is about to write).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
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

struct Writer {
    dir: Arc<PathBuf>,
    file: File,
    at: Position,
    segment_bytes: u64,
    durable: watch::Sender<Position>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Append>) {
        // Group commit: everything that queued up while the last fsync ran
        // is written and synced together.
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut bytes = group[0].framed.len();
            while bytes < 16 << 20 {
                match rx.try_recv() {
                    Ok(a) => {
                        bytes += a.framed.len();
                        group.push(a);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write(&group);
            for a in group {
                let _ = a
                    .done
                    .send(result.as_ref().map(|_| self.at).map_err(|e| LogError::Io {
                        path: self.dir.to_path_buf(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    }));
            }
            if let Err(e) = result {
                // A disk that fails a write or fsync may have lost what it
                // said it had: acknowledge nothing more.
                tracing::error!(error = %e, "spool write failed; the spool accepts nothing more");
                return;
            }
        }
    }

    fn write(&mut self, group: &[Append]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.framed.len()).sum());
        for a in group {
            buf.extend_from_slice(&a.framed);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.at.offset += buf.len() as u64;
        self.durable.send_replace(self.at);
        if self.at.offset >= self.segment_bytes {
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
        }
        Ok(())
    }
}

/// The reading end, used by the replayer alone.
pub struct Reader {
    dir: Arc<PathBuf>,
    at: Position,
    file: Option<File>,
    durable: watch::Receiver<Position>,
    used: Arc<AtomicU64>,
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

    /// Everything before `pos` is in the database: records it, and deletes
    /// the segments wholly before it.
    pub fn commit(&mut self, pos: Position) -> Result<(), LogError> {
        let dir = self.dir.as_path();
        let tmp = dir.join("committed.tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        write!(f, "{}:{}", pos.segment, pos.offset).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, dir.join(COMMITTED)).map_err(io_err(dir))?;
        for n in segments(dir)? {
            if n >= pos.segment {
                break;
            }
            let path = segment_path(dir, n);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.used.fetch_sub(len, Ordering::AcqRel);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(reader: &mut Reader, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(reader.next().await.unwrap().unwrap().0);
        }
        out
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _, _) = open(dir.path(), 1 << 30, 1 << 20).unwrap();
            for i in 0..3u8 {
                log.append(&[i; 100]).await.unwrap();
            }
        }
        // An append that died half-way: a header and part of its payload.
        let last = *segments(dir.path()).unwrap().last().unwrap();
        let path = segment_path(dir.path(), last);
        let mut torn = frame(&[9u8; 100]);
        torn.truncate(60);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();

        let (log, mut reader, recovery) = open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(recovery.torn_bytes, 60);
        log.append(&[7u8; 10]).await.unwrap();
        let got = read_all(&mut reader, 4).await;
        assert_eq!(
            got[..3],
            [vec![0u8; 100], vec![1; 100], vec![2; 100]].map(Bytes::from)
        );
        assert_eq!(got[3], Bytes::from(vec![7u8; 10]));
    }

    #[tokio::test]
    async fn commit_deletes_read_segments_and_reopening_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut reader, _) = open(dir.path(), 1 << 30, 1000).unwrap();
        for i in 0..10u8 {
            log.append(&[i; 400]).await.unwrap();
        }
        let before = segments(dir.path()).unwrap().len();
        assert!(before >= 4, "rotated at 1000 bytes: {before} segments");
        let mut end = Position::default();
        for _ in 0..6 {
            end = reader.next().await.unwrap().unwrap().1;
        }
        let used = log.used();
        reader.commit(end).unwrap();
        assert!(segments(dir.path()).unwrap().len() < before);
        assert!(log.used() < used);
        drop((log, reader));
        let (_log, mut reader, _) = open(dir.path(), 1 << 30, 1000).unwrap();
        let rest = read_all(&mut reader, 4).await;
        assert_eq!(rest[0], Bytes::from(vec![6u8; 400]));
        assert_eq!(rest[3], Bytes::from(vec![9u8; 400]));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_the_append() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), 1000, 1 << 20).unwrap();
        log.append(&[1u8; 600]).await.unwrap();
        assert!(matches!(
            log.append(&[2u8; 600]).await,
            Err(LogError::Full { .. })
        ));
        log.append(&[3u8; 100]).await.unwrap();
    }
}
