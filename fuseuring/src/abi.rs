//! The kernel's FUSE ABI (`include/uapi/linux/fuse.h`), limited to what this crate uses.
//!
//! Every struct here is `#[repr(C)]`, made only of integers, with no implicit padding, so
//! it can be read from and written to a byte buffer as is ([`Plain`]).

#![allow(missing_docs)]

/// Protocol version this crate speaks (7.42 added FUSE over io_uring).
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 42;
pub const ROOT_ID: u64 = 1;

// Opcodes.
pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_SYMLINK: u32 = 6;
pub const FUSE_MKNOD: u32 = 8;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_RENAME: u32 = 12;
pub const FUSE_LINK: u32 = 13;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_SETXATTR: u32 = 21;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_LISTXATTR: u32 = 23;
pub const FUSE_REMOVEXATTR: u32 = 24;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_FSYNCDIR: u32 = 30;
pub const FUSE_GETLK: u32 = 31;
pub const FUSE_SETLK: u32 = 32;
pub const FUSE_SETLKW: u32 = 33;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_BMAP: u32 = 37;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_IOCTL: u32 = 39;
pub const FUSE_POLL: u32 = 40;
pub const FUSE_BATCH_FORGET: u32 = 42;
pub const FUSE_FALLOCATE: u32 = 43;
pub const FUSE_READDIRPLUS: u32 = 44;
pub const FUSE_RENAME2: u32 = 45;
pub const FUSE_LSEEK: u32 = 46;
pub const FUSE_COPY_FILE_RANGE: u32 = 47;
pub const FUSE_SYNCFS: u32 = 50;
pub const FUSE_TMPFILE: u32 = 51;
pub const FUSE_STATX: u32 = 52;

// INIT flags (`flags`, and `flags2` for bits 32 and up).
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_DONT_MASK: u64 = 1 << 6;
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;

// ioctls on /dev/fuse: register (and drop) a backing file for FUSE passthrough.
pub const FUSE_DEV_IOC_BACKING_OPEN: u64 = 0x4010_e501; // _IOW(229, 1, struct fuse_backing_map)
pub const FUSE_DEV_IOC_BACKING_CLOSE: u64 = 0x4004_e502; // _IOW(229, 2, uint32_t)

// Notifications (the `error` field of a reply with `unique` 0).
pub const FUSE_NOTIFY_INVAL_INODE: i32 = 2;

// `write_flags` of a write request.
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
// `release_flags` of a release request.
pub const FUSE_RELEASE_FLUSH: u32 = 1 << 0;
pub const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;

// `open_flags` of an open reply.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

// setattr `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
pub const FATTR_CTIME: u32 = 1 << 10;

// io_uring commands (`cmd_op` of an IORING_OP_URING_CMD on the /dev/fuse fd).
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
pub const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
pub const FUSE_URING_OP_IN_OUT_SZ: usize = 128;

/// Marker for ABI structs: `#[repr(C)]`, integers only, no padding, any bit pattern valid.
///
/// # Safety
/// Implement only for types meeting exactly that description.
pub unsafe trait Plain: Copy + Default {
    /// The struct's bytes, as the kernel reads them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Plain types have no padding, so every byte is initialised.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast(), size_of::<Self>()) }
    }

    /// Reads the struct from the start of `bytes`, or `None` when too short.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; any bit pattern is a valid Plain value; unaligned read.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }
}

