//! Rows of SEMANTICS.md's durability tables checked against the failure each names, without
//! FUSE. A test runs calls on an engine, then stops it as one of three failures would, opens
//! the volume again from what is left and reads it back:
//!
//! - a crash of the kernel ([`Failure::KernelCrash`]): the cache directory keeps every write
//!   made to it (the staging and namespace logs are written O_DIRECT), the metadata store only
//!   its last durable commit (redb's commits without fsync are in the page cache);
//! - a power cut ([`Failure::PowerCut`]): the staging device (simulated) keeps what was flushed
//!   and, of the rest, a seeded prefix of the writes, the last one torn; the metadata store its
//!   last durable commit;
//! - the loss of the node's local disk ([`Failure::DiskLost`]): the cache directory is gone
//!   (a new, empty one at the same path); the metadata store keeps its last durable commit
//!   (the metadata file's own loss is outside the promise); the object store keeps everything.
//!
//! Where the failure could keep the data without the call's help, a test checks that it would
//! not have: that the metadata store made nothing durable after the calls it checks, or that
//! the same cuts lose what a call left unflushed.

mod common;

use spoolfs_engine::staging::{CutPlan, FaultConfig, SimDevice, StagingDurability, Unflushed};
use spoolfs_engine::writeback::{StagingSettings, open_staging};
use spoolfs_engine::*;
use spoolfs_metadata::{CrashStore, KvStore, MemStore};
use spoolfs_objects::ObjectStorage;
use spoolfs_testkit::random_bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

const ME: Caller = Caller::ROOT;

/// How the engine acknowledges writes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `spoolfs mount`.
    Writeback,
    /// `spoolfs mount --durable-close`.
    DurableClose,
    /// `spoolfs mount --writeback=false`.
    Standard,
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    KernelCrash,
    PowerCut {
        seed: u64,
    },
    /// A power cut after which the staging data log is gone too (only the namespace log and
    /// the object store can bring anything back).
    PowerCutDataLogLost {
        seed: u64,
    },
    DiskLost,
}

/// A volume whose metadata store records its durable commits and whose staging logs sit on a
/// simulated device, both numbering their events from one clock.
struct Rig {
    dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
    meta: Arc<CrashStore>,
    device: Arc<SimDevice>,
    record: VolumeRecord,
    /// Faults of the namespace log (none unless a test arms them; a recovery keeps them).
    namespace_faults: Arc<FaultConfig>,
    /// `EngineConfig::max_dirty_per_file` of the engines it starts.
    max_dirty_per_file: u64,
}

/// What was there when an engine stopped as a failure would stop it.
struct Cut {
    at: u64,
    /// Copies of the object store's and the cache directory's files at the cut.
    saved: tempfile::TempDir,
}

