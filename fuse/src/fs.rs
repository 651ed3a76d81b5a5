//! The `fuser` transport (/dev/fuse): decodes each request's arguments, calls the operation
//! of [`SpoolFs`] (see [`crate::ops`]) and encodes its answer.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use fuseuring::fs::{LockOut, XattrReply};
use spoolfs_engine::{Attr, Caller, FileKind, SetAttr, StatFs, TimeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::ops::{
    ACL_CAPABILITIES, BackingTable, EntryAnswer, LOCK_CAPABILITIES, LockArgs, MAX_BACKGROUND,
    MAX_READAHEAD_BYTES, MAX_WRITE_BYTES, OpenAnswer, SpoolFs, WANTED_CAPABILITIES,
};
use tracing::debug;

/// [`SpoolFs`] served by `fuser`.
pub(crate) struct FuserFs {
    pub(crate) fs: SpoolFs,
    backing: BackingTable<fuser::BackingId>,
}

impl FuserFs {
    pub(crate) fn new(fs: SpoolFs) -> Self {
        FuserFs {
            fs,
            backing: Default::default(),
        }
    }
}

fn errno(e: fuseuring::Errno) -> Errno {
    Errno::from_i32(e.0)
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

/// A `fuser` reply and the answer of [`SpoolFs`] it carries.
trait Answer: Sized {
    type Value;
    fn send(self, value: Self::Value);
    fn fail(self, e: Errno);
}

/// Sends an operation's answer, or its errno.
fn answer<R: Answer>(reply: R, result: Result<R::Value, fuseuring::Errno>) {
    match result {
        Ok(value) => reply.send(value),
        Err(e) => reply.fail(errno(e)),
    }
}

/// One translation per reply kind: `Reply: |reply, value: Answer| how it is sent`.
macro_rules! answers {
    ($($reply:ty: |$r:ident, $v:ident: $value:ty| $send:expr;)*) => {$(
        impl Answer for $reply {
            type Value = $value;
            fn send(self, $v: $value) {
                let $r = self;
                $send
            }
            fn fail(self, e: Errno) {
                self.error(e)
            }
        }
    )*};
}

answers! {
    ReplyEmpty: |r, _none: ()| r.ok();
    ReplyEntry: |r, e: EntryAnswer| {
        r.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &entry_attr(&e), Generation(0))
    };
    ReplyAttr: |r, a: (Attr, Duration)| r.attr(&a.1, &to_file_attr(&a.0));
    ReplyData: |r, data: Vec<u8>| r.data(&data);
    ReplyWrite: |r, n: u32| r.written(n);
    ReplyOpen: |r, o: OpenAnswer| {
        r.opened(FileHandle(o.fh), FopenFlags::from_bits_retain(o.fopen))
    };
    // One lifetime for the name and the attributes: create's answer has them equal.
    ReplyCreate: |r, c: (EntryAnswer, OpenAnswer)| r.created(
        &c.0.entry_ttl,
        &entry_attr(&c.0),
        Generation(0),
        FileHandle(c.1.fh),
        FopenFlags::from_bits_retain(c.1.fopen),
    );
    ReplyLock: |r, l: LockOut| r.locked(l.start, l.end, l.typ, l.pid);
    ReplyStatfs: |r, s: StatFs| {
        r.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize)
    };
    ReplyXattr: |r, x: XattrReply| match x {
        XattrReply::Size(n) => r.size(n),
        XattrReply::Data(d) => r.data(&d),
    };
    ReplyIoctl: |r, data: Vec<u8>| r.ioctl(0, &data);
    // A listing's entries are added as they come; the reply then only says it is complete.
    ReplyDirectory: |r, _none: ()| r.ok();
    ReplyDirectoryPlus: |r, _none: ()| r.ok();
}

/// The attributes of an entry answer; inode 0 for a negative entry.
fn entry_attr(e: &EntryAnswer) -> FileAttr {
    e.attr.as_ref().map_or_else(negative_entry, to_file_attr)
}

