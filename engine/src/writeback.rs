//! The engine's side of writeback: opening the staging logs (data and namespace), the
//! namespace log on the staging log, crash replay of staged slices, the waits of `sync` and
//! unmount, and the [`Catalog`] through which the uploader (`spoolfs-uploader`) records what
//! it uploaded. The staged set and the upload threads live in the uploader.

use crate::blockcache::BlockId;
use crate::error::{FsError, Result};
use crate::ids::IdAllocator;
use crate::meta::Meta;
use crate::reader::{Counters, ObjectReader};
use crate::schema::{self, StagedRec};
use crate::staging::{RecordHeader, Replayed, StagedLoc, StagingError, StagingLog};
use crate::stop::StopSignal;
use parking_lot::Mutex;
use spoolfs_metadata::prefix_end;
use spoolfs_uploader::{Catalog, NamespaceProgress, PackUpload, Staged, UploadOptions, Uploader};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use spoolfs_uploader::DEFAULT_PACK_SIZE;

/// The namespace log's segments: at most this many bytes each...
const NAMESPACE_SEGMENT_MAX: u64 = 16 << 20;
/// ...and this many of them. A full namespace log makes the next transaction commit durably
/// to the metadata store instead.
const NAMESPACE_SEGMENTS: usize = 16;

/// How a mount stages writes: the uploader's options, what the data log held when it was
/// opened (crash replay input), and the namespace log.
#[derive(Clone)]
pub struct StagingOptions {
    pub uploads: UploadOptions,
    /// Records the log held when it was opened (crash replay input).
    pub replayed: Arc<Vec<Replayed>>,
    /// The namespace log: a slice's record may carry a namespace transaction, and must then
    /// outlive it until the metadata store has made that transaction durable. Weak: the
    /// engine owns the store (uploader threads may outlive it briefly).
    pub wal: Option<std::sync::Weak<crate::wal::WalStore>>,
}

impl NamespaceProgress for crate::wal::WalStore {
    fn persisted_through(&self) -> u64 {
        crate::wal::WalStore::persisted_through(self)
    }
}

/// Stages a flush's last slice together with the flush's namespace transaction.
pub(crate) struct SliceCarrier<'a> {
    pub wb: &'a Uploader,
    pub header: RecordHeader,
    pub data: &'a [u8],
    /// The submitted append and the transaction it carries.
    pub pending: Option<(crate::staging::PendingAppend, u64)>,
    /// Where the record went and the transaction it carries, once appended.
    pub placed: Option<(StagedLoc, u64)>,
}

impl<'a> SliceCarrier<'a> {
    pub fn new(wb: &'a Uploader, header: RecordHeader, data: &'a [u8]) -> Self {
        SliceCarrier {
            wb,
            header,
            data,
            pending: None,
            placed: None,
        }
    }

    /// The staging log refused the slice: it goes to the object store instead.
    fn refused(&self, e: StagingError) -> std::io::Error {
        let errno = e.errno();
        self.wb.bypass(self.header.slice_id, e);
        std::io::Error::from_raw_os_error(errno)
    }
}

