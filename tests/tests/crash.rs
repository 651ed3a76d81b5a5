//! Crash and fault tests of the writeback staging engine.
//!
//! * `crash_kill9_loses_nothing_acknowledged`: many rounds of "mount, run a workload, SIGKILL
//!   the mount process at a random moment, remount, check". A journal kept in the test process
//!   records, for every file, what the application was told (close and fsync returned, renames
//!   and unlinks returned, a directory's chmod or setxattr returned); after each remount every
//!   acknowledged state must be there, byte for byte, and an operation cut by the kill may
//!   only have done or not done what it asked (a cut pwrite changes nothing outside its
//!   range). At the end a clean unmount and a mount with a fresh, empty cache directory prove
//!   the data reached the object store. Round variants: a single uploader (odd rounds), a
//!   failing/tearing/slow staging device (`SPOOLFS_STAGING_FAULTS`), the object store down
//!   during the workload (everything acknowledged is then only in the staging log), and the
//!   kill landing during a clean `spoolfs umount`.
//! * `staging_faults_lose_nothing`: the staging device fails and tears writes
//!   (`SPOOLFS_STAGING_FAULTS`); every write must still succeed (direct upload fallback), survive
//!   a SIGKILL (torn records found by their checksums on replay) and reach the object store.
//! * `object_store_outage_then_back`: with the object store down, writeback still acknowledges
//!   (data waits in the staging log), survives a SIGKILL and is uploaded once the store is back;
//!   with the store down and staging failing too, the application gets EIO, never a false
//!   success.
//! * `umount_fails_if_the_daemon_dies_before_uploading`: `spoolfs umount` must not report
//!   success when its daemon dies before the staged data reached the object store.
//!
//! Environment: `CRASH_SEED` (the seed of the workload and the kill times; printed by each
//! run), `CRASH_ROUNDS` (kill rounds, default 24), `CRASH_BACKEND=s3` (crash rounds on s3s-fs
//! instead of the file store; slower).

use spoolfs_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The FUSE tests of this file run one at a time: they kill processes at random moments and
/// their timing matters more than their parallelism (2-core CI machines).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn seed_from_env() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) if !s.is_empty() => s.parse().expect("CRASH_SEED must be a number"),
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_secs() ^ u64::from(t.subsec_nanos())) % 1_000_000_007
        }
    }
}

/// This file's serial lock (see [`serial`]), then a file volume with a mount point, the
/// default cache directory and a directory for the mount logs.
fn serial_volume() -> (
    std::sync::MutexGuard<'static, ()>,
    Volume,
    PathBuf,
    PathBuf,
    PathBuf,
) {
    let serial = serial();
    let vol = Volume::new(Backend::File);
    let mp = vol.new_subdir("mnt");
    let cache = vol.cache_dir();
    let logs = vol.new_subdir("logs");
    (serial, vol, mp, cache, logs)
}

/// A foreground mount (a child process the tests can SIGKILL) at `mp`, which must not be
/// mounted yet, with extra arguments and environment variables, its output in `log`.
fn start_mount<'v>(
    vol: &'v Volume,
    mp: &Path,
    cache_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    log: PathBuf,
) -> Mount<'v> {
    assert!(!is_mounted(mp), "{} is still mounted", mp.display());
    vol.mount_with(MountOptions::foreground_at(mp, cache_dir, extra, env, log))
}

