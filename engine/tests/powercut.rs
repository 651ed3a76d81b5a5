//! Power-cut test of a writeback volume, without FUSE.
//!
//! One run per workload seed: a seeded sequence of file system operations (create, mkdir,
//! writes and overwrites, truncate, rename, unlink, chown, utimens, hard and symbolic links,
//! fsync of files and directories, uploads and dead-object collection in between) runs on an engine whose staging and namespace logs
//! sit on a [`SimDevice`], whose metadata store is a [`CrashStore`] and whose object store
//! records every PUT and DELETE. All three number their events from one clock, and every
//! operation notes the clock before and after it. Then, for many cut points `N`, the volume
//! is rebuilt as a power cut just before event `N` would have left it (the device's synced
//! data plus a seeded, sector-torn subset of the rest; the metadata store's last checkpoint
//! before `N`; the objects as they were at `N`), an engine is started on it (replay), and
//! the namespace and every file are read back and checked against the reference states the
//! workload went through:
//!
//! - the recovered volume is the state after some operation `p` (namespace changes are a
//!   prefix), at or after the last acknowledged `fsync` of a file or directory, and at most
//!   the operation in flight at the cut;
//! - a file fsynced after its last change reads back byte-exact;
//! - any other file has the size of state `p` and each byte is one that was written at that
//!   offset at some time, or zero (an unsynced record lost in the cut);
//! - replay never panics and the engine starts.
//!
//! The device keeps a seeded prefix of the unflushed writes, in the order they were made,
//! the last one torn (`SPOOLFS_POWERCUT_UNFLUSHED=any`, and `powercut_any_order`: any subset,
//! each write lost, kept or torn on its own). Each workload is cut before every one of its
//! events. A failure names the workload seed,
//! the cut point and the variant (the seed of the device's choices); `SPOOLFS_POWERCUT_SEED=S
//! SPOOLFS_POWERCUT_CUT=N SPOOLFS_POWERCUT_VARIANT=V` rerun exactly that cut.
//! `SPOOLFS_POWERCUT_POINTS=K` runs a campaign of at least `K` cuts (two variants per event,
//! seeds from `SPOOLFS_POWERCUT_SEED`, default 1, upward); the `#[ignore]`d
//! `powercut_campaign` runs 100,000.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use spoolfs_engine::staging::{CutPlan, SimDevice, StagingDurability, Unflushed};
use spoolfs_engine::writeback::{StagingSettings, open_staging};
use spoolfs_engine::*;
use spoolfs_metadata::{CrashStore, KvStore, MemStore};
use spoolfs_objects::ObjectStorage;
use spoolfs_testkit::Rng;

#[path = "common/mod.rs"]
mod common;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const ME: Caller = Caller::ROOT;
/// Workload seeds of the CI run (each cut before every one of its events).
const CI_SEEDS: u64 = 10;
/// Workload seeds of the CI run on a device that writes back in any order.
const CI_SEEDS_ANY_ORDER: u64 = 5;
/// Operations per workload.
const OPS: usize = 70;

// ------------------------------------------------------------------ the recording object store

#[derive(Debug, Clone)]
enum ObjEvent {
    Put(String, Bytes),
    Delete(String),
}

/// An in-memory object store that numbers every completed PUT and DELETE from the clock.
#[derive(Debug)]
struct RecordedStore {
    inner: Arc<InMemory>,
    clock: Arc<AtomicU64>,
    events: Arc<Mutex<Vec<(u64, ObjEvent)>>>,
}

impl std::fmt::Display for RecordedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recorded({})", self.inner)
    }
}

impl RecordedStore {
    fn note(events: &Mutex<Vec<(u64, ObjEvent)>>, clock: &AtomicU64, e: ObjEvent) {
        let mut ev = events.lock().unwrap();
        let at = clock.fetch_add(1, Ordering::SeqCst);
        ev.push((at, e));
    }
}

