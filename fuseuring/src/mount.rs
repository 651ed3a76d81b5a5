//! Mounting with mount(2) on an open /dev/fuse, unmounting, and the kernel's
//! `enable_uring` switch.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The fuse module's switch for FUSE over io_uring (Linux 6.14+).
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// State of the kernel's FUSE-over-io_uring switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringSupport {
    /// `enable_uring` is Y: the kernel offers FUSE_OVER_IO_URING at INIT.
    Enabled,
    /// The kernel has it, switched off.
    Disabled,
    /// No `enable_uring` parameter: the kernel predates 6.14 or was built without
    /// CONFIG_FUSE_IO_URING.
    Missing,
}

/// Reads [`ENABLE_URING_PARAM`].
pub fn uring_support() -> UringSupport {
    match std::fs::read_to_string(ENABLE_URING_PARAM) {
        Ok(s) if s.trim() == "Y" || s.trim() == "1" => UringSupport::Enabled,
        Ok(_) => UringSupport::Disabled,
        Err(_) => UringSupport::Missing,
    }
}

/// Sets `enable_uring` (needs root), returning the previous value.
pub fn set_enable_uring(on: bool) -> io::Result<bool> {
    let before = uring_support() == UringSupport::Enabled;
    std::fs::write(ENABLE_URING_PARAM, if on { "Y" } else { "N" })?;
    Ok(before)
}

/// An open /dev/fuse connection.
#[derive(Debug)]
pub struct FuseDev {
    file: File,
}

impl FuseDev {
    pub fn open() -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| Error::Device(e.to_string()))?;
        Ok(FuseDev { file })
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Reads one request into `buf`; returns its length.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one reply, made of these parts, in one system call.
    pub fn write_reply(&self, parts: &[&[u8]]) -> io::Result<()> {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut _,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live slice.
        let n = unsafe { libc::writev(self.fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A second handle on the same connection (for threads that outlive the first).
    pub fn try_clone(&self) -> io::Result<FuseDev> {
        Ok(FuseDev {
            file: self.file.try_clone()?,
        })
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.file.into()
    }

    /// # Safety
    /// `fd` must be an open /dev/fuse descriptor owned by the caller.
    pub unsafe fn from_raw_fd(fd: i32) -> Self {
        // SAFETY: per the function's contract.
        FuseDev {
            file: unsafe { File::from_raw_fd(fd) },
        }
    }
}

/// Checks that `mountpoint` is a directory; returns its absolute path.
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf, Error> {
    let meta = std::fs::metadata(mountpoint)
        .map_err(|e| Error::MountPoint(mountpoint.to_path_buf(), e.to_string()))?;
    if !meta.is_dir() {
        return Err(Error::MountPoint(
            mountpoint.to_path_buf(),
            "not a directory".into(),
        ));
    }
    std::fs::canonicalize(mountpoint)
        .map_err(|e| Error::MountPoint(mountpoint.to_path_buf(), e.to_string()))
}

/// Mounts the connection `dev` on `mountpoint` with mount(2). The kernel queues INIT on
/// the connection; the caller answers it.
pub fn mount(
    dev: &FuseDev,
    mountpoint: &Path,
    fsname: &str,
    subtype: &str,
    flags: libc::c_ulong,
    allow_other: bool,
) -> Result<(), Error> {
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::MountPoint(mountpoint.to_path_buf(), "NUL in path".into()))?;
    let source = CString::new(fsname).map_err(|_| Error::Config("NUL in fsname".into()))?;
    let fstype = CString::new(format!("fuse.{subtype}"))
        .map_err(|_| Error::Config("NUL in subtype".into()))?;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut options = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.fd()
    );
    if allow_other {
        options.push_str(",allow_other");
    }
    let options = CString::new(options).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::Mount(
            mountpoint.to_path_buf(),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts `mountpoint`: a plain unmount, and a lazy one when it is busy. Not mounted
/// (any more) counts as success.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: target is a valid NUL-terminated string.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        Some(libc::EBUSY) => {
            // SAFETY: as above.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        _ => Err(err),
    }
}

/// Number of possible CPUs: the kernel makes one FUSE ring queue per possible CPU and
/// routes requests through the ring only once every one of them has an entry registered.
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list_max(s.trim()))
        .map(|max| max + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Highest CPU number in a list such as `0-3,8-11`.
fn parse_cpu_list_max(list: &str) -> Option<usize> {
    list.split(',')
        .filter_map(|part| part.rsplit('-').next()?.trim().parse::<usize>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_give_their_highest_cpu() {
        assert_eq!(parse_cpu_list_max("0-1"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3,8-11"), Some(11));
        assert_eq!(parse_cpu_list_max(""), None);
    }
}
