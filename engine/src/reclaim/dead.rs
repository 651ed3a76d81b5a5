//! Dead slices: a slice no chunk map refers to any more (overwritten, truncated, unlinked)
//! gets a `G` record in the transaction that kills it; collection deletes its objects, or
//! frees its staging space if it was never uploaded, then the `G` record.

use super::Reclaimer;
use crate::error::Result;
use crate::schema::{self, DeadSlice};
use spoolfs_metadata::prefix_end;
use spoolfs_objects::slice_blocks;

/// Where the bytes of a dead slice are, for the garbage collector.
enum DeadPlace {
    Staged,
    /// `emptied`: the pack whose last live slice this was.
    Packed {
        emptied: Option<u64>,
    },
    Blocks,
}

impl Reclaimer {
    /// Deletes the objects of dead slices, a batch at a time. Returns how many it removed.
    pub fn collect_garbage(&self, max: usize) -> Result<usize> {
        let dead = self
            .meta
            .view(|r| r.scan(schema::DEAD_PREFIX, &prefix_end(schema::DEAD_PREFIX), max))?;
        let bs = self.block_size;
        let mut removed = 0;
        for (key, value) in dead {
            let id = u64::from_be_bytes(key[1..9].try_into().expect("dead key"));
            let d: DeadSlice = schema::decode("dead slice", &value)?;
            // Where the dead slice's bytes are, found and unlinked in one transaction:
            // - staged: never uploaded, only its log space is freed (whoever deletes the `T`
            //   record frees the space, an uploader may race us);
            // - packed: its pack goes when its last live slice does (dead bytes in packs that
            //   keep living are what compaction will reclaim);
            // - otherwise its block objects.
            let place = self.meta.update(|t| {
                let staged_key = schema::staged_key(id);
                if t.get(&staged_key)?.is_some() {
                    t.delete(&staged_key)?;
                    return Ok(DeadPlace::Staged);
                }
                let Some(v) = t.get(&schema::packed_key(id))? else {
                    return Ok(DeadPlace::Blocks);
                };
                let p: schema::PackedRec = schema::decode("packed slice", &v)?;
                t.delete(&schema::packed_key(id))?;
                let pk = schema::pack_key(p.pack);
                let Some(pv) = t.get(&pk)? else {
                    return Ok(DeadPlace::Packed { emptied: None });
                };
                let mut rec: schema::PackRec = schema::decode("pack", &pv)?;
                rec.live_slices = rec.live_slices.saturating_sub(1);
                rec.live_bytes = rec.live_bytes.saturating_sub(p.len as u64);
                if rec.live_slices == 0 {
                    t.delete(&pk)?;
                    Ok(DeadPlace::Packed {
                        emptied: Some(p.pack),
                    })
                } else {
                    t.put(&pk, &schema::encode(&rec))?;
                    Ok(DeadPlace::Packed { emptied: None })
                }
            })?;
            match place {
                DeadPlace::Staged => {
                    if let Some(wb) = self.uploader.as_ref() {
                        wb.remove_many(&[id]);
                    }
                }
                DeadPlace::Packed {
                    emptied: Some(pack),
                } => {
                    if let Some(disk) = &self.reader.disk {
                        disk.remove_slice(pack);
                    }
                    self.storage.delete(&schema::pack_object_key(pack))?
                }
                DeadPlace::Packed { emptied: None } => {}
                DeadPlace::Blocks => {
                    for (_, _, key) in slice_blocks(id, d.size, bs) {
                        self.storage.delete(&key)?;
                    }
                }
            }
            self.reader.cache.forget_slice(id);
            if let Some(disk) = &self.reader.disk {
                disk.remove_slice(id);
            }
            self.meta.update(|t| t.delete(&key))?;
            removed += 1;
        }
        Ok(removed)
    }
}
