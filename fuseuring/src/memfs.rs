//! An in-memory file system: directories and regular files, enough for the transport
//! benchmarks and tests. One lock over the whole tree: the point is to measure the
//! transport, not the file system.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::abi;
use crate::fs::{
    Attr, Caller, DirFiller, Entry, Errno, Filesystem, FsResult, Opened, SetAttr, Statfs, TimeSet,
    XattrReply,
};

/// Largest file size accepted (writes and truncations beyond it fail with `EFBIG`).
pub const MAX_FILE_SIZE: u64 = 1 << 34;
const NAME_MAX: usize = 255;
const BLOCK_SIZE: u32 = 4096;

enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
}

struct Node {
    attr: Attr,
    content: Content,
    parent: u64,
    /// References the kernel holds (lookups not yet forgotten).
    lookups: u64,
    /// Open handles.
    opens: u64,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
}

/// The in-memory file system.
pub struct MemFs {
    tree: Mutex<Tree>,
    entry_ttl: Duration,
    attr_ttl: Duration,
}

fn now() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn new_attr(ino: u64, mode: u32, caller: Caller) -> Attr {
    let (secs, nsecs) = now();
    Attr {
        ino,
        mode,
        nlink: if mode & libc::S_IFMT == libc::S_IFDIR {
            2
        } else {
            1
        },
        uid: caller.uid,
        gid: caller.gid,
        blksize: BLOCK_SIZE,
        atime: secs,
        mtime: secs,
        ctime: secs,
        atimensec: nsecs,
        mtimensec: nsecs,
        ctimensec: nsecs,
        ..Default::default()
    }
}

fn touch_mtime(attr: &mut Attr) {
    let (secs, nsecs) = now();
    attr.mtime = secs;
    attr.mtimensec = nsecs;
    attr.ctime = secs;
    attr.ctimensec = nsecs;
}

fn set_size(node: &mut Node, size: u64) -> FsResult<()> {
    if size > MAX_FILE_SIZE {
        return Err(Errno::EFBIG);
    }
    match &mut node.content {
        Content::File(data) => data.resize(size as usize, 0),
        Content::Dir(_) => return Err(Errno::EISDIR),
    }
    node.attr.size = size;
    node.attr.blocks = size.div_ceil(512);
    Ok(())
}

/// The mode of a new inode of type `kind` (`S_IF*`): the permission bits asked for, less the
/// umask.
fn created_mode(kind: u32, mode: u32, umask: u32) -> u32 {
    kind | (mode & !umask & 0o7777)
}