#[async_trait::async_trait]
impl ObjectStore for RecordedStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let bytes: Bytes = payload.clone().into();
        let r = self.inner.put_opts(location, payload, opts).await?;
        Self::note(
            &self.events,
            &self.clock,
            ObjEvent::Put(location.to_string(), bytes),
        );
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // The engine PUTs whole objects; a multipart upload would escape the recording.
        panic!("unexpected multipart upload of {location} ({opts:?})")
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        let events = self.events.clone();
        let clock = self.clock.clone();
        self.inner
            .delete_stream(locations)
            .map(move |r| {
                if let Ok(p) = &r {
                    RecordedStore::note(&events, &clock, ObjEvent::Delete(p.to_string()));
                }
                r
            })
            .boxed()
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The objects as they were just before event `at`.
fn objects_before(events: &[(u64, ObjEvent)], at: u64) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    for (n, e) in events {
        if *n >= at {
            continue;
        }
        match e {
            ObjEvent::Put(k, b) => {
                out.insert(k.clone(), b.clone());
            }
            ObjEvent::Delete(k) => {
                out.remove(k);
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the reference

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    /// A file (several names may be hard links to one).
    File(usize),
    /// A symbolic link and its target.
    Symlink(String),
}

/// One file's contents in a reference state, and whether an fsync covers them.
#[derive(Clone)]
struct FileState {
    data: Arc<Vec<u8>>,
    fsynced: bool,
    /// Owner and group (`chown`).
    owner: (u32, u32),
    /// The modification time `utimensat` set, until a write or truncate changes it.
    mtime: Option<SystemTime>,
}

impl FileState {
    fn new() -> FileState {
        FileState {
            data: Arc::new(Vec::new()),
            fsynced: false,
            owner: (0, 0),
            mtime: None,
        }
    }
}

/// The file system after one operation.
#[derive(Clone, Default)]
struct State {
    names: BTreeMap<String, Node>,
    files: HashMap<usize, FileState>,
}

/// One write: its offset and bytes.
type WriteAt = (u64, Arc<Vec<u8>>);

/// Everything written to file `id`, at which offset (for the "never written" check).
#[derive(Default)]
struct Written {
    by_file: HashMap<usize, Vec<WriteAt>>,
    /// The file of each inode number the engine gave out.
    files_by_ino: HashMap<Ino, usize>,
}

impl Written {
    fn could_be(&self, id: usize, at: u64, byte: u8) -> bool {
        byte == 0
            || self.by_file.get(&id).is_some_and(|ws| {
                ws.iter().any(|(off, d)| {
                    at >= *off && at < off + d.len() as u64 && d[(at - off) as usize] == byte
                })
            })
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(String),
    Mkdir(String),
    Write {
        path: String,
        offset: u64,
        len: usize,
        fsync: bool,
    },
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    FsyncFile(String),
    FsyncDir(String),
    Upload,
    CollectGarbage,
    /// The background checkpoint: metadata durable, covered log records freed (segments
    /// recycled).
    Checkpoint,
    /// Metadata checkpoints fail (a full or failing metadata disk) until turned off again.
    FailCheckpoints(bool),
    Chown(String, u32, u32),
    /// `utimensat` of the modification time, seconds since the epoch.
    Utimens(String, u64),
    /// A hard link: existing file, new name.
    Link(String, String),
    /// A symbolic link: its name, its target.
    Symlink(String, String),
}

/// One operation as it ran: the clock before and after, and the state after it.
struct Step {
    op: Op,
    start: u64,
    end: u64,
    /// The operation returned an error (its effect is unknown).
    failed: bool,
    /// A barrier for namespace changes (fsync of anything).
    barrier: bool,
    after: State,
}

/// A file's last name is gone: it is gone too (a hard link keeps it).
fn forget_if_unlinked(s: &mut State, id: usize) {
    if !s.names.values().any(|n| *n == Node::File(id)) {
        s.files.remove(&id);
    }
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

// ------------------------------------------------------------------ the workload

struct Recording {
    clock: Arc<AtomicU64>,
    device: Arc<SimDevice>,
    meta: Arc<CrashStore>,
    objects: Arc<Mutex<Vec<(u64, ObjEvent)>>>,
    record: VolumeRecord,
    steps: Vec<Step>,
    initial: State,
    written: Written,
    /// Files of the cache directory outside the staging logs (the directory's identity),
    /// written and synced at mount, before the first cut point: copied to every cut as they are.
    other_files: Vec<(std::path::PathBuf, Vec<u8>)>,
    /// Keeps the recording's directories.
    _dir: tempfile::TempDir,
}

fn settings(cache: &std::path::Path, device: Option<Arc<SimDevice>>) -> StagingSettings {
    StagingSettings {
        engine_threads: 1,
        durability: StagingDurability::Flush,
        segment_size: 256 << 10,
        max_staging_bytes: 2 << 20,
        // Uploads only when the workload asks (sync_to_object_store), so that a seed always
        // produces the same events.
        upload_delay: Duration::from_secs(3600),
        pack_size: 64 << 20,
        device,
        ..StagingSettings::for_tests(cache)
    }
}

fn engine_config(staging: spoolfs_engine::writeback::StagingOptions) -> EngineConfig {
    EngineConfig {
        staging: Some(staging),
        // No background checkpoint or collection: the workload runs them.
        meta_flush_interval: Duration::from_secs(3600),
        compaction: None,
        drain_on_shutdown: None,
        readahead_bytes: 0,
        block_cache_bytes: 1 << 20,
        ..Default::default()
    }
}

fn lookup_path(e: &Engine, path: &str) -> Option<Ino> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = e.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    Some(ino)
}

/// Picks the next operation from what the state holds.
fn pick(rng: &mut Rng, s: &State, faults: bool) -> Op {
    let dirs: Vec<String> = std::iter::once(String::new())
        .chain(
            s.names
                .iter()
                .filter(|(_, n)| **n == Node::Dir)
                .map(|(p, _)| p.clone()),
        )
        .collect();
    let files: Vec<String> = s
        .names
        .iter()
        .filter(|(_, n)| matches!(n, Node::File(_)))
        .map(|(p, _)| p.clone())
        .collect();
    let join = |d: &str, n: String| if d.is_empty() { n } else { format!("{d}/{n}") };
    let fresh = |rng: &mut Rng, prefix: &str| -> Option<String> {
        for _ in 0..8 {
            let d = &dirs[rng.below(dirs.len() as u64) as usize];
            let p = join(d, format!("{prefix}{}", rng.below(6)));
            if !s.names.contains_key(&p) {
                return Some(p);
            }
        }
        None
    };
    loop {
        let any_file = |rng: &mut Rng| files[rng.below(files.len() as u64) as usize].clone();
        let roll = rng.below(if faults { 116 } else { 110 });
        let op = match roll {
            0..=11 => fresh(rng, "f").map(Op::Create),
            12..=15 if dirs.len() < 4 => fresh(rng, "d").map(Op::Mkdir),
            16..=47 if !files.is_empty() => {
                let path = any_file(rng);
                let len = match rng.below(10) {
                    0 => 300 << 10,
                    1..=3 => 1 + rng.below(64 << 10) as usize,
                    _ => 1 + rng.below(8 << 10) as usize,
                };
                let offset = match rng.below(3) {
                    0 => 0,
                    1 => rng.below(128 << 10),
                    _ => {
                        let Node::File(id) = s.names[&path] else {
                            unreachable!()
                        };
                        s.files[&id].data.len() as u64
                    }
                };
                Some(Op::Write {
                    path,
                    offset,
                    len,
                    fsync: rng.below(3) == 0,
                })
            }
            48..=53 if !files.is_empty() => {
                let path = any_file(rng);
                Some(Op::Truncate(path, rng.below(96 << 10)))
            }
            54..=61 if !files.is_empty() => {
                let from = any_file(rng);
                // Onto a fresh name or over another file (not another link to the same one:
                // that rename does nothing).
                let to = if rng.below(2) == 0 {
                    fresh(rng, "f")
                } else {
                    Some(any_file(rng)).filter(|t| s.names[t] != s.names[&from])
                };
                to.map(|to| Op::Rename(from, to))
            }
            62..=68 if !files.is_empty() => Some(Op::Unlink(any_file(rng))),
            69..=78 if !files.is_empty() => Some(Op::FsyncFile(any_file(rng))),
            79..=84 => Some(Op::FsyncDir(
                dirs[rng.below(dirs.len() as u64) as usize].clone(),
            )),
            85..=90 => Some(Op::Upload),
            91..=94 => Some(Op::CollectGarbage),
            95..=99 => Some(Op::Checkpoint),
            100..=101 if !files.is_empty() => Some(Op::Chown(
                any_file(rng),
                rng.below(3) as u32 * 1000,
                rng.below(3) as u32 * 1000 + 1,
            )),
            102..=103 if !files.is_empty() => Some(Op::Utimens(
                any_file(rng),
                1_000_000_000 + rng.below(1_000_000),
            )),
            104..=106 if !files.is_empty() => {
                let from = any_file(rng);
                fresh(rng, "f").map(|to| Op::Link(from, to))
            }
            107..=109 => fresh(rng, "s").map(|p| Op::Symlink(p, format!("t{}", rng.below(1000)))),
            110..=115 => Some(Op::FailCheckpoints(rng.below(3) == 0)),
            _ => None,
        };
        if let Some(op) = op {
            return op;
        }
    }
}

/// Runs `op` on the engine and the reference. Returns whether it succeeded and whether it is
/// a barrier (an fsync).
fn apply(
    e: &Engine,
    rng: &mut Rng,
    op: &Op,
    s: &mut State,
    next_id: &mut usize,
    written: &mut Written,
) -> (Result<()>, bool) {
    let parent = |p: &str| lookup_path(e, parent_and_name(p).0).expect("parent exists");
    let file_id = |s: &State, p: &str| match s.names[p] {
        Node::File(id) => id,
        _ => unreachable!(),
    };
    match op {
        Op::Create(p) => {
            let id = *next_id;
            *next_id += 1;
            let r = e
                .create(
                    &ME,
                    parent(p),
                    parent_and_name(p).1.as_bytes(),
                    0o644,
                    libc::O_RDWR,
                )
                .and_then(|(a, fh)| {
                    written.files_by_ino.insert(a.ino, id);
                    e.release(a.ino, fh)
                });
            s.names.insert(p.clone(), Node::File(id));
            s.files.insert(id, FileState::new());
            (r, false)
        }
        Op::Mkdir(p) => {
            let r = e
                .mkdir(&ME, parent(p), parent_and_name(p).1.as_bytes(), 0o755)
                .map(|_| ());
            s.names.insert(p.clone(), Node::Dir);
            (r, false)
        }
        Op::Write {
            path,
            offset,
            len,
            fsync,
        } => {
            let id = file_id(s, path);
            let data = Arc::new(rng.bytes(*len));
            written
                .by_file
                .entry(id)
                .or_default()
                .push((*offset, data.clone()));
            let ino = lookup_path(e, path).expect("file exists");
            let r = (|| {
                let fh = e.open(&ME, ino, libc::O_RDWR)?;
                let w = e.write(&ME, ino, fh, *offset, &data).map(|_| ());
                let synced = w.and_then(|_| {
                    if *fsync {
                        e.fsync(ino, fh, false)
                    } else {
                        Ok(())
                    }
                });
                let flushed = synced.and_then(|_| e.flush(ino, fh));
                let released = e.release(ino, fh);
                flushed.and(released)
            })();
            let f = s.files.get_mut(&id).unwrap();
            let content = Arc::make_mut(&mut f.data);
            let end = *offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*offset as usize..end].copy_from_slice(&data);
            f.fsynced = *fsync;
            f.mtime = None;
            (r, *fsync)
        }
        Op::Truncate(p, size) => {
            let id = file_id(s, p);
            let ino = lookup_path(e, p).expect("file exists");
            let r = e
                .setattr(
                    &ME,
                    ino,
                    &SetAttr {
                        size: Some(*size),
                        ..Default::default()
                    },
                )
                .map(|_| ());
            let f = s.files.get_mut(&id).unwrap();
            Arc::make_mut(&mut f.data).resize(*size as usize, 0);
            f.fsynced = false;
            f.mtime = None;
            (r, false)
        }
        Op::Rename(from, to) => {
            let r = e.rename(
                &ME,
                parent(from),
                parent_and_name(from).1.as_bytes(),
                parent(to),
                parent_and_name(to).1.as_bytes(),
                RenameFlags::default(),
            );
            let node = s.names.remove(from).unwrap();
            if let Some(Node::File(old)) = s.names.insert(to.clone(), node) {
                forget_if_unlinked(s, old);
            }
            (r, false)
        }
        Op::Unlink(p) => {
            let r = e.unlink(&ME, parent(p), parent_and_name(p).1.as_bytes());
            if let Some(Node::File(id)) = s.names.remove(p) {
                forget_if_unlinked(s, id);
            }
            (r, false)
        }
        Op::FsyncFile(p) => {
            let id = file_id(s, p);
            let ino = lookup_path(e, p).expect("file exists");
            let r = (|| {
                let fh = e.open(&ME, ino, libc::O_RDWR)?;
                let synced = e.fsync(ino, fh, false);
                let released = e.release(ino, fh);
                synced.and(released)
            })();
            s.files.get_mut(&id).unwrap().fsynced = true;
            (r, true)
        }
        Op::FsyncDir(d) => {
            let ino = lookup_path(e, d).expect("directory exists");
            (e.fsyncdir(ino), true)
        }
        Op::Upload => {
            // Everything in the object store and the metadata durable: every file's data
            // survives a power cut from here on.
            let r = e.sync_to_object_store(Some(Duration::from_secs(30)), &mut |_, _| {});
            for f in s.files.values_mut() {
                f.fsynced = true;
            }
            (r, true)
        }
        Op::CollectGarbage => (e.collect_garbage(usize::MAX).map(|_| ()), false),
        Op::Chown(p, uid, gid) => {
            let id = file_id(s, p);
            let ino = lookup_path(e, p).expect("file exists");
            let set = SetAttr {
                uid: Some(*uid),
                gid: Some(*gid),
                ..Default::default()
            };
            let r = e.setattr(&ME, ino, &set).map(|_| ());
            s.files.get_mut(&id).unwrap().owner = (*uid, *gid);
            (r, false)
        }
        Op::Utimens(p, secs) => {
            let id = file_id(s, p);
            let ino = lookup_path(e, p).expect("file exists");
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(*secs);
            let set = SetAttr {
                mtime: Some(TimeSet::At(at)),
                ..Default::default()
            };
            let r = e.setattr(&ME, ino, &set).map(|_| ());
            s.files.get_mut(&id).unwrap().mtime = Some(at);
            (r, false)
        }
        Op::Link(from, to) => {
            let ino = lookup_path(e, from).expect("file exists");
            let r = e
                .link(&ME, ino, parent(to), parent_and_name(to).1.as_bytes())
                .map(|_| ());
            let node = s.names[from].clone();
            s.names.insert(to.clone(), node);
            (r, false)
        }
        Op::Symlink(p, target) => {
            let r = e
                .symlink(
                    &ME,
                    parent(p),
                    parent_and_name(p).1.as_bytes(),
                    target.as_bytes(),
                )
                .map(|_| ());
            s.names.insert(p.clone(), Node::Symlink(target.clone()));
            (r, false)
        }
        // Durable metadata is no fsync of any file's data: not a barrier here.
        Op::Checkpoint => (e.checkpoint(), false),
        Op::FailCheckpoints(_) => unreachable!("applied by the workload to its store"),
    }
}

/// How a workload seed's devices misbehave besides the power cut.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Faults {
    None,
    /// Failing and torn writes in both logs (their fallbacks: direct upload, checkpoint).
    Logs,
    /// Failing namespace-log appends, and metadata checkpoints that fail at times.
    Checkpoints,
}

fn faults_of(seed: u64) -> Faults {
    match seed % 4 {
        2 => Faults::Logs,
        3 => Faults::Checkpoints,
        _ => Faults::None,
    }
}

fn record(seed: u64) -> Recording {
    record_ops(seed, None)
}

/// Records workload `seed`, or the operations `fixed` (in order) if given.
/// A directory in memory (tmpfs) where there is one that takes O_DIRECT, else a temporary
/// directory: every cut writes and rereads the logs, which a disk makes slow.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if let Ok(dir) = tempfile::tempdir_in(shm) {
        let probe = dir.path().join("probe");
        let direct = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        if direct {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn record_ops(seed: u64, fixed: Option<&[Op]>) -> Recording {
    let dir = scratch_dir();
    let clock = Arc::new(AtomicU64::new(1));
    let formatted: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let record = common::format_test_volume(
        &formatted,
        "t",
        StorageConfig {
            url: "memory://".into(),
            ..Default::default()
        },
    );
    let meta = Arc::new(CrashStore::new(
        CrashStore::copy_of(formatted.as_ref()).unwrap(),
        clock.clone(),
    ));
    let events = Arc::new(Mutex::new(Vec::new()));
    let store = RecordedStore {
        inner: Arc::new(InMemory::new()),
        clock: clock.clone(),
        events: events.clone(),
    };
    let storage = Arc::new(ObjectStorage::from_store(Arc::new(store), "recorded").unwrap());
    let cache = dir.path().join("cache");
    let device = SimDevice::new(&cache, clock.clone());
    let faults = faults_of(seed);
    let plan = |spec: &str| Some(spoolfs_engine::staging::FaultConfig::from_spec(spec).unwrap());
    let staging_settings = match faults {
        Faults::None => settings(&cache, Some(device.clone())),
        Faults::Logs => StagingSettings {
            faults: plan("fail_every=5,tear_every=7"),
            namespace_faults: plan("fail_every=6,tear_every=9"),
            ..settings(&cache, Some(device.clone()))
        },
        Faults::Checkpoints => StagingSettings {
            namespace_faults: plan("fail_every=4"),
            ..settings(&cache, Some(device.clone()))
        },
    };
    let (wal, staging) =
        open_staging(meta.clone() as Arc<dyn KvStore>, &record, &staging_settings).unwrap();
    let engine = Engine::start(wal, storage, record.clone(), engine_config(staging)).unwrap();

    let mut rng = Rng::new(seed);
    let mut state = State::default();
    let initial = state.clone();
    let mut steps = Vec::new();
    let mut written = Written::default();
    let mut next_id = 0;
    let count = fixed.map_or(OPS, |f| f.len());
    for i in 0..count {
        let op = match fixed {
            Some(f) => f[i].clone(),
            None => pick(&mut rng, &state, faults == Faults::Checkpoints),
        };
        let start = clock.load(Ordering::SeqCst);
        let (r, barrier) = match op {
            Op::FailCheckpoints(on) => {
                meta.fail_checkpoints(on);
                (Ok(()), false)
            }
            _ => apply(
                &engine,
                &mut rng,
                &op,
                &mut state,
                &mut next_id,
                &mut written,
            ),
        };
        let end = clock.load(Ordering::SeqCst);
        let failed = r.is_err();

        steps.push(Step {
            op,
            start,
            end,
            failed,
            barrier,
            after: state.clone(),
        });
        if failed {
            // The reference no longer knows what the volume holds.
            break;
        }
    }
    // Joins the engine's threads: a campaign starts thousands of engines in one process.
    let _ = engine.shutdown();
    drop(engine);
    let other_files = common::files_under(&cache)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.strip_prefix(&cache).unwrap().to_path_buf(), data)
        })
        .collect();
    Recording {
        other_files,
        clock,
        device,
        meta,
        objects: events,
        record,
        steps,
        initial,
        written,
        _dir: dir,
    }
}

