//! What spoolfs does for each FUSE operation, whatever the transport: the engine call, the
//! errno mapping, the attribute and entry lifetimes, the open flags, the kernel-cache
//! invalidations. The `fuser` adapter ([`crate::fs`]) and the io_uring adapter
//! ([`crate::uring`]) only decode requests and encode these answers.

use fuseuring::Errno;
use fuseuring::abi;
use fuseuring::fs::{LockOut, XattrReply};
use spoolfs_engine::locks::{LockKind, LockRequest};
use spoolfs_engine::{
    Attr, Caller, DirEntry, Engine, FileKind, FsError, RenameFlags as EngineRenameFlags, SetAttr,
    StatFs, XattrSet,
};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::stats::{self, Op};
use tracing::{debug, error, info, warn};

/// The largest write (and read) request we ask the kernel for.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// How much the kernel may read ahead of a sequential reader.
pub(crate) const MAX_READAHEAD_BYTES: u32 = 1 << 20;
/// Pending background requests (readahead, async reads) the kernel may queue.
pub(crate) const MAX_BACKGROUND: u16 = 64;

const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
/// The SELinux label of a file.
const SELINUX_XATTR: &[u8] = b"security.selinux";

/// `(abi::NAME, "NAME")` for each name: a bit and what the log calls it.
macro_rules! named_bits {
    ($($name:ident),* $(,)?) => {
        [$((abi::$name, stringify!($name))),*]
    };
}

/// The INIT capabilities spoolfs asks for on every transport (each skipped when the kernel
/// lacks it), with why. POSIX ACLs, passthrough and file locks are negotiated apart (see
/// [`SpoolFs::wants_acl`], [`SpoolFs::wants_passthrough`], [`SpoolFs::wants_lock_requests`]).
pub(crate) const WANTED_CAPABILITIES: &[(u64, &str)] = &named_bits![
    FUSE_ASYNC_READ,
    FUSE_BIG_WRITES,
    FUSE_MAX_PAGES,
    FUSE_DO_READDIRPLUS,
    FUSE_READDIRPLUS_AUTO,
    // The engine's open honours O_TRUNC, so the kernel may pass it instead of a setattr.
    FUSE_ATOMIC_O_TRUNC,
    // The engine drops set-id bits and file capabilities on write, truncate and chown
    // itself. In exchange the kernel marks inodes S_NOSEC after one check, instead of
    // asking for `security.capability` before every write: one round trip fewer each.
    FUSE_HANDLE_KILLPRIV_V2,
    // Engine calls are transactions: lookups and readdirs in one directory may overlap.
    FUSE_PARALLEL_DIROPS,
    // Symlink targets never change; let the kernel cache them.
    FUSE_CACHE_SYMLINKS,
    // Drop cached pages when getattr shows the file changed (another node wrote it).
    FUSE_AUTO_INVAL_DATA,
    // Handles (name_to_handle_at, NFS re-export): the kernel finds an inode it no longer
    // caches by looking up "." in its number, and a directory's parent by "..".
    FUSE_EXPORT_SUPPORT,
];
/// File locks kept by spoolfs (in the metadata, seen by every mount of a shared volume): the
/// kernel passes fcntl and OFD locks (POSIX_LOCKS) and flock (FLOCK_LOCKS).
pub(crate) const LOCK_CAPABILITIES: u64 = abi::FUSE_POSIX_LOCKS | abi::FUSE_FLOCK_LOCKS;
/// POSIX ACLs: the kernel checks them and caches them; we store them, keep them in step with
/// the mode and hand default ACLs down. The umask is then ours to apply (DONT_MASK).
pub(crate) const ACL_CAPABILITIES: u64 = abi::FUSE_POSIX_ACL | abi::FUSE_DONT_MASK;

/// Tells the kernel to drop what it cached of an inode: one per transport.
pub(crate) trait Invalidator: Send + Sync {
    /// Drops the cached attributes of `ino` (`offset` -1: not its pages).
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()>;
}