fn copy_tree(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    std::fs::create_dir_all(to).unwrap();
    for e in entries {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Copies the files of `from` that `keep` accepts (by file name) to `to`.
fn copy_files_where(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_files_where(&e.path(), &dest, keep);
        } else if keep(&e.file_name().to_string_lossy()) {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Removes the staging data log of every volume under cache directory `cache`; there must
/// be one.
fn remove_data_logs(cache: &Path) {
    let mut removed = 0;
    for volume_dir in std::fs::read_dir(cache).unwrap().flatten() {
        let data = volume_dir.path().join("data");
        if data.is_dir() {
            std::fs::remove_dir_all(&data).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "expected one staging data log under {cache:?}");
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let formatted: Arc<dyn KvStore> = Arc::new(MemStore::default());
        let record = common::format_test_volume(
            &formatted,
            "t",
            StorageConfig {
                url: format!("file://{}", dir.path().join("objects").display()),
                ..Default::default()
            },
        );
        let clock = Arc::new(AtomicU64::new(1));
        let meta = Arc::new(CrashStore::new(
            CrashStore::copy_of(formatted.as_ref()).unwrap(),
            clock.clone(),
        ));
        let device = SimDevice::new(dir.path().join("cache"), clock.clone());
        Rig {
            dir,
            clock,
            meta,
            device,
            record,
            namespace_faults: FaultConfig::new(),
            max_dirty_per_file: EngineConfig::default().max_dirty_per_file,
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// An engine in `mode` on `meta`, its staging logs on `device` (real files if `None`).
    /// Uploads wait for a barrier (an upload delay of an hour); the metadata is made durable
    /// in the background every `flush_interval`.
    fn engine_on(
        &self,
        meta: Arc<dyn KvStore>,
        device: Option<Arc<SimDevice>>,
        mode: Mode,
        flush_interval: Duration,
    ) -> Arc<Engine> {
        let settings = StagingSettings {
            writeback: mode != Mode::Standard,
            engine_threads: 1,
            durability: StagingDurability::Flush,
            upload_threads: 1,
            upload_delay: Duration::from_secs(3600),
            device,
            namespace_faults: Some(self.namespace_faults.clone()),
            ..StagingSettings::for_tests(self.cache())
        };
        let (wal, staging) = open_staging(meta, &self.record, &settings).unwrap();
        let storage = ObjectStorage::open(&StorageConfig {
            url: format!("file://{}", self.objects().display()),
            ..Default::default()
        })
        .unwrap();
        let config = EngineConfig {
            staging: Some(staging),
            durable_close: mode == Mode::DurableClose,
            meta_flush_interval: flush_interval,
            compaction: None,
            drain_on_shutdown: Some(Duration::from_secs(60)),
            max_dirty_per_file: self.max_dirty_per_file,
            ..Default::default()
        };
        Engine::start(wal, Arc::new(storage), self.record.clone(), config).unwrap()
    }

    /// The engine the test runs its calls on; nothing is made durable in the background.
    /// A fresh rig and an engine on it in `mode`.
    fn start(mode: Mode) -> (Rig, Arc<Engine>) {
        let rig = Rig::new();
        let e = rig.engine(mode);
        (rig, e)
    }

    fn engine(&self, mode: Mode) -> Arc<Engine> {
        self.engine_on(
            self.meta.clone(),
            Some(self.device.clone()),
            mode,
            Duration::from_secs(3600),
        )
    }

    /// The clock now: every event numbered below it has happened.
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Whether the metadata store made anything durable at or after event `since`.
    fn durable_commit_since(&self, since: u64) -> bool {
        self.meta
            .checkpoint_events()
            .last()
            .is_some_and(|&n| n >= since)
    }

    /// Stops `engine` as a failure now would: notes the cut, saves the object store's and the
    /// cache directory's files as they are, then shuts the engine down (what it does from
    /// here on is after the cut).
    fn cut(&self, engine: Arc<Engine>) -> Cut {
        self.cut_then(engine, || {})
    }

    /// [`Rig::cut`] that runs `after_cut` once the files are saved, before the shutdown.
    fn cut_then(&self, engine: Arc<Engine>, after_cut: impl FnOnce()) -> Cut {
        let at = self.now();
        let saved = tempfile::tempdir().unwrap();
        copy_tree(&self.objects(), &saved.path().join("objects"));
        copy_tree(&self.cache(), &saved.path().join("cache"));
        after_cut();
        let _ = engine.shutdown();
        drop(engine);
        Cut { at, saved }
    }

    /// Puts the volume in the state `failure` at `cut` leaves and opens it again in `mode`.
    fn recover(&self, cut: &Cut, failure: Failure, mode: Mode) -> Arc<Engine> {
        for d in [self.cache(), self.objects()] {
            if d.exists() {
                std::fs::remove_dir_all(&d).unwrap();
            }
        }
        copy_tree(&cut.saved.path().join("objects"), &self.objects());
        let saved_cache = cut.saved.path().join("cache");
        match failure {
            Failure::KernelCrash => copy_tree(&saved_cache, &self.cache()),
            Failure::PowerCut { seed } | Failure::PowerCutDataLogLost { seed } => {
                self.device
                    .materialise(
                        CutPlan {
                            at: cut.at,
                            seed,
                            unflushed: Unflushed::InOrder,
                        },
                        &self.cache(),
                    )
                    .unwrap();
                // The files beside the logs (the directory's identity) were written and synced
                // when the logs were opened.
                copy_files_where(&saved_cache, &self.cache(), &|name| {
                    !name.starts_with("seg-")
                });
                if matches!(failure, Failure::PowerCutDataLogLost { .. }) {
                    remove_data_logs(&self.cache());
                }
            }
            Failure::DiskLost => std::fs::create_dir_all(self.cache()).unwrap(),
        }
        let meta: Arc<dyn KvStore> = Arc::new(MemStore::from_map(self.meta.durable_before(cut.at)));
        self.engine_on(meta, None, mode, Duration::from_secs(3600))
    }
}

fn lookup_path(e: &Engine, path: &str) -> Result<Attr> {
    let mut attr = e.getattr(ROOT_INO)?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = e.lookup(attr.ino, part.as_bytes())?;
    }
    Ok(attr)
}

/// The contents of file `path`, or why it cannot be read.
fn read_path(e: &Engine, path: &str) -> Result<Vec<u8>> {
    let a = lookup_path(e, path)?;
    let fh = e.open(&ME, a.ino, libc::O_RDONLY)?;
    let mut out = Vec::new();
    let read = loop {
        match e.read(a.ino, fh, out.len() as u64, 1 << 20) {
            Ok(chunk) if chunk.is_empty() => break Ok(()),
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(err) => break Err(err),
        }
    };
    e.release(a.ino, fh)?;
    read.map(|_| out)
}

/// Creates `path` holding `data`; closes it if `close`, else leaves it open and returns the
/// inode and the handle.
fn write_file(e: &Engine, path: &str, data: &[u8], close: bool) -> (Ino, u64) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = lookup_path(e, dir).unwrap().ino;
    let (a, fh) = e
        .create(&ME, parent, name.as_bytes(), 0o644, libc::O_RDWR)
        .unwrap();
    e.write(&ME, a.ino, fh, 0, data).unwrap();
    if close {
        e.flush(a.ino, fh).unwrap();
        e.release(a.ino, fh).unwrap();
    }
    (a.ino, fh)
}

/// Six files `{dir}f0` to `{dir}f5` of random bytes (seeds `seed` to `seed + 5`), the first
/// `first` bytes long, each next one `step` bytes longer.
fn six_files(dir: &str, seed: u64, first: usize, step: usize) -> Vec<(String, Vec<u8>)> {
    (0..6)
        .map(|i| {
            (
                format!("{dir}f{i}"),
                random_bytes(seed + i, first + step * i as usize),
            )
        })
        .collect()
}

/// Writes and closes each of `files`.
fn write_files(e: &Engine, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        write_file(e, path, data, true);
    }
}

/// [`assert_reads`] for each of `files`.
fn assert_files_read(e: &Engine, files: &[(String, Vec<u8>)], after: &str) {
    for (path, data) in files {
        assert_reads(e, path, data, after);
    }
}

fn assert_reads(e: &Engine, path: &str, want: &[u8], after: &str) {
    match read_path(e, path) {
        Ok(got) => assert!(
            got == want,
            "{after}: {path} reads {} bytes that differ from the {} written",
            got.len(),
            want.len()
        ),
        Err(err) => panic!("{after}: {path}: {err}"),
    }
}

// ------------------------------------------------------------------ close and namespace calls

/// Writeback `close`: survives a crash of the kernel. The metadata store makes nothing durable
/// after the file's creation: only the staging log (data and the change that links it, O_DIRECT)
/// can bring the file back.
#[test]
fn writeback_close_survives_a_kernel_crash() {
    let (rig, e) = Rig::start(Mode::Writeback);
    let start = rig.now();
    let data = random_bytes(1, 100_000);
    write_file(&e, "f", &data, true);
    assert!(
        !rig.durable_commit_since(start),
        "the metadata store made the close durable: this test would show nothing"
    );
    let cut = rig.cut(e);
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert_reads(&e, "f", &data, "a kernel crash after close");
    e.shutdown().unwrap();
}

/// A large write still open: each time the file's buffered bytes not yet handed to the
/// staging log reach `max_dirty_per_file`, the runs handed over at the previous mark are
/// committed and the rest handed over, so the writer never waits for its own appends nor for
/// the commit's record. A crash
/// of the kernel then leaves the file as it was at the last committed mark: every byte
/// written before it, nothing after (a state the file had), while the live engine read
/// everything.
#[test]
fn a_large_open_write_commits_at_its_marks_and_a_kernel_crash_keeps_the_last() {
    let mut rig = Rig::new();
    let limit = 512 << 10;
    rig.max_dirty_per_file = limit as u64;
    let e = rig.engine(Mode::Writeback);
    let data = random_bytes(7, 5 * limit + limit / 2);
    reserve_ids(&e);
    let (ino, fh) = write_file(&e, "f", &[], false);
    let before = e.namespace_log_stats().unwrap();
    let piece = 64 << 10;
    for at in (0..data.len()).step_by(piece) {
        let end = (at + piece).min(data.len());
        e.write(&ME, ino, fh, at as u64, &data[at..end]).unwrap();
    }
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        (after.device_waits, after.deferred - before.deferred),
        (before.device_waits, 4),
        "the four marks' commits: none waited for the device"
    );
    // Marks at 1, 2, 3, 4 and 5 limits: the runs sealed at the fourth were committed at the
    // fifth, whose own runs (and the half limit after them) are not committed yet. A mark's
    // commit does not wait for its namespace-log record; any later call that waits does
    // (the log is ordered).
    let committed = 4 * limit;
    e.mkdir(&ME, ROOT_INO, b"later", 0o755).unwrap();
    // A read settles the buffered writes: only after the cut.
    let live = e.clone();
    let cut = rig.cut_then(e, || {
        assert_reads(&live, "f", &data, "the writes, before a close")
    });
    drop(live);
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert_reads(
        &e,
        "f",
        &data[..committed],
        "a kernel crash during a large write",
    );
    e.shutdown().unwrap();
}

/// What [`namespace_calls`] did, to check after a failure.
struct NamespaceCalls {
    /// The contents of `g` (written, closed, truncated) and of `d/f2` (written, closed,
    /// renamed from `d/f`).
    g: Vec<u8>,
    f2: Vec<u8>,
    /// The clock when the namespace calls began (after the closes).
    start: u64,
}

const MTIME_SECS: u64 = 1_000_000_000;

/// Writes two files (closed), then, with no close or fsync after them: link, symlink, chmod,
/// chown, utimens, truncate, setxattr, rename, create, mkdir and unlink.
fn namespace_calls(e: &Engine, rig: &Rig) -> NamespaceCalls {
    let d = e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap().ino;
    let f = random_bytes(2, 20_000);
    write_file(e, "d/f", &f, true);
    let g = random_bytes(3, 30_000);
    let (g_ino, _) = write_file(e, "g", &g, true);
    let start = rig.now();
    e.link(&ME, g_ino, d, b"h").unwrap();
    e.symlink(&ME, d, b"s", b"../g").unwrap();
    // One attribute change at a time, each its own call (and its own namespace-log record).
    let set = |ino: Ino, change: fn(&mut SetAttr)| {
        let mut attr = SetAttr::default();
        change(&mut attr);
        e.setattr(&ME, ino, &attr).unwrap();
    };
    set(d, |a| a.mode = Some(0o750));
    set(g_ino, |a| (a.uid, a.gid) = (Some(1234), Some(5678)));
    // Before utimens: a truncation moves mtime.
    set(g_ino, |a| a.size = Some(5000));
    set(g_ino, |a| {
        a.mtime = Some(TimeSet::At(UNIX_EPOCH + Duration::from_secs(MTIME_SECS)))
    });
    e.setxattr(&ME, d, b"user.k", b"v", XattrSet::Any).unwrap();
    e.rename(&ME, d, b"f", d, b"f2", RenameFlags::default())
        .unwrap();
    let (u, fh) = e.create(&ME, d, b"u", 0o600, libc::O_RDWR).unwrap();
    e.release(u.ino, fh).unwrap();
    e.mkdir(&ME, d, b"sub", 0o700).unwrap();
    e.unlink(&ME, d, b"u").unwrap();
    NamespaceCalls {
        g: g[..5000].to_vec(),
        f2: f,
        start,
    }
}

fn check_namespace_calls(e: &Engine, calls: &NamespaceCalls, after: &str) {
    assert_reads(e, "g", &calls.g, after);
    assert_reads(e, "d/h", &calls.g, after);
    assert_reads(e, "d/f2", &calls.f2, after);
    assert!(lookup_path(e, "d/f").is_err(), "{after}: d/f (renamed)");
    assert!(lookup_path(e, "d/u").is_err(), "{after}: d/u (unlinked)");
    let sub = lookup_path(e, "d/sub").unwrap_or_else(|err| panic!("{after}: mkdir d/sub: {err}"));
    assert_eq!(sub.kind, FileKind::Dir, "{after}: d/sub");
    let s = lookup_path(e, "d/s").unwrap_or_else(|err| panic!("{after}: symlink d/s: {err}"));
    assert_eq!(e.readlink(s.ino).unwrap(), b"../g", "{after}: symlink d/s");
    let d = lookup_path(e, "d").unwrap();
    assert_eq!(d.perm, 0o750, "{after}: chmod of d");
    assert_eq!(
        e.getxattr(d.ino, b"user.k").ok().as_deref(),
        Some(&b"v"[..]),
        "{after}: setxattr of d"
    );
    let g = lookup_path(e, "g").unwrap();
    assert_eq!((g.uid, g.gid), (1234, 5678), "{after}: chown of g");
    assert_eq!(
        g.mtime,
        UNIX_EPOCH + Duration::from_secs(MTIME_SECS),
        "{after}: utimens of g"
    );
    assert_eq!(g.nlink, 2, "{after}: link count of g");
}

/// Namespace calls (writeback and standard mode): the change is committed and in the
/// namespace log on the device when the call returns (in writeback mode an attribute change
/// once a later call waited, as the ones after it here do), so it survives a crash of the
/// kernel, which keeps only the metadata store's last durable commit.
#[test]
fn namespace_calls_survive_a_kernel_crash() {
    for mode in [Mode::Writeback, Mode::Standard] {
        let (rig, e) = Rig::start(mode);
        let calls = namespace_calls(&e, &rig);
        assert!(
            !rig.durable_commit_since(calls.start),
            "{mode:?}: the metadata store made the namespace calls durable: this test would \
             show nothing"
        );
        let cut = rig.cut(e);
        let e = rig.recover(&cut, Failure::KernelCrash, mode);
        check_namespace_calls(&e, &calls, &format!("{mode:?}, a kernel crash"));
        e.shutdown().unwrap();
    }
}

/// Standard mode: namespace calls are durable (through the device cache) within one second,
/// like a journaling file system's commit interval. The engine's background checkpoint runs
/// at its default interval; the test waits for a durable commit after the calls (allowing for
/// a loaded machine), then cuts the power.
#[test]
fn standard_mode_namespace_calls_are_durable_within_a_second() {
    let rig = Rig::new();
    let default_interval = EngineConfig::default().meta_flush_interval;
    assert!(default_interval <= Duration::from_secs(1));
    let e = rig.engine_on(
        rig.meta.clone(),
        Some(rig.device.clone()),
        Mode::Standard,
        default_interval,
    );
    let calls = namespace_calls(&e, &rig);
    let done = rig.now();
    let returned = Instant::now();
    // One second is the promise; the rest is room for a machine busy with other tests.
    let limit = Duration::from_secs(5);
    while !rig.durable_commit_since(done) {
        assert!(
            returned.elapsed() < limit,
            "namespace calls in standard mode were not made durable within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "namespace calls made durable {:?} after they returned",
        returned.elapsed()
    );
    let cut = rig.cut(e);
    // The namespace log's unflushed records are lost (seeds that keep a short prefix), and
    // with the data log gone the metadata store alone must hold every change.
    for seed in 0..4 {
        let e = rig.recover(&cut, Failure::PowerCut { seed }, Mode::Standard);
        check_namespace_calls(&e, &calls, &format!("a power cut (seed {seed})"));
        e.shutdown().unwrap();
    }
    let e = rig.recover(&cut, Failure::DiskLost, Mode::Standard);
    check_namespace_calls(&e, &calls, "the loss of the local disk");
    e.shutdown().unwrap();
}

// ------------------------------------------------------------------ standard mode close/fsync

/// Standard mode `close`: the data is in the object store and the metadata pointing at it
/// (with the file's creation and its directory's) is durable; `fsync`: the data, and all
/// metadata. Each survives a power cut right after it that also loses the staging data log
/// (nothing of these files may be only there). "Durable" is through the device cache: the
/// namespace log's record is flushed; the metadata store's own checkpoint may come later.
#[test]
fn standard_mode_close_and_fsync_survive_a_power_cut() {
    for fsync in [false, true] {
        let call = if fsync { "fsync" } else { "close" };
        let (rig, e) = Rig::start(Mode::Standard);
        e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
        let data = random_bytes(4, 200_000);
        let other = if fsync {
            // The data went out with a close; then a change the file's own metadata does not
            // include, and fsync with nothing left to write: it covers all metadata.
            let (ino, _) = write_file(&e, "d/f", &data, true);
            let other = e.mkdir(&ME, ROOT_INO, b"other", 0o700).unwrap().ino;
            let fh = e.open(&ME, ino, libc::O_RDWR).unwrap();
            e.fsync(ino, fh, false).unwrap();
            Some(other)
        } else {
            write_file(&e, "d/f", &data, true);
            None
        };
        let cut = rig.cut(e);
        for seed in 0..CUT_SEEDS {
            let e = rig.recover(&cut, Failure::PowerCutDataLogLost { seed }, Mode::Standard);
            let after = format!(
                "standard mode, a power cut (seed {seed}) right after {call}, without the data log"
            );
            assert_reads(&e, "d/f", &data, &after);
            if let Some(other) = other {
                assert_eq!(
                    lookup_path(&e, "other").map(|a| a.ino).ok(),
                    Some(other),
                    "{after}: a mkdir before the fsync"
                );
            }
            e.shutdown().unwrap();
        }
    }
}

// ------------------------------------------------------------------ power cuts

/// Files the power cut `seed` (of `cut`) left intact, of `files`.
fn intact_after_power_cuts(
    rig: &Rig,
    cut: &Cut,
    mode: Mode,
    files: &[(&str, &[u8])],
    seeds: u64,
) -> Vec<Vec<bool>> {
    (0..seeds)
        .map(|seed| {
            let e = rig.recover(cut, Failure::PowerCut { seed }, mode);
            let intact = files
                .iter()
                .map(|(path, data)| read_path(&e, path).is_ok_and(|got| got == *data))
                .collect();
            e.shutdown().unwrap();
            intact
        })
        .collect()
}

const CUT_SEEDS: u64 = 12;

/// `--durable-close`: close flushes the device cache as fsync does, so a power cut right
/// after it keeps the file, whatever the device kept of unflushed writes. The same close
/// without the option, cut the same ways, loses the file in some of them: the cuts do drop
/// unflushed writes.
#[test]
fn durable_close_survives_a_power_cut() {
    let data = random_bytes(6, 40_000);
    // Of `CUT_SEEDS` power cuts right after a close in `mode`, how many kept the file.
    let kept_after_close = |mode: Mode| {
        let (rig, e) = Rig::start(mode);
        write_file(&e, "f", &data, true);
        let cut = rig.cut(e);
        intact_after_power_cuts(&rig, &cut, mode, &[("f", &data)], CUT_SEEDS)
            .iter()
            .filter(|f| f[0])
            .count()
    };
    let kept = kept_after_close(Mode::DurableClose);
    assert_eq!(
        kept,
        CUT_SEEDS as usize,
        "--durable-close: {} of {CUT_SEEDS} power cuts after close lost the file",
        CUT_SEEDS as usize - kept
    );
    // Without the option some cut must lose the file. A device flush the engine makes in the
    // background (preparing its next segment) can cover the close's record before the cut, so
    // a close is tried on fresh volumes until one is cut before any flush covered it.
    let attempts = 10;
    assert!(
        (0..attempts).any(|_| kept_after_close(Mode::Writeback) < CUT_SEEDS as usize),
        "without --durable-close every power cut after close kept the file, in {attempts} \
         attempts: the cuts lose nothing unflushed, and the check above would show nothing"
    );
}

/// `fsync` and `fdatasync` of a file written and not closed survive a power cut (the
/// power-cut test's workload uses `fsync` only).
#[test]
fn fsync_and_fdatasync_survive_a_power_cut() {
    for datasync in [false, true] {
        let (rig, e) = Rig::start(Mode::Writeback);
        let data = random_bytes(7, 40_000);
        let (ino, fh) = write_file(&e, "f", &data, false);
        e.fsync(ino, fh, datasync).unwrap();
        let cut = rig.cut(e);
        let intact =
            intact_after_power_cuts(&rig, &cut, Mode::Writeback, &[("f", &data)], CUT_SEEDS);
        let lost = intact.iter().filter(|f| !f[0]).count();
        assert_eq!(
            lost,
            0,
            "{} of {CUT_SEEDS} power cuts after {} lost the file",
            lost,
            if datasync { "fdatasync" } else { "fsync" }
        );
    }
}

// ------------------------------------------------------------------ loss of the local disk

/// `close` and `fsync` of files under a directory marked `user.spoolfs.sync_upload` return
/// once the data is in the object store (with everything staged before it) and the metadata
/// is durable: they survive the loss of the local disk.
#[test]
fn sync_upload_close_and_fsync_survive_the_loss_of_the_local_disk() {
    let (rig, e) = Rig::start(Mode::Writeback);
    let ckpt = e.mkdir(&ME, ROOT_INO, b"ckpt", 0o755).unwrap().ino;
    e.setxattr(&ME, ckpt, b"user.spoolfs.sync_upload", b"1", XattrSet::Any)
        .unwrap();
    let before = random_bytes(8, 30_000);
    write_file(&e, "before", &before, true);
    let closed = random_bytes(9, 120_000);
    write_file(&e, "ckpt/closed", &closed, true);
    let synced = random_bytes(10, 60_000);
    let (ino, fh) = write_file(&e, "ckpt/synced", &synced, false);
    e.fsync(ino, fh, false).unwrap();
    let cut = rig.cut(e);
    let e = rig.recover(&cut, Failure::DiskLost, Mode::Writeback);
    let after = "the loss of the local disk";
    assert_reads(&e, "ckpt/closed", &closed, after);
    assert_reads(&e, "ckpt/synced", &synced, after);
    assert_reads(&e, "before", &before, &format!("{after} (staged before)"));
    e.shutdown().unwrap();
}

/// The engine's side of `spoolfs sync`: everything written before it is in the object store
/// and the metadata pointing at it is durable; it survives the loss of the local disk.
#[test]
fn sync_survives_the_loss_of_the_local_disk() {
    let (rig, e) = Rig::start(Mode::Writeback);
    e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
    let files = six_files("d/", 20, 10_000, 30_000);
    write_files(&e, &files);
    // One more still open, written but not closed.
    let open = random_bytes(30, 25_000);
    write_file(&e, "d/open", &open, false);
    assert!(
        e.status().staged_slices > 0,
        "nothing staged before the sync"
    );
    e.sync_to_object_store(Some(Duration::from_secs(60)), &mut |_, _| {})
        .unwrap();
    let cut = rig.cut(e);
    let e = rig.recover(&cut, Failure::DiskLost, Mode::Writeback);
    assert_files_read(&e, &files, "sync, then the loss of the local disk");
    assert_reads(&e, "d/open", &open, "sync, then the loss of the local disk");
    e.shutdown().unwrap();
}

/// The engine's side of `spoolfs umount` (and of SIGTERM), in both modes: shutdown returns
/// once everything staged is in the object store and the metadata is durable; it survives
/// the loss of the local disk.
#[test]
fn unmount_survives_the_loss_of_the_local_disk() {
    for mode in [Mode::Writeback, Mode::Standard] {
        let (rig, e) = Rig::start(mode);
        let files = six_files("", 40, 5_000, 40_000);
        write_files(&e, &files);
        // A change no close covers.
        e.setattr(
            &ME,
            ROOT_INO,
            &SetAttr {
                mode: Some(0o711),
                ..Default::default()
            },
        )
        .unwrap();
        if mode == Mode::Writeback {
            assert!(
                e.status().staged_slices > 0,
                "nothing staged before unmount"
            );
        }
        e.shutdown().unwrap();
        let cut = rig.cut(e);
        let e = rig.recover(&cut, Failure::DiskLost, mode);
        let after = format!("{mode:?}: unmount, then the loss of the local disk");
        assert_files_read(&e, &files, &after);
        assert_eq!(
            e.getattr(ROOT_INO).unwrap().perm,
            0o711,
            "{after}: chmod before unmount"
        );
        e.shutdown().unwrap();
    }
}

/// `write(2)`, in both modes: the bytes are visible to every reader on this node as soon as
/// the call returns, before any close (through another descriptor, and by size).
#[test]
fn a_write_is_visible_to_other_readers_at_once() {
    for mode in [Mode::Writeback, Mode::Standard] {
        let (_rig, e) = Rig::start(mode);
        let data = random_bytes(50, 70_000);
        let (ino, _writer) = write_file(&e, "f", &data, false);
        assert_eq!(
            e.getattr(ino).unwrap().size,
            data.len() as u64,
            "{mode:?}: size"
        );
        assert_reads(&e, "f", &data, &format!("{mode:?}: a write not yet closed"));
        e.shutdown().unwrap();
    }
}

// ------------------------------------------------------------------ create: no wait of its own

/// Whether some data-log segment under `cache` holds `needle` (a slice's bytes on the device).
fn data_log_holds(cache: &Path, needle: &[u8]) -> bool {
    common::files_under(cache)
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "data"))
        .any(|p| {
            std::fs::read(p).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
}

/// Writes one file, so that the engine has its batches of inode and slice ids (reserving one
/// is a transaction that waits, once per 256 inodes or 1,024 slices).
fn reserve_ids(e: &Engine) {
    write_file(e, "warm-up", b"ids", true);
}

/// Writeback `create` returns before its namespace-log record is on the device (the
/// namespace log's writes are held back here): a kernel crash before the file's close may
/// lose the file, a crash after the close returned never does. The close waits for the
/// create's record.
#[test]
fn a_create_survives_a_kernel_crash_once_its_file_is_closed() {
    let delay = Duration::from_secs(3);
    // Before the close: lost.
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    rig.namespace_faults.delay_writes(delay);
    let t0 = Instant::now();
    let (a, _fh) = e
        .create(&ME, ROOT_INO, b"early", 0o644, libc::O_RDWR)
        .unwrap();
    assert!(
        t0.elapsed() < delay / 2,
        "create took {:?}: it waited for the namespace log",
        t0.elapsed()
    );
    assert_eq!(e.getattr(a.ino).unwrap().ino, a.ino, "visible at once");
    // The shutdown's writes are not held back.
    let cut = rig.cut_then(e, || rig.namespace_faults.delay_writes(Duration::ZERO));
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert_eq!(
        lookup_path(&e, "early")
            .map(|a| a.ino)
            .err()
            .map(|err| err.errno()),
        Some(libc::ENOENT),
        "a create whose record never reached the device survived the crash: the test would \
         show nothing"
    );
    e.shutdown().unwrap();

    // After the close: kept, the data and an empty file alike.
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let start = rig.now();
    rig.namespace_faults
        .delay_writes(Duration::from_millis(300));
    let data = random_bytes(60, 3000);
    let t0 = Instant::now();
    write_file(&e, "late", &data, true);
    let (empty, fh) = e
        .create(&ME, ROOT_INO, b"empty", 0o644, libc::O_WRONLY)
        .unwrap();
    e.flush(empty.ino, fh).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "the closes returned before the creates' records were written"
    );
    assert!(
        !rig.durable_commit_since(start),
        "the metadata store made the creates durable: this test would show nothing"
    );
    let cut = rig.cut(e);
    rig.namespace_faults.delay_writes(Duration::ZERO);
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert_reads(&e, "late", &data, "a kernel crash after close");
    assert_reads(&e, "empty", b"", "a kernel crash after close");
    e.shutdown().unwrap();
}

/// A crash while a close waits for its file's create record: the close's own record (the
/// slice and the change that links it) is on the device, the create's is not. Replay stops
/// at the missing create (the close was never acknowledged) and drops the staged slice
/// cleanly: no file, nothing staged, no panic.
#[test]
fn replay_drops_a_close_whose_create_never_reached_the_device() {
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let staged = |e: &Engine| {
        let status = e.status();
        (status.staged_slices, status.staged_bytes)
    };
    let staged_before = staged(&e);
    rig.namespace_faults.delay_writes(Duration::from_secs(5));
    let data = random_bytes(61, 8192);
    let writer = {
        let (e, data) = (e.clone(), data.clone());
        std::thread::spawn(move || write_file(&e, "torn", &data, true))
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    while !data_log_holds(&rig.cache(), &data[..4096]) {
        assert!(
            Instant::now() < deadline,
            "the close's slice never reached the data log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !writer.is_finished(),
        "the close returned before the create's record was written"
    );
    let cut = rig.cut_then(e, || rig.namespace_faults.delay_writes(Duration::ZERO));
    writer.join().unwrap();
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert!(
        lookup_path(&e, "torn").is_err(),
        "a close never acknowledged was replayed"
    );
    assert_eq!(
        staged(&e),
        staged_before,
        "the dropped close left staged data"
    );
    assert_reads(&e, "warm-up", b"ids", "the crash");
    e.shutdown().unwrap();
}

/// Writeback `chmod`, `chown` and `utimens` return before their namespace-log record is on
/// the device, as a create does: a kernel crash before any later call waited may lose the
/// change, a crash after a later close returned never does. A file copied as `cp -p`, `tar x`
/// and pip do (create, write, close, then times and mode) waits for the device once.
#[test]
fn an_attribute_change_survives_a_kernel_crash_once_a_later_call_waits() {
    let mode_and_times = || SetAttr {
        mode: Some(0o600),
        mtime: Some(TimeSet::At(UNIX_EPOCH + Duration::from_secs(MTIME_SECS))),
        ..Default::default()
    };
    let delay = Duration::from_secs(3);
    // Nothing waited after it: lost.
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let (f, _) = write_file(&e, "f", b"f", true);
    rig.namespace_faults.delay_writes(delay);
    let t0 = Instant::now();
    e.setattr(&ME, f, &mode_and_times()).unwrap();
    assert!(
        t0.elapsed() < delay / 2,
        "chmod took {:?}: it waited for the namespace log",
        t0.elapsed()
    );
    assert_eq!(e.getattr(f).unwrap().perm, 0o600, "visible at once");
    let cut = rig.cut_then(e, || rig.namespace_faults.delay_writes(Duration::ZERO));
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    assert_eq!(
        lookup_path(&e, "f").unwrap().perm,
        0o644,
        "a chmod whose record never reached the device survived the crash: the test would \
         show nothing"
    );
    e.shutdown().unwrap();

    // A later close returned: kept.
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let (g, _) = write_file(&e, "g", b"g", true);
    rig.namespace_faults
        .delay_writes(Duration::from_millis(300));
    let start = rig.now();
    e.setattr(&ME, g, &mode_and_times()).unwrap();
    write_file(&e, "next", b"next", true);
    assert!(
        !rig.durable_commit_since(start),
        "the metadata store made the chmod durable: this test would show nothing"
    );
    let cut = rig.cut(e);
    rig.namespace_faults.delay_writes(Duration::ZERO);
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    let got = lookup_path(&e, "g").unwrap();
    assert_eq!(got.perm, 0o600, "chmod before a later close");
    assert_eq!(got.mtime, UNIX_EPOCH + Duration::from_secs(MTIME_SECS));
    assert_reads(&e, "next", b"next", "a kernel crash after close");

    // Copies: one device wait per file (once the recovered mount has its id batches).
    reserve_ids(&e);
    let before = e.namespace_log_stats().unwrap();
    let files = 10u64;
    for i in 0..files {
        let (ino, _) = write_file(&e, &format!("copy{i}"), b"copied", true);
        e.setattr(&ME, ino, &mode_and_times()).unwrap();
    }
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        after.device_waits - before.device_waits,
        files,
        "device waits for {files} copies (create, write, close, utimens and chmod)"
    );
    // `tar x` and `cp -p`: times, owner and mode set through the open descriptor, data
    // still buffered, then the close: one wait, and the close commits the data under them.
    e.shutdown().unwrap();
    let (rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let before = e.namespace_log_stats().unwrap();
    let mut extracted = Vec::new();
    for i in 0..files {
        let name = format!("tar{i}");
        let data = random_bytes(70 + i, 5000 + i as usize);
        let (a, fh) = e
            .create(&ME, ROOT_INO, name.as_bytes(), 0o600, libc::O_WRONLY)
            .unwrap();
        e.write(&ME, a.ino, fh, 0, &data).unwrap();
        let through_fd = |change: SetAttr| {
            let got = e
                .setattr(
                    &ME,
                    a.ino,
                    &SetAttr {
                        fh: Some(fh),
                        ..change
                    },
                )
                .unwrap();
            assert_eq!(got.size, data.len() as u64, "the buffered size shows");
        };
        through_fd(SetAttr {
            mtime: Some(TimeSet::At(UNIX_EPOCH + Duration::from_secs(MTIME_SECS))),
            ..Default::default()
        });
        through_fd(SetAttr {
            uid: Some(4321),
            gid: Some(8765),
            ..Default::default()
        });
        through_fd(SetAttr {
            mode: Some(0o640),
            ..Default::default()
        });
        e.flush(a.ino, fh).unwrap();
        e.release(a.ino, fh).unwrap();
        extracted.push((name, data));
    }
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        after.device_waits - before.device_waits,
        files,
        "device waits for {files} extracted files (create, write, utimens, chown, chmod, close)"
    );
    for (name, data) in &extracted {
        assert_reads(&e, name, data, "the close");
    }
    let cut = rig.cut(e);
    let e = rig.recover(&cut, Failure::KernelCrash, Mode::Writeback);
    for (name, data) in &extracted {
        assert_reads(&e, name, data, "a kernel crash after tar x");
        let got = lookup_path(&e, name).unwrap();
        assert_eq!(
            (got.perm, got.uid, got.gid),
            (0o640, 4321, 8765),
            "{name}: mode and owner set before the close"
        );
        assert_eq!(
            got.mtime,
            UNIX_EPOCH + Duration::from_secs(MTIME_SECS),
            "{name}: the mtime set before the close, not the buffered write's"
        );
    }
    let got = lookup_path(&e, "tar0").unwrap();
    // A size change still waits.
    let before = e.namespace_log_stats().unwrap();
    let truncate = SetAttr {
        size: Some(1),
        ..Default::default()
    };
    e.setattr(&ME, got.ino, &truncate).unwrap();
    assert_eq!(
        e.namespace_log_stats().unwrap().device_waits - before.device_waits,
        1,
        "a truncate waits"
    );
    e.shutdown().unwrap();
}

/// A new small file (create, write, close) waits for the staging device once: the create
/// returns without waiting, the close waits for its own record and the create's together.
#[test]
fn a_small_file_costs_one_device_wait() {
    let (_rig, e) = Rig::start(Mode::Writeback);
    reserve_ids(&e);
    let before = e.namespace_log_stats().expect("a namespace log");
    let files = 20u64;
    for i in 0..files {
        write_file(&e, &format!("s{i}"), format!("{i}\n").as_bytes(), true);
    }
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        after.device_waits - before.device_waits,
        files,
        "device waits for {files} small files"
    );
    assert_eq!(
        after.deferred - before.deferred,
        files,
        "creates that did not wait"
    );
    // A create followed by a change of the file (as `touch` makes) and a close: the change
    // waits, for the create's record too, and the close has nothing left to wait for.
    let before = e.namespace_log_stats().unwrap();
    let (a, fh) = e
        .create(&ME, ROOT_INO, b"touched", 0o644, libc::O_WRONLY)
        .unwrap();
    let now = SetAttr {
        atime: Some(TimeSet::Now),
        mtime: Some(TimeSet::Now),
        ..Default::default()
    };
    e.setattr(&ME, a.ino, &now).unwrap();
    e.flush(a.ino, fh).unwrap();
    e.release(a.ino, fh).unwrap();
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        after.device_waits - before.device_waits,
        1,
        "device waits for create, utimens, close"
    );
    e.shutdown().unwrap();

    // Standard mode keeps its create waiting (its close waits for the object store anyway).
    let (_rig, e) = Rig::start(Mode::Standard);
    let before = e.namespace_log_stats().unwrap();
    write_file(&e, "s", b"1\n", true);
    let after = e.namespace_log_stats().unwrap();
    assert_eq!(
        after.deferred, before.deferred,
        "standard mode deferred a create"
    );
    e.shutdown().unwrap();
}
