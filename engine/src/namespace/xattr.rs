//! Extended attributes: the namespaces spoolfs keeps (`user.`, `trusted.`, `security.`, the
//! POSIX ACLs), and their transactions. An access ACL sets the mode bits; the sync-upload
//! attribute keeps a `Y` mark beside it.

use super::{name_str, posix};
use crate::acl;
use crate::error::{FsError, Result};
use crate::schema;
use crate::types::*;
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};

pub(crate) const XATTR_NAME_MAX: usize = 255;
pub(crate) const XATTR_VALUE_MAX: usize = 65536;

fn name_too_long() -> FsError {
    FsError::new(libc::ERANGE, "attribute name too long")
}

fn no_attribute() -> MetaError {
    posix(libc::ENODATA, "no such attribute")
}

/// Whether an attribute `name` may be set on an inode of `kind`.
pub(crate) fn check_xattr_name(name: &[u8], kind: FileKind) -> Result<()> {
    if name.is_empty() {
        return Err(FsError::new(libc::EINVAL, "empty attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(name_too_long());
    }
    if name.starts_with(b"user.") {
        if !matches!(kind, FileKind::File | FileKind::Dir) {
            return Err(FsError::new(
                libc::EPERM,
                "user attributes only on files and directories",
            ));
        }
        return Ok(());
    }
    if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
        return Ok(());
    }
    if name == acl::DEFAULT_XATTR && kind != FileKind::Dir {
        return Err(FsError::new(
            libc::EACCES,
            "a default ACL is only for directories",
        ));
    }
    if acl::is_acl_name(name) {
        return Ok(());
    }
    Err(FsError::new(
        libc::EOPNOTSUPP,
        format!("attribute namespace of {} not supported", name_str(name)),
    ))
}

/// Refuses a name longer than any attribute can have (before reading the store).
pub(crate) fn check_xattr_name_len(name: &[u8]) -> Result<()> {
    if name.len() > XATTR_NAME_MAX {
        return Err(name_too_long());
    }
    Ok(())
}

/// setxattr's transaction; `acl` is `value` parsed when `name` is an ACL.
pub(crate) fn setxattr(
    t: &mut dyn KvTxn,
    ino: Ino,
    name: &[u8],
    value: &[u8],
    mode: XattrSet,
    acl: Option<&acl::Acl>,
) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    let key = schema::xattr_key(ino, name);
    let exists = t.get(&key)?.is_some();
    match mode {
        XattrSet::Create if exists => {
            return Err(posix(libc::EEXIST, "attribute exists"));
        }
        XattrSet::Replace if !exists => return Err(no_attribute()),
        _ => {}
    }
    match acl {
        // An access ACL sets the mode; one the mode says all of is not kept.
        Some(a) if name == acl::ACCESS_XATTR => {
            rec.perm = (rec.perm & !0o777) | a.mode_bits();
            if a.is_minimal() {
                t.delete(&key)?;
            } else {
                t.put(&key, value)?;
            }
        }
        // An empty default ACL is none.
        Some(a) if a.is_empty() => t.delete(&key)?,
        _ => t.put(&key, value)?,
    }
    if name == schema::SYNC_UPLOAD_XATTR {
        t.put(&schema::sync_mark_key(ino), &[])?;
    }
    rec.ctime_ns = schema::now_ns();
    schema::put_inode(t, ino, &rec)
}

pub(crate) fn getxattr(r: &dyn KvRead, ino: Ino, name: &[u8]) -> Result<Vec<u8>, MetaError> {
    let key = schema::xattr_key(ino, name);
    // Both in one round trip on a networked store.
    r.prefetch(&[&schema::inode_key(ino), &key], &[])?;
    schema::must_inode(r, ino)?;
    r.get(&key)?.ok_or_else(no_attribute)
}

pub(crate) fn listxattr(r: &dyn KvRead, ino: Ino) -> Result<Vec<Vec<u8>>, MetaError> {
    schema::must_inode(r, ino)?;
    let prefix = schema::xattr_prefix(ino);
    Ok(r.scan(&prefix, &prefix_end(&prefix), usize::MAX)?
        .into_iter()
        .map(|(k, _)| k[9..].to_vec())
        .collect())
}

pub(crate) fn removexattr(t: &mut dyn KvTxn, ino: Ino, name: &[u8]) -> Result<(), MetaError> {
    let mut rec = schema::must_inode(t, ino)?;
    let key = schema::xattr_key(ino, name);
    if t.get(&key)?.is_none() {
        return Err(no_attribute());
    }
    t.delete(&key)?;
    if name == schema::SYNC_UPLOAD_XATTR {
        t.delete(&schema::sync_mark_key(ino))?;
    }
    rec.ctime_ns = schema::now_ns();
    schema::put_inode(t, ino, &rec)
}
