//! Whole-pack fetches into the local data cache: the cold-read engine for small files.
//!
//! Small files written together are packed together (docs/FORMAT.md), so they are usually read
//! together. When one slice of a pack is read cold, or when a directory is listed, the packs
//! holding its files' data are fetched whole, several at once, into the local data cache:
//! reading the neighbours then costs a local read, not one object-store round trip each. A
//! listing plans its subdirectories too, breadth first, a few levels deep, within one budget
//! of bytes: the first listing of a tree puts the packs of the whole tree on their way.
//!
//! Bounded on every side: `threads` fetchers, each holding at most one pack of at most
//! `max_bytes` in memory (so at most `threads × max_bytes` in flight); a bounded queue that
//! drops background work when full; a pack queued or in flight is never fetched twice; a
//! directory is planned at most once per [`DIR_RESCAN_AFTER`]. A reader of a slice whose pack
//! is queued or in flight does not wait behind it: it fetches its slice itself (one round
//! trip), unless the pack is about to land ([`PackFetcher::worth_waiting`], from the measured
//! speed of pack fetches and slice GETs). [`stop`] empties the queues and joins the fetchers:
//! nothing is fetched after it returns.
//!
//! The fetchers hold the object reader weakly, through [`PackSource`], so that this module
//! does not depend on the reader that owns it.
//!
//! [`stop`]: PackFetcher::stop

use crate::types::{Ino, PackFetchStats};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Jobs queued at most, urgent and background (packs and directories) each; more are
/// dropped.
pub(crate) const PACK_QUEUE: usize = 1024;
/// A directory listed again within this time is not planned again.
pub(crate) const DIR_RESCAN_AFTER: Duration = Duration::from_secs(30);
/// Directories remembered as recently planned, at most.
const RECENT_DIRS: usize = 4096;
/// Lookups of files in one directory in a row that plan the directory.
const LOOKUPS_IN_SEQUENCE: u32 = 2;
/// Pack ids remembered as fetched by this mount (for the hit count), at most.
const FETCHED_PACKS: usize = 1 << 16;

/// Settings of the pack fetcher.
#[derive(Clone, Copy, Debug)]
pub struct PackFetchConfig {
    /// Largest pack fetched whole (bytes; 0: no whole-pack fetches). Also the most memory one
    /// fetch holds.
    pub max_bytes: u64,
    /// Packs fetched at once.
    pub threads: usize,
    /// Bytes of packs a directory listing may prefetch (0: listings prefetch nothing).
    pub dir_budget_bytes: u64,
    /// How many levels of subdirectories a listing plans too, breadth first, within its
    /// budget (0: the listed directory alone). A program that lists a directory goes on to
    /// its subdirectories (an import system, `tar`, `find`), and the packs their files share
    /// are fetched at once instead of one listing after another.
    pub dir_depth: u32,
    /// A read of a slice whose pack is on its way takes, in its own ranged GET, the slices
    /// stored up to this many bytes before and after it in the pack (0: the slice alone). A
    /// program reads the files of one directory close together, in an order of its own (an
    /// import system's, not the order they were written and packed in), and they were packed
    /// side by side: a few milliseconds of transfer more save a round trip for each
    /// neighbour read before the pack lands.
    pub nearby_bytes: u64,
    /// The largest file stored as blocks (over `PACK_SLICE_MAX`) whose blocks a directory
    /// listing fetches ahead too, within its budget (0: listings fetch only packs). Shared
    /// libraries of a few MiB sit next to the modules that load them.
    pub dir_file_max_bytes: u64,
}

impl Default for PackFetchConfig {
    fn default() -> Self {
        PackFetchConfig {
            max_bytes: 16 << 20,
            threads: 8,
            dir_budget_bytes: 512 << 20,
            dir_depth: 3,
            nearby_bytes: 256 << 10,
            dir_file_max_bytes: 8 << 20,
        }
    }
}

/// What the fetchers fetch with: the object reader.
pub(crate) trait PackSource: Send + Sync {
    /// Fetches pack `pack` whole into the local data cache unless it is there already, too
    /// large or gone; returns the bytes fetched (0: nothing fetched).
    fn fetch_pack(&self, pack: u64, fetcher: &PackFetcher) -> Result<u64, String>;
    /// The packs holding the first slices of the regular files of directory `dir`, not yet
    /// in the local data cache, within `budget.fetch` bytes of packs (taken from it), and
    /// the directory's subdirectories. Packs in the local data cache already are read ahead
    /// from it into the page cache, within `budget.read_ahead` bytes (taken from it).
    fn plan_dir(&self, dir: Ino, budget: &mut DirBudget) -> DirPlan;
}

