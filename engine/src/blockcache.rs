//! A bounded in-memory cache of verified, decoded object blocks, evicted in FIFO order.
//! (The persistent local cache on NVMe comes with the read-path work.)

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub slice: u64,
    pub index: u32,
}

impl BlockId {
    /// Block `index` of a slice stored as block objects.
    pub fn block(slice: u64, index: u32) -> BlockId {
        BlockId { slice, index }
    }

    /// A packed slice, whole (an index no block uses).
    pub fn whole(slice: u64) -> BlockId {
        BlockId {
            slice,
            index: u32::MAX,
        }
    }

    /// A whole pack object (pack ids come from the slice id space; another unused index).
    pub fn pack(pack: u64) -> BlockId {
        BlockId {
            slice: pack,
            index: u32::MAX - 1,
        }
    }
}

pub struct BlockCache {
    inner: Mutex<Inner>,
    capacity_bytes: u64,
    /// Lookups that found their block, and those that did not (for the metrics).
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache holds and how well it serves, for the metrics and `spoolfs status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheUsage {
    pub bytes: u64,
    pub blocks: u64,
    pub capacity_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

struct Inner {
    map: HashMap<BlockId, Bytes>,
    order: VecDeque<BlockId>,
    bytes: u64,
}

impl BlockCache {
    pub fn new(capacity_bytes: u64) -> Self {
        BlockCache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.inner.lock().map.contains_key(&id)
    }

    pub fn get(&self, id: BlockId) -> Option<Bytes> {
        let found = self.inner.lock().map.get(&id).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn usage(&self) -> CacheUsage {
        let (bytes, blocks) = {
            let inner = self.inner.lock();
            (inner.bytes, inner.map.len() as u64)
        };
        CacheUsage {
            bytes,
            blocks,
            capacity_bytes: self.capacity_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    pub fn insert(&self, id: BlockId, data: Bytes) {
        if data.len() as u64 > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.map.contains_key(&id) {
            return;
        }
        inner.bytes += data.len() as u64;
        inner.map.insert(id, data);
        inner.order.push_back(id);
        while inner.bytes > self.capacity_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(d) = inner.map.remove(&old) {
                inner.bytes -= d.len() as u64;
            }
        }
    }

    /// Drops every block of a slice (it was deleted).
    pub fn forget_slice(&self, slice: u64) {
        let mut inner = self.inner.lock();
        let mut freed = 0;
        inner.map.retain(|k, v| {
            if k.slice == slice {
                freed += v.len() as u64;
                false
            } else {
                true
            }
        });
        inner.bytes -= freed;
        inner.order.retain(|k| k.slice != slice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_fifo() {
        let c = BlockCache::new(10);
        let id = |slice| BlockId { slice, index: 0 };
        c.insert(id(1), Bytes::from_static(b"12345"));
        c.insert(id(2), Bytes::from_static(b"12345"));
        c.insert(id(3), Bytes::from_static(b"1"));
        assert!(c.get(id(1)).is_none());
        assert!(c.get(id(2)).is_some());
        c.forget_slice(2);
        assert!(c.get(id(2)).is_none());
        c.insert(id(4), Bytes::from(vec![0; 11]));
        assert!(c.get(id(4)).is_none(), "larger than the cache");
        let u = c.usage();
        assert_eq!((u.bytes, u.blocks, u.capacity_bytes), (1, 1, 10));
        assert_eq!((u.hits, u.misses), (1, 3));
    }
}
