//! The uploader: the staged set, its backpressure on writers, hand-off from the staging log,
//! freeing of log space, and the waits of `sync` and unmount.

use crate::limiter::{RateWindow, UploadLimiter};
use crate::staged::{Staged, StagedSet};
use parking_lot::{Condvar, Mutex, RwLock};
use spoolfs_objects::ObjectStorage;
use spoolfs_staging::{PendingAppend, RecordHeader, StagedLoc, StagingError, StagingLog};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How far the metadata store has made namespace transactions durable. A staging record that
/// carries a namespace transaction is its only log copy until then, so its space waits.
pub trait NamespaceProgress: Send + Sync {
    /// The last namespace transaction the metadata store has made durable.
    fn persisted_through(&self) -> u64;
}

/// How a mount stages writes and uploads them.
#[derive(Clone)]
pub struct UploadOptions {
    pub log: Arc<StagingLog>,
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
    /// The namespace log, if records may carry namespace transactions. Weak: the engine owns
    /// the store (uploader threads may outlive it briefly).
    pub namespace: Option<Weak<dyn NamespaceProgress>>,
    /// Most bytes of just-staged slices kept in memory for the uploaders, which otherwise
    /// read them back from the staging device (`--upload-buffer`).
    pub upload_buffer: u64,
    /// While writes keep arriving (a slice staged less than `upload_delay` ago), uploads wait
    /// until this many bytes are staged (or the oldest has waited
    /// [`crate::staged::BURST_MAX_WAIT`]), so that a burst of writes (a checkpoint) has the
    /// staging disk and the CPUs to itself (`--upload-hold`; 0: uploads start at once).
    pub upload_hold: u64,
    /// This node's id in the `owner` field of the `T` records it writes (0 on an exclusive
    /// store, where every staged slice is this mount's).
    pub node_id: u64,
}

/// Event counters of the writeback path, since the mount (read by the metrics and status).
#[derive(Default)]
pub struct UploadStats {
    pub uploaded_bytes: AtomicU64,
    pub uploaded_slices: AtomicU64,
    /// Writers that found the staging limits reached and waited.
    pub backpressure_waits: AtomicU64,
    /// Waits that ran out of `--max-staging-wait` (the writer uploaded directly).
    pub backpressure_timeouts: AtomicU64,
    /// Slices sent straight to the object store (no room in, or a failure of, the log).
    pub bypassed: AtomicU64,
}

/// Staged slices on their way to the object store. Slices come in committed (their `T`
/// records written); uploader threads ([`crate::run_uploader`]) take them out oldest first.
pub struct Uploader {
    pub opts: UploadOptions,
    pub(crate) storage: Arc<ObjectStorage>,
    /// Concurrent requests of one `put_many`.
    pub(crate) max_uploads: usize,
    pub set: Mutex<StagedSet>,
    /// Signalled when work arrives or room is freed.
    pub(crate) cv: Condvar,
    /// Uploaders exit.
    stop: AtomicBool,
    /// Held shared by readers of staged data, exclusively while log space is freed.
    read_guard: RwLock<()>,
    /// Callers waiting for uploads (`sync`, unmount): no upload delay while there are any.
    pub(crate) draining: AtomicUsize,
    /// `--upload-limit`.
    pub(crate) limiter: UploadLimiter,
    /// Log records no longer needed once the next checkpoint covers the namespace
    /// transaction they carry: (place, transaction number).
    deferred_frees: Mutex<Vec<(StagedLoc, u64)>>,
    pub stats: UploadStats,
    /// Uploaded bytes sampled about once a second, for the upload rate.
    rate: Mutex<RateWindow>,
}

