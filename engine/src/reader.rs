//! The read path below the namespace: the object reader owns the object store client, the
//! in-memory block cache and the local data cache, and reads a slice's bytes from wherever
//! they are: the staging log (still staged), a pack (small slices), or block objects.
//! Readahead threads hold the reader, not the engine.

use crate::blockcache::{BlockCache, BlockId};
use crate::data::{self, ReadPiece};
use crate::diskcache::DiskCache;
use crate::diskcache::DiskCacheConfig;
use crate::error::{FsError, Result};
use crate::meta::Meta;
use crate::packfetch::{DirBudget, DirPlan, PackFetchConfig, PackFetcher, PackSource, WarmReport};
use crate::readahead::{Fetch, Prefetch, Readahead};
use crate::schema;
use crate::types::Ino;
use crate::types::PackFetchStats;
use crate::volume::VolumeRecord;
use bytes::Bytes;
use parking_lot::Mutex;
use spoolfs_metadata::prefix_end;
use spoolfs_objects::{ObjectStorage, StorageError, decode_block};
use spoolfs_uploader::Uploader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A packed slice is fetched with up to this many neighbours stored after it in its pack...
const COALESCE_SLICES: usize = 256;
/// ...in one ranged GET of at most this many bytes.
const COALESCE_BYTES: u64 = 1 << 20;
/// A reader of a slice whose pack is being fetched waits this long for it at most, then
/// fetches the slice itself.
const PACK_WAIT: Duration = Duration::from_secs(10);
/// Entries of one directory looked at when planning its prefetch, at most.
const DIR_PLAN_ENTRIES: usize = 100_000;

/// Object traffic since the mount (read by the metrics).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) objects_put: AtomicU64,
    pub(crate) objects_got: AtomicU64,
    pub(crate) dirty_bytes: AtomicU64,
    pub(crate) passthrough_opens: AtomicU64,
    /// Write requests since the mount (how the background thread sees the mount busy).
    pub(crate) writes: AtomicU64,
}

/// One piece of a warmup: a pack fetched whole (id, bytes), a packed slice of a pack not
/// fetched whole (id, bytes), or a block (slice, slice size, index).
#[derive(Clone, Copy, Debug)]
enum WarmItem {
    Pack(u64, u64),
    Slice(u64, u32),
    Block(u64, u32, u32),
}

/// The reader's part of the engine's configuration.
pub(crate) struct ReaderConfig<'a> {
    pub block_cache_bytes: u64,
    pub disk_cache: Option<&'a DiskCacheConfig>,
    pub readahead_bytes: u64,
    pub readahead_threads: usize,
    pub pack_fetch: PackFetchConfig,
}

pub(crate) struct ObjectReader {
    pub meta: Arc<Meta>,
    pub storage: Arc<ObjectStorage>,
    pub block_size: u64,
    pub chunk_size: u64,
    pub cache: BlockCache,
    /// Verified object data kept on the local disk.
    pub disk: Option<DiskCache>,
    /// Staged slices are read from the staging log, through the uploader.
    pub uploader: Option<Arc<Uploader>>,
    pub counters: Arc<Counters>,
    pub readahead: Option<Readahead>,
    /// Reads of slices staged on another node (shared volumes; set once at start).
    pub peers: std::sync::OnceLock<crate::peers::Peers>,
    /// Whole-pack fetches into the local data cache (only with a local data cache).
    packs: Option<Arc<PackFetcher>>,
}

impl ObjectReader {
    /// Opens the local data cache and starts the readahead threads (which hold the reader
    /// weakly: they end when it is dropped).
    pub fn start(
        meta: Arc<Meta>,
        storage: Arc<ObjectStorage>,
        volume: &VolumeRecord,
        config: &ReaderConfig,
        uploader: Option<Arc<Uploader>>,
        counters: Arc<Counters>,
    ) -> Result<Arc<ObjectReader>> {
        let disk = match config.disk_cache {
            Some(c) if c.max_bytes > 0 => Some(
                crate::diskcache::DiskCache::open(c.clone()).map_err(|source| FsError::Local {
                    what: "cannot open the local data cache in",
                    path: c.dir.clone(),
                    source,
                })?,
            ),
            _ => None,
        };
        let mut started = Ok(());
        let reader = Arc::new_cyclic(|me: &Weak<ObjectReader>| {
            let readahead = if config.readahead_bytes > 0 && config.readahead_threads > 0 {
                Readahead::start(
                    config.readahead_bytes,
                    config.readahead_threads,
                    me.clone() as Weak<dyn Prefetch>,
                )
                .map_err(|e| started = Err(e))
                .ok()
            } else {
                None
            };
            let packs = if disk.is_some()
                && config.pack_fetch.max_bytes > 0
                && config.pack_fetch.threads > 0
            {
                PackFetcher::start(config.pack_fetch, me.clone() as Weak<dyn PackSource>)
                    .map_err(|e| started = Err(e))
                    .ok()
            } else {
                None
            };
            ObjectReader {
                meta,
                storage,
                block_size: volume.block_size,
                chunk_size: volume.chunk_size,
                cache: BlockCache::new(config.block_cache_bytes),
                disk,
                uploader,
                counters,
                readahead,
                peers: std::sync::OnceLock::new(),
                packs,
            }
        });
        started.map_err(|source| FsError::Spawn {
            what: "readahead or pack fetch threads",
            source,
        })?;
        Ok(reader)
    }

