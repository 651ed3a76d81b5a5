//! Namespace operations as metadata transaction bodies: free functions over a transaction
//! (`&mut dyn KvTxn`) or a read (`&dyn KvRead`) that check what POSIX asks and write the
//! inode, directory entry and attribute records. They know nothing of open files, caches or
//! the write path: the engine checks permissions, settles buffered data, runs them through
//! the metadata store, and says through a callback which inodes are still open.
//!
//! `rename.rs` holds rename (with RENAME_EXCHANGE and RENAME_NOREPLACE); `xattr.rs` the
//! extended attributes and ACLs.

mod rename;
mod xattr;

pub(crate) use rename::rename;
pub(crate) use xattr::{
    XATTR_VALUE_MAX, check_xattr_name, check_xattr_name_len, getxattr, listxattr, removexattr,
    setxattr,
};

use crate::acl;
use crate::data;
use crate::schema::{self, DentryRec, InodeRec};
use crate::types::*;
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};

/// Largest file size.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 50;

/// Says whether an inode losing its last name is still open, on this mount (and marks it so
/// that its last close deletes it; see `OpenFiles::keep_unlinked`) or, on a shared volume, on
/// any mount (a hold record, see `holds.rs`, read in the transaction).
pub(crate) type StillOpen<'a> = &'a dyn Fn(&dyn KvRead, Ino) -> Result<bool, MetaError>;

pub(crate) fn posix(errno: i32, msg: impl Into<String>) -> MetaError {
    MetaError::Errno(errno, msg.into())
}

pub(crate) fn name_str(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn check_name_meta(name: &[u8]) -> Result<(), MetaError> {
    schema::check_name(name).map_err(MetaError::from)
}

fn no_entry(name: &[u8]) -> MetaError {
    posix(libc::ENOENT, format!("{}: no such entry", name_str(name)))
}

fn exists(name: &[u8]) -> MetaError {
    posix(libc::EEXIST, format!("{} exists", name_str(name)))
}

/// The attributes `stat` shows for a stored inode.
pub(crate) fn to_attr(ino: Ino, rec: &InodeRec, blksize: u32) -> Attr {
    let size = match rec.kind {
        FileKind::Symlink => rec.target.len() as u64,
        // A removed directory (still open somewhere) is empty: size 0, as on ext4.
        FileKind::Dir if rec.nlink == 0 => 0,
        FileKind::Dir => 4096,
        _ => rec.size,
    };
    Attr {
        ino,
        kind: rec.kind,
        perm: rec.perm,
        nlink: rec.nlink,
        uid: rec.uid,
        gid: rec.gid,
        rdev: rec.rdev,
        size,
        blocks: size.div_ceil(512),
        atime: schema::from_ns(rec.atime_ns),
        mtime: schema::from_ns(rec.mtime_ns),
        ctime: schema::from_ns(rec.ctime_ns),
        crtime: schema::from_ns(rec.crtime_ns),
        blksize,
    }
}

/// The directory inode, or ENOENT / ENOTDIR.
pub(crate) fn must_dir(r: &dyn KvRead, ino: Ino) -> Result<InodeRec, MetaError> {
    let rec = schema::must_inode(r, ino)?;
    if rec.kind != FileKind::Dir {
        return Err(posix(
            libc::ENOTDIR,
            format!("inode {ino} is not a directory"),
        ));
    }
    if rec.nlink == 0 {
        return Err(posix(libc::ENOENT, format!("directory {ino} was removed")));
    }
    Ok(rec)
}

/// Directory `parent` and its entry `name` (ENOENT if there is none).
fn must_entry(
    r: &dyn KvRead,
    parent: Ino,
    name: &[u8],
) -> Result<(InodeRec, DentryRec), MetaError> {
    let prec = must_dir(r, parent)?;
    let d = schema::get_dentry(r, parent, name)?.ok_or_else(|| no_entry(name))?;
    Ok((prec, d))
}

fn dir_is_empty(r: &dyn KvRead, ino: Ino) -> Result<bool, MetaError> {
    let prefix = schema::dentry_prefix(ino);
    Ok(r.scan(&prefix, &prefix_end(&prefix), 1)?.is_empty())
}

fn touch_dir(t: &mut dyn KvTxn, ino: Ino, rec: &mut InodeRec, now: i64) -> Result<(), MetaError> {
    rec.mtime_ns = now;
    rec.ctime_ns = now;
    schema::put_inode(t, ino, rec)
}

fn adjust_nlink(t: &mut dyn KvTxn, ino: Ino, delta: i32) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    rec.nlink = (rec.nlink as i64 + delta as i64).max(0) as u32;
    schema::put_inode(t, ino, &rec)
}

