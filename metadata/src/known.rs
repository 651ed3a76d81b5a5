//! What a process last knew of a shared store's rows: the values (absence included) of keys
//! and the whole contents of some small ranges, as of the last transaction of this process
//! that read or wrote them. Only a guess: a write transaction that uses it asserts, in its
//! commit, that the database still holds what it used (see `postgres.rs`), so a stale entry
//! costs one failed commit, never a wrong result.
//!
//! Bounded: keys live in two generations (a hit in the old one moves the key to the new one;
//! when the new one is full the old one is dropped), ranges in a queue dropped oldest first.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Most rows a known range may hold (larger ranges are not kept).
const RANGE_ROWS_MAX: usize = 64;

struct Entry {
    value: Option<Vec<u8>>,
    /// The commit of this process that last wrote the key (0: only read).
    written: u64,
}

struct KnownRange {
    start: Vec<u8>,
    end: Vec<u8>,
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    written: u64,
}

impl KnownRange {
    fn covers(&self, start: &[u8], end: &[u8]) -> bool {
        self.start.as_slice() <= start && end <= self.end.as_slice()
    }
    fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }
    fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        self.start.as_slice() < end && start < self.end.as_slice()
    }
}

pub(crate) struct Known {
    /// Keys per generation (the cache holds up to twice as many).
    generation_cap: usize,
    young: HashMap<Vec<u8>, Entry>,
    old: HashMap<Vec<u8>, Entry>,
    ranges: VecDeque<KnownRange>,
    ranges_cap: usize,
    /// Commits of this process learned so far.
    commits: u64,
}

impl Known {
    /// A cache of about `keys` keys (and `keys / 8` ranges).
    pub(crate) fn new(keys: usize) -> Known {
        Known {
            generation_cap: (keys / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
            ranges: VecDeque::new(),
            ranges_cap: (keys / 8).max(4),
            commits: 0,
        }
    }

    /// A stamp to pass to [`Known::learn_read`]: reads taken after it do not overwrite what
    /// later commits of this process wrote.
    pub(crate) fn stamp(&self) -> u64 {
        self.commits
    }

    /// The value of `key` as last known (`Some(None)`: known absent).
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(e) = self.young.get(key) {
            return Some(e.value.clone());
        }
        if let Some(e) = self.old.remove(key) {
            let value = e.value.clone();
            self.insert(key.to_vec(), e);
            return Some(value);
        }
        self.ranges
            .iter()
            .find(|r| r.contains(key))
            .map(|r| r.rows.get(key).cloned())
    }