    /// Queues the blocks of `[from, from + window)` of `ino` that are stored in the object
    /// store and not cached.
    pub fn queue_readahead(&self, ra: &Readahead, ino: Ino, from: u64) {
        let cs = self.chunk_size;
        let bs = self.block_size;
        let end = from.saturating_add(ra.window);
        let mut pos = from;
        while pos < end {
            let chunk = (pos / cs) as u32;
            let chunk_start = chunk as u64 * cs;
            let lo = (pos - chunk_start) as u32;
            let hi = (end - chunk_start).min(cs) as u32;
            let Ok(segs) = self.meta.view(|r| data::load(r, ino, chunk, lo, hi)) else {
                return;
            };
            if segs.is_empty() && chunk_start + cs >= end {
                return;
            }
            for s in segs.iter().filter(|s| s.id != 0) {
                // The part of the slice inside the window, in slice coordinates.
                let first = s.off as u64 + (lo.max(s.pos) - s.pos) as u64;
                let last = s.off as u64 + (hi.min(s.pos + s.len) - s.pos) as u64;
                if first >= last {
                    continue;
                }
                for index in first / bs..=(last - 1) / bs {
                    let index = index as u32;
                    if self.cache.contains(BlockId { slice: s.id, index }) {
                        continue;
                    }
                    ra.queue(Fetch {
                        slice: s.id,
                        size: s.size,
                        index,
                    });
                }
            }
            pos = chunk_start + hi as u64;
        }
    }

    pub fn read_piece(&self, piece: &ReadPiece, out: &mut [u8]) -> Result<()> {
        let Some((slice, slice_size, mut off)) = piece.source else {
            out.fill(0);
            return Ok(());
        };
        if slice == 0 {
            out.fill(0);
            return Ok(());
        }
        if let Some(read) = self
            .uploader
            .as_ref()
            .and_then(|wb| wb.read_staged(slice, off, out))
        {
            // Still staged: read it from the log, never from the object store.
            return read.map_err(|e| {
                crate::error_limited!("reading staged slice {slice}: {e}");
                FsError::new(e.errno(), format!("reading staged slice {slice}: {e}"))
            });
        }
        let bs = self.block_size as u32;
        // Staged on another node: read from it (a cached block means the slice is stored).
        if let Some(peers) = self.peers.get()
            && !self.cache.contains(BlockId::block(slice, off / bs))
            && !self.cache.contains(BlockId::whole(slice))
            && let Some(read) = peers.read(slice, off, out)
        {
            return read;
        }
        // Only small slices are ever packed; and a cached block means the slice is stored as
        // blocks, so only a miss asks the metadata.
        let maybe_packed = slice_size as usize <= spoolfs_objects::PACK_SLICE_MAX
            && self
                .cache
                .get(BlockId {
                    slice,
                    index: off / bs,
                })
                .is_none();
        if maybe_packed && let Some(data) = self.get_packed(slice)? {
            let start = off as usize;
            if start + out.len() > data.len() {
                return Err(FsError::Storage(StorageError::Checksum {
                    key: format!("slice {slice}"),
                    detail: "packed slice shorter than its metadata says".into(),
                }));
            }
            out.copy_from_slice(&data[start..start + out.len()]);
            return Ok(());
        }
        let mut done = 0usize;
        while done < out.len() {
            let index = off / bs;
            let in_block = (off % bs) as usize;
            let block = self.get_block(slice, slice_size, index)?;
            let n = (block.len() - in_block).min(out.len() - done);
            if n == 0 {
                return Err(FsError::Storage(StorageError::Checksum {
                    key: spoolfs_objects::block_key(slice, index, block.len() as u32),
                    detail: "block shorter than its slice says".into(),
                }));
            }
            out[done..done + n].copy_from_slice(&block[in_block..in_block + n]);
            done += n;
            off += n as u32;
        }
        Ok(())
    }

