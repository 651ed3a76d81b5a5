//! Mounting: options, the checks made on the mount point, foreground and background sessions.

use crate::fs::FuserFs;
use crate::ops::{MAX_READAHEAD_BYTES, MAX_WRITE_BYTES, SpoolFs};
use crate::uring::UringFs;
use fuser::{Config, MountOption, SessionACL};
use spoolfs_engine::Engine;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How to mount a volume.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Threads reading FUSE requests (each with its own cloned /dev/fuse descriptor).
    pub fuse_threads: usize,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache name lookups.
    pub entry_ttl: Duration,
    /// Let users other than the one who mounted use the file system.
    pub allow_other: bool,
    pub read_only: bool,
    /// Mounted `noatime` (shown in /proc/mounts; the engine applies the atime rule).
    pub noatime: bool,
    /// POSIX ACLs, where the kernel supports them for FUSE.
    pub acl: bool,
    /// The "source" shown in /proc/mounts (fuse.spoolfs type), e.g. the volume name.
    pub fs_name: String,
    /// Serve reads of cached, unchanged files by FUSE passthrough when the kernel allows it.
    pub passthrough: bool,
    /// The kernel's noexec: programs on the mount cannot be executed.
    pub noexec: bool,
    /// Honour set-user-id/set-group-id bits (otherwise nosuid, the default of FUSE mounts).
    pub suid: bool,
    /// Honour device files (otherwise nodev, the default of FUSE mounts).
    pub dev: bool,
    /// Only this mount can change the volume (an embedded metadata store, which one process
    /// at a time can open): the kernel may keep directory listings across opens. The caller
    /// picks the TTLs to match (see [`EXCLUSIVE_CACHE_TTL`]).
    pub exclusive: bool,
    /// Store and serve `security.selinux` like any other extended attribute. When false its
    /// get, set and remove are `EOPNOTSUPP` and listings leave it out, as on a file system
    /// without security labels: `ls -l` and other label readers then stop asking for it (they
    /// remember a device that refused once), which saves one request per file listed. The
    /// default is [`host_has_selinux`].
    pub selinux_xattrs: bool,
    /// How requests travel between the kernel and spoolfs.
    pub transport: FuseTransport,
    /// Requests in flight per io_uring queue (one queue per possible CPU), each holding a
    /// buffer of the largest request (1 MiB). A lock request that waits (F_SETLKW) holds one
    /// until it is answered.
    pub ring_depth: usize,
}

/// How FUSE requests travel: over io_uring (Linux 6.14+, the fuse module's `enable_uring`
/// on, root) or by read(2)/write(2) on /dev/fuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FuseTransport {
    /// io_uring when the kernel offers it, else /dev/fuse (the log says which, and why).
    #[default]
    Auto,
    /// io_uring, or the mount fails saying why.
    Uring,
    /// /dev/fuse.
    Dev,
}

impl std::str::FromStr for FuseTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FuseTransport::Auto),
            "uring" => Ok(FuseTransport::Uring),
            "dev" => Ok(FuseTransport::Dev),
            _ => Err(format!("unknown FUSE transport {s:?} (auto, uring or dev)")),
        }
    }
}

impl std::fmt::Display for FuseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FuseTransport::Auto => "auto",
            FuseTransport::Uring => "uring",
            FuseTransport::Dev => "dev",
        })
    }
}

/// Why FUSE over io_uring cannot serve a mount here, if it cannot (checked before mounting;
/// INIT may still refuse it).
pub fn uring_unavailable() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting with io_uring needs root".into());
    }
    fuseuring::session::uring_unavailable()
}

/// The attribute and entry cache lifetime of `--attr-ttl auto`/`--entry-ttl auto` on an
/// exclusive volume. Nothing changes such a volume behind the kernel's back (what the daemon
/// changes by itself it invalidates), so the lifetime only bounds the damage of a change the
/// kernel missed; an hour is far longer than any workload waits between two looks at a name
/// (so `pip` and `import` never ask twice), and still a bound.
pub const EXCLUSIVE_CACHE_TTL: Duration = Duration::from_secs(3600);
/// The same lifetimes on a shared volume: how long a change made on another node may stay
/// unseen here.
pub const SHARED_CACHE_TTL: Duration = Duration::from_secs(1);

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fuse_threads: 2,
            attr_ttl: SHARED_CACHE_TTL,
            entry_ttl: SHARED_CACHE_TTL,
            allow_other: false,
            read_only: false,
            noatime: false,
            acl: true,
            fs_name: "spoolfs".into(),
            passthrough: false,
            noexec: false,
            suid: false,
            dev: false,
            exclusive: false,
            transport: FuseTransport::Auto,
            ring_depth: 2,
            selinux_xattrs: host_has_selinux(),
        }
    }
}

