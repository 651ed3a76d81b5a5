//! A store for power-cut tests: commits are visible at once, durable only at a checkpoint
//! (a `Durable` commit or [`KvStore::persist`]), as in redb; every checkpoint is recorded with
//! a number from a clock the test shares with its other recorders (the simulated staging
//! device), so that a test can reopen the store as a power cut before any event left it.
//! Checkpoints can be made to fail (a full or failing metadata disk): the store then stays at
//! its last durable state, and a cut reverts to it.

use crate::{Durability, KvStore, MemStore, MetaError, Result, UpdateFn, ViewFn};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type Snapshot = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

pub struct CrashStore {
    live: MemStore,
    clock: Arc<AtomicU64>,
    /// Every durable state, with the number of the event that made it so, oldest first.
    checkpoints: Mutex<Vec<(u64, Snapshot)>>,
    failing: AtomicBool,
}

impl CrashStore {
    /// A store holding `initial` as its durable state (before event 0).
    pub fn new(initial: BTreeMap<Vec<u8>, Vec<u8>>, clock: Arc<AtomicU64>) -> CrashStore {
        let snapshot = Arc::new(initial.clone());
        CrashStore {
            live: MemStore::from_map(initial),
            clock,
            checkpoints: Mutex::new(vec![(0, snapshot)]),
            failing: AtomicBool::new(false),
        }
    }

    /// Every key and value of `store` (to start a [`CrashStore`] from a formatted volume).
    pub fn copy_of(store: &dyn KvStore) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        store.view(&mut |r| {
            out = r.scan(&[], &[0xff; 64], usize::MAX)?.into_iter().collect();
            Ok(())
        })?;
        Ok(out)
    }

    /// While set, checkpoints fail with an I/O error and leave the durable state as it was.
    pub fn fail_checkpoints(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// What a power cut just before event `at` leaves: the last checkpoint made before it.
    pub fn durable_before(&self, at: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let cps = self.checkpoints.lock();
        let i = cps.partition_point(|(n, _)| *n < at);
        // The initial state is numbered 0 and always kept.
        (*cps[i.saturating_sub(1)].1).clone()
    }

    /// The event numbers of the checkpoints made so far (the initial state's is 0).
    pub fn checkpoint_events(&self) -> Vec<u64> {
        self.checkpoints.lock().iter().map(|(n, _)| *n).collect()
    }

    fn checkpoint(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(MetaError::Io(
                "injected fault: metadata checkpoint failed".into(),
            ));
        }
        // One checkpoint at a time, numbered in the order their states were taken.
        let mut cps = self.checkpoints.lock();
        let snapshot = Arc::new(self.live.snapshot());
        let at = self.clock.fetch_add(1, Ordering::SeqCst);
        cps.push((at, snapshot));
        Ok(())
    }
}

impl KvStore for CrashStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        self.live.view(f)
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        if durability == Durability::Durable && self.failing.load(Ordering::SeqCst) {
            // A durable commit that cannot reach the disk does not commit at all (redb).
            return Err(MetaError::Io(
                "injected fault: durable metadata commit failed".into(),
            ));
        }
        self.live.update(durability, f)?;
        if durability == Durability::Durable {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        self.checkpoint()
    }

    fn describe(&self) -> String {
        "crash://".into()
    }
}
