//! Request decoding and reply encoding, shared by both transports.
//!
//! A request arrives as its `fuse_in_header`, the opcode's fixed argument struct (if any)
//! and the rest (names, written data). Over /dev/fuse the last two are one body, split with
//! [`abi::op_header_len`]; over io_uring they come in separate buffers. [`dispatch`] calls the
//! file system and writes the reply's payload (everything after `fuse_out_header`) into `out`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::abi::{self, Plain};
use crate::fs::{
    Caller, DirFiller, DirPlusFiller, Entry, Errno, Filesystem, LateReply, LockIn, ReplySink,
    SetAttr, TimeSet, XattrReply,
};
use std::sync::Arc;

/// What to send back for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel expects no reply (FORGET, BATCH_FORGET, INTERRUPT).
    NoReply,
    /// Success with `len` bytes of payload written to `out`.
    Ok(usize),
    /// Failure with this errno (positive).
    Err(i32),
    /// The reply goes later, through the [`LateReply`] handed to the file system.
    Deferred,
}

impl From<Errno> for Outcome {
    fn from(e: Errno) -> Self {
        Outcome::Err(e.0)
    }
}

/// The `fuse_out_header` of a reply with this outcome (`NoReply` gives none).
pub fn out_header(unique: u64, outcome: Outcome) -> Option<abi::OutHeader> {
    let (error, len) = match outcome {
        Outcome::NoReply | Outcome::Deferred => return None,
        Outcome::Ok(len) => (0, len),
        Outcome::Err(errno) => (-errno, 0),
    };
    Some(abi::OutHeader {
        len: (size_of::<abi::OutHeader>() + len) as u32,
        error,
        unique,
    })
}

/// Splits a /dev/fuse request body into the opcode's fixed struct and the rest.
pub fn split_body(opcode: u32, body: &[u8]) -> (&[u8], &[u8]) {
    let head = abi::op_header_len(opcode).min(body.len());
    body.split_at(head)
}

/// A request's arguments: the fixed struct and the variable part.
struct Args<'a> {
    fixed: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    fn fixed<T: Plain>(&self) -> Result<T, Errno> {
        T::read_from(self.fixed).ok_or(Errno::EINVAL)
    }

    /// The next `len` bytes of the variable part.
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], Errno> {
        if self.rest.len() < len {
            return Err(Errno::EINVAL);
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    /// The next NUL-terminated name of the variable part.
    fn name(&mut self) -> Result<&'a OsStr, Errno> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno::EINVAL)?;
        let name = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(OsStr::from_bytes(name))
    }
}

/// Writes `value` at the start of `out`, returning the outcome for a reply made of it.
fn reply_struct<T: Plain>(out: &mut [u8], value: &T) -> Outcome {
    let bytes = value.as_bytes();
    if out.len() < bytes.len() {
        return Outcome::Err(libc::EIO);
    }
    out[..bytes.len()].copy_from_slice(bytes);
    Outcome::Ok(bytes.len())
}

fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

pub(crate) fn entry_out(entry: &Entry) -> abi::EntryOut {
    let (entry_valid, entry_valid_nsec) = split_duration(entry.entry_ttl);
    let (attr_valid, attr_valid_nsec) = split_duration(entry.attr_ttl);
    abi::EntryOut {
        nodeid: entry.attr.ino,
        generation: 0,
        entry_valid,
        attr_valid,
        entry_valid_nsec,
        attr_valid_nsec,
        attr: entry.attr,
    }
}

fn attr_out(attr: &abi::Attr, ttl: Duration) -> abi::AttrOut {
    let (attr_valid, attr_valid_nsec) = split_duration(ttl);
    abi::AttrOut {
        attr_valid,
        attr_valid_nsec,
        dummy: 0,
        attr: *attr,
    }
}

fn xattr_reply(out: &mut [u8], reply: XattrReply, size: u32) -> Outcome {
    match reply {
        XattrReply::Size(n) => reply_struct(
            out,
            &abi::GetxattrOut {
                size: n,
                padding: 0,
            },
        ),
        XattrReply::Data(bytes) => {
            if bytes.len() > size as usize || bytes.len() > out.len() {
                return Outcome::Err(libc::ERANGE);
            }
            out[..bytes.len()].copy_from_slice(&bytes);
            Outcome::Ok(bytes.len())
        }
    }
}