/// Whether SELinux is enabled on this host, so that file labels (`security.selinux`) mean
/// something here. The kernel registers the `selinuxfs` file system (and makes
/// `/sys/fs/selinux`, where it is mounted) only when SELinux was enabled at boot, and it can no
/// longer be turned off at run time: either sign, in this mount namespace, says it is on. A
/// host that merely has the userspace libraries, or SELinux in permissive mode, counts as on.
pub fn host_has_selinux() -> bool {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .map(|list| lists_selinuxfs(&list))
        .unwrap_or(false);
    registered || Path::new("/sys/fs/selinux").is_dir()
}

/// Whether a `/proc/filesystems` listing has `selinuxfs` (as `nodev\tselinuxfs`).
fn lists_selinuxfs(list: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().last() == Some("selinuxfs"))
}

impl MountOptions {
    fn fuser_config(&self) -> Config {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(self.fs_name.clone()),
            // fuser passes `Subtype` only to fusermount; as a kernel option the subtype also
            // reaches mount(2), so /proc/mounts shows "fuse.spoolfs" either way.
            MountOption::CUSTOM("subtype=spoolfs".into()),
            MountOption::DefaultPermissions,
            if self.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        // fuser mounts nosuid,nodev unless told otherwise; say so explicitly either way, so
        // the kernel mount's options are exactly what was asked for.
        config.mount_options.extend([
            if self.noexec {
                MountOption::NoExec
            } else {
                MountOption::Exec
            },
            if self.suid {
                MountOption::Suid
            } else {
                MountOption::NoSuid
            },
            if self.dev {
                MountOption::Dev
            } else {
                MountOption::NoDev
            },
        ]);
        if self.noatime {
            config.mount_options.push(MountOption::NoAtime);
        }
        config.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(self.fuse_threads.max(1));
        config.clone_fd = true;
        config
    }

    /// The same mount for the io_uring transport.
    fn uring_config(&self) -> fuseuring::Config {
        let mut flags: libc::c_ulong = 0;
        let mut set = |on: bool, flag: libc::c_ulong| {
            if on {
                flags |= flag;
            }
        };
        set(self.read_only, libc::MS_RDONLY);
        set(self.noexec, libc::MS_NOEXEC);
        set(!self.suid, libc::MS_NOSUID);
        set(!self.dev, libc::MS_NODEV);
        set(self.noatime, libc::MS_NOATIME);
        fuseuring::Config {
            transport: fuseuring::TransportChoice::Uring,
            // The one thread reading what still comes through /dev/fuse (FORGET, INTERRUPT).
            dev_threads: 1,
            ring_depth: self.ring_depth,
            max_write: MAX_WRITE_BYTES,
            max_readahead: MAX_READAHEAD_BYTES,
            pin_queues: true,
            allow_other: self.allow_other,
            fsname: self.fs_name.clone(),
            subtype: Some("spoolfs".into()),
            mount_flags: flags,
        }
    }
}

/// Why a volume could not be mounted. Each message names the mount point.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("mount point {} is not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("mount point {} is not empty", .0.display())]
    NotEmpty(PathBuf),
    #[error("{} is already a mount point (unmount it first)", .0.display())]
    AlreadyMounted(PathBuf),
    #[error(
        "mount point {} is a dead FUSE mount (transport endpoint is not connected); \
         run `umount -l {}` first",
        .0.display(), .0.display()
    )]
    Stale(PathBuf),
    #[error("mount point {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot mount FUSE file system at {}: {source}", path.display())]
    Fuse { path: PathBuf, source: io::Error },
    #[error("cannot mount {} with --fuse-transport uring: {why}", path.display())]
    UringUnavailable { path: PathBuf, why: String },
}

fn io_err(path: &Path, source: io::Error) -> MountError {
    match source.kind() {
        io::ErrorKind::NotFound => MountError::NotFound(path.to_path_buf()),
        _ if source.raw_os_error() == Some(libc::ENOTCONN) => MountError::Stale(path.to_path_buf()),
        _ => MountError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Checks that `path` can be mounted on: it exists, is a directory, is empty and is not
/// already a mount point. Returns its canonical path.
pub fn check_mount_point(path: &Path) -> Result<PathBuf, MountError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if !meta.is_dir() {
        return Err(MountError::NotDir(path.to_path_buf()));
    }
    let canonical = path.canonicalize().map_err(|e| io_err(path, e))?;
    if is_mount_point(&canonical).map_err(|e| io_err(path, e))? {
        return Err(MountError::AlreadyMounted(canonical));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|e| io_err(path, e))?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(canonical));
    }
    Ok(canonical)
}

