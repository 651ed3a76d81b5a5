//! Property tests of the decoders of the engine's stored records, which a crash, a bad disk or
//! a bug elsewhere may have damaged: metadata records (inodes, entries, slices, packs, staged
//! and dead slices), the volume record, and namespace-log records at replay. Random and
//! mutated valid inputs must decode to an error or a value, never panic, and never allocate
//! more than the input could hold (a length prefix is only a claim). Seeds are fixed: a
//! failure names its seed and reproduces.

use serde::Serialize;
use serde::de::DeserializeOwned;
use spoolfs_engine::schema::{
    self, DeadSlice, DentryRec, InodeRec, PackRec, PackedRec, SliceRec, StagedRec,
};
use spoolfs_engine::wal::{PendingRecord, RecordLog, WalStore};
use spoolfs_engine::*;
use spoolfs_metadata::{Durability, KvStore, MemStore};
use spoolfs_testkit::{Rng, mutate};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

const CASES: u64 = 2000;

/// The system allocator, noting the largest single allocation of a thread that asks for it.
struct Measuring;

thread_local! {
    static MEASURE: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let _ = MEASURE.try_with(|m| {
        if m.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Measuring = Measuring;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    MEASURE.with(|m| m.set(true));
    f();
    MEASURE.with(|m| m.set(false));
    LARGEST.with(|l| l.get())
}

/// Most a decoder may allocate at once for `input`: what the input holds, plus the bounded
/// preallocation of a sequence whose length it claims (serde caps that at 1 MiB).
fn allowed(input: &[u8]) -> usize {
    (1 << 20) + 16 * input.len()
}

fn fuzz<T: Serialize + DeserializeOwned>(what: &str, make: impl Fn(&mut Rng) -> T) {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let valid = schema::encode(&make(&mut rng));
        schema::decode::<T>(what, &valid)
            .unwrap_or_else(|e| panic!("{what}, seed {seed}: a valid record is refused: {e}"));
        let input = if seed % 4 == 0 {
            let len = rng.below(120) as usize;
            rng.bytes(len)
        } else {
            mutate(&mut rng, &valid)
        };
        let used = largest_allocation(|| {
            let _ = schema::decode::<T>(what, &input);
        });
        assert!(
            used <= allowed(&input),
            "{what}, seed {seed}: {used} bytes allocated at once for {} input bytes",
            input.len()
        );
    }
}

fn kind(rng: &mut Rng) -> FileKind {
    [
        FileKind::File,
        FileKind::Dir,
        FileKind::Symlink,
        FileKind::Fifo,
        FileKind::Socket,
    ][rng.below(5) as usize]
}

#[test]
fn metadata_record_decoders_survive_random_and_mutated_input() {
    // The measure sees large allocations (or every check below would pass vacuously).
    let seen = largest_allocation(|| drop(std::hint::black_box(vec![1u8; 5 << 20])));
    assert!(seen >= 5 << 20, "the allocation measure saw {seen} bytes");
    fuzz("inode", |rng| InodeRec {
        kind: kind(rng),
        perm: rng.next_u64() as u16,
        nlink: rng.next_u64() as u32,
        uid: rng.next_u64() as u32,
        gid: rng.next_u64() as u32,
        rdev: rng.next_u64() as u32,
        size: rng.next_u64(),
        atime_ns: rng.next_u64() as i64,
        mtime_ns: rng.next_u64() as i64,
        ctime_ns: rng.next_u64() as i64,
        crtime_ns: rng.next_u64() as i64,
        parent: rng.next_u64(),
        target: {
            let len = rng.below(40) as usize;
            rng.bytes(len)
        },
    });
    fuzz("entry", |rng| DentryRec {
        ino: rng.next_u64(),
        kind: kind(rng),
    });
    fuzz("slice", |rng| SliceRec {
        id: rng.next_u64(),
        size: rng.next_u64() as u32,
        off: rng.next_u64() as u32,
        len: rng.next_u64() as u32,
        pos: rng.next_u64() as u32,
    });
    fuzz("dead slice", |rng| DeadSlice {
        size: rng.next_u64() as u32,
    });
    fuzz("packed slice", |rng| PackedRec {
        pack: rng.next_u64(),
        offset: rng.next_u64(),
        len: rng.next_u64() as u32,
        crc: rng.next_u64() as u32,
    });
    fuzz("pack", |rng| PackRec {
        size: rng.next_u64(),
        live_slices: rng.next_u64() as u32,
        live_bytes: rng.next_u64(),
    });
    fuzz("staged slice", |rng| StagedRec {
        ino: rng.next_u64(),
        chunk: rng.next_u64() as u32,
        size: rng.next_u64() as u32,
        segment: rng.next_u64() as u32,
        offset: rng.next_u64(),
        staged_ns: rng.next_u64() as i64,
        owner: rng.next_u64(),
    });
}

/// A symlink target whose length prefix claims far more bytes than the record has.
#[test]
fn a_claimed_length_is_not_allocated() {
    let rec = InodeRec {
        kind: FileKind::Symlink,
        perm: 0o777,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 1,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        crtime_ns: 0,
        parent: 1,
        target: b"t".to_vec(),
    };
    let valid = schema::encode(&rec);
    // The target's u64 length prefix sits right before its last byte.
    let at = valid.len() - 1 - 8;
    for claimed in [u64::MAX, 1 << 40, 1 << 31] {
        let mut bad = valid.clone();
        bad[at..at + 8].copy_from_slice(&claimed.to_le_bytes());
        let used = largest_allocation(|| {
            assert!(schema::decode::<InodeRec>("inode", &bad).is_err());
        });
        assert!(
            used <= allowed(&bad),
            "{used} bytes allocated for a claim of {claimed}"
        );
    }
}

/// A volume record in the metadata store that is not what `format` wrote: an error, never a
/// panic.
#[test]
fn volume_record_decoder_survives_random_and_mutated_input() {
    let store: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let objects = tempfile::tempdir().unwrap();
    format_volume(
        &store,
        &FormatOptions {
            name: "v".into(),
            storage: StorageConfig {
                url: format!("file://{}", objects.path().display()),
                ..Default::default()
            },
            block_size: 1 << 20,
            force: false,
        },
    )
    .unwrap();
    let mut valid = None;
    store
        .view(&mut |r| {
            valid = r.get(schema::VOLUME_KEY)?;
            Ok(())
        })
        .unwrap();
    let valid = valid.expect("a volume record");
    for seed in 0..500 {
        let mut rng = Rng::new(seed);
        let input = mutate(&mut rng, &valid);
        store
            .update(Durability::Durable, &mut |t| {
                t.put(schema::VOLUME_KEY, &input)
            })
            .unwrap();
        let _ = volume::read_record(store.as_ref());
    }
}

/// A namespace log in memory.
#[derive(Default)]
struct MemLog;

impl RecordLog for MemLog {
    fn submit(&self, _record: &[u8]) -> std::io::Result<PendingRecord> {
        Ok(PendingRecord::Done(0))
    }
    fn finish(&self, pending: PendingRecord) -> std::io::Result<u64> {
        match pending {
            PendingRecord::Done(h) => Ok(h),
            PendingRecord::Staged(_) => unreachable!("a memory log stages nothing"),
        }
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn free(&self, _handle: u64) {}
}

/// Namespace-log records found at replay, some damaged: replay applies a prefix of intact
/// records or stops, never panics, and never allocates from a claimed length.
#[test]
fn namespace_log_replay_survives_damaged_records() {
    for seed in 0..CASES / 4 {
        let mut rng = Rng::new(seed);
        let n = 1 + rng.below(6);
        let mut records: Vec<(u64, Vec<u8>)> = (1..=n)
            .map(|seq| {
                let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..rng.below(4))
                    .map(|_| {
                        let klen = 1 + rng.below(12) as usize;
                        let key = rng.bytes(klen);
                        let value = (rng.below(3) > 0).then(|| {
                            let vlen = rng.below(50) as usize;
                            rng.bytes(vlen)
                        });
                        (key, value)
                    })
                    .collect();
                (seq, wal::encode_record(1, seq, &writes))
            })
            .collect();
        let damaged = rng.below(n) as usize;
        records[damaged].1 = mutate(&mut rng, &records[damaged].1);
        // What fsck reads of each record: no panic either.
        let _ = wal::record_position(&records[damaged].1);
        let inner = Arc::new(MemStore::default());
        inner
            .update(Durability::Durable, &mut |t| wal::put_position(t, 1, 0))
            .unwrap();
        let input_len: usize = records.iter().map(|r| r.1.len()).sum();
        let mut outcome = None;
        let used = largest_allocation(|| {
            outcome = Some(WalStore::recover(
                inner.clone(),
                Arc::new(MemLog),
                records.clone(),
            ));
        });
        assert!(
            used <= allowed(&vec![0; input_len]),
            "seed {seed}: {used} bytes allocated at once for {input_len} record bytes"
        );
        if let Some(Ok((_, replayed))) = outcome {
            assert!(
                replayed as u64 <= n,
                "seed {seed}: {replayed} of {n} replayed"
            );
        }
    }
}
