//! The garbage collector deletes a dead slice's objects only once the metadata change that
//! killed the slice is durable: a crash before that change reached the disk brings the file
//! back, and it must still find its data.

use futures::stream::{BoxStream, StreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use spoolfs_engine::*;
use spoolfs_metadata::{Durability, Entries, KvRead, KvStore, KvTxn, MetaError, UpdateFn, ViewFn};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::store::Intercept;
use common::{Volume as Fixture, create_file};
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;

/// Which dead slices (`G` records) were committed, and which of them a checkpoint or a flush
/// made durable since.
#[derive(Default, Debug)]
struct DeadLedger {
    committed: HashSet<u64>,
    durable: HashSet<u64>,
}

fn dead_id(key: &[u8]) -> Option<u64> {
    (key.first() == Some(&b'G') && key.len() >= 9)
        .then(|| u64::from_be_bytes(key[1..9].try_into().unwrap()))
}

/// A metadata store that keeps a [`DeadLedger`].
struct Recording {
    inner: Arc<dyn KvStore>,
    ledger: Arc<Mutex<DeadLedger>>,
}

/// A write transaction that notes the `G` records it writes.
struct NotingTxn<'a> {
    inner: &'a mut dyn KvTxn,
    dead: &'a mut Vec<u64>,
}

impl KvRead for NotingTxn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, MetaError> {
        self.inner.scan(start, end, limit)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, MetaError> {
        self.inner.scan_back(start, end, limit)
    }
}

impl KvTxn for NotingTxn<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
        self.dead.extend(dead_id(key));
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<(), MetaError> {
        self.inner.delete(key)
    }
}

impl Recording {
    /// Runs `flush` (a persist or a sync): everything committed before the call is durable
    /// once it returns.
    fn making_durable(
        &self,
        flush: impl FnOnce() -> Result<(), MetaError>,
    ) -> Result<(), MetaError> {
        let before: Vec<u64> = self
            .ledger
            .lock()
            .unwrap()
            .committed
            .iter()
            .copied()
            .collect();
        flush()?;
        self.ledger.lock().unwrap().durable.extend(before);
        Ok(())
    }

    fn checkpointed(&self) {
        let mut l = self.ledger.lock().unwrap();
        let committed: Vec<u64> = l.committed.iter().copied().collect();
        l.durable.extend(committed);
    }
}

