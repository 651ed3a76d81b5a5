//! Mounts a volume (in-memory metadata and objects) through the kernel and uses it with std::fs.
//! Skipped when /dev/fuse cannot be used (not root, no FUSE).

mod common;

use common::engine;
use spoolfs_fuse::{FuseTransport, MountError, MountOptions, mount_background};
use std::os::unix::fs::PermissionsExt;

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

    mount.umount().unwrap();
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
}
