//! A simulated staging device for power-cut tests.
//!
//! [`SimDevice`] sits behind both halves of the staging log's I/O seam: the engine threads'
//! [`IoBackend`] (appends, reads, flushes) and the [`SegmentFiles`] operations (create,
//! preallocate, zero-fill, rename, remove, file and directory sync). Every operation is carried
//! out on the real files (except flushes, which only the simulation needs), so the log runs
//! as usual, and is also recorded with a number taken
//! from a clock the test shares with its other recorders (the metadata store's checkpoints, the
//! object store's deletes). Afterwards [`SimDevice::materialise`] writes, into another
//! directory, what a power cut just before any event number would have left on the device:
//!
//! - **File data**: what a flush covered survives: a file sync (`fsync`, `fdatasync`) is a
//!   device cache flush, covering every write completed before it on any file of the device
//!   ([`FlushScope::Device`], what ext4 and xfs do and what the staging log relies on), or
//!   only the file's own writes ([`FlushScope::File`], what POSIX promises); a write made
//!   with `RWF_DSYNC` survives. Of every other write, a seeded choice: lost, kept, or torn
//!   (each 512-byte sector of it kept or lost on its own), for each write on its own
//!   ([`Unflushed::AnySubset`]) or up to a point in the order they were made
//!   ([`Unflushed::InOrder`]). Later writes land over earlier ones.
//! - **Unwritten space**: a sector that was never written *and then synced* reads as zeros
//!   after the cut, whatever was written to it since: a preallocated (`fallocate`) or sparse
//!   range converts to written only in file-system metadata that a sync makes durable. A
//!   zero-filled and synced range is written space: an unsynced write there may survive.
//! - **Sizes**: a size change (preallocate, set length) survives if a sync of the file
//!   followed it, else by a seeded choice.
//! - **Names**: a create, rename or remove survives if a sync of its directory followed it;
//!   otherwise each one independently by a seeded choice (a rename whose source did not
//!   survive does nothing). File sync does not make a file's name durable. The staging log
//!   relies only on this: a segment file is created as `.tmp`, written, synced, renamed into
//!   place, and the directory synced, before anything is appended to it; a stray `.tmp` is
//!   removed at open.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::io::{IoBackend, RealFiles, SegmentFiles, WriteOp};

/// The unit a power cut tears writes at.
pub const SECTOR: u64 = 512;

type FileId = u32;

enum Event {
    /// A new, empty file named `path`.
    Create {
        file: FileId,
        path: PathBuf,
    },
    /// A file that existed before recording started, with its contents then (durable).
    Adopt {
        file: FileId,
        path: PathBuf,
        data: Vec<u8>,
    },
    /// The size grows to at least `len` (unwritten space).
    Preallocate {
        file: FileId,
        len: u64,
    },
    SetLen {
        file: FileId,
        len: u64,
    },
    Write {
        file: FileId,
        offset: u64,
        data: Arc<[u8]>,
        /// `RWF_DSYNC`: durable when it completed.
        durable: bool,
    },
    Zero {
        file: FileId,
        offset: u64,
        len: u64,
    },
    Sync {
        file: FileId,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
}

#[derive(Default)]
struct Recorder {
    events: Vec<(u64, Event)>,
    /// Open descriptors of recorded files.
    fds: HashMap<RawFd, FileId>,
    /// The names as they are now (for `open` of an existing segment).
    names: HashMap<PathBuf, FileId>,
    next_file: FileId,
}

/// Where and with what seed to cut the power: every event numbered below `at` happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPlan {
    pub at: u64,
    pub seed: u64,
    /// What the device keeps of the writes no flush covered.
    pub unflushed: Unflushed,
}

/// What a power cut keeps of the writes no flush covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unflushed {
    /// Any subset, each write lost, kept or torn on its own (a volatile cache that writes
    /// back in any order).
    #[default]
    AnySubset,
    /// The writes up to a seeded point in the order they were made, the one at that point
    /// torn, none after it (a device that writes back in order).
    InOrder,
}

