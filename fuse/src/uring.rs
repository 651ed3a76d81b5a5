//! The io_uring transport (`fuseuring`, Linux 6.14+): [`SpoolFs`] behind
//! `fuseuring::Filesystem`. Like the `fuser` adapter ([`crate::fs`]) it only decodes the
//! arguments and encodes the answers of the operations in [`crate::ops`].

use fuseuring::abi;
use fuseuring::fs::{
    Caller as RingCaller, DirFiller, DirPlusFiller, Entry, FsResult, LateReply, LockIn, LockOut,
    Opened, SetAttr as RingSetAttr, Statfs, TimeSet as RingTimeSet, XattrReply,
};
use spoolfs_engine::{Attr, Caller, FileKind, SetAttr, StatFs, TimeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ops::{
    ACL_CAPABILITIES, BackingTable, EntryAnswer, LOCK_CAPABILITIES, LockArgs, OpenAnswer, SpoolFs,
    WANTED_CAPABILITIES,
};

/// [`SpoolFs`] served by `fuseuring`.
pub(crate) struct UringFs {
    pub(crate) fs: SpoolFs,
    /// The session's connection, for passthrough registrations; set once the session exists.
    pub(crate) notifier: std::sync::OnceLock<fuseuring::Notifier>,
    backing: BackingTable<fuseuring::BackingId>,
}

impl UringFs {
    pub(crate) fn new(fs: SpoolFs) -> Self {
        UringFs {
            fs,
            notifier: Default::default(),
            backing: Default::default(),
        }
    }
}

fn caller(c: RingCaller) -> Caller {
    Caller {
        uid: c.uid,
        gid: c.gid,
        pid: c.pid,
        umask: 0,
    }
}

/// The kernel's file type bits (`S_IF*`) of a kind.
fn mode_type(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::Socket => libc::S_IFSOCK,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::BlockDevice => libc::S_IFBLK,
    }
}

/// Seconds and nanoseconds since the epoch (times before it are the epoch).
fn timespec(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn system_time(secs: u64, nsecs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nsecs)
}