/// `(staged slices, namespace changes)` the mount log says were recovered by replay.
fn replay_counts(log: &str) -> (u64, u64) {
    let num_after = |line: &str, marker: &str| -> Option<u64> {
        line.split(marker)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (mut slices, mut changes) = (0, 0);
    for line in log.lines() {
        if line.contains("staged slice(s)") {
            slices += num_after(line, "replay: ").unwrap_or(0);
        } else if line.contains("namespace change(s) recovered") {
            changes += num_after(line, "replay: ").unwrap_or(0);
        }
    }
    (slices, changes)
}

/// Copies the mount logs somewhere that outlives the test's temporary directory.
fn keep_logs(logs: &Path, seed: u64) -> PathBuf {
    let dest =
        std::env::temp_dir().join(format!("crashlogs-spoolfs-{seed}-{}", std::process::id()));
    let _ = fs::create_dir_all(&dest);
    if let Ok(rd) = fs::read_dir(logs) {
        for e in rd.flatten() {
            let _ = fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
    dest
}

fn errno_str(e: i32) -> String {
    match e {
        libc::ECONNABORTED => "ECONNABORTED".into(),
        0 => "no errno".into(),
        _ => match errno_name(e) {
            "errno" => format!("errno {e}"),
            n => n.into(),
        },
    }
}

/// Log lines worth showing next to a failure: warnings, errors, replay and staging notes.
fn interesting_log_lines(log: &str, needles: &[&str]) -> String {
    let mut out = log_lines_with(log, &[&["panicked", "replay"], needles].concat());
    if out.len() > 80 {
        out.drain(..out.len() - 80);
    }
    out.join("\n")
}

// ---------------------------------------------------------------------------------------------
// The journal: what the application was told
// ---------------------------------------------------------------------------------------------

/// What must be at a path after a crash.
#[derive(Clone, Debug)]
enum Expect {
    /// The path must not exist.
    Absent,
    /// A regular file with exactly these bytes (its last acknowledged state).
    Exact(Arc<Vec<u8>>),
    /// An operation on the path was in flight: anything, with these two constraints.
    Unknown {
        /// Its creation was acknowledged (or it existed before), so it must exist.
        must_exist: bool,
        /// Acknowledged bytes an in-flight append must not lose.
        prefix: Option<Arc<Vec<u8>>>,
    },
    /// A rename or unlink was in flight: one of these.
    OneOf(Vec<Expect>),
    /// A pwrite of `len` bytes at `at` was in flight over `old`: the bytes outside that range
    /// are `old`'s (zeros where it extends the file), the size is the old one or the one the
    /// pwrite makes; only the range itself may hold anything.
    Patched {
        old: Arc<Vec<u8>>,
        at: usize,
        len: usize,
    },
}

impl Expect {
    /// Any contents (an operation on the file is under way); `must_exist`: it cannot be absent.
    fn unknown(must_exist: bool) -> Expect {
        Expect::Unknown {
            must_exist,
            prefix: None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Absent => "absent".into(),
            Expect::Exact(d) => format!("{} bytes (checksum {:016x})", d.len(), checksum(d)),
            Expect::Unknown { must_exist, prefix } => format!(
                "anything{}{}",
                if *must_exist { ", must exist" } else { "" },
                prefix
                    .as_ref()
                    .map(|p| format!(", starting with the {} acknowledged bytes", p.len()))
                    .unwrap_or_default()
            ),
            Expect::OneOf(v) => {
                let alts: Vec<String> = v.iter().map(|e| e.describe()).collect();
                format!("one of [{}]", alts.join(" | "))
            }
            Expect::Patched { old, at, len } => format!(
                "{} bytes (checksum {:016x}) with anything in [{at}, {})",
                old.len(),
                checksum(old),
                at + len
            ),
        }
    }

    /// None if `actual` (None = absent) is allowed, else why not.
    fn check(&self, actual: Option<&[u8]>) -> Option<String> {
        match (self, actual) {
            (Expect::Absent, None) => None,
            (Expect::Absent, Some(a)) => {
                Some(format!("exists ({} bytes), expected absent", a.len()))
            }
            (Expect::Exact(_), None) => Some("missing".into()),
            (Expect::Exact(e), Some(a)) => {
                if a == e.as_slice() {
                    None
                } else {
                    let first = a
                        .iter()
                        .zip(e.iter())
                        .position(|(x, y)| x != y)
                        .unwrap_or(a.len().min(e.len()));
                    Some(format!(
                        "content differs: {} bytes (checksum {:016x}), expected {} bytes \
                         (checksum {:016x}); first difference at offset {first}: got {:02x?}, \
                         expected {:02x?}",
                        a.len(),
                        checksum(a),
                        e.len(),
                        checksum(e),
                        &a[first.min(a.len())..(first + 16).min(a.len())],
                        &e[first.min(e.len())..(first + 16).min(e.len())],
                    ))
                }
            }
            (Expect::Unknown { must_exist, .. }, None) => {
                must_exist.then(|| "missing (its creation was acknowledged)".to_string())
            }
            (Expect::Unknown { prefix, .. }, Some(a)) => match prefix {
                Some(p) if !a.starts_with(p) => Some(format!(
                    "an in-flight append lost acknowledged data: {} bytes, expected them to \
                     start with the {} acknowledged bytes (checksum {:016x})",
                    a.len(),
                    p.len(),
                    checksum(p)
                )),
                _ => None,
            },
            (Expect::Patched { .. }, None) => Some("missing (it existed before the pwrite)".into()),
            (Expect::Patched { old, at, len }, Some(a)) => {
                let (at, end) = (*at, at + len);
                let sizes = [old.len(), old.len().max(end)];
                if !sizes.contains(&a.len()) {
                    return Some(format!(
                        "{} bytes after a pwrite of [{at}, {end}) into {} bytes",
                        a.len(),
                        old.len()
                    ));
                }
                let outside = (0..a.len()).filter(|i| !(at..end).contains(i));
                let bad = outside
                    .into_iter()
                    .find(|&i| a[i] != old.get(i).copied().unwrap_or(0));
                bad.map(|i| {
                    format!(
                        "an in-flight pwrite of [{at}, {end}) changed byte {i}, outside its \
                         range: {:#04x}, was {:#04x}",
                        a[i],
                        old.get(i).copied().unwrap_or(0)
                    )
                })
            }
            (Expect::OneOf(v), a) => {
                if v.iter().any(|e| e.check(a).is_none()) {
                    None
                } else {
                    Some(format!(
                        "{} matches none of the allowed states",
                        a.map(|a| format!("{} bytes (checksum {:016x})", a.len(), checksum(a)))
                            .unwrap_or_else(|| "absent".into())
                    ))
                }
            }
        }
    }
}

/// A rename that was in flight: atomic, so either nothing or everything happened.
#[derive(Clone, Debug)]
struct PendingRename {
    from: PathBuf,
    to: PathBuf,
    data: Arc<Vec<u8>>,
    to_before: Expect,
}

/// Everything one workload thread did, relative to the mount point.
#[derive(Default)]
struct Journal {
    files: BTreeMap<PathBuf, Expect>,
    /// Directories whose mkdir returned.
    dirs: BTreeSet<PathBuf>,
    /// A directory whose mkdir was in flight.
    maybe_dir: Option<PathBuf>,
    rename: Option<PendingRename>,
    /// Per path: what was done to it (for failure reports).
    history: BTreeMap<PathBuf, Vec<String>>,
    /// What the workload was doing, and how it ended.
    current: String,
    end: Option<WorkloadEnd>,
    /// Acknowledged operations this round.
    acked: usize,
    /// Directories whose mode or extended attribute the workload changed: the states each
    /// may be in (one once the change was acknowledged, two while it is in flight).
    dir_attrs: BTreeMap<PathBuf, DirAttrs>,
}

/// What a directory's mode and `user.crash` attribute may be (`None`: never changed).
#[derive(Clone, Debug, Default)]
struct DirAttrs {
    modes: Option<Vec<u32>>,
    xattrs: Option<Vec<Option<Vec<u8>>>>,
}

const DIR_XATTR: &str = "user.crash";

/// The value of `name` on `path` (`None` if it has none).
fn xattr_or_none(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    match get_xattr(path, name) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Debug)]
struct WorkloadEnd {
    op: String,
    errno: Option<i32>,
    error: String,
    after_kill: bool,
}

impl Journal {
    fn note(&mut self, round: usize, path: &Path, what: String) {
        self.history
            .entry(path.to_path_buf())
            .or_default()
            .push(format!("round {round}: {what}"));
    }

    fn live_files(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|(_, e)| matches!(e, Expect::Exact(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn exact(&self, p: &Path) -> Arc<Vec<u8>> {
        match self.files.get(p) {
            Some(Expect::Exact(d)) => d.clone(),
            other => panic!("{}: not a settled file: {other:?}", p.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

struct Worker {
    id: usize,
    round: usize,
    root: PathBuf,
    journal: Arc<Mutex<Journal>>,
    killed: Arc<AtomicBool>,
    /// Finish the current operation, then stop.
    stop: Arc<AtomicBool>,
    rng: Rng,
    seq: u64,
}

/// An operation failed: the workload stops there.
struct Stop {
    op: String,
    err: std::io::Error,
}

fn os_err(op: &str, err: std::io::Error) -> Stop {
    Stop {
        op: op.to_string(),
        err,
    }
}

impl Worker {
    fn j(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, p: &Path, e: Expect) {
        self.j().files.insert(p.to_path_buf(), e);
    }

    fn note(&self, p: &Path, what: String) {
        let round = self.round;
        let mut j = self.j();
        j.current = format!("{}: {what}", p.display());
        j.note(round, p, what);
    }

    fn ack(&self) {
        self.j().acked += 1;
    }

    /// 0 to 300 KiB, with a bias towards the edges (empty, one byte, block multiples).
    fn content(&mut self) -> Vec<u8> {
        let len = match self.rng.below(10) {
            0 => 0,
            1 => 1 + self.rng.below(100) as usize,
            2 => 4096 * (1 + self.rng.below(75) as usize),
            _ => self.rng.below(300 * 1024 + 1) as usize,
        };
        self.rng.bytes(len)
    }

    /// Writes `data` with a few write(2) calls of random sizes.
    fn write_chunks(&mut self, f: &mut fs::File, data: &[u8], op: &str) -> Result<(), Stop> {
        let mut pos = 0;
        while pos < data.len() {
            let n = if self.rng.below(3) == 0 {
                data.len() - pos
            } else {
                (1 + self.rng.below(96 * 1024) as usize).min(data.len() - pos)
            };
            f.write_all(&data[pos..pos + n])
                .map_err(|e| os_err(&format!("{op}: write"), e))?;
            pos += n;
        }
        Ok(())
    }

    /// fsync (optional) and close of a written file; records each acknowledgement.
    fn finish_file(
        &mut self,
        rel: &Path,
        f: fs::File,
        data: Arc<Vec<u8>>,
        fsync: bool,
        op: &str,
    ) -> Result<(), Stop> {
        if fsync {
            f.sync_all()
                .map_err(|e| os_err(&format!("{op}: fsync"), e))?;
            self.set(rel, Expect::Exact(data.clone()));
            self.note(rel, format!("{op}: fsync returned"));
        }
        let fd = f.into_raw_fd();
        // SAFETY: fd is owned by us (into_raw_fd) and closed exactly once.
        if unsafe { libc::close(fd) } != 0 {
            return Err(os_err(
                &format!("{op}: close"),
                std::io::Error::last_os_error(),
            ));
        }
        self.set(rel, Expect::Exact(data));
        self.note(rel, format!("{op}: close returned"));
        self.ack();
        Ok(())
    }

    /// Starts the write `what` to `rel`: draws whether it ends with an fsync, records that the
    /// file may hold `during` until the write is acknowledged, and opens it with `options`.
    /// Returns the file, the operation's full name and the fsync choice.
    fn start_write(
        &mut self,
        rel: &Path,
        what: String,
        during: Expect,
        options: &fs::OpenOptions,
    ) -> Result<(fs::File, String, bool), Stop> {
        let fsync = self.rng.below(2) == 0;
        let op = if fsync {
            format!("{what} + fsync")
        } else {
            what
        };
        self.set(rel, during);
        self.note(rel, format!("{op}: started"));
        let f = options
            .open(self.root.join(rel))
            .map_err(|e| os_err(&format!("{op}: open"), e))?;
        Ok((f, op, fsync))
    }

    fn pick(&mut self, v: &[PathBuf]) -> PathBuf {
        v[self.rng.below(v.len() as u64) as usize].clone()
    }

    fn new_name(&mut self) -> PathBuf {
        let dirs: Vec<PathBuf> = self.j().dirs.iter().cloned().collect();
        let dir = self.pick(&dirs);
        self.seq += 1;
        dir.join(format!("r{}-w{}-n{}", self.round, self.id, self.seq))
    }

    fn create(&mut self) -> Result<(), Stop> {
        let rel = self.new_name();
        let data = Arc::new(self.content());
        let (mut f, op, fsync) = self.start_write(
            &rel,
            format!("create {} bytes", data.len()),
            Expect::unknown(false),
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644),
        )?;
        // A returned create alone promises nothing after a crash (SEMANTICS.md): the file's
        // close or fsync does. So the file may still be missing until then.
        self.write_chunks(&mut f, &data, &op)?;
        self.finish_file(&rel, f, data, fsync, &op)
    }

    fn overwrite(&mut self, rel: PathBuf) -> Result<(), Stop> {
        let data = Arc::new(self.content());
        let (mut f, op, fsync) = self.start_write(
            &rel,
            format!("overwrite (O_TRUNC) with {} bytes", data.len()),
            Expect::unknown(true),
            fs::OpenOptions::new().write(true).truncate(true),
        )?;
        self.write_chunks(&mut f, &data, &op)?;
        self.finish_file(&rel, f, data, fsync, &op)
    }

    /// pwrite of a random range (possibly extending the file), no truncation.
    fn patch(&mut self, rel: PathBuf) -> Result<(), Stop> {
        let old = self.j().exact(&rel);
        // Now and then across the first 4 MiB chunk boundary (leaving a hole before it).
        let at = if self.rng.below(25) == 0 && old.len() < 4 << 20 {
            (4 << 20) - self.rng.below(8192) as usize
        } else {
            self.rng.below(old.len() as u64 + 1) as usize
        };
        let len = 1 + self.rng.below(64 * 1024) as usize;
        let piece = self.rng.bytes(len);
        let mut new = old.as_ref().clone();
        if new.len() < at + len {
            new.resize(at + len, 0);
        }
        new[at..at + len].copy_from_slice(&piece);
        let data = Arc::new(new);
        let (f, op, fsync) = self.start_write(
            &rel,
            format!("pwrite {len} bytes at {at} (file was {} bytes)", old.len()),
            Expect::Patched {
                old: old.clone(),
                at,
                len,
            },
            fs::OpenOptions::new().write(true),
        )?;
        std::os::unix::fs::FileExt::write_all_at(&f, &piece, at as u64)
            .map_err(|e| os_err(&format!("{op}: pwrite"), e))?;
        self.finish_file(&rel, f, data, fsync, &op)
    }

    fn append(&mut self, rel: PathBuf) -> Result<(), Stop> {
        let old = self.j().exact(&rel);
        let extra = self.content();
        let extra = &extra[..extra.len().min(128 * 1024)];
        let mut new = old.as_ref().clone();
        new.extend_from_slice(extra);
        let data = Arc::new(new);
        let what = format!("append {} bytes to {} bytes", extra.len(), old.len());
        let (mut f, op, fsync) = self.start_write(
            &rel,
            what,
            Expect::Unknown {
                must_exist: true,
                prefix: Some(old),
            },
            fs::OpenOptions::new().append(true),
        )?;
        let extra = extra.to_vec();
        self.write_chunks(&mut f, &extra, &op)?;
        self.finish_file(&rel, f, data, fsync, &op)
    }

    fn rename(&mut self, from: PathBuf, live: &[PathBuf]) -> Result<(), Stop> {
        let data = self.j().exact(&from);
        // A third of the renames replace another file.
        let to = if live.len() > 1 && self.rng.below(3) == 0 {
            let mut t = self.pick(live);
            while t == from {
                t = self.pick(live);
            }
            t
        } else {
            self.new_name()
        };
        let to_before = self.j().files.get(&to).cloned().unwrap_or(Expect::Absent);
        {
            let mut j = self.j();
            j.files.insert(
                from.clone(),
                Expect::OneOf(vec![Expect::Exact(data.clone()), Expect::Absent]),
            );
            j.files.insert(
                to.clone(),
                Expect::OneOf(vec![to_before.clone(), Expect::Exact(data.clone())]),
            );
            j.rename = Some(PendingRename {
                from: from.clone(),
                to: to.clone(),
                data: data.clone(),
                to_before: to_before.clone(),
            });
        }
        let op = format!("rename {} -> {}", from.display(), to.display());
        self.note(&from, format!("{op}: started"));
        self.note(&to, format!("{op}: started"));
        fs::rename(self.root.join(&from), self.root.join(&to)).map_err(|e| os_err(&op, e))?;
        {
            let mut j = self.j();
            j.files.insert(from.clone(), Expect::Absent);
            j.files.insert(to.clone(), Expect::Exact(data));
            j.rename = None;
        }
        self.note(&from, format!("{op}: returned"));
        self.note(&to, format!("{op}: returned"));
        self.ack();
        Ok(())
    }

    fn unlink(&mut self, rel: PathBuf) -> Result<(), Stop> {
        let data = self.j().exact(&rel);
        self.set(
            &rel,
            Expect::OneOf(vec![Expect::Exact(data), Expect::Absent]),
        );
        self.note(&rel, "unlink: started".into());
        fs::remove_file(self.root.join(&rel)).map_err(|e| os_err("unlink", e))?;
        self.set(&rel, Expect::Absent);
        self.note(&rel, "unlink: returned".into());
        self.ack();
        Ok(())
    }

    /// truncate(2) down or up (a namespace call: acknowledged when it returns).
    fn truncate(&mut self, rel: PathBuf) -> Result<(), Stop> {
        let old = self.j().exact(&rel);
        let len = if self.rng.below(3) == 0 {
            old.len() + self.rng.below(64 * 1024) as usize
        } else {
            self.rng.below(old.len() as u64 + 1) as usize
        };
        let mut new = old.as_ref().clone();
        new.resize(len, 0);
        let new = Arc::new(new);
        let op = format!("truncate {} -> {len} bytes", old.len());
        self.set(
            &rel,
            Expect::OneOf(vec![Expect::Exact(old), Expect::Exact(new.clone())]),
        );
        self.note(&rel, format!("{op}: started"));
        let f = fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(&rel))
            .map_err(|e| os_err(&format!("{op}: open"), e))?;
        f.set_len(len as u64)
            .map_err(|e| os_err(&format!("{op}: ftruncate"), e))?;
        self.set(&rel, Expect::Exact(new.clone()));
        self.note(&rel, format!("{op}: returned"));
        self.ack();
        let fd = f.into_raw_fd();
        // SAFETY: fd is owned by us (into_raw_fd) and closed exactly once.
        if unsafe { libc::close(fd) } != 0 {
            return Err(os_err(
                &format!("{op}: close"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// chmod or setxattr of one of this worker's directories (namespace calls: acknowledged
    /// when they return). Directories are never renamed or removed, so what was acknowledged
    /// for one must be there after every crash.
    fn dir_attr(&mut self) -> Result<(), Stop> {
        let mine = PathBuf::from(format!("w{}", self.id));
        let dirs: Vec<PathBuf> = self
            .j()
            .dirs
            .iter()
            .filter(|d| d.starts_with(&mine))
            .cloned()
            .collect();
        if dirs.is_empty() {
            return self.mkdir();
        }
        let rel = self.pick(&dirs);
        let full = self.root.join(&rel);
        let mut attrs = self.j().dir_attrs.get(&rel).cloned().unwrap_or_default();
        if self.rng.below(2) == 0 {
            let old = match &attrs.modes {
                Some(m) => m[0],
                None => {
                    use std::os::unix::fs::PermissionsExt;
                    let md = fs::metadata(&full).map_err(|e| os_err("stat", e))?;
                    md.permissions().mode() & 0o7777
                }
            };
            let new = [0o700, 0o711, 0o750, 0o755, 0o775, 0o777][self.rng.below(6) as usize];
            let op = format!("chmod {new:o} (was {old:o})");
            attrs.modes = Some(vec![old, new]);
            self.j().dir_attrs.insert(rel.clone(), attrs.clone());
            self.note(&rel, format!("{op}: started"));
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&full, fs::Permissions::from_mode(new))
                .map_err(|e| os_err(&op, e))?;
            attrs.modes = Some(vec![new]);
            self.note(&rel, format!("{op}: returned"));
        } else {
            let old = match &attrs.xattrs {
                Some(x) => x[0].clone(),
                None => xattr_or_none(&full, DIR_XATTR).map_err(|e| os_err("getxattr", e))?,
            };
            let len = self.rng.below(200) as usize;
            let new = self.rng.bytes(len);
            let op = format!("setxattr {DIR_XATTR} ({len} bytes)");
            attrs.xattrs = Some(vec![old, Some(new.clone())]);
            self.j().dir_attrs.insert(rel.clone(), attrs.clone());
            self.note(&rel, format!("{op}: started"));
            set_xattr(&full, DIR_XATTR, &new, 0).map_err(|e| os_err(&op, e))?;
            attrs.xattrs = Some(vec![Some(new)]);
            self.note(&rel, format!("{op}: returned"));
        }
        self.j().dir_attrs.insert(rel, attrs);
        self.ack();
        Ok(())
    }

    fn mkdir(&mut self) -> Result<(), Stop> {
        let parent = format!("w{}", self.id);
        self.seq += 1;
        let rel = PathBuf::from(parent).join(format!("r{}-d{}", self.round, self.seq));
        self.j().maybe_dir = Some(rel.clone());
        self.note(&rel, "mkdir: started".into());
        fs::create_dir(self.root.join(&rel)).map_err(|e| os_err("mkdir", e))?;
        {
            let mut j = self.j();
            j.dirs.insert(rel.clone());
            j.maybe_dir = None;
        }
        self.note(&rel, "mkdir: returned".into());
        self.ack();
        Ok(())
    }

    fn step(&mut self) -> Result<(), Stop> {
        let live: Vec<PathBuf> = self.j().live_files();
        let roll = self.rng.below(100);
        if live.len() < 4 || roll < 45 && live.len() < 40 {
            return self.create();
        }
        let target = self.pick(&live);
        match roll {
            _ if live.len() >= 40 && roll < 30 => self.unlink(target),
            0..=54 => self.overwrite(target),
            55..=62 => self.patch(target),
            63..=72 => self.append(target),
            73..=77 => self.truncate(target),
            78..=88 => self.rename(target, &live),
            89..=94 => self.unlink(target),
            95..=96 => self.dir_attr(),
            _ => self.mkdir(),
        }
    }

    /// Runs until an operation fails (the mount was killed) or `stop` is set.
    fn run(mut self) {
        let end = loop {
            if self.stop.load(Ordering::SeqCst) {
                break None;
            }
            match self.step() {
                Ok(()) => {}
                Err(s) => {
                    break Some(WorkloadEnd {
                        errno: s.err.raw_os_error(),
                        error: s.err.to_string(),
                        op: s.op,
                        after_kill: self.killed.load(Ordering::SeqCst),
                    });
                }
            }
        };
        self.j().end = end;
    }
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// Checks the mount against the journal; returns the problems. With `adopt`, in-flight
/// outcomes become the new acknowledged state (whatever recovery made of them must then stay).
fn verify(root: &Path, j: &mut Journal, adopt: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut actual_of: BTreeMap<PathBuf, Option<Arc<Vec<u8>>>> = BTreeMap::new();
    for (rel, exp) in &j.files {
        let full = root.join(rel);
        let actual = match fs::symlink_metadata(&full) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => {
                problems.push(format!("{}: lstat failed: {e}", rel.display()));
                continue;
            }
            Ok(md) if !md.is_file() => {
                problems.push(format!("{}: not a regular file: {md:?}", rel.display()));
                continue;
            }
            Ok(md) => match fs::read(&full) {
                Ok(d) => {
                    if d.len() as u64 != md.len() {
                        problems.push(format!(
                            "{}: read {} bytes but st_size is {}",
                            rel.display(),
                            d.len(),
                            md.len()
                        ));
                    }
                    Some(Arc::new(d))
                }
                Err(e) => {
                    problems.push(format!("{}: read failed: {e}", rel.display()));
                    continue;
                }
            },
        };
        if let Some(why) = exp.check(actual.as_deref().map(|v| v.as_slice())) {
            problems.push(format!(
                "{}: {why}\n      expected: {}\n      history:\n        {}",
                rel.display(),
                exp.describe(),
                j.history
                    .get(rel)
                    .map(|h| h.join("\n        "))
                    .unwrap_or_default()
            ));
        }
        actual_of.insert(rel.clone(), actual);
    }
    // A rename is atomic: never both names gone, never both holding the file.
    if let Some(r) = &j.rename
        && let (Some(a), Some(b)) = (actual_of.get(&r.from), actual_of.get(&r.to))
    {
        let not_done = a.as_deref().map(|v| v.as_slice()) == Some(r.data.as_slice())
            && r.to_before
                .check(b.as_deref().map(|v| v.as_slice()))
                .is_none();
        let done = a.is_none() && b.as_deref().map(|v| v.as_slice()) == Some(r.data.as_slice());
        if !not_done && !done {
            problems.push(format!(
                "rename {} -> {} was in flight and is neither undone nor done: source {}, \
                 target {} (target before: {})",
                r.from.display(),
                r.to.display(),
                a.as_ref()
                    .map(|v| format!("{} bytes", v.len()))
                    .unwrap_or("absent".into()),
                b.as_ref()
                    .map(|v| format!("{} bytes", v.len()))
                    .unwrap_or("absent".into()),
                r.to_before.describe()
            ));
        }
    }
    // Directories: acknowledged ones exist; nothing unknown shows up in them.
    let mut listed = BTreeSet::new();
    let dirs: Vec<PathBuf> = j.dirs.iter().cloned().collect();
    for d in &dirs {
        match fs::read_dir(root.join(d)) {
            Err(e) => problems.push(format!(
                "directory {}: {e} (mkdir was acknowledged)",
                d.display()
            )),
            Ok(rd) => {
                for e in rd {
                    match e {
                        Err(e) => problems.push(format!("readdir {}: {e}", d.display())),
                        Ok(e) => {
                            listed.insert(d.join(e.file_name()));
                        }
                    }
                }
            }
        }
    }
    for p in &listed {
        let known_file = j.files.contains_key(p);
        let known_dir = j.dirs.contains(p) || j.maybe_dir.as_deref() == Some(p.as_path());
        if !known_file && !known_dir {
            problems.push(format!("{}: unexpected entry (never created)", p.display()));
        }
    }
    for (rel, actual) in &actual_of {
        let parent_listed = j.dirs.contains(rel.parent().unwrap());
        if parent_listed && actual.is_some() != listed.contains(rel) {
            problems.push(format!(
                "{}: lookup says {}, readdir of its directory says {}",
                rel.display(),
                if actual.is_some() {
                    "present"
                } else {
                    "absent"
                },
                if listed.contains(rel) {
                    "present"
                } else {
                    "absent"
                }
            ));
        }
    }
    // Directory modes and attributes: one of the states the journal allows.
    let mut dir_actual = Vec::new();
    for (d, attrs) in &j.dir_attrs {
        let full = root.join(d);
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(&full).map(|m| m.permissions().mode() & 0o7777)
        };
        let xattr = xattr_or_none(&full, DIR_XATTR);
        match (mode, xattr) {
            (Ok(mode), Ok(xattr)) => {
                if let Some(modes) = &attrs.modes
                    && !modes.contains(&mode)
                {
                    problems.push(format!(
                        "directory {}: mode {mode:o}, expected one of {:?}",
                        d.display(),
                        modes.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
                    ));
                }
                if let Some(xattrs) = &attrs.xattrs
                    && !xattrs.contains(&xattr)
                {
                    problems.push(format!(
                        "directory {}: {DIR_XATTR} is {:?}, expected one of {} value(s) \
                         ({} acknowledged)",
                        d.display(),
                        xattr.as_ref().map(|v| v.len()),
                        xattrs.len(),
                        if xattrs.len() == 1 {
                            "it was"
                        } else {
                            "the first was"
                        }
                    ));
                }
                dir_actual.push((d.clone(), mode, xattr));
            }
            (Err(e), _) | (_, Err(e)) => {
                problems.push(format!("directory {}: stat or getxattr: {e}", d.display()))
            }
        }
    }
    if adopt && problems.is_empty() {
        for (d, mode, xattr) in dir_actual {
            let a = j.dir_attrs.get_mut(&d).expect("checked above");
            if a.modes.is_some() {
                a.modes = Some(vec![mode]);
            }
            if a.xattrs.is_some() {
                a.xattrs = Some(vec![xattr]);
            }
        }
        for (rel, actual) in actual_of {
            let e = match actual {
                Some(d) => Expect::Exact(d),
                None => Expect::Absent,
            };
            j.files.insert(rel, e);
        }
        // Forget long-gone names (they were checked at least once).
        j.files.retain(|_, e| !matches!(e, Expect::Absent));
        j.rename = None;
        if let Some(d) = j.maybe_dir.take()
            && root.join(&d).is_dir()
        {
            j.dirs.insert(d);
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL rounds
// ---------------------------------------------------------------------------------------------

const WORKERS: usize = 3;

/// Mount options of a round: every other round has a single uploader, so more data is still
/// staged (and must be replayed) when the process dies.
fn mount_args(round: usize) -> Vec<&'static str> {
    // 1 MiB segments (every round: a log's segment size cannot change between mounts):
    // files stage their 256 KiB runs while they are still being written, into bulk segments
    // (preallocated, not zero-filled), segments fill and recycle often, and the kills land
    // in all of that.
    let mut args = vec!["--staging-segment-size", "1M"];
    if round % 2 == 1 {
        args.extend(["--upload-threads", "1"]);
    }
    args
}

/// Rounds whose workload runs while the object store is down (only on the file store, and not
/// together with staging faults, whose fallback needs the store): everything acknowledged is
/// then only in the staging log when the process dies, and the remount replays it while the
/// store is still down.
fn outage_round(round: usize, backend: Backend) -> bool {
    backend == Backend::File && round.is_multiple_of(3) && mount_env(round - 1).is_empty()
}

/// Makes the file store fail (its directory is swapped for a regular file, which even root
/// cannot write below) until `end` or drop.
struct StoreOutage {
    dir: PathBuf,
    away: PathBuf,
    active: bool,
}

impl StoreOutage {
    fn begin(dir: &Path) -> StoreOutage {
        let away = dir.with_extension("away");
        fs::rename(dir, &away).expect("move the objects directory away");
        fs::write(dir, b"the object store is down\n").expect("create the blocking file");
        StoreOutage {
            dir: dir.to_path_buf(),
            away,
            active: true,
        }
    }

    fn end(&mut self) {
        if self.active {
            self.active = false;
            fs::remove_file(&self.dir).expect("remove the blocking file");
            fs::rename(&self.away, &self.dir).expect("move the objects directory back");
        }
    }
}

impl Drop for StoreOutage {
    fn drop(&mut self) {
        if self.active {
            self.active = false;
            let _ = fs::remove_file(&self.dir);
            let _ = fs::rename(&self.away, &self.dir);
        }
    }
}

/// Rounds that SIGKILL the mount process during a clean unmount.
fn umount_round(round: usize) -> bool {
    round % 5 == 4
}

/// Every fourth round runs on a failing, tearing, slow staging device: the SIGKILL then
/// leaves torn records in the log, which replay must recognise.
fn mount_env(round: usize) -> Vec<(&'static str, &'static str)> {
    if round % 4 == 2 {
        vec![(
            "SPOOLFS_STAGING_FAULTS",
            "fail_every=5,tear_every=7,delay_us=300",
        )]
    } else {
        vec![]
    }
}

#[test]
fn crash_kill9_loses_nothing_acknowledged() {
    require_fuse!();
    let _serial = serial();
    let started = Instant::now();
    let seed = seed_from_env();
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!(
        "crash test: seed {seed} (CRASH_SEED={seed} reproduces the workload), {rounds} rounds"
    );
    let mut rng = Rng::new(seed);
    let backend = match std::env::var("CRASH_BACKEND").as_deref() {
        Ok("s3") => Backend::S3,
        _ => Backend::File,
    };
    let vol = Volume::new(backend);
    let mp = vol.new_subdir("mnt");
    let cache = vol.cache_dir();
    let logs = vol.new_subdir("logs");
    let journals: Vec<Arc<Mutex<Journal>>> = (0..WORKERS)
        .map(|_| Arc::new(Mutex::new(Journal::default())))
        .collect();

    let mut mount = start_mount(
        &vol,
        &mp,
        &cache,
        &mount_args(0),
        &mount_env(0),
        logs.join("mount-r0.log"),
    );
    // The workers' directories, acknowledged before the first kill.
    for (w, j) in journals.iter().enumerate() {
        let mut j = j.lock().unwrap();
        for d in 0..3 {
            let rel = PathBuf::from(format!("w{w}/d{d}"));
            fs::create_dir_all(mp.join(&rel)).unwrap();
            j.dirs.insert(rel);
        }
        j.dirs.insert(PathBuf::from(format!("w{w}")));
    }

    let mut total_acked = 0;
    let mut replayed_slices = 0u64;
    let mut replayed_changes = 0u64;
    for round in 1..=rounds {
        let round_start = Instant::now();
        let mut outage =
            outage_round(round, backend).then(|| StoreOutage::begin(&vol.objects_dir()));
        let killed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                {
                    let mut j = journals[w].lock().unwrap();
                    j.end = None;
                    j.acked = 0;
                    j.current.clear();
                }
                let worker = Worker {
                    id: w,
                    round,
                    root: mp.clone(),
                    journal: journals[w].clone(),
                    killed: killed.clone(),
                    stop: stop.clone(),
                    rng: Rng::new(seed ^ ((round as u64) << 20) ^ ((w as u64) << 8) ^ 0x5eed),
                    seq: 0,
                };
                std::thread::Builder::new()
                    .name(format!("crash-worker-{w}"))
                    .spawn(move || worker.run())
                    .unwrap()
            })
            .collect();
        // Mostly 50-500 ms into the workload; now and then right after the mount, while the
        // uploads of the previous round's replay are still going on.
        let delay = if rng.below(8) == 0 {
            Duration::from_millis(rng.below(50))
        } else {
            Duration::from_millis(50 + rng.below(451))
        };
        std::thread::sleep(delay);
        // No operation may have failed before the kill.
        for (w, j) in journals.iter().enumerate() {
            let j = j.lock().unwrap();
            if let Some(end) = &j.end {
                panic!(
                    "round {round}: worker {w} failed before the kill: {}: {} (errno {:?})\nmount \
                     log:\n{}",
                    end.op,
                    end.error,
                    end.errno,
                    interesting_log_lines(&mount.log_text(), &[])
                );
            }
        }
        // Some rounds kill the process during a clean unmount instead (while it uploads and
        // checkpoints); the workload has stopped then, so every operation was acknowledged.
        let mut umount_child = None;
        if umount_round(round) {
            stop.store(true, Ordering::SeqCst);
            let t = Instant::now();
            while handles.iter().any(|h| !h.is_finished()) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "round {round}: the workload did not stop within 60 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            umount_child = Some(
                vol.spoolfs()
                    .args([OsStr::new("umount"), mp.as_os_str()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start spoolfs umount"),
            );
            std::thread::sleep(Duration::from_millis(rng.below(150)));
        }
        // How the unmount had ended when the kill came (None: still running).
        let umount_before_kill = umount_child
            .as_mut()
            .and_then(|c: &mut Child| c.try_wait().ok().flatten());
        killed.store(true, Ordering::SeqCst);
        mount.sigkill();
        let killed_at = Instant::now();
        // In-flight and later calls must fail (ENOTCONN / ECONNABORTED), not hang: the dead
        // mount stays attached until the workers have ended.
        while handles.iter().any(|h| !h.is_finished()) {
            if killed_at.elapsed() > Duration::from_secs(20) {
                let stuck: Vec<String> = journals
                    .iter()
                    .map(|j| j.lock().unwrap().current.clone())
                    .collect();
                force_unmount(&mp);
                panic!(
                    "round {round}: workload still blocked 20 s after SIGKILL of the mount \
                     process; in flight: {stuck:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let unblocked = killed_at.elapsed();
        for h in handles {
            h.join().expect("worker thread panicked");
        }
        let mut acked = 0;
        let mut ends = Vec::new();
        for (w, j) in journals.iter().enumerate() {
            let j = j.lock().unwrap();
            acked += j.acked;
            let Some(end) = j.end.clone() else {
                assert!(
                    umount_round(round),
                    "round {round}: worker {w} stopped without an error"
                );
                ends.push("stopped before the unmount".to_string());
                continue;
            };
            assert!(
                end.after_kill,
                "round {round}: worker {w} failed before the kill: {end:?}"
            );
            let errno = end.errno.unwrap_or(0);
            // EIO after the kill, when spoolfs itself answered no request with EIO: the
            // kernel turns a reply into EIO when copying it from the daemon fails, which a
            // SIGKILL landing in the middle of the daemon's reply write can cause
            // (`fuse_dev_do_write`). The operation was not acknowledged either way.
            let kernel_eio = errno == libc::EIO && {
                let log = mount.log_text();
                !log.contains("errno=5") && !log.contains("panicked")
            };
            if kernel_eio {
                eprintln!(
                    "round {round}: worker {w}: `{}` failed with EIO after the kill, not from \
                     spoolfs (its log has no EIO answer): a reply cut by the kill",
                    end.op
                );
            }
            // Over FUSE over io_uring the kernel ends the requests left in a dead daemon's
            // rings with ECANCELED.
            let ring_cancelled = errno == libc::ECANCELED
                && mount.log_text().contains("mounted (FUSE over io_uring)");
            assert!(
                errno == libc::ENOTCONN
                    || errno == libc::ECONNABORTED
                    || kernel_eio
                    || ring_cancelled,
                "round {round}: worker {w}: after SIGKILL, `{}` failed with {} (errno {errno}); \
                 expected ENOTCONN or ECONNABORTED (ECANCELED over io_uring)\nmount log:\n{}",
                end.op,
                end.error,
                interesting_log_lines(&mount.log_text(), &[])
            );
            ends.push(format!("{}: {}", end.op, errno_str(errno)));
        }
        total_acked += acked;
        let old_log = mount.log_text();
        mount.reap_and_detach();
        let mut umount_note = String::new();
        if let Some(mut c) = umount_child {
            let _ = c.kill();
            let after = c.wait().ok();
            umount_note = match umount_before_kill {
                Some(s) if s.success() => " (spoolfs umount had succeeded before the kill)".into(),
                Some(s) => format!(" (spoolfs umount had failed with {s} before the kill)"),
                None => format!(
                    " (killed during spoolfs umount, which then ended with {})",
                    after.map(|s| s.to_string()).unwrap_or("?".into())
                ),
            };
        }
        // A mount needs its object store (spoolfs refuses to start without it): bring it back
        // before the remount, which then has to upload all of the round's data from the log.
        if let Some(mut o) = outage.take() {
            o.end();
        }

        mount = start_mount(
            &vol,
            &mp,
            &cache,
            &mount_args(round),
            &mount_env(round),
            logs.join(format!("mount-r{round}.log")),
        );
        let mut outage_note = String::new();
        if outage_round(round, backend) {
            let st = mount.status();
            outage_note = format!(
                " (object store down during the workload; {} slices still staged after the \
                 remount)",
                st["engine"]["staged_slices"]
            );
        }
        let new_log = mount.log_text();
        let (staged, ns_changes) = replay_counts(&new_log);
        replayed_slices += staged;
        replayed_changes += ns_changes;
        let mut problems = Vec::new();
        for j in &journals {
            let mut j = j.lock().unwrap();
            problems.extend(verify(&mp, &mut j, true));
        }
        // On a faulty staging device the remount's own writes fail too, and saying so is
        // right (a segment whose recycle failed stays out of use): only other errors count.
        let faults = !mount_env(round).is_empty();
        for line in new_log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .filter(|l| !(faults && l.contains("injected fault")))
        {
            problems.push(format!("remount log: {line}"));
        }
        if umount_before_kill.is_some_and(|s| s.success()) && staged > 0 {
            problems.push(format!(
                "spoolfs umount exited 0 (it promises that everything staged is in the object \
                 store) before the kill, yet the next mount replayed {staged} staged slices"
            ));
        }
        if !problems.is_empty() {
            let kept = keep_logs(&logs, seed);
            let n = problems.len();
            problems.truncate(20);
            panic!(
                "round {round} (seed {seed}, killed after {delay:?}): {n} problems after \
                 SIGKILL + remount:\n  {}\n--- log of the killed mount (filtered) ---\n{}\n\
                 --- log of the remount (filtered) ---\n{}\n(full logs copied to {})",
                problems.join("\n  "),
                interesting_log_lines(&old_log, &[]),
                interesting_log_lines(&new_log, &["replay", "staged", "namespace"]),
                kept.display()
            );
        }
        let files: usize = journals
            .iter()
            .map(|j| j.lock().unwrap().live_files().len())
            .sum();
        let faults_note = if mount_env(round - 1).is_empty() {
            ""
        } else {
            " (staging faults)"
        };
        eprintln!(
            "round {round:2}{faults_note}{outage_note}{umount_note}: killed after {delay:?}, \
             {acked} ops acknowledged, workers unblocked in {unblocked:?} ({}); replay: \
             {staged} staged slices, {ns_changes} namespace changes; {files} files verified; \
             round took {:?}",
            ends.join(", "),
            round_start.elapsed()
        );
    }

    // Everything must reach the object store: a clean unmount waits for the uploads, and a
    // mount with a fresh, empty cache directory cannot read anything from the staging log.
    mount.unmount();
    let fresh = vol.new_subdir("fresh-cache");
    let mount = start_mount(
        &vol,
        &mp,
        &fresh,
        &["--writeback=false"],
        &[],
        logs.join("mount-final.log"),
    );
    let status = mount.status();
    assert_eq!(
        status["engine"]["staged_slices"].as_u64(),
        Some(0),
        "fresh cache directory but staged slices: {status}"
    );
    let mut problems = Vec::new();
    let mut files = 0;
    let mut dir_attrs = 0;
    for j in &journals {
        let mut j = j.lock().unwrap();
        files += j.live_files().len();
        dir_attrs += j.dir_attrs.len();
        problems.extend(verify(&mp, &mut j, false));
    }
    assert!(
        problems.is_empty(),
        "after a clean unmount, read back with an empty cache directory (from the object \
         store): {} problems:\n  {}\n--- mount log ---\n{}",
        problems.len(),
        problems.join("\n  "),
        interesting_log_lines(&mount.log_text(), &[])
    );
    assert!(
        !vol.chunk_files().is_empty(),
        "no data objects in the store"
    );
    mount.unmount();
    eprintln!(
        "crash test: {rounds} SIGKILL rounds, {total_acked} acknowledged operations, replay \
         recovered {replayed_slices} staged slices and {replayed_changes} namespace changes, \
         {files} files and the modes and attributes of {dir_attrs} directories verified from \
         the object store, in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Staging faults
// ---------------------------------------------------------------------------------------------

/// Writes `n` files named `prefix-i` below `dir` from `threads` threads (half of them fsynced);
/// every call must succeed. Returns path → content.
fn write_files(
    root: &Path,
    prefix: &str,
    n: usize,
    threads: usize,
    seed: u64,
) -> BTreeMap<PathBuf, Arc<Vec<u8>>> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let root = root.to_path_buf();
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut out = BTreeMap::new();
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) * 0x1234_5678));
                for i in (t..n).step_by(threads) {
                    let rel = PathBuf::from(format!("d{}/{prefix}-{i}", i % 4));
                    fs::create_dir_all(root.join(rel.parent().unwrap())).unwrap();
                    let len = match rng.below(8) {
                        0 => 0,
                        1 => 4096 * (1 + rng.below(75) as usize),
                        _ => rng.below(300 * 1024 + 1) as usize,
                    };
                    let data = rng.bytes(len);
                    let mut f = fs::File::create(root.join(&rel))
                        .unwrap_or_else(|e| panic!("create {}: {e}", rel.display()));
                    let mut pos = 0;
                    while pos < data.len() {
                        let k = (1 + rng.below(128 * 1024) as usize).min(data.len() - pos);
                        f.write_all(&data[pos..pos + k])
                            .unwrap_or_else(|e| panic!("write {}: {e}", rel.display()));
                        pos += k;
                    }
                    if i % 2 == 0 {
                        f.sync_all()
                            .unwrap_or_else(|e| panic!("fsync {}: {e}", rel.display()));
                    }
                    let fd = f.into_raw_fd();
                    // SAFETY: we own fd and close it once.
                    if unsafe { libc::close(fd) } != 0 {
                        panic!(
                            "close {}: {}",
                            rel.display(),
                            std::io::Error::last_os_error()
                        );
                    }
                    out.insert(rel, Arc::new(data));
                }
                out
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for h in handles {
        all.extend(h.join().expect("writer thread failed"));
    }
    all
}

fn check_files(root: &Path, files: &BTreeMap<PathBuf, Arc<Vec<u8>>>, what: &str, log: &str) {
    let mut problems = Vec::new();
    for (rel, want) in files {
        match fs::read(root.join(rel)) {
            Err(e) => problems.push(format!("{}: {e}", rel.display())),
            Ok(got) => {
                if let Some(why) = Expect::Exact(want.clone()).check(Some(&got)) {
                    problems.push(format!("{}: {why}", rel.display()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} of {} files wrong:\n  {}\n--- mount log (filtered) ---\n{}",
        problems.len(),
        files.len(),
        problems.join("\n  "),
        interesting_log_lines(log, &["injected", "staging"])
    );
}

/// Mounts `vol` at `mp` (foreground, `cache_dir`, `extra` arguments, output in `log`), checks
/// that every one of `files` reads back (`what` names the moment in failures), unmounts.
fn check_in_new_mount(
    vol: &Volume,
    mp: &Path,
    cache_dir: &Path,
    extra: &[&str],
    log: PathBuf,
    files: &BTreeMap<PathBuf, Arc<Vec<u8>>>,
    what: &str,
) {
    let m = start_mount(vol, mp, cache_dir, extra, &[], log);
    check_files(mp, files, what, &m.log_text());
    m.unmount();
}

#[test]
fn staging_faults_lose_nothing() {
    require_fuse!();
    let (_serial, vol, mp, cache, logs) = serial_volume();
    let started = Instant::now();
    let faults = [("SPOOLFS_STAGING_FAULTS", "fail_every=5,tear_every=7")];

    // Under faults: 200 files, read back, then SIGKILL (replay must skip the torn records).
    let mut m = start_mount(&vol, &mp, &cache, &[], &faults, logs.join("a.log"));
    let mut files = write_files(&mp, "a", 200, 4, 11);
    check_files(&mp, &files, "read back under faults", &m.log_text());
    let log = m.log_text();
    let injected = log.matches("injected fault").count();
    eprintln!("mount a: {injected} log lines about injected staging faults");
    assert!(
        injected > 0,
        "SPOOLFS_STAGING_FAULTS had no visible effect (no \"injected fault\" in the log):\n{log}"
    );
    m.sigkill();
    m.reap_and_detach();

    // Same cache directory, faults again: replay, 100 more files, clean unmount.
    let m = start_mount(&vol, &mp, &cache, &[], &faults, logs.join("b.log"));
    check_files(
        &mp,
        &files,
        "after SIGKILL under faults and remount",
        &m.log_text(),
    );
    files.extend(write_files(&mp, "b", 100, 4, 12));
    check_files(
        &mp,
        &files,
        "read back under faults (second mount)",
        &m.log_text(),
    );
    m.unmount();

    // Without faults, same cache directory.
    check_in_new_mount(
        &vol,
        &mp,
        &cache,
        &[],
        logs.join("c.log"),
        &files,
        "after clean unmount, remounted without faults",
    );

    // A fresh cache directory: everything comes from the object store.
    let fresh = vol.new_subdir("fresh-cache");
    check_in_new_mount(
        &vol,
        &mp,
        &fresh,
        &["--writeback=false"],
        logs.join("d.log"),
        &files,
        "from the object store (fresh cache directory)",
    );
    eprintln!(
        "staging faults: {} files, every write succeeded and nothing was lost, in {:?}",
        files.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Object store outages
// ---------------------------------------------------------------------------------------------

/// Polls `spoolfs status` until nothing is staged any more.
fn wait_until_uploaded(m: &Mount<'_>, within: Duration) {
    let t = Instant::now();
    loop {
        let st = m.status();
        if st["engine"]["staged_slices"].as_u64() == Some(0) {
            return;
        }
        assert!(
            t.elapsed() < within,
            "still staged after {within:?}: {st}\n{}",
            interesting_log_lines(&m.log_text(), &[])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes one file (create, write, optional fsync, close); returns the first error.
fn write_one(path: &Path, data: &[u8], fsync: bool) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    if fsync {
        f.sync_all()?;
    }
    let fd = f.into_raw_fd();
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// While the object store is down, writeback keeps acknowledging (the data waits in the
/// staging log, readable), survives a SIGKILL, and reaches the store once it is back. When the
/// staging device fails too, the application gets a clean error, and what it was told was
/// written is there.
#[test]
fn object_store_outage_then_back() {
    require_fuse!();
    let (_serial, vol, mp, cache, logs) = serial_volume();
    let mut rng = Rng::new(4242);
    let mut acked: BTreeMap<PathBuf, Arc<Vec<u8>>> = BTreeMap::new();

    // 1. Store down, staging fine: everything is acknowledged and staged.
    let mut m = start_mount(&vol, &mp, &cache, &[], &[], logs.join("a.log"));
    fs::create_dir(mp.join("d")).unwrap();
    let mut outage = StoreOutage::begin(&vol.objects_dir());
    for i in 0..40 {
        let rel = PathBuf::from(format!("d/a{i}"));
        let len = 1 + rng.below(200 * 1024) as usize;
        let data = Arc::new(rng.bytes(len));
        write_one(&mp.join(&rel), &data, i % 2 == 0).unwrap_or_else(|e| {
            panic!(
                "{}: write failed while only the object store is down: {e}\n{}",
                rel.display(),
                interesting_log_lines(&m.log_text(), &[])
            )
        });
        acked.insert(rel, data);
    }
    check_files(
        &mp,
        &acked,
        "read back from staging while the store is down",
        &m.log_text(),
    );
    let st = m.status();
    assert!(
        st["engine"]["staged_slices"].as_u64().unwrap_or(0) >= 40,
        "store down, yet not everything is staged: {st}"
    );
    m.sigkill();
    m.reap_and_detach();
    outage.end();
    let m = start_mount(&vol, &mp, &cache, &[], &[], logs.join("b.log"));
    check_files(
        &mp,
        &acked,
        "after SIGKILL with everything staged",
        &m.log_text(),
    );
    wait_until_uploaded(&m, Duration::from_secs(60));
    m.unmount();

    // 2. Store down and every fourth staging write failing: those writes cannot go anywhere,
    // so the application must be told (EIO), never be told success for lost data.
    let mut m = start_mount(
        &vol,
        &mp,
        &cache,
        &["--max-staging-wait", "1"],
        &[("SPOOLFS_STAGING_FAULTS", "fail_every=4")],
        logs.join("c.log"),
    );
    let mut outage = StoreOutage::begin(&vol.objects_dir());
    let (mut ok, mut failed) = (0, 0);
    let t = Instant::now();
    for i in 0..30 {
        let rel = PathBuf::from(format!("d/c{i}"));
        let len = 1 + rng.below(100 * 1024) as usize;
        let data = Arc::new(rng.bytes(len));
        match write_one(&mp.join(&rel), &data, i % 2 == 0) {
            Ok(()) => {
                ok += 1;
                acked.insert(rel, data);
            }
            Err(e) => {
                failed += 1;
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EIO),
                    "{}: expected EIO when neither staging nor the store works, got {e}",
                    rel.display()
                );
            }
        }
    }
    eprintln!(
        "store down + failing staging: {ok} files acknowledged, {failed} reported EIO, in {:?}",
        t.elapsed()
    );
    assert!(
        failed > 0,
        "no write failed although staging and store both fail"
    );
    assert!(
        ok > 0,
        "no write was staged although only every other staging write fails"
    );
    let log = m.log_text();
    m.sigkill();
    m.reap_and_detach();
    outage.end();
    check_in_new_mount(
        &vol,
        &mp,
        &cache,
        &[],
        logs.join("d.log"),
        &acked,
        &format!(
            "acknowledged files after failing staging + store outage + SIGKILL (killed mount \
             log:\n{})",
            interesting_log_lines(&log, &["injected"])
        ),
    );
    let fresh = vol.new_subdir("fresh-cache");
    check_in_new_mount(
        &vol,
        &mp,
        &fresh,
        &[],
        logs.join("e.log"),
        &acked,
        "from the object store (fresh cache directory)",
    );
}

/// `spoolfs umount` promises that everything staged is in the object store when it returns 0.
/// If the daemon dies while it is still uploading, umount must not report success.
#[test]
fn umount_fails_if_the_daemon_dies_before_uploading() {
    require_fuse!();
    let (_serial, vol, mp, cache, logs) = serial_volume();
    let mut m = start_mount(&vol, &mp, &cache, &[], &[], logs.join("a.log"));
    let mut outage = StoreOutage::begin(&vol.objects_dir());
    let mut files = BTreeMap::new();
    for i in 0..3 {
        let rel = PathBuf::from(format!("f{i}"));
        let data = Arc::new(random_bytes(i, 150_000));
        write_one(&mp.join(&rel), &data, false).unwrap();
        files.insert(rel, data);
    }
    // The uploads cannot finish while the store is down: umount waits for them.
    let mut umount = vol
        .spoolfs()
        .args([OsStr::new("umount"), mp.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        matches!(umount.try_wait(), Ok(None)),
        "spoolfs umount returned although the object store is down and data is staged"
    );
    m.sigkill();
    let t = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = umount.try_wait() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = umount.kill();
    let out = umount.wait_with_output().unwrap();
    m.reap_and_detach();
    outage.end();
    // Nothing may be lost either way: the next mount replays the staged data.
    check_in_new_mount(
        &vol,
        &mp,
        &cache,
        &[],
        logs.join("b.log"),
        &files,
        "after the daemon died during umount",
    );
    let status = status.expect("spoolfs umount still running 20 s after its daemon died");
    assert!(
        !status.success(),
        "spoolfs umount exited 0 (\"{}\") although its daemon was killed before the staged data \
         reached the object store (the store was down); stderr: {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `spoolfs sync PATH` is the "it is in object storage now" barrier: it waits while the store
/// is down (and gives up, non-zero, at its --timeout), and returns once the data is uploaded.
#[test]
fn sync_waits_for_the_object_store() {
    require_fuse!();
    let (_serial, vol, mp, cache, logs) = serial_volume();
    let m = start_mount(&vol, &mp, &cache, &[], &[], logs.join("sync.log"));
    fs::create_dir(mp.join("d")).unwrap();
    let mut outage = StoreOutage::begin(&vol.objects_dir());
    let mut rng = Rng::new(77);
    let mut files = Vec::new();
    for i in 0..10 {
        let data = rng.bytes(50_000 + i * 1000);
        fs::write(mp.join(format!("d/f{i}")), &data).unwrap();
        files.push(data);
    }
    let out = run(
        vol.spoolfs()
            .arg("sync")
            .arg(mp.join("d"))
            .args(["--timeout", "2"]),
        Duration::from_secs(60),
    );
    out.assert_sync_timed_out("sync during an outage");
    assert!(m.status()["engine"]["staged_slices"].as_u64().unwrap_or(0) >= 10);
    outage.end();
    let out = run(
        vol.spoolfs().arg("sync").arg(mp.join("d")),
        Duration::from_secs(120),
    );
    assert!(out.success(), "sync failed once the store is back: {out:?}");
    assert_eq!(m.status()["engine"]["staged_slices"].as_u64(), Some(0));
    for (i, data) in files.iter().enumerate() {
        assert_eq!(&fs::read(mp.join(format!("d/f{i}"))).unwrap(), data);
    }
    m.unmount();
}

/// The check of a file whose pwrite was cut by the crash: only the written range may differ.
#[test]
fn a_cut_pwrite_may_change_only_its_range() {
    let old = Arc::new(vec![1u8; 100]);
    let e = Expect::Patched {
        old: old.clone(),
        at: 90,
        len: 20,
    };
    let mut done = vec![1u8; 110];
    done[90..].fill(7);
    assert_eq!(e.check(Some(&done)), None, "the completed pwrite");
    assert_eq!(e.check(Some(&old)), None, "the pwrite undone");
    let mut torn = done.clone();
    torn[95..].fill(0);
    assert_eq!(
        e.check(Some(&torn)),
        None,
        "a torn pwrite, within its range"
    );
    let mut outside = done.clone();
    outside[10] = 9;
    assert!(
        e.check(Some(&outside)).is_some(),
        "a byte outside the range changed"
    );
    assert!(
        e.check(Some(&done[..105])).is_some(),
        "a size neither old nor new"
    );
    assert!(e.check(None).is_some(), "the file vanished");
}
