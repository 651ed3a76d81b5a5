//! The `fuser` transport (/dev/fuse): decodes each request's arguments, calls the operation
//! of [`SpoolFs`] (see [`crate::ops`]) and encodes its answer.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use fuseuring::fs::XattrReply;
use spoolfs_engine::{Attr, Caller, FileKind, SetAttr, TimeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use crate::ops::{
    ACL_CAPABILITIES, BackingTable, EntryAnswer, LockArgs, MAX_BACKGROUND, MAX_READAHEAD_BYTES,
    MAX_WRITE_BYTES, SpoolFs, WANTED_CAPABILITIES,
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

    /// Answers a read-only open with a passthrough to the file's cache file when possible.
    /// Returns the reply back if not.
    fn open_passthrough(
        &self,
        ino: u64,
        fh: u64,
        open_flags: i32,
        reply: ReplyOpen,
    ) -> Option<ReplyOpen> {
        let backing = self
            .backing
            .open(&self.fs, ino, fh, open_flags, |f| reply.open_backing(f));
        let Some(backing) = backing else {
            return Some(reply);
        };
        // Passthrough reads do not use the page cache: no cache flags with it.
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing.id());
        None
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

fn reply_entry(reply: ReplyEntry, result: Result<EntryAnswer, fuseuring::Errno>) {
    match result {
        Ok(e) => {
            let attr = e.attr.as_ref().map_or_else(negative_entry, to_file_attr);
            reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &attr, Generation(0))
        }
        Err(e) => reply.error(errno(e)),
    }
}

/// Answers a request that returns nothing but success or an errno.
fn reply_empty(reply: ReplyEmpty, result: Result<(), fuseuring::Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, result: Result<XattrReply, fuseuring::Errno>) {
    match result {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
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
        reply_entry(reply, self.fs.lookup(parent.0, name.as_bytes()));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &to_file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
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
        match self.fs.setattr(caller(req), ino.0, &set) {
            Ok((attr, ttl)) => reply.attr(&ttl, &to_file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
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
        let r = self
            .fs
            .mknod(caller(req), parent.0, name.as_bytes(), mode, umask, rdev);
        reply_entry(reply, r);
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
        reply_entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.fs.unlink(caller(req), parent.0, name.as_bytes()),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(caller(req), parent.0, name.as_bytes()));
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
        reply_entry(reply, r);
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
        let r = self
            .fs
            .link(caller(req), ino.0, newparent.0, newname.as_bytes());
        reply_entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(caller(req), ino.0, flags.0) {
            Ok(opened) => {
                let Some(reply) = self.open_passthrough(ino.0, opened.fh, flags.0, reply) else {
                    return;
                };
                reply.opened(
                    FileHandle(opened.fh),
                    FopenFlags::from_bits_retain(opened.fopen),
                )
            }
            Err(e) => reply.error(errno(e)),
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
        match self.fs.read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
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
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self
            .fs
            .write(caller(req), ino.0, fh.0, offset, data, kill_suidgid)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
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
        reply_empty(reply, self.fs.flush(ino.0, fh.0, lock_owner.0));
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
        reply_empty(reply, self.fs.release(ino.0, fh.0, lock_owner.map(|o| o.0)));
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
        let lock = LockArgs {
            ino: ino.0,
            fh: fh.0,
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
        };
        match self.fs.getlk(&lock) {
            Ok(l) => reply.locked(l.start, l.end, l.typ, l.pid),
            Err(e) => reply.error(errno(e)),
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
        let lock = LockArgs {
            ino: ino.0,
            fh: fh.0,
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
        };
        self.fs
            .setlk(&lock, sleep, req.pid(), move |r| reply_empty(reply, r));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), FopenFlags::from_bits_retain(o.fopen)),
            Err(e) => reply.error(errno(e)),
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
        let entries = match self.fs.readdir(ino.0, fh.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
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
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.releasedir(ino.0, fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
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
        let r = self
            .fs
            .setxattr(caller(req), ino.0, name.as_bytes(), value, flags, position);
        reply_empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.getxattr(ino.0, name.as_bytes(), size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.listxattr(ino.0, size));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
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
        match self
            .fs
            .create(caller(req), parent.0, name.as_bytes(), mode, umask, flags)
        {
            Ok((entry, opened)) => {
                let attr = entry
                    .attr
                    .as_ref()
                    .map_or_else(negative_entry, to_file_attr);
                reply.created(
                    &entry.entry_ttl,
                    &attr,
                    Generation(0),
                    FileHandle(opened.fh),
                    FopenFlags::from_bits_retain(opened.fopen),
                )
            }
            Err(e) => reply.error(errno(e)),
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
        reply_empty(
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
        reply: fuser::ReplyIoctl,
    ) {
        match self.fs.ioctl(cmd) {
            Ok(data) => reply.ioctl(0, &data),
            Err(e) => reply.error(errno(e)),
        }
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