fn check_name(name: &OsStr) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Tree {
    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn children(&self, ino: u64) -> FsResult<&BTreeMap<OsString, u64>> {
        match &self.node(ino)?.content {
            Content::Dir(children) => Ok(children),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// The inode named `name` in directory `parent`.
    fn child(&self, parent: u64, name: &OsStr) -> FsResult<u64> {
        self.children(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn children_mut(&mut self, ino: u64) -> FsResult<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(ino)?.content {
            Content::Dir(children) => Ok(children),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Drops a node nothing refers to any more (no name, no kernel reference, no handle).
    fn reap(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get(&ino)
            && ino != abi::ROOT_ID
            && node.attr.nlink == 0
            && node.lookups == 0
            && node.opens == 0
        {
            self.nodes.remove(&ino);
        }
    }

    /// Adds a child named `name` under `parent`, counting one kernel reference.
    fn add_child(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> FsResult<Attr> {
        check_name(name)?;
        if self.children(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        let attr = new_attr(ino, mode, caller);
        let content = if is_dir {
            Content::Dir(BTreeMap::new())
        } else {
            Content::File(Vec::new())
        };
        self.nodes.insert(
            ino,
            Node {
                attr,
                content,
                parent,
                lookups: 1,
                opens: 0,
            },
        );
        self.children_mut(parent)?.insert(name.to_owned(), ino);
        let dir = self.node_mut(parent)?;
        if is_dir {
            dir.attr.nlink += 1;
        }
        touch_mtime(&mut dir.attr);
        Ok(attr)
    }

    /// Opens `ino`: a new handle, counted on the inode.
    fn new_handle(&mut self, ino: u64) -> FsResult<Opened> {
        self.node_mut(ino)?.opens += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok(Opened {
            fh,
            ..Default::default()
        })
    }

    fn close_handle(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        self.reap(ino);
    }
}

impl MemFs {
    /// An empty file system whose root is owned by the calling process's user.
    pub fn new(entry_ttl: Duration, attr_ttl: Duration) -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let root = Node {
            attr: new_attr(
                abi::ROOT_ID,
                libc::S_IFDIR | 0o755,
                Caller { uid, gid, pid: 0 },
            ),
            content: Content::Dir(BTreeMap::new()),
            parent: abi::ROOT_ID,
            lookups: 1,
            opens: 0,
        };
        MemFs {
            tree: Mutex::new(Tree {
                nodes: HashMap::from([(abi::ROOT_ID, root)]),
                next_ino: abi::ROOT_ID + 1,
                next_fh: 1,
            }),
            entry_ttl,
            attr_ttl,
        }
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        // A panic while holding the lock leaves the tree as it was at an operation's
        // boundary at worst; keep serving.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, attr: Attr) -> Entry {
        Entry {
            attr,
            entry_ttl: self.entry_ttl,
            attr_ttl: self.attr_ttl,
        }
    }

    /// Number of inodes held (files and directories, the root included, plus unlinked
    /// inodes the kernel or an open handle still refers to).
    pub fn inode_count(&self) -> usize {
        self.tree().nodes.len()
    }
}

impl Filesystem for MemFs {
    fn lookup(&self, _caller: Caller, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let mut tree = self.tree();
        let ino = tree.child(parent, name)?;
        let node = tree.node_mut(ino)?;
        node.lookups += 1;
        Ok(self.entry(node.attr))
    }

    fn forget(&self, ino: u64, nlookup: u64) {
        let mut tree = self.tree();
        if let Some(node) = tree.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(nlookup);
        }
        tree.reap(ino);
    }

    fn getattr(&self, ino: u64, _fh: Option<u64>) -> FsResult<(Attr, Duration)> {
        Ok((self.tree().node(ino)?.attr, self.attr_ttl))
    }

    fn setattr(&self, _caller: Caller, ino: u64, c: &SetAttr) -> FsResult<(Attr, Duration)> {
        let mut tree = self.tree();
        let node = tree.node_mut(ino)?;
        if let Some(size) = c.size {
            set_size(node, size)?;
            touch_mtime(&mut node.attr);
        }
        let a = &mut node.attr;
        if let Some(mode) = c.mode {
            a.mode = (a.mode & libc::S_IFMT) | (mode & !libc::S_IFMT);
        }
        if let Some(uid) = c.uid {
            a.uid = uid;
        }
        if let Some(gid) = c.gid {
            a.gid = gid;
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now(),
            TimeSet::At(s, n) => (s, n),
        };
        if let Some(t) = c.atime {
            (a.atime, a.atimensec) = resolve(t);
        }
        if let Some(t) = c.mtime {
            (a.mtime, a.mtimensec) = resolve(t);
        }
        (a.ctime, a.ctimensec) = c.ctime.unwrap_or_else(now);
        Ok((*a, self.attr_ttl))
    }

    fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let mode = created_mode(libc::S_IFDIR, mode, umask);
        let attr = self.tree().add_child(caller, parent, name, mode)?;
        Ok(self.entry(attr))
    }

    fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: u32,
    ) -> FsResult<(Entry, Opened)> {
        let mut tree = self.tree();
        let mode = created_mode(libc::S_IFREG, mode, umask);
        let attr = tree.add_child(caller, parent, name, mode)?;
        let opened = tree.new_handle(attr.ino)?;
        Ok((self.entry(attr), opened))
    }

    fn open(&self, _caller: Caller, ino: u64, flags: u32) -> FsResult<Opened> {
        let mut tree = self.tree();
        let node = tree.node_mut(ino)?;
        if matches!(node.content, Content::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_TRUNC as u32 != 0 && flags & libc::O_ACCMODE as u32 != 0 {
            set_size(node, 0)?;
            touch_mtime(&mut node.attr);
        }
        tree.new_handle(ino)
    }

    fn read(&self, ino: u64, _fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let tree = self.tree();
        let Content::File(data) = &tree.node(ino)?.content else {
            return Err(Errno::EISDIR);
        };
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write(
        &self,
        _caller: Caller,
        ino: u64,
        _fh: u64,
        offset: u64,
        bytes: &[u8],
        _write_flags: u32,
    ) -> FsResult<u32> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let mut tree = self.tree();
        let node = tree.node_mut(ino)?;
        let Content::File(data) = &mut node.content else {
            return Err(Errno::EISDIR);
        };
        if (data.len() as u64) < end {
            data.resize(end as usize, 0);
        }
        data[offset as usize..end as usize].copy_from_slice(bytes);
        let size = data.len() as u64;
        node.attr.size = size;
        node.attr.blocks = size.div_ceil(512);
        touch_mtime(&mut node.attr);
        Ok(bytes.len() as u32)
    }

    fn flush(&self, _ino: u64, _fh: u64, _lock_owner: u64) -> FsResult<()> {
        Ok(())
    }

    fn release(&self, ino: u64, _fh: u64, _flags: u32, _lock_owner: Option<u64>) -> FsResult<()> {
        self.tree().close_handle(ino);
        Ok(())
    }

    fn fsync(&self, ino: u64, _fh: u64, _datasync: bool) -> FsResult<()> {
        self.tree().node(ino).map(|_| ())
    }

    fn opendir(&self, ino: u64) -> FsResult<Opened> {
        let mut tree = self.tree();
        tree.children(ino)?;
        tree.new_handle(ino)
    }

    fn readdir(&self, ino: u64, _fh: u64, offset: u64, out: &mut DirFiller<'_>) -> FsResult<()> {
        let tree = self.tree();
        let children = tree.children(ino)?;
        let parent = tree.node(ino)?.parent;
        // Offsets are positions: 1 after ".", 2 after "..", then one per child in name
        // order. A directory changed between two calls may skip or repeat a name, which
        // readdir allows.
        let dots = [(ino, OsStr::new(".")), (parent, OsStr::new(".."))];
        for (i, (child, name)) in dots.into_iter().enumerate().skip(offset as usize) {
            if !out.add(child, i as u64 + 1, libc::DT_DIR as u32, name) {
                return Ok(());
            }
        }
        let skip = (offset as usize).saturating_sub(2);
        for (i, (name, &child)) in children.iter().enumerate().skip(skip) {
            let kind = match tree.node(child).map(|n| &n.content) {
                Ok(Content::Dir(_)) => libc::DT_DIR,
                _ => libc::DT_REG,
            };
            if !out.add(child, i as u64 + 3, kind as u32, name) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, ino: u64, _fh: u64) -> FsResult<()> {
        self.tree().close_handle(ino);
        Ok(())
    }

    fn unlink(&self, _caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        let mut tree = self.tree();
        let ino = tree.child(parent, name)?;
        if matches!(tree.node(ino)?.content, Content::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        tree.children_mut(parent)?.remove(name);
        touch_mtime(&mut tree.node_mut(parent)?.attr);
        let node = tree.node_mut(ino)?;
        node.attr.nlink = 0;
        (node.attr.ctime, node.attr.ctimensec) = now();
        tree.reap(ino);
        Ok(())
    }

    fn rmdir(&self, _caller: Caller, parent: u64, name: &OsStr) -> FsResult<()> {
        let mut tree = self.tree();
        let ino = tree.child(parent, name)?;
        if !tree.children(ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        tree.children_mut(parent)?.remove(name);
        let dir = tree.node_mut(parent)?;
        dir.attr.nlink -= 1;
        touch_mtime(&mut dir.attr);
        tree.node_mut(ino)?.attr.nlink = 0;
        tree.reap(ino);
        Ok(())
    }

    fn rename(
        &self,
        _caller: Caller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags != 0 {
            // RENAME_NOREPLACE / EXCHANGE / WHITEOUT are not supported.
            return Err(Errno::EINVAL);
        }
        check_name(new_name)?;
        let mut tree = self.tree();
        let ino = tree.child(parent, name)?;
        let moved_is_dir = matches!(tree.node(ino)?.content, Content::Dir(_));
        if let Some(&target) = tree.children(new_parent)?.get(new_name) {
            if target == ino {
                return Ok(());
            }
            match (&tree.node(target)?.content, moved_is_dir) {
                (Content::Dir(c), true) if !c.is_empty() => return Err(Errno::ENOTEMPTY),
                (Content::Dir(_), false) => return Err(Errno::EISDIR),
                (Content::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
            if moved_is_dir {
                tree.node_mut(new_parent)?.attr.nlink -= 1;
            }
            tree.node_mut(target)?.attr.nlink = 0;
            tree.children_mut(new_parent)?.remove(new_name);
            tree.reap(target);
        }
        tree.children_mut(parent)?.remove(name);
        tree.children_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        if moved_is_dir && parent != new_parent {
            tree.node_mut(parent)?.attr.nlink -= 1;
            tree.node_mut(new_parent)?.attr.nlink += 1;
        }
        tree.node_mut(ino)?.parent = new_parent;
        touch_mtime(&mut tree.node_mut(parent)?.attr);
        touch_mtime(&mut tree.node_mut(new_parent)?.attr);
        Ok(())
    }

    fn statfs(&self, _ino: u64) -> FsResult<Statfs> {
        let files = self.tree().nodes.len() as u64;
        let blocks = MAX_FILE_SIZE / BLOCK_SIZE as u64;
        Ok(Statfs {
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: files + 1_000_000,
            ffree: 1_000_000,
            bsize: BLOCK_SIZE,
            namelen: NAME_MAX as u32,
            frsize: BLOCK_SIZE,
            ..Default::default()
        })
    }

    fn access(&self, _caller: Caller, ino: u64, _mask: u32) -> FsResult<()> {
        // Permissions are checked by the kernel (the mount uses default_permissions).
        self.tree().node(ino).map(|_| ())
    }

    fn getxattr(&self, ino: u64, _name: &OsStr, _size: u32) -> FsResult<XattrReply> {
        self.tree().node(ino)?;
        Err(Errno::ENODATA)
    }

    fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        self.tree().node(ino)?;
        Ok(if size == 0 {
            XattrReply::Size(0)
        } else {
            XattrReply::Data(Vec::new())
        })
    }
}
