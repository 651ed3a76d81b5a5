//! Tests of the staging log: `cargo test -p spoolfs-engine staging`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::*;
use spoolfs_testkit::random_bytes;

const UUID: [u8; 16] = *b"spoolfs-test-vol";

fn cfg(dir: &std::path::Path, engine: IoEngineKind) -> StagingConfig {
    let mut c = StagingConfig::new(dir, UUID);
    c.segment_size = 1 << 20;
    c.max_segments = 16;
    c.threads = 2;
    c.io_engine = engine;
    c
}

/// One engine thread (so records land in a predictable order), `segment_size`-byte segments.
pub(crate) fn cfg_one_thread(
    dir: &std::path::Path,
    segment_size: u64,
    max_segments: usize,
) -> StagingConfig {
    let mut c = cfg(dir, IoEngineKind::Auto);
    c.threads = 1;
    c.segment_size = segment_size;
    c.max_segments = max_segments;
    c
}

/// A fresh directory with a one-thread log in it (see [`cfg_one_thread`]), and the log's
/// configuration (to open it again).
fn open_one_thread(
    segment_size: u64,
    max_segments: usize,
) -> (tempfile::TempDir, StagingConfig, StagingLog) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg_one_thread(dir.path(), segment_size, max_segments);
    let (log, _) = StagingLog::open(c.clone()).unwrap();
    (dir, c, log)
}

/// A one-thread log in `dir` whose writes fail or stall on demand: its configuration, its fault
/// switches and the log.
fn open_with_faults(dir: &std::path::Path) -> (StagingConfig, Arc<FaultConfig>, StagingLog) {
    let faults = FaultConfig::new();
    let mut c = cfg(dir, IoEngineKind::Auto);
    c.threads = 1;
    let tuning = StagingTuning {
        faults: Some(faults.clone()),
        ..Default::default()
    };
    let (log, _) = StagingLog::open_tuned(c.clone(), tuning).unwrap();
    (c, faults, log)
}

fn hdr(ino: u64, slice_id: u64, len: usize) -> RecordHeader {
    RecordHeader {
        ino,
        chunk: (slice_id % 7) as u32,
        pos: (slice_id * 4096) as u32,
        slice_id,
        len: len as u32,
        meta_len: 0,
    }
}

/// Appends a record of ino 1 whose data is `slice` followed by the namespace record `meta`
/// it carries.
fn append_carrying(log: &StagingLog, slice_id: u64, slice: &[u8], meta: &[u8]) -> StagedLoc {
    let mut h = hdr(1, slice_id, slice.len() + meta.len());
    h.meta_len = meta.len() as u32;
    log.submit_parts(&h, &[slice, meta], true)
        .unwrap()
        .wait()
        .unwrap()
}

/// A one-thread log of 1 MiB segments holding one record, slice `slice_id` carrying `meta`
/// (see [`append_carrying`]): its directory, configuration, the log and where the record is.
fn log_with_carrying_record(
    slice_id: u64,
    slice: &[u8],
    meta: &[u8],
) -> (tempfile::TempDir, StagingConfig, StagingLog, StagedLoc) {
    let (dir, c, log) = open_one_thread(1 << 20, 4);
    let loc = append_carrying(&log, slice_id, slice, meta);
    (dir, c, log, loc)
}

fn read_all(log: &StagingLog, loc: &StagedLoc) -> Vec<u8> {
    let mut out = vec![0u8; loc.len as usize];
    log.read(loc, 0, &mut out).unwrap();
    out
}

fn roundtrip(engine: IoEngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let (log, replayed) = StagingLog::open(cfg(dir.path(), engine)).unwrap();
    assert!(replayed.is_empty());
    let expect_engine = if engine == IoEngineKind::Psync {
        "psync"
    } else {
        "uring"
    };
    assert_eq!(log.usage().io_engine, expect_engine);
    let log = Arc::new(log);
    let writers = 8u64;
    let per = 40u64;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..per {
                    let slice = w * 1000 + i;
                    let len = match i % 5 {
                        0 => 0,
                        1 => 1,
                        2 => 4096,
                        3 => 65536 + 17,
                        _ => (slice as usize * 7919) % 150_000,
                    };
                    let data = random_bytes(slice, len);
                    let h = hdr(w, slice, len);
                    let loc = log.append(&h, &data, i % 2 == 0).unwrap();
                    assert_eq!(loc.len as usize, len);
                    assert_eq!(loc.offset % log.alignment(), 0);
                    mine.push((h, loc));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(RecordHeader, StagedLoc)> = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    // Per-inode order is append order, hence increasing locations within a segment.
    for (h, loc) in &all {
        let data = random_bytes(h.slice_id, h.len as usize);
        assert_eq!(read_all(&log, loc), data);
        if h.len > 70_000 {
            // A range crossing a piece boundary, not starting at piece 0.
            let mut part = vec![0u8; 1000];
            log.read(loc, 65_000 + 536, &mut part).unwrap();
            assert_eq!(&part[..], &data[65_536..66_536]);
        }
    }
    let u = log.usage();
    assert_eq!(u.live_records, writers * per);
    assert_eq!(u.appends, writers * per);
    assert!(u.used_bytes > 0 && u.used_bytes <= u.capacity_bytes);
    log.sync().unwrap();
    drop(log);

    let (log, replayed) = StagingLog::open(cfg(dir.path(), engine)).unwrap();
    assert_eq!(replayed.len(), all.len());
    let want: BTreeMap<StagedLoc, RecordHeader> = all.iter().map(|(h, l)| (*l, *h)).collect();
    let mut seqs = HashSet::new();
    let mut last_seq_of_ino: BTreeMap<u64, u64> = BTreeMap::new();
    for w in replayed.windows(2) {
        assert!(w[0].seq < w[1].seq, "replay is in sequence order");
    }
    for r in &replayed {
        assert_eq!(want.get(&r.loc), Some(&r.header));
        assert!(seqs.insert(r.seq));
        let prev = last_seq_of_ino.insert(r.header.ino, r.seq);
        assert!(prev.is_none_or(|p| p < r.seq));
        assert_eq!(
            read_all(&log, &r.loc),
            random_bytes(r.header.slice_id, r.header.len as usize)
        );
    }
    let u = log.usage();
    assert_eq!(u.live_records, all.len() as u64);
    // New appends after reopen get higher sequence numbers and go to fresh segments.
    let loc = log
        .append(&hdr(1, 99_999, 10), b"0123456789", true)
        .unwrap();
    assert!(replayed.iter().all(|r| r.loc.segment != loc.segment));
    drop(log);
    let (_log, again) = StagingLog::open(cfg(dir.path(), engine)).unwrap();
    assert_eq!(again.len(), all.len() + 1);
    assert_eq!(again.last().unwrap().loc, loc);
}

#[test]
fn staging_roundtrip_uring() {
    roundtrip(IoEngineKind::Uring);
}

#[test]
fn staging_roundtrip_psync() {
    roundtrip(IoEngineKind::Psync);
}

#[test]
fn staging_torn_tail_is_skipped() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), IoEngineKind::Auto);
    c.threads = 1;
    let (log, _) = StagingLog::open(c.clone()).unwrap();
    let locs: Vec<StagedLoc> = (0..3)
        .map(|i| {
            let d = random_bytes(i, 100_000);
            log.append(&hdr(1, i, d.len()), &d, true).unwrap()
        })
        .collect();
    assert!(locs.iter().all(|l| l.segment == locs[0].segment));
    let align = log.alignment();
    drop(log);
    // Cut the tail of the last record: garbage over the end of its data.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segments::segment_path(dir.path(), locs[2].segment))
        .unwrap();
    let data_start = locs[2].offset + format::record_header_len(locs[2].len, align);
    f.write_all_at(&[0xAB; 5000], data_start + 70_000).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    let got: Vec<StagedLoc> = replayed.iter().map(|r| r.loc).collect();
    assert_eq!(got, locs[..2].to_vec());
    // Reading the damaged record directly reports the checksum.
    let mut out = vec![0u8; 1000];
    let e = log.read(&locs[2], 69_000, &mut out).unwrap_err();
    assert!(matches!(e, StagingError::Checksum { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EIO);
    // The part of it before the damage still verifies piece by piece.
    log.read(&locs[2], 0, &mut out).unwrap();
    assert_eq!(out, random_bytes(2, 100_000)[..1000]);
    drop(log);

    // Zero out the header of the second record: only the first survives.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segments::segment_path(dir.path(), locs[1].segment))
        .unwrap();
    f.write_all_at(&[0u8; 64], locs[1].offset + 8).unwrap();
    drop(f);
    let (_log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].loc, locs[0]);
}