    /// A packed slice, whole: from the caches, from its pack's copy in the local data cache,
    /// or one ranged GET of its bytes in the pack, CRC-checked, cached. A cold read also has
    /// the whole pack fetched in the background (its neighbours are likely read next); a
    /// reader whose pack is already on its way waits for it only if it is about to land
    /// (else it could wait for whole packs queued ahead of it and for the pack itself, where
    /// a GET of its slice takes one round trip).
    fn get_packed(&self, slice: u64) -> Result<Option<Bytes>> {
        // Cached under an index no block object uses.
        let cached = BlockId {
            slice,
            index: u32::MAX,
        };
        if let Some(b) = self.cache.get(cached) {
            return Ok(Some(b));
        }
        if let Some(b) = self.disk.as_ref().and_then(|d| d.get_uncounted(cached)) {
            self.cache.insert(cached, b.clone());
            return Ok(Some(b));
        }
        // The pack may be on local disk (kept when it was uploaded from here, or fetched
        // whole): one point read of the slice's place, no scan of its neighbours.
        let place = self
            .meta
            .view(|r| match r.get(&schema::packed_key(slice))? {
                Some(v) => Ok(Some(schema::decode::<schema::PackedRec>(
                    "packed slice",
                    &v,
                )?)),
                None => Ok(None),
            })?;
        match place {
            None => return Ok(None),
            Some(p) => {
                if let Some(b) = self.cached_pack_slice(&p) {
                    self.cache.insert(cached, b.clone());
                    return Ok(Some(b));
                }
            }
        }
        let mut tries = 0;
        let mut waited = false;
        let nearby_bytes = self.packs.as_ref().map_or(0, |f| f.config.nearby_bytes);
        let data = loop {
            // The slice's place in its pack, the slices stored right after it in the same
            // pack (written together, so likely read together: one ranged GET fetches them),
            // those stored right before it (nearest first), and the pack's record.
            let (mut run, before, pack) = self.meta.view(|r| {
                let Some(v) = r.get(&schema::packed_key(slice))? else {
                    return Ok((Vec::new(), Vec::new(), None));
                };
                let p: schema::PackedRec = schema::decode("packed slice", &v)?;
                let mut run = vec![(slice, p)];
                let mut end = p.offset + p.len as u64;
                let next = schema::packed_key(slice + 1);
                for (k, v) in r.scan(&next, &prefix_end(b"L"), COALESCE_SLICES)? {
                    let (id, q) = packed_entry(&k, &v)?;
                    if q.pack != p.pack
                        || q.offset != end
                        || end + q.len as u64 - p.offset > COALESCE_BYTES
                    {
                        break;
                    }
                    end += q.len as u64;
                    run.push((id, q));
                }
                let mut before = Vec::new();
                let mut begin = p.offset;
                let below = r.scan_back(b"L", &schema::packed_key(slice), COALESCE_SLICES)?;
                for (k, v) in below {
                    let (id, q) = packed_entry(&k, &v)?;
                    if q.pack != p.pack
                        || q.offset + q.len as u64 != begin
                        || p.offset - q.offset > nearby_bytes
                    {
                        break;
                    }
                    begin = q.offset;
                    before.push((id, q));
                }
                let pack = match r.get(&schema::pack_key(p.pack))? {
                    Some(v) => Some(schema::decode::<schema::PackRec>("pack", &v)?),
                    None => None,
                };
                Ok((run, before, pack))
            })?;
            let Some(&(_, p)) = run.first() else {
                return Ok(None);
            };
            // Fetched whole meanwhile.
            if let Some(b) = self.cached_pack_slice(&p) {
                self.cache.insert(cached, b.clone());
                return Ok(Some(b));
            }
            if let Some(fetcher) = &self.packs {
                if !waited && fetcher.pending(p.pack) {
                    // On its way: moved ahead of the background work. Waited for if it is
                    // about to land; else this read takes its own slice meanwhile.
                    fetcher.fetch_soon(p.pack);
                    waited = true;
                    if let Some(limit) = fetcher.worth_waiting(p.pack)
                        && fetcher.wait_for(p.pack, limit.min(PACK_WAIT))
                    {
                        continue;
                    }
                    run = nearby(&run, &before, nearby_bytes);
                } else if !waited && let Some(rec) = pack.filter(|rec| self.fetches_whole(rec)) {
                    let near = nearby(&run, &before, nearby_bytes);
                    if near.iter().map(|(_, q)| q.len as u64).sum::<u64>() >= rec.live_bytes {
                        // Every live slice of the pack is this close: one ranged GET takes
                        // them all, a whole fetch would take them again.
                        run = near;
                    } else if fetcher.fetch_soon(p.pack) {
                        // The pack comes whole in the background, neighbours included: this
                        // read takes only its own slice and its nearest neighbours, without
                        // waiting for the rest (unless the pack landed between the checks above
                        // and now).
                        if let Some(b) = self.cached_pack_slice(&p) {
                            self.cache.insert(cached, b.clone());
                            return Ok(Some(b));
                        }
                        run = near;
                    }
                }
            }
            let key = spoolfs_objects::pack_object_key(p.pack);
            let (_, first) = run[0];
            let (_, last) = run[run.len() - 1];
            let end = last.offset + last.len as u64;
            let began = std::time::Instant::now();
            let got = self
                .storage
                .get_range(&key, first.offset, end)
                .and_then(|all| self.split_pack_run(&key, slice, &run, all));
            match got {
                Ok(d) => {
                    if let Some(fetcher) = &self.packs {
                        fetcher.note_slice_get(began.elapsed());
                    }
                    break d;
                }
                // Compaction moved the slice to a new pack and deleted the old one between
                // our metadata read and the GET: read where it is now.
                Err(StorageError::NotFound { .. }) if tries < 3 => tries += 1,
                Err(e) => {
                    crate::error_limited!("reading slice {slice} from pack {key}: {e}");
                    return Err(FsError::Storage(match e {
                        StorageError::NotFound { key } => StorageError::Checksum {
                            key,
                            detail: "pack referenced by metadata is missing".into(),
                        },
                        other => other,
                    }));
                }
            }
        };
        self.counters.objects_got.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = &self.disk {
            // Neither the slice's file nor its pack's was in the local data cache.
            d.note_miss();
            d.insert(cached, &data);
        }
        self.cache.insert(cached, data.clone());
        Ok(Some(data))
    }