// ------------------------------------------------------------------ one cut

/// What one name of a recovered volume is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File {
        data: Vec<u8>,
        owner: (u32, u32),
        mtime: SystemTime,
    },
    Symlink(Vec<u8>),
}

impl Entry {
    /// Bytes of a file, for reports.
    fn len(&self) -> Option<usize> {
        match self {
            Entry::File { data, .. } => Some(data.len()),
            _ => None,
        }
    }
}

/// A volume's contents: path → what is there.
type Tree = BTreeMap<String, Entry>;

/// What the recovered volume holds, and the inode number of every path.
fn read_back(e: &Engine) -> (Tree, BTreeMap<String, Ino>) {
    let mut out = BTreeMap::new();
    let mut inos = BTreeMap::new();
    let mut todo = vec![(String::new(), ROOT_INO)];
    while let Some((path, ino)) = todo.pop() {
        let fh = e.opendir(ino).expect("opendir");
        let entries = e.readdir(ino, fh, 0).expect("readdir");
        e.releasedir(ino, fh).unwrap();
        for d in entries {
            if d.name == b"." || d.name == b".." {
                continue;
            }
            let name = String::from_utf8(d.name.clone()).unwrap();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            inos.insert(p.clone(), d.ino);
            if d.kind == FileKind::Dir {
                out.insert(p.clone(), Entry::Dir);
                todo.push((p, d.ino));
            } else if d.kind == FileKind::Symlink {
                let target = e
                    .readlink(d.ino)
                    .unwrap_or_else(|err| panic!("readlink of {p} failed: {err}"));
                out.insert(p, Entry::Symlink(target));
            } else {
                let fh = e.open(&ME, d.ino, libc::O_RDONLY).expect("open");
                let attr = e.getattr(d.ino).expect("getattr");
                let size = attr.size;
                let mut data = Vec::with_capacity(size as usize);
                while (data.len() as u64) < size {
                    let chunk = e
                        .read(
                            d.ino,
                            fh,
                            data.len() as u64,
                            (size - data.len() as u64).min(1 << 20) as u32,
                        )
                        .unwrap_or_else(|err| panic!("read of {p} failed: {err}"));
                    if chunk.is_empty() {
                        break;
                    }
                    data.extend_from_slice(&chunk);
                }
                e.release(d.ino, fh).unwrap();
                out.insert(
                    p,
                    Entry::File {
                        data,
                        owner: (attr.uid, attr.gid),
                        mtime: attr.mtime,
                    },
                );
            }
        }
    }
    (out, inos)
}