macro_rules! plain {
    ($($name:ident = $size:expr;)*) => {
        $(
            // SAFETY: integer fields only, laid out without padding (size asserted below).
            unsafe impl Plain for $name {}
            const _: () = assert!(size_of::<$name>() == $size);
        )*
    };
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub flags2: u32,
    pub unused: [u32; 11],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
    pub unused: [u16; 11],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: Attr,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ForgetIn {
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchForgetIn {
    pub count: u32,
    pub dummy: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ForgetOne {
    pub nodeid: u64,
    pub nlookup: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GetattrIn {
    pub getattr_flags: u32,
    pub dummy: u32,
    pub fh: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SetattrIn {
    pub valid: u32,
    pub padding: u32,
    pub fh: u64,
    pub size: u64,
    pub lock_owner: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub unused4: u32,
    pub uid: u32,
    pub gid: u32,
    pub unused5: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MkdirIn {
    pub mode: u32,
    pub umask: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenIn {
    pub flags: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushIn {
    pub fh: u64,
    pub unused: u32,
    pub padding: u32,
    pub lock_owner: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub read_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub write_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FsyncIn {
    pub fh: u64,
    pub fsync_flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessIn {
    pub mask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GetxattrIn {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GetxattrOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RenameIn {
    pub newdir: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Rename2In {
    pub newdir: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub padding: u32,
    pub spare: [u32; 6],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct InterruptIn {
    pub unique: u64,
}

/// Head of one directory entry in a READDIR reply; the name follows, padded to 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Dirent {
    pub ino: u64,
    pub off: u64,
    pub namelen: u32,
    pub typ: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MknodIn {
    pub mode: u32,
    pub rdev: u32,
    pub umask: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkIn {
    pub oldnodeid: u64,
}

/// The setxattr arguments without FUSE_SETXATTR_EXT (not asked for).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SetxattrIn {
    pub size: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FallocateIn {
    pub fh: u64,
    pub offset: u64,
    pub length: u64,
    pub mode: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FileLock {
    pub start: u64,
    pub end: u64,
    pub typ: u32,
    pub pid: u32,
}

/// `lk_flags`: the lock is a flock(2) lock, not a POSIX one.
pub const FUSE_LK_FLOCK: u32 = 1 << 0;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LkIn {
    pub fh: u64,
    pub owner: u64,
    pub lk: FileLock,
    pub lk_flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LkOut {
    pub lk: FileLock,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoctlIn {
    pub fh: u64,
    pub flags: u32,
    pub cmd: u32,
    pub arg: u64,
    pub in_size: u32,
    pub out_size: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoctlOut {
    pub result: i32,
    pub flags: u32,
    pub in_iovs: u32,
    pub out_iovs: u32,
}

/// One entry of a READDIRPLUS reply: the entry, then the dirent (name padded to 8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DirentplusHead {
    pub entry_out: EntryOut,
    pub dirent: Dirent,
}

/// The argument of FUSE_DEV_IOC_BACKING_OPEN.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BackingMap {
    pub fd: i32,
    pub flags: u32,
    pub padding: u64,
}

/// FUSE_NOTIFY_INVAL_INODE: drop the cached attributes (and the pages in `off`..`off+len`,
/// none when `off` is negative) of an inode.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NotifyInvalInodeOut {
    pub ino: u64,
    pub off: i64,
    pub len: i64,
}

/// `struct fuse_uring_ent_in_out`: the ring entry's own fields, after the two headers.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UringEntInOut {
    pub flags: u64,
    /// What a COMMIT_AND_FETCH for this request must carry.
    pub commit_id: u64,
    /// Bytes used in the payload buffer (request: written by the kernel; reply: by us).
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: the first of the two buffers of a ring entry.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UringReqHeader {
    /// `fuse_in_header` of a request, `fuse_out_header` of its reply.
    pub in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
    /// The opcode's fixed-size argument struct (e.g. `fuse_write_in`), if it has one.
    pub op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
    pub ring_ent_in_out: UringEntInOut,
}

impl Default for UringReqHeader {
    fn default() -> Self {
        UringReqHeader {
            in_out: [0; FUSE_URING_IN_OUT_HEADER_SZ],
            op_in: [0; FUSE_URING_OP_IN_OUT_SZ],
            ring_ent_in_out: UringEntInOut::default(),
        }
    }
}

/// `struct fuse_uring_cmd_req`: the first 24 of the 80 command bytes of a 128-byte SQE.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

plain! {
    InHeader = 40;
    OutHeader = 16;
    InitIn = 64;
    InitOut = 64;
    Attr = 88;
    EntryOut = 128;
    AttrOut = 104;
    ForgetIn = 8;
    BatchForgetIn = 8;
    ForgetOne = 16;
    GetattrIn = 16;
    SetattrIn = 88;
    MkdirIn = 8;
    CreateIn = 16;
    OpenIn = 8;
    OpenOut = 16;
    ReleaseIn = 24;
    FlushIn = 24;
    ReadIn = 40;
    WriteIn = 40;
    WriteOut = 8;
    FsyncIn = 16;
    AccessIn = 8;
    GetxattrIn = 8;
    GetxattrOut = 8;
    RenameIn = 8;
    Rename2In = 16;
    Kstatfs = 80;
    InterruptIn = 8;
    Dirent = 24;
    NotifyInvalInodeOut = 24;
    BackingMap = 16;
    MknodIn = 16;
    LinkIn = 8;
    SetxattrIn = 8;
    FallocateIn = 32;
    FileLock = 24;
    LkIn = 48;
    LkOut = 24;
    IoctlIn = 32;
    IoctlOut = 16;
    DirentplusHead = 152;
    UringEntInOut = 32;
    UringCmdReq = 24;
}

/// The opcode's name, for statistics and logs.
pub fn opcode_name(opcode: u32) -> &'static str {
    match opcode {
        FUSE_LOOKUP => "LOOKUP",
        FUSE_FORGET => "FORGET",
        FUSE_GETATTR => "GETATTR",
        FUSE_SETATTR => "SETATTR",
        FUSE_READLINK => "READLINK",
        FUSE_SYMLINK => "SYMLINK",
        FUSE_MKNOD => "MKNOD",
        FUSE_MKDIR => "MKDIR",
        FUSE_UNLINK => "UNLINK",
        FUSE_RMDIR => "RMDIR",
        FUSE_RENAME => "RENAME",
        FUSE_LINK => "LINK",
        FUSE_OPEN => "OPEN",
        FUSE_READ => "READ",
        FUSE_WRITE => "WRITE",
        FUSE_STATFS => "STATFS",
        FUSE_RELEASE => "RELEASE",
        FUSE_FSYNC => "FSYNC",
        FUSE_SETXATTR => "SETXATTR",
        FUSE_GETXATTR => "GETXATTR",
        FUSE_LISTXATTR => "LISTXATTR",
        FUSE_REMOVEXATTR => "REMOVEXATTR",
        FUSE_FLUSH => "FLUSH",
        FUSE_INIT => "INIT",
        FUSE_OPENDIR => "OPENDIR",
        FUSE_READDIR => "READDIR",
        FUSE_RELEASEDIR => "RELEASEDIR",
        FUSE_FSYNCDIR => "FSYNCDIR",
        FUSE_ACCESS => "ACCESS",
        FUSE_CREATE => "CREATE",
        FUSE_INTERRUPT => "INTERRUPT",
        FUSE_DESTROY => "DESTROY",
        FUSE_BATCH_FORGET => "BATCH_FORGET",
        FUSE_READDIRPLUS => "READDIRPLUS",
        FUSE_RENAME2 => "RENAME2",
        FUSE_GETLK => "GETLK",
        FUSE_SETLK => "SETLK",
        FUSE_SETLKW => "SETLKW",
        FUSE_BMAP => "BMAP",
        FUSE_IOCTL => "IOCTL",
        FUSE_POLL => "POLL",
        FUSE_FALLOCATE => "FALLOCATE",
        FUSE_LSEEK => "LSEEK",
        FUSE_COPY_FILE_RANGE => "COPY_FILE_RANGE",
        FUSE_SYNCFS => "SYNCFS",
        FUSE_TMPFILE => "TMPFILE",
        FUSE_STATX => "STATX",
        _ => "other",
    }
}

/// Size of the fixed argument struct an opcode's request starts with (0: none).
///
/// Over /dev/fuse the request body is this struct followed by the rest (names, data);
/// over io_uring the struct arrives in the header's `op_in` and the rest in the payload
/// buffer, so the body is split here to decode both the same way.
pub fn op_header_len(opcode: u32) -> usize {
    match opcode {
        FUSE_FORGET => size_of::<ForgetIn>(),
        FUSE_GETATTR => size_of::<GetattrIn>(),
        FUSE_SETATTR => size_of::<SetattrIn>(),
        FUSE_MKNOD => size_of::<MknodIn>(),
        FUSE_MKDIR => size_of::<MkdirIn>(),
        FUSE_RENAME => size_of::<RenameIn>(),
        FUSE_RENAME2 => size_of::<Rename2In>(),
        FUSE_LINK => size_of::<LinkIn>(),
        FUSE_OPEN | FUSE_OPENDIR => size_of::<OpenIn>(),
        FUSE_READ | FUSE_READDIR | FUSE_READDIRPLUS => size_of::<ReadIn>(),
        FUSE_WRITE => size_of::<WriteIn>(),
        FUSE_RELEASE | FUSE_RELEASEDIR => size_of::<ReleaseIn>(),
        FUSE_FSYNC | FUSE_FSYNCDIR => size_of::<FsyncIn>(),
        FUSE_SETXATTR => size_of::<SetxattrIn>(),
        FUSE_GETXATTR | FUSE_LISTXATTR => size_of::<GetxattrIn>(),
        FUSE_FLUSH => size_of::<FlushIn>(),
        FUSE_INIT => size_of::<InitIn>(),
        FUSE_ACCESS => size_of::<AccessIn>(),
        FUSE_CREATE => size_of::<CreateIn>(),
        FUSE_INTERRUPT => size_of::<InterruptIn>(),
        FUSE_BATCH_FORGET => size_of::<BatchForgetIn>(),
        FUSE_FALLOCATE => size_of::<FallocateIn>(),
        FUSE_LSEEK => 24,
        FUSE_GETLK | FUSE_SETLK | FUSE_SETLKW => size_of::<LkIn>(),
        FUSE_IOCTL => size_of::<IoctlIn>(),
        _ => 0,
    }
}
