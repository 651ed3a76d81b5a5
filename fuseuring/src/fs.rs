//! The file-system side: the [`Filesystem`] trait a transport serves, and its types.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::{self, Plain};

/// A failed operation: the errno the kernel gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

/// Result of a file-system operation.
pub type FsResult<T> = Result<T, Errno>;

/// Who made the request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Attributes of an inode, in the kernel's form.
pub type Attr = abi::Attr;

/// A name resolved to an inode: what lookup, create and mkdir return.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: Attr,
    /// How long the kernel may keep the name → inode binding.
    pub entry_ttl: Duration,
    /// How long the kernel may keep the attributes.
    pub attr_ttl: Duration,
}

/// An open file or directory handle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opened {
    /// A backing file id (FUSE passthrough), 0 for none; FOPEN_PASSTHROUGH is added with it.
    pub backing_id: i32,
    pub fh: u64,
    /// `FOPEN_*` flags for the kernel.
    pub open_flags: u32,
}

/// The attribute changes of a setattr request (`None`: unchanged).
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<(u64, u32)>,
    pub fh: Option<u64>,
}

/// A time a setattr asks for.
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(u64, u32),
}

/// File-system statistics.
pub type Statfs = abi::Kstatfs;

/// Answer to getxattr and listxattr: the value (list) size when the caller passed size 0,
/// else the bytes themselves.
#[derive(Debug, Clone)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

/// A reply buffer of directory records: each a fixed head and the name, padded to 8 bytes.
struct Records<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Records<'_> {
    /// Appends one record; false (and nothing added) when the buffer is full.
    fn push(&mut self, head: &[u8], name: &[u8]) -> bool {
        let padded = (head.len() + name.len()).next_multiple_of(8);
        if self.len + padded > self.buf.len() {
            return false;
        }
        let at = &mut self.buf[self.len..self.len + padded];
        at[..head.len()].copy_from_slice(head);
        at[head.len()..head.len() + name.len()].copy_from_slice(name);
        at[head.len() + name.len()..].fill(0);
        self.len += padded;
        true
    }
}

/// Fills a READDIR reply buffer with entries.
pub struct DirFiller<'a>(Records<'a>);

impl<'a> DirFiller<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        DirFiller(Records { buf, len: 0 })
    }

    /// Adds an entry; `next_offset` is the offset a later readdir passes to continue after
    /// it. Returns false (and adds nothing) when the reply is full.
    pub fn add(&mut self, ino: u64, next_offset: u64, file_type: u32, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let dirent = abi::Dirent {
            ino,
            off: next_offset,
            namelen: name.len() as u32,
            typ: file_type,
        };
        self.0.push(dirent.as_bytes(), name)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len
    }
}

/// Fills a READDIRPLUS reply buffer with entries and their attributes.
pub struct DirPlusFiller<'a>(Records<'a>);

impl<'a> DirPlusFiller<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        DirPlusFiller(Records { buf, len: 0 })
    }

    /// Adds an entry (the kernel takes a lookup reference on `entry.attr.ino` unless it is
    /// 0); `next_offset` as for [`DirFiller::add`]. Returns false (and adds nothing) when the
    /// reply is full.
    pub fn add(&mut self, entry: &Entry, next_offset: u64, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let record = abi::DirentplusHead {
            entry_out: crate::protocol::entry_out(entry),
            dirent: abi::Dirent {
                ino: entry.attr.ino,
                off: next_offset,
                namelen: name.len() as u32,
                typ: (entry.attr.mode & libc::S_IFMT) >> 12,
            },
        };
        self.0.push(record.as_bytes(), name)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len
    }
}

/// A byte-range (or, with `flock`, whole-file flock(2)) lock as the kernel passes it.
#[derive(Debug, Clone, Copy)]
pub struct LockIn {
    pub fh: u64,
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub pid: u32,
    /// The kernel passed FUSE_LK_FLOCK: a flock(2) lock.
    pub flock: bool,
}

/// A conflicting lock (GETLK's answer); F_UNLCK when there is none.
#[derive(Debug, Clone, Copy)]
pub struct LockOut {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// Where a reply sent after its request's handler returned goes: the transport's side.
pub(crate) trait ReplySink: Send + Sync {
    /// Sends the reply of the request `token` names (its entry, for a ring).
    fn send(&self, token: u64, header: abi::OutHeader, payload: &[u8]);
}

/// The reply to one request that is answered later, from any thread (a lock request that
/// waits). Dropped unanswered, it answers EIO, so that no request is left hanging.
pub struct LateReply {
    unique: u64,
    token: u64,
    sink: Option<Arc<dyn ReplySink>>,
}

impl LateReply {
    pub(crate) fn new(unique: u64, token: u64, sink: Arc<dyn ReplySink>) -> Self {
        LateReply {
            unique,
            token,
            sink: Some(sink),
        }
    }

