//! nullfs: the "FUSE floor" for benchmarks.
//!
//! An in-memory FUSE file system. Its root directory holds one special regular file, `null`:
//! writes to it are acknowledged at once and the data is dropped; `flush` and `fsync` succeed
//! at once; reads return zeros; `getattr` reports a large size so that fio never needs to lay
//! the file out. Every other name is an ordinary file, directory or symbolic link kept in
//! memory (create, write, read, mkdir, readdir, unlink, rename, setattr, xattrs...), so that
//! small-file workloads (`echo $i > f$i`, `ls -l`, an unpacked tree) run through it too.
//! Every request costs one kernel round trip and almost no work: measuring a workload through
//! it tells how much of a spoolfs latency is the FUSE protocol itself.
//!
//! It is mounted the way `spoolfs mount` mounts an exclusive volume: default permissions, 2
//! FUSE threads with cloned /dev/fuse descriptors, the same INIT capabilities (1 MiB writes,
//! READDIRPLUS, POSIX ACLs, FUSE_HANDLE_KILLPRIV_V2...; file locks left to the kernel), no
//! kernel writeback cache, attribute and entry caches kept for `--ttl` (default: spoolfs's
//! lifetime on exclusive volumes), directory listings cached across opens, and read-only
//! opens answered with FOPEN_NOFLUSH (their close sends no FLUSH), so that the two are
//! measured under the same kernel behaviour.
//!
//! Usage: `nullfs [--ttl SECS] MOUNTPOINT` — runs in the foreground until SIGTERM, SIGINT or
//! SIGHUP (or an external `umount`), then unmounts and exits.
//!
//! Build: `cargo build --release -p spoolfs-fuse --example nullfs`

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};
use spoolfs_fuse::{
    EXCLUSIVE_CACHE_TTL, MAX_WRITE_BYTES, ask_request_sizes, block_termination_signals,
};
use spoolfs_fuseuring::abi::FOPEN_NOFLUSH;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

/// The root directory.
const ROOT_INO: u64 = 1;
/// The special file, `/null`.
const NULL_INO: u64 = 2;
const NULL_NAME: &str = "null";
/// The size `null` reports: 1 TiB, larger than any benchmark file.
const NULL_SIZE_BYTES: u64 = 1 << 40;
/// FUSE threads (as `spoolfs mount` defaults to).
const FUSE_THREADS: usize = 2;
/// One zeroed buffer serves every read of `null`.
static ZEROS: [u8; MAX_WRITE_BYTES as usize] = [0; MAX_WRITE_BYTES as usize];
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// One inode in memory.
struct Node {
    attr: FileAttr,
    /// A regular file's bytes, or a symbolic link's target.
    data: Vec<u8>,
    /// A directory's entries, by name.
    children: BTreeMap<OsString, u64>,
    parent: u64,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Open handles: an unlinked file goes with the last of them.
    opens: u32,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl Tree {
    /// A directory's entries as a listing gives them: ".", "..", then its children by name,
    /// each as (inode, name); `None` if `dir` does not exist.
    fn entries(&self, dir: u64) -> Option<impl Iterator<Item = (u64, &OsStr)>> {
        let node = self.nodes.get(&dir)?;
        let dots = [(dir, OsStr::new(".")), (node.parent, OsStr::new(".."))];
        let children = node.children.iter().map(|(n, i)| (*i, n.as_os_str()));
        Some(dots.into_iter().chain(children))
    }
}

struct NullFs {
    ttl: Duration,
    tree: RwLock<Tree>,
}

fn new_attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn new_node(attr: FileAttr, parent: u64) -> Node {
    Node {
        attr,
        data: Vec::new(),
        children: BTreeMap::new(),
        parent,
        xattrs: BTreeMap::new(),
        opens: 0,
    }
}

fn kind_of(mode: u32) -> Option<FileType> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG => FileType::RegularFile,
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => return None,
    })
}

fn resolve(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::Now => SystemTime::now(),
        TimeOrNow::SpecificTime(t) => t,
    }
}

