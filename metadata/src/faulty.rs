//! A memory store whose updates, commits and checkpoints fail on demand: what a full or
//! failing metadata disk does, for tests of the layers above a store.

use crate::{Durability, KvStore, MemStore, MetaError, Result, UpdateFn, ViewFn};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct FaultyStore {
    inner: MemStore,
    /// While set, every update fails before its transaction runs.
    pub fail_updates: AtomicBool,
    /// The next update fails after its transaction ran (its commit fails); this then clears.
    pub fail_next_commit: AtomicBool,
    /// While set, every checkpoint ([`KvStore::persist`]) fails.
    pub fail_persist: AtomicBool,
}

impl KvStore for FaultyStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        self.inner.view(f)
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        if self.fail_updates.load(Ordering::SeqCst) {
            return Err(MetaError::Io("injected fault: update failed".into()));
        }
        self.inner.update(durability, &mut |t| {
            f(t)?;
            if self.fail_next_commit.swap(false, Ordering::SeqCst) {
                return Err(MetaError::Io(
                    "injected fault: commit failed, no space left".into(),
                ));
            }
            Ok(())
        })
    }

    fn persist(&self) -> Result<()> {
        if self.fail_persist.load(Ordering::SeqCst) {
            return Err(MetaError::Io(
                "injected fault: no space left on the metadata disk".into(),
            ));
        }
        self.inner.persist()
    }

    fn describe(&self) -> String {
        "faulty://".into()
    }
}