fn touch_parents(t: &mut dyn KvTxn, a: Ino, b: Ino, now: i64) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, a)?;
    touch_dir(t, a, &mut rec, now)?;
    if b != a {
        let mut rec = schema::must_inode(t, b)?;
        touch_dir(t, b, &mut rec, now)?;
    }
    Ok(())
}

/// Removes every trace of an inode whose last link and last handle are gone; its slices are
/// queued for deletion.
pub(crate) fn purge_inode(t: &mut dyn KvTxn, ino: Ino) -> Result<(), MetaError> {
    if schema::get_inode(t, ino)?.is_none() {
        return Ok(());
    }
    let mut freed = 0i64;
    let mut seen = std::collections::BTreeSet::new();
    for (chunk, seg) in data::load_all(t, ino)? {
        if seen.insert(seg.id) {
            data::record_dead(t, seg.id, seg.size)?;
            freed += seg.size as i64;
        }
        t.delete(&schema::seg_key(ino, chunk, seg.pos))?;
    }
    let xprefix = schema::xattr_prefix(ino);
    for (key, _) in t.scan(&xprefix, &prefix_end(&xprefix), usize::MAX)? {
        t.delete(&key)?;
    }
    t.delete(&schema::inode_key(ino))?;
    t.delete(&schema::orphan_key(ino))?;
    t.delete(&schema::sync_mark_key(ino))?;
    schema::add_u64(t, schema::USED_BYTES_KEY, -freed)?;
    schema::add_u64(t, schema::INODE_COUNT_KEY, -1)?;
    Ok(())
}

/// At the last close of `ino`: deletes it if its last name went while it was open (unless
/// the unlink failed after all).
pub(crate) fn purge_if_unlinked(t: &mut dyn KvTxn, ino: Ino) -> Result<(), MetaError> {
    match schema::get_inode(t, ino)? {
        Some(rec) if rec.nlink == 0 => purge_inode(t, ino),
        _ => Ok(()),
    }
}

/// At start: creates the root if the volume has none, and deletes the inodes unlinked while
/// open when the volume was last mounted (nobody holds them now). A mount with a session of a
/// shared volume (`session`) leaves them to the holds sweep (`holds.rs`) under the background
/// lease; without one, only a mount that is the volume's only live session
/// deletes them.
pub(crate) fn init(t: &mut dyn KvTxn, session: Option<&str>) -> Result<(), MetaError> {
    schema::init_root(t)?;
    if session.is_some() {
        // The mount holding the volume's background lease sweeps them (see `holds::sweep`).
        return Ok(());
    }
    if crate::session::live_in(t)?.len() > 1 {
        return Ok(());
    }
    let orphans = t.scan(b"O", b"P", usize::MAX)?;
    for (key, _) in orphans {
        let ino = schema::key_id("orphan", &key)?;
        purge_inode(t, ino)?;
    }
    Ok(())
}

/// The inodes marked with [`schema::SYNC_UPLOAD_XATTR`] (the `Y` keys).
pub(crate) fn sync_marks(r: &dyn KvRead) -> Result<std::collections::HashSet<Ino>, MetaError> {
    let prefix = schema::SYNC_MARK_PREFIX;
    r.scan(prefix, &prefix_end(prefix), usize::MAX)?
        .into_iter()
        .map(|(k, _)| schema::key_id("sync mark", &k))
        .collect()
}

