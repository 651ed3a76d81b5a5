//! Property tests of what the staging log reads back from its directory (bytes a crash, a bad
//! disk or another program may have left): segment headers, record headers, segment file
//! names, whole segment files; and the io_uring backend's error path. Nothing may panic,
//! overflow or allocate from a length the input only claims. Seeds are fixed: a failure names
//! the seed and reproduces; inputs that once failed stay here as regression cases.

use super::format::{
    DecodeFail, RECORD_FIXED_LEN, SegmentHeader, decode_record_header, encode_record_header,
    header_region_len, pieces, record_header_len, seal_record_header,
};
use super::segments::{parse_segment_name, segment_name};
use super::tests::cfg_one_thread;
use super::*;
use spoolfs_testkit::{Rng, mutate};

const CASES: u64 = 3000;
const UUID: [u8; 16] = *b"spoolfs-test-vol";

/// The input of case `seed`: every fourth case up to `max_random` random bytes, the others a
/// mutation of a valid encoding made by `valid`.
fn case_input(seed: u64, max_random: u64, valid: fn(&mut Rng) -> Vec<u8>) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let valid = valid(&mut rng);
    if seed.is_multiple_of(4) {
        let len = rng.below(max_random) as usize;
        rng.bytes(len)
    } else {
        mutate(&mut rng, &valid)
    }
}

fn valid_segment_header(rng: &mut Rng) -> Vec<u8> {
    let h = SegmentHeader {
        volume_uuid: UUID,
        generation: rng.next_u64(),
        segment_size: rng.next_u64(),
        align: 1 << rng.below(17),
        index: rng.next_u64() as u32,
        created_us: rng.next_u64(),
    };
    let mut b = vec![0u8; 4096];
    h.encode(&mut b);
    assert_eq!(SegmentHeader::decode(&b), Some(h));
    b.truncate(64 + rng.below(64) as usize);
    b
}

#[test]
fn segment_header_decoder_survives_random_and_mutated_input() {
    for seed in 0..CASES {
        let input = case_input(seed, 100, valid_segment_header);
        if let Some(h) = SegmentHeader::decode(&input) {
            assert!(
                h.align.is_power_of_two() && h.align <= 65536,
                "seed {seed}: alignment {} accepted",
                h.align
            );
            // What was accepted is exactly what an encoder writes for it.
            let mut again = vec![0u8; 64];
            h.encode(&mut again);
            assert_eq!(&again[..], &input[..64], "seed {seed}");
        }
    }
}

/// A sealed record header for `len` data bytes (random data, random fields).
fn valid_record_header(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => rng.below(100) as u32,
        1 => 65536 * rng.below(5) as u32,
        _ => rng.below(400_000) as u32,
    };
    let data = rng.bytes(len as usize);
    let h = RecordHeader {
        ino: rng.next_u64(),
        chunk: rng.next_u64() as u32,
        pos: rng.next_u64() as u32,
        slice_id: rng.next_u64(),
        len,
        meta_len: rng.below(u64::from(len) + 1) as u32,
    };
    let mut b = vec![0u8; record_header_len(len, 512) as usize];
    encode_record_header(&mut b, &h, &data, rng.next_u64());
    seal_record_header(&mut b, rng.next_u64(), rng.next_u64(), rng.next_u64());
    let d = decode_record_header(&b).expect("a sealed header decodes");
    assert_eq!(d.header, h);
    b
}

#[test]
fn record_header_decoder_survives_random_and_mutated_input() {
    for seed in 0..CASES {
        let input = case_input(seed, 200, valid_record_header);
        if let Some(n) = header_region_len(&input) {
            assert!(
                (RECORD_FIXED_LEN..=RECORD_FIXED_LEN + 4 * 65536 + 8).contains(&n),
                "seed {seed}: header region of {n} bytes announced"
            );
        }
        match decode_record_header(&input) {
            Ok(d) => {
                assert_eq!(d.crcs.len() as u32, pieces(d.header.len), "seed {seed}");
                assert!(d.header.meta_len <= d.header.len, "seed {seed}");
                assert!(
                    RECORD_FIXED_LEN + 4 * d.crcs.len() <= input.len(),
                    "seed {seed}: more checksums than bytes"
                );
            }
            Err(DecodeFail::Zero) => {
                assert!(
                    input[..RECORD_FIXED_LEN].iter().all(|&b| b == 0),
                    "seed {seed}"
                );
            }
            Err(DecodeFail::Corrupt) => {}
        }
    }
}

#[test]
fn segment_names_parse_only_as_the_log_writes_them() {
    for i in [0u32, 7, 999_999, 1_000_000, u32::MAX] {
        assert_eq!(parse_segment_name(&segment_name(i)), Some(i));
    }
    // Names that once parsed to an index whose file has another name, or that are not ours.
    for name in [
        "seg-7.log",
        "seg-+00007.log",
        "seg-0000007.log",
        "seg-000007.log.tmp",
        "seg-000007.tmp",
        "seg-4294967296.log",
        "seg-.log",
        "seg--1.log",
        "seg- 00007.log",
    ] {
        assert_eq!(parse_segment_name(name), None, "{name:?}");
    }
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let valid = segment_name(rng.next_u64() as u32 >> rng.below(32));
        let input = String::from_utf8_lossy(&mutate(&mut rng, valid.as_bytes())).into_owned();
        if let Some(i) = parse_segment_name(&input) {
            assert_eq!(segment_name(i), input, "seed {seed}");
        }
    }
}

