//! Set-id bits when a file's data changes, as Linux (ext4) clears them: a write, a punched
//! hole or an allocation by a caller other than root clears set-user-id, and set-group-id
//! when group execute is set; root's changes keep them. Every such change counts, not only the
//! first since the file was last flushed.

use spoolfs_engine::*;
use std::sync::Arc;

mod common;
use common::Volume as Fixture;

const USER: Caller = Caller {
    uid: 1000,
    gid: 1000,
    pid: 1,
    umask: 0,
};

/// An engine on a fresh volume, and the volume (which outlives the engine).
fn volume_and_engine() -> (Fixture, Arc<Engine>) {
    let f = Fixture::new();
    let e = f.start_engine(None, EngineConfig::default());
    (f, e)
}

/// A root-owned file `name`, readable and writable by everyone, with `perm`, and a
/// descriptor of it opened by `who`.
fn setid_file(e: &Engine, name: &[u8], perm: u32, who: &Caller) -> (Ino, u64) {
    let (a, fh) = e
        .create(&Caller::ROOT, ROOT_INO, name, 0o666, libc::O_RDWR)
        .unwrap();
    e.release(a.ino, fh).unwrap();
    e.setattr(
        &Caller::ROOT,
        a.ino,
        &SetAttr {
            mode: Some(perm),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(e.getattr(a.ino).unwrap().perm as u32 & 0o7777, perm);
    let fh = e.open(who, a.ino, libc::O_RDWR).unwrap();
    (a.ino, fh)
}

fn perm(e: &Engine, ino: Ino) -> u32 {
    e.getattr(ino).unwrap().perm as u32 & 0o7777
}

#[test]
fn a_write_by_another_user_after_roots_clears_set_id() {
    let (_volume, e) = volume_and_engine();
    let (ino, user_fh) = setid_file(&e, b"f", 0o6777, &USER);
    let root_fh = e.open(&Caller::ROOT, ino, libc::O_RDWR).unwrap();
    // Root writes first: the bits stay.
    e.write(&Caller::ROOT, ino, root_fh, 0, b"root").unwrap();
    assert_eq!(perm(&e, ino), 0o6777, "root's write cleared set-id bits");
    // Then an unprivileged write, with root's still buffered: the bits go.
    e.write(&USER, ino, user_fh, 4, b"user").unwrap();
    assert_eq!(perm(&e, ino), 0o777, "the user's write left set-id bits");
    e.release(ino, user_fh).unwrap();
    e.release(ino, root_fh).unwrap();
    e.shutdown().unwrap();
}

#[test]
fn set_group_id_without_group_execute_stays() {
    let (_volume, e) = volume_and_engine();
    let (ino, fh) = setid_file(&e, b"f", 0o6766, &USER);
    e.write(&USER, ino, fh, 0, b"user").unwrap();
    assert_eq!(perm(&e, ino), 0o2766);
    e.release(ino, fh).unwrap();
    e.shutdown().unwrap();
}

#[test]
fn fallocate_by_another_user_clears_set_id_and_by_root_does_not() {
    let (_volume, e) = volume_and_engine();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    for (i, mode) in [punch, 0, libc::FALLOC_FL_KEEP_SIZE]
        .into_iter()
        .enumerate()
    {
        let name = format!("f{i}");
        let (ino, fh) = setid_file(&e, name.as_bytes(), 0o6777, &USER);
        e.write(&USER, ino, fh, 0, &[7u8; 8192]).unwrap();
        e.flush(ino, fh).unwrap();
        e.setattr(
            &Caller::ROOT,
            ino,
            &SetAttr {
                mode: Some(0o6777),
                ..Default::default()
            },
        )
        .unwrap();
        e.fallocate(&Caller::ROOT, ino, fh, 0, 4096, mode).unwrap();
        assert_eq!(
            perm(&e, ino),
            0o6777,
            "mode {mode:#x}: root's fallocate cleared them"
        );
        e.fallocate(&USER, ino, fh, 0, 4096, mode).unwrap();
        assert_eq!(
            perm(&e, ino),
            0o777,
            "mode {mode:#x}: the user's fallocate left them"
        );
        e.release(ino, fh).unwrap();
    }
    e.shutdown().unwrap();
}

#[test]
fn roots_write_keeps_set_id_and_drops_capabilities() {
    let (_volume, e) = volume_and_engine();
    let (ino, fh) = setid_file(&e, b"f", 0o6755, &Caller::ROOT);
    e.setxattr(
        &Caller::ROOT,
        ino,
        b"security.capability",
        &[1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        XattrSet::Any,
    )
    .unwrap();
    e.write(&Caller::ROOT, ino, fh, 0, b"root").unwrap();
    assert_eq!(perm(&e, ino), 0o6755, "root's write cleared set-id bits");
    assert!(
        e.getxattr(ino, b"security.capability").is_err(),
        "a write left the capabilities"
    );
    e.release(ino, fh).unwrap();
    e.shutdown().unwrap();
}
