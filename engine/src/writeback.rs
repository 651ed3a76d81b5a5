//! Writeback: slices are acknowledged once they are in the node's staging log and uploaded by
//! background uploader threads, oldest first.
//!
//! Life of a staged slice:
//! 1. `flush` appends it to the staging log (O_DIRECT) and commits, in one metadata
//!    transaction, its place in the chunk map and a `T` record saying where it is staged.
//! 2. An uploader takes a batch of them, reads them back (checksummed), PUTs their blocks,
//!    deletes their `T` records in one transaction, and frees the log space once no reader is
//!    still reading it (readers hold a shared guard from lookup to copy). Whoever deletes a `T`
//!    record in a transaction frees the space: exactly one.
//! 3. A slice that dies while staged (overwritten, truncated, unlinked) is never uploaded: the
//!    garbage collector deletes its `T` record and frees the log space.

use crate::blockcache::BlockId;
use crate::error::{FsError, Result};
use crate::fs::Engine;
use crate::schema::{self, StagedRec};
use crate::staging::{RecordHeader, Replayed, StagedLoc, StagingError, StagingLog};
use parking_lot::{Condvar, Mutex};
use spoolfs_metadata::prefix_end;
use spoolfs_uploader::encode_block;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most staged slices one uploader moves per metadata transaction: enough that thousands of
/// small files share a handful of pack objects.
const UPLOAD_BATCH: usize = 4096;
/// Most staged bytes one uploader takes at once (more slices wait for the next batch).
const UPLOAD_BATCH_BYTES: u64 = 64 << 20;
/// Slices up to this size are packed with others into pack objects.
pub(crate) const PACK_SLICE_MAX: usize = 1 << 20;
/// Default target size of a pack object (`--pack-size`).
pub const DEFAULT_PACK_SIZE: usize = 8 << 20;

/// How a mount stages writes.
#[derive(Clone)]
pub struct StagingOptions {
    pub log: Arc<StagingLog>,
    /// Records the log held when it was opened (crash replay input).
    pub replayed: Arc<Vec<Replayed>>,
    /// Stage new writes (writeback mode). When false, only what is already staged is drained.
    pub writeback: bool,
    /// At this many staged bytes, writers wait for the uploaders.
    pub max_staging_bytes: u64,
    /// When the oldest staged byte is this old, writers wait for the uploaders.
    pub max_staging_age: Duration,
    /// How long a writer waits for room before it uploads its data itself.
    pub max_staging_wait: Duration,
    pub upload_threads: usize,
    /// Bytes per staging segment: no slice may be larger than a fraction of it.
    pub segment_size: u64,
    /// How long a staged slice waits for others to share a pack object with (unless a pack's
    /// worth is queued, or someone is waiting for the uploads).
    pub upload_delay: Duration,
    /// Target size of a pack object.
    pub pack_size: usize,
    /// Bytes per second background uploads may send (0: no cap).
    pub upload_limit: u64,
    /// The namespace log: a slice's record may carry a namespace transaction, and must then
    /// outlive it until the metadata store has made that transaction durable. Weak: the
    /// engine owns the store (uploader threads may outlive it briefly).
    pub wal: Option<std::sync::Weak<crate::wal::WalStore>>,
    /// Most bytes of just-staged slices kept in memory for the uploaders, which otherwise
    /// read them back from the staging device (`--upload-buffer`).
    pub upload_buffer: u64,
}

/// A staged slice as the engine tracks it in memory: its `T` record, where its record is in
/// the log (the `T` record's own location fields are not authoritative: a slice staged
/// together with its metadata change cannot know its place before the change is written), and
/// the namespace transaction its record carries (0: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Staged {
    pub rec: StagedRec,
    pub loc: StagedLoc,
    pub wal_seq: u64,
}

/// What a `T` record says about the location of a slice staged together with its metadata
/// change (unknown when the record was written; replay finds the slice by its id).
pub(crate) const UNKNOWN_SEGMENT: u32 = u32::MAX;

impl Staged {
    /// A slice about to be staged with its metadata change: no place yet.
    pub fn pending(rec: StagedRec) -> Staged {
        let loc = StagedLoc {
            segment: UNKNOWN_SEGMENT,
            offset: 0,
            len: 0,
        };
        Staged {
            rec,
            loc,
            wal_seq: 0,
        }
    }

    /// A slice staged at `loc`.
    pub fn at(rec: StagedRec, loc: StagedLoc) -> Staged {
        let rec = StagedRec {
            segment: loc.segment,
            offset: loc.offset,
            ..rec
        };
        Staged {
            rec,
            loc,
            wal_seq: 0,
        }
    }

    /// Its record also carries namespace transaction `seq`.
    pub fn carrying(self, seq: u64) -> Staged {
        Staged {
            wal_seq: seq,
            ..self
        }
    }

    /// Where it is staged, if it is.
    pub fn placed(&self) -> Option<StagedLoc> {
        (self.loc.segment != UNKNOWN_SEGMENT).then_some(self.loc)
    }
}