/// What a cut kept of what was not durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    pub files: usize,
    pub writes_lost: usize,
    pub writes_kept: usize,
    pub writes_torn: usize,
    pub names_lost: usize,
    pub names_kept: usize,
}

/// What a file sync pushes through the device's volatile cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushScope {
    /// Every write completed before it, to any file (a device cache flush, which is what
    /// `fdatasync` issues on ext4 and xfs): the staging log relies on this, since its data and
    /// namespace logs share the device and one flush covers both. File-system metadata
    /// (written extents, sizes, names) is still made durable per file and per directory.
    #[default]
    Device,
    /// Only the synced file's own writes (what POSIX promises).
    File,
}

/// A recording, simulated device under one directory. Give it to a staging log through
/// [`crate::StagingTuning::device`]; several logs may share one.
pub struct SimDevice {
    root: PathBuf,
    clock: Arc<AtomicU64>,
    flush_scope: FlushScope,
    rec: Mutex<Recorder>,
    /// The boot of the simulated machine: each device is a boot of its own (a power cut
    /// restarts the machine), unless told otherwise with [`SimDevice::set_boot_id`].
    boot_id: Mutex<String>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimDevice({:?})", self.root)
    }
}

impl SimDevice {
    /// A device for files under `root`, numbering its events from `clock` (shared with the
    /// test's other recorders so that all events have one order).
    pub fn new(root: impl Into<PathBuf>, clock: Arc<AtomicU64>) -> Arc<SimDevice> {
        SimDevice::with_scope(root, clock, FlushScope::Device)
    }

    /// [`SimDevice::new`] whose flushes cover `scope`.
    pub fn with_scope(
        root: impl Into<PathBuf>,
        clock: Arc<AtomicU64>,
        scope: FlushScope,
    ) -> Arc<SimDevice> {
        static BOOTS: AtomicU64 = AtomicU64::new(1);
        let boot = BOOTS.fetch_add(1, Ordering::Relaxed);
        Arc::new(SimDevice {
            root: root.into(),
            clock,
            flush_scope: scope,
            rec: Mutex::new(Recorder::default()),
            boot_id: Mutex::new(format!("simulated-boot-{boot}")),
        })
    }

    /// The simulated machine's boot id (what the log compares with the one it recorded).
    pub fn boot_id(&self) -> String {
        self.boot_id.lock().clone()
    }

    /// Makes the device run in boot `id`: the id of the device a log was written on says
    /// the machine did not restart in between (a crash of the process, not a power cut).
    pub fn set_boot_id(&self, id: &str) {
        *self.boot_id.lock() = id.to_string();
    }

    /// Events recorded so far.
    pub fn events(&self) -> usize {
        self.rec.lock().events.len()
    }

    /// One line per event numbered in `[from, to)`, for failure reports.
    pub fn describe(&self, from: u64, to: u64) -> Vec<String> {
        let rec = self.rec.lock();
        let path_of = |file: FileId| {
            rec.names
                .iter()
                .find(|(_, f)| **f == file)
                .map(|(p, _)| self.rel(p).display().to_string())
                .unwrap_or_else(|| format!("file {file}"))
        };
        rec.events
            .iter()
            .filter(|(n, _)| (from..to).contains(n))
            .map(|(n, e)| {
                let what = match e {
                    Event::Create { path, .. } => format!("create {}", path.display()),
                    Event::Adopt { path, .. } => format!("adopt {}", path.display()),
                    Event::Preallocate { file, len } => {
                        format!("preallocate {} {len}", path_of(*file))
                    }
                    Event::SetLen { file, len } => format!("set length {} {len}", path_of(*file)),
                    Event::Write {
                        file,
                        offset,
                        data,
                        durable,
                    } => format!(
                        "write {} [{offset}, +{}){}",
                        path_of(*file),
                        data.len(),
                        if *durable { " dsync" } else { "" }
                    ),
                    Event::Zero { file, offset, len } => {
                        format!("zero {} [{offset}, +{len})", path_of(*file))
                    }
                    Event::Sync { file } => format!("sync {}", path_of(*file)),
                    Event::Rename { from, to } => {
                        format!("rename {} {}", from.display(), to.display())
                    }
                    Event::Remove { path } => format!("remove {}", path.display()),
                    Event::SyncDir { dir } => format!("sync directory {}", dir.display()),
                };
                format!("{n}: {what}")
            })
            .collect()
    }