    /// A packed slice read from its pack's copy in memory or in the local data cache, if it
    /// is there, checked against the CRC its `L` record keeps.
    fn cached_pack_slice(&self, p: &schema::PackedRec) -> Option<Bytes> {
        let range = p.offset as usize..p.offset as usize + p.len as usize;
        let in_memory = self.cache.get(BlockId::pack(p.pack)).filter(|pack| {
            range.end <= pack.len() && crc32c::crc32c(&pack[range.clone()]) == p.crc
        });
        let b = match in_memory {
            Some(pack) => pack.slice(range),
            None => Bytes::from(
                self.disk
                    .as_ref()?
                    .get_packed_slice(p.pack, p.offset, p.len, p.crc)?,
            ),
        };
        if let Some(f) = &self.packs {
            f.note_hit(p.pack);
        }
        Some(b)
    }

    /// Whether a pack is fetched whole: small enough for one fetch, mostly alive (a mostly
    /// dead pack waits for compaction; its live slices are read one run at a time), and kept
    /// by the local data cache once fetched.
    fn fetches_whole(&self, rec: &schema::PackRec) -> bool {
        let (Some(fetcher), Some(disk)) = (&self.packs, &self.disk) else {
            return false;
        };
        rec.size <= fetcher.config.max_bytes
            && rec.live_bytes.saturating_mul(4) >= rec.size
            && disk.keeps_whole_pack(rec.size)
    }

    /// Plans the prefetch of directory `dir` (a listing, or its files looked up in a row).
    pub fn prefetch_dir(&self, dir: Ino) {
        if let Some(f) = &self.packs {
            f.prefetch_dir(dir);
        }
    }

    /// A regular file of `dir` was looked up.
    pub fn note_lookup(&self, dir: Ino) {
        if let Some(f) = &self.packs {
            f.note_lookup(dir);
        }
    }

    /// Stops the pack fetches and the readahead: nothing is fetched after this returns.
    pub fn stop_fetches(&self) {
        if let Some(f) = &self.packs {
            f.stop();
        }
        if let Some(ra) = &self.readahead {
            ra.stop();
        }
    }

