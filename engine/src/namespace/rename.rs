//! rename(2): moving an entry, replacing a target, or exchanging two entries.

use super::{
    StillOpen, adjust_nlink, check_empty, check_kind, check_name_meta, drop_link, exists,
    is_ancestor, must_dir, no_entry, posix, touch_parents,
};
use crate::schema::{self, DentryRec};
use crate::types::*;
use spoolfs_metadata::{KvTxn, MetaError};

fn into_itself() -> MetaError {
    posix(libc::EINVAL, "cannot move a directory into itself")
}

/// rename's transaction (RENAME_NOREPLACE together with RENAME_EXCHANGE is refused before).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rename(
    t: &mut dyn KvTxn,
    parent: Ino,
    name: &[u8],
    new_parent: Ino,
    new_name: &[u8],
    flags: RenameFlags,
    still_open: StillOpen,
) -> Result<(), MetaError> {
    must_dir(t, parent)?;
    must_dir(t, new_parent)?;
    let src = schema::get_dentry(t, parent, name)?.ok_or_else(|| no_entry(name))?;
    // Linux order: a missing source first, then the new name, then a loop.
    check_name_meta(new_name)?;
    let dst = schema::get_dentry(t, new_parent, new_name)?;
    if flags.noreplace && dst.is_some() {
        return Err(exists(new_name));
    }
    if (dst.is_some() || !flags.exchange)
        && src.kind == FileKind::Dir
        && parent != new_parent
        && is_ancestor(t, src.ino, new_parent)?
    {
        return Err(into_itself());
    }
    let now = schema::now_ns();
    if flags.exchange {
        let dst = dst.ok_or_else(|| no_entry(new_name))?;
        return exchange(t, (parent, name, src), (new_parent, new_name, dst), now);
    }
    if let Some(dst) = dst {
        if dst.ino == src.ino {
            // Two links to one file: POSIX says do nothing.
            return Ok(());
        }
        check_kind(
            new_name,
            src.kind == FileKind::Dir,
            dst.kind == FileKind::Dir,
        )?;
        if dst.kind == FileKind::Dir {
            check_empty(t, dst.ino, new_name)?;
        }
        if src.kind == FileKind::Dir && is_ancestor(t, src.ino, new_parent)? {
            return Err(into_itself());
        }
        t.delete(&schema::dentry_key(new_parent, new_name))?;
        drop_link(t, dst.ino, now, still_open)?;
        if dst.kind == FileKind::Dir {
            adjust_nlink(t, new_parent, -1)?;
        }
    }
    t.delete(&schema::dentry_key(parent, name))?;
    t.put(
        &schema::dentry_key(new_parent, new_name),
        &schema::encode(&src),
    )?;
    let mut rec = schema::must_inode(t, src.ino)?;
    rec.ctime_ns = now;
    if src.kind == FileKind::Dir && parent != new_parent {
        rec.parent = new_parent;
        adjust_nlink(t, parent, -1)?;
        adjust_nlink(t, new_parent, 1)?;
    }
    schema::put_inode(t, src.ino, &rec)?;
    touch_parents(t, parent, new_parent, now)
}

/// RENAME_EXCHANGE: the two entries swap inodes; a directory that changes parents moves a
/// link count with it.
fn exchange(
    t: &mut dyn KvTxn,
    (parent, name, src): (Ino, &[u8], DentryRec),
    (new_parent, new_name, dst): (Ino, &[u8], DentryRec),
    now: i64,
) -> Result<(), MetaError> {
    if parent != new_parent {
        if src.kind == FileKind::Dir && is_ancestor(t, src.ino, new_parent)? {
            return Err(into_itself());
        }
        if dst.kind == FileKind::Dir && is_ancestor(t, dst.ino, parent)? {
            return Err(into_itself());
        }
    }
    t.put(&schema::dentry_key(parent, name), &schema::encode(&dst))?;
    t.put(
        &schema::dentry_key(new_parent, new_name),
        &schema::encode(&src),
    )?;
    for (ino, kind, to) in [(src.ino, src.kind, new_parent), (dst.ino, dst.kind, parent)] {
        let mut rec = schema::must_inode(t, ino)?;
        rec.ctime_ns = now;
        if kind == FileKind::Dir {
            rec.parent = to;
        }
        schema::put_inode(t, ino, &rec)?;
    }
    if parent != new_parent && (src.kind == FileKind::Dir) != (dst.kind == FileKind::Dir) {
        // A directory changed parents in one direction only.
        let (gain, lose) = if src.kind == FileKind::Dir {
            (new_parent, parent)
        } else {
            (parent, new_parent)
        };
        adjust_nlink(t, gain, 1)?;
        adjust_nlink(t, lose, -1)?;
    }
    touch_parents(t, parent, new_parent, now)
}