/// Whether the canonical `path` is a mount point: its device differs from its parent's, or
/// /proc/self/mountinfo lists it (a bind mount of the same file system).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let Some(parent) = path.parent() else {
        return Ok(true); // "/"
    };
    let dev = std::fs::metadata(path)?.dev();
    let parent_dev = std::fs::metadata(parent)?.dev();
    if dev != parent_dev {
        return Ok(true);
    }
    Ok(read_mountinfo()
        .unwrap_or_default()
        .iter()
        .any(|m| m.mount_point == path))
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// e.g. "fuse.spoolfs", "ext4".
    pub fs_type: String,
    /// The mount source (for spoolfs: the `fs_name`).
    pub source: String,
}

/// The mounts visible to this process, in mount order.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo text (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if sep < 6 || fields.len() < sep + 3 {
            continue;
        }
        out.push(MountEntry {
            mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(fields[4]))),
            fs_type: String::from_utf8_lossy(&unescape(fields[sep + 1])).into_owned(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
        });
    }
    out
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (field[i + 1] - b'0') as u32 * 64
                + (field[i + 2] - b'0') as u32 * 8
                + (field[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// A mounted file system whose request loop has not started yet (over /dev/fuse) or runs
/// already (over io_uring, whose queues start with the mount). The kernel handshake is done
/// when [`FuseSession::new`] returns, so the mount is visible and ready from that point.
pub struct FuseSession {
    inner: Session,
    mount_point: PathBuf,
}

enum Session {
    Dev(fuser::Session<FuserFs>),
    Uring {
        session: fuseuring::Session,
        fs: Arc<UringFs>,
    },
}

impl FuseSession {
    /// Checks the mount point, mounts and completes the FUSE handshake.
    pub fn new(
        engine: Arc<Engine>,
        mount_point: &Path,
        options: &MountOptions,
    ) -> Result<Self, MountError> {
        let canonical = check_mount_point(mount_point)?;
        let make_fs = || {
            SpoolFs::new(engine.clone(), options.attr_ttl, options.entry_ttl)
                .with_passthrough(options.passthrough)
                .with_acl(options.acl)
                .with_exclusive(options.exclusive)
                .with_selinux_xattrs(options.selinux_xattrs)
        };
        let use_uring = match options.transport {
            FuseTransport::Dev => false,
            FuseTransport::Uring => match uring_unavailable() {
                None => true,
                Some(why) => {
                    return Err(MountError::UringUnavailable {
                        path: canonical,
                        why,
                    });
                }
            },
            FuseTransport::Auto => match uring_unavailable() {
                None => true,
                Some(why) => {
                    info!("FUSE over io_uring unavailable ({why}); serving over /dev/fuse");
                    false
                }
            },
        };
        if use_uring {
            match Self::mount_uring(make_fs(), &canonical, options) {
                Ok(session) => return Ok(session),
                Err(e) if options.transport == FuseTransport::Auto => {
                    warn!("{e}; serving over /dev/fuse");
                }
                Err(e) => return Err(e),
            }
        }
        let fs = make_fs();
        let notifier = fs.notifier_slot();
        let session = fuser::Session::new(FuserFs::new(fs), &canonical, &options.fuser_config())
            .map_err(|source| MountError::Fuse {
                path: canonical.clone(),
                source,
            })?;
        let _ = notifier.set(Box::new(session.notifier()));
        info!(
            mount_point = %canonical.display(),
            threads = options.fuse_threads,
            transport = "dev",
            "mounted (FUSE over /dev/fuse)"
        );
        Ok(FuseSession {
            inner: Session::Dev(session),
            mount_point: canonical,
        })
    }

    fn mount_uring(
        fs: SpoolFs,
        canonical: &Path,
        options: &MountOptions,
    ) -> Result<Self, MountError> {
        let notifier = fs.notifier_slot();
        let fs = Arc::new(UringFs::new(fs));
        let session =
            fuseuring::mount(fs.clone(), canonical, &options.uring_config()).map_err(|e| {
                MountError::UringUnavailable {
                    path: canonical.to_path_buf(),
                    why: e.to_string(),
                }
            })?;
        match session.notifier() {
            Ok(n) => {
                let _ = fs.notifier.set(n.clone());
                let _ = notifier.set(Box::new(n));
            }
            Err(e) => warn!("no kernel cache notifications or passthrough on this mount: {e}"),
        }
        info!(
            mount_point = %canonical.display(),
            queues = fuseuring::mount::possible_cpus(),
            ring_depth = options.ring_depth,
            transport = "uring",
            "mounted (FUSE over io_uring)"
        );
        Ok(FuseSession {
            inner: Session::Uring { session, fs },
            mount_point: canonical.to_path_buf(),
        })
    }

    /// The canonical mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The transport serving requests: [`FuseTransport::Uring`] or [`FuseTransport::Dev`].
    pub fn transport(&self) -> FuseTransport {
        match self.inner {
            Session::Dev(_) => FuseTransport::Dev,
            Session::Uring { .. } => FuseTransport::Uring,
        }
    }

    /// A handle another thread (a signal handler) can use to unmount.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: match &mut self.inner {
                Session::Dev(s) => Some(s.unmount_callable()),
                Session::Uring { .. } => None,
            },
            mount_point: self.mount_point.clone(),
        }
    }

    /// Serves requests until the file system is unmounted; then shuts the engine down.
    pub fn run(self) -> io::Result<()> {
        let result = match self.inner {
            Session::Dev(session) => session.run(),
            Session::Uring { session, fs } => {
                let stats = session.stats();
                session.wait();
                log_uring_counts(&stats);
                fs.fs.destroy();
                Ok(())
            }
        };
        info!(mount_point = %self.mount_point.display(), "unmounted");
        result
    }

    /// Serves requests on background threads.
    pub fn spawn(self) -> io::Result<BackgroundMount> {
        let mount_point = self.mount_point.clone();
        let session = match self.inner {
            Session::Dev(session) => Background::Dev(session.spawn()?),
            Session::Uring { session, fs } => Background::Uring { session, fs },
        };
        Ok(BackgroundMount {
            session: Some(session),
            mount_point,
        })
    }
}