    /// Fetches the data of `files` into the local data cache with `jobs` threads: whole packs
    /// (the same fetch as a cold read's), the slices of packs not fetched whole, and blocks.
    /// Staged data is skipped (it is local already). `progress` sees the counts now and then
    /// on the calling thread. Stops early when the mount stops.
    pub fn warm(
        &self,
        files: &[Ino],
        jobs: usize,
        progress: &mut dyn FnMut(&WarmReport),
    ) -> Result<WarmReport> {
        let (Some(disk), Some(fetcher)) = (&self.disk, &self.packs) else {
            return Err(FsError::new(
                libc::EOPNOTSUPP,
                "no local data cache, or whole-pack fetches are off (--cache-size 0 or \
                 --pack-fetch-max 0): nothing to warm",
            ));
        };
        let (work, total_bytes) = self.warm_plan(files)?;
        let report = Mutex::new(WarmReport {
            files: files.len() as u64,
            total_bytes,
            ..Default::default()
        });
        let next = AtomicU64::new(0);
        let started = std::time::Instant::now();
        let running = AtomicU64::new(jobs.max(1) as u64);
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(item) = work.get(i) else { break };
                        if fetcher.stopped() {
                            break;
                        }
                        let (bytes, fetched) = match self.warm_one(*item, disk, fetcher) {
                            Ok(r) => r,
                            Err(e) => {
                                crate::warn_limited!("warmup: {e}");
                                report.lock().errors += 1;
                                continue;
                            }
                        };
                        let mut r = report.lock();
                        r.done_bytes += bytes;
                        r.fetched_bytes += fetched;
                    }
                    running.fetch_sub(1, Ordering::Release);
                });
            }
            while running.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_millis(200));
                let mut r = *report.lock();
                r.secs = started.elapsed().as_secs_f64();
                progress(&r);
            }
        });
        let mut r = report.into_inner();
        r.secs = started.elapsed().as_secs_f64();
        if fetcher.stopped() {
            return Err(FsError::new(libc::ESHUTDOWN, "the mount is stopping"));
        }
        Ok(r)
    }

    /// What warming `files` fetches, and its bytes.
    fn warm_plan(&self, files: &[Ino]) -> Result<(Vec<WarmItem>, u64)> {
        let mut packs = std::collections::HashSet::new();
        let mut slices = std::collections::HashSet::new();
        let mut work = Vec::new();
        let mut bytes = 0u64;
        let bs = self.block_size;
        for &ino in files {
            let segs = self.meta.view(|r| data::load_all(r, ino))?;
            for (_, seg) in segs {
                if seg.id == 0 || !slices.insert(seg.id) {
                    continue;
                }
                if self
                    .uploader
                    .as_ref()
                    .is_some_and(|wb| wb.get(seg.id).is_some())
                {
                    continue; // staged: read from the staging log
                }
                let packed = self.meta.view(|r| {
                    let Some(v) = r.get(&schema::packed_key(seg.id))? else {
                        return Ok(None);
                    };
                    let p: schema::PackedRec = schema::decode("packed slice", &v)?;
                    let rec = match r.get(&schema::pack_key(p.pack))? {
                        Some(v) => Some(schema::decode::<schema::PackRec>("pack", &v)?),
                        None => None,
                    };
                    Ok(Some((p, rec)))
                })?;
                match packed {
                    Some((p, Some(rec))) if self.fetches_whole(&rec) => {
                        if packs.insert(p.pack) {
                            work.push(WarmItem::Pack(p.pack, rec.size));
                            bytes += rec.size;
                        }
                    }
                    Some((p, _)) => {
                        work.push(WarmItem::Slice(seg.id, p.len));
                        bytes += p.len as u64;
                    }
                    None => {
                        for index in 0..(seg.size as u64).div_ceil(bs) {
                            work.push(WarmItem::Block(seg.id, seg.size, index as u32));
                        }
                        bytes += seg.size as u64;
                    }
                }
            }
        }
        Ok((work, bytes))
    }

    /// Fetches one item unless it is cached: (its bytes, the bytes fetched for it).
    fn warm_one(
        &self,
        item: WarmItem,
        disk: &DiskCache,
        fetcher: &PackFetcher,
    ) -> std::result::Result<(u64, u64), String> {
        match item {
            WarmItem::Pack(pack, size) => {
                if fetcher.pending(pack) {
                    fetcher.wait_for(pack, PACK_WAIT);
                }
                let fetched = if disk.contains(BlockId::pack(pack)) {
                    0
                } else {
                    self.fetch_pack(pack, fetcher)?
                };
                Ok((size, fetched))
            }
            WarmItem::Slice(slice, len) => {
                let cached = disk.contains(BlockId::whole(slice));
                self.get_packed(slice).map_err(|e| e.to_string())?;
                Ok((len as u64, if cached { 0 } else { len as u64 }))
            }
            WarmItem::Block(slice, size, index) => {
                let id = BlockId::block(slice, index);
                let cached = disk.contains(id);
                let b = self
                    .fetch_block(slice, size, index, false)
                    .map_err(|e| e.to_string())?;
                let n = b.len() as u64;
                // Blocks land in the local data cache as they are fetched; a block too large
                // for it is not kept (nothing more to do).
                Ok((n, if cached { 0 } else { n }))
            }
        }
    }

    pub fn pack_fetch_stats(&self) -> Option<PackFetchStats> {
        self.packs.as_ref().map(|f| f.stats())
    }

    /// Checks each slice of a coalesced pack read (`run`: consecutive slices of one pack, in
    /// their order in it) against its CRC, caches the neighbours and returns the bytes of
    /// `slice`, one of them.
    fn split_pack_run(
        &self,
        key: &str,
        slice: u64,
        run: &[(u64, schema::PackedRec)],
        all: Bytes,
    ) -> std::result::Result<Bytes, StorageError> {
        let first = run[0].1.offset;
        let (_, last) = run[run.len() - 1];
        if (all.len() as u64) < last.offset + last.len as u64 - first {
            return Err(StorageError::Checksum {
                key: key.to_string(),
                detail: format!("short read of a pack: {} bytes", all.len()),
            });
        }
        let mut mine = None;
        for (id, q) in run {
            let entry = spoolfs_objects::PackEntry {
                slice: *id,
                offset: q.offset,
                len: q.len,
                crc: q.crc,
            };
            let start = (q.offset - first) as usize;
            let piece = all.slice(start..start + q.len as usize);
            let checked = spoolfs_objects::verify_packed(key, &entry, piece)?;
            if *id == slice {
                mine = Some(checked);
            } else {
                let neighbour = BlockId::whole(*id);
                if let Some(d) = &self.disk {
                    d.insert(neighbour, &checked);
                }
                self.cache.insert(neighbour, checked);
            }
        }
        Ok(mine.expect("the run holds the slice asked for"))
    }

    fn get_block(&self, slice: u64, slice_size: u32, index: u32) -> Result<Bytes> {
        self.fetch_block(slice, slice_size, index, false)
    }

    /// `for_readahead`: the caller is the readahead job for this very block (it must not
    /// wait for itself).
    fn fetch_block(
        &self,
        slice: u64,
        slice_size: u32,
        index: u32,
        for_readahead: bool,
    ) -> Result<Bytes> {
        let id = BlockId { slice, index };
        if let Some(b) = self.cache.get(id) {
            return Ok(b);
        }
        if let Some(b) = self.disk.as_ref().and_then(|d| d.get(id)) {
            self.cache.insert(id, b.clone());
            return Ok(b);
        }
        // Being fetched ahead: wait for that instead of fetching it twice.
        if let Some(ra) = &self.readahead
            && !for_readahead
        {
            ra.wait_for(slice, index);
            if let Some(b) = self.cache.get(id) {
                return Ok(b);
            }
        }
        let bs = self.block_size as u32;
        let len = (slice_size - index * bs).min(bs);
        let key = spoolfs_objects::block_key(slice, index, len);
        let object = self.storage.get(&key).map_err(|e| {
            crate::error_limited!("reading object {key}: {e}");
            match e {
                StorageError::NotFound { key } => FsError::Storage(StorageError::Checksum {
                    key,
                    detail: "object referenced by metadata is missing".into(),
                }),
                other => FsError::Storage(other),
            }
        })?;
        self.counters.objects_got.fetch_add(1, Ordering::Relaxed);
        let data = decode_block(&key, object).map_err(|e| {
            crate::error_limited!("{e}");
            FsError::Storage(e)
        })?;
        if data.len() != len as usize {
            crate::error_limited!("object {key} holds {} bytes, expected {len}", data.len());
            return Err(FsError::Storage(StorageError::Checksum {
                key,
                detail: format!("{} bytes, expected {len}", data.len()),
            }));
        }
        if let Some(d) = &self.disk {
            d.insert(id, &data);
        }
        self.cache.insert(id, data.clone());
        Ok(data)
    }
}

