//! The log's files: torn tails, commits and reopening, full spools and
//! disks, failed writes, the committed position's slots.
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
        let (log, _, _) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
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

    let (log, mut reader, recovery) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
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
    let (log, mut reader, _) = open(dir.path(), 1 << 30, 1000, 0).unwrap();
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
    assert_eq!(log.pending(), used, "nothing committed yet");
    reader.commit(end).unwrap();
    assert!(segments(dir.path()).unwrap().len() < before);
    assert!(log.used() < used);
    // The 4 records after `end` (400 bytes and a header each) are what
    // is left to replay, though the segment of `end` is kept.
    let pending = log.pending();
    assert!(pending < log.used(), "{pending} of {}", log.used());
    assert_eq!(pending, 4 * (400 + HEADER as u64));
    drop((log, reader));
    let (log, mut reader, _) = open(dir.path(), 1 << 30, 1000, 0).unwrap();
    assert_eq!(log.pending(), pending, "the same after reopening");
    let rest = read_all(&mut reader, 4).await;
    assert_eq!(rest[0], Bytes::from(vec![6u8; 400]));
    assert_eq!(rest[3], Bytes::from(vec![9u8; 400]));
}

#[tokio::test]
async fn a_full_spool_refuses_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path(), 1000, 1 << 20, 0).unwrap();
    log.append(&[1u8; 600]).await.unwrap();
    assert!(matches!(
        log.append(&[2u8; 600]).await,
        Err(LogError::Full { .. })
    ));
    log.append(&[3u8; 100]).await.unwrap();
}

#[tokio::test]
async fn a_spool_that_is_one_full_segment_gives_its_space_back_once_replayed() {
    let dir = tempfile::tempdir().unwrap();
    // The segment size is above the limit: every record is in the
    // segment being written, which never rotates by size.
    let (log, mut reader, _) = open(dir.path(), 10_000, 1 << 30, 0).unwrap();
    let mut appended = 0;
    while log.append(&[1u8; 900]).await.is_ok() {
        appended += 1;
    }
    assert!(matches!(
        log.append(&[1u8; 900]).await,
        Err(LogError::Full { .. })
    ));
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
    let mut end = Position::default();
    for _ in 0..appended {
        end = reader.next().await.unwrap().unwrap().1;
    }
    reader.commit(end).unwrap();
    assert_eq!(log.pending(), 0);
    // The next append frees the replayed segment and is taken.
    let at = log.append(&[2u8; 900]).await.unwrap();
    assert!(at.segment > end.segment, "{at:?} after {end:?}");
    assert_eq!(segments(dir.path()).unwrap(), vec![at.segment]);
    assert_eq!(log.used(), 900 + HEADER as u64);
    assert_eq!(log.pending(), 900 + HEADER as u64);
    // The replayer's next commit counts the same bytes once.
    let next = reader.next().await.unwrap().unwrap();
    assert_eq!(next.0, Bytes::from(vec![2u8; 900]));
    reader.commit(end).unwrap();
    assert_eq!(log.pending(), 900 + HEADER as u64);
    reader.commit(next.1).unwrap();
    assert_eq!(log.pending(), 0);
}

#[tokio::test]
async fn a_restart_deletes_the_segments_replayed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut reader, _) = open(dir.path(), 10_000, 1 << 30, 0).unwrap();
    let mut end = Position::default();
    for i in 0..5u8 {
        log.append(&[i; 900]).await.unwrap();
        end = reader.next().await.unwrap().unwrap().1;
    }
    reader.commit(end).unwrap();
    drop((log, reader));
    let (log, mut reader, _) = open(dir.path(), 10_000, 1 << 30, 0).unwrap();
    assert_eq!((log.used(), log.pending()), (0, 0));
    assert_eq!(segments(dir.path()).unwrap().len(), 1, "only the new one");
    // The limit is all there again, and replay goes on from there.
    for i in 0..10u8 {
        log.append(&[i; 900]).await.unwrap();
    }
    assert_eq!(reader.next().await.unwrap().unwrap().0, vec![0u8; 900]);
}

#[tokio::test]
async fn a_failed_write_fails_its_append_only_and_the_next_goes_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut reader, _) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
    log.append(&[1u8; 100]).await.unwrap();
    let used = log.used();
    let segments_before = segments(dir.path()).unwrap().len();
    // ENOSPC half-way through the next write.
    FAIL_NEXT_WRITE.with(|f| f.store(true, Ordering::Release));
    let failed = log.append(&[2u8; 100]).await;
    assert!(matches!(failed, Err(LogError::Io { .. })), "{failed:?}");
    assert_eq!(log.used(), used, "the failed append takes no room");
    // The writer goes on, in a new segment.
    log.append(&[3u8; 100]).await.unwrap();
    assert_eq!(segments(dir.path()).unwrap().len(), segments_before + 1);
    let got = read_all(&mut reader, 2).await;
    assert_eq!(got, [vec![1u8; 100], vec![3u8; 100]].map(Bytes::from));
    // After a restart the same records, and nothing of the failed one.
    drop((log, reader));
    let (_log, mut reader, recovery) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
    assert_eq!(recovery.damaged_bytes, 0, "{recovery:?}");
    let got = read_all(&mut reader, 2).await;
    assert_eq!(got, [vec![1u8; 100], vec![3u8; 100]].map(Bytes::from));
}

#[tokio::test]
async fn the_committed_position_is_written_in_place_and_a_torn_slot_leaves_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut reader, _) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
    for i in 0..3u8 {
        log.append(&[i; 100]).await.unwrap();
    }
    let first = reader.next().await.unwrap().unwrap().1;
    reader.commit(first).unwrap();
    let second = reader.next().await.unwrap().unwrap().1;
    reader.commit(second).unwrap();
    let path = dir.path().join(COMMITTED);
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    assert_eq!(read_committed(dir.path()).unwrap().0, second);
    // No new file per commit: the same inode, two slots.
    reader.commit(second).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), inode);
    assert_eq!(meta.len(), 2 * SLOT as u64);
    // Tear the newest slot: the one before it is read.
    let (_, seq) = read_committed(dir.path()).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"garbage", (seq % 2) * SLOT as u64).unwrap();
    assert_eq!(read_committed(dir.path()).unwrap().0, second);
    // A spool of the one-line format still opens where it was.
    fs::write(&path, format!("{}:{}", first.segment, first.offset)).unwrap();
    assert_eq!(read_committed(dir.path()), Some((first, 0)));
    drop((log, reader));
    let (_log, reader, _) = open(dir.path(), 1 << 30, 1 << 20, 0).unwrap();
    assert_eq!(reader.position(), first);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        2 * SLOT as u64,
        "rewritten as slots"
    );
}
