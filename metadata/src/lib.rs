//! The metadata store: a transactional, ordered key-value store behind one small trait.
//!
//! The file system (in `spoolfs-engine`) only ever talks to [`KvStore`]. Keys and values are
//! byte strings; keys are ordered bytewise so range scans list a directory or a file's chunks.
//! A transaction is a closure: backends with optimistic concurrency (a shared SQL engine) may
//! run it more than once, so the closure must not have side effects outside the transaction.
//!
//! Backends: [`RedbStore`] (embedded, the default, one mount at a time), [`PgStore`]
//! (PostgreSQL, shared by many mounts) and [`MemStore`] (tests).

mod buffered;
mod crash;
mod faulty;
mod known;
mod mem;
mod pgpass;
mod pgtls;
mod postgres;
mod redb_store;
mod write_set;

pub use buffered::BufferedStore;
pub use crash::CrashStore;
pub use faulty::FaultyStore;

pub use mem::MemStore;
pub use pgtls::{SslMode, TlsParams};
pub use postgres::{PgOptions, PgStore, SCHEMA_VERSION, SchemaMode, redact};
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
    /// The store cannot be reached or refuses the login.
    #[error("{0}")]
    Unavailable(String),
    /// The store has no spoolfs schema, or one of another version.
    #[error("{0}")]
    Schema(String),
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
            MetaError::BadUrl { .. } | MetaError::Schema(_) => libc_consts::EINVAL,
            MetaError::Unavailable(_) => libc_consts::EIO,
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

/// Key-value pairs in the order a scan returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The body of a read-only transaction ([`KvStore::view`]).
pub type ViewFn<'a> = &'a mut dyn FnMut(&dyn KvRead) -> Result<()>;

/// The body of a write transaction ([`KvStore::update`]); it may run more than once.
pub type UpdateFn<'a> = &'a mut dyn FnMut(&mut dyn KvTxn) -> Result<()>;

/// How durable a committed write transaction must be when `update` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Visible to every later transaction; on the disk after the next [`KvStore::persist`]
    /// (the store does that at least every flush interval).
    Visible,
    /// On stable storage when `update` returns.
    Durable,
}

/// What a store counts about its work (all zero for an embedded store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Network round trips to the database (a pipelined batch of statements is one).
    pub round_trips: u64,
    /// Transactions run, retries included.
    pub transactions: u64,
    /// Transactions run again after a serialization failure or a deadlock.
    pub retries: u64,
    /// Connections opened.
    pub connections: u64,
    /// Optimistic commits that found a row read from the process's memory changed in the
    /// database, and ran again reading it.
    pub optimistic_misses: u64,
    /// Explicit waits for the database's durable flush ([`KvStore::persist`], [`KvStore::sync`]).
    pub flushes: u64,
    /// Commits with writes that waited for the database's durable flush (the others are
    /// committed, visible to every node, and made durable by the next flush or waited commit).
    pub waited_commits: u64,
}

/// Reads inside a transaction.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys in `[start, end)` in order, at most `limit` of them.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries>;
    /// Keys in `[start, end)` in reverse order (the last first), at most `limit` of them.
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries>;
    /// Says which keys and which whole ranges `[start, end)` the transaction is about to read,
    /// so that a store across a network fetches them all in one round trip; later reads of
    /// them are served from what was fetched. Reads return the same with or without it; a
    /// local store ignores it.
    fn prefetch(&self, keys: &[&[u8]], ranges: &[(&[u8], &[u8])]) -> Result<()> {
        let _ = (keys, ranges);
        Ok(())
    }
    /// On a store shared by many processes, a number that differs between them and between
    /// transactions of one process running at once (a process draws its numbers when it opens
    /// the store): counters that every process updates are kept as one row per shard, so that
    /// writers do not conflict on one row. `None` for an exclusive store.
    fn counter_shard(&self) -> Option<u32> {
        None
    }
    /// Tells the store that the caller knows `[start, end)` held no row when the transaction
    /// began (the prefix of an id it has just allocated): a store that remembers what it read
    /// may remember that too, and a later transaction reads that range without a round trip.
    /// Reads and results are the same with or without it (a wrong note costs a round trip).
    fn note_empty(&self, start: &[u8], end: &[u8]) {
        let _ = (start, end);
    }
    /// Tells the store that the caller expects `key` to be absent (the entry a create is about
    /// to make): a store that checks what it read at commit may read it as absent without
    /// asking, when it remembers nothing of it. Reads and results are the same with or
    /// without it (a wrong expectation costs a round trip).
    fn expect_absent(&self, key: &[u8]) {
        let _ = key;
    }
    /// What the store remembers of `key` from earlier transactions of this process (`None`:
    /// nothing; `Some(None)`: absent), possibly out of date: only to guess what else to
    /// prefetch (the inode an entry probably names), never to decide anything.
    fn guess(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let _ = key;
        None
    }
}