#[test]
fn staging_recycle_invalidates_old_generation() {
    let (_dir, c, log) = open_one_thread(256 << 10, 4);
    // ~3 records per segment; fill three segments.
    let mut old = Vec::new();
    for i in 0..9 {
        let d = random_bytes(i, 60_000);
        old.push(log.append(&hdr(1, i, d.len()), &d, false).unwrap());
    }
    let used_segments: HashSet<u32> = old.iter().map(|l| l.segment).collect();
    assert_eq!(used_segments.len(), 3);
    for l in &old {
        log.free(l);
    }
    assert_eq!(log.usage().live_records, 0);
    assert_eq!(log.usage().used_bytes, 0);
    // Enough new records to roll over every segment at least once more.
    let mut new = Vec::new();
    for i in 100..110 {
        let d = random_bytes(i, 60_000);
        new.push(log.append(&hdr(1, i, d.len()), &d, false).unwrap());
    }
    // Old segments were reused.
    assert!(new.iter().any(|l| used_segments.contains(&l.segment)));
    // A freed location in a recycled segment reads as stale, not as someone else's data.
    // (A location reused by a newer record cannot be told apart: freeing before the last
    // read is the caller's contract.)
    let stale = old.iter().find(|l| !new.iter().any(|n| n == *l)).unwrap();
    let mut out = vec![0u8; 10];
    let e = log.read(stale, 0, &mut out).unwrap_err();
    assert!(matches!(e, StagingError::Stale { .. }), "{e:?}");
    drop(log);
    let (_log, replayed) = StagingLog::open(c).unwrap();
    let got: Vec<u64> = replayed.iter().map(|r| r.header.slice_id).collect();
    assert_eq!(got, (100..110).collect::<Vec<_>>());
}

/// Segment files the log directory holds.
fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("seg-") && !name.ends_with(".tmp")
        })
        .count()
}

/// Spare segments are created ahead by their own thread, so an engine thread that fills its
/// segment moves to one that is ready.
#[test]
fn staging_prepares_spare_segments_ahead() {
    let (dir, _, log) = open_one_thread(128 << 10, 8);
    let wait_for = |n: usize| {
        let start = Instant::now();
        while segment_files(dir.path()) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} segment files, expected {n}",
                segment_files(dir.path())
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // One segment per engine thread at open; spares only once segments are being used.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(segment_files(dir.path()), 1, "no spare before any demand");
    let d = random_bytes(3, 50_000);
    for i in 0..6 {
        log.append(&hdr(1, i, d.len()), &d, true).unwrap();
    }
    // Three segments used, and one (one per thread) ready ahead.
    wait_for(4);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(segment_files(dir.path()), 4);
    drop(log);
}