/// The lock a GETLK or SETLK request names.
fn lock_args(
    ino: INodeNo,
    fh: FileHandle,
    owner: LockOwner,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> LockArgs {
    LockArgs {
        ino: ino.0,
        fh: fh.0,
        owner: owner.0,
        start,
        end,
        typ,
        pid,
    }
}

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

impl Filesystem for FuserFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        ask_request_sizes(config);
        // Each capability the kernel lacks is skipped, not an error.
        for &(bit, name) in WANTED_CAPABILITIES {
            if config
                .add_capabilities(InitFlags::from_bits_retain(bit))
                .is_err()
            {
                debug!("kernel does not support {name}");
            }
        }
        if self.fs.wants_lock_requests()
            && config
                .add_capabilities(InitFlags::from_bits_retain(LOCK_CAPABILITIES))
                .is_err()
        {
            debug!("kernel does not pass file locks: they are kept per node");
        }
        let posix_acl = self.fs.wants_acl()
            && config
                .add_capabilities(InitFlags::from_bits_retain(ACL_CAPABILITIES))
                .is_ok();
        let passthrough = self.fs.wants_passthrough()
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        debug!(offered = ?config.capabilities(), abi = ?config.kernel_abi(), "kernel FUSE capabilities");
        self.fs.initialised(posix_acl, passthrough, "dev");
        Ok(())
    }

    fn destroy(&mut self) {
        self.fs.destroy();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer(reply, self.fs.lookup(parent.0, name.as_bytes()));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer(reply, self.fs.getattr(ino.0));
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
        answer(reply, self.fs.setattr(caller(req), ino.0, &set));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        answer(reply, self.fs.readlink(ino.0));
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
        let r = self
            .fs
            .mknod(caller(req), parent.0, name.as_bytes(), mode, umask, rdev);
        answer(reply, r);
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
        let r = self
            .fs
            .mkdir(caller(req), parent.0, name.as_bytes(), mode, umask);
        answer(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.fs.unlink(caller(req), parent.0, name.as_bytes()),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.fs.rmdir(caller(req), parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.symlink(
            caller(req),
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        answer(reply, r);
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
        let r = self.fs.rename(
            caller(req),
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        answer(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .link(caller(req), ino.0, newparent.0, newname.as_bytes());
        answer(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.fs.open(caller(req), ino.0, flags.0);
        if let Ok(o) = r
            && let Some((o, backing)) = self
                .backing
                .open(&self.fs, ino.0, o, flags.0, |f| reply.open_backing(f))
        {
            let fopen = FopenFlags::from_bits_retain(o.fopen);
            return reply.opened_passthrough(FileHandle(o.fh), fopen, backing.id());
        }
        answer(reply, r);
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
        answer(reply, self.fs.read(ino.0, fh.0, offset, size));
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
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let r = self
            .fs
            .write(caller(req), ino.0, fh.0, offset, data, kill_suidgid);
        answer(reply, r);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.fs.flush(ino.0, fh.0, lock_owner.0));
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
        self.backing.release(fh.0);
        answer(reply, self.fs.release(ino.0, fh.0, lock_owner.map(|o| o.0)));
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let lock = lock_args(ino, fh, lock_owner, start, end, typ, pid);
        answer(reply, self.fs.getlk(&lock));
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
        let lock = lock_args(ino, fh, lock_owner, start, end, typ, pid);
        self.fs
            .setlk(&lock, sleep, req.pid(), move |r| answer(reply, r));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.fs.fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        answer(reply, self.fs.opendir(ino.0));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(ino.0, fh.0, offset).map(|entries| {
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
        });
        answer(reply, r);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.fs.readdirplus(ino.0, fh.0, offset, |e| {
            reply.add(
                INodeNo(e.attr.ino),
                e.offset,
                OsStr::from_bytes(e.name),
                &e.ttl,
                &to_file_attr(&e.attr),
                Generation(0),
            )
        });
        answer(reply, r);
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.fs.releasedir(ino.0, fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.fs.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        answer(reply, self.fs.statfs());
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
        let r = self
            .fs
            .setxattr(caller(req), ino.0, name.as_bytes(), value, flags, position);
        answer(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        answer(reply, self.fs.getxattr(ino.0, name.as_bytes(), size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        answer(reply, self.fs.listxattr(ino.0, size));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(
            reply,
            self.fs.removexattr(caller(req), ino.0, name.as_bytes()),
        );
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
        let r = self
            .fs
            .create(caller(req), parent.0, name.as_bytes(), mode, umask, flags);
        answer(reply, r);
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
        answer(
            reply,
            self.fs
                .fallocate(caller(req), ino.0, fh.0, offset, length, mode),
        );
    }

    // The requests below have no meaning for spoolfs. fuser's defaults answer them too, but
    // log a warning each time.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        answer(reply, self.fs.ioctl(cmd));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::sample_attr;

    #[test]
    fn attr_conversion() {
        let a = sample_attr(SystemTime::now());
        let f = to_file_attr(&a);
        assert_eq!(f.ino, INodeNo(7));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!((f.uid, f.gid, f.size, f.perm), (5, 6, 3, 0o777));
    }
}
