//! Mounts a volume (in-memory metadata and objects) through the kernel and uses it with std::fs.
//! Skipped when /dev/fuse cannot be used (not root, no FUSE).

mod common;

use common::engine;
use spoolfs_fuse::{FuseTransport, MountError, MountOptions, mount_background};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[test]
fn mount_use_unmount() {
    spoolfs_testkit::require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let options = MountOptions {
        fs_name: "t".into(),
        transport: common::transport(),
        ..Default::default()
    };
    let mount = mount_background(engine(), &mnt, &options).unwrap();
    // The transport asked for is the one serving (auto: either).
    match options.transport {
        FuseTransport::Auto => {}
        asked => assert_eq!(mount.transport(), asked),
    }

    // A second mount on the same place is refused with a clear error.
    let err = mount_background(engine(), &mnt, &options).err().unwrap();
    assert!(matches!(err, MountError::AlreadyMounted(_)), "{err}");

    std::fs::write(mnt.join("a"), b"hello").unwrap();
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"hello");
    std::fs::create_dir(mnt.join("d")).unwrap();
    for i in 0..200 {
        std::fs::write(mnt.join("d").join(format!("f{i}")), i.to_string()).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 200);
    for e in std::fs::read_dir(mnt.join("d")).unwrap() {
        let e = e.unwrap();
        assert!(e.metadata().unwrap().is_file());
    }
    std::fs::rename(mnt.join("a"), mnt.join("b")).unwrap();
    assert!(!mnt.join("a").exists());
    std::fs::set_permissions(mnt.join("b"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(mnt.join("b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    std::os::unix::fs::symlink("b", mnt.join("l")).unwrap();
    assert_eq!(std::fs::read(mnt.join("l")).unwrap(), b"hello");
    // 3 MiB in one go: exercises large FUSE writes.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(mnt.join("big"), &big).unwrap();
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), big);
    std::fs::remove_file(mnt.join("b")).unwrap();
    std::fs::remove_dir_all(mnt.join("d")).unwrap();

    let mounts = spoolfs_fuse::read_mountinfo().unwrap();
    let m = mounts
        .iter()
        .find(|m| m.mount_point == mnt.canonicalize().unwrap())
        .expect("mounted");
    assert_eq!(m.fs_type, "fuse.spoolfs");
    assert_eq!(m.source, "t");
    // Over io_uring every answered request went through a ring.
    if let Some((ring, dev_replies)) = mount.uring_counts() {
        assert!(ring > 200, "only {ring} requests through the rings");
        assert_eq!(dev_replies, 0, "requests answered through /dev/fuse");
    }

    mount.umount().unwrap();
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
}

/// Sets an extended attribute of `path`; the errno on failure.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a value of the length given.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// Reads an extended attribute of `path`; the errno on failure.
fn get_xattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// The names listxattr(2) gives for `path`.
fn list_xattrs(path: &Path) -> Vec<String> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid NUL-terminated string and a buffer of the length given.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: errno {}", errno());
    buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// `security.selinux` is stored like any attribute when the mount serves labels, and refused
/// with EOPNOTSUPP (and left out of listings) when it does not; `security.capability` and
/// `user.*` work either way.
#[test]
fn selinux_labels_served_or_refused() {
    spoolfs_testkit::require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    // A capability set (VFS_CAP_REVISION_2, no permitted or inheritable bits): a valid value.
    let mut caps = vec![0u8; 20];
    caps[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    for serve in [true, false] {
        let mnt = dir.path().join(format!("mnt-{serve}"));
        std::fs::create_dir(&mnt).unwrap();
        let options = MountOptions {
            fs_name: "t".into(),
            selinux_xattrs: serve,
            transport: common::transport(),
            ..Default::default()
        };
        let mount = mount_background(engine(), &mnt, &options).unwrap();
        let f = mnt.join("f");
        std::fs::write(&f, b"x").unwrap();
        let label = b"system_u:object_r:user_home_t:s0";
        if serve {
            assert_eq!(get_xattr(&f, "security.selinux"), Err(libc::ENODATA));
            set_xattr(&f, "security.selinux", label).unwrap();
            assert_eq!(get_xattr(&f, "security.selinux").unwrap(), label);
            assert!(list_xattrs(&f).contains(&"security.selinux".to_string()));
        } else {
            assert_eq!(get_xattr(&f, "security.selinux"), Err(libc::EOPNOTSUPP));
            assert_eq!(
                set_xattr(&f, "security.selinux", label),
                Err(libc::EOPNOTSUPP)
            );
            assert!(!list_xattrs(&f).contains(&"security.selinux".to_string()));
        }
        set_xattr(&f, "security.capability", &caps).unwrap();
        assert_eq!(get_xattr(&f, "security.capability").unwrap(), caps);
        // A write drops file capabilities, labels or not.
        std::fs::write(&f, b"y").unwrap();
        assert_eq!(get_xattr(&f, "security.capability"), Err(libc::ENODATA));
        set_xattr(&f, "user.k", b"v").unwrap();
        assert_eq!(get_xattr(&f, "user.k").unwrap(), b"v");
        mount.umount().unwrap();
    }
}