/// Why the recovered volume matches no state it could be in.
fn mismatch(got: &Tree, s: &State, written: &Written) -> Option<String> {
    let names: Vec<&String> = got.keys().collect();
    let want: Vec<&String> = s.names.keys().collect();
    if names != want {
        return Some(format!("names {names:?}, expected {want:?}"));
    }
    for (path, node) in &s.names {
        match (node, &got[path]) {
            (Node::Dir, Entry::Dir) => {}
            (Node::Symlink(target), Entry::Symlink(got)) => {
                if got != target.as_bytes() {
                    return Some(format!("{path}: a symlink to {got:?}, expected {target:?}"));
                }
            }
            (Node::File(id), Entry::File { data, owner, mtime }) => {
                let f = &s.files[id];
                if *owner != f.owner {
                    return Some(format!("{path}: owner {owner:?}, expected {:?}", f.owner));
                }
                if let Some(want) = f.mtime
                    && *mtime != want
                {
                    return Some(format!("{path}: mtime {mtime:?}, expected {want:?}"));
                }
                if data.len() != f.data.len() {
                    return Some(format!(
                        "{path}: {} bytes, expected {}",
                        data.len(),
                        f.data.len()
                    ));
                }
                if f.fsynced {
                    if let Some(at) = data.iter().zip(f.data.iter()).position(|(a, b)| a != b) {
                        return Some(format!(
                            "{path} (fsynced): byte {at} is {}, expected {} (checksums {:08x}, expected {:08x})",
                            data[at],
                            f.data[at],
                            crc32c::crc32c(data),
                            crc32c::crc32c(&f.data)
                        ));
                    }
                } else if let Some(at) = data
                    .iter()
                    .enumerate()
                    .position(|(i, &b)| b != f.data[i] && !written.could_be(*id, i as u64, b))
                {
                    return Some(format!(
                        "{path}: byte {at} is {}, a value never written there",
                        data[at]
                    ));
                }
            }
            _ => return Some(format!("{path}: wrong kind")),
        }
    }
    None
}