#[test]
fn staging_full_returns_at_once() {
    let (_dir, _, log) = open_one_thread(128 << 10, 2);
    let d = random_bytes(1, 50_000);
    let mut locs = Vec::new();
    let start = Instant::now();
    let err = loop {
        match log.append(&hdr(1, locs.len() as u64, d.len()), &d, true) {
            Ok(l) => locs.push(l),
            Err(e) => break e,
        }
        assert!(locs.len() < 10, "a two-segment log never fills");
    };
    assert!(matches!(err, StagingError::Full), "{err:?}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(locs.len(), 4);
    // Too large for any segment: its own error, also at once.
    let big = vec![0u8; 200_000];
    let e = log.append(&hdr(1, 1, big.len()), &big, false).unwrap_err();
    assert!(matches!(e, StagingError::TooLarge { .. }));
    // Freeing makes room again.
    for l in &locs {
        log.free(l);
    }
    log.append(&hdr(1, 50, d.len()), &d, true).unwrap();
    log.append(&hdr(1, 51, d.len()), &d, true).unwrap();
    log.append(&hdr(1, 52, d.len()), &d, true).unwrap();
}

#[test]
fn staging_failed_write_fails_only_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (c, faults, log) = open_with_faults(dir.path());
    let mut ok = Vec::new();
    let d = random_bytes(0, 10_000);
    ok.push(log.append(&hdr(1, 0, d.len()), &d, true).unwrap());
    faults.fail_write(1);
    let e = log.append(&hdr(1, 1, d.len()), &d, true).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    ok.push(log.append(&hdr(1, 2, d.len()), &d, true).unwrap());
    // A torn write: header and part of the data reach the disk, then EIO.
    let big = random_bytes(3, 200_000);
    faults.tear_write(1, 8192);
    assert!(log.append(&hdr(1, 3, big.len()), &big, false).is_err());
    ok.push(log.append(&hdr(1, 4, d.len()), &d, false).unwrap());
    // A failed flush fails the durable appends of its batch only.
    faults.fail_flushes(true);
    assert!(log.append(&hdr(1, 5, d.len()), &d, true).is_err());
    assert!(log.sync().is_err());
    ok.push(log.append(&hdr(1, 6, d.len()), &d, false).unwrap());
    faults.fail_flushes(false);
    log.sync().unwrap();

    // Many writers, one injected failure in the middle of batches: exactly one error.
    let log = Arc::new(log);
    faults.delay_writes(Duration::from_millis(2));
    faults.fail_write(25);
    let handles: Vec<_> = (0..8u64)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..10u64)
                    .map(|i| {
                        let s = 1000 + w * 100 + i;
                        let d = random_bytes(s, 5000 + (s as usize % 3) * 4096);
                        (s, log.append(&hdr(w, s, d.len()), &d, i % 3 == 0))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut errors = 0;
    for h in handles {
        for (s, r) in h.join().unwrap() {
            match r {
                Ok(l) => {
                    assert_eq!(read_all(&log, &l), random_bytes(s, l.len as usize));
                    ok.push(l);
                }
                Err(e) => {
                    assert_eq!(e.errno(), libc::EIO);
                    errors += 1;
                }
            }
        }
    }
    assert_eq!(errors, 1);
    faults.delay_writes(Duration::ZERO);
    let log = Arc::into_inner(log).unwrap();
    let good = ok.len();
    assert_eq!(log.usage().live_records, good as u64);
    drop(log);

    // Every acknowledged record is replayed, and nothing behind a failed write was lost.
    let (_log, replayed) = StagingLog::open(c).unwrap();
    let got: HashSet<StagedLoc> = replayed.iter().map(|r| r.loc).collect();
    for l in &ok {
        assert!(got.contains(l), "acknowledged record {l:?} lost");
    }
}

#[test]
fn staging_group_commit_shares_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, faults, log) = open_with_faults(dir.path());
    let log = Arc::new(log);
    // Slow writes let the queue build up behind the first one, as under real load.
    faults.delay_writes(Duration::from_millis(20));
    let before = log.usage().device_flushes;
    let n = 16;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n as u64)
        .map(|i| {
            let log = log.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let d = random_bytes(i, 4096);
                barrier.wait();
                log.append(&hdr(i, i, d.len()), &d, true).unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let flushes = log.usage().device_flushes - before;
    assert!(
        flushes < n as u64,
        "{flushes} flushes for {n} durable appends"
    );
    assert!(flushes >= 1);
}

#[test]
fn staging_batch_is_written_as_one_and_a_bad_record_fails_alone() {
    let (_dir, _c, log) = open_one_thread(1 << 20, 4);
    // Let the engine thread go to sleep on its empty queue.
    std::thread::sleep(Duration::from_millis(20));
    let data: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(i, 3000)).collect();
    let mut records: Vec<(RecordHeader, &[u8])> = data
        .iter()
        .enumerate()
        .map(|(i, d)| (hdr(0, i as u64, d.len()), d.as_slice()))
        .collect();
    // A header that does not match its data.
    records.insert(1, (hdr(0, 9, 10), &data[0][..5]));
    let before = log.usage().device_flushes;
    let answers = log.submit_batch(&records, true);
    assert_eq!(answers.len(), 4);
    let mut answers = answers.into_iter();
    let first = answers.next().unwrap().unwrap().wait().unwrap();
    assert!(matches!(
        answers.next().unwrap(),
        Err(StagingError::Invalid(_))
    ));
    let rest: Vec<StagedLoc> = answers.map(|a| a.unwrap().wait().unwrap()).collect();
    assert_eq!(
        log.usage().device_flushes - before,
        1,
        "three durable records handed over together share one flush"
    );
    for (loc, d) in std::iter::once(first).chain(rest).zip(&data) {
        assert_eq!(&read_all(&log, &loc), d);
    }
}

#[test]
fn staging_refuses_other_volume_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), IoEngineKind::Psync);
    let (log, _) = StagingLog::open(c.clone()).unwrap();
    log.append(&hdr(1, 1, 3), b"abc", false).unwrap();
    drop(log);
    let mut other = c.clone();
    other.volume_uuid = [9; 16];
    assert!(matches!(
        StagingLog::open(other),
        Err(StagingError::ForeignVolume { .. })
    ));
    let mut bad = c.clone();
    bad.segment_size = 100_000;
    assert!(StagingLog::open(bad).is_err());
    let mut none = c;
    none.durability = StagingDurability::None;
    let (log, replayed) = StagingLog::open(none).unwrap();
    assert_eq!(replayed.len(), 1);
    let before = log.usage().device_flushes;
    log.append(&hdr(1, 2, 3), b"def", true).unwrap();
    assert_eq!(
        log.usage().device_flushes,
        before,
        "durability None never flushes"
    );
    let e = log.append(&hdr(1, 3, 4), b"abc", false).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
}

/// Appends `n` records of `len` bytes for inode `ino`, reads each back, returns their places.
fn append_and_check(log: &StagingLog, ino: u64, n: u64, len: usize) -> Vec<StagedLoc> {
    (0..n)
        .map(|i| {
            let slice = ino * 10_000 + i;
            let data = random_bytes(slice, len);
            let loc = log
                .append(&hdr(ino, slice, len), &data, i % 2 == 0)
                .unwrap();
            assert_eq!(read_all(log, &loc), data);
            loc
        })
        .collect()
}

fn pool_tuning(buffers: usize, size: usize) -> StagingTuning {
    StagingTuning {
        pool_buffers: buffers,
        pool_buffer_size: size,
        ..Default::default()
    }
}