impl crate::wal::Carrier for SliceCarrier<'_> {
    fn submit(&mut self, seq: u64, record: &[u8], durable: bool) -> std::io::Result<()> {
        let pending = self
            .wb
            .submit_carrying(self.header, self.data, record, durable)
            .map_err(|e| self.refused(e))?;
        self.pending = Some((pending, seq));
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some((pending, seq)) = self.pending.take() else {
            return Err(std::io::Error::other("nothing was submitted"));
        };
        let loc = pending.wait().map_err(|e| self.refused(e))?;
        self.placed = Some((loc, seq));
        Ok(())
    }

    fn discard(&mut self) {
        if let Some((pending, _)) = self.pending.take()
            && let Ok(loc) = pending.wait()
        {
            self.wb.opts.log.free(&loc);
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.wb
            .opts
            .log
            .sync()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Crash replay of staged data: every `T` record becomes upload work; log records nobody
/// points at (never committed, already uploaded, or dead) are freed.
pub(crate) fn replay_staged(meta: &Meta, wb: &Uploader, replayed: &[Replayed]) -> Result<()> {
    let staged = meta.view(|r| {
        let rows = r.scan(
            schema::STAGED_PREFIX,
            &prefix_end(schema::STAGED_PREFIX),
            usize::MAX,
        )?;
        rows.into_iter()
            .map(|(k, v)| schema::staged_entry(&k, &v))
            .collect::<std::result::Result<Vec<_>, _>>()
    })?;
    let mut in_log: HashMap<u64, &Replayed> = HashMap::new();
    for r in replayed.iter() {
        in_log.insert(r.header.slice_id, r);
    }
    let log_damage = wb.opts.log.damage();
    let log_damaged = !log_damage.is_empty() || replayed.iter().any(|r| !r.damaged.is_empty());
    // Slices are found by id: a slice staged with its metadata change has no location in
    // its `T` record.
    let mut keep = HashMap::new();
    let mut lost = Vec::new();
    let shared = meta.store().is_shared();
    for (id, rec) in &staged {
        match in_log.get(id) {
            Some(r) if r.damaged.is_empty() && r.loc.len >= rec.size => {
                let staged = Staged {
                    rec: *rec,
                    loc: r.loc,
                    // Replay made every replayed transaction durable.
                    wal_seq: 0,
                };
                keep.insert(*id, staged);
            }
            Some(r) if !r.damaged.is_empty() => lost.push(LostSlice {
                id: *id,
                rec: *rec,
                cause: Some(format!(
                    "staged data fails its checksum (data log segment {}, record at byte {}, \
                     slice bytes {})",
                    r.loc.segment,
                    r.loc.offset,
                    r.damaged
                        .iter()
                        .map(|(a, b)| format!("[{a}, {b})"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
            }),
            // On a shared store a slice not in this mount's log is another mount's (a `T`
            // record is committed only after its data is in the log of the mount staging it).
            None if shared => {}
            // With damage in the log, a missing slice may have been in it.
            _ if log_damaged => lost.push(LostSlice {
                id: *id,
                rec: *rec,
                cause: Some(
                    "staged data is missing from the data log, which holds unreadable records"
                        .into(),
                ),
            }),
            _ => lost.push(LostSlice {
                id: *id,
                rec: *rec,
                cause: None,
            }),
        }
    }
    if !lost.is_empty() || !log_damage.is_empty() {
        forget_lost_slices(meta.store(), &lost, &log_damage)?;
    }
    // Freed only now: a damaged record stays until its loss is recorded.
    for r in replayed.iter() {
        if !keep.contains_key(&r.header.slice_id) {
            wb.opts.log.free(&r.loc);
        }
    }
    wb.opts.log.release_damage();
    let mut ordered: Vec<(u64, Staged)> = keep.into_iter().collect();
    ordered.sort_by_key(|(id, s)| (s.rec.staged_ns, *id));
    if !ordered.is_empty() {
        tracing::info!(
            "replay: {} staged slice(s), {} bytes, queued for upload",
            ordered.len(),
            ordered.iter().map(|(_, s)| s.rec.size as u64).sum::<u64>()
        );
    }
    wb.add(&ordered);
    Ok(())
}

/// A `T` record whose slice replay cannot give back.
struct LostSlice {
    id: u64,
    rec: StagedRec,
    /// Why, when it is a loss of acknowledged data (damage in the log); `None`: its write was
    /// cut short by the crash and never acknowledged.
    cause: Option<String>,
}

/// Slices whose metadata change is known but whose data is not in the log, or fails its
/// checks: their ranges become holes. Without damage in the log such a slice belongs to a
/// flush the crash cut short (an acknowledged slice's record is always complete on the
/// device); with damage it is a loss of acknowledged data, recorded (see [`crate::losses`])
/// with the file, its path and the byte range, as is every unreadable region of the log.
fn forget_lost_slices(
    store: &dyn spoolfs_metadata::KvStore,
    lost: &[LostSlice],
    log_damage: &[crate::staging::LogDamage],
) -> Result<()> {
    use crate::losses::{self, DataLoss};
    for l in lost.iter().filter(|l| l.cause.is_none()) {
        tracing::warn!(
            "staged slice {} of inode {} ({} bytes) is not in the staging log: its write \
                 was cut short by the crash before it was acknowledged, or, after a restart, \
                 was not yet flushed (never fsynced) when the power went; the range reads as \
                 zeros",
            l.id,
            l.rec.ino,
            l.rec.size
        );
    }
    let reported: Vec<u64> = lost
        .iter()
        .filter(|l| l.cause.is_some())
        .map(|l| l.rec.ino)
        .collect();
    let mut paths = HashMap::new();
    store.view(&mut |r| {
        paths = losses::paths_of(r, &reported)?;
        Ok(())
    })?;
    let chunk_size = crate::volume::read_record(store)?.map_or(64 << 20, |v| v.chunk_size);
    let now = losses::now_ns();
    let mut recorded = Vec::new();
    store.update(spoolfs_metadata::Durability::Visible, &mut |t| {
        let mut freed = 0i64;
        recorded.clear();
        for l in lost {
            t.delete(&schema::staged_key(l.id))?;
            let mut visible = (u32::MAX, 0u32, 0u64); // first pos, last end, bytes
            for seg in crate::data::load(t, l.rec.ino, l.rec.chunk, 0, u32::MAX)? {
                if seg.id == l.id {
                    t.delete(&schema::seg_key(l.rec.ino, l.rec.chunk, seg.pos))?;
                    visible.0 = visible.0.min(seg.pos);
                    visible.1 = visible.1.max(seg.pos + seg.len);
                    visible.2 += u64::from(seg.len);
                }
            }
            freed += l.rec.size as i64;
            let Some(cause) = &l.cause else { continue };
            let start = if visible.2 > 0 { visible.0 } else { 0 };
            let end = if visible.2 > 0 { visible.1 } else { 0 };
            let loss = DataLoss {
                found_ns: now,
                ino: l.rec.ino,
                path: paths.get(&l.rec.ino).cloned(),
                offset: u64::from(l.rec.chunk) * chunk_size + u64::from(start),
                bytes: u64::from(end - start),
                slice: l.id,
                cause: format!(
                    "{cause}; {} byte(s) of the file that pointed into it now read as zeros",
                    visible.2
                ),
            };
            let key = losses::loss_key(losses::LOSS_SLICE, &l.id.to_be_bytes());
            if losses::record(t, &key, &loss)? {
                recorded.push(loss);
            }
        }
        for d in log_damage {
            let loss = DataLoss {
                found_ns: now,
                ino: 0,
                path: None,
                offset: d.offset,
                bytes: d.len,
                slice: 0,
                cause: format!(
                    "data log segment {}: {} at bytes [{}, {}) fails its checksum; the staged \
                     slices it held are listed by file",
                    d.segment,
                    d.what,
                    d.offset,
                    d.offset + d.len
                ),
            };
            let key = region_loss_key(b'd', d.segment, d.offset, d.generation);
            if losses::record(t, &key, &loss)? {
                recorded.push(loss);
            }
        }
        schema::add_u64(t, schema::USED_BYTES_KEY, -freed)
    })?;
    // Made durable before the damaged records are freed and their segments reused.
    store.sync()?;
    for loss in &recorded {
        tracing::error!(
            "DATA LOSS: inode {} {}: bytes [{}, {}) of the file: {}",
            loss.ino,
            loss.path.as_deref().unwrap_or("(no name known)"),
            loss.offset,
            loss.offset + loss.bytes,
            loss.cause
        );
    }
    Ok(())
}

/// The uploader records its work in the engine's metadata and caches through this. The
/// engine owns the only strong reference: upload threads end when the engine is dropped.
pub(crate) struct UploadCatalog {
    pub meta: Arc<Meta>,
    pub slice_ids: Arc<IdAllocator>,
    pub reader: Arc<ObjectReader>,
    pub counters: Arc<Counters>,
    pub stop: Arc<StopSignal>,
    pub block_size: usize,
    /// Held by the commit of an upload: the upload threads record their work one at a time,
    /// so that on a shared store they do not make each other run again (each commit reads
    /// and deletes staged records next to the other's).
    pub commit_turn: parking_lot::Mutex<()>,
}

impl Catalog for UploadCatalog {
    type Error = FsError;

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn new_pack_id(&self) -> Result<u64> {
        self.slice_ids.next(self.meta.store())
    }

    fn commit_uploaded(&self, ids: &[u64], packs: &[PackUpload]) -> Result<(Vec<u64>, Vec<u64>)> {
        let shared = self.meta.store().is_shared();
        // Only a shared store needs the turns; a local store's commits never conflict.
        let _turn = shared.then(|| self.commit_turn.lock());
        let items = upload_commit_order(ids, packs);
        let per_txn = if shared {
            crate::meta::SHARED_BATCH_ROWS
        } else {
            items.len().max(1)
        };
        let mut decided = vec![0; packs.len()];
        let mut done = Vec::new();
        let mut empty = Vec::new();
        for chunk in items.chunks(per_txn) {
            let committed = self
                .meta
                .update(|t| commit_upload_chunk(t, chunk, packs, &decided))?;
            done.extend(committed.done);
            decided = committed.decided;
            empty.extend(committed.empty);
        }
        // The staged copies go once the caller has the answer: on a shared store that is
        // only safe once the database has the commits on its disk.
        if shared {
            self.meta.store().sync()?;
        }
        Ok((done, empty))
    }

    fn cache_block(&self, slice: u64, index: u32, data: &[u8]) {
        if let Some(disk) = self
            .reader
            .disk
            .as_ref()
            .filter(|d| d.keeps_large_uploads())
        {
            disk.insert(BlockId::block(slice, index), data);
        }
    }

    fn cache_pack(&self, pack: u64, object: &[u8]) {
        if let Some(disk) = &self.reader.disk {
            disk.insert(BlockId::pack(pack), object);
        }
    }

    fn objects_put(&self, count: u64) {
        self.counters
            .objects_put
            .fetch_add(count, Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.stop.now()
    }

    fn make_durable(&self) -> Result<()> {
        self.meta.store().sync()?;
        Ok(())
    }
}

/// One slice of an upload's commit: the pack it went into (index into the packs), if any.
#[derive(Clone, Copy)]
struct UploadItem {
    slice: u64,
    pack: Option<usize>,
}

/// The slices of an upload in commit order: pack by pack, each pack's in its order, then the
/// slices uploaded as blocks. A pack's slices are therefore committed by consecutive
/// transactions.
fn upload_commit_order(ids: &[u64], packs: &[PackUpload]) -> Vec<UploadItem> {
    let mut packed = std::collections::HashSet::new();
    let mut items = Vec::with_capacity(ids.len());
    for (i, p) in packs.iter().enumerate() {
        for e in &p.entries {
            packed.insert(e.slice);
            items.push(UploadItem {
                slice: e.slice,
                pack: Some(i),
            });
        }
    }
    items.extend(
        ids.iter()
            .filter(|id| !packed.contains(id))
            .map(|&slice| UploadItem { slice, pack: None }),
    );
    items
}

/// What one transaction of an upload's commit did.
struct ChunkCommitted {
    /// Slices recorded (their staged records deleted).
    done: Vec<u64>,
    /// Per pack, its entries decided so far (recorded, or found dead).
    decided: Vec<usize>,
    /// Packs found to hold nothing live.
    empty: Vec<u64>,
}

/// One transaction of an upload's commit: the staged records of `chunk` that still exist are
/// deleted and their slices recorded in their packs. A pack's record counts, from its first
/// transaction on, every entry not yet found dead, so that while its later entries are being
/// recorded the deaths of its earlier ones never bring it to zero (and to deletion). `decided`:
/// per pack, its entries decided by earlier transactions.
fn commit_upload_chunk(
    t: &mut dyn spoolfs_metadata::KvTxn,
    chunk: &[UploadItem],
    packs: &[PackUpload],
    decided: &[usize],
) -> std::result::Result<ChunkCommitted, spoolfs_metadata::MetaError> {
    let mut decided = decided.to_vec();
    let mut touched: Vec<usize> = chunk.iter().filter_map(|it| it.pack).collect();
    touched.dedup();
    let staged_keys: Vec<Vec<u8>> = chunk
        .iter()
        .map(|it| schema::staged_key(it.slice))
        .collect();
    let mut keys: Vec<&[u8]> = staged_keys.iter().map(|k| k.as_slice()).collect();
    let pack_keys: Vec<Vec<u8>> = touched
        .iter()
        .filter(|&&i| decided[i] > 0)
        .map(|&i| schema::pack_key(packs[i].pack))
        .collect();
    keys.extend(pack_keys.iter().map(|k| k.as_slice()));
    // Every record this transaction reads, in one round trip on a networked store.
    t.prefetch(&keys, &[])?;
    let mut done = Vec::new();
    let mut dead_in_pack: HashMap<usize, (u32, u64)> = HashMap::new();
    for (it, key) in chunk.iter().zip(&staged_keys) {
        let alive = t.get(key)?.is_some();
        if alive {
            t.delete(key)?;
            done.push(it.slice);
        }
        let Some(i) = it.pack else { continue };
        let entry = packs[i]
            .entries
            .get(decided[i])
            .filter(|e| e.slice == it.slice)
            .expect("a pack's slices are committed in their order");
        decided[i] += 1;
        if alive {
            let packed = schema::PackedRec {
                pack: packs[i].pack,
                offset: entry.offset,
                len: entry.len,
                crc: entry.crc,
            };
            t.put(&schema::packed_key(it.slice), &schema::encode(&packed))?;
        } else {
            let dead = dead_in_pack.entry(i).or_default();
            dead.0 += 1;
            dead.1 += entry.len as u64;
        }
    }
    let mut empty = Vec::new();
    for i in touched {
        let p = &packs[i];
        let chunk_entries = chunk.iter().filter(|it| it.pack == Some(i)).count();
        let first = decided[i] == chunk_entries;
        let mut rec = if first {
            schema::PackRec {
                size: p.size,
                live_slices: p.entries.len() as u32,
                live_bytes: p.entries.iter().map(|e| e.len as u64).sum(),
            }
        } else {
            let key = schema::pack_key(p.pack);
            let bytes = t.get(&key)?.ok_or_else(|| {
                spoolfs_metadata::MetaError::Corrupt(format!(
                    "pack {} lost its record while its upload was being committed",
                    p.pack
                ))
            })?;
            schema::decode::<schema::PackRec>("pack record", &bytes)?
        };
        let (dead_slices, dead_bytes) = dead_in_pack.get(&i).copied().unwrap_or_default();
        rec.live_slices = rec.live_slices.saturating_sub(dead_slices);
        rec.live_bytes = rec.live_bytes.saturating_sub(dead_bytes);
        let key = schema::pack_key(p.pack);
        if rec.live_slices == 0 {
            // Only the last transaction of a pack can find it empty: the entries still to be
            // decided are counted.
            if !first {
                t.delete(&key)?;
            }
            empty.push(p.pack);
        } else {
            t.put(&key, &schema::encode(&rec))?;
        }
    }
    Ok(ChunkCommitted {
        done,
        decided,
        empty,
    })
}

/// The namespace log on a staging log: the write-ahead log's records are staging records
/// with no inode.
struct NamespaceLog {
    log: Arc<StagingLog>,
    /// The data log, which carries transactions with slices (set once it is open).
    data: std::sync::OnceLock<Arc<StagingLog>>,
    /// `--staging-durability none`: no device cache flushes at all.
    flush: bool,
    locs: Mutex<HashMap<u64, StagedLoc>>,
    next: std::sync::atomic::AtomicU64,
}

impl NamespaceLog {
    fn remember(&self, loc: StagedLoc) -> u64 {
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        self.locs.lock().insert(h, loc);
        h
    }
}

impl crate::wal::RecordLog for NamespaceLog {
    fn submit(&self, record: &[u8]) -> std::io::Result<crate::wal::PendingRecord> {
        self.submit_many(&[record])
            .pop()
            .expect("one answer per record")
    }
    fn submit_many(&self, records: &[&[u8]]) -> Vec<std::io::Result<crate::wal::PendingRecord>> {
        // About no inode, chunk or slice: namespace-log records.
        let records: Vec<(RecordHeader, &[u8])> = records
            .iter()
            .map(|r| {
                let header = RecordHeader {
                    len: r.len() as u32,
                    ..Default::default()
                };
                (header, *r)
            })
            .collect();
        self.log
            .submit_batch(&records, false)
            .into_iter()
            .map(|a| {
                a.map(crate::wal::PendingRecord::Staged)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
            })
            .collect()
    }
    fn finish(&self, pending: crate::wal::PendingRecord) -> std::io::Result<u64> {
        let loc = match pending {
            crate::wal::PendingRecord::Done(h) => return Ok(h),
            crate::wal::PendingRecord::Staged(p) => p.wait(),
        };
        let loc = loc.map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(self.remember(loc))
    }
    /// Flushes the data log too: a close leaves its record (the slice and the transaction
    /// that links it) in the data log unflushed, and a later `fsync` with nothing new to log
    /// would otherwise flush nothing at all (a log with no unflushed write skips its flush).
    fn sync(&self) -> std::io::Result<()> {
        if !self.flush {
            return Ok(());
        }
        let errno = |e: crate::staging::StagingError| std::io::Error::from_raw_os_error(e.errno());
        if let Some(data) = self.data.get() {
            data.sync().map_err(errno)?;
        }
        self.log.sync().map_err(errno)
    }
    fn free(&self, handle: u64) {
        if let Some(loc) = self.locs.lock().remove(&handle) {
            self.log.free(&loc);
        }
    }
}

/// Default `--upload-hold`: a 1 GiB checkpoint is staged before its upload starts.
pub const DEFAULT_UPLOAD_HOLD: u64 = 2 << 30;

/// Staging settings a mount chooses (flags).
#[derive(Clone, Debug)]
pub struct StagingSettings {
    /// `--cache-dir`: the volume's logs go to `<cache_dir>/<volume uuid>/`.
    pub cache_dir: std::path::PathBuf,
    pub writeback: bool,
    pub engine_threads: usize,
    pub io_engine: crate::staging::IoEngineKind,
    pub durability: crate::staging::StagingDurability,
    pub segment_size: u64,
    pub max_staging_bytes: u64,
    pub max_staging_age: Duration,
    pub max_staging_wait: Duration,
    pub upload_threads: usize,
    /// `--upload-delay`: how long small staged slices wait to share a pack object.
    pub upload_delay: Duration,
    /// `--pack-size`: target size of a pack object.
    pub pack_size: usize,
    /// `--upload-limit`: bytes per second for background uploads (0: no cap).
    pub upload_limit: u64,
    /// `--upload-buffer`: most bytes of just-staged data kept in memory for the uploaders.
    pub upload_buffer: u64,
    /// `--upload-hold`: while writes keep arriving, uploads wait until this many bytes are
    /// staged (at most half of `max_staging_bytes`; 0: no wait).
    pub upload_hold: u64,
    /// `--staging-timeout`: an append slower than this is given up (the data is uploaded
    /// directly instead).
    pub staging_timeout: Duration,
    /// Fault injection into the data staging log (tests).
    pub faults: Option<Arc<crate::staging::FaultConfig>>,
    /// Fault injection into the namespace log (tests): the same plans as `faults`.
    pub namespace_faults: Option<Arc<crate::staging::FaultConfig>>,
    /// A simulated device under both logs, which records every write, flush and
    /// segment-file operation for power-cut tests (`staging::SimDevice`).
    pub device: Option<Arc<crate::staging::SimDevice>>,
}

/// The defaults of `spoolfs mount`'s staging flags (one engine thread per CPU), with no cache
/// directory: callers set `cache_dir`.
impl Default for StagingSettings {
    fn default() -> Self {
        StagingSettings {
            cache_dir: std::path::PathBuf::new(),
            writeback: true,
            engine_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            io_engine: crate::staging::IoEngineKind::Auto,
            durability: crate::staging::StagingDurability::Flush,
            segment_size: 64 << 20,
            max_staging_bytes: 10 << 30,
            max_staging_age: Duration::from_secs(3600),
            max_staging_wait: Duration::from_secs(10),
            upload_threads: 4,
            upload_delay: Duration::from_millis(500),
            pack_size: DEFAULT_PACK_SIZE,
            upload_limit: 0,
            upload_buffer: 256 << 20,
            upload_hold: DEFAULT_UPLOAD_HOLD,
            staging_timeout: Duration::from_secs(5),
            faults: None,
            namespace_faults: None,
            device: None,
        }
    }
}

impl StagingSettings {
    /// Small and quick settings for tests, logs in `cache_dir`: writeback, two engine threads,
    /// one uploader, 1 MiB segments, no device cache flushes, no packing delay.
    pub fn for_tests(cache_dir: impl Into<std::path::PathBuf>) -> Self {
        StagingSettings {
            cache_dir: cache_dir.into(),
            engine_threads: 2,
            durability: crate::staging::StagingDurability::None,
            segment_size: 1 << 20,
            max_staging_bytes: 64 << 20,
            max_staging_wait: Duration::from_secs(5),
            upload_threads: 1,
            upload_delay: Duration::ZERO,
            ..Default::default()
        }
    }

    /// The upload pipeline's options for the staging log `log`: these settings, the
    /// namespace log uploads wait for (none on a shared metadata store), and this node.
    fn upload_options(
        &self,
        log: Arc<StagingLog>,
        namespace: Option<std::sync::Weak<dyn NamespaceProgress>>,
        node_id: u64,
    ) -> UploadOptions {
        UploadOptions {
            log,
            writeback: self.writeback,
            max_staging_bytes: self.max_staging_bytes,
            max_staging_age: self.max_staging_age,
            max_staging_wait: self.max_staging_wait,
            upload_threads: self.upload_threads,
            segment_size: self.segment_size,
            upload_delay: self.upload_delay,
            pack_size: self.pack_size,
            upload_limit: self.upload_limit,
            namespace,
            upload_buffer: self.upload_buffer,
            // Writers wait for room at `max_staging_bytes`: uploads must start well before.
            upload_hold: self.upload_hold.min(self.max_staging_bytes / 2),
            node_id,
        }
    }
}

/// Which node's cache directory holds this volume's staging and namespace logs, and whether
/// the last mount ended cleanly (everything uploaded and checkpointed).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct StagingOwner {
    pub cache_dir: String,
    pub clean: bool,
    /// The identity of that cache directory (its `cache-id` file), so that a directory wiped
    /// or replaced at the same path (ephemeral NVMe after a reboot) is recognised. Absent in
    /// records written before it existed.
    #[serde(default)]
    pub cache_id: Option<String>,
}

/// The file in `<cache dir>/<volume uuid>/` that says which cache directory this is.
const CACHE_ID_FILE: &str = "cache-id";

/// The node id a cache directory's identity stands for in `T` records and session records:
/// the first eight bytes of the UUID (never 0, which means "unknown owner").
pub fn node_id_of(cache_id: &str) -> u64 {
    let bytes = uuid::Uuid::parse_str(cache_id.trim())
        .map(|u| *u.as_bytes())
        .unwrap_or_else(|_| {
            // Not a UUID (edited by hand): any stable value will do.
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&crc32c::crc32c(cache_id.as_bytes()).to_be_bytes());
            b
        });
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")).max(1)
}

/// Writes a fresh identity into `dir` (synced, with its directory) and returns it.
fn write_cache_id(dir: &std::path::Path) -> Result<String> {
    use std::io::Write;
    let id = uuid::Uuid::new_v4().to_string();
    let path = dir.join(CACHE_ID_FILE);
    let tmp = dir.join(format!("{CACHE_ID_FILE}.tmp"));
    let local = |what: &'static str, source: std::io::Error| FsError::Local {
        what,
        path: path.clone(),
        source,
    };
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| local("cannot create", e))?
    };
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| local("cannot write", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| local("cannot rename into place", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| local("cannot sync the directory of", e))?;
    Ok(id)
}

/// The cache directory at the path the last (unclean) mount used is not the one it wrote:
/// its staged data and logged namespace changes are gone. Every staged slice becomes a
/// recorded loss (file, path, range), as do the changes after the last checkpoint, instead
/// of the mount starting clean as if nothing had been acknowledged.
fn record_replaced_cache(
    store: &dyn spoolfs_metadata::KvStore,
    dir: &std::path::Path,
    recovery: &crate::wal::Recovery,
) -> Result<()> {
    use crate::losses;
    let staged = {
        let mut rows = Vec::new();
        store.view(&mut |r| {
            rows = r.scan(
                schema::STAGED_PREFIX,
                &prefix_end(schema::STAGED_PREFIX),
                usize::MAX,
            )?;
            Ok(())
        })?;
        rows.into_iter()
            .map(|(k, v)| schema::staged_entry(&k, &v))
            .collect::<std::result::Result<Vec<_>, spoolfs_metadata::MetaError>>()?
    };
    let cause = format!(
        "the cache directory {} is not the one that held this volume's staged data (its \
         identity is missing or different: wiped or replaced since the last mount, which did \
         not end cleanly)",
        dir.display()
    );
    tracing::error!(
        "DATA LOSS: {cause}; {} staged slice(s), {} bytes, and the namespace changes made after \
         the last checkpoint are lost",
        staged.len(),
        staged.iter().map(|(_, r)| r.size as u64).sum::<u64>()
    );
    let lost: Vec<LostSlice> = staged
        .into_iter()
        .map(|(id, rec)| LostSlice {
            id,
            rec,
            cause: Some(cause.clone()),
        })
        .collect();
    forget_lost_slices(store, &lost, &[])?;
    let found_ns = losses::now_ns();
    let cause = format!(
        "{cause}: the namespace changes made after the metadata store's last checkpoint were \
         only in its namespace log and are lost"
    );
    store.update(spoolfs_metadata::Durability::Durable, &mut |t| {
        // Every change after the checkpoint, not one: no sequence number has this one.
        record_namespace_loss(t, recovery.epoch, u64::MAX, found_ns, cause.clone())
    })?;
    Ok(())
}

/// Records that namespace change `seq` of `epoch` is lost, found at `found_ns`, and why.
fn record_namespace_loss(
    t: &mut dyn spoolfs_metadata::KvTxn,
    epoch: u64,
    seq: u64,
    found_ns: u64,
    cause: String,
) -> std::result::Result<(), spoolfs_metadata::MetaError> {
    let mut id = epoch.to_be_bytes().to_vec();
    id.extend_from_slice(&seq.to_be_bytes());
    let loss = crate::losses::DataLoss {
        found_ns,
        ino: 0,
        path: None,
        offset: 0,
        bytes: 0,
        slice: 0,
        cause,
    };
    let key = crate::losses::loss_key(crate::losses::LOSS_NAMESPACE, &id);
    crate::losses::record(t, &key, &loss).map(|_| ())
}

pub(crate) const OWNER_KEY: &[u8] = b"K";

/// Whether the volume's metadata store is complete on its own: no writeback mount left staged
/// data or namespace-log records behind (the last one ended cleanly, or there never was one).
/// Tools that open the store without the logs (offline `spoolfs gc`) must check this first.
pub fn metadata_is_self_contained(meta: &dyn spoolfs_metadata::KvStore) -> Result<bool> {
    let mut clean = true;
    meta.view(&mut |r| {
        clean = match r.get(OWNER_KEY)? {
            Some(v) => serde_json::from_slice::<StagingOwner>(&v).is_ok_and(|o| o.clean),
            None => true,
        };
        Ok(())
    })?;
    Ok(clean)
}

/// Opens the volume's logs under the cache directory, replays the namespace log onto `meta`,
/// and returns the store to use (the write-ahead-logged one) and the engine's staging options.
/// Refuses, with a clear message, a cache directory other than the one that holds staged data
/// of an unclean earlier mount.
pub fn open_staging(
    meta: Arc<dyn spoolfs_metadata::KvStore>,
    volume: &crate::volume::VolumeRecord,
    settings: &StagingSettings,
) -> Result<(Arc<dyn spoolfs_metadata::KvStore>, StagingOptions)> {
    use crate::staging::StagingConfig;
    let dir = settings.cache_dir.join(&volume.uuid);
    let dir_str = dir.display().to_string();
    let mut owner: Option<StagingOwner> = None;
    meta.view(&mut |r| {
        owner = match r.get(OWNER_KEY)? {
            Some(v) => serde_json::from_slice(&v).ok(),
            None => None,
        };
        Ok(())
    })?;
    // On a shared store each mount stages in a cache directory of its own: no single owner.
    let shared = meta.is_shared();
    if let Some(o) = &owner
        && !shared
        && !o.clean
        && o.cache_dir != dir_str
    {
        return Err(FsError::new(
            libc::EBUSY,
            format!(
                "volume {:?} was not unmounted cleanly and its staged data is in {}; mount it \
                 with --cache-dir {} (this mount asked for {})",
                volume.name,
                o.cache_dir,
                std::path::Path::new(&o.cache_dir)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                settings.cache_dir.display()
            ),
        ));
    }
    // Read before anything is created in it: a missing identity is a wiped directory.
    let found_cache_id = std::fs::read_to_string(dir.join(CACHE_ID_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    std::fs::create_dir_all(&dir).map_err(|source| FsError::Local {
        what: "cannot create cache directory",
        path: dir.clone(),
        source,
    })?;
    let cache_id = match &found_cache_id {
        Some(id) => id.clone(),
        None => write_cache_id(&dir)?,
    };
    let uuid_bytes = *uuid::Uuid::parse_str(&volume.uuid)
        .map_err(|source| FsError::VolumeUuid {
            uuid: volume.uuid.clone(),
            source,
        })?
        .as_bytes();
    let open_log = |sub: &str,
                    threads: usize,
                    segment_size: u64,
                    max_segments: usize,
                    faults: Option<Arc<crate::staging::FaultConfig>>,
                    pool: (usize, usize)| {
        let config = StagingConfig {
            dir: dir.join(sub),
            segment_size,
            max_segments,
            io_engine: settings.io_engine,
            durability: settings.durability,
            volume_uuid: uuid_bytes,
            threads,
        };
        let tuning = crate::staging::StagingTuning {
            faults,
            device: settings.device.clone(),
            pool_buffers: pool.0,
            pool_buffer_size: pool.1,
            // A durable append must cover the records written before it (other slices of the
            // same flush, earlier transactions): a flush after the write, never FUA alone.
            flush_mode: crate::staging::FlushMode::Fdatasync,
            append_timeout: settings.staging_timeout,
        };
        StagingLog::open_tuned(config, tuning).map_err(|source| FsError::StagingLog {
            path: dir.join(sub),
            source,
        })
    };
    let max_segments =
        (settings.max_staging_bytes.div_ceil(settings.segment_size) as usize + 2).max(4);
    let open_data_log = || {
        open_log(
            "data",
            settings.engine_threads.max(1),
            settings.segment_size,
            max_segments,
            settings.faults.clone(),
            // 32 registered buffers of 1 MiB (+ header room) per engine thread.
            (32, (1 << 20) + (64 << 10)),
        )
    };
    if shared {
        let (data_log, data_records) = open_data_log()?;
        return Ok(shared_staging(
            meta,
            settings,
            node_id_of(&cache_id),
            data_log,
            data_records,
        ));
    }
    // The namespace log is small and has one writer thread so its order is simple.
    let (ns_log, ns_records) = open_log(
        "namespace",
        1,
        settings.segment_size.min(NAMESPACE_SEGMENT_MAX),
        NAMESPACE_SEGMENTS,
        settings.namespace_faults.clone(),
        // Namespace records are small: a small pinned pool.
        (16, 128 << 10),
    )?;
    let ns_log = Arc::new(ns_log);
    let flush = settings.durability == crate::staging::StagingDurability::Flush;
    if !flush {
        tracing::warn!(
            "--staging-durability none: fsync does not flush the device cache; acknowledged \
             data survives a crash of spoolfs or of the kernel, not a power cut"
        );
    }
    let ns = Arc::new(NamespaceLog {
        log: ns_log.clone(),
        data: std::sync::OnceLock::new(),
        flush,
        locs: Mutex::new(HashMap::new()),
        next: std::sync::atomic::AtomicU64::new(1),
    });
    let (data_log, data_records) = open_data_log()?;
    // A data segment whose records were all freed gets a new header only once the
    // transactions that freed them (upload commits, dead-slice collection: each already on
    // the device when it returned) are through the device cache, so a power cut cannot bring
    // back a `T` record pointing at a record that was overwritten.
    {
        let ns_log = ns_log.clone();
        data_log.set_recycle_barrier(Arc::new(move || {
            if !flush {
                return Ok(());
            }
            ns_log.sync().map_err(|e| e.to_string())
        }));
    }
    let data_log = Arc::new(data_log);
    let _ = ns.data.set(data_log.clone());
    tracing::info!(
        "staging log in {}: {} io engine, {} thread(s)",
        dir.display(),
        data_log.usage().io_engine,
        settings.engine_threads.max(1)
    );
    // Damage in the middle of either log (not a torn tail): what it cost is recorded, and
    // the namespace log's replay goes on past the transactions it took.
    let mut damaged = !ns_log.damage().is_empty() || !data_log.damage().is_empty();
    let mut records = Vec::with_capacity(ns_records.len());
    let mut ns_damaged = Vec::new();
    for r in ns_records {
        if !r.damaged.is_empty() {
            damaged = true;
            ns_damaged.push(r.loc);
            continue;
        }
        let mut buf = vec![0u8; r.loc.len as usize];
        match ns_log.read(&r.loc, 0, &mut buf) {
            Ok(()) => records.push((ns.remember(r.loc), buf)),
            Err(e) => {
                damaged = true;
                tracing::error!("unreadable namespace log record: {e}");
                ns_damaged.push(r.loc);
            }
        }
    }
    // Namespace transactions that rode with a slice: the tail of its data-log record, kept
    // when it passes its own check even if the slice's data does not.
    for r in data_records.iter().filter(|r| r.header.meta_len > 0) {
        match &r.carried {
            // Freed by whoever frees the slice's record, not by the namespace log.
            Some(buf) => records.push((u64::MAX, buf.clone())),
            None => {
                damaged = true;
                tracing::error!(
                    "the namespace change carried by staged slice {} (segment {}, offset {}) \
                     fails its checksum",
                    r.header.slice_id,
                    r.loc.segment,
                    r.loc.offset
                );
            }
        }
        damaged |= !r.damaged.is_empty();
    }
    // Every change is crash-safe in the namespace log before it is acknowledged, so the
    // metadata store takes them in memory and gets them in one transaction per checkpoint.
    let meta: Arc<dyn spoolfs_metadata::KvStore> =
        Arc::new(spoolfs_metadata::BufferedStore::new(meta));
    let restarted = ns_log.restarted() || data_log.restarted();
    let (wal, recovery) =
        crate::wal::WalStore::recover_past_damage(meta, ns, records, damaged, restarted)?;
    if recovery.replayed > 0 {
        tracing::info!(
            "replay: {} namespace change(s) recovered from the log",
            recovery.replayed
        );
    }
    let wal = Arc::new(wal);
    // After replay: the owner record the last mount wrote may be only in the namespace log
    // (which a wiped directory no longer has, so the store's older record is compared).
    let mut last_owner: Option<StagingOwner> = None;
    spoolfs_metadata::KvStore::view(wal.as_ref(), &mut |r| {
        last_owner = r
            .get(OWNER_KEY)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        Ok(())
    })?;
    let cache_replaced = last_owner.as_ref().is_some_and(|o| {
        !o.clean && o.cache_dir == dir_str && o.cache_id.is_some() && o.cache_id != found_cache_id
    });
    if cache_replaced {
        record_replaced_cache(wal.as_ref(), &dir, &recovery)?;
    }
    let owner = StagingOwner {
        cache_dir: dir_str,
        clean: false,
        cache_id: Some(cache_id),
    };
    let ns_damage = ns_log.damage();
    spoolfs_metadata::KvStore::update(
        wal.as_ref(),
        spoolfs_metadata::Durability::Durable,
        &mut |t| {
            record_namespace_losses(t, &recovery, &ns_damage, &ns_damaged)?;
            skip_ids_of_lost_transactions(t, recovery.missing.len() as u64)?;
            t.put(
                OWNER_KEY,
                &serde_json::to_vec(&owner).expect("owner serialises"),
            )
        },
    )?;
    // The owner record must be in the metadata store itself, not only in this cache
    // directory's namespace log: a mount that asks for another cache directory after a crash
    // reads the store without this log, and must find the record that refuses it.
    spoolfs_metadata::KvStore::persist(wal.as_ref())?;
    // The losses are recorded (durably): the damaged records and segments may go.
    for loc in &ns_damaged {
        ns_log.free(loc);
    }
    ns_log.release_damage();
    Ok((
        wal.clone(),
        StagingOptions {
            uploads: settings.upload_options(
                data_log,
                Some(Arc::downgrade(&wal) as std::sync::Weak<dyn NamespaceProgress>),
                0,
            ),
            replayed: Arc::new(data_records),
            wal: Some(Arc::downgrade(&wal)),
        },
    ))
}

/// Staging on a shared metadata store (PostgreSQL, many mounts): data is staged in this
/// mount's log as usual, but every metadata transaction commits in the store before it
/// returns, so that other mounts see it. No memtable and no namespace log: both assume one
/// writer, and a change held in them would be invisible to the other mounts.
fn shared_staging(
    meta: Arc<dyn spoolfs_metadata::KvStore>,
    settings: &StagingSettings,
    node_id: u64,
    data_log: StagingLog,
    data_records: Vec<Replayed>,
) -> (Arc<dyn spoolfs_metadata::KvStore>, StagingOptions) {
    tracing::info!(
        "shared metadata store {}: every metadata change commits there before it returns; \
         data is staged in {}",
        meta.describe(),
        settings.cache_dir.display()
    );
    let options = StagingOptions {
        uploads: settings.upload_options(Arc::new(data_log), None, node_id),
        replayed: Arc::new(data_records),
        wal: None,
    };
    (meta, options)
}

/// Records what damage in the namespace log cost: transactions replay could not find, and
/// unreadable records of the namespace log.
fn record_namespace_losses(
    t: &mut dyn spoolfs_metadata::KvTxn,
    recovery: &crate::wal::Recovery,
    damage: &[crate::staging::LogDamage],
    damaged_records: &[StagedLoc],
) -> std::result::Result<(), spoolfs_metadata::MetaError> {
    use crate::losses::{self, DataLoss};
    let now = losses::now_ns();
    for &seq in &recovery.missing {
        let cause = format!(
            "namespace change {seq} (epoch {}) is missing from the logs, which hold damaged \
             records: whatever it changed (a create, rename, size, ...) is lost",
            recovery.epoch
        );
        record_namespace_loss(t, recovery.epoch, seq, now, cause)?;
    }
    let regions = damage
        .iter()
        .map(|d| (d.segment, d.offset, d.len, d.generation, d.what))
        .chain(
            damaged_records
                .iter()
                .map(|l| (l.segment, l.offset, u64::from(l.len), now, "record data")),
        );
    for (segment, offset, len, generation, what) in regions {
        let loss = DataLoss {
            found_ns: now,
            ino: 0,
            path: None,
            offset,
            bytes: len,
            slice: 0,
            cause: format!(
                "namespace log segment {segment}: {what} at bytes [{offset}, {}) fails its \
                 checksum",
                offset + len
            ),
        };
        losses::record(
            t,
            &region_loss_key(b'n', segment, offset, generation),
            &loss,
        )?;
    }
    Ok(())
}

/// The key of an unreadable region: which log, where, and the segment's generation, so that
/// the same damage found again at a later mount (its segment still holds live records) is
/// recorded once.
fn region_loss_key(log: u8, segment: u32, offset: u64, generation: u64) -> Vec<u8> {
    let mut id = vec![log];
    id.extend_from_slice(&segment.to_be_bytes());
    id.extend_from_slice(&offset.to_be_bytes());
    id.extend_from_slice(&generation.to_be_bytes());
    crate::losses::loss_key(crate::losses::LOSS_REGION, &id)
}

/// Replay that went past missing transactions may have applied later ones that use ids (an
/// inode number, a slice id) from a batch whose reservation was in a missing one, so the
/// counters came back below ids in use: the next file would share an inode or a slice with
/// an existing one. Each missing transaction reserved at most one batch of each kind: the
/// counters move past all of them.
fn skip_ids_of_lost_transactions(
    t: &mut dyn spoolfs_metadata::KvTxn,
    missing: u64,
) -> spoolfs_metadata::Result<()> {
    if missing == 0 {
        return Ok(());
    }
    for (key, batch) in [
        (schema::NEXT_INO_KEY, crate::ids::INODE_ID_BATCH),
        (schema::NEXT_SLICE_KEY, crate::ids::SLICE_ID_BATCH),
    ] {
        let next = schema::get_u64(t, key)?;
        t.put(key, &(next + missing * batch).to_be_bytes())?;
    }
    Ok(())
}

/// Marks the staging logs as holding nothing the metadata still needs (everything staged
/// is uploaded and the metadata store is checkpointed), so another cache directory may be
/// used next time.
pub(crate) fn mark_staging_clean(meta: &Meta, uploader: Option<&Uploader>) -> Result<()> {
    let Some(wb) = uploader else {
        return Ok(());
    };
    if !wb.set.lock().map.is_empty() {
        return Ok(());
    }
    // Runs at shutdown, after changes are refused: straight to the store.
    meta.store()
        .update(spoolfs_metadata::Durability::Durable, &mut |t| {
            if let Some(v) = t.get(OWNER_KEY)?
                && let Ok(mut o) = serde_json::from_slice::<StagingOwner>(&v)
            {
                o.clean = true;
                t.put(
                    OWNER_KEY,
                    &serde_json::to_vec(&o).expect("owner serialises"),
                )?;
            }
            Ok(())
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoolfs_metadata::{Durability, KvStore, MemStore};
    use spoolfs_objects::PackEntry;

    fn pack(id: u64, slices: std::ops::Range<u64>) -> PackUpload {
        PackUpload {
            pack: id,
            size: 10_000,
            entries: slices
                .map(|s| PackEntry {
                    slice: s,
                    offset: s * 10,
                    len: 10,
                    crc: 0,
                })
                .collect(),
        }
    }

    fn pack_rec(store: &MemStore, pack: u64) -> Option<schema::PackRec> {
        let mut out = None;
        store
            .view(&mut |r| {
                out = r
                    .get(&schema::pack_key(pack))?
                    .map(|v| schema::decode("pack", &v).unwrap());
                Ok(())
            })
            .unwrap();
        out
    }

    /// An upload committed 3 slices per transaction: between its transactions a pack counts
    /// its undecided entries (so it cannot reach zero early); in the end it counts exactly the
    /// slices still staged when their turn came, and a pack all of whose slices died is empty.
    #[test]
    fn an_upload_committed_in_parts_counts_exactly_what_it_recorded() {
        let store = MemStore::from_map(Default::default());
        let packs = vec![pack(100, 1..8), pack(200, 8..10)];
        // Slices 2 and 5 died before the commit, and so did both of pack 200's.
        store
            .update(Durability::Visible, &mut |t| {
                for s in [1, 3, 4, 6, 7, 20] {
                    t.put(&schema::staged_key(s), b"staged")?;
                }
                Ok(())
            })
            .unwrap();
        let ids: Vec<u64> = (1..10).chain([20]).collect();
        let items = upload_commit_order(&ids, &packs);
        assert_eq!(items.last().map(|it| it.slice), Some(20), "blocks go last");
        let mut decided = vec![0; packs.len()];
        let (mut done, mut empty) = (Vec::new(), Vec::new());
        for (n, chunk) in items.chunks(3).enumerate() {
            let mut out = None;
            store
                .update(Durability::Visible, &mut |t| {
                    out = Some(commit_upload_chunk(t, chunk, &packs, &decided)?);
                    Ok(())
                })
                .unwrap();
            let out = out.unwrap();
            done.extend(out.done);
            decided = out.decided;
            empty.extend(out.empty);
            if n == 0 {
                // Slices 1-3 decided (2 dead): 7 entries - 1 dead counted.
                let p = pack_rec(&store, 100).unwrap();
                assert_eq!((p.live_slices, p.live_bytes), (6, 60));
            }
        }
        done.sort_unstable();
        assert_eq!(done, vec![1, 3, 4, 6, 7, 20]);
        let p = pack_rec(&store, 100).unwrap();
        assert_eq!((p.live_slices, p.live_bytes, p.size), (5, 50, 10_000));
        assert_eq!(pack_rec(&store, 200), None);
        assert_eq!(empty, vec![200]);
        store
            .view(&mut |r| {
                for s in 1..10u64 {
                    let packed = r.get(&schema::packed_key(s))?;
                    assert_eq!(packed.is_some(), [1, 3, 4, 6, 7].contains(&s), "slice {s}");
                    assert!(r.get(&schema::staged_key(s))?.is_none());
                }
                Ok(())
            })
            .unwrap();
    }
}