/// What is left of a listing's prefetch budget, shared by the directories planned for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirBudget {
    /// Bytes of packs and blocks to fetch from the object store.
    pub fetch: u64,
    /// Bytes of cached packs and blocks to read ahead from the local disk.
    pub read_ahead: u64,
}

impl DirBudget {
    /// Nothing more to fetch: the listing's subdirectories are left to their own listings.
    fn spent(&self) -> bool {
        self.fetch == 0
    }
}

/// A listing being planned, directory by directory.
struct Listing {
    budget: DirBudget,
    /// Its directories queued or being planned.
    dirs: u32,
    /// One of its directories is being planned: the others wait (they share the budget),
    /// and the fetchers take other work meanwhile.
    busy: bool,
}

/// A directory's plan: the packs to fetch, and its subdirectories.
#[derive(Debug, Default)]
pub(crate) struct DirPlan {
    pub packs: Vec<u64>,
    pub subdirs: Vec<Ino>,
    /// Files were left out of the fetches, or cached data out of the read-ahead, because
    /// the budget was spent (or, below the listed directory, reads ahead nothing): the
    /// directory's own listing plans it again.
    pub cut: bool,
    /// The directory has regular files, and all their data is in the local data cache: its
    /// subdirectories most likely too (a tree read before), so they are not planned.
    pub cached_only: bool,
}

/// What `spoolfs warmup` did, and how far it is.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WarmReport {
    /// Regular files under the path.
    pub files: u64,
    /// Bytes of object data they need (whole packs counted whole), and how many are done.
    pub total_bytes: u64,
    pub done_bytes: u64,
    /// Bytes fetched from the object store (the rest was cached already).
    pub fetched_bytes: u64,
    /// Packs, slices or blocks that could not be fetched.
    pub errors: u64,
    pub secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Pack(u64),
    /// A directory to plan for listing `listing` (its budget in [`Queues::listings`]), and
    /// how many levels of its subdirectories to plan after it.
    Dir {
        dir: Ino,
        listing: u64,
        depth: u32,
    },
}

enum Next {
    Job(Job),
    Idle,
    Stop,
}

#[derive(Default)]
struct Queues {
    /// Packs a reader waits for: first.
    urgent: VecDeque<u64>,
    background: VecDeque<Job>,
    /// Directories to plan: before the background packs (a plan is a few metadata reads
    /// and queues fetches; behind whole-pack GETs, a subdirectory's plan would come late).
    dirs: VecDeque<Job>,
    /// Packs queued or being fetched.
    pending: HashSet<u64>,
    recent_dirs: HashMap<Ino, Instant>,
    /// The listings being planned.
    listings: HashMap<u64, Listing>,
    next_listing: u64,
    fetched: HashSet<u64>,
    /// Packs whose GET is running: when it began and the pack's bytes.
    in_flight: HashMap<u64, (Instant, u64)>,
    /// Bytes per second of the whole-pack GETs lately (a moving average; none yet: unknown).
    pack_rate: Option<f64>,
    /// How long a reader's GET of a slice took lately (a moving average).
    slice_get: Option<Duration>,
    stopped: bool,
}

impl Queues {
    /// Whether `dir` was planned within [`DIR_RESCAN_AFTER`] of `now`.
    fn planned_lately(&self, dir: Ino, now: Instant) -> bool {
        self.recent_dirs
            .get(&dir)
            .is_some_and(|t| now.duration_since(*t) < DIR_RESCAN_AFTER)
    }

    /// The next job to run: a pack a reader waits for, then a directory to plan (of a
    /// listing no other fetcher is planning: they share its budget), then background packs.
    fn take_job(&mut self) -> Option<Job> {
        if let Some(pack) = self.urgent.pop_front() {
            return Some(Job::Pack(pack));
        }
        let listings = &self.listings;
        let free = self.dirs.iter().position(|job| match job {
            Job::Dir { listing, .. } => listings.get(listing).is_none_or(|l| !l.busy),
            Job::Pack(_) => true,
        });
        if let Some(job) = free.and_then(|at| self.dirs.remove(at)) {
            if let Job::Dir { listing, .. } = job
                && let Some(l) = self.listings.get_mut(&listing)
            {
                l.busy = true;
            }
            return Some(job);
        }
        self.background.pop_front()
    }
}

