//! A store that keeps committed changes in memory (a memtable) in front of another store and
//! writes them there in one transaction at each [`KvStore::persist`].
//!
//! It exists for the write-ahead-logged store of a writeback mount, where every change is
//! already crash-safe in the namespace log before it is acknowledged: committing each one to
//! redb as well (a copy-on-write B-tree, checksummed pages) cost about 80 µs of CPU per
//! `fsync`, half of the FUSE thread's work. Here a transaction reads through three layers
//! (its own writes, the memtable, the inner store) and its commit is a few map inserts; the
//! periodic checkpoint applies all of them at once, where repeated writes of the same keys
//! (an inode, a counter, the log position) collapse into one.
//!
//! Consistency:
//! - Updates are serialised (one writer at a time, as in redb). A view sees every committed
//!   update or none of a given one: commits take the layers' write lock, views hold a read lock.
//! - [`KvStore::persist`] moves the memtable aside (frozen, still read), applies it to the
//!   inner store with one durable commit, then drops it. A reader whose inner snapshot predates
//!   that commit still has the frozen layer; one that starts after the drop sees the commit.
//! - Once `persist` returns, every update that returned before it was called is durable in
//!   the inner store (it takes the writer lock to freeze, so no commit is half-way through).
//! - A failed apply keeps the frozen layer in place; the next `persist` applies it again with
//!   whatever was committed since.

use crate::write_set::{BuffersWrites, WriteSet};
use crate::{Durability, Entries, KvRead, KvStore, MetaError, Result, UpdateFn, ViewFn};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Committed changes not yet in the inner store: `Some` is a put, `None` a delete.
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Layers {
    /// Commits since the last freeze.
    active: Changes,
    /// Being applied to the inner store (empty when no persist is under way or pending).
    frozen: Arc<Changes>,
}

pub struct BufferedStore {
    inner: Arc<dyn KvStore>,
    layers: RwLock<Layers>,
    /// Held by an update from its first read to its commit, and by a persist to freeze.
    writer: Mutex<()>,
    /// One persist at a time.
    persisting: Mutex<()>,
}

impl BufferedStore {
    pub fn new(inner: Arc<dyn KvStore>) -> BufferedStore {
        BufferedStore {
            inner,
            layers: RwLock::new(Layers::default()),
            writer: Mutex::new(()),
            persisting: Mutex::new(()),
        }
    }

    /// Moves the memtable into the inner store in one commit of `durability`.
    fn apply(&self, durability: Durability) -> Result<()> {
        refuse_inside_a_view("a metadata checkpoint")?;
        let _one = self.persisting.lock();
        let frozen = {
            let _writer = self.writer.lock();
            let mut layers = self.layers.write();
            let active = std::mem::take(&mut layers.active);
            if layers.frozen.is_empty() {
                layers.frozen = Arc::new(active);
            } else {
                // A failed apply left these: apply them again, with the newer ones on top.
                Arc::make_mut(&mut layers.frozen).extend(active);
            }
            layers.frozen.clone()
        };
        if frozen.is_empty() {
            return match durability {
                Durability::Durable => self.inner.persist(),
                Durability::Visible => Ok(()),
            };
        }
        self.inner.update(durability, &mut |t| {
            for (k, v) in frozen.iter() {
                match v {
                    Some(v) => t.put(k, v)?,
                    None => t.delete(k)?,
                }
            }
            Ok(())
        })?;
        self.layers.write().frozen = Arc::new(Changes::new());
        Ok(())
    }

    /// Changes committed and not yet applied to the inner store.
    pub fn buffered(&self) -> usize {
        let l = self.layers.read_recursive();
        l.active.len() + l.frozen.len()
    }
}

/// Reads through the layers, newest first: a transaction's own writes (if any), the memtable,
/// the frozen memtable, the inner store.
struct Overlay<'a> {
    own: Option<&'a Changes>,
    layers: &'a Layers,
    base: &'a dyn KvRead,
}