/// The promises alone, for a recovered volume that is no single state of `states` (the states
/// from the last fsync's to the one in flight at the cut): a name that is the same in all of
/// them (unchanged since the fsync) is there (a file fsynced and unchanged since byte-exact);
/// every name that is there names its inode in one of them, and the file has the size of one
/// of them and reads nothing never written.
fn broken_promise(
    got: &Tree,
    inos: &BTreeMap<String, Ino>,
    states: &[State],
    written: &Written,
) -> Option<String> {
    let first = &states[0];
    for (path, node) in &first.names {
        if !states[1..].iter().all(|s| s.names.get(path) == Some(node)) {
            continue;
        }
        match (node, got.get(path)) {
            (Node::Dir, Some(Entry::Dir)) => {}
            (Node::Symlink(t), Some(Entry::Symlink(g))) if g == t.as_bytes() => {}
            (Node::File(id), Some(Entry::File { data, .. })) => {
                let f = &first.files[id];
                let unchanged = states[1..].iter().all(|s| s.files[id].data == f.data);
                if unchanged && f.fsynced && data != f.data.as_ref() {
                    return Some(format!("{path} (fsynced, unchanged since) differs"));
                }
            }
            _ => return Some(format!("{path} (unchanged since the fsync) is missing")),
        }
    }
    for (path, entry) in got {
        let fits = match entry {
            Entry::Dir => states.iter().any(|s| s.names.get(path) == Some(&Node::Dir)),
            Entry::Symlink(t) => {
                let node = Node::Symlink(String::from_utf8_lossy(t).into_owned());
                states.iter().any(|s| s.names.get(path) == Some(&node))
            }
            Entry::File { data, .. } => {
                // The file by its inode: its name from one state, its contents from another.
                let Some(&id) = inos.get(path).and_then(|i| written.files_by_ino.get(i)) else {
                    return Some(format!("{path} is a file nobody created"));
                };
                states
                    .iter()
                    .any(|s| s.names.get(path) == Some(&Node::File(id)))
                    && states.iter().any(|s| {
                        s.files.get(&id).is_some_and(|f| {
                            data.len() == f.data.len()
                                && data.iter().enumerate().all(|(i, &b)| {
                                    b == f.data[i] || written.could_be(id, i as u64, b)
                                })
                        })
                    })
            }
        };
        if !fits {
            return Some(format!(
                "{path}: no state since the fsync has it with this name, size or bytes"
            ));
        }
    }
    None
}