#[test]
fn staging_pool_uses_fixed_buffers() {
    let dir = tempfile::tempdir().unwrap();
    // Small enough for the default RLIMIT_MEMLOCK (8 MiB) of an unprivileged user.
    let tuning = pool_tuning(16, 64 << 10);
    let (log, _) = StagingLog::open_tuned(cfg(dir.path(), IoEngineKind::Uring), tuning).unwrap();
    let u = log.usage();
    assert_eq!((u.fixed_writes, u.fixed_reads, u.pool_misses), (0, 0, 0));

    // Records that fit a pool buffer (header + data <= 64 KiB): every write and read is fixed.
    // Buffers are reused many times over, so stale bytes of earlier records must not leak.
    let mut locs = Vec::new();
    for ino in 0..4 {
        locs.extend(append_and_check(
            &log,
            ino,
            40,
            1000 + 13_000 * ino as usize,
        ));
    }
    let u = log.usage();
    assert_eq!(u.fixed_writes, 160, "{u:?}");
    assert_eq!(u.fixed_reads, 160, "{u:?}");
    assert_eq!(u.pool_misses, 0, "{u:?}");

    // Larger than a pool buffer: a temporary buffer and plain opcodes.
    let big = random_bytes(77, 100_000);
    let loc = log.append(&hdr(9, 77, big.len()), &big, true).unwrap();
    let u = log.usage();
    assert_eq!(
        (u.fixed_writes, u.pool_misses, u.large_reused),
        (160, 1, 0),
        "{u:?}"
    );
    assert_eq!(read_all(&log, &loc), big);
    assert_eq!(log.usage().fixed_reads, 160);
    // A read of the tail of the big record fits a pool buffer again.
    let mut part = vec![0u8; 100];
    log.read(&loc, 99_000, &mut part).unwrap();
    assert_eq!(&part[..], &big[99_000..99_100]);
    let u = log.usage();
    assert!(u.fixed_reads > 160, "{u:?}");
    // The next large records of that thread reuse its buffer, which holds the previous
    // record: a shorter one must still read back exactly (header, data and padding written).
    let mut larger = Vec::new();
    for (i, len) in [90_000usize, 99_999, 100_000].into_iter().enumerate() {
        let data = random_bytes(100 + i as u64, len);
        let at = log
            .append(&hdr(9, 100 + i as u64, len), &data, true)
            .unwrap();
        larger.push((at, data));
    }
    let u = log.usage();
    // The second miss is the read of the first big record (reads never reuse them).
    assert_eq!((u.pool_misses, u.large_reused), (2, 3), "{u:?}");
    for (at, data) in &larger {
        assert_eq!(&read_all(&log, at), data);
    }

    // Everything survives a reopen (replay checks every CRC, padding included).
    log.sync().unwrap();
    drop(log);
    let (log, replayed) = StagingLog::open(cfg(dir.path(), IoEngineKind::Uring)).unwrap();
    assert_eq!(replayed.len(), locs.len() + 1 + larger.len());
    for r in &replayed {
        assert_eq!(
            read_all(&log, &r.loc),
            random_bytes(r.header.slice_id, r.header.len as usize)
        );
    }
}