/// An `L` record: the slice its key names and where the slice is stored.
fn packed_entry(
    key: &[u8],
    value: &[u8],
) -> std::result::Result<(u64, schema::PackedRec), spoolfs_metadata::MetaError> {
    let id = schema::key_id("packed slice", key)?;
    Ok((id, schema::decode("packed slice", value)?))
}

/// The part of a pack a read of `run[0]` takes when the pack comes whole anyway: the slices
/// stored up to `bytes` before it (`before`: nearest first) and after it (`run`: the slice,
/// then its followers), in their order in the pack.
fn nearby(
    run: &[(u64, schema::PackedRec)],
    before: &[(u64, schema::PackedRec)],
    bytes: u64,
) -> Vec<(u64, schema::PackedRec)> {
    let (_, me) = run[0];
    let end = me.offset + me.len as u64;
    let mut out: Vec<_> = before
        .iter()
        .take_while(|(_, q)| me.offset - q.offset <= bytes)
        .copied()
        .collect();
    out.reverse();
    out.push(run[0]);
    out.extend(
        run[1..]
            .iter()
            .take_while(|(_, q)| q.offset + q.len as u64 - end <= bytes)
            .copied(),
    );
    out
}

impl Prefetch for ObjectReader {
    /// A readahead job: fetch the piece into the caches unless it is staged or cached.
    fn prefetch(&self, job: Fetch) {
        if self
            .uploader
            .as_ref()
            .is_some_and(|wb| wb.get(job.slice).is_some())
        {
            return;
        }
        let block = BlockId::block(job.slice, job.index);
        if self.cache.contains(block) || self.cache.contains(BlockId::whole(job.slice)) {
            return;
        }
        if job.size as usize <= spoolfs_objects::PACK_SLICE_MAX {
            match self.get_packed(job.slice) {
                Ok(Some(_)) => return,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("readahead of slice {}: {e}", job.slice);
                    return;
                }
            }
        }
        if let Err(e) = self.fetch_block(job.slice, job.size, job.index, true) {
            tracing::debug!("readahead of slice {} block {}: {e}", job.slice, job.index);
        }
    }
}