    fn record(&self, rec: &mut Recorder, event: Event) {
        let at = self.clock.fetch_add(1, Ordering::SeqCst);
        rec.events.push((at, event));
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    fn file_of(&self, fd: RawFd) -> Option<FileId> {
        self.rec.lock().fds.get(&fd).copied()
    }

    /// Records `event(file)` for the file open as `fd` (nothing for a descriptor of a file
    /// not created here).
    fn note(&self, fd: RawFd, event: impl FnOnce(FileId) -> Event) {
        let mut rec = self.rec.lock();
        if let Some(&file) = rec.fds.get(&fd) {
            self.record(&mut rec, event(file));
        }
    }

    fn note_write(&self, fd: RawFd, offset: u64, data: &[u8], durable: bool) {
        self.note(fd, |file| Event::Write {
            file,
            offset,
            data: Arc::from(data),
            durable,
        });
    }

    fn note_sync(&self, fd: RawFd) {
        self.note(fd, |file| Event::Sync { file });
    }

    /// Writes under `dest` (mirroring the layout under the root) the files a power cut just
    /// before event `plan.at` leaves, choosing among undurable writes and names by
    /// `plan.seed`. Returns what the cut kept.
    pub fn materialise(&self, plan: CutPlan, dest: &Path) -> io::Result<CutReport> {
        let (files, report) = self.power_cut(plan);
        for (path, data) in files {
            let to = dest.join(&path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&to, &data)?;
        }
        Ok(report)
    }

    /// The files (relative path, contents) a power cut just before event `plan.at` leaves.
    pub fn power_cut(&self, plan: CutPlan) -> (BTreeMap<PathBuf, Vec<u8>>, CutReport) {
        let rec = self.rec.lock();
        let mut rng = Mix(plan.seed ^ 0x5eed_0fc0_ffee);
        let mut files: HashMap<FileId, SimFile> = HashMap::new();
        let mut durable_names: BTreeMap<PathBuf, FileId> = BTreeMap::new();
        let mut pending_names: Vec<NameOp> = Vec::new();
        for (at, event) in &rec.events {
            if *at >= plan.at {
                continue;
            }
            match event {
                Event::Create { file, path } => {
                    files.insert(*file, SimFile::default());
                    pending_names.push(NameOp::Link(path.clone(), *file));
                }
                Event::Adopt { file, path, data } => {
                    let mut f = SimFile::default();
                    f.media.clone_from(data);
                    f.size = data.len() as u64;
                    f.durable_size = f.size;
                    f.written = vec![true; data.len().div_ceil(SECTOR as usize)];
                    files.insert(*file, f);
                    durable_names.insert(path.clone(), *file);
                }
                Event::Preallocate { file, len } => {
                    if let Some(f) = files.get_mut(file) {
                        f.size = f.size.max(*len);
                    }
                }
                Event::SetLen { file, len } => {
                    if let Some(f) = files.get_mut(file) {
                        f.size = *len;
                    }
                }
                Event::Write {
                    file,
                    offset,
                    data,
                    durable,
                } => {
                    if let Some(f) = files.get_mut(file) {
                        f.write(Pending {
                            at: *at,
                            offset: *offset,
                            data: Some(data.clone()),
                            len: data.len() as u64,
                            durable: *durable,
                        });
                    }
                }
                Event::Zero { file, offset, len } => {
                    if let Some(f) = files.get_mut(file) {
                        f.write(Pending {
                            at: *at,
                            offset: *offset,
                            data: None,
                            len: *len,
                            durable: false,
                        });
                    }
                }
                Event::Sync { file } => {
                    if self.flush_scope == FlushScope::Device {
                        files.values_mut().for_each(SimFile::flush_cache);
                    }
                    if let Some(f) = files.get_mut(file) {
                        f.sync();
                    }
                }
                Event::Rename { from, to } => {
                    pending_names.push(NameOp::Rename(from.clone(), to.clone()))
                }
                Event::Remove { path } => pending_names.push(NameOp::Unlink(path.clone())),
                Event::SyncDir { dir } => {
                    let (now, later): (Vec<_>, Vec<_>) = pending_names
                        .drain(..)
                        .partition(|op| op.parent() == dir.as_path());
                    for op in now {
                        op.apply(&mut durable_names);
                    }
                    pending_names = later;
                }
            }
        }
        let mut report = CutReport::default();
        let mut names = durable_names;
        for op in pending_names {
            if rng.coin() {
                op.apply(&mut names);
                report.names_kept += 1;
            } else {
                report.names_lost += 1;
            }
        }
        let mut out = BTreeMap::new();
        // Each file once, even if a lost rename left it under two names.
        let mut contents: HashMap<FileId, Vec<u8>> = HashMap::new();
        let mut ids: Vec<FileId> = names.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        // In order: every unflushed write before a seeded one survives, that one is torn.
        let torn_at = match plan.unflushed {
            Unflushed::AnySubset => None,
            Unflushed::InOrder => {
                let mut ats: Vec<u64> = ids
                    .iter()
                    .filter_map(|id| files.get(id))
                    .flat_map(|f| f.pending.iter().filter(|w| !w.durable).map(|w| w.at))
                    .collect();
                ats.sort_unstable();
                let k = rng.below(ats.len() as u64 + 1) as usize;
                Some(ats.get(k).copied().unwrap_or(u64::MAX))
            }
        };
        for id in ids {
            if let Some(f) = files.get(&id) {
                contents.insert(id, f.after_cut(&mut rng, &mut report, torn_at));
            }
        }
        for (path, id) in names {
            if let Some(data) = contents.get(&id) {
                out.insert(path, data.clone());
                report.files += 1;
            }
        }
        (out, report)
    }
}

enum NameOp {
    Link(PathBuf, FileId),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

impl NameOp {
    fn parent(&self) -> &Path {
        let p = match self {
            NameOp::Link(p, _) | NameOp::Rename(_, p) | NameOp::Unlink(p) => p,
        };
        p.parent().unwrap_or(Path::new(""))
    }