fn setattr_changes(a: &abi::SetattrIn) -> SetAttr {
    let has = |bit: u32| a.valid & bit != 0;
    let time = |now: u32, set: u32, secs: u64, nsecs: u32| {
        if has(now) {
            Some(TimeSet::Now)
        } else if has(set) {
            Some(TimeSet::At(secs, nsecs))
        } else {
            None
        }
    };
    SetAttr {
        mode: has(abi::FATTR_MODE).then_some(a.mode),
        uid: has(abi::FATTR_UID).then_some(a.uid),
        gid: has(abi::FATTR_GID).then_some(a.gid),
        size: has(abi::FATTR_SIZE).then_some(a.size),
        atime: time(abi::FATTR_ATIME_NOW, abi::FATTR_ATIME, a.atime, a.atimensec),
        mtime: time(abi::FATTR_MTIME_NOW, abi::FATTR_MTIME, a.mtime, a.mtimensec),
        ctime: has(abi::FATTR_CTIME).then_some((a.ctime, a.ctimensec)),
        fh: has(abi::FATTR_FH).then_some(a.fh),
    }
}

/// Where a request's reply may go later: the transport's sink and the request's token
/// there.
#[derive(Clone)]
pub(crate) struct Deferral {
    pub sink: Arc<dyn ReplySink>,
    pub token: u64,
}

/// Serves one request (anything but INIT, which the session answers itself). A reply the
/// file system sends later (a SETLKW that waits) is taken in by a blocking wait here.
pub fn dispatch<F: Filesystem + ?Sized>(
    fs: &F,
    header: &abi::InHeader,
    fixed: &[u8],
    rest: &[u8],
    out: &mut [u8],
) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    let deferral = Deferral {
        sink: Arc::new(ChannelSink(std::sync::Mutex::new(tx))),
        token: 0,
    };
    match dispatch_deferring(fs, header, fixed, rest, out, &deferral) {
        Outcome::Deferred => match rx.recv() {
            Ok(0) => Outcome::Ok(0),
            Ok(error) => Outcome::Err(-error),
            Err(_) => Outcome::Err(libc::EIO),
        },
        outcome => outcome,
    }
}

/// Where a [`LateReply`] goes while its handler runs: one answered before the handler
/// returned (a lock that was free) is answered like any other reply, without a trip through
/// the transport's sink; one answered later goes to that sink.
#[derive(Default)]
struct Handoff {
    state: std::sync::Mutex<HandoffState>,
}

#[derive(Default)]
enum HandoffState {
    #[default]
    Running,
    /// Answered with this `error` field before the handler returned.
    Answered(i32),
    /// The handler returned unanswered: the reply goes here.
    Detached(Deferral),
}

impl Handoff {
    /// The outcome once the handler returned: its answer, or [`Outcome::Deferred`] (the
    /// reply then goes to `deferral`'s sink).
    fn settle(&self, deferral: &Deferral) -> Outcome {
        let mut state = self.state.lock().expect("handoff");
        match *state {
            HandoffState::Answered(0) => Outcome::Ok(0),
            HandoffState::Answered(error) => Outcome::Err(-error),
            _ => {
                *state = HandoffState::Detached(deferral.clone());
                Outcome::Deferred
            }
        }
    }
}

impl ReplySink for Handoff {
    fn send(&self, _token: u64, header: abi::OutHeader, payload: &[u8]) {
        let mut state = self.state.lock().expect("handoff");
        match &*state {
            HandoffState::Running => *state = HandoffState::Answered(header.error),
            HandoffState::Detached(d) => {
                let d = d.clone();
                drop(state);
                d.sink.send(d.token, header, payload);
            }
            HandoffState::Answered(_) => {}
        }
    }
}

/// Takes a late reply's error field in over a channel (for [`dispatch`]).
struct ChannelSink(std::sync::Mutex<std::sync::mpsc::Sender<i32>>);

impl ReplySink for ChannelSink {
    fn send(&self, _token: u64, header: abi::OutHeader, _payload: &[u8]) {
        let _ = self.0.lock().map(|tx| tx.send(header.error));
    }
}