impl PackSource for ObjectReader {
    fn fetch_pack(&self, pack: u64, fetcher: &PackFetcher) -> std::result::Result<u64, String> {
        let Some(disk) = &self.disk else {
            return Ok(0);
        };
        if disk.contains(BlockId::pack(pack)) {
            return Ok(0);
        }
        let rec = self
            .meta
            .view(|r| match r.get(&schema::pack_key(pack))? {
                Some(v) => Ok(Some(schema::decode::<schema::PackRec>("pack", &v)?)),
                None => Ok(None),
            })
            .map_err(|e| e.to_string())?;
        // Gone (compacted, or dead) or not worth a whole fetch.
        let Some(rec) = rec.filter(|r| self.fetches_whole(r)) else {
            return Ok(0);
        };
        let key = spoolfs_objects::pack_object_key(pack);
        fetcher.begin_fetch(pack, rec.size);
        let got = self.storage.get(&key).and_then(|object| {
            if object.len() as u64 != rec.size {
                return Err(StorageError::Checksum {
                    key: key.clone(),
                    detail: format!("{} bytes, expected {}", object.len(), rec.size),
                });
            }
            // The footer and index checked; each slice is checked against its `L` record's
            // CRC when it is read.
            spoolfs_objects::decode_pack_index(&key, &object)?;
            Ok(object)
        });
        match got {
            Ok(object) => {
                self.counters.objects_got.fetch_add(1, Ordering::Relaxed);
                // Its files are usually read next (a listing or a read of one of them asked
                // for it): they are served from memory while it stays in the block cache,
                // not from its file (written around the page cache where the disk allows).
                // In memory, and the fetch ended (its time is the GET's, which readers
                // weigh against a GET of their own), before the file is written: a reader
                // finds the pack while that write goes on.
                self.cache.insert(BlockId::pack(pack), object.clone());
                fetcher.end_fetch(pack, rec.size, Some(object.len() as u64));
                disk.insert(BlockId::pack(pack), &object);
                Ok(object.len() as u64)
            }
            // Compaction deleted it since the metadata was read: its slices moved.
            Err(StorageError::NotFound { .. }) => {
                fetcher.end_fetch(pack, rec.size, Some(0));
                Ok(0)
            }
            Err(e) => {
                fetcher.end_fetch(pack, rec.size, None);
                Err(format!("{key}: {e}"))
            }
        }
    }