    fn apply(self, names: &mut BTreeMap<PathBuf, FileId>) {
        match self {
            NameOp::Link(p, f) => {
                names.insert(p, f);
            }
            NameOp::Rename(from, to) => {
                if let Some(f) = names.remove(&from) {
                    names.insert(to, f);
                }
            }
            NameOp::Unlink(p) => {
                names.remove(&p);
            }
        }
    }
}

struct Pending {
    /// The event that made it.
    at: u64,
    offset: u64,
    /// `None`: zeros.
    data: Option<Arc<[u8]>>,
    len: u64,
    durable: bool,
}

impl Pending {
    /// Copies bytes `[from, to)` of the write into `out` (at the write's offsets).
    fn copy_into(&self, out: &mut [u8], from: u64, to: u64) {
        let end = ((self.offset + to) as usize).min(out.len());
        let start = (self.offset + from) as usize;
        if start >= end {
            return;
        }
        let dst = &mut out[start..end];
        match &self.data {
            Some(d) => dst.copy_from_slice(&d[from as usize..from as usize + dst.len()]),
            None => dst.fill(0),
        }
    }
}

#[derive(Default)]
struct SimFile {
    /// Bytes on stable media: what flushes covered (and `RWF_DSYNC` writes).
    media: Vec<u8>,
    durable_size: u64,
    size: u64,
    /// Sectors written since the file's own last sync (their extents convert at its next).
    touched: Vec<bool>,
    /// Written space: sectors written and then synced through this file. Others read as
    /// zeros after a cut, whatever reached the media.
    written: Vec<bool>,
    /// Writes not yet on the media, in order (durable ones too, to keep the order).
    pending: Vec<Pending>,
}

/// Grows `v` to at least `len` elements of zero (a zeroed allocation, not a fill loop).
fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize)
where
    Vec<T>: Clone,
{
    if v.len() < len {
        let mut bigger = vec![T::default(); len.max(v.len() * 2)];
        bigger.truncate(len);
        bigger[..v.len()].copy_from_slice(v);
        *v = bigger;
    }
}

fn mark(bits: &mut Vec<bool>, offset: u64, len: u64) {
    let (s0, s1) = (
        (offset / SECTOR) as usize,
        (offset + len).div_ceil(SECTOR) as usize,
    );
    grow(bits, s1);
    bits[s0..s1].fill(true);
}

impl SimFile {
    fn put(buf: &mut Vec<u8>, w: &Pending) {
        grow(buf, (w.offset + w.len) as usize);
        w.copy_into(buf, 0, w.len);
    }

