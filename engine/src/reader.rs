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
use crate::readahead::{Fetch, Prefetch, Readahead};
use crate::schema;
use crate::types::Ino;
use crate::volume::VolumeRecord;
use bytes::Bytes;
use spoolfs_metadata::prefix_end;
use spoolfs_objects::{ObjectStorage, StorageError, decode_block};
use spoolfs_uploader::Uploader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A packed slice is fetched with up to this many neighbours stored after it in its pack...
const COALESCE_SLICES: usize = 256;
/// ...in one ranged GET of at most this many bytes.
const COALESCE_BYTES: u64 = 1 << 20;

/// Object traffic since the mount (read by the metrics).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) objects_put: AtomicU64,
    pub(crate) objects_got: AtomicU64,
    pub(crate) dirty_bytes: AtomicU64,
    pub(crate) passthrough_opens: AtomicU64,
}

/// The reader's part of the engine's configuration.
pub(crate) struct ReaderConfig<'a> {
    pub block_cache_bytes: u64,
    pub disk_cache: Option<&'a DiskCacheConfig>,
    pub readahead_bytes: u64,
    pub readahead_threads: usize,
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
            }
        });
        started.map_err(|source| FsError::Spawn {
            what: "readahead threads",
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

    /// A packed slice, whole: one ranged GET of its bytes in the pack, CRC-checked, cached.
    fn get_packed(&self, slice: u64) -> Result<Option<Bytes>> {
        // Cached under an index no block object uses.
        let cached = BlockId {
            slice,
            index: u32::MAX,
        };
        if let Some(b) = self.cache.get(cached) {
            return Ok(Some(b));
        }
        if let Some(b) = self.disk.as_ref().and_then(|d| d.get(cached)) {
            self.cache.insert(cached, b.clone());
            return Ok(Some(b));
        }
        let mut tries = 0;
        let data = loop {
            // The slice's place in its pack, and the slices stored right after it in the same
            // pack (written together, so likely read together): one ranged GET fetches them.
            let run = self.meta.view(|r| {
                let Some(v) = r.get(&schema::packed_key(slice))? else {
                    return Ok(Vec::new());
                };
                let p: schema::PackedRec = schema::decode("packed slice", &v)?;
                let mut run = vec![(slice, p)];
                let mut end = p.offset + p.len as u64;
                let next = schema::packed_key(slice + 1);
                for (k, v) in r.scan(&next, &prefix_end(b"L"), COALESCE_SLICES)? {
                    let q: schema::PackedRec = schema::decode("packed slice", &v)?;
                    if q.pack != p.pack
                        || q.offset != end
                        || end + q.len as u64 - p.offset > COALESCE_BYTES
                    {
                        break;
                    }
                    end += q.len as u64;
                    run.push((
                        u64::from_be_bytes(k[1..9].try_into().expect("packed key")),
                        q,
                    ));
                }
                Ok(run)
            })?;
            let Some(&(_, p)) = run.first() else {
                return Ok(None);
            };
            // The whole pack may be on local disk (kept when it was uploaded from here).
            if let Some(b) = self
                .disk
                .as_ref()
                .and_then(|d| d.get_packed_slice(p.pack, p.offset, p.len, p.crc))
            {
                let b = Bytes::from(b);
                self.cache.insert(cached, b.clone());
                return Ok(Some(b));
            }
            let key = spoolfs_objects::pack_object_key(p.pack);
            let (_, last) = run[run.len() - 1];
            let end = last.offset + last.len as u64;
            let got = self
                .storage
                .get_range(&key, p.offset, end)
                .and_then(|all| self.split_pack_run(&key, slice, &run, all));
            match got {
                Ok(d) => break d,
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
            d.insert(cached, &data);
        }
        self.cache.insert(cached, data.clone());
        Ok(Some(data))
    }

    /// Checks each slice of a coalesced pack read against its CRC, caches the neighbours and
    /// returns the bytes of `slice` (the first of the run).
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
        Ok(mine.expect("the run starts with the slice asked for"))
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
