//! Dead slices: a slice no chunk map refers to any more (overwritten, truncated, unlinked)
//! gets a `G` record in the transaction that kills it; collection deletes its objects, or
//! frees its staging space if it was never uploaded, then the `G` record.

use super::Reclaimer;
use crate::error::Result;
use crate::schema::{self, DeadSlice};
use spoolfs_metadata::{KvRead, MetaError, prefix_end};
use spoolfs_objects::{BLOCK_TRAILER_LEN, slice_blocks};
use std::collections::HashMap;

/// Which dead slices a collection takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeadScope {
    /// All but those staged on another node.
    All,
    /// Only those staged in this node's own log.
    OwnStaged,
}

/// What one collection of dead slices removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadCollected {
    /// Dead slices whose `G` records are gone.
    pub slices: usize,
    /// Bytes of the objects deleted for them (block objects, and packs left with no live slice).
    pub object_bytes: u64,
}

impl Reclaimer {
    /// Deletes the objects of dead slices (`G` records), [`DEAD_BATCH`] slices at a time, up
    /// to `max` of them; stops early once the engine is stopping (what is left stays recorded
    /// and is collected by the next mount or `spoolfs gc`). Returns how many it removed.
    pub fn collect_garbage(&self, max: usize) -> Result<usize> {
        Ok(self.collect_dead(max)?.slices)
    }

    /// Frees the dead slices staged in this mount's own log (their log space and records; they
    /// have no objects), up to `max`: what a mount of a shared volume that does not hold the
    /// background lease still does (the holder leaves them alone, see below).
    pub fn collect_own_staged(&self, max: usize) -> Result<usize> {
        Ok(self.collect_dead_in(max, DeadScope::OwnStaged)?.slices)
    }

    /// [`Reclaimer::collect_garbage`], also counting the object bytes it deleted.
    pub fn collect_dead(&self, max: usize) -> Result<DeadCollected> {
        self.collect_dead_in(max, DeadScope::All)
    }

    fn collect_dead_in(&self, max: usize, scope: DeadScope) -> Result<DeadCollected> {
        let _one = self.collecting.lock();
        let mut total = DeadCollected::default();
        while total.slices < max {
            let batch = self.collect_dead_batch((max - total.slices).min(DEAD_BATCH), scope)?;
            total.slices += batch.slices;
            total.object_bytes += batch.object_bytes;
            if batch.slices == 0 || self.stopping() {
                break;
            }
        }
        Ok(total)
    }