    fn write(&mut self, w: Pending) {
        self.size = self.size.max(w.offset + w.len);
        mark(&mut self.touched, w.offset, w.len);
        if w.durable {
            Self::put(&mut self.media, &w);
            mark(&mut self.written, w.offset, w.len);
        }
        self.pending.push(w);
    }

    /// A device cache flush: every completed write reaches the media.
    fn flush_cache(&mut self) {
        for w in std::mem::take(&mut self.pending) {
            Self::put(&mut self.media, &w);
        }
    }

    /// `fsync`/`fdatasync` of this file: its data, its size and its written extents.
    fn sync(&mut self) {
        self.flush_cache();
        grow(&mut self.written, self.touched.len());
        for (w, t) in self.written.iter_mut().zip(&self.touched) {
            *w |= *t;
        }
        self.touched.clear();
        self.durable_size = self.size;
    }

    /// The contents after a cut; with `torn_at`, writes before that event survive, the one
    /// made by it is torn and later ones are lost, else each is chosen on its own.
    fn after_cut(&self, rng: &mut Mix, report: &mut CutReport, torn_at: Option<u64>) -> Vec<u8> {
        let size = if self.size == self.durable_size || rng.coin() {
            self.size
        } else {
            self.durable_size
        };
        let mut data = self.media.clone();
        grow(&mut data, size as usize);
        data.truncate(size as usize);
        for w in &self.pending {
            let choice = match torn_at {
                _ if w.durable => 1,
                None => rng.below(3),
                Some(t) if w.at < t => 1,
                Some(t) if w.at == t => 2,
                Some(_) => 0,
            };
            match choice {
                0 => report.writes_lost += 1,
                1 => report.writes_kept += 1,
                _ => report.writes_torn += 1,
            }
            if choice == 0 {
                continue;
            }
            if choice == 1 {
                w.copy_into(&mut data, 0, w.len);
                continue;
            }
            let first = w.offset / SECTOR;
            let last = (w.offset + w.len).div_ceil(SECTOR);
            for sector in first..last {
                if rng.coin() {
                    continue;
                }
                let from = (sector * SECTOR).max(w.offset) - w.offset;
                let to = ((sector + 1) * SECTOR).min(w.offset + w.len) - w.offset;
                w.copy_into(&mut data, from, to);
            }
        }
        // Space whose conversion to written extents was never synced reads as zeros.
        let sectors = data.len().div_ceil(SECTOR as usize);
        let mut sector = 0;
        while sector < sectors {
            if self.written.get(sector).copied().unwrap_or(false) {
                sector += 1;
                continue;
            }
            // A run of unwritten sectors at once.
            let run_end = (sector..sectors)
                .find(|&s| self.written.get(s).copied().unwrap_or(false))
                .unwrap_or(sectors);
            let end = (run_end * SECTOR as usize).min(data.len());
            data[sector * SECTOR as usize..end].fill(0);
            sector = run_end;
        }
        data
    }
}

/// splitmix64: the cut's choices, reproducible from its seed.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl SegmentFiles for SimDevice {
    fn create(&self, path: &Path) -> io::Result<File> {
        let f = RealFiles.create(path)?;
        let mut rec = self.rec.lock();
        let file = rec.next_file;
        rec.next_file += 1;
        rec.fds.insert(f.as_raw_fd(), file);
        rec.names.insert(path.to_path_buf(), file);
        let path = self.rel(path);
        self.record(&mut rec, Event::Create { file, path });
        Ok(f)
    }

