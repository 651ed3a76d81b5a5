//! The metadata store: a transactional, ordered key-value store behind one small trait.
//!
//! The file system (in `spoolfs-engine`) only ever talks to [`KvStore`]. Keys and values are
//! byte strings; keys are ordered bytewise so range scans list a directory or a file's chunks.
//! A transaction is a closure: backends with optimistic concurrency (a shared SQL engine) may
//! run it more than once, so the closure must not have side effects outside the transaction.
//!
//! Backends: [`RedbStore`] (embedded, the default) and [`MemStore`] (tests).

mod buffered;
mod crash;
mod mem;
mod redb_store;

pub use buffered::BufferedStore;
pub use crash::CrashStore;

pub use mem::MemStore;
pub use redb_store::RedbStore;

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the metadata store. Every variant maps to an errno for the file system.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(
        "metadata store at {path} is already in use by another process (is the volume already mounted?)"
    )]
    Locked { path: String },
    #[error("metadata store I/O error: {0}")]
    Io(String),
    #[error("metadata store is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid metadata URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Raised by transaction closures to abort with an errno (ENOENT, EEXIST, ...).
    #[error("{1}")]
    Errno(i32, String),
}

impl MetaError {
    /// The errno a file system call should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::Errno(e, _) => *e,
            MetaError::Locked { .. } => libc_consts::EBUSY,
            MetaError::BadUrl { .. } => libc_consts::EINVAL,
            MetaError::Io(_) | MetaError::Corrupt(_) => libc_consts::EIO,
        }
    }
}

/// The errno values this crate needs, without depending on libc.
mod libc_consts {
    pub const EBUSY: i32 = 16;
    pub const EINVAL: i32 = 22;
    pub const EIO: i32 = 5;
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// How durable a committed write transaction must be when `update` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Visible to every later transaction; on the disk after the next [`KvStore::persist`]
    /// (the store does that at least every flush interval).
    Visible,
    /// On stable storage when `update` returns.
    Durable,
}

/// Reads inside a transaction.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys in `[start, end)` in order, at most `limit` of them.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Keys in `[start, end)` in reverse order (the last first), at most `limit` of them.
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// Reads and writes inside a write transaction.
pub trait KvTxn: KvRead {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn delete(&mut self, key: &[u8]) -> Result<()>;
}

/// A transactional ordered key-value store.
pub trait KvStore: Send + Sync {
    /// Runs `f` in a read-only snapshot.
    fn view(&self, f: &mut dyn FnMut(&dyn KvRead) -> Result<()>) -> Result<()>;
    /// Runs `f` in a serializable write transaction and commits it if `f` returns `Ok`.
    /// `f` may be run more than once.
    fn update(
        &self,
        durability: Durability,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()>;
    /// Makes every committed transaction durable (a checkpoint: the store's own fsync).
    /// A read-only view that may take long (a scan of every slice or pack of the volume):
    /// the same consistent snapshot as [`KvStore::view`], taken so that it never holds up
    /// writers for its duration.
    fn view_long(&self, f: &mut dyn FnMut(&dyn KvRead) -> Result<()>) -> Result<()> {
        self.view(f)
    }
    /// Committed changes that live only in memory until the next [`KvStore::persist`] (a
    /// memtable, see [`BufferedStore`]); 0 for a store that writes every commit.
    fn unapplied_changes(&self) -> u64 {
        0
    }
    fn persist(&self) -> Result<()>;
    /// Makes every committed transaction crash-safe by the cheapest means the store has
    /// (a write-ahead log's device flush); by default, `persist`.
    fn sync(&self) -> Result<()> {
        self.persist()
    }
    /// A human-readable description (never containing secrets).
    fn describe(&self) -> String;
}

/// Opens a metadata store from its URL: `redb:///abs/path/meta.redb` or `memory://`.
pub fn open_store(url: &str) -> Result<Arc<dyn KvStore>> {
    let bad = |reason: &str| MetaError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "redb" => {
            let path = redb_path(&parsed).ok_or_else(|| bad("expected redb:///absolute/path"))?;
            Ok(Arc::new(RedbStore::open(&path)?))
        }
        "memory" => Ok(Arc::new(MemStore::default())),
        other => Err(bad(&format!(
            "unknown scheme {other:?}; supported: redb:///path, memory://"
        ))),
    }
}