impl Overlay<'_> {
    fn upper(&self) -> [Option<&Changes>; 3] {
        [
            self.own,
            Some(&self.layers.active),
            Some(&*self.layers.frozen),
        ]
    }

    /// Merges the inner store's entries in `[start, end)` with the upper layers' changes,
    /// in key order (or reverse), stopping after `limit` results. The inner store is read in
    /// batches of what is still missing, so that deletes hiding its entries never cut the
    /// result short; the upper layers are walked lazily, never more of them than the result
    /// reaches.
    fn scan_dir(&self, start: &[u8], end: &[u8], limit: usize, backwards: bool) -> Result<Entries> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut upper = Merged::new(self.upper(), start, end, backwards).peekable();
        // `a` comes before `b` in the scan's direction.
        let before = |a: &[u8], b: &[u8]| if backwards { a > b } else { a < b };
        let mut out = Vec::new();
        // The part of the inner store not read yet: [lo, hi).
        let (mut lo, mut hi) = (start.to_vec(), end.to_vec());
        loop {
            let need = limit - out.len();
            let batch = if backwards {
                self.base.scan_back(&lo, &hi, need)?
            } else {
                self.base.scan(&lo, &hi, need)?
            };
            // A full batch may have more behind it: merge the upper layers only up to its
            // last key, then read on from there.
            let bound = (batch.len() == need).then(|| batch.last().expect("need > 0").0.clone());
            let mut base = batch.into_iter().peekable();
            loop {
                if out.len() == limit {
                    return Ok(out);
                }
                let up = upper
                    .peek()
                    .map(|(k, _)| *k)
                    .filter(|k| bound.as_deref().is_none_or(|b| !before(b, k)));
                let take_upper = match (base.peek(), up) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some((b, _)), Some(u)) => {
                        if b.as_slice() == u {
                            base.next(); // hidden or replaced by the newer change
                            true
                        } else {
                            before(u, b)
                        }
                    }
                };
                if take_upper {
                    let (k, v) = upper.next().expect("peeked");
                    if let Some(v) = v {
                        out.push((k.to_vec(), v.to_vec()));
                    }
                } else if let Some(entry) = base.next() {
                    out.push(entry);
                } else {
                    break;
                }
            }
            let Some(b) = bound else {
                return Ok(out);
            };
            if backwards {
                hi = b;
            } else {
                lo = b;
                lo.push(0); // the first key after `b`
            }
        }
    }
}

type LayerIter<'a> =
    std::iter::Peekable<Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>>;

/// The upper layers' changes in a key range, in order (or reverse), the newest per key.
struct Merged<'a> {
    /// Newest layer first.
    layers: Vec<LayerIter<'a>>,
    backwards: bool,
}

impl<'a> Merged<'a> {
    fn new(
        layers: [Option<&'a Changes>; 3],
        start: &[u8],
        end: &[u8],
        backwards: bool,
    ) -> Merged<'a> {
        let range = (
            std::ops::Bound::Included(start.to_vec()),
            std::ops::Bound::Excluded(end.to_vec()),
        );
        let layers = layers
            .into_iter()
            .flatten()
            .map(|layer| {
                let it = layer.range(range.clone());
                let it: Box<dyn Iterator<Item = _> + 'a> = if backwards {
                    Box::new(it.rev())
                } else {
                    Box::new(it)
                };
                it.peekable()
            })
            .collect();
        Merged { layers, backwards }
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let backwards = self.backwards;
        let first = self
            .layers
            .iter_mut()
            .filter_map(|l| l.peek().map(|(k, _)| k.as_slice()))
            .reduce(|a, b| if (b < a) != backwards && b != a { b } else { a })?;
        let first = first.to_vec();
        let mut found = None;
        // Every layer holding the key moves past it; the newest one's change wins.
        for layer in self.layers.iter_mut() {
            if layer.peek().is_some_and(|(k, _)| **k == first) {
                let (k, v) = layer.next().expect("peeked");
                found.get_or_insert((k.as_slice(), v.as_deref()));
            }
        }
        found
    }
}

impl KvRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for layer in self.upper().into_iter().flatten() {
            if let Some(v) = layer.get(key) {
                return Ok(v.clone());
            }
        }
        self.base.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.scan_dir(start, end, limit, false)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.scan_dir(start, end, limit, true)
    }
}

/// A transaction: reads through the overlay, writes into its own layer.
struct Txn<'a> {
    own: Changes,
    layers: &'a Layers,
    base: &'a dyn KvRead,
}

impl Txn<'_> {
    fn overlay(&self) -> Overlay<'_> {
        Overlay {
            own: Some(&self.own),
            layers: self.layers,
            base: self.base,
        }
    }
}

impl KvRead for Txn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.overlay().get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.overlay().scan(start, end, limit)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.overlay().scan_back(start, end, limit)
    }
}

impl BuffersWrites for Txn<'_> {
    fn write_set(&mut self) -> &mut WriteSet {
        &mut self.own
    }
}

thread_local! {
    /// How many read locks on some store's layers this thread holds.
    static READS_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A read lock on the layers. A thread's first one queues behind a waiting writer (so that a
/// steady stream of views cannot starve commits); one taken while the thread already holds
/// one (a view inside an update or a view) must not, or it would wait for a writer that
/// waits for the lock this thread holds.
struct ReadGuard<'a>(parking_lot::RwLockReadGuard<'a, Layers>);