    /// Answers success (no payload) or the errno.
    pub fn send(mut self, result: FsResult<()>) {
        self.finish(result);
    }

    fn finish(&mut self, result: FsResult<()>) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        let error = match result {
            Ok(()) => 0,
            Err(e) => -e.0,
        };
        let header = abi::OutHeader {
            len: size_of::<abi::OutHeader>() as u32,
            error,
            unique: self.unique,
        };
        sink.send(self.token, header, &[]);
    }
}

impl Drop for LateReply {
    fn drop(&mut self) {
        self.finish(Err(Errno::EIO));
    }
}

/// A file system served by a transport. Every method has a default answering `ENOSYS`
/// (or doing nothing, for the requests the kernel expects no answer to), so an
/// implementation provides only what it supports. Methods are called concurrently from
/// the transport's threads.
#[allow(unused_variables)]
pub trait Filesystem: Send + Sync + 'static {
    /// INIT capabilities (`FUSE_*` bits) wanted beyond the transport's own, out of those the
    /// kernel `offered`.
    fn init_flags(&self, offered: u64) -> u64 {
        0
    }
    /// The kernel's INIT was answered with the capabilities `granted`; requests follow.
    fn init(&self, granted: u64) {}
    fn lookup(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    /// The kernel dropped `nlookup` references to `ino`.
    fn forget(&self, ino: u64, nlookup: u64) {}
    fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<(Attr, Duration)> {
        Err(Errno::ENOSYS)
    }
    fn setattr(&self, caller: Caller, ino: u64, changes: &SetAttr) -> FsResult<(Attr, Duration)> {
        Err(Errno::ENOSYS)
    }
    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Err(Errno::ENOSYS)
    }
    /// `umask`: the creator's; applied by the kernel already unless FUSE_DONT_MASK was
    /// granted (then 0 is never assumed: the file system applies it).
    fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn link(&self, caller: Caller, ino: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    /// `flags`: the open(2) flags.
    fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> FsResult<(Entry, Opened)> {
        Err(Errno::ENOSYS)
    }
    fn open(&self, caller: Caller, ino: u64, flags: u32) -> FsResult<Opened> {
        Err(Errno::ENOSYS)
    }
    /// Reads into `buf` (sized as asked) and returns the bytes read.
    fn read(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        Err(Errno::ENOSYS)
    }
    /// `write_flags`: `FUSE_WRITE_*` bits (FUSE_WRITE_KILL_SUIDGID).
    fn write(
        &self,
        caller: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        write_flags: u32,
    ) -> FsResult<u32> {
        Err(Errno::ENOSYS)
    }
    fn flush(&self, ino: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    /// `lock_owner`: given when the kernel asks for the owner's flock locks to be dropped
    /// (FUSE_RELEASE_FLOCK_UNLOCK).
    fn release(&self, ino: u64, fh: u64, flags: u32, lock_owner: Option<u64>) -> FsResult<()> {
        Ok(())
    }
    fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn opendir(&self, ino: u64) -> FsResult<Opened> {
        Err(Errno::ENOSYS)
    }
    fn readdir(&self, ino: u64, fh: u64, offset: u64, out: &mut DirFiller<'_>) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    /// Every entry added with a nonzero inode counts as a lookup of it.
    fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirPlusFiller<'_>,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn releasedir(&self, ino: u64, fh: u64) -> FsResult<()> {
        Ok(())
    }
    fn fsyncdir(&self, ino: u64, fh: u64, datasync: bool) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn unlink(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn rmdir(&self, caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    /// `flags`: renameat2(2) flags.
    fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn statfs(&self, ino: u64) -> FsResult<Statfs> {
        Err(Errno::ENOSYS)
    }
    fn access(&self, caller: Caller, ino: u64, mask: u32) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    /// `flags`: setxattr(2) flags.
    fn setxattr(
        &self,
        caller: Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        Err(Errno::ENOSYS)
    }
    fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        Err(Errno::ENOSYS)
    }
    fn removexattr(&self, caller: Caller, ino: u64, name: &OsStr) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn getlk(&self, caller: Caller, ino: u64, lock: &LockIn) -> FsResult<LockOut> {
        Err(Errno::ENOSYS)
    }
    /// SETLK (`sleep` false) and SETLKW. The answer goes through `reply`, at once or later
    /// from another thread: a SETLKW that waits must not hold the transport's thread, which
    /// may be the one to serve the unlock it waits for.
    fn setlk(&self, caller: Caller, ino: u64, lock: &LockIn, sleep: bool, reply: LateReply) {
        reply.send(Err(Errno::ENOSYS))
    }
    /// `mode`: fallocate(2) mode bits.
    fn fallocate(
        &self,
        caller: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    /// An ioctl without data in or out: its result (0 on success).
    fn ioctl(&self, ino: u64, fh: u64, cmd: u32) -> FsResult<i32> {
        Err(Errno::ENOSYS)
    }
}
