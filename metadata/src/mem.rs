//! An in-memory store for tests: a BTreeMap behind one lock, copy-on-abort.

use crate::write_set::{BuffersWrites, WriteSet};
use crate::{Durability, Entries, KvRead, KvStore, Result, UpdateFn, ViewFn};
use parking_lot::Mutex;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// A store holding `map`.
    pub fn from_map(map: BTreeMap<Vec<u8>, Vec<u8>>) -> MemStore {
        MemStore {
            map: Mutex::new(map),
        }
    }

    /// Every key and value, as of now.
    pub fn snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.map.lock().clone()
    }
}

struct MemTxn<'a> {
    base: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    /// Pending writes; `None` is a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .range(start.to_vec()..end.to_vec())
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(BTreeMap::get(self, key).cloned())
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .range(start.to_vec()..end.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl KvRead for MemTxn<'_> {
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        let mut all = self.scan(start, end, usize::MAX)?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => KvRead::get(self.base, key),
        }
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        if start >= end {
            return Ok(Vec::new());
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .base
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in self.writes.range(start.to_vec()..end.to_vec()) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

impl BuffersWrites for MemTxn<'_> {
    fn write_set(&mut self) -> &mut WriteSet {
        &mut self.writes
    }
}

impl KvStore for MemStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        let map = self.map.lock();
        f(&*map)
    }

    fn update(&self, _durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        let mut map = self.map.lock();
        let writes = {
            let mut txn = MemTxn {
                base: &map,
                writes: BTreeMap::new(),
            };
            f(&mut txn)?;
            txn.writes
        };
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }
}