#[test]
fn staging_pool_exhausted_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), IoEngineKind::Uring);
    c.threads = 1;
    let faults = FaultConfig::new();
    // Slow writes so that many appends wait in the queue holding their buffers.
    faults.delay_writes(Duration::from_millis(2));
    let tuning = StagingTuning {
        faults: Some(faults),
        ..pool_tuning(2, 64 << 10)
    };
    let (log, _) = StagingLog::open_tuned(c, tuning).unwrap();
    let log = Arc::new(log);
    let start = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|w| {
            let (log, start) = (log.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..10)
                    .map(|i| {
                        let data = random_bytes(w * 100 + i, 5000);
                        let h = hdr(w, w * 100 + i, data.len());
                        (log.append(&h, &data, false).unwrap(), data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for (loc, data) in &all {
        assert_eq!(&read_all(&log, loc), data);
    }
    let u = log.usage();
    assert!(u.pool_misses > 0, "{u:?}");
    assert!(u.fixed_writes > 0, "{u:?}");
    // Every append was either a fixed write or a miss; the reads (one at a time) all fixed.
    assert_eq!(u.fixed_writes + u.pool_misses, 80, "{u:?}");
    assert_eq!(u.fixed_reads, 80, "{u:?}");
}

#[test]
fn staging_pool_unregistered_and_psync() {
    // io_uring registers at most 16384 buffers: this pool is refused, logged, and used
    // with plain writes and reads.
    let dir = tempfile::tempdir().unwrap();
    let tuning = pool_tuning(16385, 8192);
    let (log, _) = StagingLog::open_tuned(cfg(dir.path(), IoEngineKind::Uring), tuning).unwrap();
    append_and_check(&log, 1, 20, 3000);
    let u = log.usage();
    assert_eq!((u.fixed_writes, u.fixed_reads, u.pool_misses), (0, 0, 0));
    drop(log);

    // The psync engine uses the pool without registration.
    let dir = tempfile::tempdir().unwrap();
    let tuning = pool_tuning(4, 64 << 10);
    let (log, _) = StagingLog::open_tuned(cfg(dir.path(), IoEngineKind::Psync), tuning).unwrap();
    append_and_check(&log, 1, 20, 30_000);
    let u = log.usage();
    assert_eq!((u.fixed_writes, u.fixed_reads, u.pool_misses), (0, 0, 0));
    let big = random_bytes(5, 70_000);
    log.append(&hdr(2, 5, big.len()), &big, false).unwrap();
    assert_eq!(log.usage().pool_misses, 1);

    // No pool at all.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) =
        StagingLog::open_tuned(cfg(dir.path(), IoEngineKind::Uring), pool_tuning(0, 0)).unwrap();
    append_and_check(&log, 1, 5, 3000);
    let u = log.usage();
    assert_eq!((u.fixed_writes, u.fixed_reads, u.pool_misses), (0, 0, 0));

    // Too many buffers for a u16 index.
    let dir = tempfile::tempdir().unwrap();
    let e = StagingLog::open_tuned(
        cfg(dir.path(), IoEngineKind::Uring),
        pool_tuning(70_000, 8192),
    );
    assert!(matches!(e, Err(StagingError::Invalid(_))));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `cargo test -p spoolfs-engine --release staging_bench -- --ignored --nocapture`
/// Set `STAGING_BENCH_DIR` to put the log on another file system (default: the temp dir).
#[test]
#[ignore]
fn staging_bench_latency() {
    let base = std::env::var("STAGING_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let n = 2000;
    for (engine, mode, durable, size) in [
        (IoEngineKind::Uring, FlushMode::Auto, true, 4096),
        (IoEngineKind::Uring, FlushMode::Fdatasync, true, 4096),
        (IoEngineKind::Psync, FlushMode::Auto, true, 4096),
        (IoEngineKind::Psync, FlushMode::Fdatasync, true, 4096),
        (IoEngineKind::Uring, FlushMode::Auto, false, 4096),
        (IoEngineKind::Psync, FlushMode::Auto, false, 4096),
        (IoEngineKind::Uring, FlushMode::Auto, true, 256 << 10),
        (IoEngineKind::Psync, FlushMode::Auto, true, 256 << 10),
        (IoEngineKind::Uring, FlushMode::Auto, false, 256 << 10),
        (IoEngineKind::Psync, FlushMode::Auto, false, 256 << 10),
    ] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut c = StagingConfig::new(dir.path(), UUID);
        c.io_engine = engine;
        c.threads = 1;
        c.max_segments = 4;
        let tuning = StagingTuning {
            flush_mode: mode,
            ..Default::default()
        };
        let (log, _) = StagingLog::open_tuned(c, tuning).unwrap();
        let d = random_bytes(7, size);
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            let l = log.append(&hdr(1, i as u64, d.len()), &d, durable).unwrap();
            lat.push(t.elapsed());
            log.free(&l);
        }
        lat.sort();
        println!(
            "staging bench: engine={:<5} flush={:<9} durable={:<5} {:>3}KiB QD1 n={n}: p50={:>7.1}us p99={:>7.1}us flushes={}",
            log.usage().io_engine,
            format!("{mode:?}"),
            durable,
            size >> 10,
            percentile(&lat, 0.50).as_secs_f64() * 1e6,
            percentile(&lat, 0.99).as_secs_f64() * 1e6,
            log.usage().device_flushes,
        );
    }
}

/// `RWF_DSYNC` makes only its own write durable on a device with FUA: a durable append that
/// follows plain ones must flush the device cache instead, and only an append with nothing
/// unflushed before it may use `RWF_DSYNC`.
fn dsync_only_when_it_covers(engine: IoEngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), engine);
    c.threads = 1;
    let (log, _) = StagingLog::open(c).unwrap();
    let d = random_bytes(3, 5000);
    let counts = |log: &StagingLog| {
        let u = log.usage();
        (u.dsync_writes, u.datasyncs)
    };
    let start = counts(&log);
    let append = |i: u64, durable: bool| log.append(&hdr(1, i, d.len()), &d, durable).unwrap();
    append(1, true);
    append(2, true);
    let after_durable = counts(&log);
    assert_eq!(
        after_durable.0,
        start.0 + 2,
        "lone durable appends use RWF_DSYNC"
    );
    assert_eq!(after_durable.1, start.1, "and no fdatasync");
    append(3, false);
    append(4, true);
    let after_plain = counts(&log);
    assert_eq!(
        after_plain,
        (after_durable.0, after_durable.1 + 1),
        "a durable append after a plain one flushes the device cache"
    );
    append(5, true);
    assert_eq!(
        counts(&log),
        (after_plain.0 + 1, after_plain.1),
        "once flushed, RWF_DSYNC covers again"
    );
}

#[test]
fn staging_dsync_only_when_it_covers() {
    for engine in [IoEngineKind::Uring, IoEngineKind::Psync] {
        dsync_only_when_it_covers(engine);
    }
}

/// A recycled segment is reused before a new one is created: creating one zero-fills a whole
/// segment on the disk the appends are using.
#[test]
fn staging_reuses_recycled_segments_first() {
    let (dir, _, log) = open_one_thread(128 << 10, 16);
    let d = random_bytes(4, 50_000);
    // Two records per segment; each is freed at once, so every filled segment is recycled
    // when the thread moves on from it.
    for i in 0..40 {
        let loc = log.append(&hdr(1, i, d.len()), &d, false).unwrap();
        log.free(&loc);
    }
    std::thread::sleep(Duration::from_millis(300));
    let files = segment_files(dir.path());
    assert!(
        files <= 4,
        "20 segments' worth of appends, all freed, made {files} segment files"
    );
}

/// Records of at least `BULK_RECORD` bytes (1 MiB) of data go to a segment that is only preallocated (no
/// 64 MiB zero fill in front of a large write), small ones to zero-filled segments; both
/// replay, in sequence order, byte for byte.
#[test]
fn staging_bulk_records_skip_the_zero_fill() {
    let (_dir, c, log) = open_one_thread(8 << 20, 8);
    let mut written = Vec::new();
    for i in 0..12u64 {
        let len = if i % 3 == 0 {
            5000
        } else {
            (1 << 20) + 4096 * i as usize
        };
        let data = random_bytes(i, len);
        let loc = log.append(&hdr(1, i, len), &data, i % 2 == 0).unwrap();
        written.push((i, len, loc));
    }
    let unfilled = |seg: u32| {
        log.shared.segs[seg as usize]
            .unfilled
            .load(Ordering::SeqCst)
    };
    for &(i, len, loc) in &written {
        let bulk = len as u64 >= worker::bulk_threshold(8 << 20);
        assert_eq!(
            unfilled(loc.segment),
            bulk,
            "record {i} ({len} bytes) in {}: {written:?}",
            loc.segment
        );
        // A preallocated segment holds zeros (unwritten extents) past its records.
        assert_eq!(read_all(&log, &loc), random_bytes(i, len));
    }
    log.sync().unwrap();
    drop(log);
    let (log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(replayed.len(), written.len());
    for (r, &(i, len, loc)) in replayed.iter().zip(&written) {
        assert_eq!(
            (r.header.slice_id, r.loc),
            (i, loc),
            "replayed in append order"
        );
        assert_eq!(read_all(&log, &r.loc), random_bytes(i, len));
    }
}

/// Appends `n` records of `len` bytes (slice ids 0..n) to a one-thread log in a fresh
/// directory, all in one segment, and closes it.
fn one_segment_of_records(
    n: u64,
    len: usize,
) -> (tempfile::TempDir, StagingConfig, Vec<StagedLoc>) {
    let (dir, c, log) = open_one_thread(4 << 20, 4);
    let locs: Vec<StagedLoc> = (0..n)
        .map(|i| {
            let d = random_bytes(i, len);
            log.append(&hdr(1, i, d.len()), &d, true).unwrap()
        })
        .collect();
    assert!(locs.iter().all(|l| l.segment == locs[0].segment));
    drop(log);
    (dir, c, locs)
}

fn read_at(dir: &std::path::Path, segment: u32, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(segments::segment_path(dir, segment)).unwrap();
    let mut bytes = vec![0u8; len];
    f.read_exact_at(&mut bytes, at).unwrap();
    bytes
}

fn write_at(dir: &std::path::Path, segment: u32, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segments::segment_path(dir, segment))
        .unwrap();
    f.write_all_at(bytes, at).unwrap();
    f.sync_all().unwrap();
}

/// A record whose data fails its CRC in the middle of a segment is damage, not the end of
/// the log: every record after it is kept, and the damaged one is returned with its damaged
/// range so the owner can record the loss. The segment is not reused meanwhile.
#[test]
fn staging_damaged_record_in_the_middle_keeps_the_rest() {
    let (dir, c, locs) = one_segment_of_records(6, 100_000);
    let align = 4096;
    let data_start = locs[2].offset + format::record_header_len(locs[2].len, align);
    write_at(dir.path(), locs[2].segment, data_start + 70_000, &[0xAB]);

    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    let got: Vec<StagedLoc> = replayed.iter().map(|r| r.loc).collect();
    assert_eq!(got, locs, "every record is replayed, the damaged one too");
    for (i, r) in replayed.iter().enumerate() {
        if i == 2 {
            assert_eq!(r.damaged, vec![(65_536, 100_000)], "the damaged piece");
        } else {
            assert!(r.damaged.is_empty(), "record {i} is intact");
            assert_eq!(read_all(&log, &r.loc), random_bytes(i as u64, 100_000));
        }
    }
    assert!(
        log.damage().is_empty(),
        "no unreadable region: the header was fine"
    );
    drop(log);
}

/// A record header that fails its check in the middle of a segment: replay finds the next
/// record of the generation, reports the unreadable bytes, and does not re-stamp or reuse
/// the segment until the owner says the loss is recorded.
#[test]
fn staging_unreadable_record_header_is_reported_and_the_segment_held() {
    let (dir, c, locs) = one_segment_of_records(6, 30_000);
    write_at(dir.path(), locs[3].segment, locs[3].offset + 20, &[0xFF; 8]);

    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    let got: Vec<StagedLoc> = replayed.iter().map(|r| r.loc).collect();
    let expect: Vec<StagedLoc> = [0, 1, 2, 4, 5].iter().map(|&i| locs[i]).collect();
    assert_eq!(got, expect, "the records after the damaged one are kept");
    let damage = log.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].segment, locs[3].segment);
    assert_eq!(damage[0].offset, locs[3].offset);
    assert_eq!(damage[0].len, locs[4].offset - locs[3].offset);
    assert_eq!(damage[0].what, "record header");
    // Every record freed: the segment is still held for the damage.
    for r in &replayed {
        log.free(&r.loc);
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(log);
    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    assert_eq!(replayed.len(), 5, "the held segment was not re-stamped");
    assert_eq!(log.damage().len(), 1);
    // Released: once its records are freed, the segment gets a new generation.
    for r in &replayed {
        log.free(&r.loc);
    }
    log.release_damage();
    std::thread::sleep(Duration::from_millis(200));
    drop(log);
    let (log, replayed) = StagingLog::open(c).unwrap();
    assert!(replayed.is_empty());
    assert!(log.damage().is_empty());
}