/// Is `dir` equal to `node` or one of its ancestors?
fn is_ancestor(r: &dyn KvRead, dir: Ino, node: Ino) -> Result<bool, MetaError> {
    let mut cur = node;
    for _ in 0..4096 {
        if cur == dir {
            return Ok(true);
        }
        if cur == ROOT_INO {
            return Ok(false);
        }
        cur = schema::must_inode(r, cur)?.parent;
    }
    Err(posix(libc::ELOOP, "directory tree too deep"))
}

/// The inode `name` names in directory `parent` ("." and ".." included), and its record.
pub(crate) fn lookup(
    r: &dyn KvRead,
    parent: Ino,
    name: &[u8],
) -> Result<(Ino, InodeRec), MetaError> {
    // The directory and the entry in one round trip on a networked store (a miss costs no
    // more), the inode in a second, or in the same one when the store remembers which inode
    // the entry named (a guess: the inode read is used only if the entry still names it).
    let entry_key = schema::dentry_key(parent, name);
    let guessed = r
        .guess(&entry_key)
        .flatten()
        .and_then(|bytes| schema::decode::<DentryRec>("directory entry", &bytes).ok())
        .map(|d| schema::inode_key(d.ino));
    let parent_key = schema::inode_key(parent);
    let mut keys: Vec<&[u8]> = vec![&parent_key, &entry_key];
    keys.extend(guessed.as_deref());
    r.prefetch(&keys, &[])?;
    must_dir(r, parent)?;
    let ino = match name {
        b"." => parent,
        b".." => schema::must_inode(r, parent)?.parent,
        _ => {
            schema::get_dentry(r, parent, name)?
                .ok_or_else(|| no_entry(name))?
                .ino
        }
    };
    Ok((ino, schema::must_inode(r, ino)?))
}

/// chmod of an inode with an access ACL: the ACL follows the new mode.
fn acl_chmod(t: &mut dyn KvTxn, ino: Ino, perm: u16) -> Result<(), MetaError> {
    let key = schema::xattr_key(ino, acl::ACCESS_XATTR);
    if let Some(value) = t.get(&key)? {
        let mut a = acl::Acl::parse(&value).map_err(|e| posix(libc::EIO, e.to_string()))?;
        a.chmod(perm);
        t.put(&key, &a.encode())?;
    }
    Ok(())
}

/// Clears set-user-id, and set-group-id when it means "setgid" (group execute set), as
/// Linux does when a file is written or changes owner.
pub(crate) fn clear_setid(rec: &mut InodeRec) {
    rec.perm &= !(libc::S_ISUID as u16);
    if rec.perm & 0o010 != 0 {
        rec.perm &= !(libc::S_ISGID as u16);
    }
}

/// setattr's transaction: mode (the access ACL follows), owner, size (the chunk maps are cut;
/// `chunk_size` is the volume's), times. Buffered writes are settled before it runs.
pub(crate) fn setattr(
    t: &mut dyn KvTxn,
    caller: &Caller,
    ino: Ino,
    set: &SetAttr,
    chunk_size: u64,
) -> Result<InodeRec, MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    let now = schema::now_ns();
    let mut changed = false;
    if let Some(mode) = set.mode {
        rec.perm = (mode & 0o7777) as u16;
        changed = true;
        acl_chmod(t, ino, rec.perm)?;
    }
    let owner_changed =
        set.uid.is_some_and(|u| u != rec.uid) || set.gid.is_some_and(|g| g != rec.gid);
    if let Some(uid) = set.uid {
        rec.uid = uid;
        changed = true;
    }
    if let Some(gid) = set.gid {
        rec.gid = gid;
        changed = true;
    }
    if owner_changed && rec.kind != FileKind::Dir && set.mode.is_none() {
        clear_setid(&mut rec);
    }
    if owner_changed || set.size.is_some() {
        t.delete(&schema::xattr_key(ino, schema::CAPS_XATTR))?;
    }
    if let Some(size) = set.size {
        if rec.kind == FileKind::Dir {
            return Err(posix(libc::EISDIR, "cannot truncate a directory"));
        }
        if rec.kind != FileKind::File {
            return Err(posix(libc::EINVAL, "cannot truncate a special file"));
        }
        if size > MAX_FILE_SIZE {
            return Err(posix(libc::EFBIG, "file too large"));
        }
        if size < rec.size {
            data::truncate(t, ino, size, chunk_size)?;
        }
        rec.size = size;
        rec.mtime_ns = now;
        if caller.uid != 0 {
            clear_setid(&mut rec);
        }
        changed = true;
    }
    match set.atime {
        Some(TimeSet::Now) => rec.atime_ns = now,
        Some(TimeSet::At(t)) => rec.atime_ns = schema::to_ns(t),
        None => {}
    }
    match set.mtime {
        Some(TimeSet::Now) => rec.mtime_ns = now,
        Some(TimeSet::At(t)) => rec.mtime_ns = schema::to_ns(t),
        None => {}
    }
    if changed || set.atime.is_some() || set.mtime.is_some() {
        rec.ctime_ns = now;
    }
    if let Some(ctime) = set.ctime {
        rec.ctime_ns = schema::to_ns(ctime);
    }
    schema::put_inode(t, ino, &rec)?;
    Ok(rec)
}