/// Every recorder's events numbered in `[from, to)`, in order.
fn all_events(rec: &Recording, from: u64, to: u64) -> Vec<String> {
    let mut lines: Vec<(u64, String)> = rec
        .device
        .describe(from, to)
        .into_iter()
        .map(|l| (l.split(':').next().unwrap().parse().unwrap(), l))
        .collect();
    for n in rec.meta.checkpoint_events() {
        if (from..to).contains(&n) {
            lines.push((n, format!("{n}: metadata checkpoint")));
        }
    }
    for (n, e) in rec.objects.lock().unwrap().iter() {
        if (from..to).contains(n) {
            let what = match e {
                ObjEvent::Put(k, b) => format!("PUT {k} ({} bytes)", b.len()),
                ObjEvent::Delete(k) => format!("DELETE {k}"),
            };
            lines.push((*n, format!("{n}: {what}")));
        }
    }
    lines.sort();
    lines.into_iter().map(|(_, l)| l).collect()
}

/// The state after an operation that had not returned at the cut: a file is fsynced only if
/// it was before and the operation did not change it.
fn unconfirmed(before: &State, after: &State) -> State {
    let mut s = after.clone();
    for (id, f) in s.files.iter_mut() {
        f.fsynced = before
            .files
            .get(id)
            .is_some_and(|b| b.fsynced && b.data == f.data);
    }
    s
}