/// Says how many requests an io_uring session served through its rings and through
/// /dev/fuse (FORGET, INTERRUPT: no reply).
fn log_uring_counts(stats: &fuseuring::session::Stats) {
    let (ring, dev) = stats.counts();
    info!(
        "FUSE over io_uring served {ring} requests through its rings and {dev} through /dev/fuse"
    );
}

/// Unmounts a [`FuseSession`] from another thread.
pub struct Unmounter {
    /// fuser's own unmounter (over /dev/fuse); over io_uring a plain umount2(2) does.
    inner: Option<fuser::SessionUnmounter>,
    mount_point: PathBuf,
}

impl Unmounter {
    /// Unmounts. If files are still open (EBUSY), detaches the mount instead (lazy unmount):
    /// the session then ends when the last of them is closed.
    pub fn unmount(&mut self) -> io::Result<()> {
        if self.try_unmount()? {
            return Ok(());
        }
        self.detach()
    }

    /// A plain unmount: `Ok(false)` if files are still open (EBUSY) and nothing was done.
    pub fn try_unmount(&mut self) -> io::Result<bool> {
        let result = match &mut self.inner {
            Some(inner) => inner.unmount(),
            None => umount2(&self.mount_point, 0),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Detaches the mount (lazy unmount): the session ends when the last open file is closed.
    pub fn detach(&mut self) -> io::Result<()> {
        warn!(
            mount_point = %self.mount_point.display(),
            "file system busy; detaching it (lazy unmount)"
        );
        umount2(&self.mount_point, libc::MNT_DETACH)
    }
}

fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string.
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A file system served on background threads; unmounted when dropped.
pub struct BackgroundMount {
    session: Option<Background>,
    mount_point: PathBuf,
}

enum Background {
    Dev(fuser::BackgroundSession),
    Uring {
        session: fuseuring::Session,
        fs: Arc<UringFs>,
    },
}

impl Background {
    /// Unmounts and waits for the session (and the engine's shutdown) to finish.
    fn umount_and_join(self) -> io::Result<()> {
        match self {
            Background::Dev(s) => s.umount_and_join(),
            Background::Uring { session, fs } => {
                let stats = session.stats();
                let result = session.unmount();
                log_uring_counts(&stats);
                fs.fs.destroy();
                result
            }
        }
    }
}

impl BackgroundMount {
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Over io_uring: the requests served so far through the rings, and the replies written
    /// to /dev/fuse (none expected: what comes that way needs no reply).
    pub fn uring_counts(&self) -> Option<(u64, u64)> {
        match &self.session {
            Some(Background::Uring { session, .. }) => {
                let stats = session.stats();
                let replies = stats.dev_replies.load(std::sync::atomic::Ordering::Relaxed);
                Some((stats.counts().0, replies))
            }
            _ => None,
        }
    }

    /// The transport serving requests: [`FuseTransport::Uring`] or [`FuseTransport::Dev`].
    pub fn transport(&self) -> FuseTransport {
        match self.session {
            Some(Background::Uring { .. }) => FuseTransport::Uring,
            _ => FuseTransport::Dev,
        }
    }

    /// Unmounts and waits for the session (and the engine's shutdown) to finish.
    pub fn umount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            warn!(mount_point = %self.mount_point.display(), "unmount failed: {e}");
        }
    }
}

