//! The upload threads: take a batch of staged slices, read them, build block and pack
//! objects, PUT them, and move the batch to the object store in one metadata transaction.

use crate::staged::Staged;
use crate::uploader::Uploader;
use crate::{UPLOAD_BATCH, UPLOAD_BATCH_BYTES, UploadError};
use bytes::Bytes;
use spoolfs_objects::{PACK_SLICE_MAX, PackEntry, encode_block, encode_pack, split_blocks};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A pack object just written: its id, size and entries.
pub struct PackUpload {
    pub pack: u64,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

/// What the uploader needs from the file system's metadata and caches (implemented by the
/// engine). The uploader never sees inodes or metadata keys.
pub trait Catalog: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Bytes per block object.
    fn block_size(&self) -> usize;
    /// A fresh id for a pack object (from the slice id space).
    fn new_pack_id(&self) -> Result<u64, Self::Error>;
    /// In one transaction: deletes the `T` records of `slices` still staged, records where
    /// the packed ones now are, and records the packs. Returns the slices whose `T` records
    /// it deleted (the caller frees their log space) and the packs none of whose slices
    /// were still staged (the caller deletes them).
    fn commit_uploaded(
        &self,
        slices: &[u64],
        packs: &[PackUpload],
    ) -> Result<(Vec<u64>, Vec<u64>), Self::Error>;
    /// Keeps an uploaded block in the local data cache, if the cache keeps large uploads.
    fn cache_block(&self, slice: u64, index: u32, data: &[u8]);
    /// Keeps an uploaded pack in the local data cache, if there is one.
    fn cache_pack(&self, pack: u64, object: &[u8]);
    /// Counts objects written.
    fn objects_put(&self, count: u64);
    /// The file system is stopping: uploads stop at once.
    fn stopping(&self) -> bool;
    /// Makes every metadata change committed so far survive a power cut. Objects of slices
    /// that died while they were being uploaded are deleted only after it: until the death
    /// is durable, a power cut could bring the slice back.
    fn make_durable(&self) -> Result<(), Self::Error>;
}