/// The weight of a new sample in the moving averages of [`Queues`].
const AVERAGE_WEIGHT: f64 = 0.25;

fn moving_average(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(old) => old + (sample - old) * AVERAGE_WEIGHT,
        None => sample,
    }
}

pub(crate) struct PackFetcher {
    pub config: PackFetchConfig,
    queues: Mutex<Queues>,
    /// Signalled when work is queued or the fetcher stops.
    work: Condvar,
    /// Signalled when a pack fetch ends.
    done: Condvar,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The directory of the last file looked up, and how many in a row were in it.
    last_lookup: Mutex<(Ino, u32)>,
    started: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    dirs_planned: AtomicU64,
    concurrent: AtomicU64,
    peak_concurrent: AtomicU64,
    bytes_in_flight: AtomicU64,
    peak_bytes_in_flight: AtomicU64,
}

impl PackFetcher {
    /// Starts `config.threads` fetchers for `source` (which is not fully built yet: they only
    /// hold a weak reference, upgraded for each job).
    pub fn start(
        config: PackFetchConfig,
        source: Weak<dyn PackSource>,
    ) -> std::io::Result<Arc<PackFetcher>> {
        let fetcher = Arc::new(PackFetcher {
            config,
            queues: Mutex::new(Queues::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            last_lookup: Mutex::new((0, 0)),
            started: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dirs_planned: AtomicU64::new(0),
            concurrent: AtomicU64::new(0),
            peak_concurrent: AtomicU64::new(0),
            bytes_in_flight: AtomicU64::new(0),
            peak_bytes_in_flight: AtomicU64::new(0),
        });
        let mut handles = Vec::new();
        for i in 0..config.threads {
            let me = Arc::downgrade(&fetcher);
            let source = source.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("spoolfs-pf{i}"))
                .spawn(move || fetcher_loop(me, source));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    *fetcher.threads.lock() = handles;
                    fetcher.stop();
                    return Err(e);
                }
            }
        }
        *fetcher.threads.lock() = handles;
        Ok(fetcher)
    }

    /// Whether whole packs are fetched at all.
    pub fn enabled(&self) -> bool {
        self.config.max_bytes > 0 && self.config.threads > 0
    }

    /// Queues `pack` in the background (a listing's prefetch); false if it was dropped.
    pub fn prefetch(&self, pack: u64) -> bool {
        let mut q = self.queues.lock();
        if q.stopped || q.pending.contains(&pack) {
            return !q.stopped;
        }
        if q.background.len() >= PACK_QUEUE {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.pending.insert(pack);
        q.background.push_back(Job::Pack(pack));
        self.work.notify_one();
        true
    }

    /// Queues `pack` ahead of all background work (a reader wants it now); a pack already
    /// queued in the background moves to the front. True if it is queued or in flight.
    pub fn fetch_soon(&self, pack: u64) -> bool {
        let mut q = self.queues.lock();
        if q.stopped {
            return false;
        }
        if q.pending.contains(&pack) {
            if let Some(at) = q.background.iter().position(|j| *j == Job::Pack(pack)) {
                q.background.remove(at);
                q.urgent.push_back(pack);
            }
            return true;
        }
        if q.urgent.len() >= PACK_QUEUE {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.pending.insert(pack);
        q.urgent.push_back(pack);
        self.work.notify_one();
        true
    }

    /// Whether [`Self::stop`] ran.
    pub fn stopped(&self) -> bool {
        self.queues.lock().stopped
    }

    /// Whether `pack` is queued or being fetched.
    pub fn pending(&self, pack: u64) -> bool {
        self.queues.lock().pending.contains(&pack)
    }

    /// How long a reader of a slice of `pack` (queued or in flight) should wait for it rather
    /// than GET its slice itself: `Some(limit)` when the pack's GET is running and expected to
    /// end sooner than a slice GET would (limit: that expected time plus one slice GET, so a
    /// wrong guess costs at most one slice GET more); `None` when the pack is only queued (the
    /// fetchers may be busy for whole packs), when it is far from landing, or before any pack
    /// and slice GET was timed.
    pub fn worth_waiting(&self, pack: u64) -> Option<Duration> {
        let q = self.queues.lock();
        let &(began, bytes) = q.in_flight.get(&pack)?;
        let rate = q.pack_rate.filter(|r| *r > 0.0)?;
        let slice_get = q.slice_get?;
        let expected = Duration::try_from_secs_f64(bytes as f64 / rate).ok()?;
        let left = expected.saturating_sub(began.elapsed());
        (left <= slice_get).then(|| left + slice_get)
    }

    /// A reader's GET of a slice took `took` (what not waiting for a pack costs).
    pub fn note_slice_get(&self, took: Duration) {
        let mut q = self.queues.lock();
        let avg = moving_average(q.slice_get.map(|d| d.as_secs_f64()), took.as_secs_f64());
        q.slice_get = Some(Duration::from_secs_f64(avg));
    }

    /// Waits until `pack` is neither queued nor being fetched, or `timeout` passes, or the
    /// fetcher stops; true when the fetch ended.
    pub fn wait_for(&self, pack: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.queues.lock();
        while q.pending.contains(&pack) && !q.stopped {
            if self.done.wait_until(&mut q, deadline).timed_out() {
                return !q.pending.contains(&pack);
            }
        }
        !q.pending.contains(&pack)
    }

    /// Plans directory `dir` in the background (its files' packs are then prefetched), unless
    /// it was planned within [`DIR_RESCAN_AFTER`] or listings prefetch nothing.
    pub fn prefetch_dir(&self, dir: Ino) {
        if self.config.dir_budget_bytes == 0 || !self.enabled() {
            return;
        }
        let mut q = self.queues.lock();
        if q.stopped {
            return;
        }
        let now = Instant::now();
        if q.planned_lately(dir, now) {
            return;
        }
        if q.dirs.len() >= PACK_QUEUE {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if q.recent_dirs.len() >= RECENT_DIRS {
            q.recent_dirs
                .retain(|_, t| now.duration_since(*t) < DIR_RESCAN_AFTER);
            if q.recent_dirs.len() >= RECENT_DIRS {
                q.recent_dirs.clear();
            }
        }
        q.recent_dirs.insert(dir, now);
        let listing = q.next_listing;
        q.next_listing += 1;
        let budget = DirBudget {
            fetch: self.config.dir_budget_bytes,
            read_ahead: self.config.dir_budget_bytes,
        };
        q.listings.insert(
            listing,
            Listing {
                budget,
                dirs: 1,
                busy: false,
            },
        );
        q.dirs.push_back(Job::Dir {
            dir,
            listing,
            depth: self.config.dir_depth,
        });
        self.work.notify_one();
    }

    /// A regular file of directory `dir` was looked up: two in a row in the same directory
    /// (a program reading its files in sequence) plan the directory as a listing does.
    pub fn note_lookup(&self, dir: Ino) {
        let due = {
            let mut last = self.last_lookup.lock();
            if last.0 == dir {
                last.1 = last.1.saturating_add(1);
            } else {
                *last = (dir, 1);
            }
            last.1 == LOOKUPS_IN_SEQUENCE
        };
        if due {
            self.prefetch_dir(dir);
        }
    }

    /// A read was served from the cached copy of `pack`: counted if this mount fetched it.
    pub fn note_hit(&self, pack: u64) {
        if self.queues.lock().fetched.contains(&pack) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by a source around the GET of pack `pack` of `bytes` bytes: counts it, keeps
    /// the peaks of concurrency and memory, and times it.
    pub fn begin_fetch(&self, pack: u64, bytes: u64) {
        self.queues
            .lock()
            .in_flight
            .insert(pack, (Instant::now(), bytes));
        self.started.fetch_add(1, Ordering::Relaxed);
        let now = self.concurrent.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_concurrent.fetch_max(now, Ordering::AcqRel);
        let held = self.bytes_in_flight.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak_bytes_in_flight.fetch_max(held, Ordering::AcqRel);
    }

    /// The GET of `reserved` bytes begun with [`Self::begin_fetch`] ended, having fetched
    /// `fetched` bytes of pack `pack` (`None`: it failed).
    pub fn end_fetch(&self, pack: u64, reserved: u64, fetched: Option<u64>) {
        self.concurrent.fetch_sub(1, Ordering::AcqRel);
        self.bytes_in_flight.fetch_sub(reserved, Ordering::AcqRel);
        let mut q = self.queues.lock();
        let began = q.in_flight.remove(&pack);
        match fetched {
            Some(n) => {
                self.bytes.fetch_add(n, Ordering::Relaxed);
                let secs = began.map_or(0.0, |(t, _)| t.elapsed().as_secs_f64());
                if n > 0 && secs > 0.0 {
                    q.pack_rate = Some(moving_average(q.pack_rate, n as f64 / secs));
                }
                if q.fetched.len() >= FETCHED_PACKS {
                    q.fetched.clear();
                }
                q.fetched.insert(pack);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> PackFetchStats {
        PackFetchStats {
            started: self.started.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dirs_planned: self.dirs_planned.load(Ordering::Relaxed),
            peak_concurrent: self.peak_concurrent.load(Ordering::Relaxed),
            peak_bytes_in_flight: self.peak_bytes_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Drops everything queued and waits for the fetches in flight: nothing is fetched after
    /// this returns. Later requests are ignored.
    pub fn stop(&self) {
        {
            let mut guard = self.queues.lock();
            let q = &mut *guard;
            q.stopped = true;
            let dropped: Vec<u64> = q
                .urgent
                .drain(..)
                .chain(q.background.drain(..).filter_map(|j| match j {
                    Job::Pack(p) => Some(p),
                    Job::Dir { .. } => None,
                }))
                .collect();
            for pack in dropped {
                q.pending.remove(&pack);
            }
            q.dirs.clear();
            q.listings.clear();
            self.work.notify_all();
            self.done.notify_all();
        }
        let handles: Vec<_> = std::mem::take(&mut *self.threads.lock());
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    /// The next job, waiting a while for one.
    fn next_job(&self) -> Next {
        let mut q = self.queues.lock();
        if q.stopped {
            return Next::Stop;
        }
        if let Some(job) = q.take_job() {
            return Next::Job(job);
        }
        // Woken by new work, a listing's directory planned, or stop; the timeout lets the
        // threads of a fetcher that was dropped without a stop notice it.
        self.work.wait_for(&mut q, Duration::from_secs(1));
        if q.stopped {
            return Next::Stop;
        }
        match q.take_job() {
            Some(job) => Next::Job(job),
            None => Next::Idle,
        }
    }

    fn finish(&self, pack: u64) {
        self.queues.lock().pending.remove(&pack);
        self.done.notify_all();
    }
}

impl Drop for PackFetcher {
    fn drop(&mut self) {
        let mut q = self.queues.lock();
        q.stopped = true;
        self.work.notify_all();
        self.done.notify_all();
    }
}

fn fetcher_loop(me: Weak<PackFetcher>, source: Weak<dyn PackSource>) {
    loop {
        let Some(fetcher) = me.upgrade() else {
            return;
        };
        let job = match fetcher.next_job() {
            Next::Job(job) => job,
            Next::Idle => continue,
            Next::Stop => return,
        };
        let Some(src) = source.upgrade() else {
            fetcher.finish_job(job);
            return;
        };
        match job {
            Job::Pack(pack) => {
                if let Err(e) = src.fetch_pack(pack, &fetcher) {
                    crate::warn_limited!("fetching pack {pack} ahead: {e}");
                }
                fetcher.finish(pack);
            }
            Job::Dir {
                dir,
                listing,
                depth,
            } => fetcher.plan(&*src, dir, listing, depth),
        }
    }
}

impl PackFetcher {
    fn finish_job(&self, job: Job) {
        match job {
            Job::Pack(pack) => self.finish(pack),
            Job::Dir { listing, .. } => self.planned(listing, None, Vec::new(), 0),
        }
    }

    /// Plans directory `dir` for listing `listing` (marked busy by [`Queues::take_job`]):
    /// queues its packs, then (with `depth` levels to go and budget left) its subdirectories
    /// not planned lately.
    fn plan(&self, src: &dyn PackSource, dir: Ino, listing: u64, depth: u32) {
        let budget = self.queues.lock().listings.get(&listing).map(|l| l.budget);
        let Some(mut budget) = budget else {
            return;
        };
        // A subdirectory planned with too little of its listing's budget left is planned
        // again when it is listed itself, with a budget of its own.
        let below = depth < self.config.dir_depth;
        if budget.spent() {
            if below {
                self.queues.lock().recent_dirs.remove(&dir);
            }
            self.planned(listing, None, Vec::new(), 0);
            return;
        }
        self.dirs_planned.fetch_add(1, Ordering::Relaxed);
        // Only the listed directory itself reads ahead what is cached: on a warm cache, its
        // subdirectories' data read ahead at once would compete for the disk with the
        // reads of the files used first.
        let mut this = budget;
        if below {
            this.read_ahead = 0;
        }
        let plan = src.plan_dir(dir, &mut this);
        budget.fetch = this.fetch;
        if !below {
            budget.read_ahead = this.read_ahead;
        }
        if below && plan.cut {
            self.queues.lock().recent_dirs.remove(&dir);
        }
        for pack in plan.packs {
            if !self.prefetch(pack) {
                break;
            }
        }
        let subdirs = if depth > 0 && !budget.spent() && !plan.cached_only {
            plan.subdirs
        } else {
            Vec::new()
        };
        self.planned(listing, Some(budget), subdirs, depth.saturating_sub(1));
    }

    /// One of `listing`'s directories is planned (or dropped), leaving `budget` (`None`:
    /// unchanged); its `subdirs` not planned lately are queued, to be planned `depth` levels
    /// deep. The listing is forgotten with its last directory.
    fn planned(&self, listing: u64, budget: Option<DirBudget>, subdirs: Vec<Ino>, depth: u32) {
        let mut guard = self.queues.lock();
        let q = &mut *guard;
        let now = Instant::now();
        let mut queued = 0;
        for sub in subdirs {
            if q.stopped {
                break;
            }
            if q.planned_lately(sub, now) {
                continue;
            }
            if q.dirs.len() >= PACK_QUEUE {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if q.recent_dirs.len() < RECENT_DIRS {
                q.recent_dirs.insert(sub, now);
            }
            q.dirs.push_back(Job::Dir {
                dir: sub,
                listing,
                depth,
            });
            queued += 1;
        }
        let Some(l) = q.listings.get_mut(&listing) else {
            return;
        };
        if let Some(b) = budget {
            l.budget = b;
        }
        l.busy = false;
        l.dirs = l.dirs + queued - 1;
        if l.dirs == 0 {
            q.listings.remove(&listing);
        }
        // The listing's next directory can be planned now: one fetcher for it (the other
        // queued work woke fetchers when it was queued).
        if !q.dirs.is_empty() {
            self.work.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A source whose packs take `delay` to fetch and hold `size` bytes each.
    struct Slow {
        delay: Duration,
        size: u64,
        fetched: Mutex<Vec<u64>>,
        running: AtomicUsize,
        peak: AtomicUsize,
        dir_packs: Vec<u64>,
        /// Directories other than the one of `dir_packs`: their packs and subdirectories
        /// (the third value of a directory says all its files are cached).
        tree: HashMap<Ino, (Vec<u64>, Vec<Ino>, bool)>,
        planned: Mutex<Vec<Ino>>,
    }

    impl PackSource for Slow {
        fn fetch_pack(&self, pack: u64, f: &PackFetcher) -> Result<u64, String> {
            f.begin_fetch(pack, self.size);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.fetched.lock().push(pack);
            f.end_fetch(pack, self.size, Some(self.size));
            Ok(self.size)
        }
        fn plan_dir(&self, dir: Ino, budget: &mut DirBudget) -> DirPlan {
            self.planned.lock().push(dir);
            let (packs, subdirs, cached_only) = match self.tree.get(&dir) {
                Some((p, s, c)) => (p.clone(), s.clone(), *c),
                None => (self.dir_packs.clone(), Vec::new(), false),
            };
            // As the local data cache would: what was fetched is not planned again.
            let fetched = self.fetched.lock().clone();
            let packs: Vec<u64> = packs.into_iter().filter(|p| !fetched.contains(p)).collect();
            let fit = (budget.fetch / self.size) as usize;
            let cut = packs.len() > fit;
            let packs: Vec<u64> = packs.into_iter().take(fit).collect();
            budget.fetch -= packs.len() as u64 * self.size;
            DirPlan {
                packs,
                subdirs,
                cut,
                cached_only,
            }
        }
    }

    fn slow(delay_ms: u64, dir_packs: Vec<u64>) -> Arc<Slow> {
        Arc::new(Slow {
            delay: Duration::from_millis(delay_ms),
            size: 1000,
            fetched: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            dir_packs,
            tree: HashMap::new(),
            planned: Mutex::new(Vec::new()),
        })
    }

    /// A fetcher of `threads` threads with packs `0..packs` queued, each taking `delay_ms`
    /// to fetch.
    fn start_queued(delay_ms: u64, packs: u64, threads: usize) -> (Arc<Slow>, Arc<PackFetcher>) {
        let src = slow(delay_ms, Vec::new());
        let f = start(&src, threads, 0);
        for pack in 0..packs {
            f.prefetch(pack);
        }
        (src, f)
    }

    fn start(src: &Arc<Slow>, threads: usize, budget: u64) -> Arc<PackFetcher> {
        start_deep(src, threads, budget, 0)
    }

    fn start_deep(src: &Arc<Slow>, threads: usize, budget: u64, depth: u32) -> Arc<PackFetcher> {
        let weak = Arc::downgrade(src) as Weak<dyn PackSource>;
        PackFetcher::start(
            PackFetchConfig {
                max_bytes: 1 << 20,
                threads,
                dir_budget_bytes: budget,
                dir_depth: depth,
                nearby_bytes: 0,
                dir_file_max_bytes: 0,
            },
            weak,
        )
        .unwrap()
    }

    /// Waits until nothing is queued, planned or fetched.
    fn settle(f: &PackFetcher) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let idle = {
                let q = f.queues.lock();
                q.dirs.is_empty()
                    && q.background.is_empty()
                    && q.urgent.is_empty()
                    && q.pending.is_empty()
                    && q.listings.is_empty()
            };
            if idle || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A tree: 1 holds 2 and 3; 2 holds 4; 4 holds 5. Each directory has two packs of its
    /// own (10 × the directory's number, plus 0 and 1).
    fn tree() -> HashMap<Ino, (Vec<u64>, Vec<Ino>, bool)> {
        let dir = |d: Ino, subs: Vec<Ino>| (d, (vec![10 * d, 10 * d + 1], subs, false));
        HashMap::from([
            dir(1, vec![2, 3]),
            dir(2, vec![4]),
            dir(3, vec![]),
            dir(4, vec![5]),
            dir(5, vec![]),
        ])
    }

    /// A source of 1 ms fetches whose directories are `tree`.
    fn slow_over(tree: HashMap<Ino, (Vec<u64>, Vec<Ino>, bool)>) -> Arc<Slow> {
        let mut src = slow(1, Vec::new());
        Arc::get_mut(&mut src).unwrap().tree = tree;
        src
    }

    fn fetched_sorted(src: &Slow) -> Vec<u64> {
        let mut got = src.fetched.lock().clone();
        got.sort();
        got
    }

    #[test]
    fn a_listing_plans_its_subdirectories_breadth_first_within_its_depth() {
        let src = slow_over(tree());
        let f = start_deep(&src, 2, 1_000_000, 2);
        f.prefetch_dir(1);
        settle(&f);
        assert_eq!(
            fetched_sorted(&src),
            vec![10, 11, 20, 21, 30, 31, 40, 41],
            "two levels below the listed directory, not three"
        );
        assert_eq!(src.planned.lock()[0], 1);
        assert_eq!(f.stats().dirs_planned, 4);
        // Planned as part of the listing: a listing of its own now plans nothing again.
        f.prefetch_dir(4);
        settle(&f);
        assert_eq!(f.stats().dirs_planned, 4);
        // Beyond the depth, a listing plans as usual.
        f.prefetch_dir(5);
        settle(&f);
        assert_eq!(fetched_sorted(&src).len(), 10);
        f.stop();
    }

    #[test]
    fn subdirectories_share_their_listings_budget_and_get_their_own_when_listed() {
        let src = slow_over(tree());
        // Five packs of 1,000 bytes: directory 1's two, then three of 2's and 3's.
        let f = start_deep(&src, 1, 5_000, 3);
        f.prefetch_dir(1);
        settle(&f);
        let got = fetched_sorted(&src);
        assert_eq!(
            got.len(),
            5,
            "the listing's budget holds five packs: {got:?}"
        );
        assert!(
            got.starts_with(&[10, 11]),
            "the listed directory first: {got:?}"
        );
        // The directories left short were not planned for good: listed now, each gets a
        // budget of its own.
        for dir in [2, 3, 4, 5] {
            f.prefetch_dir(dir);
        }
        settle(&f);
        assert_eq!(
            fetched_sorted(&src),
            vec![10, 11, 20, 21, 30, 31, 40, 41, 50, 51]
        );
        f.stop();
    }

    #[test]
    fn no_subdirectory_is_planned_below_a_cached_directory() {
        let mut t = tree();
        t.get_mut(&2).unwrap().2 = true;
        let src = slow_over(t);
        let f = start_deep(&src, 2, 1_000_000, 3);
        f.prefetch_dir(1);
        settle(&f);
        let mut planned = src.planned.lock().clone();
        planned.sort();
        assert_eq!(planned, vec![1, 2, 3], "nothing below directory 2");
        f.stop();
    }

    #[test]
    fn fetches_each_pack_once_with_bounded_concurrency() {
        let src = slow(30, Vec::new());
        let f = start(&src, 3, 0);
        for pack in 0..12 {
            assert!(f.prefetch(pack));
            assert!(f.prefetch(pack), "queued twice is still queued");
        }
        for pack in 0..12 {
            assert!(f.wait_for(pack, Duration::from_secs(10)));
        }
        let mut got = src.fetched.lock().clone();
        got.sort();
        assert_eq!(got, (0..12).collect::<Vec<_>>(), "each pack exactly once");
        assert!(src.peak.load(Ordering::SeqCst) <= 3);
        let st = f.stats();
        assert!(st.peak_concurrent <= 3 && st.peak_concurrent >= 2);
        assert!(st.peak_bytes_in_flight <= 3 * 1000);
        assert_eq!((st.started, st.bytes), (12, 12_000));
        f.stop();
    }

    #[test]
    fn urgent_packs_jump_the_queue() {
        let (src, f) = start_queued(20, 20, 1);
        assert!(f.fetch_soon(19));
        assert!(f.wait_for(19, Duration::from_secs(10)));
        let order = src.fetched.lock().clone();
        assert!(
            order.len() <= 3,
            "pack 19 came after at most the packs already running: {order:?}"
        );
        f.stop();
    }

    #[test]
    fn readers_wait_only_for_packs_about_to_land() {
        // One fetcher; a pack takes 3 s, a slice GET 800 ms: long enough that a fetcher
        // thread starting a few hundred milliseconds late on a busy machine changes no answer.
        let src = slow(3000, Vec::new());
        let f = start(&src, 1, 0);
        assert!(f.prefetch(1));
        std::thread::sleep(Duration::from_millis(100));
        assert!(f.pending(1));
        assert_eq!(f.worth_waiting(1), None, "no pack GET timed yet");
        assert!(f.wait_for(1, Duration::from_secs(20)));
        f.note_slice_get(Duration::from_millis(800));
        // Pack 2 in flight, pack 3 queued behind it.
        assert!(f.prefetch(2) && f.prefetch(3));
        let began = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            f.worth_waiting(2),
            None,
            "2.9 s to go; a slice GET takes 0.8 s"
        );
        assert_eq!(f.worth_waiting(3), None, "queued behind a whole pack");
        std::thread::sleep(Duration::from_millis(2500).saturating_sub(began.elapsed()));
        let limit = f.worth_waiting(2).expect("about 0.5 s to go");
        assert!(
            limit <= Duration::from_millis(1600) && limit >= Duration::from_millis(800),
            "what is left plus one slice GET: {limit:?}"
        );
        f.stop();
    }

    #[test]
    fn directories_respect_their_budget_and_are_not_planned_twice() {
        let src = slow(1, (100..150).collect());
        let f = start(&src, 2, 10_000);
        f.prefetch_dir(7);
        f.prefetch_dir(7);
        let deadline = Instant::now() + Duration::from_secs(10);
        while src.fetched.lock().len() < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            src.fetched.lock().len(),
            10,
            "10,000 bytes of 1,000-byte packs"
        );
        assert_eq!(f.stats().dirs_planned, 1);
        f.stop();
        // A budget of 0 plans nothing.
        let src = slow(1, (100..150).collect());
        let f = start(&src, 2, 0);
        f.prefetch_dir(7);
        std::thread::sleep(Duration::from_millis(50));
        assert!(src.fetched.lock().is_empty());
        f.stop();
    }

    #[test]
    fn nothing_is_fetched_after_stop() {
        let (src, f) = start_queued(50, 50, 2);
        std::thread::sleep(Duration::from_millis(20));
        f.stop();
        let at_stop = src.fetched.lock().len();
        assert!(at_stop <= 2, "only the fetches in flight finish: {at_stop}");
        assert_eq!(
            src.running.load(Ordering::SeqCst),
            0,
            "stop waited for them"
        );
        assert!(!f.prefetch(99));
        assert!(!f.fetch_soon(98));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(src.fetched.lock().len(), at_stop);
        assert!((0..50).all(|p| !f.pending(p)), "nothing left pending");
    }
}