/// A segment header that fails its check: the records behind it are still found (their
/// generation is inferred from them), the header is reported, and the segment is never
/// re-stamped while it holds them.
#[test]
fn staging_bad_segment_header_keeps_its_records() {
    let (dir, c, locs) = one_segment_of_records(4, 50_000);
    write_at(dir.path(), locs[0].segment, 20, &[0x55; 4]);

    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    let got: Vec<StagedLoc> = replayed.iter().map(|r| r.loc).collect();
    assert_eq!(got, locs, "every record behind the bad header is replayed");
    for (i, r) in replayed.iter().enumerate() {
        assert_eq!(read_all(&log, &r.loc), random_bytes(i as u64, 50_000));
    }
    let damage = log.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!((damage[0].offset, damage[0].what), (0, "segment header"));
    drop(log);
    // Still there at the next open (nothing re-stamped it).
    let (_log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(replayed.len(), 4);
}

/// Version 1 records (no CRC of the carried namespace record) are still read, and their
/// carried record is trusted when the pieces it lies in pass.
#[test]
fn staging_reads_version_1_records() {
    let slice = random_bytes(1, 70_000);
    let meta = b"a namespace record".to_vec();
    let (dir, c, log, loc) = log_with_carrying_record(9, &slice, &meta);
    drop(log);
    // Rewrite the header as version 1: field 12 holds the number of pieces.
    let mut head = read_at(dir.path(), loc.segment, loc.offset, 4096);
    head[4..8].copy_from_slice(&1u32.to_le_bytes());
    head[12..16].copy_from_slice(&2u32.to_le_bytes());
    let n = 2;
    let end = format::RECORD_FIXED_LEN + 4 * n;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[..8]), &head[12..end]);
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    write_at(dir.path(), loc.segment, loc.offset, &head);
    let (log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].carried.as_deref(), Some(&meta[..]));
    let mut out = vec![0u8; slice.len()];
    log.read(&loc, 0, &mut out).unwrap();
    assert_eq!(out, slice);
}