    /// The rows of `[start, end)` when a known range covers it.
    pub(crate) fn range(&self, start: &[u8], end: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let r = self.ranges.iter().find(|r| r.covers(start, end))?;
        Some(
            r.rows
                .range::<[u8], _>((
                    std::ops::Bound::Included(start),
                    std::ops::Bound::Excluded(end),
                ))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    fn insert(&mut self, key: Vec<u8>, entry: Entry) {
        if self.young.len() >= self.generation_cap {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, entry);
    }

    fn written_since(&self, key: &[u8], stamp: u64) -> bool {
        let entry = self.young.get(key).or_else(|| self.old.get(key));
        entry.is_some_and(|e| e.written > stamp)
    }

    /// A value read by a transaction that started at `stamp`, unless a later commit of this
    /// process wrote the key.
    pub(crate) fn learn_read(&mut self, key: &[u8], value: Option<Vec<u8>>, stamp: u64) {
        if self.written_since(key, stamp) {
            return;
        }
        // A known range that disagrees is out of date.
        self.ranges
            .retain(|r| !r.contains(key) || r.rows.get(key) == value.as_ref());
        self.old.remove(key);
        self.insert(key.to_vec(), Entry { value, written: 0 });
    }

    /// The whole contents of `[start, end)` as read by a transaction that started at `stamp`.
    pub(crate) fn learn_range(
        &mut self,
        start: &[u8],
        end: &[u8],
        rows: BTreeMap<Vec<u8>, Vec<u8>>,
        stamp: u64,
    ) {
        if rows.len() > RANGE_ROWS_MAX
            || self
                .ranges
                .iter()
                .any(|r| r.overlaps(start, end) && r.written > stamp)
            || rows.keys().any(|k| self.written_since(k, stamp))
        {
            return;
        }
        self.put_range(start, end, rows, 0);
    }

    fn put_range(
        &mut self,
        start: &[u8],
        end: &[u8],
        rows: BTreeMap<Vec<u8>, Vec<u8>>,
        written: u64,
    ) {
        // A range this one covers says nothing more.
        self.ranges
            .retain(|r| !(start <= r.start.as_slice() && r.end.as_slice() <= end));
        if self.ranges.iter().any(|r| r.covers(start, end)) {
            return;
        }
        if self.ranges.len() >= self.ranges_cap {
            self.ranges.pop_front();
        }
        self.ranges.push_back(KnownRange {
            start: start.to_vec(),
            end: end.to_vec(),
            rows,
            written,
        });
    }

    /// Starts learning a commit of this process: returns its stamp for
    /// [`Known::learn_write`] and [`Known::learn_empty`].
    pub(crate) fn begin_commit(&mut self) -> u64 {
        self.commits += 1;
        self.commits
    }

    /// A committed transaction's claim that no row was in `[start, end)` before its writes
    /// (the prefix of an id it had just allocated).
    pub(crate) fn learn_empty(&mut self, start: &[u8], end: &[u8], commit: u64) {
        self.ranges.retain(|r| !r.overlaps(start, end));
        self.put_range(start, end, BTreeMap::new(), commit);
    }

    /// A committed write (`None`: a delete).
    pub(crate) fn learn_write(&mut self, key: &[u8], value: Option<&[u8]>, commit: u64) {
        for r in self.ranges.iter_mut().filter(|r| r.contains(key)) {
            match value {
                Some(v) => r.rows.insert(key.to_vec(), v.to_vec()),
                None => r.rows.remove(key),
            };
            r.written = commit;
        }
        self.ranges.retain(|r| r.rows.len() <= RANGE_ROWS_MAX);
        self.old.remove(key);
        self.insert(
            key.to_vec(),
            Entry {
                value: value.map(<[u8]>::to_vec),
                written: commit,
            },
        );
    }

    /// Forgets `key` (and every range holding it).
    pub(crate) fn forget(&mut self, key: &[u8]) {
        self.young.remove(key);
        self.old.remove(key);
        self.ranges.retain(|r| !r.contains(key));
    }

    /// Forgets every range overlapping `[start, end)` and the keys known in it.
    pub(crate) fn forget_range(&mut self, start: &[u8], end: &[u8]) {
        let mut keys = Vec::new();
        for r in self.ranges.iter().filter(|r| r.overlaps(start, end)) {
            keys.extend(r.rows.keys().cloned());
        }
        self.ranges.retain(|r| !r.overlaps(start, end));
        for k in keys {
            self.young.remove(&k);
            self.old.remove(&k);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_are_remembered_bounded_and_kept_current_by_writes() {
        let mut k = Known::new(8);
        let s = k.stamp();
        k.learn_read(b"a", Some(b"1".to_vec()), s);
        k.learn_read(b"b", None, s);
        assert_eq!(k.get(b"a"), Some(Some(b"1".to_vec())));
        assert_eq!(k.get(b"b"), Some(None));
        assert_eq!(k.get(b"c"), None);
        // A range known empty, then written into.
        let c = k.begin_commit();
        k.learn_empty(b"r", b"s", c);
        assert_eq!(k.range(b"r1", b"r9"), Some(vec![]));
        k.learn_write(b"r5", Some(b"x"), c);
        assert_eq!(
            k.range(b"r", b"s"),
            Some(vec![(b"r5".to_vec(), b"x".to_vec())])
        );
        assert_eq!(k.get(b"r7"), Some(None), "absent inside a known range");
        assert_eq!(k.range(b"q", b"s"), None, "not covered");
        // A read taken before a commit of this process does not overwrite what it wrote.
        let c = k.begin_commit();
        k.learn_write(b"a", Some(b"2"), c);
        k.learn_read(b"a", Some(b"1".to_vec()), s);
        assert_eq!(k.get(b"a"), Some(Some(b"2".to_vec())));
        k.forget(b"r5");
        assert_eq!(k.range(b"r", b"s"), None);
        // Bounded: at most two generations of four keys.
        for i in 0..100u8 {
            k.learn_read(&[b'k', i], None, k.stamp());
        }
        assert!(k.len() <= 8, "{}", k.len());
        assert_eq!(k.get(&[b'k', 99]), Some(None));
        assert_eq!(k.get(&[b'k', 0]), None);
    }
}
