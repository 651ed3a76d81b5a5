//! The file-system side: the [`Filesystem`] trait a transport serves, and its types.

use std::ffi::OsStr;
use std::fmt;
use std::time::Duration;

use crate::abi;

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

/// Fills a READDIR reply buffer with entries.
pub struct DirFiller<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> DirFiller<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        DirFiller { buf, len: 0 }
    }

    /// Adds an entry; `next_offset` is the offset a later readdir passes to continue after
    /// it. Returns false (and adds nothing) when the reply is full.
    pub fn add(&mut self, ino: u64, next_offset: u64, file_type: u32, name: &OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let name = name.as_bytes();
        let head = size_of::<abi::Dirent>();
        let padded = (head + name.len()).next_multiple_of(8);
        if self.len + padded > self.buf.len() {
            return false;
        }
        let dirent = abi::Dirent {
            ino,
            off: next_offset,
            namelen: name.len() as u32,
            typ: file_type,
        };
        use abi::Plain;
        let at = &mut self.buf[self.len..self.len + padded];
        at[..head].copy_from_slice(dirent.as_bytes());
        at[head..head + name.len()].copy_from_slice(name);
        at[head + name.len()..].fill(0);
        self.len += padded;
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// A file system served by a transport. Every method has a default answering `ENOSYS`
/// (or doing nothing, for the requests the kernel expects no answer to), so an
/// implementation provides only what it supports. Methods are called concurrently from
/// the transport's threads.
#[allow(unused_variables)]
pub trait Filesystem: Send + Sync + 'static {
    /// The kernel's INIT was answered; requests follow.
    fn init(&self) {}
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
    fn mkdir(&self, caller: Caller, parent: u64, name: &OsStr, mode: u32) -> FsResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: u32,
    ) -> FsResult<(Entry, Opened)> {
        Err(Errno::ENOSYS)
    }
    fn open(&self, ino: u64, flags: u32) -> FsResult<Opened> {
        Err(Errno::ENOSYS)
    }
    /// Reads into `buf` (sized as asked) and returns the bytes read.
    fn read(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        Err(Errno::ENOSYS)
    }
    fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        Err(Errno::ENOSYS)
    }
    fn flush(&self, ino: u64, fh: u64) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn release(&self, ino: u64, fh: u64) -> FsResult<()> {
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
    fn releasedir(&self, ino: u64, fh: u64) -> FsResult<()> {
        Ok(())
    }
    fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        Err(Errno::ENOSYS)
    }
    fn rename(
        &self,
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
    fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        Err(Errno::ENOSYS)
    }
    fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        Err(Errno::ENOSYS)
    }
}