/// fallocate's FALLOC_FL_PUNCH_HOLE: `[offset, end)` (within the file's size) becomes a hole.
pub(crate) fn punch_hole(
    t: &mut dyn KvTxn,
    ino: Ino,
    offset: u64,
    end: u64,
    chunk_size: u64,
) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    let end = end.min(rec.size);
    let freed = data::punch(t, ino, offset, end, chunk_size)?;
    let now = schema::now_ns();
    rec.mtime_ns = now;
    rec.ctime_ns = now;
    schema::put_inode(t, ino, &rec)?;
    schema::add_u64(t, schema::USED_BYTES_KEY, -freed)
}

/// After a read that saw `mtime_ns` and `ctime_ns` (buffered writes included): moves the
/// access time to `now` if `rule` says so, checked again on the stored record (a concurrent
/// reader may have moved it).
pub(crate) fn update_atime(
    t: &mut dyn KvTxn,
    ino: Ino,
    rule: AtimeMode,
    (mtime_ns, ctime_ns): (i64, i64),
    now: i64,
) -> Result<(), MetaError> {
    if let Some(mut rec) = schema::get_inode(t, ino)? {
        let (m, c) = (rec.mtime_ns.max(mtime_ns), rec.ctime_ns.max(ctime_ns));
        if rule.read_updates(rec.atime_ns, m, c, now) {
            rec.atime_ns = now;
            schema::put_inode(t, ino, &rec)?;
        }
    }
    Ok(())
}

/// Whether a write by an unprivileged caller changes `perm` (see [`clear_setid`]).
pub(crate) fn setid_to_clear(perm: u16) -> bool {
    perm & libc::S_ISUID as u16 != 0 || (perm & libc::S_ISGID as u16 != 0 && perm & 0o010 != 0)
}

/// A file's data changes (a write, a hole punched, space allocated): drops its capabilities,
/// and its set-id bits when `kill_setid` (an unprivileged caller), as Linux does.
pub(crate) fn drop_privileges(
    t: &mut dyn KvTxn,
    ino: Ino,
    kill_setid: bool,
) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    if kill_setid {
        clear_setid(&mut rec);
    }
    t.delete(&schema::xattr_key(ino, schema::CAPS_XATTR))?;
    schema::put_inode(t, ino, &rec)
}

/// What a new inode is: its kind, permission bits (umask applied), device number and
/// symlink target.
pub(crate) struct NewNode<'a> {
    pub kind: FileKind,
    pub perm: u32,
    pub rdev: u32,
    pub target: &'a [u8],
}