    fn plan_dir(&self, dir: Ino, budget: &mut DirBudget) -> DirPlan {
        let Some(disk) = &self.disk else {
            return DirPlan::default();
        };
        let file_max = self
            .packs
            .as_ref()
            .map_or(0, |f| f.config.dir_file_max_bytes);
        let planned = self.meta.view(|r| {
            let mut large = Vec::new();
            let prefix = schema::dentry_prefix(dir);
            let mut packs = Vec::new();
            // Packs and blocks in the local data cache already: read ahead from it instead,
            // within a budget of their own.
            let mut on_disk = Vec::new();
            let mut on_disk_left = budget.read_ahead;
            let mut seen = std::collections::HashSet::new();
            let mut left = budget.fetch;
            let mut subdirs = Vec::new();
            // Files left out for the budget.
            let mut cut = false;
            // Regular files seen, and whether any has data not in the local data cache.
            let mut files = 0u64;
            let mut uncached = false;
            for (_, v) in r.scan(&prefix, &prefix_end(&prefix), DIR_PLAN_ENTRIES)? {
                let d: schema::DentryRec = schema::decode("directory entry", &v)?;
                if d.kind == crate::types::FileKind::Dir {
                    subdirs.push(d.ino);
                }
                if d.kind != crate::types::FileKind::File {
                    continue;
                }
                files += 1;
                if left == 0 && on_disk_left == 0 {
                    cut = true;
                    continue;
                }
                // The file's first slice: its pack if it is packed; its blocks if it is stored
                // as blocks and the file is no larger than `dir_file_max_bytes` (a shared
                // library next to the modules that load it); larger files are not fetched
                // ahead (readahead follows their reader instead).
                let chunk = schema::chunk_key(d.ino, 0);
                let Some((_, v)) = r.scan(&chunk, &prefix_end(&chunk), 1)?.into_iter().next()
                else {
                    continue;
                };
                let seg: schema::SliceRec = schema::decode("segment", &v)?;
                if seg.id == 0 {
                    continue;
                }
                if seg.size as usize > spoolfs_objects::PACK_SLICE_MAX {
                    let file_size = schema::get_inode(r, d.ino)?.map_or(u64::MAX, |i| i.size);
                    if file_size <= file_max && self.readahead.is_some() {
                        let blocks = (seg.size as u64).div_ceil(self.block_size) as u32;
                        if (0..blocks).all(|i| disk.contains(BlockId::block(seg.id, i))) {
                            large.push((seg.id, seg.size));
                            continue;
                        }
                        uncached = true;
                        // The budget is spent at the first file that does not fit in it.
                        if seg.size as u64 > left {
                            left = 0;
                            cut = true;
                            continue;
                        }
                        left -= seg.size as u64;
                        large.push((seg.id, seg.size));
                    }
                    continue;
                }
                let Some(v) = r.get(&schema::packed_key(seg.id))? else {
                    continue; // staged, or stored as a block
                };
                let p: schema::PackedRec = schema::decode("packed slice", &v)?;
                if !seen.insert(p.pack) {
                    continue;
                }
                let Some(v) = r.get(&schema::pack_key(p.pack))? else {
                    continue;
                };
                let rec: schema::PackRec = schema::decode("pack", &v)?;
                if disk.contains(BlockId::pack(p.pack)) {
                    if rec.size <= on_disk_left {
                        on_disk_left -= rec.size;
                        on_disk.push(BlockId::pack(p.pack));
                    } else {
                        cut = true;
                    }
                    continue;
                }
                uncached = true;
                // Queued already (by this listing's plan of another directory, or by a
                // reader): nothing more to fetch, nothing taken from the budget.
                if !self.fetches_whole(&rec)
                    || self.packs.as_ref().is_some_and(|f| f.pending(p.pack))
                {
                    continue;
                }
                if rec.size > left {
                    left = 0;
                    cut = true;
                    continue;
                }
                left -= rec.size;
                packs.push(p.pack);
            }
            let plan = DirPlan {
                packs,
                subdirs,
                cut,
                cached_only: files > 0 && !uncached,
            };
            let left = DirBudget {
                fetch: left,
                read_ahead: on_disk_left,
            };
            Ok((plan, left, large, on_disk))
        });
        match planned {
            Ok((mut plan, left, large, on_disk)) => {
                let reads_ahead = budget.read_ahead > 0;
                *budget = left;
                for id in on_disk {
                    disk.read_ahead(id);
                }
                if let Some(ra) = &self.readahead {
                    for (slice, size) in large {
                        let blocks = (size as u64).div_ceil(self.block_size) as u32;
                        for index in 0..blocks {
                            let id = BlockId::block(slice, index);
                            if disk.contains(id) {
                                if reads_ahead {
                                    disk.read_ahead(id);
                                } else {
                                    plan.cut = true;
                                }
                            } else {
                                ra.queue(Fetch { slice, size, index });
                            }
                        }
                    }
                }
                plan
            }
            Err(e) => {
                tracing::debug!("planning the prefetch of directory {dir}: {e}");
                DirPlan::default()
            }
        }
    }
}