    fn preallocate(&self, file: &File, len: u64) -> io::Result<()> {
        RealFiles.preallocate(file, len)?;
        self.note(file.as_raw_fd(), |file| Event::Preallocate { file, len });
        Ok(())
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        RealFiles.set_len(file, len)?;
        self.note(file.as_raw_fd(), |file| Event::SetLen { file, len });
        Ok(())
    }

    fn write_at(&self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        RealFiles.write_at(file, offset, data)?;
        self.note_write(file.as_raw_fd(), offset, data, false);
        Ok(())
    }

    fn zero_fill(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        RealFiles.zero_fill(file, offset, len)?;
        self.note(file.as_raw_fd(), |file| Event::Zero { file, offset, len });
        Ok(())
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        // The simulation decides what is durable: the real file needs no flush.
        self.note_sync(file.as_raw_fd());
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFiles.rename(from, to)?;
        let mut rec = self.rec.lock();
        if let Some(file) = rec.names.remove(from) {
            rec.names.insert(to.to_path_buf(), file);
        }
        let (from, to) = (self.rel(from), self.rel(to));
        self.record(&mut rec, Event::Rename { from, to });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFiles.remove(path)?;
        let mut rec = self.rec.lock();
        rec.names.remove(path);
        let path = self.rel(path);
        self.record(&mut rec, Event::Remove { path });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut rec = self.rec.lock();
        let dir = self.rel(dir);
        self.record(&mut rec, Event::SyncDir { dir });
        Ok(())
    }

    fn boot_id(&self) -> Option<String> {
        Some(SimDevice::boot_id(self))
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        let f = RealFiles.open(path)?;
        let mut rec = self.rec.lock();
        let file = match rec.names.get(path) {
            Some(&file) => file,
            None => {
                // Made before recording started: what it holds now is durable.
                let data = std::fs::read(path)?;
                let file = rec.next_file;
                rec.next_file += 1;
                rec.names.insert(path.to_path_buf(), file);
                let path = self.rel(path);
                self.record(&mut rec, Event::Adopt { file, path, data });
                file
            }
        };
        rec.fds.insert(f.as_raw_fd(), file);
        Ok(f)
    }
}

/// An engine thread's backend on a [`SimDevice`]: the real backend does the I/O, the device
/// records each completed write and flush.
pub(crate) struct SimBackend {
    pub inner: Box<dyn IoBackend>,
    pub device: Arc<SimDevice>,
}

impl IoBackend for SimBackend {
    fn write_batch(&mut self, ops: &[WriteOp]) -> Vec<io::Result<()>> {
        let results = self.inner.write_batch(ops);
        for (op, r) in ops.iter().zip(&results) {
            if r.is_ok() {
                // SAFETY: the caller keeps op.len bytes at op.ptr alive for this call.
                let data = unsafe { std::slice::from_raw_parts(op.ptr, op.len) };
                self.device.note_write(op.fd, op.offset, data, op.dsync);
            }
        }
        results
    }

    fn read(&mut self, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(fd, offset, buf)
    }