impl KvStore for Recording {
    fn view(&self, f: ViewFn<'_>) -> Result<(), MetaError> {
        self.inner.view(f)
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<(), MetaError> {
        let mut dead = Vec::new();
        self.inner.update(durability, &mut |t| {
            // The closure may run again: only the last run's writes commit.
            dead.clear();
            f(&mut NotingTxn {
                inner: t,
                dead: &mut dead,
            })
        })?;
        self.ledger.lock().unwrap().committed.extend(dead);
        if durability == Durability::Durable {
            self.checkpointed();
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), MetaError> {
        self.making_durable(|| self.inner.persist())
    }

    fn sync(&self) -> Result<(), MetaError> {
        self.making_durable(|| self.inner.sync())
    }

    fn describe(&self) -> String {
        format!("recording({})", self.inner.describe())
    }
}

/// An object store that checks every deleted block object against the ledger.
#[derive(Debug)]
struct Checked {
    ledger: Arc<Mutex<DeadLedger>>,
    /// Block objects deleted while their slice's `G` record was not yet durable.
    early: Arc<Mutex<Vec<String>>>,
    /// Block objects deleted in all.
    deleted: Arc<Mutex<u64>>,
}

/// The slice id of a block object's key (`chunks/…/SLICE_INDEX_LEN`).
fn block_slice(key: &str) -> Option<u64> {
    if !key.starts_with("chunks/") {
        return None;
    }
    key.rsplit('/').next()?.split('_').next()?.parse().ok()
}

impl Intercept for Checked {
    const NAME: &'static str = "checked";

    fn delete_stream(
        &self,
        inner: &dyn ObjectStore,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let ledger = self.ledger.clone();
        let early = self.early.clone();
        let deleted = self.deleted.clone();
        let checked = locations.map(move |l| {
            if let Ok(p) = &l
                && let Some(slice) = block_slice(p.as_ref())
            {
                *deleted.lock().unwrap() += 1;
                if !ledger.lock().unwrap().durable.contains(&slice) {
                    early.lock().unwrap().push(p.to_string());
                }
            }
            l
        });
        inner.delete_stream(checked.boxed())
    }
}

/// Files are written and closed (standard mode: their blocks are in the object store and the
/// metadata is checkpointed), then overwritten and deleted: the deletes' deaths are committed
/// but not durable when the collector runs at once. It must make them durable before it deletes.
#[test]
fn dead_objects_are_deleted_only_after_their_death_is_durable() {
    let f = Fixture::new();
    let ledger = Arc::new(Mutex::new(DeadLedger::default()));
    let meta: Arc<dyn KvStore> = Arc::new(Recording {
        inner: f.meta(),
        ledger: ledger.clone(),
    });
    let early = Arc::new(Mutex::new(Vec::new()));
    let deleted = Arc::new(Mutex::new(0));
    let storage = f.intercepted_storage(Checked {
        ledger: ledger.clone(),
        early: early.clone(),
        deleted: deleted.clone(),
    });
    let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
    let config = EngineConfig {
        // No background checkpoint or collection: the test runs the collector itself, right
        // after the deaths.
        meta_flush_interval: Duration::from_secs(3600),
        compaction: None,
        ..Default::default()
    };
    let e = Engine::start(meta, storage, record, config).unwrap();
    // Several blocks a file (64 KiB blocks).
    let size = 200_000;
    let mut inos = Vec::new();
    for i in 0..20u64 {
        let name = format!("f{i}");
        inos.push(create_file(&e, &name, &random_bytes(i, size)));
    }
    // Overwrites first: a close in standard mode checkpoints the metadata, so the unlinks,
    // which do not, are the deaths still in memory when the collector runs.
    for (i, ino) in inos.iter().enumerate().skip(10) {
        let fh = e.open(&ME, *ino, libc::O_RDWR).unwrap();
        e.write(&ME, *ino, fh, 0, &random_bytes(100 + i as u64, size))
            .unwrap();
        e.flush(*ino, fh).unwrap();
        e.release(*ino, fh).unwrap();
    }
    for i in 0..10u64 {
        e.unlink(&ME, ROOT_INO, format!("f{i}").as_bytes()).unwrap();
    }
    {
        let l = ledger.lock().unwrap();
        let fresh = l.committed.difference(&l.durable).count();
        assert!(
            fresh >= 10,
            "{fresh} deaths not yet durable: the test shows nothing"
        );
    }
    let committed = ledger.lock().unwrap().committed.len();
    assert!(committed >= 20, "{committed} deaths recorded");
    let removed = e.collect_garbage(usize::MAX).unwrap();
    assert_eq!(removed, committed);
    assert_eq!(e.pending_deletes().unwrap(), 0);
    let n = *deleted.lock().unwrap();
    assert!(n >= 20 * 3, "only {n} block objects deleted");
    let early = early.lock().unwrap();
    assert!(
        early.is_empty(),
        "{} of {n} block objects were deleted while the change that killed their slice was \
         not durable, e.g. {:?}",
        early.len(),
        &early[..early.len().min(3)]
    );
    for (i, ino) in inos.iter().enumerate().skip(10) {
        let fh = e.open(&ME, *ino, libc::O_RDONLY).unwrap();
        let got = e.read(*ino, fh, 0, size as u32).unwrap();
        e.release(*ino, fh).unwrap();
        assert!(
            got == random_bytes(100 + i as u64, size),
            "f{i} reads back wrong"
        );
    }
    e.shutdown().unwrap();
}