fn redb_path(url: &url::Url) -> Option<PathBuf> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return None;
    }
    let path = url.path();
    if path.is_empty() || path == "/" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The exclusive end of the range of keys that start with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn KvStore) {
        store
            .update(Durability::Durable, &mut |t| {
                t.put(b"a/1", b"one")?;
                t.put(b"a/2", b"two")?;
                t.put(b"b/1", b"three")?;
                Ok(())
            })
            .unwrap();
        // An aborted transaction leaves nothing behind.
        let err = store.update(Durability::Visible, &mut |t| {
            t.put(b"a/3", b"x")?;
            // Reads inside a transaction see its own writes, both ways.
            assert_eq!(t.scan_back(b"a/", b"a/4", 1)?[0].0, b"a/3".to_vec());
            t.delete(b"a/2")?;
            assert_eq!(
                t.scan_back(b"a/", b"a/3", 5)?,
                vec![(b"a/1".to_vec(), b"one".to_vec())]
            );
            Err(MetaError::Errno(17, "exists".into()))
        });
        assert_eq!(err.unwrap_err().errno(), 17);
        let mut seen = Vec::new();
        store
            .view(&mut |r| {
                seen = r.scan(b"a/", &prefix_end(b"a/"), 10)?;
                let back = r.scan_back(b"a/", &prefix_end(b"a/"), 1)?;
                assert_eq!(back, vec![(b"a/2".to_vec(), b"two".to_vec())]);
                assert_eq!(r.get(b"b/1")?.as_deref(), Some(&b"three"[..]));
                assert_eq!(r.get(b"zz")?, None);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (b"a/1".to_vec(), b"one".to_vec()),
                (b"a/2".to_vec(), b"two".to_vec())
            ]
        );
        store
            .update(Durability::Visible, &mut |t| t.delete(b"a/1"))
            .unwrap();
        store
            .view(&mut |r| {
                assert_eq!(r.scan(b"a/", &prefix_end(b"a/"), 1)?.len(), 1);
                assert_eq!(r.get(b"a/1")?, None);
                Ok(())
            })
            .unwrap();
        store.persist().unwrap();
    }

    #[test]
    fn memory_store_semantics() {
        exercise(&MemStore::default());
    }

    #[test]
    fn crash_store_semantics_and_cuts() {
        let clock = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let store = CrashStore::new(Default::default(), clock.clone());
        exercise(&store);
        store
            .update(Durability::Visible, &mut |t| t.put(b"v", b"1"))
            .unwrap();
        let before_durable = clock.load(std::sync::atomic::Ordering::SeqCst);
        store
            .update(Durability::Durable, &mut |t| t.put(b"d", b"2"))
            .unwrap();
        store
            .update(Durability::Visible, &mut |t| t.put(b"lost", b"3"))
            .unwrap();
        // A failing checkpoint leaves the durable state as it was.
        store.fail_checkpoints(true);
        assert!(store.persist().is_err());
        assert!(
            store
                .update(Durability::Durable, &mut |t| t.put(b"x", b"4"))
                .is_err()
        );
        let after = store.durable_before(u64::MAX);
        assert_eq!(after.get(&b"d"[..]).map(|v| &v[..]), Some(&b"2"[..]));
        assert_eq!(after.get(&b"v"[..]).map(|v| &v[..]), Some(&b"1"[..]));
        assert!(!after.contains_key(&b"lost"[..]));
        assert!(!after.contains_key(&b"x"[..]));
        let before = store.durable_before(before_durable);
        assert!(!before.contains_key(&b"d"[..]));
    }

    #[test]
    fn buffered_store_semantics() {
        exercise(&BufferedStore::new(Arc::new(MemStore::default())));
        // The same with a persist after every step: reads then come from the inner store.
        let store = BufferedStore::new(Arc::new(MemStore::default()));
        exercise(&store);
        store.persist().unwrap();
        assert_eq!(store.buffered(), 0);
        exercise(&store);
    }

    #[test]
    fn redb_store_semantics_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            exercise(&store);
            // A second opener of the same file is refused with a clear error.
            let err = RedbStore::open(&path).err().expect("second open must fail");
            assert!(matches!(err, MetaError::Locked { .. }), "{err}");
        }
        let store = RedbStore::open(&path).unwrap();
        store
            .view(&mut |r| {
                assert_eq!(r.get(b"a/2")?.as_deref(), Some(&b"two"[..]));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn urls() {
        assert!(open_store("memory://").is_ok());
        assert!(matches!(
            open_store("postgres://x").err().unwrap(),
            MetaError::BadUrl { .. }
        ));
        assert!(matches!(
            open_store("redb://host/x").err().unwrap(),
            MetaError::BadUrl { .. }
        ));
        assert!(open_store("not a url").is_err());
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