impl Invalidator for fuser::Notifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        fuser::Notifier::inval_inode(self, fuser::INodeNo(ino), offset, len)
    }
}

impl Invalidator for fuseuring::Notifier {
    fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        fuseuring::Notifier::inval_inode(self, ino, offset, len)
    }
}

/// Where the session's invalidator is put once the session exists.
pub(crate) type NotifierSlot = Arc<std::sync::OnceLock<Box<dyn Invalidator>>>;

/// Passthrough opens: one backing file registration per inode, shared by its open handles
/// and dropped (`Id`'s drop unregisters it) with the last of them. `Id` is the transport's
/// registration.
pub(crate) struct BackingTable<Id> {
    maps: std::sync::Mutex<BackingMaps<Id>>,
}

struct BackingMaps<Id> {
    by_ino: std::collections::HashMap<u64, (Id, usize)>,
    by_fh: std::collections::HashMap<u64, u64>,
}

impl<Id> Default for BackingTable<Id> {
    fn default() -> Self {
        BackingTable {
            maps: std::sync::Mutex::new(BackingMaps {
                by_ino: Default::default(),
                by_fh: Default::default(),
            }),
        }
    }
}

impl<Id> BackingTable<Id> {
    /// For an open of `ino` with `open_flags` just answered `opened`: when it can be passed
    /// through (see [`SpoolFs::passthrough_allowed`]), the answer to give with the inode's
    /// registration, made with `register` if it has none yet, counted for the handle.
    /// `None`: serve it ourselves (a refused registration turns passthrough off for the
    /// mount).
    pub(crate) fn open(
        &self,
        fs: &SpoolFs,
        ino: u64,
        opened: OpenAnswer,
        open_flags: i32,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<Id>,
    ) -> Option<(OpenAnswer, BackingGuard<'_, Id>)> {
        if !fs.passthrough_allowed(open_flags) {
            return None;
        }
        let mut maps = self.maps.lock().expect("backing ids");
        let entry = match maps.by_ino.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let file = fs.passthrough_source(ino)?;
                match register(&file) {
                    Ok(id) => v.insert((id, 0)),
                    Err(e) => {
                        fs.passthrough_refused(&e);
                        return None;
                    }
                }
            }
        };
        entry.1 += 1;
        maps.by_fh.insert(opened.fh, ino);
        // Passthrough reads do not use the page cache: no cache flags with it.
        let passed_through = OpenAnswer {
            fh: opened.fh,
            fopen: 0,
        };
        Some((passed_through, BackingGuard { maps, ino }))
    }

    /// Drops a handle's share of its inode's registration.
    pub(crate) fn release(&self, fh: u64) {
        let mut maps = self.maps.lock().expect("backing ids");
        if let Some(ino) = maps.by_fh.remove(&fh)
            && let Some(entry) = maps.by_ino.get_mut(&ino)
        {
            entry.1 -= 1;
            if entry.1 == 0 {
                maps.by_ino.remove(&ino);
            }
        }
    }
}

/// An inode's registration, while its table is held.
pub(crate) struct BackingGuard<'a, Id> {
    maps: std::sync::MutexGuard<'a, BackingMaps<Id>>,
    ino: u64,
}

impl<Id> BackingGuard<'_, Id> {
    pub(crate) fn id(&self) -> &Id {
        &self.maps.by_ino[&self.ino].0
    }
}

/// A name resolved to an inode, or (with `attr` None) a remembered miss.
#[derive(Debug, Clone)]
pub struct EntryAnswer {
    /// `None`: a negative entry (inode 0), kept by the kernel for `entry_ttl`.
    pub attr: Option<Attr>,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

/// An opened file or directory.
#[derive(Debug, Clone, Copy)]
pub struct OpenAnswer {
    pub fh: u64,
    /// `FOPEN_*` bits for the kernel.
    pub fopen: u32,
}

/// One entry of a readdirplus reply.
pub struct PlusEntry<'a> {
    pub name: &'a [u8],
    /// The offset a later readdirplus passes to continue after this entry.
    pub offset: u64,
    pub attr: Attr,
    /// How long the kernel may keep the name and the attributes.
    pub ttl: Duration,
}