/// Rebuilds the volume as a cut before event `at` leaves it, starts an engine on it and checks
/// what it reads. `Err` says what is wrong.
fn check_cut(
    rec: &Recording,
    at: u64,
    cut_seed: u64,
    unflushed: Unflushed,
) -> std::result::Result<(), String> {
    // The same path as the recording's: the volume remembers where its logs are.
    let cache = rec._dir.path().join("cache");
    if cache.exists() {
        std::fs::remove_dir_all(&cache).map_err(|e| format!("clean {cache:?}: {e}"))?;
    }
    rec.device
        .materialise(
            CutPlan {
                at,
                seed: cut_seed,
                unflushed,
            },
            &cache,
        )
        .map_err(|e| format!("materialise: {e}"))?;
    for (path, data) in &rec.other_files {
        let to = cache.join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, data).unwrap();
    }
    let meta: Arc<dyn KvStore> = Arc::new(MemStore::from_map(rec.meta.durable_before(at)));
    let inner = InMemory::new();
    let storage = ObjectStorage::from_store(Arc::new(inner), "cut").unwrap();
    let objects = objects_before(&rec.objects.lock().unwrap(), at);
    for (k, v) in objects {
        storage.put(&k, v).unwrap();
    }
    let storage = Arc::new(storage);
    // On a simulated device of its own: the same files, without waiting for real flushes.
    let device = SimDevice::new(&cache, Arc::new(AtomicU64::new(1)));
    let reopen = StagingSettings {
        // No buffer registration with a ring at every reopen.
        io_engine: spoolfs_engine::staging::IoEngineKind::Psync,
        ..settings(&cache, Some(device))
    };
    let (wal, staging) = open_staging(meta, &rec.record, &reopen)
        .map_err(|e| format!("open_staging after the cut: {e}"))?;
    let replayed: Vec<String> = staging
        .replayed
        .iter()
        .map(|r| {
            format!(
                "slice {} ({} bytes at {}:{}{})",
                r.header.slice_id,
                r.header.len,
                r.loc.segment,
                r.loc.offset,
                if r.damaged.is_empty() {
                    ""
                } else {
                    ", damaged"
                }
            )
        })
        .collect();
    let engine = Engine::start(wal, storage, rec.record.clone(), engine_config(staging))
        .map_err(|e| format!("engine start after the cut: {e}"))?;
    let losses = engine
        .data_losses()
        .map(|l| format!("{l:?}"))
        .unwrap_or_else(|e| e.to_string());
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_back(&engine)));
    let (got, inos) = match read {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let newest = rec.steps.iter().take_while(|s| s.start < at).count();
            let first = rec.steps[newest.saturating_sub(6)..newest]
                .first()
                .map_or(0, |s| s.start);
            let ops: Vec<String> = rec.steps[newest.saturating_sub(6)..newest]
                .iter()
                .map(|s| format!("  {:?} [{}..{})", s.op, s.start, s.end))
                .collect();
            return Err(format!(
                "{what}\nlast operations before the cut:\n{}\nevents:\n  {}",
                ops.join("\n"),
                all_events(rec, first, at).join("\n  ")
            ));
        }
    };
    // Ids the recovered volume hands out next must be fresh: a new file, written and
    // fsynced, changes no other file (a reused inode or slice number would).
    let probe = (|| -> Result<()> {
        let (a, fh) = engine.create(&ME, ROOT_INO, b"probe", 0o644, libc::O_RDWR)?;
        engine.write(&ME, a.ino, fh, 0, &[0xa5; 5000])?;
        engine.fsync(a.ino, fh, false)?;
        engine.release(a.ino, fh)
    })();
    let after = probe.map(|_| read_back(&engine));
    // Joins the engine's threads: a campaign starts thousands of engines in one process.
    let _ = engine.shutdown();
    drop(engine);
    match after {
        Err(e) => return Err(format!("a new file on the recovered volume failed: {e}")),
        Ok((mut after, _)) => {
            let probe = after.remove("probe");
            if !matches!(&probe, Some(Entry::File { data, .. }) if *data == [0xa5; 5000]) {
                return Err("a new file on the recovered volume reads back wrong".into());
            }
            if after != got {
                let changed: Vec<String> = got
                    .keys()
                    .chain(after.keys())
                    .filter(|k| got.get(*k) != after.get(*k))
                    .map(|k| {
                        let len = |m: &Tree| m.get(k).map(Entry::len);
                        format!("{k}: {:?} bytes, then {:?}", len(&got), len(&after))
                    })
                    .collect();
                return Err(format!(
                    "writing a new file on the recovered volume changed others (a reused \
                     inode or slice number): {}",
                    changed.join(", ")
                ));
            }
        }
    }

    // The states the volume may be in: after the last barrier acknowledged before the cut,
    // up to the operation in flight at the cut.
    let acked = rec.steps.iter().take_while(|s| s.end <= at).count();
    let in_flight = rec.steps.get(acked).is_some_and(|s| s.start < at);
    let last_barrier = rec.steps[..acked]
        .iter()
        .rposition(|s| s.barrier && !s.failed);
    let newest = if in_flight { acked + 1 } else { acked };
    let state = |i: usize| {
        if i == 0 {
            &rec.initial
        } else {
            &rec.steps[i - 1].after
        }
    };
    let oldest = last_barrier.map_or(0, |b| b + 1);
    let mut why = Vec::new();
    // A failed operation (the workload's last) may or may not have taken effect: both its
    // states are candidates.
    let candidates: Vec<State> = (oldest..=newest.min(rec.steps.len()))
        .map(|p| {
            if in_flight && p == newest {
                // Its fsync (if any) did not return: only what was fsynced before counts.
                unconfirmed(state(p - 1), state(p))
            } else {
                state(p).clone()
            }
        })
        .collect();
    for (i, candidate) in candidates.iter().enumerate().rev() {
        let p = oldest + i;
        match mismatch(&got, candidate, &rec.written) {
            None => return Ok(()),
            Some(w) => why.push(format!("  after op {p}: {w}")),
        }
    }
    // Not a prefix of the operations: later unsynced changes kept while earlier unsynced
    // ones were lost (replay went past a gap it took for damage). Said apart from a broken
    // promise (an fsynced change missing, bytes never written) in the report.
    match broken_promise(&got, &inos, &candidates, &rec.written) {
        None => why.push(
            "  promises: every fsynced change is there and nothing reads bytes never \
             written, but the namespace is no prefix of the operations"
                .into(),
        ),
        Some(w) => why.push(format!("  promises: {w}")),
    }
    let ops: Vec<String> = rec.steps[..newest.min(rec.steps.len())]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "  op {}: {:?} [{}..{}){}",
                i + 1,
                s.op,
                s.start,
                s.end,
                if s.failed { " failed" } else { "" }
            )
        })
        .collect();
    let around = rec.steps[oldest.saturating_sub(1)..newest.min(rec.steps.len())]
        .first()
        .map_or(0, |s| s.start);
    Err(format!(
        "the recovered volume matches no state from op {oldest} to op {newest}:\n{}\n\
         staged records replayed: {}\n\
         data losses recorded: {losses}\n\
         operations:\n{}\ndevice events from op {oldest} to the cut:\n  {}",
        why.join("\n"),
        replayed.join(", "),
        ops.join("\n"),
        all_events(rec, around, at).join("\n  ")
    ))
}

fn cut_seed(seed: u64, at: u64, variant: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ at.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ variant
}

/// Checks workload `seed` cut before every event it recorded, `variants` times each (different
/// choices of what the device kept), or only the cut `only` (event, variant). Returns the
/// number of cuts checked; panics with the seed and the cut on a failure.
fn run_seed(seed: u64, variants: u64, only: Option<(u64, u64)>, mode: Unflushed) -> usize {
    let rec = record(seed);
    let first = rec.steps.first().map_or(1, |s| s.start);
    let last = rec.clock.load(Ordering::SeqCst);
    let points: Vec<(u64, u64)> = match only {
        Some(p) => vec![p],
        None => (first..=last)
            .flat_map(|at| (0..variants).map(move |k| (at, k)))
            .collect(),
    };
    let failed = rec
        .steps
        .iter()
        .find(|s| s.failed)
        .map(|s| format!(", stopped at a failed {:?}", s.op));
    let count = |f: fn(&Op) -> bool| rec.steps.iter().filter(|s| f(&s.op)).count();
    eprintln!(
        "seed {seed} ({:?}): {} operations{} (chown {}, utimens {}, link {}, symlink {}), \
         events {first}..{last}, {} cuts",
        faults_of(seed),
        rec.steps.len(),
        failed.unwrap_or_default(),
        count(|o| matches!(o, Op::Chown(..))),
        count(|o| matches!(o, Op::Utimens(..))),
        count(|o| matches!(o, Op::Link(..))),
        count(|o| matches!(o, Op::Symlink(..))),
        points.len()
    );
    for &(at, variant) in &points {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_cut(&rec, at, cut_seed(seed, at, variant), mode)
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        if let Some(why) = failure {
            panic!(
                "power cut: workload seed {seed}, cut before event {at} (of {last}), variant \
                 {variant} failed (rerun: SPOOLFS_POWERCUT_SEED={seed} SPOOLFS_POWERCUT_CUT={at} \
                 SPOOLFS_POWERCUT_VARIANT={variant} cargo test -p spoolfs-engine --test \
                 powercut powercut)\n{why}"
            );
        }
    }
    points.len()
}