/// Creates inode `ino` and its entry `name` in `parent` in one transaction: the directory's
/// default ACL and set-group-id bit are inherited.
pub(crate) fn make_node(
    t: &mut dyn KvTxn,
    caller: &Caller,
    parent: Ino,
    name: &[u8],
    ino: Ino,
    node: &NewNode,
) -> Result<InodeRec, MetaError> {
    let kind = node.kind;
    check_name_meta(name)?;
    // Everything this transaction reads, in one round trip on a networked store.
    let (parent_key, entry_key) = (schema::inode_key(parent), schema::dentry_key(parent, name));
    let default_acl = schema::xattr_key(parent, acl::DEFAULT_XATTR);
    let count_key = schema::counter_key(t, schema::INODE_COUNT_KEY);
    // A name to create is usually free: a store that checks its reads at commit may take it
    // as free without asking when it knows nothing of it (a create of a name never looked up).
    t.expect_absent(&entry_key);
    t.prefetch(&[&parent_key, &entry_key, &default_acl, &count_key], &[])?;
    let mut prec = must_dir(t, parent)?;
    if schema::get_dentry(t, parent, name)?.is_some() {
        return Err(exists(name));
    }
    let now = schema::now_ns();
    let mut perm = (node.perm & 0o7777) as u16;
    // The directory's default ACL (if any) limits the mode instead of the umask,
    // and becomes the new inode's access ACL (and a directory's default ACL).
    let inherited = match kind {
        FileKind::Symlink => None,
        _ => t.get(&schema::xattr_key(parent, acl::DEFAULT_XATTR))?,
    };
    if inherited.is_none() && kind != FileKind::Symlink {
        perm &= !((caller.umask & 0o777) as u16);
    }
    let mut inherited_access = None;
    if let Some(default) = &inherited {
        let mut access = acl::Acl::parse(default).map_err(|e| posix(libc::EIO, e.to_string()))?;
        perm = (perm & !0o777) | access.create_masq(perm);
        if !access.is_minimal() {
            inherited_access = Some(access.encode());
        }
    }
    let mut gid = caller.gid;
    if prec.perm & libc::S_ISGID as u16 != 0 {
        // A set-group-id directory hands its group down, and its setgid bit to
        // subdirectories.
        gid = prec.gid;
        if kind == FileKind::Dir {
            perm |= libc::S_ISGID as u16;
        }
    }
    if kind != FileKind::Dir
        && perm & libc::S_ISGID as u16 != 0
        && caller.uid != 0
        && gid != caller.gid
    {
        perm &= !(libc::S_ISGID as u16);
    }
    let rec = InodeRec {
        uid: caller.uid,
        gid,
        rdev: node.rdev,
        target: node.target.to_vec(),
        ..InodeRec::new(kind, perm, parent, now)
    };
    schema::put_inode(t, ino, &rec)?;
    if let Some(access) = &inherited_access {
        t.put(&schema::xattr_key(ino, acl::ACCESS_XATTR), access)?;
    }
    if let (Some(default), FileKind::Dir) = (&inherited, kind) {
        t.put(&schema::xattr_key(ino, acl::DEFAULT_XATTR), default)?;
    }
    t.put(
        &schema::dentry_key(parent, name),
        &schema::encode(&DentryRec { ino, kind }),
    )?;
    if kind == FileKind::Dir {
        prec.nlink += 1;
    }
    touch_dir(t, parent, &mut prec, now)?;
    schema::add_u64(t, schema::INODE_COUNT_KEY, 1)?;
    Ok(rec)
}

/// Drops one link of `ino`; the inode goes when its last link and last open handle are gone
/// (an open one becomes an orphan, deleted at its last close or the next mount).
fn drop_link(
    t: &mut dyn KvTxn,
    ino: Ino,
    now: i64,
    still_open: StillOpen,
) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    rec.nlink = if rec.kind == FileKind::Dir {
        0
    } else {
        rec.nlink.saturating_sub(1)
    };
    rec.ctime_ns = now;
    if rec.nlink > 0 {
        return schema::put_inode(t, ino, &rec);
    }
    if still_open(t, ino)? {
        schema::put_inode(t, ino, &rec)?;
        t.put(&schema::orphan_key(ino), &[])
    } else {
        purge_inode(t, ino)
    }
}

