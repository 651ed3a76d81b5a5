//! Errno assertions and thin wrappers of the system calls `std` does not offer (xattrs,
//! `renameat2`, `mkfifo`, times, `statvfs`).

use super::*;

/// The errno of an I/O error (panics if the operation succeeded).
#[track_caller]
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("error without errno: {e}")),
    }
}

/// Asserts that `r` failed with exactly `expected`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: std::io::Result<T>, expected: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {} ({expected}), got Ok({v:?})",
            errno_name(expected)
        ),
        Err(e) => {
            let got = e.raw_os_error();
            assert_eq!(
                got,
                Some(expected),
                "{what}: expected {} ({expected}), got {e} ({})",
                errno_name(expected),
                got.map(errno_name).unwrap_or("?")
            );
        }
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENODATA => "ENODATA",
        libc::EIO => "EIO",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EXDEV => "EXDEV",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOTCONN => "ENOTCONN",
        _ => "errno",
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn last_err<T>(rc: libc::c_int, ok: T) -> std::io::Result<T> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ok)
    }
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    last_err(rc, ())
}

pub fn mkfifo(p: &Path, mode: libc::mode_t) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    last_err(unsafe { libc::mkfifo(c.as_ptr(), mode) }, ())
}

/// `lchown`
pub fn lchown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    last_err(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, ())
}

/// `utimensat(AT_FDCWD, p, [atime, mtime], AT_SYMLINK_NOFOLLOW?)`; times as (sec, nsec).
pub fn set_times(
    p: &Path,
    atime: (i64, i64),
    mtime: (i64, i64),
    follow: bool,
) -> std::io::Result<()> {
    let c = cstr(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path and a two-element timespec array.
    last_err(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) },
        (),
    )
}

pub fn statvfs(p: &Path) -> std::io::Result<libc::statvfs> {
    let c = cstr(p);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    last_err(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, ())?;
    Ok(s)
}

pub fn statfs_type(p: &Path) -> std::io::Result<i64> {
    let c = cstr(p);
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    last_err(unsafe { libc::statfs(c.as_ptr(), &mut s) }, ())?;
    Ok(s.f_type as i64)
}

/// `lsetxattr` with flags (0, `XATTR_CREATE`, `XATTR_REPLACE`).
pub fn set_xattr(p: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: valid path, name and value buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    last_err(rc, ())
}

/// `lgetxattr`
pub fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: size query with a null buffer.
    let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 64];
    // SAFETY: buffer of buf.len() bytes.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// `llistxattr`, sorted.
pub fn list_xattr(p: &Path) -> std::io::Result<Vec<String>> {
    let c = cstr(p);
    // SAFETY: size query with a null buffer.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 256];
    // SAFETY: buffer of buf.len() bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `lremovexattr`
pub fn remove_xattr(p: &Path, name: &str) -> std::io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: valid path and name.
    last_err(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }, ())
}