    /// One batch of [`Reclaimer::collect_garbage`]. The objects go first, the records after:
    /// 1. a read finds where each dead slice's bytes are (staged; in a pack, which goes when
    ///    its last slice dies, dead bytes in packs that keep living being compaction's work;
    ///    or block objects);
    /// 2. the `G` records read are made durable;
    /// 3. the objects go, in bulk deletes;
    /// 4. one transaction unlinks the locations and drops the `G` records, for the slices
    ///    still where step 1 found them (an upload or a compaction may have moved one since:
    ///    it stays for the next batch).
    ///
    /// Interrupted anywhere (an error, a crash, an unmount), the batch is done again from the
    /// start: deleting an object twice is harmless, and nothing leaks.
    fn collect_dead_batch(&self, limit: usize, scope: DeadScope) -> Result<DeadCollected> {
        // On a shared store a dead slice staged on another node is that node's to free: its
        // log space is there.
        let node_id = self.uploader.as_ref().map_or(0, |wb| wb.opts.node_id);
        let own_only = scope == DeadScope::OwnStaged;
        if own_only && node_id == 0 {
            return Ok(DeadCollected::default());
        }
        let (dead, places, emptied) = self.meta.view(|r| {
            let scanned = r.scan(schema::DEAD_PREFIX, &prefix_end(schema::DEAD_PREFIX), limit)?;
            let mut dead = Vec::with_capacity(scanned.len());
            let mut places = Vec::with_capacity(scanned.len());
            for (key, value) in scanned {
                let d: DeadSlice = schema::decode("dead slice", &value)?;
                let id = schema::key_id("dead slice", &key)?;
                let owner = match node_id {
                    0 => None,
                    _ => match r.get(&schema::staged_key(id))? {
                        Some(t) => Some(schema::decode_staged(&t)?.owner),
                        None => None,
                    },
                };
                let mine = owner == Some(node_id);
                let elsewhere = owner.is_some_and(|o| o != 0 && o != node_id);
                if elsewhere || (own_only && !mine) {
                    continue;
                }
                places.push((id, d.size, locate_dead(r, id)?));
                dead.push((key, value));
            }
            let emptied = emptied_packs(r, places.iter().map(|(_, _, p)| *p))?;
            Ok((dead, places, emptied))
        })?;
        if dead.is_empty() {
            return Ok(DeadCollected::default());
        }
        // An object may go only once the change that killed its slice survives a power cut:
        // otherwise a crash could bring back a file that points at it. These `G` records are
        // committed (we just read them); one flush makes them all durable.
        self.meta.store().sync()?;
        let bs = self.block_size;
        let mut keys: Vec<String> = emptied
            .iter()
            .map(|(p, _)| schema::pack_object_key(*p))
            .collect();
        let mut object_bytes: u64 = emptied.iter().map(|(_, size)| size).sum();
        for (id, size, place) in &places {
            if *place == DeadPlace::Blocks {
                for (_, len, key) in slice_blocks(*id, *size, bs) {
                    object_bytes += len as u64 + BLOCK_TRAILER_LEN as u64;
                    keys.push(key);
                }
            }
        }
        if let Err(e) = self
            .storage
            .delete_many(&keys, self.max_deletes, &|| self.stopping())
        {
            if self.stopping() {
                tracing::info!(
                    "stopping: dead objects are left for the next mount ({} slice(s) in this \
                     batch)",
                    places.len()
                );
                return Ok(DeadCollected::default());
            }
            return Err(e.into());
        }
        for (pack, _) in &emptied {
            if let Some(disk) = &self.reader.disk {
                disk.remove_slice(*pack);
            }
        }
        let staged = self.meta.update(|t| {
            let mut done = Vec::with_capacity(places.len());
            let mut staged = Vec::new();
            for ((key, _), (id, _, place)) in dead.iter().zip(&places) {
                if locate_dead(t, *id)? != *place {
                    continue;
                }
                match place {
                    DeadPlace::Staged => {
                        t.delete(&schema::staged_key(*id))?;
                        staged.push(*id);
                    }
                    DeadPlace::Packed { .. } => t.delete(&schema::packed_key(*id))?,
                    DeadPlace::Blocks => {}
                }
                t.delete(key)?;
                done.push(*place);
            }
            // Pack counts, after the slices gone from them; a pack left with none goes.
            let mut packs: HashMap<u64, (u32, u64)> = HashMap::new();
            for place in &done {
                if let DeadPlace::Packed { pack, len } = place {
                    let e = packs.entry(*pack).or_default();
                    e.0 += 1;
                    e.1 += *len as u64;
                }
            }
            for (pack, (slices, bytes)) in packs {
                let pk = schema::pack_key(pack);
                let Some(v) = t.get(&pk)? else { continue };
                let mut rec: schema::PackRec = schema::decode("pack", &v)?;
                rec.live_slices = rec.live_slices.saturating_sub(slices);
                rec.live_bytes = rec.live_bytes.saturating_sub(bytes);
                if rec.live_slices == 0 {
                    t.delete(&pk)?;
                } else {
                    t.put(&pk, &schema::encode(&rec))?;
                }
            }
            Ok(staged)
        })?;
        // Whoever deletes a `T` record frees the slice's log space (an uploader may race us).
        if let Some(wb) = self.uploader.as_ref()
            && !staged.is_empty()
        {
            wb.remove_many(&staged);
        }
        for (id, _, _) in &places {
            self.reader.cache.forget_slice(*id);
            if let Some(disk) = &self.reader.disk {
                disk.remove_slice(*id);
            }
        }
        Ok(DeadCollected {
            slices: places.len(),
            object_bytes,
        })
    }
}

pub(crate) fn count_dead(r: &dyn KvRead) -> Result<u64, MetaError> {
    let end = prefix_end(schema::DEAD_PREFIX);
    Ok(r.scan(schema::DEAD_PREFIX, &end, usize::MAX)?.len() as u64)
}

/// Dead slices one garbage collection batch handles: one bulk delete request's worth of
/// block objects for small slices, and transactions of a few tens of KiB.
pub(crate) const DEAD_BATCH: usize = spoolfs_objects::DELETE_BATCH_KEYS;

/// Where dead slice `id`'s bytes are.
fn locate_dead(r: &dyn KvRead, id: u64) -> Result<DeadPlace, MetaError> {
    if r.get(&schema::staged_key(id))?.is_some() {
        return Ok(DeadPlace::Staged);
    }
    match r.get(&schema::packed_key(id))? {
        Some(v) => {
            let p: schema::PackedRec = schema::decode("packed slice", &v)?;
            Ok(DeadPlace::Packed {
                pack: p.pack,
                len: p.len,
            })
        }
        None => Ok(DeadPlace::Blocks),
    }
}

/// Packs that every slice still in them is among `places` (dead slices): their objects can go.
fn emptied_packs(
    r: &dyn KvRead,
    places: impl Iterator<Item = DeadPlace>,
) -> Result<Vec<(u64, u64)>, MetaError> {
    let mut dying: HashMap<u64, u32> = HashMap::new();
    for place in places {
        if let DeadPlace::Packed { pack, .. } = place {
            *dying.entry(pack).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (pack, n) in dying {
        if let Some(v) = r.get(&schema::pack_key(pack))? {
            let rec: schema::PackRec = schema::decode("pack", &v)?;
            if rec.live_slices <= n {
                out.push((pack, rec.size));
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Where the bytes of a dead slice are, for the garbage collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeadPlace {
    /// Never uploaded: only its log space is freed.
    Staged,
    /// One of the slices of `pack`, `len` bytes of it.
    Packed { pack: u64, len: u32 },
    /// Its own block objects.
    Blocks,
}