/// The body of an uploader thread. It waits on the uploader's state, never holding the
/// catalog, so a dropped engine goes away.
pub fn run_uploader<C: Catalog>(catalog: Weak<C>, up: Arc<Uploader>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if up.stopped() {
            return;
        }
        {
            let mut set = up.set.lock();
            if set.queue.is_empty() {
                up.cv.wait_for(&mut set, Duration::from_millis(200));
            }
            if set.queue.is_empty() {
                if catalog.strong_count() == 0 {
                    return;
                }
                continue;
            }
            // Let small slices gather into one pack, and a burst of writes end (or fill
            // the upload hold), unless somebody waits for them.
            let delay = up.opts.upload_delay;
            if up.draining.load(Ordering::Acquire) == 0
                && let Some(wait) = [
                    set.wait_needed(delay, up.opts.pack_size),
                    set.burst_wait(delay, up.opts.upload_hold),
                ]
                .into_iter()
                .flatten()
                .max()
            {
                up.cv
                    .wait_for(&mut set, wait.min(Duration::from_millis(200)));
                continue;
            }
        }
        let Some(c) = catalog.upgrade() else { return };
        if c.stopping() {
            return;
        }
        match upload_batch(&*c, &up) {
            Ok(_) => backoff = Duration::from_millis(50),
            Err(_) => {
                drop(c);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Uploads a batch of staged slices, oldest first. Returns false if there was nothing to
/// do.
pub fn upload_batch<C: Catalog>(c: &C, up: &Uploader) -> Result<bool, UploadError> {
    let batch = take_batch(up);
    if batch.is_empty() {
        return Ok(false);
    }
    let result = upload_slices(c, up, &batch);
    let mut set = up.set.lock();
    set.busy -= batch.len();
    if let Err(e) = &result {
        set.upload_errors += 1;
        set.uncertain.extend(batch.iter().map(|(id, _)| *id));
        for (id, _) in batch.iter().rev() {
            if set.map.contains_key(id) {
                set.queue.push_front(*id);
            }
        }
        spoolfs_lograte::warn_limited!(
            "upload of {} staged slice(s) failed, will retry: {}",
            batch.len(),
            crate::with_causes(e)
        );
    }
    up.cv.notify_all();
    result.map(|_| true)
}

/// Takes up to [`UPLOAD_BATCH`] slices, or [`UPLOAD_BATCH_BYTES`], off the queue.
fn take_batch(up: &Uploader) -> Vec<(u64, Staged)> {
    let mut set = up.set.lock();
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while batch.len() < UPLOAD_BATCH && (batch.is_empty() || bytes < UPLOAD_BATCH_BYTES) {
        let Some(id) = set.queue.pop_front() else {
            break;
        };
        set.urgent.remove(&id);
        // A slice that died and was collected while queued is simply dropped.
        if let Some(rec) = set.map.get(&id).copied() {
            bytes += rec.rec.size as u64;
            batch.push((id, rec));
        }
    }
    set.busy += batch.len();
    batch
}

/// The objects of one batch, and which object keys each slice went into.
#[derive(Default)]
struct BatchObjects {
    objects: Vec<(String, Bytes)>,
    /// Objects each slice was written to, for the clean-up of slices that died meanwhile.
    keys: HashMap<u64, Vec<String>>,
    packs: Vec<PackUpload>,
}

fn upload_slices<C: Catalog>(
    c: &C,
    up: &Uploader,
    batch: &[(u64, Staged)],
) -> Result<(), UploadError> {
    let mut out = BatchObjects::default();
    // Small slices go into pack objects of about `pack_size` bytes: one PUT for many.
    let mut small: Vec<(u64, Vec<u8>)> = Vec::new();
    for (id, staged) in batch {
        let Some(data) = read_slice(up, *id, staged)? else {
            continue; // collected meanwhile; its space may be reused
        };
        // Uploaded data stays readable locally: a copy goes into the disk cache (slices
        // never change, so it cannot go stale). Small slices are cached as the pack they
        // go up in: one file per pack, not one per slice.
        if data.len() <= PACK_SLICE_MAX {
            small.push((*id, data));
            continue;
        }
        for (i, key, b) in split_blocks(*id, &data, c.block_size()) {
            c.cache_block(*id, i, b);
            out.keys.entry(*id).or_default().push(key.clone());
            out.objects.push((key, encode_block(b)));
        }
    }
    pack_small_slices(c, up, &small, &mut out)?;
    put_objects(c, up, std::mem::take(&mut out.objects))?;
    commit_and_release(c, up, batch, out)
}

/// A staged slice's bytes: from memory if kept there, else from the log. `None`: the slice
/// was collected meanwhile.
fn read_slice(up: &Uploader, id: u64, staged: &Staged) -> Result<Option<Vec<u8>>, UploadError> {
    if let Some(data) = up.take_resident(id) {
        return Ok(Some(data));
    }
    let mut data = vec![0u8; staged.rec.size as usize];
    match up.opts.log.read(&staged.loc, 0, &mut data) {
        Ok(()) => Ok(Some(data)),
        Err(_) if up.get(id).is_none() => Ok(None),
        Err(source) => Err(UploadError::ReadStaged { slice: id, source }),
    }
}

/// Packs small slices into pack objects of about the pack size, in order.
fn pack_small_slices<C: Catalog>(
    c: &C,
    up: &Uploader,
    small: &[(u64, Vec<u8>)],
    out: &mut BatchObjects,
) -> Result<(), UploadError> {
    let mut start = 0;
    while start < small.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < small.len() && (end == start || bytes + small[end].1.len() <= up.opts.pack_size)
        {
            bytes += small[end].1.len();
            end += 1;
        }
        let pack = c.new_pack_id().map_err(UploadError::catalog)?;
        let parts: Vec<(u64, &[u8])> = small[start..end]
            .iter()
            .map(|(id, d)| (*id, d.as_slice()))
            .collect();
        let (object, entries) = encode_pack(&parts);
        c.cache_pack(pack, &object);
        for e in &entries {
            out.keys.entry(e.slice).or_default();
        }
        out.packs.push(PackUpload {
            pack,
            size: object.len() as u64,
            entries,
        });
        out.objects
            .push((spoolfs_objects::pack_object_key(pack), object));
        start = end;
    }
    Ok(())
}

/// PUTs the objects, paced by the upload limit.
fn put_objects<C: Catalog>(
    c: &C,
    up: &Uploader,
    objects: Vec<(String, Bytes)>,
) -> Result<(), UploadError> {
    let count = objects.len() as u64;
    up.limiter
        .acquire(objects.iter().map(|(_, o)| o.len() as u64).sum());
    up.storage.put_many(objects, up.max_uploads)?;
    c.objects_put(count);
    Ok(())
}

/// One transaction moves the whole batch to the object store. Whoever deletes a `T` record
/// frees its log space; slices collected meanwhile are not ours any more, nor are the
/// objects just written for them.
fn commit_and_release<C: Catalog>(
    c: &C,
    up: &Uploader,
    batch: &[(u64, Staged)],
    out: BatchObjects,
) -> Result<(), UploadError> {
    let ids: Vec<u64> = out.keys.keys().copied().collect();
    let (committed, empty_packs) = c
        .commit_uploaded(&ids, &out.packs)
        .map_err(UploadError::catalog)?;
    // Counted before the slices leave the staged set, so whoever sees them gone (a sync)
    // also sees them counted.
    let done: HashSet<u64> = committed.iter().copied().collect();
    debug_assert_eq!(done.len(), committed.len(), "a T record deleted twice");
    let uploaded: u64 = batch
        .iter()
        .filter(|(id, _)| done.contains(id))
        .map(|(_, s)| s.rec.size as u64)
        .sum();
    up.stats
        .uploaded_bytes
        .fetch_add(uploaded, Ordering::Relaxed);
    up.stats
        .uploaded_slices
        .fetch_add(done.len() as u64, Ordering::Relaxed);
    up.remove_many(&committed);
    // Not committed now, but perhaps by an earlier attempt of ours that reported an error:
    // their objects may be the only copy of live data. They leave the staged set (their log
    // space is freed, if a collector has not done so) and their objects are left to the
    // orphan sweep of `spoolfs gc`, which checks every reference first.
    let maybe_ours: Vec<u64> = {
        let mut set = up.set.lock();
        let mine = ids
            .iter()
            .filter(|id| !done.contains(id) && set.uncertain.contains(id))
            .copied()
            .collect();
        for id in &ids {
            set.uncertain.remove(id);
        }
        mine
    };
    if !maybe_ours.is_empty() {
        tracing::warn!(
            "{} slice(s) of a retried upload were already committed or collected: their new \
             objects are left to the orphan sweep",
            maybe_ours.len()
        );
        up.remove_many(&maybe_ours);
    }
    let orphaned = ids
        .iter()
        .any(|id| !done.contains(id) && !maybe_ours.contains(id))
        || !empty_packs.is_empty();
    if orphaned && let Err(e) = c.make_durable() {
        // Left for the orphan sweep of `spoolfs gc`, which deletes them once they are
        // older than its grace period and nothing refers to them.
        tracing::warn!(
            "not deleting the objects of slices that died while uploading: the metadata \
             is not durable ({e})"
        );
        return Ok(());
    }
    for id in ids
        .iter()
        .filter(|id| !done.contains(id) && !maybe_ours.contains(id))
    {
        // Collected while we uploaded: the objects we just wrote belong to nobody.
        for key in &out.keys[id] {
            let _ = up.storage.delete(key);
        }
    }
    for pack in empty_packs {
        let _ = up.storage.delete(&spoolfs_objects::pack_object_key(pack));
    }
    Ok(())
}

/// The objects of a slice that died while it was being uploaded (its `T` record deleted
/// before the upload's commit) are deleted only after the metadata is made durable, and not
/// at all when that fails: a power cut could otherwise bring back the slice after its only
/// uploaded copy is gone. In the engine the collector makes a staged slice's death durable
/// before it deletes the `T` record, so only this contract, tested here against a catalog
/// that says every slice died, keeps a future path that deletes `T` records another way
/// safe.
#[cfg(test)]
mod died_while_uploading {
    use super::*;
    use crate::{StagedRec, UploadOptions};
    use parking_lot::Mutex;
    use spoolfs_objects::{ObjectStorage, StorageConfig};
    use spoolfs_staging::{RecordHeader, StagingConfig, StagingLog};
    use std::sync::atomic::AtomicU64;

    /// A catalog whose commits find every slice already dead, and which notes how many
    /// objects were in the store each time the metadata was made durable.
    struct EveryoneDied {
        storage: Arc<ObjectStorage>,
        next_pack: AtomicU64,
        fail_durable: bool,
        objects_when_durable: Mutex<Vec<usize>>,
    }

    impl Catalog for EveryoneDied {
        type Error = std::io::Error;
        fn block_size(&self) -> usize {
            64 << 10
        }
        fn new_pack_id(&self) -> Result<u64, Self::Error> {
            Ok(self.next_pack.fetch_add(1, Ordering::SeqCst))
        }
        fn commit_uploaded(
            &self,
            _slices: &[u64],
            packs: &[PackUpload],
        ) -> Result<(Vec<u64>, Vec<u64>), Self::Error> {
            // No slice was still staged: no pack has a live slice.
            Ok((Vec::new(), packs.iter().map(|p| p.pack).collect()))
        }
        fn cache_block(&self, _slice: u64, _index: u32, _data: &[u8]) {}
        fn cache_pack(&self, _pack: u64, _object: &[u8]) {}
        fn objects_put(&self, _count: u64) {}
        fn stopping(&self) -> bool {
            false
        }
        fn make_durable(&self) -> Result<(), Self::Error> {
            let n = self.storage.list("").expect("list").len();
            self.objects_when_durable.lock().push(n);
            if self.fail_durable {
                return Err(std::io::Error::other("metadata disk failing"));
            }
            Ok(())
        }
    }

    /// Uploads one packed and one block slice that both died meanwhile; returns the catalog
    /// and the objects left in the store.
    fn upload_dead_slices(fail_durable: bool) -> (EveryoneDied, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let config = StagingConfig::for_tests(dir.path(), *b"upload-test-vol!", 8 << 20);
        let (log, _) = StagingLog::open(config).unwrap();
        let storage = Arc::new(
            ObjectStorage::open(&StorageConfig {
                url: "memory://".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        let opts = UploadOptions {
            log: Arc::new(log),
            writeback: true,
            max_staging_bytes: 1 << 30,
            max_staging_age: Duration::from_secs(3600),
            max_staging_wait: Duration::from_secs(10),
            upload_threads: 1,
            segment_size: 8 << 20,
            upload_delay: Duration::ZERO,
            pack_size: 8 << 20,
            upload_limit: 0,
            namespace: None,
            upload_buffer: 0,
            upload_hold: 0,
            node_id: 0,
        };
        let up = Uploader::new(opts, storage.clone(), 4);
        let mut staged = Vec::new();
        for (slice_id, len) in [(11u64, 5000usize), (12, 2 << 20)] {
            let data = vec![slice_id as u8; len];
            let header = RecordHeader {
                ino: 2,
                chunk: 0,
                pos: 0,
                slice_id,
                len: len as u32,
                meta_len: 0,
            };
            let loc = up.opts.log.append(&header, &data, false).unwrap();
            let rec = StagedRec {
                ino: 2,
                chunk: 0,
                size: len as u32,
                segment: loc.segment,
                offset: loc.offset,
                staged_ns: 1,
                owner: 0,
            };
            staged.push((slice_id, Staged::at(rec, loc)));
        }
        up.add(&staged);
        let catalog = EveryoneDied {
            storage: storage.clone(),
            next_pack: AtomicU64::new(1000),
            fail_durable,
            objects_when_durable: Mutex::new(Vec::new()),
        };
        while upload_batch(&catalog, &up).unwrap() {}
        let left = storage.list("").unwrap();
        (catalog, left)
    }

    #[test]
    fn objects_of_slices_that_died_while_uploading_go_after_the_metadata_is_durable() {
        let (catalog, left) = upload_dead_slices(false);
        let seen = catalog.objects_when_durable.lock().clone();
        assert!(
            seen.first().is_some_and(|&n| n >= 2),
            "the metadata was not made durable while the dead slices' objects were still \
             there (objects present at each durable point: {seen:?})"
        );
        assert!(
            left.is_empty(),
            "dead slices' objects left behind: {left:?}"
        );
    }

    #[test]
    fn objects_of_slices_that_died_while_uploading_stay_if_the_metadata_cannot_be_made_durable() {
        let (_, left) = upload_dead_slices(true);
        assert!(
            left.len() >= 2,
            "objects deleted although their slices' death may not survive a power cut: \
             {left:?} left"
        );
    }
}
