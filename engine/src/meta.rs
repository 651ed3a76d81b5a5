//! The metadata store as the engine's components use it: reads and transactions that return
//! the engine's errors, the "changed since the last checkpoint" flag, and the refusal of
//! changes once the engine has shut down.

use crate::error::{FsError, Result};
use spoolfs_metadata::{Durability, KvRead, KvStore, KvTxn, MetaError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most rows one background transaction (an upload's commit, a batch of hold drops) reads on
/// a shared store; larger batches are split. PostgreSQL's serializable transactions lock what
/// they read, row by row up to about 32 rows of a table (`max_pred_locks_per_relation`), then
/// the whole table: one transaction that read a few thousand rows conflicted with every create
/// of every node, ran again until it gave up, and slowed everyone while it did.
pub(crate) const SHARED_BATCH_ROWS: usize = 16;

pub(crate) struct Meta {
    store: Arc<dyn KvStore>,
    /// Changes committed since the last checkpoint.
    dirty: AtomicBool,
    /// Changes are refused: the engine has shut down.
    closed: AtomicBool,
}

impl Meta {
    pub fn new(store: Arc<dyn KvStore>) -> Meta {
        Meta {
            store,
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// The store itself, for what bypasses the engine's rules (start-up, checkpoints, ids).
    pub fn store(&self) -> &dyn KvStore {
        self.store.as_ref()
    }

    pub fn view<T>(&self, f: impl Fn(&dyn KvRead) -> Result<T, MetaError>) -> Result<T> {
        read_with(|g| self.store.view(g), f)
    }

    /// [`Meta::view`] for a scan of a large part of the volume: it does not hold up metadata
    /// commits while it runs (see [`KvStore::view_long`]).
    pub fn view_long<T>(&self, f: impl Fn(&dyn KvRead) -> Result<T, MetaError>) -> Result<T> {
        read_with(|g| self.store.view_long(g), f)
    }

    pub fn update<T>(&self, f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>) -> Result<T> {
        self.update_with(Durability::Visible, f)
    }

    pub fn update_with<T>(
        &self,
        durability: Durability,
        mut f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<T> {
        self.guarded(|| {
            let mut out = None;
            self.store.update(durability, &mut |t| {
                out = Some(f(t)?);
                Ok(())
            })?;
            Ok(out.expect("update ran"))
        })
    }

    /// Runs `commit`, a change of the store made some way other than [`Meta::update_with`]
    /// (the namespace log's deferred update), under the same rules: refused once the engine
    /// has shut down, and marking the metadata changed.
    pub fn guarded<T>(&self, commit: impl FnOnce() -> Result<T>) -> Result<T> {
        self.refuse_if_closed()?;
        let out = commit()?;
        self.mark_dirty();
        Ok(out)
    }

    /// Changes after the engine's shutdown (a process still writing to a lazily detached
    /// mount) fail with EROFS: the uploaders and the checkpoint thread are gone.
    pub fn refuse_if_closed(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(FsError::new(
                libc::EROFS,
                "the file system is unmounting: no more changes",
            ));
        }
        Ok(())
    }

    /// From now on changes are refused.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A change reached the store other than through [`Meta::update`].
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Checkpoints: makes everything committed durable in the store itself.
    pub fn persist(&self) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        self.store.persist()?;
        Ok(())
    }
}

/// Runs `f` in a read of the metadata store made by `read` (a view or a long view) and
/// returns what it returned.
fn read_with<T>(
    read: impl FnOnce(&mut dyn FnMut(&dyn KvRead) -> Result<(), MetaError>) -> Result<(), MetaError>,
    f: impl Fn(&dyn KvRead) -> Result<T, MetaError>,
) -> Result<T> {
    let mut out = None;
    read(&mut |r| {
        out = Some(f(r)?);
        Ok(())
    })?;
    Ok(out.expect("view ran"))
}