/// Serves one request; a request answered later gives [`Outcome::Deferred`] and its reply
/// goes to `deferral`'s sink.
pub(crate) fn dispatch_deferring<F: Filesystem + ?Sized>(
    fs: &F,
    header: &abi::InHeader,
    fixed: &[u8],
    rest: &[u8],
    out: &mut [u8],
    deferral: &Deferral,
) -> Outcome {
    match serve(fs, header, Args { fixed, rest }, out, deferral) {
        Ok(outcome) => outcome,
        Err(e) => e.into(),
    }
}

fn lock_in(a: &abi::LkIn) -> LockIn {
    LockIn {
        fh: a.fh,
        owner: a.owner,
        start: a.lk.start,
        end: a.lk.end,
        typ: a.lk.typ as i32,
        pid: a.lk.pid,
        flock: a.lk_flags & abi::FUSE_LK_FLOCK != 0,
    }
}

fn open_out(opened: &crate::fs::Opened) -> abi::OpenOut {
    let passthrough = if opened.backing_id != 0 {
        abi::FOPEN_PASSTHROUGH
    } else {
        0
    };
    abi::OpenOut {
        fh: opened.fh,
        open_flags: opened.open_flags | passthrough,
        backing_id: opened.backing_id,
    }
}

fn serve<F: Filesystem + ?Sized>(
    fs: &F,
    h: &abi::InHeader,
    mut args: Args<'_>,
    out: &mut [u8],
    deferral: &Deferral,
) -> Result<Outcome, Errno> {
    let caller = Caller {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    let ino = h.nodeid;
    Ok(match h.opcode {
        abi::FUSE_LOOKUP => {
            let name = args.name()?;
            reply_struct(out, &entry_out(&fs.lookup(caller, ino, name)?))
        }
        abi::FUSE_FORGET => {
            let forget: abi::ForgetIn = args.fixed()?;
            fs.forget(ino, forget.nlookup);
            Outcome::NoReply
        }
        abi::FUSE_BATCH_FORGET => {
            let batch: abi::BatchForgetIn = args.fixed()?;
            let one = size_of::<abi::ForgetOne>();
            for chunk in args.rest.chunks_exact(one).take(batch.count as usize) {
                if let Some(f) = abi::ForgetOne::read_from(chunk) {
                    fs.forget(f.nodeid, f.nlookup);
                }
            }
            Outcome::NoReply
        }
        abi::FUSE_INTERRUPT => Outcome::NoReply,
        abi::FUSE_GETATTR => {
            let a: abi::GetattrIn = args.fixed()?;
            // FUSE_GETATTR_FH: the request names an open file.
            let fh = (a.getattr_flags & 1 != 0).then_some(a.fh);
            let (attr, ttl) = fs.getattr(ino, fh)?;
            reply_struct(out, &attr_out(&attr, ttl))
        }
        abi::FUSE_SETATTR => {
            let a: abi::SetattrIn = args.fixed()?;
            let (attr, ttl) = fs.setattr(caller, ino, &setattr_changes(&a))?;
            reply_struct(out, &attr_out(&attr, ttl))
        }
        abi::FUSE_MKDIR => {
            let a: abi::MkdirIn = args.fixed()?;
            let name = args.name()?;
            let entry = fs.mkdir(caller, ino, name, a.mode, a.umask)?;
            reply_struct(out, &entry_out(&entry))
        }
        abi::FUSE_CREATE => {
            let a: abi::CreateIn = args.fixed()?;
            let name = args.name()?;
            let (entry, opened) = fs.create(caller, ino, name, a.mode, a.umask, a.flags)?;
            let entry = entry_out(&entry);
            let open = open_out(&opened);
            let (e, o) = (entry.as_bytes(), open.as_bytes());
            if out.len() < e.len() + o.len() {
                return Err(Errno::EIO);
            }
            out[..e.len()].copy_from_slice(e);
            out[e.len()..e.len() + o.len()].copy_from_slice(o);
            Outcome::Ok(e.len() + o.len())
        }
        abi::FUSE_OPEN | abi::FUSE_OPENDIR => {
            let a: abi::OpenIn = args.fixed()?;
            let opened = if h.opcode == abi::FUSE_OPEN {
                fs.open(caller, ino, a.flags)?
            } else {
                fs.opendir(ino)?
            };
            reply_struct(out, &open_out(&opened))
        }
        abi::FUSE_READ => {
            let a: abi::ReadIn = args.fixed()?;
            let want = (a.size as usize).min(out.len());
            let n = fs.read(ino, a.fh, a.offset, &mut out[..want])?;
            Outcome::Ok(n.min(want))
        }
        abi::FUSE_WRITE => {
            let a: abi::WriteIn = args.fixed()?;
            let data = args.rest.get(..a.size as usize).ok_or(Errno::EINVAL)?;
            let written = fs.write(caller, ino, a.fh, a.offset, data, a.write_flags)?;
            reply_struct(
                out,
                &abi::WriteOut {
                    size: written,
                    padding: 0,
                },
            )
        }
        abi::FUSE_FLUSH => {
            let a: abi::FlushIn = args.fixed()?;
            fs.flush(ino, a.fh, a.lock_owner)?;
            Outcome::Ok(0)
        }
        abi::FUSE_RELEASE => {
            let a: abi::ReleaseIn = args.fixed()?;
            let lock_owner =
                (a.release_flags & abi::FUSE_RELEASE_FLOCK_UNLOCK != 0).then_some(a.lock_owner);
            fs.release(ino, a.fh, a.flags, lock_owner)?;
            Outcome::Ok(0)
        }
        abi::FUSE_RELEASEDIR => {
            let a: abi::ReleaseIn = args.fixed()?;
            fs.releasedir(ino, a.fh)?;
            Outcome::Ok(0)
        }
        abi::FUSE_FSYNC => {
            let a: abi::FsyncIn = args.fixed()?;
            fs.fsync(ino, a.fh, a.fsync_flags & 1 != 0)?;
            Outcome::Ok(0)
        }
        abi::FUSE_READDIR => {
            let a: abi::ReadIn = args.fixed()?;
            let want = (a.size as usize).min(out.len());
            let mut filler = DirFiller::new(&mut out[..want]);
            fs.readdir(ino, a.fh, a.offset, &mut filler)?;
            Outcome::Ok(filler.len())
        }
        abi::FUSE_UNLINK => {
            let name = args.name()?;
            fs.unlink(caller, ino, name)?;
            Outcome::Ok(0)
        }
        abi::FUSE_RMDIR => {
            let name = args.name()?;
            fs.rmdir(caller, ino, name)?;
            Outcome::Ok(0)
        }
        abi::FUSE_RENAME | abi::FUSE_RENAME2 => {
            let (new_parent, flags) = if h.opcode == abi::FUSE_RENAME {
                (args.fixed::<abi::RenameIn>()?.newdir, 0)
            } else {
                let a: abi::Rename2In = args.fixed()?;
                (a.newdir, a.flags)
            };
            let name = args.name()?;
            let new_name = args.name()?;
            fs.rename(caller, ino, name, new_parent, new_name, flags)?;
            Outcome::Ok(0)
        }
        abi::FUSE_STATFS => reply_struct(out, &fs.statfs(ino)?),
        abi::FUSE_ACCESS => {
            let a: abi::AccessIn = args.fixed()?;
            fs.access(caller, ino, a.mask)?;
            Outcome::Ok(0)
        }
        abi::FUSE_GETXATTR => {
            let a: abi::GetxattrIn = args.fixed()?;
            let name = args.name()?;
            xattr_reply(out, fs.getxattr(ino, name, a.size)?, a.size)
        }
        abi::FUSE_LISTXATTR => {
            let a: abi::GetxattrIn = args.fixed()?;
            xattr_reply(out, fs.listxattr(ino, a.size)?, a.size)
        }
        abi::FUSE_READLINK => {
            let target = fs.readlink(ino)?;
            if target.len() > out.len() {
                return Err(Errno::ENAMETOOLONG);
            }
            out[..target.len()].copy_from_slice(&target);
            Outcome::Ok(target.len())
        }
        abi::FUSE_MKNOD => {
            let a: abi::MknodIn = args.fixed()?;
            let name = args.name()?;
            let entry = fs.mknod(caller, ino, name, a.mode, a.umask, a.rdev)?;
            reply_struct(out, &entry_out(&entry))
        }
        abi::FUSE_SYMLINK => {
            let name = args.name()?;
            let target = args.name()?;
            reply_struct(out, &entry_out(&fs.symlink(caller, ino, name, target)?))
        }
        abi::FUSE_LINK => {
            let a: abi::LinkIn = args.fixed()?;
            let name = args.name()?;
            // The request's node is the new parent; the file linked is `oldnodeid`.
            reply_struct(out, &entry_out(&fs.link(caller, a.oldnodeid, ino, name)?))
        }
        abi::FUSE_READDIRPLUS => {
            let a: abi::ReadIn = args.fixed()?;
            let want = (a.size as usize).min(out.len());
            let mut filler = DirPlusFiller::new(&mut out[..want]);
            fs.readdirplus(ino, a.fh, a.offset, &mut filler)?;
            Outcome::Ok(filler.len())
        }
        abi::FUSE_FSYNCDIR => {
            let a: abi::FsyncIn = args.fixed()?;
            fs.fsyncdir(ino, a.fh, a.fsync_flags & 1 != 0)?;
            Outcome::Ok(0)
        }
        abi::FUSE_SETXATTR => {
            let a: abi::SetxattrIn = args.fixed()?;
            let name = args.name()?;
            let value = args.bytes(a.size as usize)?;
            fs.setxattr(caller, ino, name, value, a.flags)?;
            Outcome::Ok(0)
        }
        abi::FUSE_REMOVEXATTR => {
            let name = args.name()?;
            fs.removexattr(caller, ino, name)?;
            Outcome::Ok(0)
        }
        abi::FUSE_GETLK => {
            let a: abi::LkIn = args.fixed()?;
            let l = fs.getlk(caller, ino, &lock_in(&a))?;
            let lk = abi::FileLock {
                start: l.start,
                end: l.end,
                typ: l.typ as u32,
                pid: l.pid,
            };
            reply_struct(out, &abi::LkOut { lk })
        }
        abi::FUSE_SETLK | abi::FUSE_SETLKW => {
            let a: abi::LkIn = args.fixed()?;
            let handoff = Arc::new(Handoff::default());
            let reply = LateReply::new(h.unique, deferral.token, handoff.clone());
            let sleep = h.opcode == abi::FUSE_SETLKW;
            fs.setlk(caller, ino, &lock_in(&a), sleep, reply);
            handoff.settle(deferral)
        }
        abi::FUSE_FALLOCATE => {
            let a: abi::FallocateIn = args.fixed()?;
            fs.fallocate(caller, ino, a.fh, a.offset, a.length, a.mode)?;
            Outcome::Ok(0)
        }
        abi::FUSE_IOCTL => {
            let a: abi::IoctlIn = args.fixed()?;
            let result = fs.ioctl(ino, a.fh, a.cmd)?;
            reply_struct(
                out,
                &abi::IoctlOut {
                    result,
                    ..Default::default()
                },
            )
        }
        // A plain FUSE mount never sends DESTROY (only fuseblk does); answer it anyway.
        abi::FUSE_DESTROY => Outcome::Ok(0),
        _ => Outcome::Err(libc::ENOSYS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfs::MemFs;

    fn header(opcode: u32, nodeid: u64) -> abi::InHeader {
        abi::InHeader {
            opcode,
            nodeid,
            unique: 7,
            ..Default::default()
        }
    }

    #[test]
    fn lookup_of_a_missing_name_is_enoent_and_a_name_without_nul_is_einval() {
        let fs = MemFs::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut out = vec![0u8; 4096];
        let h = header(abi::FUSE_LOOKUP, abi::ROOT_ID);
        assert_eq!(
            dispatch(&fs, &h, &[], b"nope\0", &mut out),
            Outcome::Err(libc::ENOENT)
        );
        assert_eq!(
            dispatch(&fs, &h, &[], b"nope", &mut out),
            Outcome::Err(libc::EINVAL)
        );
    }

    #[test]
    fn create_then_write_then_read_round_trips_through_the_encoded_form() {
        let fs = MemFs::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut out = vec![0u8; 4096];
        let create = abi::CreateIn {
            flags: libc::O_WRONLY as u32,
            mode: 0o100644,
            umask: 0o022,
            open_flags: 0,
        };
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_CREATE, abi::ROOT_ID),
            create.as_bytes(),
            b"f\0",
            &mut out,
        );
        assert_eq!(outcome, Outcome::Ok(128 + 16));
        let entry = abi::EntryOut::read_from(&out).unwrap();
        let opened = abi::OpenOut::read_from(&out[128..]).unwrap();
        assert_eq!(entry.attr.mode, 0o100644);

        let write = abi::WriteIn {
            fh: opened.fh,
            offset: 3,
            size: 5,
            ..Default::default()
        };
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_WRITE, entry.nodeid),
            write.as_bytes(),
            b"hello",
            &mut out,
        );
        assert_eq!(outcome, Outcome::Ok(8));
        assert_eq!(abi::WriteOut::read_from(&out).unwrap().size, 5);

        let read = abi::ReadIn {
            fh: opened.fh,
            offset: 0,
            size: 100,
            ..Default::default()
        };
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_READ, entry.nodeid),
            read.as_bytes(),
            &[],
            &mut out,
        );
        assert_eq!(outcome, Outcome::Ok(8));
        assert_eq!(&out[..8], b"\0\0\0hello");
    }

    /// Records the arguments it was called with; answers locks from another thread.
    #[derive(Default)]
    struct Recorder {
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl Recorder {
        fn note(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Filesystem for Recorder {
        fn symlink(
            &self,
            _caller: Caller,
            parent: u64,
            name: &OsStr,
            target: &OsStr,
        ) -> Result<Entry, Errno> {
            self.note(format!("symlink {parent} {name:?} -> {target:?}"));
            Err(Errno::EEXIST)
        }
        fn link(
            &self,
            _caller: Caller,
            ino: u64,
            new_parent: u64,
            new_name: &OsStr,
        ) -> Result<Entry, Errno> {
            self.note(format!("link {ino} {new_parent} {new_name:?}"));
            Err(Errno::EEXIST)
        }
        fn setxattr(
            &self,
            _caller: Caller,
            ino: u64,
            name: &OsStr,
            value: &[u8],
            flags: u32,
        ) -> Result<(), Errno> {
            self.note(format!("setxattr {ino} {name:?} {value:?} {flags}"));
            Ok(())
        }
        fn readdirplus(
            &self,
            _ino: u64,
            _fh: u64,
            offset: u64,
            out: &mut DirPlusFiller<'_>,
        ) -> Result<(), Errno> {
            for i in offset..3 {
                let entry = Entry {
                    attr: abi::Attr {
                        ino: 10 + i,
                        mode: libc::S_IFREG | 0o644,
                        ..Default::default()
                    },
                    entry_ttl: Duration::from_secs(1),
                    attr_ttl: Duration::from_secs(1),
                };
                if !out.add(&entry, i + 1, OsStr::new(&format!("file{i}"))) {
                    break;
                }
            }
            Ok(())
        }
        fn setlk(&self, _caller: Caller, _ino: u64, lock: &LockIn, sleep: bool, reply: LateReply) {
            self.note(format!(
                "setlk {} {} flock={} sleep={sleep}",
                lock.start, lock.end, lock.flock
            ));
            if sleep {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    reply.send(Err(Errno::EAGAIN));
                });
            } else {
                reply.send(Ok(()));
            }
        }
    }

    #[test]
    fn symlink_link_and_setxattr_take_their_arguments_in_the_kernels_order() {
        let fs = Recorder::default();
        let mut out = vec![0u8; 4096];
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_SYMLINK, 5),
            &[],
            b"ln\0target\0",
            &mut out,
        );
        assert_eq!(outcome, Outcome::Err(libc::EEXIST));
        let link = abi::LinkIn { oldnodeid: 9 };
        dispatch(
            &fs,
            &header(abi::FUSE_LINK, 5),
            link.as_bytes(),
            b"new\0",
            &mut out,
        );
        let set = abi::SetxattrIn { size: 3, flags: 1 };
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_SETXATTR, 7),
            set.as_bytes(),
            b"user.a\0xyz",
            &mut out,
        );
        assert_eq!(outcome, Outcome::Ok(0));
        // A value shorter than its announced size is refused.
        let outcome = dispatch(
            &fs,
            &header(abi::FUSE_SETXATTR, 7),
            set.as_bytes(),
            b"user.a\0xy",
            &mut out,
        );
        assert_eq!(outcome, Outcome::Err(libc::EINVAL));
        assert_eq!(
            *fs.calls.lock().unwrap(),
            [
                "symlink 5 \"ln\" -> \"target\"",
                "link 9 5 \"new\"",
                "setxattr 7 \"user.a\" [120, 121, 122] 1",
            ]
        );
    }

    #[test]
    fn readdirplus_entries_carry_their_entry_and_stop_when_the_reply_is_full() {
        let fs = Recorder::default();
        let mut out = vec![0u8; 4096];
        let read = abi::ReadIn {
            size: 4096,
            ..Default::default()
        };
        let h = header(abi::FUSE_READDIRPLUS, 1);
        let Outcome::Ok(len) = dispatch(&fs, &h, read.as_bytes(), &[], &mut out) else {
            panic!("readdirplus failed");
        };
        // 152 bytes of head + "fileN" (5 bytes), padded to 160.
        assert_eq!(len, 3 * 160);
        let first = abi::DirentplusHead::read_from(&out).unwrap();
        assert_eq!(first.entry_out.nodeid, 10);
        assert_eq!(first.entry_out.entry_valid, 1);
        assert_eq!((first.dirent.ino, first.dirent.off), (10, 1));
        assert_eq!(first.dirent.typ, libc::DT_REG as u32);
        assert_eq!(&out[152..157], b"file0");
        // Room for one entry only.
        let small = abi::ReadIn {
            size: 200,
            ..Default::default()
        };
        assert_eq!(
            dispatch(&fs, &h, small.as_bytes(), &[], &mut out),
            Outcome::Ok(160)
        );
    }

    #[test]
    fn a_lock_answered_later_reaches_the_sink_with_its_request_and_token() {
        struct Sink(std::sync::mpsc::Sender<(u64, abi::OutHeader)>);
        impl ReplySink for Sink {
            fn send(&self, token: u64, header: abi::OutHeader, _payload: &[u8]) {
                self.0.send((token, header)).unwrap();
            }
        }
        let fs = Recorder::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let deferral = Deferral {
            sink: Arc::new(Sink(tx)),
            token: 3,
        };
        let lock = abi::LkIn {
            lk: abi::FileLock {
                start: 0,
                end: 9,
                typ: libc::F_WRLCK as u32,
                pid: 1,
            },
            lk_flags: abi::FUSE_LK_FLOCK,
            ..Default::default()
        };
        let mut out = vec![0u8; 64];
        let h = header(abi::FUSE_SETLKW, 4);
        let outcome = dispatch_deferring(&fs, &h, lock.as_bytes(), &[], &mut out, &deferral);
        assert_eq!(outcome, Outcome::Deferred);
        let (token, reply) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((token, reply.unique, reply.error), (3, 7, -libc::EAGAIN));
        assert_eq!(reply.len as usize, size_of::<abi::OutHeader>());
        // The blocking dispatch waits for the late answer itself.
        assert_eq!(
            dispatch(&fs, &h, lock.as_bytes(), &[], &mut out),
            Outcome::Err(libc::EAGAIN)
        );
        // Answered before the handler returned: answered at once, nothing through the sink.
        let h = header(abi::FUSE_SETLK, 4);
        let outcome = dispatch_deferring(&fs, &h, lock.as_bytes(), &[], &mut out, &deferral);
        assert_eq!(outcome, Outcome::Ok(0));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert_eq!(
            fs.calls.lock().unwrap()[0],
            "setlk 0 9 flock=true sleep=true"
        );
    }

    #[test]
    fn a_late_reply_dropped_unanswered_answers_eio() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sink: Arc<dyn ReplySink> = Arc::new(ChannelSink(std::sync::Mutex::new(tx)));
        drop(LateReply::new(1, 0, sink));
        assert_eq!(rx.recv().unwrap(), -libc::EIO);
    }

    #[test]
    fn a_body_split_gives_the_fixed_struct_then_the_rest() {
        let mut body = abi::MkdirIn { mode: 1, umask: 2 }.as_bytes().to_vec();
        body.extend_from_slice(b"d\0");
        let (fixed, rest) = split_body(abi::FUSE_MKDIR, &body);
        assert_eq!(fixed.len(), 8);
        assert_eq!(rest, b"d\0");
        let (fixed, rest) = split_body(abi::FUSE_LOOKUP, b"x\0");
        assert!(fixed.is_empty());
        assert_eq!(rest, b"x\0");
    }
}