/// Checks every cut point of the operations `ops`, each with `cut_seeds` different choices of
/// what the device kept.
fn every_cut(name: &str, ops: &[Op], cut_seeds: u64) {
    let rec = record_ops(1, Some(ops));
    if std::env::var("SPOOLFS_POWERCUT_TRACE").is_ok() {
        eprintln!("before the first operation:");
        for e in all_events(&rec, 0, rec.steps.first().map_or(0, |s| s.start)) {
            eprintln!("    {e}");
        }
        for s in &rec.steps {
            eprintln!("{:?} [{}..{})", s.op, s.start, s.end);
            for e in rec.device.describe(s.start, s.end) {
                eprintln!("    {e}");
            }
        }
    }
    let first = rec.steps.first().map_or(1, |s| s.start);
    let last = rec.clock.load(Ordering::SeqCst);
    for at in first..=last {
        for k in 0..cut_seeds {
            if let Err(why) = check_cut(&rec, at, k, unflushed_mode()) {
                panic!("{name}: cut before event {at} (of {last}), cut seed {k}:\n{why}");
            }
        }
    }
}

/// Regression (found as workload seed 7, cut 51): a file written and closed, then fsynced
/// through a new descriptor with nothing left to write. The close's record sat unflushed in
/// the data log and the fsync flushed only the (idle) namespace log, that is nothing: a cut
/// after the fsync returned lost the file's data and size.
#[test]
fn fsync_after_close_makes_the_closed_data_durable() {
    let write = |offset, len, fsync| Op::Write {
        path: "f".into(),
        offset,
        len,
        fsync,
    };
    let ops = [
        Op::Create("f".into()),
        // The data log's segment exists and is flushed (the write also takes slice ids: a
        // namespace record).
        write(0, 4096, true),
        // Nothing unflushed in the namespace log from here on.
        Op::FsyncFile("f".into()),
        // Closed, not flushed: its record (data and transaction) is in the data log only.
        write(4096, 7484, false),
        Op::FsyncFile("f".into()),
        write(11580, 3918, false),
    ];
    every_cut("fsync after close", &ops, 8);
}

/// What the simulated device keeps of unflushed writes: in order (the default, the CI run), or
/// any subset (`SPOOLFS_POWERCUT_UNFLUSHED=any`, see `powercut_any_order`).
fn unflushed_mode() -> Unflushed {
    match std::env::var("SPOOLFS_POWERCUT_UNFLUSHED").as_deref() {
        Ok("any") => Unflushed::AnySubset,
        _ => Unflushed::InOrder,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs workload seeds from `first_seed` on, `variants` cuts before each of their events,
/// until `seeds` seeds or `points` cuts are done.
fn campaign(first_seed: u64, seeds: Option<u64>, points: usize, variants: u64, mode: Unflushed) {
    let started = Instant::now();
    let mut done = 0;
    let mut seed = first_seed;
    while done < points && seeds.is_none_or(|n| seed < first_seed + n) {
        done += run_seed(seed, variants, None, mode);
        seed += 1;
    }
    eprintln!(
        "power cut ({mode:?}): {done} cuts of {} workload seed(s) from {first_seed}, all \
         passed, in {:.1?}",
        seed - first_seed,
        started.elapsed(),
    );
}

#[test]
fn powercut() {
    let seed = env_u64("SPOOLFS_POWERCUT_SEED");
    if let (Some(seed), Some(at)) = (seed, env_u64("SPOOLFS_POWERCUT_CUT")) {
        let variant = env_u64("SPOOLFS_POWERCUT_VARIANT").unwrap_or(0);
        run_seed(seed, 1, Some((at, variant)), unflushed_mode());
        return;
    }
    match env_u64("SPOOLFS_POWERCUT_POINTS") {
        Some(points) => campaign(
            seed.unwrap_or(1),
            None,
            points as usize,
            2,
            unflushed_mode(),
        ),
        None => campaign(
            seed.unwrap_or(1),
            Some(CI_SEEDS),
            usize::MAX,
            1,
            unflushed_mode(),
        ),
    }
}

/// The long campaign: 100,000 cut points (`cargo test -p spoolfs-engine --test powercut --
/// --ignored`).
#[test]
#[ignore]
fn powercut_campaign() {
    let first = env_u64("SPOOLFS_POWERCUT_SEED").unwrap_or(1000);
    campaign(first, None, 100_000, 2, unflushed_mode());
}

/// Workloads on a device that keeps any subset of unflushed writes, each whole, torn or lost,
/// not a prefix of them: replay must tell a write the power cut tore from damage (it used to
/// go past the gap such a record left, recovering no prefix of the operations, and read a
/// slice lost that way as a missing object). The first
/// `CI_SEEDS_ANY_ORDER` seeds, about 600 cuts (a longer run: `SPOOLFS_POWERCUT_UNFLUSHED=any`
/// with `powercut` or `powercut_campaign`).
#[test]
fn powercut_any_order() {
    campaign(
        1,
        Some(CI_SEEDS_ANY_ORDER),
        usize::MAX,
        1,
        Unflushed::AnySubset,
    );
}