impl Uploader {
    pub fn new(opts: UploadOptions, storage: Arc<ObjectStorage>, max_uploads: usize) -> Self {
        Uploader {
            storage,
            max_uploads,
            set: Mutex::new(StagedSet::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            read_guard: RwLock::new(()),
            draining: AtomicUsize::new(0),
            limiter: UploadLimiter::new(opts.upload_limit),
            deferred_frees: Mutex::new(Vec::new()),
            stats: UploadStats::default(),
            rate: Mutex::new(RateWindow::default()),
            opts,
        }
    }

    /// Tells the uploader threads to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
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
            if set.bytes + len <= self.opts.max_staging_bytes
                && set.oldest_within(self.opts.max_staging_age)
            {
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
    /// `None` if it must go straight to the object store (no room, full, failing). A large
    /// slice is copied into its record off the caller's thread, which shares `data` until
    /// then ([`StagingLog::submit_shared`](spoolfs_staging::StagingLog::submit_shared)).
    pub fn submit_stage(
        &self,
        ino: u64,
        chunk: u32,
        pos: u32,
        slice: u64,
        data: &Arc<Vec<u8>>,
    ) -> Option<PendingAppend> {
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
            .submit_shared(&header, data.clone(), false)
            .map_err(|e| self.bypass(slice, e))
            .ok()
    }

    /// Where a submitted slice was staged; `None` if it must go to the object store instead.
    pub fn finish_stage(&self, slice: u64, pending: PendingAppend) -> Option<StagedLoc> {
        pending.wait().map_err(|e| self.bypass(slice, e)).ok()
    }

    /// Counts and logs a slice the staging log refused: it goes to the object store instead.
    pub fn bypass(&self, slice: u64, e: StagingError) {
        self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
        match e {
            StagingError::Full => {
                spoolfs_lograte::log_limited!(
                    info,
                    "staging log full: uploading slice {slice} directly"
                )
            }
            _ => spoolfs_lograte::warn_limited!(
                "staging write failed ({e}): uploading slice {slice} directly"
            ),
        }
    }

    /// Stages one slice together with the namespace record that links it, as one record,
    /// without waiting for the device. Errors mean nothing was submitted.
    pub fn submit_carrying(
        &self,
        header: RecordHeader,
        data: &[u8],
        record: &[u8],
        durable: bool,
    ) -> Result<PendingAppend, StagingError> {
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
        if !staged.is_empty() {
            set.last_added_ns = crate::staged::now_ns();
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

    /// Another mount asked for staged slice `id`: upload it next, without the upload delay.
    /// Nothing if it is not queued (being uploaded, or no longer staged).
    pub fn prioritise(&self, id: u64) {
        if self.set.lock().prioritise(id) {
            self.cv.notify_all();
        }
    }

    /// Keeps slice `id`'s data, just staged, in memory for its uploader, if the upload buffer
    /// has room; call before [`Uploader::add`] lists the slice. The data is the caller's own
    /// buffer, moved, not copied.
    /// Gives the buffer back when the upload buffer has no room for it.
    pub fn keep_for_upload(&self, id: u64, data: Vec<u8>) -> Option<Vec<u8>> {
        let mut set = self.set.lock();
        let len = data.len() as u64;
        if set.resident_bytes + len > self.opts.upload_buffer {
            return Some(data);
        }
        set.resident_bytes += len;
        set.resident.insert(id, data);
        None
    }

    /// The in-memory data of slice `id`, if it is still kept.
    pub(crate) fn take_resident(&self, id: u64) -> Option<Vec<u8>> {
        self.set.lock().take_resident(id)
    }

    /// Forgets staged slices whose `T` records were deleted, and frees their log space once
    /// no reader is still reading from the log. Call only with the ids whose `T` records the
    /// caller's own transaction deleted: whoever deletes a `T` record frees its space, exactly
    /// once.
    pub fn remove_many(&self, ids: &[u64]) {
        let mut locs = Vec::new();
        let mut last_seq = 0;
        {
            let mut set = self.set.lock();
            for id in ids {
                set.take_resident(*id);
                set.uncertain.remove(id);
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
            .namespace
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

    /// Reads `out.len()` bytes at `off` of staged slice `id`, if it is staged, holding off
    /// the freeing of its log space while it reads. `None`: not staged (any more).
    pub fn read_staged(
        &self,
        id: u64,
        off: u32,
        out: &mut [u8],
    ) -> Option<Result<(), StagingError>> {
        let _shared = self.read_guard.read();
        let rec = self.get(id)?;
        Some(self.opts.log.read(&rec.loc, off, out))
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

    /// Waits until the staged slices `ids` are in the object store (or died). Without a time
    /// limit, like a close in standard mode; false if `stopping` says the mount is stopping.
    pub fn wait_uploaded(&self, ids: &[u64], stopping: &dyn Fn() -> bool) -> bool {
        let _draining = Draining::new(self);
        let mut set = self.set.lock();
        loop {
            if !ids.iter().any(|id| set.map.contains_key(id)) {
                return true;
            }
            if stopping() {
                return false;
            }
            self.cv.wait_for(&mut set, Duration::from_millis(100));
        }
    }

    /// Waits until the slices staged now are in the object store (slices staged later are
    /// not waited for). `progress` sees (slices, bytes) still to go; on timeout, returns them.
    pub fn wait_staged_now(
        &self,
        timeout: Option<Duration>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), (u64, u64)> {
        let waiting: std::collections::HashSet<u64> = self.set.lock().map.keys().copied().collect();
        let deadline = timeout.map(|t| Instant::now() + t);
        let _draining = Draining::new(self);
        let mut set = self.set.lock();
        loop {
            let (slices, bytes) = set.still_staged(waiting.iter());
            progress(slices, bytes);
            if slices == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err((slices, bytes));
            }
            self.cv.wait_for(&mut set, Duration::from_millis(200));
        }
    }

    /// Waits until nothing is staged (or `timeout` passes); returns the bytes still staged.
    pub fn drain(&self, timeout: Option<Duration>) -> u64 {
        let deadline = timeout.map(|t| Instant::now() + t);
        let _draining = Draining::new(self);
        let mut set = self.set.lock();
        loop {
            if set.map.is_empty() {
                return 0;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return set.bytes;
            }
            self.cv.wait_for(&mut set, Duration::from_millis(100));
        }
    }
}

/// Marks a caller waiting for uploads while it lives.
struct Draining<'a>(&'a Uploader);

impl<'a> Draining<'a> {
    fn new(up: &'a Uploader) -> Self {
        up.draining.fetch_add(1, Ordering::AcqRel);
        up.cv.notify_all();
        Draining(up)
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.draining.fetch_sub(1, Ordering::AcqRel);
    }
}