/// An engine attribute in the kernel's form.
pub(crate) fn to_kernel_attr(a: &Attr) -> abi::Attr {
    let (atime, atimensec) = timespec(a.atime);
    let (mtime, mtimensec) = timespec(a.mtime);
    let (ctime, ctimensec) = timespec(a.ctime);
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: mode_type(a.kind) | a.perm as u32,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

// One translation per kind of answer of [`SpoolFs`], into fuseuring's form.

/// An entry answer; a negative entry has inode 0.
fn entry(e: EntryAnswer) -> Entry {
    Entry {
        attr: e.attr.as_ref().map(to_kernel_attr).unwrap_or_default(),
        entry_ttl: e.entry_ttl,
        attr_ttl: e.attr_ttl,
    }
}

fn opened(o: OpenAnswer) -> Opened {
    Opened {
        fh: o.fh,
        open_flags: o.fopen,
        backing_id: 0,
    }
}

/// Attributes and how long the kernel may keep them.
fn attr((attr, ttl): (Attr, Duration)) -> (abi::Attr, Duration) {
    (to_kernel_attr(&attr), ttl)
}

fn statfs(s: StatFs) -> Statfs {
    Statfs {
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
        ..Default::default()
    }
}

fn time_set(t: RingTimeSet) -> TimeSet {
    match t {
        RingTimeSet::Now => TimeSet::Now,
        RingTimeSet::At(secs, nsecs) => TimeSet::At(system_time(secs, nsecs)),
    }
}

fn lock_args(ino: u64, l: &LockIn) -> LockArgs {
    LockArgs {
        ino,
        fh: l.fh,
        owner: l.owner,
        start: l.start,
        end: l.end,
        typ: l.typ,
        pid: l.pid,
    }
}

impl fuseuring::Filesystem for UringFs {
    fn init_flags(&self, offered: u64) -> u64 {
        let mut wanted = WANTED_CAPABILITIES
            .iter()
            .fold(0, |bits, &(bit, _)| bits | bit);
        // Both or neither: the kernel enforcing ACLs while applying the umask itself, or the
        // other way round, would be neither POSIX nor what spoolfs stores.
        if self.fs.wants_acl() && offered & ACL_CAPABILITIES == ACL_CAPABILITIES {
            wanted |= ACL_CAPABILITIES;
        }
        if self.fs.wants_passthrough() {
            wanted |= abi::FUSE_PASSTHROUGH;
        }
        if self.fs.wants_lock_requests() {
            wanted |= LOCK_CAPABILITIES;
        }
        wanted
    }

    fn init(&self, granted: u64) {
        let posix_acl = granted & ACL_CAPABILITIES == ACL_CAPABILITIES;
        let passthrough = granted & abi::FUSE_PASSTHROUGH != 0;
        self.fs.initialised(posix_acl, passthrough, "uring");
    }

    fn lookup(&self, _caller: RingCaller, parent: u64, name: &OsStr) -> FsResult<Entry> {
        self.fs.lookup(parent, name.as_bytes()).map(entry)
    }

    fn forget(&self, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    fn getattr(&self, ino: u64, _fh: Option<u64>) -> FsResult<(abi::Attr, Duration)> {
        self.fs.getattr(ino).map(attr)
    }

    fn setattr(
        &self,
        who: RingCaller,
        ino: u64,
        c: &RingSetAttr,
    ) -> FsResult<(abi::Attr, Duration)> {
        let set = SetAttr {
            mode: c.mode,
            uid: c.uid,
            gid: c.gid,
            size: c.size,
            atime: c.atime.map(time_set),
            mtime: c.mtime.map(time_set),
            ctime: c.ctime.map(|(s, n)| system_time(s, n)),
            fh: c.fh,
        };
        self.fs.setattr(caller(who), ino, &set).map(attr)
    }

    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.fs.readlink(ino)
    }

    fn mknod(
        &self,
        who: RingCaller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        self.fs
            .mknod(caller(who), parent, name.as_bytes(), mode, umask, rdev)
            .map(entry)
    }

    fn mkdir(
        &self,
        who: RingCaller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        self.fs
            .mkdir(caller(who), parent, name.as_bytes(), mode, umask)
            .map(entry)
    }

    fn symlink(
        &self,
        who: RingCaller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> FsResult<Entry> {
        self.fs
            .symlink(caller(who), parent, name.as_bytes(), target.as_bytes())
            .map(entry)
    }

    fn link(
        &self,
        who: RingCaller,
        ino: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FsResult<Entry> {
        self.fs
            .link(caller(who), ino, new_parent, new_name.as_bytes())
            .map(entry)
    }

    fn create(
        &self,
        who: RingCaller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> FsResult<(Entry, Opened)> {
        let (e, o) = self.fs.create(
            caller(who),
            parent,
            name.as_bytes(),
            mode,
            umask,
            flags as i32,
        )?;
        Ok((entry(e), opened(o)))
    }

    fn open(&self, who: RingCaller, ino: u64, flags: u32) -> FsResult<Opened> {
        let o = self.fs.open(caller(who), ino, flags as i32)?;
        if let Some(notifier) = self.notifier.get()
            && let Some((o, backing)) = self
                .backing
                .open(&self.fs, ino, o, flags as i32, |f| notifier.open_backing(f))
        {
            return Ok(Opened {
                backing_id: backing.id().id(),
                ..opened(o)
            });
        }
        Ok(opened(o))
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let data = self.fs.read(ino, fh, offset, size)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn write(
        &self,
        who: RingCaller,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        write_flags: u32,
    ) -> FsResult<u32> {
        let kill_suidgid = write_flags & abi::FUSE_WRITE_KILL_SUIDGID != 0;
        self.fs
            .write(caller(who), ino, fh, offset, data, kill_suidgid)
    }

    fn flush(&self, ino: u64, fh: u64, lock_owner: u64) -> FsResult<()> {
        self.fs.flush(ino, fh, lock_owner)
    }

    fn release(&self, ino: u64, fh: u64, _flags: u32, lock_owner: Option<u64>) -> FsResult<()> {
        self.backing.release(fh);
        self.fs.release(ino, fh, lock_owner)
    }

    fn fsync(&self, ino: u64, fh: u64, datasync: bool) -> FsResult<()> {
        self.fs.fsync(ino, fh, datasync)
    }

    fn opendir(&self, ino: u64) -> FsResult<Opened> {
        self.fs.opendir(ino).map(opened)
    }

    fn readdir(&self, ino: u64, fh: u64, offset: u64, out: &mut DirFiller<'_>) -> FsResult<()> {
        for e in self.fs.readdir(ino, fh, offset)? {
            let typ = u32::from(e.kind.dirent_type());
            if !out.add(e.ino, e.offset, typ, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirPlusFiller<'_>,
    ) -> FsResult<()> {
        self.fs.readdirplus(ino, fh, offset, |e| {
            let kernel_entry = Entry {
                attr: to_kernel_attr(&e.attr),
                entry_ttl: e.ttl,
                attr_ttl: e.ttl,
            };
            !out.add(&kernel_entry, e.offset, OsStr::from_bytes(e.name))
        })
    }

    fn releasedir(&self, ino: u64, fh: u64) -> FsResult<()> {
        self.fs.releasedir(ino, fh)
    }

    fn fsyncdir(&self, ino: u64, _fh: u64, _datasync: bool) -> FsResult<()> {
        self.fs.fsyncdir(ino)
    }

    fn unlink(&self, who: RingCaller, parent: u64, name: &OsStr) -> FsResult<()> {
        self.fs.unlink(caller(who), parent, name.as_bytes())
    }

    fn rmdir(&self, who: RingCaller, parent: u64, name: &OsStr) -> FsResult<()> {
        self.fs.rmdir(caller(who), parent, name.as_bytes())
    }

    fn rename(
        &self,
        who: RingCaller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.fs.rename(
            caller(who),
            parent,
            name.as_bytes(),
            new_parent,
            new_name.as_bytes(),
            flags,
        )
    }

    fn statfs(&self, _ino: u64) -> FsResult<Statfs> {
        self.fs.statfs().map(statfs)
    }

    fn setxattr(
        &self,
        who: RingCaller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.fs
            .setxattr(caller(who), ino, name.as_bytes(), value, flags as i32, 0)
    }

    fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        self.fs.getxattr(ino, name.as_bytes(), size)
    }

    fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        self.fs.listxattr(ino, size)
    }

    fn removexattr(&self, who: RingCaller, ino: u64, name: &OsStr) -> FsResult<()> {
        self.fs.removexattr(caller(who), ino, name.as_bytes())
    }

    fn getlk(&self, _who: RingCaller, ino: u64, lock: &LockIn) -> FsResult<LockOut> {
        self.fs.getlk(&lock_args(ino, lock))
    }

    fn setlk(&self, who: RingCaller, ino: u64, lock: &LockIn, sleep: bool, reply: LateReply) {
        self.fs
            .setlk(&lock_args(ino, lock), sleep, who.pid, move |r| {
                reply.send(r)
            });
    }

    fn fallocate(
        &self,
        who: RingCaller,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> FsResult<()> {
        self.fs
            .fallocate(caller(who), ino, fh, offset, length, mode as i32)
    }

    fn ioctl(&self, _ino: u64, _fh: u64, cmd: u32) -> FsResult<i32> {
        self.fs.ioctl(cmd).map(|_| 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::sample_attr;

    #[test]
    fn kernel_attrs_carry_the_type_bits_and_the_times() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        let a = sample_attr(t);
        let k = to_kernel_attr(&a);
        assert_eq!(k.mode, libc::S_IFLNK | 0o777);
        assert_eq!((k.ino, k.uid, k.gid, k.size), (7, 5, 6, 3));
        assert_eq!((k.mtime, k.mtimensec), (1_700_000_000, 42));
        assert_eq!(time_set(RingTimeSet::At(1_700_000_000, 42)), TimeSet::At(t));
    }

    #[test]
    fn a_negative_entry_has_inode_zero() {
        let e = entry(EntryAnswer {
            attr: None,
            attr_ttl: Duration::ZERO,
            entry_ttl: Duration::from_secs(1),
        });
        assert_eq!(e.attr.ino, 0);
        assert_eq!(e.entry_ttl, Duration::from_secs(1));
    }
}