    fn datasync(&mut self, fds: &[RawFd]) -> io::Result<()> {
        // Recorded, not carried out: the simulation decides what is durable (and a test
        // runs thousands of cuts, each of which would wait for real flushes).
        for &fd in fds {
            if self.device.file_of(fd).is_some() {
                self.device.note_sync(fd);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (tempfile::TempDir, Arc<SimDevice>) {
        let dir = tempfile::tempdir().unwrap();
        let d = SimDevice::new(dir.path(), Arc::new(AtomicU64::new(0)));
        (dir, d)
    }

    /// The files a power cut just before event `at` leaves on `d`, any subset of the
    /// unflushed writes kept as `seed` chooses.
    fn cut_files(d: &SimDevice, at: u64, seed: u64) -> BTreeMap<PathBuf, Vec<u8>> {
        d.power_cut(CutPlan {
            at,
            seed,
            unflushed: Unflushed::AnySubset,
        })
        .0
    }

    /// Every cut of every seed keeps what was synced, and never shows a byte nobody wrote.
    #[test]
    fn synced_data_survives_and_unsynced_data_is_lost_kept_or_torn() {
        let (dir, d) = device();
        let path = dir.path().join("f");
        let f = d.create(&path).unwrap();
        d.zero_fill(&f, 0, 8 * SECTOR).unwrap();
        d.sync(&f).unwrap();
        d.sync_dir(dir.path()).unwrap();
        d.write_at(&f, 0, &[1u8; 1024]).unwrap();
        d.sync(&f).unwrap();
        let synced = d.events() as u64;
        d.write_at(&f, 1024, &[2u8; 2048]).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let files = cut_files(&d, u64::MAX, seed);
            let data = &files[Path::new("f")];
            assert_eq!(&data[..1024], &[1u8; 1024]);
            assert!(data[1024..3072].iter().all(|&b| b == 0 || b == 2));
            // Torn at sector boundaries only.
            for s in data[1024..3072].chunks(SECTOR as usize) {
                assert!(s.iter().all(|&b| b == s[0]));
            }
            seen.insert(data[1024..3072].to_vec());
        }
        assert!(seen.len() > 2, "lost, kept and torn outcomes all occur");
        // A cut before the sync of the first write keeps only zeros there.
        let files = cut_files(&d, synced - 1, 1);
        let data = &files[Path::new("f")];
        assert!(data.iter().all(|&b| b == 0 || b == 1));
    }

    #[test]
    fn preallocated_space_reads_zeros_until_written_and_synced() {
        let (dir, d) = device();
        let path = dir.path().join("p");
        let f = d.create(&path).unwrap();
        d.preallocate(&f, 16 * SECTOR).unwrap();
        d.write_at(&f, 0, &[7u8; 512]).unwrap();
        d.sync(&f).unwrap();
        d.sync_dir(dir.path()).unwrap();
        d.write_at(&f, 4096, &[9u8; 1024]).unwrap();
        for seed in 0..32 {
            let files = cut_files(&d, u64::MAX, seed);
            let data = &files[Path::new("p")];
            assert_eq!(data.len(), 16 * SECTOR as usize);
            assert_eq!(&data[..512], &[7u8; 512]);
            assert!(data[512..].iter().all(|&b| b == 0), "seed {seed}");
        }
    }

    #[test]
    fn a_device_flush_covers_other_files_a_file_flush_does_not() {
        for scope in [FlushScope::Device, FlushScope::File] {
            let dir = tempfile::tempdir().unwrap();
            let d = SimDevice::with_scope(dir.path(), Arc::new(AtomicU64::new(0)), scope);
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            let (fa, fb) = (d.create(&a).unwrap(), d.create(&b).unwrap());
            for f in [&fa, &fb] {
                d.zero_fill(f, 0, 4 * SECTOR).unwrap();
                d.sync(f).unwrap();
            }
            d.sync_dir(dir.path()).unwrap();
            d.write_at(&fa, 0, &[5u8; 512]).unwrap();
            d.sync(&fb).unwrap();
            let survived = (0..32)
                .filter(|&seed| {
                    let files = cut_files(&d, u64::MAX, seed);
                    files[Path::new("a")][0] == 5
                })
                .count();
            match scope {
                FlushScope::Device => assert_eq!(survived, 32),
                FlushScope::File => assert!(survived < 32),
            }
        }
    }

    #[test]
    fn names_need_a_directory_sync() {
        let (dir, d) = device();
        let tmp = dir.path().join("a.tmp");
        let f = d.create(&tmp).unwrap();
        d.write_at(&f, 0, b"x").unwrap();
        d.sync(&f).unwrap();
        d.rename(&tmp, &dir.path().join("a")).unwrap();
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let files = cut_files(&d, u64::MAX, seed);
            outcomes.insert(files.keys().cloned().collect::<Vec<_>>());
        }
        assert!(outcomes.len() >= 2, "{outcomes:?}");
        d.sync_dir(dir.path()).unwrap();
        for seed in 0..16 {
            let files = cut_files(&d, u64::MAX, seed);
            assert_eq!(files.keys().collect::<Vec<_>>(), vec![Path::new("a")]);
            assert_eq!(files[Path::new("a")], b"x");
        }
    }
}