/// EISDIR when `name` is a directory where a non-directory is wanted, ENOTDIR the reverse.
fn check_kind(name: &[u8], want_dir: bool, is_dir: bool) -> Result<(), MetaError> {
    match (want_dir, is_dir) {
        (false, true) => Err(posix(
            libc::EISDIR,
            format!("{} is a directory", name_str(name)),
        )),
        (true, false) => Err(posix(
            libc::ENOTDIR,
            format!("{} is not a directory", name_str(name)),
        )),
        _ => Ok(()),
    }
}

/// ENOTEMPTY unless directory `ino` (named `name`) is empty.
fn check_empty(r: &dyn KvRead, ino: Ino, name: &[u8]) -> Result<(), MetaError> {
    if dir_is_empty(r, ino)? {
        return Ok(());
    }
    Err(posix(
        libc::ENOTEMPTY,
        format!("{} is not empty", name_str(name)),
    ))
}

/// unlink (`dir` false) or rmdir (`dir` true, an empty directory) of `name`; rmdir of "."
/// and ".." is refused before the transaction.
pub(crate) fn remove_entry(
    t: &mut dyn KvTxn,
    parent: Ino,
    name: &[u8],
    dir: bool,
    still_open: StillOpen,
) -> Result<(), MetaError> {
    let (mut prec, d) = must_entry(t, parent, name)?;
    check_kind(name, dir, d.kind == FileKind::Dir)?;
    if dir {
        check_empty(t, d.ino, name)?;
    }
    let now = schema::now_ns();
    t.delete(&schema::dentry_key(parent, name))?;
    drop_link(t, d.ino, now, still_open)?;
    if dir {
        prec.nlink = prec.nlink.saturating_sub(1);
    }
    touch_dir(t, parent, &mut prec, now)
}

/// A new name `new_name` in `new_parent` for the file `ino`.
pub(crate) fn link(
    t: &mut dyn KvTxn,
    ino: Ino,
    new_parent: Ino,
    new_name: &[u8],
) -> Result<InodeRec, MetaError> {
    let mut prec = must_dir(t, new_parent)?;
    let mut rec = schema::must_inode(t, ino)?;
    if schema::get_dentry(t, new_parent, new_name)?.is_some() {
        return Err(exists(new_name));
    }
    if rec.kind == FileKind::Dir {
        return Err(posix(libc::EPERM, "cannot hard-link a directory"));
    }
    if rec.nlink == 0 {
        return Err(posix(libc::ENOENT, "file was removed"));
    }
    let now = schema::now_ns();
    rec.nlink += 1;
    rec.ctime_ns = now;
    schema::put_inode(t, ino, &rec)?;
    t.put(
        &schema::dentry_key(new_parent, new_name),
        &schema::encode(&DentryRec {
            ino,
            kind: rec.kind,
        }),
    )?;
    touch_dir(t, new_parent, &mut prec, now)?;
    Ok(rec)
}

/// A directory's entries with "." and ".." first, each with its readdir cookie.
pub(crate) fn list_dir(r: &dyn KvRead, ino: Ino) -> Result<Vec<DirEntry>, MetaError> {
    let rec = schema::must_inode(r, ino)?;
    if rec.kind == FileKind::Dir && rec.nlink == 0 {
        // Removed while open: empty, without even "." and "..", as on ext4.
        return Ok(Vec::new());
    }
    let rec = must_dir(r, ino)?;
    let prefix = schema::dentry_prefix(ino);
    let rows = r.scan(&prefix, &prefix_end(&prefix), usize::MAX)?;
    let mut out = Vec::with_capacity(rows.len() + 2);
    for (name, ino) in [(&b"."[..], ino), (&b".."[..], rec.parent)] {
        out.push(DirEntry {
            ino,
            kind: FileKind::Dir,
            name: name.to_vec(),
            offset: out.len() as u64 + 1,
        });
    }
    for (key, value) in rows {
        let d: DentryRec = schema::decode("directory entry", &value)?;
        let offset = out.len() as u64 + 1;
        out.push(DirEntry {
            ino: d.ino,
            kind: d.kind,
            name: key[9..].to_vec(),
            offset,
        });
    }
    Ok(out)
}