/// Version 2 records check the carried namespace record on its own: damage in the slice's
/// data, even in the same 64 KiB piece, leaves it readable.
#[test]
fn staging_carried_record_survives_damage_in_its_slice() {
    let slice = random_bytes(3, 10_000);
    let meta = b"the namespace change of this flush".to_vec();
    let (dir, c, log, loc) = log_with_carrying_record(5, &slice, &meta);
    let d = random_bytes(4, 5000);
    log.append(&hdr(1, 6, d.len()), &d, true).unwrap();
    drop(log);
    let data_start = loc.offset + format::record_header_len(loc.len, 4096);
    write_at(dir.path(), loc.segment, data_start + 5000, &[0x01]);
    let (_log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(replayed[0].damaged, vec![(0, 10_000)]);
    assert_eq!(replayed[0].carried.as_deref(), Some(&meta[..]));
}

/// A segment whose records were all freed gets a new header (destroying them) only after the
/// recycle barrier made durable what freed them. While the barrier fails (the metadata that
/// freed them is not durable: a power cut would bring it back pointing at these records),
/// the records stay on disk and replay still finds them.
#[test]
fn staging_recycle_waits_for_the_barrier() {
    use std::sync::atomic::AtomicBool;
    let (dir, c, log) = open_one_thread(256 << 10, 4);
    let durable = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    {
        let (durable, calls) = (durable.clone(), calls.clone());
        log.set_recycle_barrier(Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            if durable.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("metadata not durable".into())
            }
        }));
    }
    // Fill the first segment (three records) and move on to a second one.
    let mut locs = Vec::new();
    for i in 0..4 {
        let d = random_bytes(i, 60_000);
        locs.push(log.append(&hdr(1, i, d.len()), &d, true).unwrap());
    }
    let first = locs[0].segment;
    let in_first: Vec<StagedLoc> = locs
        .iter()
        .filter(|l| l.segment == first)
        .copied()
        .collect();
    assert_eq!(in_first.len(), 3);
    for l in &in_first {
        log.free(l);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(calls.load(Ordering::SeqCst) >= 1, "the barrier was asked");
    // A crash now: the freed records are all still there.
    let scan = scan_dir(dir.path(), UUID).unwrap();
    let still: Vec<StagedLoc> = scan
        .records
        .iter()
        .map(|r| r.record.loc)
        .filter(|l| l.segment == first)
        .collect();
    assert_eq!(
        still, in_first,
        "the segment was re-stamped before the barrier passed"
    );
    // Durable now: the next retry recycles it.
    durable.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scan = scan_dir(dir.path(), UUID).unwrap();
        if scan.records.iter().all(|r| r.record.loc.segment != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recycled once the barrier passed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(log);
    let (_log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(
        replayed.iter().map(|r| r.loc).collect::<Vec<_>>(),
        vec![locs[3]]
    );
}

/// A record written into never-written (preallocated, unwritten) space of a bulk segment is
/// on the device once the write completes, but its extents become "written" only with a
/// journal commit: a kernel crash before it would read the record back as zeros. So such an
/// append is flushed before it is acknowledged even when it was not asked to be durable;
/// space already written once (a segment's second life) needs no flush.
#[test]
fn staging_writes_into_unwritten_space_are_flushed_before_the_ack() {
    let (dir, _c, log) = open_one_thread(4 << 20, 8);
    let fs_type = {
        // SAFETY: statfs fills the struct for a valid path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::statfs(path.as_ptr(), &mut st) };
        st.f_type
    };
    if fs_type == libc::TMPFS_MAGIC {
        eprintln!("SKIPPED: tmpfs has no unwritten extents");
        return;
    }
    let big = |i: u64| random_bytes(i, (1 << 20) + 8192);
    let before = log.usage().datasyncs;
    let first = log
        .append(&hdr(1, 1, big(1).len()), &big(1), false)
        .unwrap();
    assert!(
        log.usage().datasyncs > before,
        "a non-durable record in unwritten space was acknowledged without a flush"
    );
    assert!(
        log.shared.segs[first.segment as usize]
            .unfilled
            .load(Ordering::SeqCst)
    );
    // Small records go to zero-filled segments: no flush for them.
    let before = log.usage().datasyncs;
    log.append(&hdr(1, 2, 4000), &random_bytes(2, 4000), false)
        .unwrap();
    assert_eq!(log.usage().datasyncs, before, "a plain append flushed");
    // Free the first record and fill the rest of that segment, so it is recycled; its second
    // life writes over space written in the first.
    log.free(&first);
    let mut more = Vec::new();
    for i in 3..6 {
        more.push(
            log.append(&hdr(1, i, big(i).len()), &big(i), false)
                .unwrap(),
        );
    }
    for l in more.iter().filter(|l| l.segment == first.segment) {
        log.free(l);
    }
    for i in 6..12 {
        let loc = log
            .append(&hdr(1, i, big(i).len()), &big(i), false)
            .unwrap();
        if loc.segment == first.segment && loc.offset == first.offset {
            let st = &log.shared.segs[first.segment as usize];
            assert!(st.converted.load(Ordering::SeqCst) >= loc.offset + big(i).len() as u64);
            return;
        }
    }
    panic!("the first bulk segment was never reused");
}

/// Makes the log in `dir` believe the machine restarted since it was last open (the boot id
/// it recorded is another one).
fn pretend_a_restart(dir: &std::path::Path) {
    let text = std::fs::read_to_string(dir.join("boots")).expect("the log records its boot");
    let mut lines: Vec<&str> = text.lines().collect();
    assert_ne!(lines[1], "an-earlier-boot");
    lines[1] = "an-earlier-boot";
    std::fs::write(dir.join("boots"), lines.join("\n") + "\n").unwrap();
}

/// After a restart, a record that no device flush had covered when later records were
/// placed may be torn by the power cut without being damage: it is skipped like a torn
/// tail. A record that a flush covered, or any failing record without a restart (a crash
/// of the process: every written record is on the device), is damage.
#[test]
fn staging_a_torn_unflushed_record_is_damage_only_without_a_restart() {
    let (dir, c, log) = open_one_thread(4 << 20, 4);
    let flushed = random_bytes(0, 8192);
    let unflushed = random_bytes(1, 8192);
    let after = random_bytes(2, 8192);
    let locs = [
        log.append(&hdr(1, 0, 8192), &flushed, true).unwrap(),
        log.append(&hdr(1, 1, 8192), &unflushed, false).unwrap(),
        log.append(&hdr(1, 2, 8192), &after, false).unwrap(),
    ];
    drop(log);
    let data_of = |l: &StagedLoc| l.offset + format::record_header_len(l.len, 4096);
    let tear = |l: &StagedLoc| write_at(dir.path(), l.segment, data_of(l) + 5000, &[0; 512]);
    let damaged_slices = |replayed: &[Replayed]| -> Vec<u64> {
        replayed
            .iter()
            .filter(|r| !r.damaged.is_empty())
            .map(|r| r.header.slice_id)
            .collect()
    };
    tear(&locs[1]);

    // The same boot: damage.
    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    assert_eq!(damaged_slices(&replayed), vec![1]);
    drop(log);

    // After a restart: the unflushed record is skipped, the others kept, no damage.
    pretend_a_restart(dir.path());
    let (log, replayed) = StagingLog::open(c.clone()).unwrap();
    let ids: Vec<u64> = replayed.iter().map(|r| r.header.slice_id).collect();
    assert_eq!(ids, vec![0, 2], "the torn unflushed record is skipped");
    assert!(damaged_slices(&replayed).is_empty() && log.damage().is_empty());
    assert_eq!(read_all(&log, &replayed[1].loc), after);
    drop(log);

    // A flushed record torn after a restart is damage: record 2 was placed after record 0's
    // flush and says so.
    tear(&locs[0]);
    pretend_a_restart(dir.path());
    let (log, replayed) = StagingLog::open(c).unwrap();
    assert_eq!(damaged_slices(&replayed), vec![0]);
    drop(log);
}

/// A torn write that failed leaves its bytes where the next record goes. Until that record
/// is flushed past them, the log's flushed-through number stays below the failed record's:
/// otherwise a power cut that loses the overwrite and keeps a later record brings the failed
/// record back looking like flushed data that is damaged (found by the power-cut campaign).
#[test]
fn staging_a_failed_torn_write_is_not_counted_flushed_until_overwritten() {
    use std::sync::atomic::AtomicU64;
    // Of 48 cuts of one run, how many lost the overwrite and kept the record after it.
    let cuts_losing_the_overwrite = || {
        let dir = tempfile::tempdir().unwrap();
        let device = SimDevice::new(dir.path(), Arc::new(AtomicU64::new(1)));
        let faults = FaultConfig::new();
        let c = cfg_one_thread(dir.path(), 1 << 20, 4);
        let tuning = StagingTuning {
            faults: Some(faults.clone()),
            device: Some(device.clone()),
            flush_mode: FlushMode::Fdatasync,
            ..Default::default()
        };
        let (log, _) = StagingLog::open_tuned(c.clone(), tuning).unwrap();
        let len = 12_000;
        log.append(&hdr(1, 0, len), &random_bytes(0, len), true)
            .unwrap();
        faults.tear_write(1, 8192);
        assert!(
            log.append(&hdr(1, 1, len), &random_bytes(1, len), false)
                .is_err()
        );
        log.sync().unwrap();
        let over = log
            .append(&hdr(1, 2, len), &random_bytes(2, len), false)
            .unwrap();
        log.append(&hdr(1, 3, len), &random_bytes(3, len), false)
            .unwrap();
        drop(log);
        let mut lost_overwrite = 0;
        for seed in 0..48 {
            let cut = tempfile::tempdir().unwrap();
            let plan = CutPlan {
                at: u64::MAX,
                seed,
                unflushed: Unflushed::AnySubset,
            };
            device.materialise(plan, cut.path()).unwrap();
            // A device of its own: another boot.
            let tuning = StagingTuning {
                device: Some(SimDevice::new(cut.path(), Arc::new(AtomicU64::new(1)))),
                ..Default::default()
            };
            let mut config = c.clone();
            config.dir = cut.path().to_path_buf();
            let (log, replayed) = StagingLog::open_tuned(config, tuning).unwrap();
            let ids: Vec<u64> = replayed.iter().map(|r| r.header.slice_id).collect();
            if !ids.contains(&2) && ids.contains(&3) {
                lost_overwrite += 1;
            }
            assert!(
                replayed.iter().all(|r| r.damaged.is_empty()) && log.damage().is_empty(),
                "cut seed {seed}: a record the power cut explains is reported as damage \
                 (records {ids:?}; the overwrite was at {over:?})"
            );
            drop(log);
        }
        lost_overwrite
    };
    // A device flush made in the background (a spare segment being prepared) can cover the
    // last records before the cuts, and then no cut can lose them: a run is tried on a fresh
    // device until one is cut before such a flush.
    assert!(
        (0..5).any(|_| cuts_losing_the_overwrite() > 0),
        "no cut lost the overwrite and kept the record after it, in 5 runs: the test shows \
         nothing"
    );
}

/// A fresh directory with a two-thread log of 16 MiB segments (records of several MiB fit),
/// its configuration (to open it again) and the log.
fn open_for_large_records() -> (tempfile::TempDir, StagingConfig, StagingLog) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), IoEngineKind::Auto);
    c.segment_size = 16 << 20;
    let (log, _) = StagingLog::open(c.clone()).unwrap();
    (dir, c, log)
}

