//! `fuser::Filesystem` over the engine: one engine call per request.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use spoolfs_engine::locks::{LockKind, LockRequest};
use spoolfs_engine::{
    Attr, Caller, Engine, FileKind, FsError, RenameFlags as EngineRenameFlags, SetAttr, TimeSet,
    XattrSet,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::stats::{self, Op};
use tracing::{debug, error, info, warn};

/// The largest write (and read) request we ask the kernel for.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// How much the kernel may read ahead of a sequential reader.
const MAX_READAHEAD_BYTES: u32 = 1 << 20;
/// Pending background requests (readahead, async reads) the kernel may queue.
const MAX_BACKGROUND: u16 = 64;

const XATTR_CREATE: i32 = 1;
/// The SELinux label of a file.
const SELINUX_XATTR: &[u8] = b"security.selinux";
const XATTR_REPLACE: i32 = 2;

/// The file system FUSE sees: an engine and the cache lifetimes to give the kernel.
pub struct SpoolFs {
    engine: Arc<Engine>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    /// Asked for (`--passthrough auto`); in use once the kernel agreed at init.
    passthrough_wanted: bool,
    passthrough: std::sync::atomic::AtomicBool,
    backing: std::sync::Mutex<Backing>,
    /// POSIX ACLs asked for (`--acl`).
    acl_wanted: bool,
    /// The kernel enforces POSIX ACLs (FUSE_POSIX_ACL, agreed at init).
    posix_acl: bool,
    /// Only this mount can change the volume (embedded metadata store): nothing changes
    /// behind the kernel's back, so it may keep directory listings across opens.
    exclusive: bool,
    /// `security.selinux` is stored and served (see [`crate::MountOptions::selinux_xattrs`]).
    selinux_xattrs: bool,
    /// Tells the kernel to drop what it cached of an inode the file system changed by itself;
    /// set once the session exists (none in unit tests).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// Passthrough opens: one backing id per inode, shared by its open handles.
#[derive(Default)]
struct Backing {
    by_ino: std::collections::HashMap<u64, (fuser::BackingId, usize)>,
    by_fh: std::collections::HashMap<u64, u64>,
}

impl SpoolFs {
    pub fn new(engine: Arc<Engine>, attr_ttl: Duration, entry_ttl: Duration) -> Self {
        SpoolFs {
            engine,
            attr_ttl,
            entry_ttl,
            passthrough_wanted: false,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            backing: Default::default(),
            acl_wanted: true,
            posix_acl: false,
            exclusive: false,
            selinux_xattrs: true,
            notifier: Default::default(),
        }
    }

    /// Whether only this mount can change the volume (see [`crate::MountOptions::exclusive`]).
    pub fn with_exclusive(mut self, on: bool) -> Self {
        self.exclusive = on;
        self
    }

    /// Whether `security.selinux` is stored and served, or refused with `EOPNOTSUPP` (see
    /// [`crate::MountOptions::selinux_xattrs`]).
    pub fn with_selinux_xattrs(mut self, on: bool) -> Self {
        self.selinux_xattrs = on;
        self
    }

    /// Where the session's notifier will be put once the session exists.
    pub(crate) fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages), after a change the
    /// kernel did not make itself. A kernel that no longer knows the inode answers ENOENT:
    /// nothing to drop then.
    fn invalidate_attr(&self, ino: u64) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(INodeNo(ino), -1, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            debug!(ino, "attribute invalidation refused: {e}");
        }
    }

    /// Reads of files wholly in the local data cache go straight from the kernel to the cache
    /// file (FUSE passthrough, Linux 6.9+, needs CAP_SYS_ADMIN); falls back by itself.
    pub fn with_passthrough(mut self, on: bool) -> Self {
        self.passthrough_wanted = on;
        self
    }

    /// POSIX ACLs (on by default), if the kernel supports them for FUSE.
    pub fn with_acl(mut self, on: bool) -> Self {
        self.acl_wanted = on;
        self
    }

    /// Answers a read-only open with a passthrough to the file's cache file when possible.
    /// Returns the reply back if not.
    fn open_passthrough(
        &self,
        ino: u64,
        fh: u64,
        flags: FopenFlags,
        reply: ReplyOpen,
    ) -> Option<ReplyOpen> {
        use std::sync::atomic::Ordering;
        if !self.passthrough.load(Ordering::Relaxed) {
            return Some(reply);
        }
        let mut guard = self.backing.lock().expect("backing ids");
        let backing = &mut *guard;
        let entry = match backing.by_ino.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Some(file) = self.engine.passthrough_source(ino) else {
                    return Some(reply);
                };
                match reply.open_backing(&file) {
                    Ok(id) => v.insert((id, 0)),
                    Err(e) => {
                        warn!(
                            "FUSE passthrough refused ({e}); serving reads ourselves from now on"
                        );
                        self.passthrough.store(false, Ordering::Relaxed);
                        return Some(reply);
                    }
                }
            }
        };
        entry.1 += 1;
        reply.opened_passthrough(FileHandle(fh), flags, &entry.0);
        backing.by_fh.insert(fh, ino);
        None
    }

    /// Drops a handle's share of its inode's backing id.
    fn release_passthrough(&self, fh: u64) {
        let mut backing = self.backing.lock().expect("backing ids");
        if let Some(ino) = backing.by_fh.remove(&fh)
            && let Some(entry) = backing.by_ino.get_mut(&ino)
        {
            entry.1 -= 1;
            if entry.1 == 0 {
                backing.by_ino.remove(&ino);
            }
        }
    }

    /// Runs the engine call of one FUSE request of kind `op`, counted and timed in the
    /// metrics (see [`crate::stats`]).
    /// Runs one engine call with no result and answers the kernel with its outcome.
    fn reply_empty(
        &self,
        reply: ReplyEmpty,
        op: Op,
        f: impl FnOnce(&Engine) -> Result<(), FsError>,
    ) {
        reply_empty(reply, self.call(op, f));
    }

    /// A request refused before it reaches the engine (an unsupported extended attribute):
    /// counted like any other, answered `EOPNOTSUPP`.
    fn unsupported(&self, op: Op) -> Errno {
        stats::finish(op, stats::start(), false);
        Errno::EOPNOTSUPP
    }

    fn call<T>(&self, op: Op, f: impl FnOnce(&Engine) -> Result<T, FsError>) -> Result<T, Errno> {
        let started = stats::start();
        let r = self.call_untimed(op.name(), f);
        stats::finish(op, started, r.is_ok());
        r
    }

    /// Runs one engine call. Its error becomes an errno (logged at debug level, EIO at warn);
    /// a panic inside the engine becomes EIO instead of killing a FUSE thread.
    fn call_untimed<T>(
        &self,
        op: &str,
        f: impl FnOnce(&Engine) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        match catch_unwind(AssertUnwindSafe(|| f(&self.engine))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let errno = e.errno();
                if errno == libc::EIO {
                    // One per failing request: rate limited, so a failing store cannot
                    // flood the log.
                    spoolfs_engine::warn_limited!(op, errno, "{e}");
                } else {
                    debug!(op, errno, "{e}");
                }
                Err(Errno::from_i32(errno))
            }
            Err(panic) => {
                spoolfs_engine::error_limited!(op, "engine panicked: {}", panic_message(panic));
                Err(Errno::EIO)
            }
        }
    }

    /// The caller and mode of a create. With POSIX ACLs the kernel leaves the umask to us
    /// (FUSE_DONT_MASK): the engine applies it unless the directory has a default ACL, which
    /// limits the mode instead (decided in the create's own transaction).
    fn creator(&self, req: &Request, mode: u32, umask: u32) -> (Caller, u32) {
        if self.posix_acl {
            (caller(req).with_umask(umask), mode)
        } else {
            (caller(req), mode & !umask)
        }
    }

    /// Extended attributes this mount does not support, whatever the engine stores: ACLs
    /// unless the kernel enforces them, and the SELinux label unless the mount serves it.
    fn xattr_refused(&self, name: &[u8]) -> bool {
        (!self.posix_acl && spoolfs_engine::acl::is_acl_name(name))
            || (!self.selinux_xattrs && name == SELINUX_XATTR)
    }

    fn entry(&self, reply: ReplyEntry, result: Result<Attr, Errno>) {
        match result {
            Ok(attr) => reply.entry_with_ttls(
                &self.attr_ttl,
                &self.entry_ttl,
                &to_file_attr(&attr),
                Generation(0),
            ),
            Err(e) => reply.error(e),
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The attributes of a lookup reply that says "no such name" (inode 0).
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

pub(crate) fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

/// setxattr(2) flags to the engine's mode.
pub(crate) fn xattr_mode(flags: i32) -> Result<XattrSet, Errno> {
    match flags & (XATTR_CREATE | XATTR_REPLACE) {
        0 => Ok(XattrSet::Any),
        XATTR_CREATE => Ok(XattrSet::Create),
        XATTR_REPLACE => Ok(XattrSet::Replace),
        _ => Err(Errno::EINVAL),
    }
}

/// renameat2(2) flags to the engine's; unknown bits (RENAME_WHITEOUT, ...) are EINVAL.
pub(crate) fn rename_flags(bits: u32) -> Result<EngineRenameFlags, Errno> {
    let noreplace = libc::RENAME_NOREPLACE;
    let exchange = libc::RENAME_EXCHANGE;
    if bits & !(noreplace | exchange) != 0 || bits == noreplace | exchange {
        return Err(Errno::EINVAL);
    }
    Ok(EngineRenameFlags {
        noreplace: bits & noreplace != 0,
        exchange: bits & exchange != 0,
    })
}

/// Answers a getxattr/listxattr: the size when asked for it, ERANGE when the buffer is short.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if size < len {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

/// listxattr's answer: every name followed by a NUL.
pub(crate) fn join_xattr_names(names: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for name in names {
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// A directory attribute for "." or ".." when the inode cannot be read (never cached long).
fn placeholder_dir_attr(ino: u64) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Asks for one capability; one the kernel lacks is skipped, not an error.
/// Asks the kernel for the request sizes spoolfs serves best ([`MAX_WRITE_BYTES`] writes, the
/// readahead and background queue), or the largest it allows.
pub fn ask_request_sizes(config: &mut KernelConfig) {
    if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
        let _ = config.set_max_write(max);
    }
    if let Err(max) = config.set_max_readahead(MAX_READAHEAD_BYTES) {
        let _ = config.set_max_readahead(max);
    }
    let _ = config.set_max_background(MAX_BACKGROUND);
}

fn want(config: &mut KernelConfig, flag: InitFlags, name: &str) {
    if config.add_capabilities(flag).is_err() {
        debug!("kernel does not support {name}");
    }
}

impl Filesystem for SpoolFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        ask_request_sizes(config);
        want(config, InitFlags::FUSE_ASYNC_READ, "FUSE_ASYNC_READ");
        want(config, InitFlags::FUSE_BIG_WRITES, "FUSE_BIG_WRITES");
        want(config, InitFlags::FUSE_MAX_PAGES, "FUSE_MAX_PAGES");
        want(
            config,
            InitFlags::FUSE_DO_READDIRPLUS,
            "FUSE_DO_READDIRPLUS",
        );
        want(
            config,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            "FUSE_READDIRPLUS_AUTO",
        );
        // The engine's open honours O_TRUNC, so the kernel may pass it instead of a setattr.
        want(
            config,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            "FUSE_ATOMIC_O_TRUNC",
        );
        // The engine drops set-id bits and file capabilities on write, truncate and chown
        // itself. In exchange the kernel marks inodes S_NOSEC after one check, instead of
        // asking for `security.capability` before every write: one round trip fewer each.
        want(
            config,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            "FUSE_HANDLE_KILLPRIV_V2",
        );
        // File locks are ours to keep (in the metadata, seen by every mount of a shared
        // volume): the kernel passes fcntl and OFD locks (POSIX_LOCKS) and flock (FLOCK_LOCKS).
        want(config, InitFlags::FUSE_POSIX_LOCKS, "FUSE_POSIX_LOCKS");
        want(config, InitFlags::FUSE_FLOCK_LOCKS, "FUSE_FLOCK_LOCKS");
        // Engine calls are transactions: lookups and readdirs in one directory may overlap.
        want(
            config,
            InitFlags::FUSE_PARALLEL_DIROPS,
            "FUSE_PARALLEL_DIROPS",
        );
        // Symlink targets never change; let the kernel cache them.
        want(
            config,
            InitFlags::FUSE_CACHE_SYMLINKS,
            "FUSE_CACHE_SYMLINKS",
        );
        // Drop cached pages when getattr shows the file changed (another node wrote it).
        want(
            config,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            "FUSE_AUTO_INVAL_DATA",
        );
        // Handles (name_to_handle_at, NFS re-export): the kernel finds an inode it no longer
        // caches by looking up "." in its number, and a directory's parent by "..".
        want(
            config,
            InitFlags::FUSE_EXPORT_SUPPORT,
            "FUSE_EXPORT_SUPPORT",
        );
        // POSIX ACLs: the kernel checks them and caches them; we store them, keep them in
        // step with the mode and hand default ACLs down. The umask is then ours to apply.
        self.posix_acl = self.acl_wanted
            && config
                .add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK)
                .is_ok();
        if self.acl_wanted && !self.posix_acl {
            info!("the kernel offers no FUSE POSIX ACL support; ACLs are refused");
        }
        if self.passthrough_wanted {
            let granted = config.set_max_stack_depth(1).is_ok()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
            self.passthrough
                .store(granted, std::sync::atomic::Ordering::Relaxed);
            if !granted {
                info!("the kernel offers no FUSE passthrough; reads are served by spoolfs");
            }
        }
        debug!(offered = ?config.capabilities(), "kernel FUSE capabilities");
        info!(
            "FUSE session initialised (kernel ABI {:?}, max write {} KiB, passthrough {})",
            config.kernel_abi(),
            MAX_WRITE_BYTES >> 10,
            if self.passthrough.load(std::sync::atomic::Ordering::Relaxed) {
                "on"
            } else {
                "off"
            }
        );
        Ok(())
    }

    fn destroy(&mut self) {
        info!("FUSE session ended; shutting the engine down");
        if let Err(e) = self.call_untimed("shutdown", |e| e.shutdown()) {
            error!("engine shutdown failed: {e:?}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.call(Op::Lookup, |e| e.lookup(parent.0, name.as_bytes()));
        match r {
            // A negative entry: the kernel remembers the miss for the entry lifetime, so a
            // path walk repeated at once (stat, then open) asks once. A create here replaces
            // it at once; a name made on another node shows within the lifetime.
            Err(e) if e == Errno::ENOENT && !self.entry_ttl.is_zero() => {
                reply.entry_with_ttls(
                    &Duration::ZERO,
                    &self.entry_ttl,
                    &negative_entry(),
                    Generation(0),
                );
            }
            r => self.entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _ = self.call(Op::Forget, |e| {
            e.forget(ino.0, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.call(Op::Getattr, |e| e.getattr(ino.0)) {
            Ok(attr) => reply.attr(&self.attr_ttl, &to_file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime,
            fh: fh.map(|f| f.0),
        };
        match self.call(Op::Setattr, |e| e.setattr(&caller(req), ino.0, &set)) {
            Ok(attr) => reply.attr(&self.attr_ttl, &to_file_attr(&attr)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.call(Op::Readlink, |e| e.readlink(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (who, mode) = self.creator(req, mode, umask);
        let r = self.call(Op::Mknod, |e| {
            e.mknod(&who, parent.0, name.as_bytes(), mode, rdev)
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (who, mode) = self.creator(req, mode, umask);
        let r = self.call(Op::Mkdir, |e| {
            e.mkdir(&who, parent.0, name.as_bytes(), mode)
        });
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(reply, Op::Unlink, |e| {
            e.unlink(&caller(req), parent.0, name.as_bytes())
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(reply, Op::Rmdir, |e| {
            e.rmdir(&caller(req), parent.0, name.as_bytes())
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.call(Op::Symlink, |e| {
            e.symlink(
                &caller(req),
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
            )
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let flags = match rename_flags(flags.bits()) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let r = self.call(Op::Rename, |e| {
            e.rename(
                &caller(req),
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags,
            )
        });
        reply_empty(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.call(Op::Link, |e| {
            e.link(&caller(req), ino.0, newparent.0, newname.as_bytes())
        });
        self.entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.call(Op::Open, |e| e.open_file(&caller(req), ino.0, flags.0)) {
            Ok((fh, keep_cache)) => {
                let fopen = if keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
                let reply = if read_only {
                    // Passthrough reads do not use the page cache: no cache flags with it.
                    match self.open_passthrough(ino.0, fh, FopenFlags::empty(), reply) {
                        Some(r) => r,
                        None => return,
                    }
                } else {
                    reply
                };
                reply.opened(FileHandle(fh), fopen)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.call(Op::Read, |e| e.read(ino.0, fh.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.call(Op::Write, |e| {
            e.write(&caller(req), ino.0, fh.0, offset, data)
        }) {
            Ok(n) => {
                // The engine dropped the set-id bits (FUSE_HANDLE_KILLPRIV_V2); the kernel
                // only drops its cached size and times after a write, so its cached mode
                // (permission checks use it) is dropped here, before the write returns.
                if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                    self.invalidate_attr(ino.0);
                }
                reply.written(n)
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // The data first: a lock released here lets another node read what was written.
        let flushed = self.call(Op::Flush, |e| e.flush(ino.0, fh.0));
        let released = self.call_untimed("release locks", |e| {
            e.locks().release_owner(ino.0, lock_owner.0)
        });
        reply_empty(reply, flushed.and(released));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_passthrough(fh.0);
        let released = self.call(Op::Release, |e| e.release(ino.0, fh.0));
        // flock and OFD locks belong to the open file: they go with its last close.
        let unlocked = self.call_untimed("release locks", |e| {
            e.locks()
                .release_handle(ino.0, fh.0, lock_owner.map(|o| o.0))
        });
        reply_empty(reply, released.and(unlocked));
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let found = self.call(Op::Getlk, |e| {
            let Some(kind) = LockKind::from_fcntl(typ)? else {
                return Err(FsError::new(libc::EINVAL, "F_GETLK of F_UNLCK"));
            };
            let locks = e.locks();
            Ok(locks.test(ino.0, lock_owner.0, kind, start, end)?.map(|l| {
                // A process of another node means nothing here: its number is not said.
                let pid = if l.session == locks.session_id() {
                    l.pid
                } else {
                    0
                };
                (l.start, l.end, l.kind.to_fcntl(), pid)
            }))
        });
        match found {
            Ok(Some((start, end, typ, pid))) => reply.locked(start, end, typ, pid),
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let request = match LockKind::from_fcntl(typ) {
            Ok(kind) => LockRequest {
                owner: lock_owner.0,
                fh: fh.0,
                pid,
                kind,
                start,
                end,
            },
            Err(e) => return reply.error(Errno::from_i32(e.errno())),
        };
        if request.kind != Some(LockKind::Write) {
            // An unlock (or a downgrade) lets others in: what was written under the lock must
            // be in the shared metadata by then.
            if let Err(e) = self.call(Op::Flush, |e| e.flush(ino.0, fh.0)) {
                return reply.error(e);
            }
        }
        if !sleep {
            let r = self.call(Op::Setlk, |e| match e.locks().try_set(ino.0, &request)? {
                Ok(()) => Ok(()),
                Err(_) => Err(FsError::new(libc::EAGAIN, "the range is locked")),
            });
            return reply_empty(reply, r);
        }
        // F_SETLKW waits on a thread of its own: a FUSE thread must stay free to serve the
        // unlock it waits for. The wait ends, taking nothing, once the waiting thread has a
        // signal pending (the kernel then wants the call back; a killed process needs it).
        let engine = self.engine.clone();
        let waiter = req.pid();
        let spawned = std::thread::Builder::new()
            .name("spoolfs-lockwait".into())
            .spawn(move || {
                let started = stats::start();
                let r = engine
                    .locks()
                    .set_wait(ino.0, &request, &|| signal_pending(waiter));
                stats::finish(Op::Setlk, started, r.is_ok());
                reply_empty(reply, r.map_err(|e| Errno::from_i32(e.errno())));
            });
        if let Err(e) = spawned {
            warn!("cannot start a lock wait: {e}");
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, Op::Fsync, |e| e.fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // On an exclusive volume every change to a directory goes through this kernel, which
        // then drops its cached listing: it may cache listings and keep them across opens
        // (a repeated `ls` or Python's directory scans then cost no READDIR).
        let flags = if self.exclusive {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        match self.call(Op::Opendir, |e| e.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.call(Op::Readdir, |e| e.readdir(ino.0, fh.0, offset)) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for entry in entries {
            let full = reply.add(
                INodeNo(entry.ino),
                entry.offset,
                file_type(entry.kind),
                OsStr::from_bytes(&entry.name),
            );
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // Timed as a whole: the listing and the lookup of each entry.
        let started = stats::start();
        let entries = match self.call_untimed("readdirplus", |e| e.readdir(ino.0, fh.0, offset)) {
            Ok(entries) => entries,
            Err(e) => {
                stats::finish(Op::Readdirplus, started, false);
                return reply.error(e);
            }
        };
        for entry in entries {
            let name = OsStr::from_bytes(&entry.name);
            if is_dot_or_dotdot(&entry.name) {
                // The kernel takes no lookup reference on these: report their attributes
                // without counting a lookup in the engine.
                let attr = self
                    .call_untimed("readdirplus getattr", |e| e.getattr(entry.ino))
                    .map(|a| to_file_attr(&a))
                    .unwrap_or_else(|_| placeholder_dir_attr(entry.ino));
                let ttl = Duration::ZERO;
                if reply.add(
                    INodeNo(entry.ino),
                    entry.offset,
                    name,
                    &ttl,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Each entry the kernel accepts counts as one lookup, as if it had asked for it.
            let attr =
                match self.call_untimed("readdirplus lookup", |e| e.lookup(ino.0, &entry.name)) {
                    Ok(attr) => attr,
                    // Removed since the listing was taken: leave it out.
                    Err(_) => continue,
                };
            let full = reply.add(
                INodeNo(attr.ino),
                entry.offset,
                name,
                &self.entry_ttl,
                &to_file_attr(&attr),
                Generation(0),
            );
            if full {
                // Not sent, so the kernel holds no reference: give the lookup back.
                let _ = self.call_untimed("forget", |e| {
                    e.forget(attr.ino, 1);
                    Ok(())
                });
                break;
            }
        }
        stats::finish(Op::Readdirplus, started, true);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, Op::Releasedir, |e| e.releasedir(ino.0, fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, Op::Fsyncdir, |e| e.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.call(Op::Statfs, |e| e.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        if self.xattr_refused(name.as_bytes()) {
            return reply.error(self.unsupported(Op::Setxattr));
        }
        let mode = match xattr_mode(flags) {
            Ok(m) => m,
            Err(e) => return reply.error(e),
        };
        let who = caller(req);
        let r = self.call(Op::Setxattr, |e| {
            e.setxattr(&who, ino.0, name.as_bytes(), value, mode)?;
            if name.as_bytes() == spoolfs_engine::acl::ACCESS_XATTR {
                kill_sgid_after_acl(e, &who, ino.0)?;
            }
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.xattr_refused(name.as_bytes()) {
            return reply.error(self.unsupported(Op::Getxattr));
        }
        match self.call(Op::Getxattr, |e| e.getxattr(ino.0, name.as_bytes())) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.call(Op::Listxattr, |e| e.listxattr(ino.0)) {
            Ok(mut names) => {
                names.retain(|name| !self.xattr_refused(name));
                reply_xattr(reply, size, &join_xattr_names(&names))
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.xattr_refused(name.as_bytes()) {
            return reply.error(self.unsupported(Op::Removexattr));
        }
        self.reply_empty(reply, Op::Removexattr, |e| {
            e.removexattr(&caller(req), ino.0, name.as_bytes())
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (who, mode) = self.creator(req, mode, umask);
        match self.call(Op::Create, |e| {
            e.create(&who, parent.0, name.as_bytes(), mode, flags)
        }) {
            Ok((attr, fh)) => reply.created(
                &self.entry_ttl,
                &to_file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, Op::Fallocate, |e| {
            e.fallocate(&caller(req), ino.0, fh.0, offset, length, mode)
        });
    }

    // The requests below have no meaning for spoolfs. fuser's defaults answer them too, but
    // log a warning each time: Python's `isatty` alone sends an ioctl for every file it opens.

    /// No ioctls: ENOTTY, what a file that is no terminal answers TCGETS with.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        debug!(cmd, "ioctl: ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    /// ENOSYS: the kernel then treats files as always ready and stops asking.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel then seeks (SEEK_DATA/SEEK_HOLE included) by itself from now on.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: the kernel then copies through read and write from now on.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }
}

/// Setting an access ACL clears the set-group-id bit when the caller is neither in the file's
/// group nor privileged, as on ext4 (the kernel leaves this to the file system unless it can
/// pass a flag for it, which needs a newer FUSE protocol than fuser speaks).
fn kill_sgid_after_acl(e: &Engine, who: &Caller, ino: u64) -> Result<(), FsError> {
    let attr = e.getattr(ino)?;
    if attr.perm & libc::S_ISGID as u16 == 0 || who.uid == 0 || who.gid == attr.gid {
        return Ok(());
    }
    match supplementary_groups(who.pid) {
        Some(groups) if !groups.contains(&attr.gid) => {
            let set = SetAttr {
                mode: Some((attr.perm & !(libc::S_ISGID as u16)) as u32),
                ..Default::default()
            };
            e.setattr(who, ino, &set).map(|_| ())
        }
        // Unknown (the process is gone): leave the bit.
        _ => Ok(()),
    }
}

/// The supplementary groups of process `pid` (the `Groups:` line of /proc/PID/status).
fn supplementary_groups(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    line["Groups:".len()..]
        .split_whitespace()
        .map(|g| g.parse().ok())
        .collect()
}

/// The text of a panic payload.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Answers a request that returns nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Whether thread `tid` has a signal pending that it does not block (or is gone).
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_flags() {
        assert_eq!(xattr_mode(0).unwrap(), XattrSet::Any);
        assert_eq!(xattr_mode(1).unwrap(), XattrSet::Create);
        assert_eq!(xattr_mode(2).unwrap(), XattrSet::Replace);
        assert!(xattr_mode(3).is_err());
    }

    #[test]
    fn rename_flag_bits() {
        assert_eq!(rename_flags(0).unwrap(), EngineRenameFlags::default());
        assert!(rename_flags(1).unwrap().noreplace);
        assert!(rename_flags(2).unwrap().exchange);
        assert!(rename_flags(3).is_err());
        assert!(rename_flags(4).is_err());
        assert!(rename_flags(1 | 8).is_err());
    }

    #[test]
    fn xattr_names_are_nul_terminated() {
        let names = vec![b"user.a".to_vec(), b"user.bc".to_vec()];
        assert_eq!(join_xattr_names(&names), b"user.a\0user.bc\0".to_vec());
        assert!(join_xattr_names(&[]).is_empty());
    }

    #[test]
    fn attr_conversion() {
        let now = SystemTime::now();
        let a = Attr {
            ino: 7,
            kind: FileKind::Symlink,
            perm: 0o777,
            nlink: 1,
            uid: 5,
            gid: 6,
            rdev: 0,
            size: 3,
            blocks: 1,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            blksize: 4096,
        };
        let f = to_file_attr(&a);
        assert_eq!(f.ino, INodeNo(7));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!((f.uid, f.gid, f.size, f.perm), (5, 6, 3, 0o777));
    }
}