/// A lock request as the kernel passes it (GETLK, SETLK, SETLKW).
#[derive(Debug, Clone, Copy)]
pub struct LockArgs {
    pub ino: u64,
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// The file system FUSE sees: an engine and the cache lifetimes to give the kernel.
pub struct SpoolFs {
    pub(crate) engine: Arc<Engine>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    /// Asked for (`--passthrough auto`); in use once the kernel agreed at init.
    passthrough_wanted: bool,
    pub(crate) passthrough: AtomicBool,
    /// POSIX ACLs asked for (`--acl`).
    acl_wanted: bool,
    /// The kernel enforces POSIX ACLs (FUSE_POSIX_ACL, agreed at init).
    posix_acl: AtomicBool,
    /// Only this mount can change the volume (embedded metadata store): nothing changes
    /// behind the kernel's back, so it may keep directory listings across opens.
    exclusive: bool,
    /// `security.selinux` is stored and served (see [`crate::MountOptions::selinux_xattrs`]).
    selinux_xattrs: bool,
    /// Tells the kernel to drop what it cached of an inode the file system changed by itself;
    /// set once the session exists (none in unit tests).
    notifier: NotifierSlot,
}

impl SpoolFs {
    pub fn new(engine: Arc<Engine>, attr_ttl: Duration, entry_ttl: Duration) -> Self {
        SpoolFs {
            engine,
            attr_ttl,
            entry_ttl,
            passthrough_wanted: false,
            passthrough: AtomicBool::new(false),
            acl_wanted: true,
            posix_acl: AtomicBool::new(false),
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

    /// Where the session's notifier will be put once the session exists.
    pub(crate) fn notifier_slot(&self) -> NotifierSlot {
        self.notifier.clone()
    }

    pub(crate) fn wants_acl(&self) -> bool {
        self.acl_wanted
    }

    pub(crate) fn wants_passthrough(&self) -> bool {
        self.passthrough_wanted
    }

    /// Whether the kernel should hand file locks to spoolfs: only on a shared volume, whose
    /// locks must exclude processes of other nodes. On an exclusive volume this mount is the
    /// only way in, so the kernel's own locks are the volume's, and a close then needs no
    /// FLUSH to release them (see [`Self::open`]).
    pub(crate) fn wants_lock_requests(&self) -> bool {
        !self.exclusive
    }

    pub(crate) fn posix_acl(&self) -> bool {
        self.posix_acl.load(Ordering::Relaxed)
    }

    /// Records what INIT agreed on: POSIX ACLs, passthrough, and logs the session's start.
    pub(crate) fn initialised(&self, posix_acl: bool, passthrough: bool, transport: &str) {
        self.posix_acl
            .store(self.acl_wanted && posix_acl, Ordering::Relaxed);
        if self.acl_wanted && !posix_acl {
            info!("the kernel offers no FUSE POSIX ACL support; ACLs are refused");
        }
        let passthrough = self.passthrough_wanted && passthrough;
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if self.passthrough_wanted && !passthrough {
            info!("the kernel offers no FUSE passthrough here; reads are served by spoolfs");
        }
        info!(
            "FUSE session initialised (transport {transport}, max write {} KiB, passthrough {})",
            MAX_WRITE_BYTES >> 10,
            if passthrough { "on" } else { "off" }
        );
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages), after a change the
    /// kernel did not make itself. A kernel that no longer knows the inode answers ENOENT:
    /// nothing to drop then.
    fn invalidate_attr(&self, ino: u64) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(ino, -1, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            debug!(ino, "attribute invalidation refused: {e}");
        }
    }

    /// Runs the engine call of one FUSE request of kind `op`, counted and timed in the
    /// metrics (see [`crate::stats`]).
    pub(crate) fn call<T>(
        &self,
        op: Op,
        f: impl FnOnce(&Engine) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        let started = stats::start();
        let r = self.call_untimed(op.name(), f);
        stats::finish(op, started, r.is_ok());
        r
    }

    /// Runs one engine call. Its error becomes an errno (logged at debug level, EIO at warn);
    /// a panic inside the engine becomes EIO instead of killing a FUSE thread.
    pub(crate) fn call_untimed<T>(
        &self,
        op: &str,
        f: impl FnOnce(&Engine) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        run_engine_call(&self.engine, op, f)
    }

    /// The caller and mode of a create. With POSIX ACLs the kernel leaves the umask to us
    /// (FUSE_DONT_MASK): the engine applies it unless the directory has a default ACL, which
    /// limits the mode instead (decided in the create's own transaction).
    fn creator(&self, who: Caller, mode: u32, umask: u32) -> (Caller, u32) {
        if self.posix_acl() {
            (who.with_umask(umask), mode)
        } else {
            (who, mode & !umask)
        }
    }

    /// Extended attributes this mount does not support, whatever the engine stores: ACLs
    /// unless the kernel enforces them, and the SELinux label unless the mount serves it.
    fn xattr_refused(&self, name: &[u8]) -> bool {
        (!self.posix_acl() && spoolfs_engine::acl::is_acl_name(name))
            || (!self.selinux_xattrs && name == SELINUX_XATTR)
    }

    /// Refuses a request `op` on an extended attribute this mount does not support before it
    /// reaches the engine: counted like any other, answered `EOPNOTSUPP`.
    fn check_xattr(&self, op: Op, name: &[u8]) -> Result<(), Errno> {
        if self.xattr_refused(name) {
            stats::finish(op, stats::start(), false);
            return Err(Errno(libc::EOPNOTSUPP));
        }
        Ok(())
    }

    fn entry(&self, attr: Attr) -> EntryAnswer {
        EntryAnswer {
            attr: Some(attr),
            attr_ttl: self.attr_ttl,
            entry_ttl: self.entry_ttl,
        }
    }

    /// The session ended: shuts the engine down.
    pub fn destroy(&self) {
        info!("FUSE session ended; shutting the engine down");
        if let Err(e) = self.call_untimed("shutdown", |e| e.shutdown()) {
            error!("engine shutdown failed: {e:?}");
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<EntryAnswer, Errno> {
        match self.call(Op::Lookup, |e| e.lookup(parent, name)) {
            Ok(attr) => Ok(self.entry(attr)),
            // A negative entry: the kernel remembers the miss for the entry lifetime, so a
            // path walk repeated at once (stat, then open) asks once. A create here replaces
            // it at once; a name made on another node shows within the lifetime.
            Err(e) if e == Errno::ENOENT && !self.entry_ttl.is_zero() => Ok(EntryAnswer {
                attr: None,
                attr_ttl: Duration::ZERO,
                entry_ttl: self.entry_ttl,
            }),
            Err(e) => Err(e),
        }
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        let _ = self.call(Op::Forget, |e| {
            e.forget(ino, nlookup);
            Ok(())
        });
    }

    pub fn getattr(&self, ino: u64) -> Result<(Attr, Duration), Errno> {
        self.call(Op::Getattr, |e| e.getattr(ino))
            .map(|attr| (attr, self.attr_ttl))
    }

    pub fn setattr(&self, who: Caller, ino: u64, set: &SetAttr) -> Result<(Attr, Duration), Errno> {
        self.call(Op::Setattr, |e| e.setattr(&who, ino, set))
            .map(|attr| (attr, self.attr_ttl))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.call(Op::Readlink, |e| e.readlink(ino))
    }

    pub fn mknod(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<EntryAnswer, Errno> {
        let (who, mode) = self.creator(who, mode, umask);
        self.call(Op::Mknod, |e| e.mknod(&who, parent, name, mode, rdev))
            .map(|attr| self.entry(attr))
    }

    pub fn mkdir(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<EntryAnswer, Errno> {
        let (who, mode) = self.creator(who, mode, umask);
        self.call(Op::Mkdir, |e| e.mkdir(&who, parent, name, mode))
            .map(|attr| self.entry(attr))
    }

    pub fn unlink(&self, who: Caller, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.call(Op::Unlink, |e| e.unlink(&who, parent, name))
    }

    pub fn rmdir(&self, who: Caller, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.call(Op::Rmdir, |e| e.rmdir(&who, parent, name))
    }

    pub fn symlink(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<EntryAnswer, Errno> {
        self.call(Op::Symlink, |e| e.symlink(&who, parent, name, target))
            .map(|attr| self.entry(attr))
    }

    /// `flags`: renameat2(2) flags.
    pub fn rename(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let flags = rename_flags(flags)?;
        self.call(Op::Rename, |e| {
            e.rename(&who, parent, name, new_parent, new_name, flags)
        })
    }

    pub fn link(
        &self,
        who: Caller,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<EntryAnswer, Errno> {
        self.call(Op::Link, |e| e.link(&who, ino, new_parent, new_name))
            .map(|attr| self.entry(attr))
    }

    /// Opens a file. The transport may then answer a read-only open of a cached file by
    /// passthrough.
    pub fn open(&self, who: Caller, ino: u64, flags: i32) -> Result<OpenAnswer, Errno> {
        let (fh, keep_cache) = self.call(Op::Open, |e| e.open_file(&who, ino, flags))?;
        let mut fopen = if keep_cache { abi::FOPEN_KEEP_CACHE } else { 0 };
        // A descriptor that cannot write has nothing to flush at its close, and with the
        // kernel keeping the locks (exclusive volume) nothing to unlock: its close costs no
        // round trip (an import opens and closes every module it reads).
        if !self.wants_lock_requests() && flags & libc::O_ACCMODE == libc::O_RDONLY {
            fopen |= abi::FOPEN_NOFLUSH;
        }
        Ok(OpenAnswer { fh, fopen })
    }

    /// Whether an open with these flags may be answered by passthrough: read-only, and
    /// passthrough agreed at init and not refused since.
    pub(crate) fn passthrough_allowed(&self, open_flags: i32) -> bool {
        open_flags & libc::O_ACCMODE == libc::O_RDONLY && self.passthrough.load(Ordering::Relaxed)
    }

    /// The cache file reads of `ino` can be passed through to, when it is wholly cached.
    pub(crate) fn passthrough_source(&self, ino: u64) -> Option<std::fs::File> {
        self.engine.passthrough_source(ino)
    }

    /// The kernel refused a backing file: reads are served by spoolfs from now on.
    pub(crate) fn passthrough_refused(&self, e: &std::io::Error) {
        warn!("FUSE passthrough refused ({e}); serving reads ourselves from now on");
        self.passthrough.store(false, Ordering::Relaxed);
    }

    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.call(Op::Read, |e| e.read(ino, fh, offset, size))
    }

    /// `kill_suidgid`: the kernel's FUSE_WRITE_KILL_SUIDGID write flag.
    pub fn write(
        &self,
        who: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<u32, Errno> {
        let n = self.call(Op::Write, |e| e.write(&who, ino, fh, offset, data))?;
        // The engine dropped the set-id bits (FUSE_HANDLE_KILLPRIV_V2); the kernel only
        // drops its cached size and times after a write, so its cached mode (permission
        // checks use it) is dropped here, before the write returns.
        if kill_suidgid {
            self.invalidate_attr(ino);
        }
        Ok(n)
    }

    pub fn flush(&self, ino: u64, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        // The data first: a lock released here lets another node read what was written.
        let flushed = self.call(Op::Flush, |e| e.flush(ino, fh));
        let released = self.call_untimed("release locks", |e| {
            e.locks().release_owner(ino, lock_owner)
        });
        flushed.and(released)
    }

    pub fn release(&self, ino: u64, fh: u64, lock_owner: Option<u64>) -> Result<(), Errno> {
        let released = self.call(Op::Release, |e| e.release(ino, fh));
        // flock and OFD locks belong to the open file: they go with its last close.
        let unlocked = self.call_untimed("release locks", |e| {
            e.locks().release_handle(ino, fh, lock_owner)
        });
        released.and(unlocked)
    }

    /// The conflicting lock, or the range asked about with F_UNLCK.
    pub fn getlk(&self, lock: &LockArgs) -> Result<LockOut, Errno> {
        let found = self.call(Op::Getlk, |e| {
            let Some(kind) = LockKind::from_fcntl(lock.typ)? else {
                return Err(FsError::new(libc::EINVAL, "F_GETLK of F_UNLCK"));
            };
            let locks = e.locks();
            Ok(locks
                .test(lock.ino, lock.owner, kind, lock.start, lock.end)?
                .map(|l| {
                    // A process of another node means nothing here: its number is not said.
                    let pid = if l.session == locks.session_id() {
                        l.pid
                    } else {
                        0
                    };
                    LockOut {
                        start: l.start,
                        end: l.end,
                        typ: l.kind.to_fcntl(),
                        pid,
                    }
                }))
        })?;
        Ok(found.unwrap_or(LockOut {
            start: lock.start,
            end: lock.end,
            typ: libc::F_UNLCK,
            pid: 0,
        }))
    }

    /// SETLK (`sleep` false) or SETLKW: `done` gets the outcome, at once or, for a SETLKW,
    /// from a thread of its own once the lock is taken (or the wait given up), so that the
    /// transport's thread stays free to serve the unlock it waits for. `waiter` is the
    /// thread id of the caller; the wait ends, taking nothing, once it has a signal pending
    /// (the kernel then wants the call back; a killed process needs it).
    pub fn setlk(
        &self,
        lock: &LockArgs,
        sleep: bool,
        waiter: u32,
        done: impl FnOnce(Result<(), Errno>) + Send + 'static,
    ) {
        let request = match LockKind::from_fcntl(lock.typ) {
            Ok(kind) => LockRequest {
                owner: lock.owner,
                fh: lock.fh,
                pid: lock.pid,
                kind,
                start: lock.start,
                end: lock.end,
            },
            Err(e) => return done(Err(Errno(e.errno()))),
        };
        let ino = lock.ino;
        if request.kind != Some(LockKind::Write) {
            // An unlock (or a downgrade) lets others in: what was written under the lock must
            // be in the shared metadata by then.
            if let Err(e) = self.call(Op::Flush, |e| e.flush(ino, lock.fh)) {
                return done(Err(e));
            }
        }
        if !sleep {
            return done(
                self.call(Op::Setlk, |e| match e.locks().try_set(ino, &request)? {
                    Ok(()) => Ok(()),
                    Err(_) => Err(FsError::new(libc::EAGAIN, "the range is locked")),
                }),
            );
        }
        let engine = self.engine.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce(Result<(), Errno>) + Send>>();
        let spawned = std::thread::Builder::new()
            .name("spoolfs-lockwait".into())
            .spawn(move || {
                let started = stats::start();
                let r = engine
                    .locks()
                    .set_wait(ino, &request, &|| signal_pending(waiter));
                stats::finish(Op::Setlk, started, r.is_ok());
                if let Ok(done) = rx.recv() {
                    done(r.map_err(|e| Errno(e.errno())));
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(Box::new(done));
            }
            Err(e) => {
                warn!("cannot start a lock wait: {e}");
                done(Err(Errno(libc::EAGAIN)));
            }
        }
    }

    pub fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        self.call(Op::Fsync, |e| e.fsync(ino, fh, datasync))
    }

    pub fn opendir(&self, ino: u64) -> Result<OpenAnswer, Errno> {
        let fh = self.call(Op::Opendir, |e| e.opendir(ino))?;
        // On an exclusive volume every change to a directory goes through this kernel, which
        // then drops its cached listing: it may cache listings and keep them across opens
        // (a repeated `ls` or Python's directory scans then cost no READDIR).
        let fopen = if self.exclusive {
            abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE
        } else {
            0
        };
        Ok(OpenAnswer { fh, fopen })
    }

    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>, Errno> {
        self.call(Op::Readdir, |e| e.readdir(ino, fh, offset))
    }

    /// Lists a directory with the attributes of each entry; `add` returns true when the
    /// reply is full (the entry was not added).
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(PlusEntry<'_>) -> bool,
    ) -> Result<(), Errno> {
        // Timed as a whole: the listing and the lookup of each entry.
        let started = stats::start();
        let entries = match self.call_untimed("readdirplus", |e| e.readdir(ino, fh, offset)) {
            Ok(entries) => entries,
            Err(e) => {
                stats::finish(Op::Readdirplus, started, false);
                return Err(e);
            }
        };
        for entry in entries {
            let dot = is_dot_or_dotdot(&entry.name);
            let (attr, ttl) = if dot {
                // The kernel takes no lookup reference on these: report their attributes
                // without counting a lookup in the engine.
                let attr = self
                    .call_untimed("readdirplus getattr", |e| e.getattr(entry.ino))
                    .unwrap_or_else(|_| placeholder_dir_attr(entry.ino));
                (attr, Duration::ZERO)
            } else {
                // Each entry the kernel accepts counts as one lookup, as if it had asked for it.
                match self.call_untimed("readdirplus lookup", |e| e.lookup(ino, &entry.name)) {
                    Ok(attr) => (attr, self.entry_ttl),
                    // Removed since the listing was taken: leave it out.
                    Err(_) => continue,
                }
            };
            let attr_ino = attr.ino;
            let full = add(PlusEntry {
                name: &entry.name,
                offset: entry.offset,
                attr,
                ttl,
            });
            if full {
                if !dot {
                    // Not sent, so the kernel holds no reference: give the lookup back.
                    let _ = self.call_untimed("forget", |e| {
                        e.forget(attr_ino, 1);
                        Ok(())
                    });
                }
                break;
            }
        }
        stats::finish(Op::Readdirplus, started, true);
        Ok(())
    }

    pub fn releasedir(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        self.call(Op::Releasedir, |e| e.releasedir(ino, fh))
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        self.call(Op::Fsyncdir, |e| e.fsyncdir(ino))
    }

    pub fn statfs(&self) -> Result<StatFs, Errno> {
        self.call(Op::Statfs, |e| e.statfs())
    }

    /// `flags`: setxattr(2) flags; `position` must be 0 (macOS only).
    pub fn setxattr(
        &self,
        who: Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        position: u32,
    ) -> Result<(), Errno> {
        if position != 0 {
            return Err(Errno::EINVAL);
        }
        self.check_xattr(Op::Setxattr, name)?;
        let mode = xattr_mode(flags)?;
        self.call(Op::Setxattr, |e| {
            e.setxattr(&who, ino, name, value, mode)?;
            if name == spoolfs_engine::acl::ACCESS_XATTR {
                kill_sgid_after_acl(e, &who, ino)?;
            }
            Ok(())
        })
    }

    /// `size` 0 asks for the value's size; a shorter buffer than the value is ERANGE.
    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<XattrReply, Errno> {
        self.check_xattr(Op::Getxattr, name)?;
        let value = self.call(Op::Getxattr, |e| e.getxattr(ino, name))?;
        xattr_answer(size, value)
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply, Errno> {
        let mut names = self.call(Op::Listxattr, |e| e.listxattr(ino))?;
        names.retain(|name| !self.xattr_refused(name));
        xattr_answer(size, join_xattr_names(&names))
    }

    pub fn removexattr(&self, who: Caller, ino: u64, name: &[u8]) -> Result<(), Errno> {
        self.check_xattr(Op::Removexattr, name)?;
        self.call(Op::Removexattr, |e| e.removexattr(&who, ino, name))
    }

    /// Creates and opens a file. The entry's lifetime is the entry TTL for both the name and
    /// the attributes.
    pub fn create(
        &self,
        who: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(EntryAnswer, OpenAnswer), Errno> {
        let (who, mode) = self.creator(who, mode, umask);
        let (attr, fh) = self.call(Op::Create, |e| e.create(&who, parent, name, mode, flags))?;
        Ok((
            EntryAnswer {
                attr_ttl: self.entry_ttl,
                ..self.entry(attr)
            },
            OpenAnswer { fh, fopen: 0 },
        ))
    }

    pub fn fallocate(
        &self,
        who: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.call(Op::Fallocate, |e| {
            e.fallocate(&who, ino, fh, offset, length, mode)
        })
    }

    /// No ioctls: ENOTTY, what a file that is no terminal answers TCGETS with (Python's
    /// `isatty` alone sends one for every file it opens).
    pub fn ioctl(&self, cmd: u32) -> Result<Vec<u8>, Errno> {
        debug!(cmd, "ioctl: ENOTTY");
        Err(Errno(libc::ENOTTY))
    }
}

/// Runs one engine call: its error becomes an errno (logged at debug level, EIO at warn, rate
/// limited so a failing store cannot flood the log); a panic becomes EIO.
fn run_engine_call<T>(
    engine: &Engine,
    op: &str,
    f: impl FnOnce(&Engine) -> Result<T, FsError>,
) -> Result<T, Errno> {
    match catch_unwind(AssertUnwindSafe(|| f(engine))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let errno = e.errno();
            if errno == libc::EIO {
                spoolfs_engine::warn_limited!(op, errno, "{e}");
            } else {
                debug!(op, errno, "{e}");
            }
            Err(Errno(errno))
        }
        Err(panic) => {
            spoolfs_engine::error_limited!(op, "engine panicked: {}", panic_message(panic));
            Err(Errno::EIO)
        }
    }
}

/// The answer of a getxattr/listxattr: the size when asked for it, ERANGE when the buffer is
/// short.
fn xattr_answer(size: u32, data: Vec<u8>) -> Result<XattrReply, Errno> {
    let Ok(len) = u32::try_from(data.len()) else {
        return Err(Errno(libc::E2BIG));
    };
    if size == 0 {
        Ok(XattrReply::Size(len))
    } else if size < len {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrReply::Data(data))
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
fn placeholder_dir_attr(ino: u64) -> Attr {
    let now = SystemTime::now();
    Attr {
        ino,
        kind: FileKind::Dir,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        blksize: 4096,
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

/// An attribute for the adapters' conversion tests: a symbolic link, inode 7, every time `t`.
#[cfg(test)]
pub(crate) fn sample_attr(t: SystemTime) -> Attr {
    Attr {
        kind: FileKind::Symlink,
        perm: 0o777,
        nlink: 1,
        uid: 5,
        gid: 6,
        size: 3,
        blocks: 1,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        ..placeholder_dir_attr(7)
    }
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
    fn xattr_answers_give_the_size_or_erange_or_the_bytes() {
        assert!(matches!(
            xattr_answer(0, b"abc".to_vec()),
            Ok(XattrReply::Size(3))
        ));
        assert_eq!(xattr_answer(2, b"abc".to_vec()).unwrap_err(), Errno::ERANGE);
        assert!(matches!(
            xattr_answer(3, b"abc".to_vec()),
            Ok(XattrReply::Data(d)) if d == b"abc"
        ));
    }
}