/// Answers a getxattr/listxattr: the size when asked for it, ERANGE when the buffer is short.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl NullFs {
    fn new(ttl: Duration) -> NullFs {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut nodes = HashMap::new();
        let mut root = new_node(
            new_attr(ROOT_INO, FileType::Directory, 0o755, uid, gid),
            ROOT_INO,
        );
        root.children.insert(NULL_NAME.into(), NULL_INO);
        nodes.insert(ROOT_INO, root);
        let mut null = new_attr(NULL_INO, FileType::RegularFile, 0o666, uid, gid);
        null.size = NULL_SIZE_BYTES;
        nodes.insert(NULL_INO, new_node(null, ROOT_INO));
        NullFs {
            ttl,
            tree: RwLock::new(Tree {
                nodes,
                next_ino: NULL_INO + 1,
            }),
        }
    }

    fn read_tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_tree(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new inode `name` in directory `parent`: its attributes, or an errno.
    fn make(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        perm: u16,
        data: Vec<u8>,
    ) -> Result<FileAttr, Errno> {
        let mut tree = self.write_tree();
        let ino = tree.next_ino;
        let dir = tree.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if dir.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if dir.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        dir.children.insert(name.to_owned(), ino);
        let now = SystemTime::now();
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        if kind == FileType::Directory {
            dir.attr.nlink += 1;
        }
        let mut attr = new_attr(ino, kind, perm, req.uid(), req.gid());
        attr.size = data.len() as u64;
        let mut node = new_node(attr, parent);
        node.data = data;
        tree.nodes.insert(ino, node);
        tree.next_ino += 1;
        Ok(attr)
    }

    /// Removes `name` from `parent` (a directory only with `dir`, and only when empty).
    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut tree = self.write_tree();
        let p = tree.nodes.get(&parent).ok_or(Errno::ENOENT)?;
        let ino = *p.children.get(name).ok_or(Errno::ENOENT)?;
        if ino == NULL_INO {
            return Err(Errno::EPERM);
        }
        let node = tree.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let is_dir = node.attr.kind == FileType::Directory;
        match (dir, is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let now = SystemTime::now();
        let p = tree.nodes.get_mut(&parent).expect("parent");
        p.children.remove(name);
        p.attr.mtime = now;
        p.attr.ctime = now;
        if is_dir {
            p.attr.nlink -= 1;
        }
        let node = tree.nodes.get_mut(&ino).expect("child");
        node.attr.nlink = if is_dir { 0 } else { node.attr.nlink - 1 };
        node.attr.ctime = now;
        if node.attr.nlink == 0 && node.opens == 0 {
            tree.nodes.remove(&ino);
        }
        Ok(())
    }

    fn entry(&self, reply: ReplyEntry, r: Result<FileAttr, Errno>) {
        match r {
            Ok(attr) => reply.entry(&self.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.read_tree();
        let found = tree
            .nodes
            .get(&parent.0)
            .and_then(|d| d.children.get(name))
            .and_then(|ino| tree.nodes.get(ino));
        match found {
            Some(node) => reply.entry(&self.ttl, &node.attr, Generation(0)),
            // A negative entry, kept as long as a positive one (as spoolfs does).
            None => {
                let mut none = new_attr(0, FileType::RegularFile, 0, 0, 0);
                none.nlink = 0;
                reply.entry_with_ttls(&Duration::ZERO, &self.ttl, &none, Generation(0));
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.read_tree().nodes.get(&ino.0) {
            Some(node) => reply.attr(&self.ttl, &node.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Mode, owner, size and times; a change of `null`'s size is ignored.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.write_tree();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let now = SystemTime::now();
        let a = &mut node.attr;
        if let Some(m) = mode {
            a.perm = (m & 0o7777) as u16;
        }
        if uid.is_some() || gid.is_some() {
            a.uid = uid.unwrap_or(a.uid);
            a.gid = gid.unwrap_or(a.gid);
            // A chown drops the set-id bits (FUSE_HANDLE_KILLPRIV_V2 leaves that to us).
            if a.kind == FileType::RegularFile {
                a.perm &= !0o6000;
            }
        }
        if let Some(size) = size
            && ino.0 != NULL_INO
        {
            node.data.resize(size as usize, 0);
            a.size = size;
            a.blocks = size.div_ceil(512);
            a.mtime = now;
        }
        if let Some(t) = atime {
            a.atime = resolve(t);
        }
        if let Some(t) = mtime {
            a.mtime = resolve(t);
        }
        a.ctime = ctime.unwrap_or(now);
        reply.attr(&self.ttl, a);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.read_tree().nodes.get(&ino.0) {
            Some(n) if n.attr.kind == FileType::Symlink => reply.data(&n.data),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = match kind_of(mode) {
            Some(kind) if kind != FileType::Directory && kind != FileType::Symlink => {
                let perm = (mode & !umask & 0o7777) as u16;
                self.make(req, parent.0, name, kind, perm, Vec::new())
            }
            _ => Err(Errno::EINVAL),
        };
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
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self.make(req, parent.0, name, FileType::Directory, perm, Vec::new());
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        let r = self.make(req, parent.0, link_name, FileType::Symlink, 0o777, target);
        self.entry(reply, r);
    }

    /// A plain rename or RENAME_NOREPLACE; a directory may replace only an empty directory.
    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let noreplace = flags.bits() == libc::RENAME_NOREPLACE;
        if flags.bits() != 0 && !noreplace {
            return reply.error(Errno::EINVAL);
        }
        let mut tree = self.write_tree();
        let Some(&ino) = tree.nodes.get(&parent.0).and_then(|d| d.children.get(name)) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(dst) = tree.nodes.get(&newparent.0) else {
            return reply.error(Errno::ENOENT);
        };
        let moving_dir = tree.nodes[&ino].attr.kind == FileType::Directory;
        if let Some(&old) = dst.children.get(newname) {
            if old == ino {
                return reply.ok();
            }
            if noreplace {
                return reply.error(Errno::EEXIST);
            }
            let old_node = &tree.nodes[&old];
            let old_dir = old_node.attr.kind == FileType::Directory;
            if old_dir && !old_node.children.is_empty() {
                return reply.error(Errno::ENOTEMPTY);
            }
            if old_dir != moving_dir {
                return reply.error(if old_dir {
                    Errno::EISDIR
                } else {
                    Errno::ENOTDIR
                });
            }
            drop(tree);
            if let Err(e) = self.remove(newparent.0, newname, old_dir) {
                return reply.error(e);
            }
            tree = self.write_tree();
        }
        let now = SystemTime::now();
        for (dir, add) in [(parent.0, false), (newparent.0, true)] {
            let d = tree.nodes.get_mut(&dir).expect("directory");
            if add {
                d.children.insert(newname.to_owned(), ino);
            } else {
                d.children.remove(name);
            }
            if moving_dir && parent != newparent {
                if add {
                    d.attr.nlink += 1;
                } else {
                    d.attr.nlink -= 1;
                }
            }
            d.attr.mtime = now;
            d.attr.ctime = now;
        }
        let node = tree.nodes.get_mut(&ino).expect("moved inode");
        node.parent = newparent.0;
        node.attr.ctime = now;
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut tree = self.write_tree();
        let Some(dir) = tree.nodes.get_mut(&newparent.0) else {
            return reply.error(Errno::ENOENT);
        };
        if dir.children.contains_key(newname) {
            return reply.error(Errno::EEXIST);
        }
        dir.children.insert(newname.to_owned(), ino.0);
        match tree.nodes.get_mut(&ino.0) {
            Some(node) => {
                node.attr.nlink += 1;
                node.attr.ctime = SystemTime::now();
                reply.entry(&self.ttl, &node.attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.write_tree();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if node.attr.kind == FileType::Directory {
            return reply.error(Errno::EISDIR);
        }
        if flags.0 & libc::O_TRUNC != 0 && ino.0 != NULL_INO {
            node.data.clear();
            node.attr.size = 0;
            node.attr.blocks = 0;
        }
        node.opens += 1;
        // Nothing changes a file behind the kernel's back: its cached pages stay valid.
        // (`null` keeps the flags fio was always measured with.)
        let mut fopen = if ino.0 == NULL_INO {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        // As spoolfs answers on an exclusive volume (the kernel keeps the locks): a
        // descriptor that cannot write sends no FLUSH at its close.
        if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
            fopen |= FopenFlags::from_bits_retain(FOPEN_NOFLUSH);
        }
        reply.opened(FileHandle(0), fopen);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        match self.make(req, parent.0, name, FileType::RegularFile, perm, Vec::new()) {
            Ok(attr) => {
                if let Some(n) = self.write_tree().nodes.get_mut(&attr.ino.0) {
                    n.opens += 1;
                }
                reply.created(
                    &self.ttl,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
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
        if ino.0 == NULL_INO {
            let left = NULL_SIZE_BYTES.saturating_sub(offset);
            let n = (size as u64).min(left).min(ZEROS.len() as u64) as usize;
            return reply.data(&ZEROS[..n]);
        }
        let tree = self.read_tree();
        match tree.nodes.get(&ino.0) {
            Some(node) => {
                let start = (offset as usize).min(node.data.len());
                let end = (start + size as usize).min(node.data.len());
                reply.data(&node.data[start..end]);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == NULL_INO {
            return reply.written(data.len() as u32);
        }
        let mut tree = self.write_tree();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let end = offset as usize + data.len();
        if node.data.len() < end {
            node.data.resize(end, 0);
        }
        node.data[offset as usize..end].copy_from_slice(data);
        let now = SystemTime::now();
        node.attr.size = node.data.len() as u64;
        node.attr.blocks = node.attr.size.div_ceil(512);
        node.attr.mtime = now;
        node.attr.ctime = now;
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            node.attr.perm &= !0o6000;
        }
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

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut tree = self.write_tree();
        if let Some(node) = tree.nodes.get_mut(&ino.0) {
            node.opens = node.opens.saturating_sub(1);
            if node.opens == 0 && node.attr.nlink == 0 {
                tree.nodes.remove(&ino.0);
            }
        }
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

    /// Listings are cached by the kernel and kept across opens, as spoolfs does on an
    /// exclusive volume.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.read_tree().nodes.get(&ino.0) {
            Some(n) if n.attr.kind == FileType::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.read_tree();
        let Some(entries) = tree.entries(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (child, name)) in entries.enumerate().skip(offset as usize) {
            let kind = tree
                .nodes
                .get(&child)
                .map_or(FileType::RegularFile, |n| n.attr.kind);
            // `add` returns true when the reply buffer is full.
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let tree = self.read_tree();
        let Some(entries) = tree.entries(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (child, name)) in entries.enumerate().skip(offset as usize) {
            let Some(node) = tree.nodes.get(&child) else {
                continue;
            };
            // The kernel takes no reference on "." and "..": no cache lifetime for them.
            let ttl = if i < 2 { Duration::ZERO } else { self.ttl };
            let (off, attr) = ((i + 1) as u64, &node.attr);
            if reply.add(INodeNo(child), off, name, &ttl, attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mut tree = self.write_tree();
        let Some(node) = tree.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let exists = node.xattrs.contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return reply.error(Errno::EEXIST);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return reply.error(Errno::ENODATA);
        }
        node.xattrs.insert(name.to_owned(), value.to_vec());
        node.attr.ctime = SystemTime::now();
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.read_tree().nodes.get(&ino.0) {
            Some(node) => match node.xattrs.get(name) {
                Some(v) => reply_xattr(reply, size, v),
                None => reply.error(Errno::ENODATA),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.read_tree().nodes.get(&ino.0) {
            Some(node) => {
                let mut names = Vec::new();
                for n in node.xattrs.keys() {
                    names.extend_from_slice(n.as_bytes());
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut tree = self.write_tree();
        match tree.nodes.get_mut(&ino.0).map(|n| n.xattrs.remove(name)) {
            Some(Some(_)) => reply.ok(),
            Some(None) => reply.error(Errno::ENODATA),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// No ioctls: ENOTTY, what a file that is no terminal answers (as spoolfs does).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
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

fn usage() -> ExitCode {
    eprintln!("usage: nullfs [--ttl SECS] MOUNTPOINT");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut ttl = EXCLUSIVE_CACHE_TTL;
    let mut mount_point = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--ttl" {
            let secs = args.next().and_then(|v| v.to_str()?.parse::<f64>().ok());
            match secs {
                Some(s) if s.is_finite() && (0.0..=86400.0).contains(&s) => {
                    ttl = Duration::from_secs_f64(s)
                }
                _ => {
                    eprintln!("nullfs: --ttl: a number of seconds, 0 to 86400");
                    return usage();
                }
            }
        } else if mount_point.is_none() && !arg.to_string_lossy().starts_with('-') {
            mount_point = Some(arg);
        } else {
            return usage();
        }
    }
    let Some(mount_point) = mount_point else {
        return usage();
    };
    let mount_point = match PathBuf::from(mount_point).canonicalize() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nullfs: mount point: {e}");
            return ExitCode::FAILURE;
        }
    };

    let signals = block_termination_signals();

    let fs = NullFs::new(ttl);
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nullfs".into()),
        MountOption::CUSTOM("subtype=nullfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::Exec,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    // As `spoolfs mount`: other users may use a mount root made (allow_other).
    // SAFETY: geteuid cannot fail.
    config.acl = if unsafe { libc::geteuid() } == 0 {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
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