impl<'a> ReadGuard<'a> {
    fn new(lock: &'a RwLock<Layers>) -> ReadGuard<'a> {
        let nested = READS_HELD.with(|n| {
            n.set(n.get() + 1);
            n.get() > 1
        });
        ReadGuard(if nested {
            lock.read_recursive()
        } else {
            lock.read()
        })
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        READS_HELD.with(|n| n.set(n.get() - 1));
    }
}

/// An update or a checkpoint needs the layers' write lock, which would wait for the read
/// lock this thread holds in a view: fail instead of hanging.
fn refuse_inside_a_view(what: &str) -> Result<()> {
    if READS_HELD.with(|n| n.get()) > 0 {
        return Err(MetaError::Errno(
            35, // EDEADLK
            format!("{what} inside a view of the metadata store"),
        ));
    }
    Ok(())
}

impl KvStore for BufferedStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        let layers = ReadGuard::new(&self.layers);
        self.inner.view(&mut |base| {
            f(&Overlay {
                own: None,
                layers: &layers.0,
                base,
            })
        })
    }

    /// Applies the memtable first, then reads the inner store alone, while commits go on
    /// into the memtable. Every apply is a consistent cut (it freezes under the writer
    /// lock), so the inner store alone is a snapshot as of that apply.
    fn view_long(&self, f: ViewFn<'_>) -> Result<()> {
        self.apply(Durability::Visible)?;
        self.inner.view(f)
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        refuse_inside_a_view("a metadata update")?;
        {
            let _writer = self.writer.lock();
            let mut own = Changes::new();
            {
                let layers = ReadGuard::new(&self.layers);
                self.inner.view(&mut |base| {
                    let mut txn = Txn {
                        own: Changes::new(),
                        layers: &layers.0,
                        base,
                    };
                    f(&mut txn)?;
                    own = txn.own;
                    Ok(())
                })?;
            }
            if !own.is_empty() {
                // One insert per key: `append` would rebuild the whole memtable.
                let mut layers = self.layers.write();
                for (k, v) in own {
                    layers.active.insert(k, v);
                }
            }
        }
        if durability == Durability::Durable {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        self.apply(Durability::Durable)
    }

    fn unapplied_changes(&self) -> u64 {
        self.buffered() as u64
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemStore, RedbStore, prefix_end};
    // A seeded generator, so a failure replays.
    use spoolfs_testkit::Rng;

    fn key(rng: &mut Rng) -> Vec<u8> {
        format!("k{:02}", rng.below(40)).into_bytes()
    }

    fn limit(n: u64) -> usize {
        if n == 6 { usize::MAX } else { n as usize }
    }

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn all(r: &dyn KvRead) -> Rows {
        r.scan(b"", &[0xff], usize::MAX).unwrap()
    }

    /// Every row of `store`.
    fn rows(store: &dyn KvStore) -> Rows {
        let mut out = Vec::new();
        store
            .view(&mut |r| {
                out = all(r);
                Ok(())
            })
            .unwrap();
        out
    }

    /// Random transactions (puts, deletes, scans both ways with limits, some aborted) and
    /// random persists give the same answers as a plain in-memory store, and what was
    /// persisted is in the inner store.
    #[test]
    fn behaves_like_a_plain_store_across_persists() {
        let inner = Arc::new(MemStore::default());
        let buffered = BufferedStore::new(inner.clone());
        let reference = MemStore::default();
        let mut rng = Rng::new(1);
        for round in 0..3000 {
            let ops: Vec<(u64, Vec<u8>, Vec<u8>, u64)> = (0..1 + rng.below(5))
                .map(|_| {
                    let (a, b) = (key(&mut rng), key(&mut rng));
                    (
                        rng.below(4),
                        a.min(b.clone()),
                        b.max(key(&mut rng)),
                        rng.below(7),
                    )
                })
                .collect();
            let abort = rng.below(5) == 0;
            let mut answers: [Vec<Rows>; 2] = Default::default();
            for (i, store) in [&buffered as &dyn KvStore, &reference]
                .into_iter()
                .enumerate()
            {
                let out = &mut answers[i];
                let r = store.update(Durability::Visible, &mut |t| {
                    out.clear();
                    for (op, a, b, n) in &ops {
                        match op {
                            0 => t.put(a, format!("v{round}").as_bytes())?,
                            1 => t.delete(a)?,
                            // 6: no limit.
                            2 => out.push(t.scan(a, b, limit(*n))?),
                            _ => out.push(t.scan_back(a, b, limit(*n))?),
                        }
                        if let Some(v) = t.get(a)? {
                            out.push(vec![(a.clone(), v)]);
                        }
                    }
                    if abort {
                        return Err(MetaError::Errno(5, "abort".into()));
                    }
                    Ok(())
                });
                assert_eq!(r.is_err(), abort);
            }
            assert_eq!(answers[0], answers[1], "round {round}");
            if rng.below(50) == 0 {
                buffered.persist().unwrap();
                assert_eq!(buffered.buffered(), 0);
                assert_eq!(rows(inner.as_ref()), rows(&reference));
            }
            assert_eq!(rows(&buffered), rows(&reference), "round {round}");
        }
    }

    /// Two keys always changed together stay equal in every view, while another thread
    /// persists; and the persisted state is the last one.
    #[test]
    fn views_are_consistent_while_persisting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        let inner: Arc<dyn KvStore> = Arc::new(RedbStore::open(&path).unwrap());
        let store = Arc::new(BufferedStore::new(inner));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let persister = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    store.persist().unwrap();
                }
            })
        };
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut views = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    store
                        .view(&mut |r| {
                            let both = r.scan(b"pair/", &prefix_end(b"pair/"), 10)?;
                            if let [(_, a), (_, b)] = both.as_slice() {
                                assert_eq!(a, b, "a view saw half of an update");
                            }
                            Ok(())
                        })
                        .unwrap();
                    views += 1;
                }
                views
            })
        };
        for i in 0..2000u32 {
            store
                .update(Durability::Visible, &mut |t| {
                    t.put(b"pair/a", &i.to_be_bytes())?;
                    t.put(b"pair/b", &i.to_be_bytes())
                })
                .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        persister.join().unwrap();
        assert!(reader.join().unwrap() > 0);
        store.persist().unwrap();
        drop(store);
        let reopened = RedbStore::open(&path).unwrap();
        reopened
            .view(&mut |r| {
                assert_eq!(r.get(b"pair/a")?, Some(1999u32.to_be_bytes().to_vec()));
                assert_eq!(r.get(b"pair/b")?, Some(1999u32.to_be_bytes().to_vec()));
                Ok(())
            })
            .unwrap();
    }

    /// A long view sees everything committed before it, nothing committed during it, and
    /// does not hold up those commits (an ordinary view would: its read lock keeps a commit
    /// from entering the memtable until it ends).
    #[test]
    fn a_long_view_is_a_snapshot_that_does_not_block_commits() {
        // redb: its readers do not block its writer (MemStore's one lock would).
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(RedbStore::open(&dir.path().join("m.redb")).unwrap());
        let store = Arc::new(BufferedStore::new(inner));
        store
            .update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        store
            .view_long(&mut |r| {
                assert_eq!(r.get(b"a")?.as_deref(), Some(&b"1"[..]));
                let writer = store.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let r = writer.update(Durability::Visible, &mut |t| t.put(b"b", b"2"));
                    tx.send(r.is_ok()).unwrap();
                });
                let committed = rx.recv_timeout(std::time::Duration::from_secs(10));
                assert_eq!(committed, Ok(true), "a commit waited for a long view");
                assert_eq!(r.get(b"b")?, None);
                Ok(())
            })
            .unwrap();
        assert_eq!(rows(store.as_ref()).len(), 2);
    }

    /// An update inside a view of the same store would wait for itself: it fails instead.
    #[test]
    fn an_update_inside_a_view_fails_instead_of_hanging() {
        let store = BufferedStore::new(Arc::new(MemStore::default()));
        store
            .view(&mut |_| {
                let err = store
                    .update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
                    .unwrap_err();
                assert_eq!(err.errno(), 35);
                assert_eq!(store.persist().unwrap_err().errno(), 35);
                Ok(())
            })
            .unwrap();
        // Outside the view it works.
        store
            .update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
    }

    /// An apply that fails keeps the changes, and the next persist applies them.
    #[test]
    fn a_failed_apply_is_retried() {
        let inner = Arc::new(crate::FaultyStore::default());
        inner
            .fail_updates
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let store = BufferedStore::new(inner.clone());
        store
            .update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        assert!(store.persist().is_err());
        store
            .update(Durability::Visible, &mut |t| {
                assert_eq!(t.get(b"a")?.as_deref(), Some(&b"1"[..]));
                t.put(b"b", b"2")
            })
            .unwrap();
        inner
            .fail_updates
            .store(false, std::sync::atomic::Ordering::SeqCst);
        store.persist().unwrap();
        assert_eq!(store.buffered(), 0);
        inner
            .view(&mut |r| {
                assert_eq!(r.get(b"a")?.as_deref(), Some(&b"1"[..]));
                assert_eq!(r.get(b"b")?.as_deref(), Some(&b"2"[..]));
                Ok(())
            })
            .unwrap();
    }
}