/// Reads and writes inside a write transaction.
pub trait KvTxn: KvRead {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn delete(&mut self, key: &[u8]) -> Result<()>;
}

/// A transactional ordered key-value store.
pub trait KvStore: Send + Sync {
    /// Runs `f` in a read-only snapshot.
    fn view(&self, f: ViewFn<'_>) -> Result<()>;
    /// Runs `f` in a serializable write transaction and commits it if `f` returns `Ok`.
    /// `f` may be run more than once.
    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()>;
    /// Makes every committed transaction durable (a checkpoint: the store's own fsync).
    /// A read-only view that may take long (a scan of every slice or pack of the volume):
    /// the same consistent snapshot as [`KvStore::view`], taken so that it never holds up
    /// writers for its duration.
    fn view_long(&self, f: ViewFn<'_>) -> Result<()> {
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
    /// Whether other processes (other nodes) may change the store while this one uses it: then
    /// every transaction must commit in the store itself before it returns (no memtable, no
    /// local log in front of it), and nothing read may be trusted past the transaction.
    fn is_shared(&self) -> bool {
        false
    }
    /// Round trips and retries so far.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Opens a metadata store from its URL: `redb:///abs/path/meta.redb`,
/// `postgres://USER@HOST:PORT/DB` (or `postgresql://`) or `memory://`. A PostgreSQL database
/// must hold the spoolfs schema of this version (see [`format_store`]).
pub fn open_store(url: &str) -> Result<Arc<dyn KvStore>> {
    open_store_with(url, SchemaMode::Require)
}

/// [`open_store`] for `spoolfs format`: creates the schema of a PostgreSQL database that has
/// none (and still refuses one of another version).
pub fn format_store(url: &str) -> Result<Arc<dyn KvStore>> {
    open_store_with(url, SchemaMode::Create)
}

fn open_store_with(url: &str, mode: SchemaMode) -> Result<Arc<dyn KvStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStore::open(url, mode)?));
    }
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
            "unknown scheme {other:?}; supported: redb:///path, postgres://USER@HOST:PORT/DB, \
             memory://"
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

    /// A fresh database with the schema, or `None` (skipped) without PostgreSQL.
    fn postgres_url() -> Option<String> {
        let server = spoolfs_testkit::pg::server(module_path!())?;
        Some(server.url(&server.new_database()))
    }

    #[test]
    fn postgres_store_semantics_and_round_trips() {
        let Some(url) = postgres_url() else { return };
        let err = open_store(&url)
            .err()
            .expect("a database without the schema is refused");
        assert!(matches!(err, MetaError::Schema(_)), "{err}");
        assert!(err.to_string().contains("spoolfs format"), "{err}");
        let store = format_store(&url).unwrap();
        assert!(store.is_shared());
        assert!(!store.describe().contains(spoolfs_testkit::pg::PASSWORD));
        exercise(store.as_ref());
        // Formatting again keeps the data; a second opener (another node) sees every commit.
        drop(format_store(&url).unwrap());
        let other = open_store(&url).unwrap();
        other
            .view(&mut |r| {
                assert_eq!(r.get(b"a/2")?.as_deref(), Some(&b"two"[..]));
                assert_eq!(r.get(b"a/1")?, None);
                Ok(())
            })
            .unwrap();

        // Scans merge the transaction's own writes with stored rows, deletes hiding rows.
        store
            .update(Durability::Visible, &mut |t| {
                for i in 0..20u8 {
                    t.put(&[b's', i], &[i])?;
                }
                Ok(())
            })
            .unwrap();
        store
            .update(Durability::Visible, &mut |t| {
                for i in 0..5u8 {
                    t.delete(&[b's', i])?;
                }
                t.put(&[b's', 7], b"new")?;
                t.put(&[b's', 30], b"late")?;
                let first: Vec<u8> = t.scan(b"s", b"t", 3)?.iter().map(|(k, _)| k[1]).collect();
                assert_eq!(first, vec![5, 6, 7]);
                assert_eq!(t.scan(b"s", b"t", 3)?[2].1, b"new".to_vec());
                let last: Vec<u8> = t
                    .scan_back(b"s", b"t", 2)?
                    .iter()
                    .map(|(k, _)| k[1])
                    .collect();
                assert_eq!(last, vec![30, 19]);
                assert_eq!(t.scan(b"s", b"t", 100)?.len(), 16);
                Err(MetaError::Errno(125, "cancel".into()))
            })
            .unwrap_err();

        // Round trips: a read is one, buffered writes ride with COMMIT in one more.
        let rt = |s: &dyn KvStore| s.stats().round_trips;
        let before = rt(store.as_ref());
        store
            .update(Durability::Visible, &mut |t| t.put(b"x", b"1"))
            .unwrap();
        assert_eq!(rt(store.as_ref()) - before, 1, "a blind write");
        let before = rt(store.as_ref());
        store
            .update(Durability::Durable, &mut |t| {
                let v = t.get(b"x")?.unwrap();
                t.put(b"x", &[v[0] + 1])?;
                t.put(b"y", b"2")?;
                t.delete(b"a/2")
            })
            .unwrap();
        assert_eq!(
            rt(store.as_ref()) - before,
            1,
            "a read of a key this process wrote last is checked in the commit's round trip"
        );
        let before = rt(store.as_ref());
        store
            .view(&mut |r| {
                assert_eq!(r.get(b"x")?.as_deref(), Some(&b"2"[..]));
                Ok(())
            })
            .unwrap();
        assert_eq!(rt(store.as_ref()) - before, 1, "a view of one read");

        // Prefetched keys and ranges cost one round trip together; reads of them none, and
        // they read as without the prefetch (absent keys too, own writes on top).
        let before = rt(store.as_ref());
        store
            .update(Durability::Visible, &mut |t| {
                t.put(&[b's', 6], b"mine")?;
                t.prefetch(&[b"x", b"absent"], &[(b"s", b"t")])?;
                assert_eq!(t.get(b"x")?.as_deref(), Some(&b"2"[..]));
                assert_eq!(t.get(b"absent")?, None);
                assert_eq!(t.get(&[b's', 9])?.as_deref(), Some(&[9u8][..]));
                assert_eq!(t.get(&[b's', 99])?, None);
                let first: Vec<u8> = t.scan(b"s", b"t", 3)?.iter().map(|(k, _)| k[1]).collect();
                assert_eq!(first, vec![0, 1, 2]);
                assert_eq!(t.scan(&[b's', 6], b"t", 1)?[0].1, b"mine".to_vec());
                let last = t.scan_back(b"s", &[b's', 10], 1)?;
                assert_eq!(last, vec![(vec![b's', 9], vec![9u8])]);
                t.delete(b"x")
            })
            .unwrap();
        assert_eq!(
            rt(store.as_ref()) - before,
            2,
            "prefetch, then write and commit"
        );
        assert_eq!(store.stats().optimistic_misses, 0);
    }

    /// A key remembered by one store handle (one node) and changed by another: the first
    /// handle's next update reads the remembered value, its commit finds it changed and the
    /// update runs again on the database's value. No update is lost, no error surfaces.
    #[test]
    fn postgres_a_remembered_row_changed_elsewhere_is_read_again() {
        let Some(url) = postgres_url() else { return };
        let a = format_store(&url).unwrap();
        let b = open_store(&url).unwrap();
        let get_n = |t: &dyn KvRead, k: &[u8]| -> Result<u64> {
            Ok(t.get(k)?
                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                .unwrap_or(0))
        };
        let add = |s: &dyn KvStore, k: &[u8], by: u64| {
            let mut runs = 0;
            s.update(Durability::Visible, &mut |t| {
                runs += 1;
                let n = get_n(t, k)?;
                t.put(k, &(n + by).to_be_bytes())
            })
            .unwrap();
            runs
        };
        let rt = |s: &dyn KvStore| s.stats().round_trips;
        assert_eq!(add(a.as_ref(), b"n", 1), 1);
        // Nothing changed elsewhere: one round trip, the read checked in the commit.
        let before = rt(a.as_ref());
        assert_eq!(add(a.as_ref(), b"n", 1), 1);
        assert_eq!(rt(a.as_ref()) - before, 1);
        // B changes it: A's remembered 2 is stale; A runs again and adds to B's 12.
        assert_eq!(add(b.as_ref(), b"n", 10), 1);
        assert_eq!(add(a.as_ref(), b"n", 100), 2);
        assert_eq!(a.stats().optimistic_misses, 1, "{:?}", a.stats());
        assert_eq!(a.stats().retries, 0, "a miss is not a conflict");
        let mut n = 0;
        b.view(&mut |r| {
            n = get_n(r, b"n")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 112);
        // A remembered absence, then B creates the key: A's create-if-absent sees it.
        a.update(Durability::Visible, &mut |t| {
            assert_eq!(t.get(b"slot")?, None);
            Ok(())
        })
        .unwrap();
        b.update(Durability::Visible, &mut |t| t.put(b"slot", b"b"))
            .unwrap();
        let mut claimed_by_a = false;
        a.update(Durability::Visible, &mut |t| {
            claimed_by_a = t.get(b"slot")?.is_none();
            if claimed_by_a {
                t.put(b"slot", b"a")?;
            }
            Ok(())
        })
        .unwrap();
        assert!(!claimed_by_a, "A overwrote B's slot");
        // An error drawn from a remembered row is checked against the database: B deletes
        // the key A remembers present, A's "must exist" check fails on the database's answer,
        // and after B puts it back, A's next "must be absent" check is not fooled either.
        b.update(Durability::Visible, &mut |t| t.delete(b"slot"))
            .unwrap();
        a.update(Durability::Visible, &mut |t| {
            if t.get(b"slot")?.is_some() {
                return Err(MetaError::Errno(17, "exists".into()));
            }
            t.put(b"slot", b"a")
        })
        .unwrap();
        let misses = a.stats().optimistic_misses;
        eprintln!("optimistic misses: {misses}, stats {:?}", a.stats());
        // Ranges: a prefetched range remembered by A, a row added to it by B.
        a.update(Durability::Visible, &mut |t| {
            t.put(b"r/1", b"1")?;
            t.put(b"r/2", b"2")
        })
        .unwrap();
        let count_range = |s: &dyn KvStore| {
            let mut runs = 0;
            let mut count = 0;
            s.update(Durability::Visible, &mut |t| {
                runs += 1;
                t.prefetch(&[], &[(b"r/", b"r0")])?;
                count = t.scan(b"r/", b"r0", 100)?.len();
                t.put(b"r-count", &[count as u8])
            })
            .unwrap();
            (count, runs)
        };
        assert_eq!(count_range(a.as_ref()), (2, 1));
        let before = rt(a.as_ref());
        assert_eq!(count_range(a.as_ref()), (2, 1));
        assert_eq!(
            rt(a.as_ref()) - before,
            1,
            "a remembered range: one round trip"
        );
        b.update(Durability::Visible, &mut |t| t.put(b"r/3", b"3"))
            .unwrap();
        assert_eq!(
            count_range(a.as_ref()),
            (3, 2),
            "a row added elsewhere is seen"
        );
        assert_eq!(a.stats().optimistic_misses, misses + 1);
    }

    #[test]
    fn postgres_conflicts_are_retried_and_lose_no_update() {
        let Some(url) = postgres_url() else { return };
        let store = format_store(&url).unwrap();
        let get_n = |t: &dyn KvRead| -> Result<u64> {
            Ok(t.get(b"n")?
                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                .unwrap_or(0))
        };
        // Two transactions that both read, then both write: one must fail to serialize and
        // run again, and neither caller sees an error.
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut first = true;
                    store
                        .update(Durability::Visible, &mut |t| {
                            let n = get_n(t)?;
                            if std::mem::take(&mut first) {
                                barrier.wait();
                            }
                            t.put(b"n", &(n + 1).to_be_bytes())
                        })
                        .unwrap();
                });
            }
        });
        assert!(store.stats().retries >= 1, "{:?}", store.stats());
        // Many threads incrementing one counter: every increment counts.
        let (threads, each) = (6u64, 40u64);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..each {
                        store
                            .update(Durability::Visible, &mut |t| {
                                let n = get_n(t)?;
                                t.put(b"n", &(n + 1).to_be_bytes())
                            })
                            .unwrap();
                    }
                });
            }
        });
        let mut n = 0;
        store
            .view(&mut |r| {
                n = get_n(r)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2 + threads * each, "{:?}", store.stats());
        eprintln!("contention: {:?}", store.stats());
    }

    #[test]
    fn postgres_bad_input_is_a_clear_error() {
        let Some(server) = spoolfs_testkit::pg::server(module_path!()) else {
            return;
        };
        let db = server.new_database();
        let url = server.url(&db);
        format_store(&url).unwrap();
        // Wrong password: says so, shows no password.
        let wrong = url.replace(spoolfs_testkit::pg::PASSWORD, "not-the-password");
        let err = open_store(&wrong).err().unwrap();
        assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
        assert!(
            err.to_string().contains("password authentication failed"),
            "{err}"
        );
        assert!(!err.to_string().contains("not-the-password"), "{err}");
        // No password anywhere (where the environment provides none).
        if std::env::var_os("PGPASSWORD").is_none() && std::env::var_os("PGPASSFILE").is_none() {
            let err = open_store(&server.url_without_password(&db)).err().unwrap();
            assert!(err.to_string().contains("no password"), "{err}");
        }
        // Nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = open_store(&format!("postgres://u:p@127.0.0.1:{port}/db"))
            .err()
            .unwrap();
        assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
        // No such database.
        let err = open_store(&server.url("no_such_db")).err().unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
        // A schema of another version is refused by open and by format alike.
        server.psql(&db, "UPDATE spoolfs_schema SET version = 99");
        for err in [
            open_store(&url).err().unwrap(),
            format_store(&url).err().unwrap(),
        ] {
            assert!(matches!(err, MetaError::Schema(_)), "{err}");
            assert!(err.to_string().contains("version 99"), "{err}");
        }
    }

    #[test]
    fn urls() {
        assert!(open_store("memory://").is_ok());
        assert!(matches!(
            open_store("pg://x").err().unwrap(),
            MetaError::BadUrl { .. }
        ));
        // A PostgreSQL URL is parsed by the PostgreSQL backend; its password never shows.
        let err = open_store("postgres://u:hunter2@h/db?retries=x")
            .err()
            .unwrap();
        assert!(matches!(err, MetaError::BadUrl { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(
            open_store("redb://host/x").err().unwrap(),
            MetaError::BadUrl { .. }
        ));
        assert!(open_store("not a url").is_err());
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}