/// Mounts and serves requests until the file system is unmounted.
pub fn mount_foreground(
    engine: Arc<Engine>,
    mount_point: &Path,
    options: &MountOptions,
) -> Result<(), MountError> {
    let session = FuseSession::new(engine, mount_point, options)?;
    let path = session.mount_point().to_path_buf();
    session
        .run()
        .map_err(|source| MountError::Fuse { path, source })
}

/// Mounts and serves requests on background threads; returns once the mount is ready.
pub fn mount_background(
    engine: Arc<Engine>,
    mount_point: &Path,
    options: &MountOptions,
) -> Result<BackgroundMount, MountError> {
    let session = FuseSession::new(engine, mount_point, options)?;
    let path = session.mount_point().to_path_buf();
    session
        .spawn()
        .map_err(|source| MountError::Fuse { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selinuxfs_in_the_filesystem_list() {
        assert!(lists_selinuxfs("nodev\tsysfs\nnodev\tselinuxfs\n\text4\n"));
        assert!(!lists_selinuxfs("nodev\tsysfs\n\text4\nnodev\tfuse\n"));
        // A name that merely contains it is another file system.
        assert!(!lists_selinuxfs("nodev\tnotselinuxfs\n"));
        assert!(!lists_selinuxfs(""));
    }

    #[test]
    fn mount_point_checks() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = check_mount_point(&missing).unwrap_err();
        assert!(matches!(err, MountError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = check_mount_point(&file).unwrap_err();
        assert!(matches!(err, MountError::NotDir(_)), "{err}");

        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"x").unwrap();
        let err = check_mount_point(&full).unwrap_err();
        assert!(matches!(err, MountError::NotEmpty(_)), "{err}");
        assert!(err.to_string().contains("full"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            check_mount_point(&empty).unwrap(),
            empty.canonicalize().unwrap()
        );

        let err = check_mount_point(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, MountError::AlreadyMounted(_)), "{err}");
        let err = check_mount_point(Path::new("/")).unwrap_err();
        assert!(matches!(err, MountError::AlreadyMounted(_)), "{err}");
    }

    #[test]
    fn mountinfo_parsing() {
        let text = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
            95 22 0:50 / /tmp/my\\040mnt rw,relatime shared:5 - fuse.spoolfs vol1 rw,user_id=0\n\
            garbage line\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/tmp/my mnt"));
        assert_eq!(mounts[1].fs_type, "fuse.spoolfs");
        assert_eq!(mounts[1].source, "vol1");
        assert_eq!(mounts[0].fs_type, "proc");
    }

    #[test]
    fn fuser_config_options() {
        let mut o = MountOptions {
            fs_name: "vol".into(),
            ..Default::default()
        };
        let c = o.fuser_config();
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(c.mount_options.contains(&MountOption::FSName("vol".into())));
        assert!(
            c.mount_options
                .contains(&MountOption::CUSTOM("subtype=spoolfs".into()))
        );
        assert!(!c.mount_options.contains(&MountOption::NoAtime));
        assert_eq!(c.acl, SessionACL::Owner);
        assert_eq!(c.n_threads, Some(2));
        o.allow_other = true;
        o.read_only = true;
        let c = o.fuser_config();
        assert_eq!(c.acl, SessionACL::All);
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(c.mount_options.contains(&MountOption::NoSuid));
        assert!(c.mount_options.contains(&MountOption::NoDev));
        assert!(c.mount_options.contains(&MountOption::Exec));
        o.noexec = true;
        o.suid = true;
        o.dev = true;
        let c = o.fuser_config();
        assert!(c.mount_options.contains(&MountOption::NoExec));
        assert!(c.mount_options.contains(&MountOption::Suid));
        assert!(c.mount_options.contains(&MountOption::Dev));
        assert!(!c.mount_options.contains(&MountOption::NoSuid));
    }
}
