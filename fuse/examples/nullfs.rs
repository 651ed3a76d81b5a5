//! nullfs: the "FUSE floor" for benchmarks.
//!
//! A FUSE file system whose root directory holds one regular file, `null`. Writes to it are
//! acknowledged at once and the data is dropped; `flush` and `fsync` succeed at once; reads
//! return zeros; `getattr` reports a large size so that fio never needs to lay the file out.
//! Every request costs one kernel round trip and no work: measuring fio through it tells how
//! much of a spoolfs latency is the FUSE protocol itself.
//!
//! It is mounted the way `spoolfs mount` mounts (default permissions, 2 FUSE threads with
//! cloned /dev/fuse descriptors, 1 MiB max write, no kernel writeback cache), so that the two
//! are measured under the same kernel behaviour.
//!
//! Usage: `nullfs MOUNTPOINT` — runs in the foreground until SIGTERM, SIGINT or SIGHUP (or an
//! external `umount`), then unmounts and exits.
//!
//! Build: `cargo build --release -p spoolfs-fuse --example nullfs`

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, Session, SessionACL,
    TimeOrNow, WriteFlags,
};
use spoolfs_fuse::{MAX_WRITE_BYTES, ask_request_sizes, block_termination_signals};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The root directory.
const ROOT_INO: u64 = 1;
/// The one file, `/null`.
const NULL_INO: u64 = 2;
const NULL_NAME: &str = "null";
/// The size `null` reports: 1 TiB, larger than any benchmark file.
const NULL_SIZE_BYTES: u64 = 1 << 40;
/// FUSE threads (as `spoolfs mount` defaults to).
const FUSE_THREADS: usize = 2;
/// Attribute and entry cache lifetime (as `spoolfs mount` defaults to).
const TTL: Duration = Duration::from_secs(1);
/// One zeroed buffer serves every read.
static ZEROS: [u8; MAX_WRITE_BYTES as usize] = [0; MAX_WRITE_BYTES as usize];

struct NullFs {
    uid: u32,
    gid: u32,
    start: SystemTime,
}

impl NullFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            ROOT_INO => (FileType::Directory, 0o755, 2, 0),
            NULL_INO => (FileType::RegularFile, 0o666, 1, NULL_SIZE_BYTES),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            // Report nothing allocated: the file holds no data.
            blocks: 0,
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The request sizes spoolfs asks for.
        ask_request_sizes(config);
        // The same request-shaping capabilities spoolfs asks for; a missing one is skipped.
        for flag in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT_INO && name == NULL_NAME {
            let attr = self.attr(NULL_INO).expect("null inode");
            reply.entry(&TTL, &attr, Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Accepted and ignored (a truncate, a chmod or a utimes changes nothing).
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            NULL_INO => reply.opened(FileHandle(0), FopenFlags::empty()),
            ROOT_INO => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    /// Only `null` exists; nothing else can be created.
    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != NULL_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        let left = NULL_SIZE_BYTES.saturating_sub(offset);
        let n = (size as u64).min(left).min(ZEROS.len() as u64) as usize;
        reply.data(&ZEROS[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (NULL_INO, FileType::RegularFile, NULL_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            // `add` returns true when the reply buffer is full.
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    // No `fsyncdir`: fuser answers ENOSYS, which the kernel takes for success (it then stops
    // sending it), as it would for a file system with nothing to make durable.
}

/// Detaches the mount (used when a plain unmount fails, e.g. EBUSY).
fn lazy_unmount(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(mount_point), None) = (args.next(), args.next()) else {
        eprintln!("usage: nullfs MOUNTPOINT");
        return ExitCode::from(2);
    };
    let mount_point = match PathBuf::from(mount_point).canonicalize() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nullfs: mount point: {e}");
            return ExitCode::FAILURE;
        }
    };

    let signals = block_termination_signals();

    let fs = NullFs {
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        start: SystemTime::now(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nullfs".into()),
        MountOption::CUSTOM("subtype=nullfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
    ];
    config.acl = SessionACL::Owner;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;

    let mut session = match Session::new(fs, &mount_point, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nullfs: cannot mount {}: {e}", mount_point.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!("nullfs: mounted on {}", mount_point.display());

    let mut unmounter = session.unmount_callable();
    let signal_mount_point = mount_point.clone();
    std::thread::Builder::new()
        .name("nullfs-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `signals` is a valid set and `sig` a valid out pointer.
            unsafe { libc::sigwait(&signals, &mut sig) };
            eprintln!("nullfs: signal {sig}; unmounting");
            if let Err(e) = unmounter.unmount() {
                eprintln!("nullfs: unmount failed ({e}); detaching");
                if let Err(e) = lazy_unmount(&signal_mount_point) {
                    eprintln!("nullfs: detach failed: {e}");
                }
            }
        })
        .expect("spawn signal thread");

    match session.run() {
        Ok(()) => {
            eprintln!("nullfs: unmounted {}", mount_point.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nullfs: session ended with error: {e}");
            ExitCode::FAILURE
        }
    }
}