/// Large records handed over with `submit_shared` are built on the builder thread, small ones
/// by the caller; either way each reads back as given, and the log lets go of the data once
/// the append is answered.
#[test]
fn staging_shared_records_are_built_off_the_caller_and_read_back() {
    let (_dir, _, log) = open_for_large_records();
    let sizes = [
        BUILD_OFF_CALLER,
        3 * BUILD_OFF_CALLER + 17,
        4096,
        BUILD_OFF_CALLER - 1,
    ];
    let mut submitted = Vec::new();
    for (i, &len) in sizes.iter().cycle().take(12).enumerate() {
        let slice = 500 + i as u64;
        let data = Arc::new(random_bytes(slice, len));
        let pending = log
            .submit_shared(&hdr(1 + i as u64 % 3, slice, len), data.clone(), false)
            .unwrap();
        submitted.push((data, pending));
    }
    for (data, pending) in submitted {
        let loc = pending.wait().unwrap();
        assert_eq!(Arc::strong_count(&data), 1, "the log still holds the data");
        assert_eq!(read_all(&log, &loc), *data);
    }
    // A header that does not match the data is refused at once, not by the builder.
    let data = Arc::new(vec![1u8; 2 * BUILD_OFF_CALLER]);
    let err = log
        .submit_shared(&hdr(1, 900, BUILD_OFF_CALLER), data, false)
        .err()
        .expect("a header of the wrong length is refused");
    assert!(matches!(err, StagingError::Invalid(_)), "{err}");
}

/// Records still queued for the builder when the log closes are written, and answered:
/// replay finds every one, and no caller waits forever.
#[test]
fn staging_close_writes_what_the_builder_was_given() {
    let (_dir, c, log) = open_for_large_records();
    let len = 2 * BUILD_OFF_CALLER;
    let mut pending = Vec::new();
    for slice in 0..8u64 {
        let data = Arc::new(random_bytes(slice, len));
        pending.push(log.submit_shared(&hdr(7, slice, len), data, true).unwrap());
    }
    log.sync().unwrap();
    drop(log);
    for p in pending {
        p.wait().expect("answered before the log closed");
    }
    let (_log, replayed) = StagingLog::open(c).unwrap();
    let mut found: Vec<u64> = replayed
        .iter()
        .filter(|r| r.header.ino == 7)
        .map(|r| r.header.slice_id)
        .collect();
    found.sort_unstable();
    assert_eq!(found, (0..8).collect::<Vec<_>>());
}

/// Once large shared records arrive, the builder keeps run buffers of their capacity ready
/// (at most two), empty, for the writer's next runs; small records prepare none.
#[test]
fn staging_builder_prepares_run_buffers_after_large_records() {
    let (_dir, _, log) = open_for_large_records();
    let small = Arc::new(random_bytes(1, 4096));
    log.submit_shared(&hdr(1, 1, 4096), small, false)
        .unwrap()
        .wait()
        .unwrap();
    assert!(
        log.take_prepared_run(1).is_none(),
        "small records prepare nothing"
    );

    let capacity = 3 * BUILD_OFF_CALLER;
    let mut run = Vec::with_capacity(capacity);
    run.extend_from_slice(&random_bytes(2, 2 * BUILD_OFF_CALLER));
    let len = run.len();
    log.submit_shared(&hdr(1, 2, len), Arc::new(run), false)
        .unwrap()
        .wait()
        .unwrap();
    let ready = || log.records.prepared_runs.lock().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ready(), 2, "two run buffers prepared, no more");
    assert!(log.take_prepared_run(capacity + (1 << 20)).is_none());
    for _ in 0..2 {
        let b = log.take_prepared_run(capacity).expect("a prepared run");
        assert!(b.is_empty() && b.capacity() >= capacity);
    }
    assert!(
        log.take_prepared_run(capacity).is_none(),
        "none made again without a new record"
    );
}