/// Stages a flush's last slice together with the flush's namespace transaction.
pub(crate) struct SliceCarrier<'a> {
    pub wb: &'a Writeback,
    pub header: RecordHeader,
    pub data: &'a [u8],
    /// The submitted append and the transaction it carries.
    pub pending: Option<(crate::staging::PendingAppend, u64)>,
    /// Where the record went and the transaction it carries, once appended.
    pub placed: Option<(StagedLoc, u64)>,
}

impl<'a> SliceCarrier<'a> {
    pub fn new(wb: &'a Writeback, header: RecordHeader, data: &'a [u8]) -> Self {
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

/// The in-memory mirror of the `T` records, and the upload queue (oldest first).
#[derive(Default)]
pub(crate) struct StagedSet {
    pub map: HashMap<u64, Staged>,
    pub queue: VecDeque<u64>,
    pub bytes: u64,
    /// Slices an uploader is working on.
    pub busy: usize,
    pub upload_errors: u64,
    /// Data of staged slices still in memory (up to `upload_buffer` bytes): the uploader takes
    /// it from here instead of reading the staging device.
    pub resident: HashMap<u64, Vec<u8>>,
    pub resident_bytes: u64,
}

pub(crate) struct Writeback {
    pub opts: StagingOptions,
    pub set: Mutex<StagedSet>,
    /// Signalled when work arrives or room is freed.
    pub cv: Condvar,
    /// Uploaders exit.
    pub stop: std::sync::atomic::AtomicBool,
    /// Held shared by readers of staged data, exclusively while log space is freed.
    pub read_guard: parking_lot::RwLock<()>,
    /// Callers waiting for uploads (`sync`, unmount): no upload delay while there are any.
    pub draining: std::sync::atomic::AtomicUsize,
    /// `--upload-limit`.
    pub limiter: UploadLimiter,
    /// Log records no longer needed once the next checkpoint covers the namespace
    /// transaction they carry: (place, transaction number).
    pub deferred_frees: Mutex<Vec<(StagedLoc, u64)>>,
    pub stats: WritebackStats,
    /// Uploaded bytes sampled about once a second, for the upload rate.
    rate: Mutex<RateWindow>,
}

impl StagedSet {
    /// Removes slice `id`'s in-memory data, if it is kept.
    fn take_resident(&mut self, id: u64) -> Option<Vec<u8>> {
        let data = self.resident.remove(&id)?;
        self.resident_bytes -= data.len() as u64;
        Some(data)
    }
}

/// A bandwidth cap shared by the uploader threads: each upload books its bytes on a virtual
/// clock that advances `bytes / rate` seconds and waits until its slot starts; at most one
/// second of idle time is carried over as burst.
pub(crate) struct UploadLimiter {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl UploadLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        UploadLimiter {
            bytes_per_sec,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may be sent.
    pub fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 || bytes == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

/// Event counters of the writeback path, since the mount (read by the metrics and status).
#[derive(Default)]
pub(crate) struct WritebackStats {
    pub uploaded_bytes: AtomicU64,
    pub uploaded_slices: AtomicU64,
    /// Writers that found the staging limits reached and waited.
    pub backpressure_waits: AtomicU64,
    /// Waits that ran out of `--max-staging-wait` (the writer uploaded directly).
    pub backpressure_timeouts: AtomicU64,
    /// Slices sent straight to the object store (no room in, or a failure of, the log).
    pub bypassed: AtomicU64,
}

/// Samples of a growing total (bytes uploaded), one a second at most, kept for about
/// [`RateWindow::WINDOW`]: the rate is the growth since the oldest sample.
#[derive(Default)]
pub(crate) struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn sample(&mut self, now: Instant, total: u64) {
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= Duration::from_millis(900))
        {
            self.samples.push_back((now, total));
        }
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Units per second since the oldest sample (0 until it is half a second old).
    pub fn rate(&self, now: Instant, total: u64) -> f64 {
        let Some((t0, v0)) = self.samples.front() else {
            return 0.0;
        };
        let dt = now.saturating_duration_since(*t0).as_secs_f64();
        if dt < 0.5 {
            return 0.0;
        }
        total.saturating_sub(*v0) as f64 / dt
    }
}

impl StagedSet {
    /// How long until the queue is worth uploading: `None` now. It is when its oldest slice
    /// has waited `delay`, or a pack's worth of small data is queued.
    fn wait_needed(&self, delay: Duration, pack_size: usize) -> Option<Duration> {
        let head = self.queue.front().and_then(|id| self.map.get(id))?;
        let age_ns = (schema::now_ns() - head.rec.staged_ns).max(0) as u128;
        if age_ns >= delay.as_nanos() {
            return None;
        }
        let mut queued = 0usize;
        for r in self.queue.iter().filter_map(|id| self.map.get(id)) {
            queued += r.rec.size as usize;
            if queued >= pack_size {
                return None;
            }
        }
        Some(Duration::from_nanos((delay.as_nanos() - age_ns) as u64))
    }
}

impl Writeback {
    pub fn new(opts: StagingOptions) -> Self {
        Writeback {
            set: Mutex::new(StagedSet::default()),
            cv: Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
            read_guard: parking_lot::RwLock::new(()),
            draining: std::sync::atomic::AtomicUsize::new(0),
            limiter: UploadLimiter::new(opts.upload_limit),
            deferred_frees: Mutex::new(Vec::new()),
            stats: WritebackStats::default(),
            rate: Mutex::new(RateWindow::default()),
            opts,
        }
    }

    /// Bytes of staged slices uploaded per second over about the last 10 seconds (samples the
    /// total too, so it works without the background tick).
    pub fn upload_rate(&self) -> f64 {
        let now = Instant::now();
        let total = self.stats.uploaded_bytes.load(Ordering::Relaxed);
        let mut rate = self.rate.lock();
        rate.sample(now, total);
        rate.rate(now, total)
    }

    /// Waits until `len` more bytes fit under the staging limits; false if the wait timed out
    /// (the caller uploads directly instead).
    pub fn wait_for_room(&self, len: u64) -> bool {
        let deadline = Instant::now() + self.opts.max_staging_wait;
        let mut set = self.set.lock();
        let mut waited = false;
        loop {
            let oldest_ok = set
                .queue
                .front()
                .and_then(|id| set.map.get(id))
                .is_none_or(|r| {
                    let age_ns = schema::now_ns() - r.rec.staged_ns;
                    age_ns <= self.opts.max_staging_age.as_nanos() as i64
                });
            if set.bytes + len <= self.opts.max_staging_bytes && oldest_ok {
                return true;
            }
            if set.bytes == 0 {
                // A single slice larger than the limit: stage it anyway rather than stall.
                return true;
            }
            if !waited {
                waited = true;
                self.stats
                    .backpressure_waits
                    .fetch_add(1, Ordering::Relaxed);
            }
            if self
                .cv
                .wait_until(
                    &mut set,
                    deadline.min(Instant::now() + Duration::from_millis(100)),
                )
                .timed_out()
                && Instant::now() >= deadline
            {
                self.stats
                    .backpressure_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }

    /// Hands one slice to the staging log without waiting (see [`Self::finish_stage`]);
    /// `None` if it must go straight to the object store (no room, full, failing).
    pub fn submit_stage(
        &self,
        ino: u64,
        chunk: u32,
        pos: u32,
        slice: u64,
        data: &[u8],
    ) -> Option<crate::staging::PendingAppend> {
        if !self.opts.writeback {
            return None;
        }
        if !self.wait_for_room(data.len() as u64) {
            self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let header = RecordHeader {
            ino,
            chunk,
            pos,
            slice_id: slice,
            len: data.len() as u32,
            meta_len: 0,
        };
        self.opts
            .log
            .submit_parts(&header, &[data], false)
            .map_err(|e| self.bypass(slice, e))
            .ok()
    }

    /// Where a submitted slice was staged; `None` if it must go to the object store instead.
    pub fn finish_stage(
        &self,
        slice: u64,
        pending: crate::staging::PendingAppend,
    ) -> Option<StagedLoc> {
        pending.wait().map_err(|e| self.bypass(slice, e)).ok()
    }

    fn bypass(&self, slice: u64, e: StagingError) {
        self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
        match e {
            StagingError::Full => {
                crate::log_limited!(info, "staging log full: uploading slice {slice} directly")
            }
            _ => {
                crate::warn_limited!("staging write failed ({e}): uploading slice {slice} directly")
            }
        }
    }

    /// Stages one slice together with the namespace record that links it, as one record
    /// (the [`crate::wal::Carrier`] of a flush), without waiting for the device. Errors mean
    /// nothing was submitted.
    pub fn submit_carrying(
        &self,
        header: RecordHeader,
        data: &[u8],
        record: &[u8],
        durable: bool,
    ) -> std::result::Result<crate::staging::PendingAppend, StagingError> {
        let len = data.len() + record.len();
        let header = RecordHeader {
            len: u32::try_from(len).map_err(|_| StagingError::TooLarge { len: u32::MAX })?,
            meta_len: record.len() as u32,
            ..header
        };
        self.opts
            .log
            .submit_parts(&header, &[data, record], durable)
    }

    /// Records committed staged slices, and wakes the uploaders when that changes what they
    /// wait for.
    pub fn add(&self, staged: &[(u64, Staged)]) {
        let mut set = self.set.lock();
        let was_empty = set.queue.is_empty();
        let before = set.bytes;
        for (id, s) in staged {
            set.map.insert(*id, *s);
            set.queue.push_back(*id);
            set.bytes += s.rec.size as u64;
        }
        // Uploaders look again at least every 200 ms and hold small slices back for the
        // upload delay anyway: waking them on every close would cost two context switches per
        // fsync on a small machine. Wake them when the wait starts (first slice queued), when
        // a pack's worth has gathered, or when somebody waits for uploads.
        let pack = self.opts.pack_size as u64;
        if was_empty
            || (before < pack && set.bytes >= pack)
            || self.draining.load(Ordering::Acquire) > 0
        {
            self.cv.notify_all();
        }
    }

    /// Keeps slice `id`'s data, just staged, in memory for its uploader, if the upload buffer
    /// has room; call before [`Writeback::add`] lists the slice. The data is the caller's own
    /// buffer, moved, not copied.
    pub fn keep_for_upload(&self, id: u64, data: Vec<u8>) {
        let mut set = self.set.lock();
        let len = data.len() as u64;
        if set.resident_bytes + len <= self.opts.upload_buffer {
            set.resident_bytes += len;
            set.resident.insert(id, data);
        }
    }

    /// The in-memory data of slice `id`, if it is still kept.
    fn take_resident(&self, id: u64) -> Option<Vec<u8>> {
        self.set.lock().take_resident(id)
    }

    /// Forgets staged slices whose `T` records were deleted, and frees their log space once
    /// no reader is still reading from the log.
    pub fn remove_many(&self, ids: &[u64]) {
        let mut locs = Vec::new();
        let mut last_seq = 0;
        {
            let mut set = self.set.lock();
            for id in ids {
                set.take_resident(*id);
                if let Some(s) = set.map.remove(id) {
                    set.bytes -= s.rec.size as u64;
                    locs.push((s.loc, s.wal_seq));
                    last_seq = last_seq.max(s.wal_seq);
                }
            }
        }
        // A record that carries a namespace transaction is that transaction's only log copy
        // until the metadata store has made it durable: such records wait for the next
        // checkpoint (at most a second) instead of forcing one.
        let persisted = self.persisted_through();
        if last_seq > persisted {
            let mut deferred = self.deferred_frees.lock();
            let (later, now): (Vec<_>, Vec<_>) =
                locs.into_iter().partition(|(_, seq)| *seq > persisted);
            deferred.extend(later);
            locs = now;
        }
        self.free_unread(locs.into_iter().map(|(loc, _)| loc).collect());
        self.cv.notify_all();
    }

    /// The last namespace transaction the metadata store has made durable (all of them
    /// without a namespace log).
    fn persisted_through(&self) -> u64 {
        self.opts
            .wal
            .as_ref()
            .and_then(|w| w.upgrade())
            .map_or(u64::MAX, |w| w.persisted_through())
    }

    /// Frees log records of slices the staged map no longer lists, once no reader that
    /// found them there is still reading.
    fn free_unread(&self, locs: Vec<StagedLoc>) {
        if locs.is_empty() {
            return;
        }
        // New readers no longer find these slices; wait out the ones already reading.
        let _exclusive = self.read_guard.write();
        for loc in &locs {
            self.opts.log.free(loc);
        }
    }

    pub fn get(&self, id: u64) -> Option<Staged> {
        self.set.lock().map.get(&id).copied()
    }

    /// Frees the records whose namespace transactions the last checkpoint made durable.
    pub fn free_checkpointed(&self) {
        let persisted = self.persisted_through();
        let ready: Vec<StagedLoc> = {
            let mut deferred = self.deferred_frees.lock();
            let (ready, wait): (Vec<_>, Vec<_>) =
                deferred.drain(..).partition(|(_, seq)| *seq <= persisted);
            *deferred = wait;
            ready.into_iter().map(|(loc, _)| loc).collect()
        };
        self.free_unread(ready);
    }
}

impl Engine {
    /// Crash replay of staged data: every `T` record becomes upload work; log records nobody
    /// points at (never committed, already uploaded, or dead) are freed.
    pub(crate) fn replay_staged(&self, wb: &Writeback) -> Result<()> {
        let staged = self.view(|r| {
            let rows = r.scan(
                schema::STAGED_PREFIX,
                &prefix_end(schema::STAGED_PREFIX),
                usize::MAX,
            )?;
            rows.into_iter()
                .map(|(k, v)| {
                    let id = u64::from_be_bytes(k[1..9].try_into().expect("staged key"));
                    Ok((id, schema::decode::<StagedRec>("staged record", &v)?))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        let mut in_log: HashMap<u64, StagedLoc> = HashMap::new();
        for r in wb.opts.replayed.iter() {
            in_log.insert(r.header.slice_id, r.loc);
        }
        // Slices are found by id: a slice staged with its metadata change has no location in
        // its `T` record.
        let mut keep = HashMap::new();
        let mut lost = Vec::new();
        for (id, rec) in &staged {
            match in_log.get(id) {
                Some(loc) if loc.len >= rec.size => {
                    let staged = Staged {
                        rec: *rec,
                        loc: *loc,
                        // Replay made every replayed transaction durable.
                        wal_seq: 0,
                    };
                    keep.insert(*id, staged);
                }
                _ => lost.push((*id, *rec)),
            }
        }
        for r in wb.opts.replayed.iter() {
            if !keep.contains_key(&r.header.slice_id) {
                wb.opts.log.free(&r.loc);
            }
        }
        if !lost.is_empty() {
            self.forget_lost_slices(&lost)?;
        }
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

    /// Slices whose metadata change reached the log but whose data did not: the flush that
    /// wrote them was cut short by the crash and never acknowledged (an acknowledged slice's
    /// record is always complete on the device). Their ranges become holes.
    fn forget_lost_slices(&self, lost: &[(u64, StagedRec)]) -> Result<()> {
        for (id, rec) in lost {
            tracing::warn!(
                "staged slice {id} of inode {} ({} bytes) is not in the staging log: its write \
                 was never acknowledged (interrupted by the crash); the range reads as zeros",
                rec.ino,
                rec.size
            );
        }
        self.update(|t| {
            let mut freed = 0i64;
            for (id, rec) in lost {
                t.delete(&schema::staged_key(*id))?;
                for seg in crate::data::load(t, rec.ino, rec.chunk, 0, u32::MAX)? {
                    if seg.id == *id {
                        t.delete(&schema::seg_key(rec.ino, rec.chunk, seg.pos))?;
                    }
                }
                freed += rec.size as i64;
            }
            schema::add_u64(t, schema::USED_BYTES_KEY, -freed)
        })
    }

    /// Uploads a batch of staged slices, oldest first. Returns false if there was nothing to
    /// do.
    fn upload_batch(&self, wb: &Writeback) -> Result<bool> {
        let batch: Vec<(u64, Staged)> = {
            let mut set = wb.set.lock();
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            while batch.len() < UPLOAD_BATCH && (batch.is_empty() || bytes < UPLOAD_BATCH_BYTES) {
                let Some(id) = set.queue.pop_front() else {
                    break;
                };
                // A slice that died and was collected while queued is simply dropped.
                if let Some(rec) = set.map.get(&id).copied() {
                    bytes += rec.rec.size as u64;
                    batch.push((id, rec));
                }
            }
            set.busy += batch.len();
            batch
        };
        if batch.is_empty() {
            return Ok(false);
        }
        let result = self.upload_slices(wb, &batch);
        let mut set = wb.set.lock();
        set.busy -= batch.len();
        if let Err(e) = &result {
            set.upload_errors += 1;
            for (id, _) in batch.iter().rev() {
                if set.map.contains_key(id) {
                    set.queue.push_front(*id);
                }
            }
            crate::warn_limited!(
                "upload of {} staged slice(s) failed, will retry: {e}",
                batch.len()
            );
        }
        wb.cv.notify_all();
        result.map(|_| true)
    }

    fn upload_slices(&self, wb: &Writeback, batch: &[(u64, Staged)]) -> Result<()> {
        let bs = self.volume().block_size as usize;
        let mut objects: Vec<(String, bytes::Bytes)> = Vec::new();
        // Objects each slice was written to, for the clean-up of slices that died meanwhile.
        let mut keys: HashMap<u64, Vec<String>> = HashMap::new();
        // Small slices go into pack objects of about `pack_size` bytes: one PUT for many.
        let mut small: Vec<(u64, Vec<u8>)> = Vec::new();
        for (id, staged) in batch {
            let data = match wb.take_resident(*id) {
                Some(data) => data,
                None => {
                    let mut data = vec![0u8; staged.rec.size as usize];
                    match wb.opts.log.read(&staged.loc, 0, &mut data) {
                        Ok(()) => data,
                        Err(e) => {
                            if wb.get(*id).is_none() {
                                continue; // collected meanwhile; its space may be reused
                            }
                            return Err(FsError::new(
                                e.errno(),
                                format!("reading staged slice {id}: {e}"),
                            ));
                        }
                    }
                }
            };
            // Uploaded data stays readable locally: a copy goes into the disk cache (slices
            // never change, so it cannot go stale). Small slices are cached as the pack they
            // go up in: one file per pack, not one per slice.
            if data.len() <= PACK_SLICE_MAX {
                small.push((*id, data));
                continue;
            }
            for (i, b) in data.chunks(bs).enumerate() {
                if let Some(disk) = self.disk.as_ref().filter(|d| d.keeps_large_uploads()) {
                    disk.insert(BlockId::block(*id, i as u32), b);
                }
                let key = schema::block_key(*id, i as u32, b.len() as u32);
                keys.entry(*id).or_default().push(key.clone());
                objects.push((key, encode_block(b)));
            }
        }
        let mut packs: Vec<(u64, u64, Vec<spoolfs_uploader::PackEntry>)> = Vec::new();
        let mut start = 0;
        while start < small.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < small.len()
                && (end == start || bytes + small[end].1.len() <= wb.opts.pack_size)
            {
                bytes += small[end].1.len();
                end += 1;
            }
            let pack = self.next_slice_id()?;
            let parts: Vec<(u64, &[u8])> = small[start..end]
                .iter()
                .map(|(id, d)| (*id, d.as_slice()))
                .collect();
            let (object, entries) = spoolfs_uploader::encode_pack(&parts);
            if let Some(disk) = &self.disk {
                disk.insert(BlockId::pack(pack), &object);
            }
            let key = schema::pack_object_key(pack);
            for e in &entries {
                keys.entry(e.slice).or_default();
            }
            packs.push((pack, object.len() as u64, entries));
            objects.push((key, object));
            start = end;
        }
        let count = objects.len() as u64;
        wb.limiter
            .acquire(objects.iter().map(|(_, o)| o.len() as u64).sum());
        self.storage.put_many(objects, self.config.max_uploads)?;
        self.counters
            .objects_put
            .fetch_add(count, Ordering::Relaxed);
        // One transaction moves the whole batch to the object store. Whoever deletes a `T`
        // record frees its log space; slices collected meanwhile are not ours any more.
        let ids: Vec<u64> = keys.keys().copied().collect();
        let (committed, empty_packs) = self.update(|t| {
            let mut done = Vec::new();
            for id in &ids {
                let key = schema::staged_key(*id);
                if t.get(&key)?.is_some() {
                    t.delete(&key)?;
                    done.push(*id);
                }
            }
            let mut empty = Vec::new();
            for (pack, size, entries) in &packs {
                let mut rec = schema::PackRec {
                    size: *size,
                    live_slices: 0,
                    live_bytes: 0,
                };
                for e in entries.iter().filter(|e| done.contains(&e.slice)) {
                    let packed = schema::PackedRec {
                        pack: *pack,
                        offset: e.offset,
                        len: e.len,
                        crc: e.crc,
                    };
                    t.put(&schema::packed_key(e.slice), &schema::encode(&packed))?;
                    rec.live_slices += 1;
                    rec.live_bytes += e.len as u64;
                }
                if rec.live_slices == 0 {
                    empty.push(*pack);
                } else {
                    t.put(&schema::pack_key(*pack), &schema::encode(&rec))?;
                }
            }
            Ok((done, empty))
        })?;
        // Counted before the slices leave the staged set, so whoever sees them gone (a sync)
        // also sees them counted.
        let done: std::collections::HashSet<u64> = committed.iter().copied().collect();
        let uploaded: u64 = batch
            .iter()
            .filter(|(id, _)| done.contains(id))
            .map(|(_, s)| s.rec.size as u64)
            .sum();
        wb.stats
            .uploaded_bytes
            .fetch_add(uploaded, Ordering::Relaxed);
        wb.stats
            .uploaded_slices
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        wb.remove_many(&committed);
        for id in ids.iter().filter(|id| !done.contains(id)) {
            // Collected while we uploaded: the objects we just wrote belong to nobody.
            for key in &keys[id] {
                let _ = self.storage.delete(key);
            }
        }
        for pack in empty_packs {
            let _ = self.storage.delete(&schema::pack_object_key(pack));
        }
        Ok(())
    }

    /// The barrier of `spoolfs sync`: returns once everything written before the call is in
    /// the object store and the metadata pointing at it is durable. Buffered writes of open
    /// files are flushed first; then the slices staged at that moment are waited for (slices
    /// staged later are not). `progress` sees (slices, bytes) still to go.
    pub fn sync_to_object_store(
        &self,
        timeout: Option<Duration>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.flush_all_open()?;
        if let Some(wb) = self.writeback.as_ref() {
            let waiting: std::collections::HashSet<u64> =
                wb.set.lock().map.keys().copied().collect();
            let deadline = timeout.map(|t| Instant::now() + t);
            let _draining = Draining::new(wb);
            let mut set = wb.set.lock();
            loop {
                let (slices, bytes) = waiting
                    .iter()
                    .filter_map(|id| set.map.get(id))
                    .fold((0u64, 0u64), |(n, b), r| (n + 1, b + r.rec.size as u64));
                progress(slices, bytes);
                if slices == 0 {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(FsError::new(
                        libc::ETIMEDOUT,
                        format!(
                            "{slices} slice(s), {bytes} bytes, are still not in the object store"
                        ),
                    ));
                }
                wb.cv.wait_for(&mut set, Duration::from_millis(200));
            }
        }
        self.persist_meta()
    }

    /// Waits until the staged slices `ids` are in the object store (or died). Without a time
    /// limit, like a close in standard mode; fails only if the mount is stopping.
    pub(crate) fn wait_uploaded(&self, wb: &Writeback, ids: &[u64]) -> Result<()> {
        let _draining = Draining::new(wb);
        let mut set = wb.set.lock();
        loop {
            if !ids.iter().any(|id| set.map.contains_key(id)) {
                return Ok(());
            }
            if self.stopping_now() {
                return Err(FsError::new(
                    libc::EIO,
                    "unmounting before the data reached the object store (it stays staged)",
                ));
            }
            wb.cv.wait_for(&mut set, Duration::from_millis(100));
        }
    }

    /// Waits until nothing is staged (or `timeout` passes); returns the bytes still staged.
    pub fn drain_uploads(&self, timeout: Option<Duration>) -> u64 {
        let Some(wb) = self.writeback.as_ref() else {
            return 0;
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let _draining = Draining::new(wb);
        let mut set = wb.set.lock();
        loop {
            if set.map.is_empty() {
                return 0;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return set.bytes;
            }
            wb.cv.wait_for(&mut set, Duration::from_millis(100));
        }
    }
}

/// Marks a caller waiting for uploads while it lives.
struct Draining<'a>(&'a Writeback);

impl<'a> Draining<'a> {
    fn new(wb: &'a Writeback) -> Self {
        wb.draining.fetch_add(1, Ordering::AcqRel);
        wb.cv.notify_all();
        Draining(wb)
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.draining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body of an uploader thread. It waits on the writeback state, never holding the engine,
/// so a dropped engine goes away.
pub(crate) fn uploader_loop(engine: std::sync::Weak<Engine>, wb: Arc<Writeback>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if wb.stop.load(Ordering::Acquire) {
            return;
        }
        {
            let mut set = wb.set.lock();
            if set.queue.is_empty() {
                wb.cv.wait_for(&mut set, Duration::from_millis(200));
            }
            if set.queue.is_empty() {
                if engine.strong_count() == 0 {
                    return;
                }
                continue;
            }
            // Let small slices gather into one pack, unless somebody waits for them.
            if wb.draining.load(Ordering::Acquire) == 0
                && let Some(wait) = set.wait_needed(wb.opts.upload_delay, wb.opts.pack_size)
            {
                wb.cv
                    .wait_for(&mut set, wait.min(Duration::from_millis(200)));
                continue;
            }
        }
        let Some(e) = engine.upgrade() else { return };
        if e.stopping_now() {
            return;
        }
        match e.upload_batch(&wb) {
            Ok(_) => backoff = Duration::from_millis(50),
            Err(_) => {
                drop(e);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The namespace log on a staging log: the write-ahead log's records are staging records
/// with no inode.
struct NamespaceLog {
    log: Arc<StagingLog>,
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
        let header = RecordHeader {
            ino: 0,
            chunk: 0,
            pos: 0,
            slice_id: 0,
            len: record.len() as u32,
            meta_len: 0,
        };
        self.log
            .submit_parts(&header, &[record], false)
            .map(crate::wal::PendingRecord::Staged)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
    fn finish(&self, pending: crate::wal::PendingRecord) -> std::io::Result<u64> {
        let loc = match pending {
            crate::wal::PendingRecord::Done(h) => return Ok(h),
            crate::wal::PendingRecord::Staged(p) => p.wait(),
        };
        let loc = loc.map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(self.remember(loc))
    }
    fn sync(&self) -> std::io::Result<()> {
        if !self.flush {
            return Ok(());
        }
        self.log
            .sync()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
    fn free(&self, handle: u64) {
        if let Some(loc) = self.locs.lock().remove(&handle) {
            self.log.free(&loc);
        }
    }
}

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
    /// `--staging-timeout`: an append slower than this is given up (the data is uploaded
    /// directly instead).
    pub staging_timeout: Duration,
    /// Fault injection into the data staging log (tests).
    pub faults: Option<Arc<crate::staging::FaultConfig>>,
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
            staging_timeout: Duration::from_secs(5),
            faults: None,
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
}

/// Which node's cache directory holds this volume's staging and namespace logs, and whether
/// the last mount ended cleanly (everything uploaded and checkpointed).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct StagingOwner {
    pub cache_dir: String,
    pub clean: bool,
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
    if let Some(o) = &owner
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
    std::fs::create_dir_all(&dir).map_err(|e| {
        FsError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("cannot create cache directory {}: {e}", dir.display()),
        )
    })?;
    let uuid_bytes = *uuid::Uuid::parse_str(&volume.uuid)
        .map_err(|e| FsError::Other(format!("volume uuid {:?}: {e}", volume.uuid)))?
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
            pool_buffers: pool.0,
            pool_buffer_size: pool.1,
            // A durable append must cover the records written before it (other slices of the
            // same flush, earlier transactions): a flush after the write, never FUA alone.
            flush_mode: crate::staging::FlushMode::Fdatasync,
            append_timeout: settings.staging_timeout,
        };
        StagingLog::open_tuned(config, tuning).map_err(|e| {
            FsError::new(
                e.errno(),
                format!(
                    "cannot open the staging log in {}: {e}",
                    dir.join(sub).display()
                ),
            )
        })
    };
    // The namespace log is small and has one writer thread so its order is simple.
    let (ns_log, ns_records) = open_log(
        "namespace",
        1,
        settings.segment_size.min(16 << 20),
        16,
        None,
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
        flush,
        locs: Mutex::new(HashMap::new()),
        next: std::sync::atomic::AtomicU64::new(1),
    });
    let max_segments =
        (settings.max_staging_bytes.div_ceil(settings.segment_size) as usize + 2).max(4);
    let (data_log, data_records) = open_log(
        "data",
        settings.engine_threads.max(1),
        settings.segment_size,
        max_segments,
        settings.faults.clone(),
        // 32 registered buffers of 1 MiB (+ header room) per engine thread.
        (32, (1 << 20) + (64 << 10)),
    )?;
    tracing::info!(
        "staging log in {}: {} io engine, {} thread(s)",
        dir.display(),
        data_log.usage().io_engine,
        settings.engine_threads.max(1)
    );
    let mut records = Vec::with_capacity(ns_records.len());
    for r in ns_records {
        let mut buf = vec![0u8; r.loc.len as usize];
        match ns_log.read(&r.loc, 0, &mut buf) {
            Ok(()) => records.push((ns.remember(r.loc), buf)),
            Err(e) => tracing::warn!("unreadable namespace log record: {e}"),
        }
    }
    // Namespace transactions that rode with a slice: the tail of its data-log record.
    for r in data_records.iter().filter(|r| r.header.meta_len > 0) {
        let meta_len = r.header.meta_len as usize;
        let mut buf = vec![0u8; meta_len];
        let at = r.header.len - r.header.meta_len;
        match data_log.read(&r.loc, at, &mut buf) {
            // Freed by whoever frees the slice's record, not by the namespace log.
            Ok(()) => records.push((u64::MAX, buf)),
            Err(e) => tracing::warn!("unreadable namespace record in the data log: {e}"),
        }
    }
    // Every change is crash-safe in the namespace log before it is acknowledged, so the
    // metadata store takes them in memory and gets them in one transaction per checkpoint.
    let meta: Arc<dyn spoolfs_metadata::KvStore> =
        Arc::new(spoolfs_metadata::BufferedStore::new(meta));
    let (wal, replayed) = crate::wal::WalStore::recover(meta, ns, records)?;
    if replayed > 0 {
        tracing::info!("replay: {replayed} namespace change(s) recovered from the log");
    }
    let wal = Arc::new(wal);
    let owner = StagingOwner {
        cache_dir: dir_str,
        clean: false,
    };
    spoolfs_metadata::KvStore::update(
        wal.as_ref(),
        spoolfs_metadata::Durability::Durable,
        &mut |t| {
            t.put(
                OWNER_KEY,
                &serde_json::to_vec(&owner).expect("owner serialises"),
            )
        },
    )?;
    Ok((
        wal.clone(),
        StagingOptions {
            log: Arc::new(data_log),
            replayed: Arc::new(data_records),
            writeback: settings.writeback,
            max_staging_bytes: settings.max_staging_bytes,
            max_staging_age: settings.max_staging_age,
            max_staging_wait: settings.max_staging_wait,
            upload_threads: settings.upload_threads,
            segment_size: settings.segment_size,
            upload_delay: settings.upload_delay,
            pack_size: settings.pack_size,
            upload_limit: settings.upload_limit,
            wal: Some(Arc::downgrade(&wal)),
            upload_buffer: settings.upload_buffer,
        },
    ))
}

impl Engine {
    /// Marks the staging logs as holding nothing the metadata still needs (everything staged
    /// is uploaded and the metadata store is checkpointed), so another cache directory may be
    /// used next time.
    pub(crate) fn mark_staging_clean(&self) -> Result<()> {
        let Some(wb) = self.writeback.as_ref() else {
            return Ok(());
        };
        if !wb.set.lock().map.is_empty() {
            return Ok(());
        }
        // Runs at shutdown, after changes are refused: straight to the store.
        self.meta
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
}

#[cfg(test)]
mod tests {
    use super::{RateWindow, UploadLimiter};
    use std::time::{Duration, Instant};

    #[test]
    fn upload_limiter_paces_to_its_rate() {
        // 1 MB/s with a one-second burst: 2.5 MB take about 1.5 s.
        let limiter = UploadLimiter::new(1_000_000);
        let t = Instant::now();
        for _ in 0..5 {
            limiter.acquire(500_000);
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        // No cap: no wait.
        let free = UploadLimiter::new(0);
        let t = Instant::now();
        free.acquire(u64::MAX);
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn upload_rate_over_the_last_seconds() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RateWindow::default();
        assert_eq!(w.rate(t0, 0), 0.0, "no samples");
        w.sample(at(0), 0);
        assert_eq!(w.rate(at(100), 1000), 0.0, "too little history");
        // 1000 bytes a second for 20 s, sampled each second.
        for s in 1..=20 {
            w.sample(at(s * 1000), s * 1000);
        }
        let r = w.rate(at(20_000), 20_000);
        assert!((r - 1000.0).abs() < 1e-6, "{r}");
        // The window forgets: after 12 idle seconds the rate is 0.
        for s in 21..=32 {
            w.sample(at(s * 1000), 20_000);
        }
        assert_eq!(w.rate(at(32_000), 20_000), 0.0);
        // Samples closer than 0.9 s are not kept.
        let n = w.samples.len();
        w.sample(at(32_500), 20_000);
        assert_eq!(w.samples.len(), n);
    }
}
