//! Ids (inodes, slices) come from counters in the metadata store, reserved in batches so a
//! shared metadata engine can serve many nodes without two of them handing out the same id.

use crate::error::Result;
use crate::schema;
use parking_lot::Mutex;
use spoolfs_metadata::{Durability, KvStore};

/// Inode numbers a mount reserves at a time.
pub const INODE_ID_BATCH: u64 = 256;
/// Slice ids a mount reserves at a time.
pub const SLICE_ID_BATCH: u64 = 1024;

pub struct IdAllocator {
    key: &'static [u8],
    batch: u64,
    range: Mutex<(u64, u64)>,
}

impl IdAllocator {
    pub fn new(key: &'static [u8], batch: u64) -> Self {
        IdAllocator {
            key,
            batch,
            range: Mutex::new((0, 0)),
        }
    }

    pub fn next(&self, meta: &dyn KvStore) -> Result<u64> {
        let mut range = self.range.lock();
        if range.0 >= range.1 {
            let mut start = 0;
            // On a shared store a claim must survive the database's own crash: a node that
            // went on drawing from a range the database forgot would hand out ids another
            // node claims next. An exclusive store's claim goes with the process that made it.
            let durability = if meta.is_shared() {
                Durability::Durable
            } else {
                Durability::Visible
            };
            meta.update(durability, &mut |t| {
                start = schema::get_u64(t, self.key)?.max(1);
                t.put(self.key, &(start + self.batch).to_be_bytes())
            })?;
            *range = (start, start + self.batch);
        }
        let id = range.0;
        range.0 += 1;
        Ok(id)
    }
}