/// A file named with a huge segment index once sized the log's tables (4 billion entries):
/// it is refused with an error that names it.
#[test]
fn a_segment_name_with_a_huge_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg_one_thread(dir.path(), 1 << 20, 4);
    let stray = dir.path().join(segment_name(u32::MAX));
    std::fs::write(&stray, b"not a segment").unwrap();
    let err = StagingLog::open(c.clone()).err().expect("refused");
    assert!(err.to_string().contains("seg-4294967295.log"), "{err}");
    std::fs::remove_file(&stray).unwrap();
    // At the limit itself, too; below it, the log opens.
    std::fs::write(dir.path().join(segment_name(MAX_SEGMENTS as u32)), b"x").unwrap();
    assert!(StagingLog::open(c.clone()).is_err());
    std::fs::remove_file(dir.path().join(segment_name(MAX_SEGMENTS as u32))).unwrap();
    c.max_segments = MAX_SEGMENTS + 1;
    assert!(
        StagingLog::open(c.clone()).is_err(),
        "max_segments above the limit"
    );
    c.max_segments = 4;
    StagingLog::open(c).unwrap();
}

/// Whole segment files, written by the log and then damaged: a scan (`fsck`) and a replay
/// (the next mount) read them without panicking, and replay returns only records whose
/// data checks out.
#[test]
fn damaged_segment_files_are_scanned_and_replayed_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg_one_thread(dir.path(), 1 << 20, 4);
    {
        let (log, _) = StagingLog::open(c.clone()).unwrap();
        for i in 0..12u64 {
            let len = (i as usize * 7919) % 40_000;
            let h = RecordHeader {
                ino: i,
                chunk: 0,
                pos: 0,
                slice_id: i,
                len: len as u32,
                meta_len: 0,
            };
            log.append(&h, &spoolfs_testkit::random_bytes(i, len), false)
                .unwrap();
        }
        log.sync().unwrap();
    }
    let seg = dir.path().join(segment_name(0));
    let original = std::fs::read(&seg).unwrap();
    // Mutations land where there is something to damage: the header block and records.
    let written = 256 << 10;
    for seed in 0..150u64 {
        let mut rng = Rng::new(seed);
        let mut bytes = original.clone();
        let damaged = mutate(&mut rng, &original[..written]);
        let n = damaged.len().min(written);
        bytes[..n].copy_from_slice(&damaged[..n]);
        std::fs::write(&seg, &bytes).unwrap();
        let _ = scan_dir(dir.path(), UUID);
        if let Ok((log, replayed)) = StagingLog::open(c.clone()) {
            for r in &replayed {
                let mut data = vec![0u8; r.loc.len as usize];
                if log.read(&r.loc, 0, &mut data).is_ok() {
                    assert_eq!(
                        data,
                        spoolfs_testkit::random_bytes(r.header.slice_id, data.len()),
                        "seed {seed}: replay returned a record whose data is not what was written"
                    );
                }
            }
        }
        // Open may have recycled the damaged segment: start each case from the original.
        std::fs::write(&seg, &original).unwrap();
    }
}

/// The io_uring backend when a wait fails with entries in flight: every one of them is
/// reaped before the error is returned (its buffer is freed or reused right after), and the
/// next batch gets its own completions, not the failed batch's.
#[test]
fn uring_failed_wait_reaps_every_completion_first() {
    use super::io::{IoBackend, UringBackend, WriteOp};
    use std::os::fd::AsRawFd;
    let Ok(mut ring) = UringBackend::new() else {
        spoolfs_testkit::not_applicable(
            "uring_failed_wait_reaps_every_completion_first",
            "io_uring is not available here (the psync backend is used instead)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("f"))
        .unwrap();
    let fd = file.as_raw_fd();
    let ops_for = |bufs: &[Vec<u8>]| -> Vec<WriteOp> {
        bufs.iter()
            .enumerate()
            .map(|(i, b)| WriteOp {
                fd,
                offset: i as u64 * 4096,
                ptr: b.as_ptr(),
                len: b.len(),
                dsync: false,
            })
            .collect()
    };
    let first: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8 + 1; 4096]).collect();
    ring.fail_enters = 1;
    let results = ring.write_batch(&ops_for(&first));
    assert!(
        results.iter().all(|r| r.is_err()),
        "the failed wait is reported"
    );
    assert_eq!(
        ring.pending_completions(),
        0,
        "completions of the failed batch were left in the ring"
    );
    // The next batch, smaller: its results are its own.
    let second: Vec<Vec<u8>> = (0..2).map(|i| vec![0xa0 + i as u8; 4096]).collect();
    let results = ring.write_batch(&ops_for(&second));
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let mut back = vec![0u8; 4096];
    for (i, want) in second.iter().enumerate() {
        ring.read(fd, i as u64 * 4096, &mut back).unwrap();
        assert_eq!(&back, want);
    }
}
