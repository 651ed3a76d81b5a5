//! POSIX ACLs on a spoolfs mount, with `setfacl`/`getfacl` (Debian package `acl`): stored,
//! enforced by the kernel for other users, kept in step with chmod, inherited from default
//! ACLs by new files and directories with the modes ext4 gives them, set-group-id cleared as
//! ext4 does when an owner outside the group sets one, kept across a remount.

use spoolfs_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn tool_available(name: &str) -> bool {
    std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok()
}

/// `sh -c SCRIPT` in directory `dir`, as root.
fn sh(dir: &Path, script: &str) -> CmdOutput {
    run(
        command("sh").args(["-c", script]).current_dir(dir),
        Duration::from_secs(60),
    )
}

/// `sh -c SCRIPT` in directory `dir` as user and group `uid`, with no other groups. The
/// directory is entered as root first: the way to the mount point may be closed to others.
fn sh_as(uid: u32, dir: &Path, script: &str) -> CmdOutput {
    let id = uid.to_string();
    run(
        command("setpriv")
            .args([
                "--reuid",
                &id,
                "--regid",
                &id,
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(dir),
        Duration::from_secs(60),
    )
}

/// `getfacl -n` of the given paths, without its comment lines.
fn getfacl(dir: &Path, paths: &[&str]) -> String {
    let out = run(
        command("getfacl")
            .args(["-n", "--omit-header"])
            .args(paths)
            .current_dir(dir),
        Duration::from_secs(60),
    );
    out.assert_success();
    out.stdout
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn posix_acls() {
    require_fuse!();
    if !tool_available("setfacl") || !tool_available("getfacl") || !tool_available("setpriv") {
        panic!("setfacl, getfacl (Debian package acl) and setpriv (util-linux) are needed");
    }
    let v = Volume::new(Backend::File);
    let m = v.mount_with(MountOptions {
        extra_args: vec!["--allow-other".into()],
        ..Default::default()
    });
    let mnt = m.path().to_path_buf();
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o755)).unwrap();

    // An access ACL: a named user gets in where the mode alone would refuse them.
    fs::write(mnt.join("g"), b"secret\n").unwrap();
    fs::set_permissions(mnt.join("g"), fs::Permissions::from_mode(0o640)).unwrap();
    sh_as(1234, &mnt, "cat g").assert_clean_failure(&["Permission denied"]);
    sh(&mnt, "setfacl -m u:1234:rw g").assert_success();
    assert_eq!(
        getfacl(&mnt, &["g"]),
        "user::rw-\nuser:1234:rw-\ngroup::r--\nmask::rw-\nother::---\n\n"
    );
    assert_eq!(
        mode(&mnt.join("g")),
        0o660,
        "the mask shows as the group bits"
    );
    let out = sh_as(1234, &mnt, "cat g && echo more >> g");
    out.assert_success();
    assert_eq!(out.stdout, "secret\n");
    assert_eq!(fs::read(mnt.join("g")).unwrap(), b"secret\nmore\n");
    sh_as(1235, &mnt, "cat g").assert_clean_failure(&["Permission denied"]);

    // chmod rewrites the mask: the named user loses what the group bits no longer allow.
    fs::set_permissions(mnt.join("g"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        getfacl(&mnt, &["g"]),
        "user::rw-\nuser:1234:rw-\t#effective:r--\ngroup::r--\nmask::r--\nother::---\n\n"
    );
    sh_as(1234, &mnt, "cat g >/dev/null").assert_success();
    sh_as(1234, &mnt, "echo x >> g").assert_clean_failure(&["Permission denied"]);
    // Removing the extended entries leaves the mode alone.
    sh(&mnt, "setfacl -b g").assert_success();
    assert_eq!(
        getfacl(&mnt, &["g"]),
        "user::rw-\ngroup::r--\nother::---\n\n"
    );
    assert_eq!(mode(&mnt.join("g")), 0o640);
    sh_as(1234, &mnt, "cat g").assert_clean_failure(&["Permission denied"]);

    // Default ACLs are inherited as on ext4: the ACL, not the umask, limits the new modes.
    fs::create_dir(mnt.join("d")).unwrap();
    sh(
        &mnt,
        "setfacl -d -m u:1234:rwx d && setfacl -m u:1234:rwx d",
    )
    .assert_success();
    sh(
        &mnt,
        "umask 022 && touch d/f && mkdir d/sub && mkdir d/sub/deeper",
    )
    .assert_success();
    assert_eq!(mode(&mnt.join("d/f")), 0o664);
    assert_eq!(mode(&mnt.join("d/sub")), 0o775);
    let default = "default:user::rwx\ndefault:user:1234:rwx\ndefault:group::r-x\n\
                   default:mask::rwx\ndefault:other::r-x\n";
    assert_eq!(
        getfacl(&mnt, &["d/f"]),
        "user::rw-\nuser:1234:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\n\
         other::r--\n\n"
    );
    let sub_acl =
        format!("user::rwx\nuser:1234:rwx\ngroup::r-x\nmask::rwx\nother::r-x\n{default}\n");
    assert_eq!(getfacl(&mnt, &["d/sub"]), sub_acl);
    assert_eq!(getfacl(&mnt, &["d/sub/deeper"]), sub_acl);
    // The named user creates in the directory its ACL opens to them; others are refused.
    sh_as(1234, &mnt, "touch d/mine && mkdir d/sub/theirs").assert_success();
    sh_as(1235, &mnt, "touch d/not").assert_clean_failure(&["Permission denied"]);
    // Without a default ACL the umask applies as usual.
    sh(&mnt, "umask 027 && touch plain && mkdir plaindir").assert_success();
    assert_eq!(mode(&mnt.join("plain")), 0o640);
    assert_eq!(mode(&mnt.join("plaindir")), 0o750);
    // An ACL that the mode says all of is not kept as an attribute.
    sh(&mnt, "setfacl -m u::rwx,g::r-x,o::r-- plain").assert_success();
    assert_eq!(mode(&mnt.join("plain")), 0o754);
    assert_eq!(
        getfacl(&mnt, &["plain"]),
        "user::rwx\ngroup::r-x\nother::r--\n\n"
    );
    assert!(
        get_xattr(&mnt.join("plain"), "system.posix_acl_access").is_err(),
        "a minimal ACL is stored as the mode only"
    );

    // An owner outside the file's group who sets an ACL loses set-group-id; one in the group
    // keeps it (ext4's rule).
    for (name, gid, kept) in [("sg-other", 5678, false), ("sg-own", 1234, true)] {
        let p = mnt.join(name);
        fs::write(&p, b"x").unwrap();
        lchown(&p, 1234, gid).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o2770)).unwrap();
        sh_as(1234, &mnt, &format!("setfacl -m u:1235:r {name}")).assert_success();
        let want = if kept { 0o2770 } else { 0o770 };
        assert_eq!(mode(&p), want, "{name}: mode after setfacl by its owner");
    }

    // Everything is still there after a remount.
    let before = getfacl(&mnt, &["g", "d", "d/f", "d/sub", "d/mine"]);
    let mp = m.unmount();
    let m = v.mount_with(MountOptions {
        mountpoint: Some(mp),
        extra_args: vec!["--allow-other".into()],
        ..Default::default()
    });
    assert_eq!(
        getfacl(m.path(), &["g", "d", "d/f", "d/sub", "d/mine"]),
        before
    );
    sh_as(1234, m.path(), "touch d/again").assert_success();
    let mp = m.unmount();

    // --acl=false: refused, as on ext4 mounted noacl; the stored ones are left alone.
    let m = v.mount_with(MountOptions {
        mountpoint: Some(mp),
        extra_args: vec!["--acl=false".into()],
        ..Default::default()
    });
    sh(m.path(), "setfacl -m u:1234:r plain").assert_clean_failure(&["not supported"]);
    m.unmount();
}
