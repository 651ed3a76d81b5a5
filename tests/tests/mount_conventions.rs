//! What users and mount(8) expect of a mount: other users may enter a root mount (and the
//! modes still hold), mount.spoolfs is silent on success, remount changes ro/rw, the kernel
//! flags noexec/nosuid/nodev/suid/dev reach the kernel mount, `umount MNT && mount MNT` works
//! while the previous daemon is still writing out data, and the files spoolfs keeps on the
//! local disk are private to its user.

use spoolfs_s3proxy::{Fault, Method};
use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);
/// An unprivileged user every Linux system has (nobody).
const OTHER_UID: u32 = 65534;

/// The per-mount options (field 6) and the super options (last field) of the mount at `path`
/// in /proc/self/mountinfo.
fn mount_options(path: &Path) -> (Vec<String>, Vec<String>) {
    let path = fs::canonicalize(path).unwrap();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not in mountinfo:\n{text}", path.display()));
    let fields: Vec<&str> = line.split(' ').collect();
    let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    (split(fields[5]), split(fields.last().unwrap()))
}

/// Runs `sh -c script` as `uid` (and its own group, no supplementary groups) in `dir`.
fn as_user(uid: u32, dir: &Path, script: &str) -> CmdOutput {
    let mut cmd = command("sh");
    cmd.arg("-c").arg(script).current_dir(dir).uid(uid).gid(uid);
    run(&mut cmd, T)
}

/// Lets every user search the directories above `path` (temporary directories are 0700), so
/// that another user can reach the mount point at all.
fn open_ancestors(path: &Path) {
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else { break };
        if meta.mode() & 0o001 == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode() | 0o011)).unwrap();
        }
    }
}

fn assert_denied(out: &CmdOutput, what: &str) {
    assert!(!out.success(), "{what} was allowed: {out}");
    assert!(
        out.stderr.contains("Permission denied"),
        "{what}: not EACCES: {out}"
    );
}

#[test]
fn root_mount_lets_other_users_in_and_modes_still_hold() {
    require_fuse!();
    let v = Volume::new(Backend::File);
    let m = v.mount();
    open_ancestors(m.path());
    let (_, super_opts) = mount_options(m.path());
    assert!(
        super_opts.contains(&"allow_other".to_string())
            && super_opts.contains(&"default_permissions".to_string()),
        "{super_opts:?}"
    );

    let home = m.join("home-nobody");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    fs::create_dir(m.join("root-dir")).unwrap();
    fs::write(m.join("secret"), b"root only\n").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.join("public"), b"everyone\n").unwrap();
    fs::set_permissions(m.join("public"), fs::Permissions::from_mode(0o644)).unwrap();

    // In a directory the user owns: create, read, write, delete.
    let out = as_user(
        OTHER_UID,
        &home,
        "echo mine > f && cat f && mkdir d && echo more >> d/g && cat d/g && rm d/g && \
         rmdir d && rm f && cat ../public",
    );
    out.assert_success();
    assert_eq!(out.stdout, "mine\nmore\neveryone\n", "{out}");
    let md = fs::metadata(&home).unwrap();
    assert_eq!((md.uid(), md.gid()), (OTHER_UID, OTHER_UID));
    assert_eq!(fs::read_dir(&home).unwrap().count(), 0);
    let out = as_user(OTHER_UID, &home, "echo x > kept");
    out.assert_success();
    assert_eq!(
        fs::metadata(home.join("kept")).unwrap().uid(),
        OTHER_UID,
        "a file another user creates is theirs"
    );

    // Where the modes say no: EACCES.
    let root = m.path().to_path_buf();
    for (command, what) in [
        ("cat secret", "reading a 0600 file"),
        ("echo x > root-dir/f", "creating in a 0755 root directory"),
        ("rm -f public", "deleting from the root directory"),
        ("echo x >> public", "writing a 0644 file of root"),
    ] {
        assert_denied(&as_user(OTHER_UID, &root, command), what);
    }
    assert_eq!(fs::read(m.join("secret")).unwrap(), b"root only\n");
    assert_eq!(fs::read(m.join("public")).unwrap(), b"everyone\n");
    let mnt = m.unmount();

    // --allow-other=false: other users are kept out of the whole mount.
    let m = v.mount_with(MountOptions {
        mountpoint: Some(mnt),
        extra_args: vec!["--allow-other=false".into()],
        ..Default::default()
    });
    let (_, super_opts) = mount_options(m.path());
    assert!(
        !super_opts.contains(&"allow_other".to_string()),
        "{super_opts:?}"
    );
    assert_denied(
        &as_user(
            OTHER_UID,
            Path::new("/"),
            &format!("ls {}", m.path().display()),
        ),
        "entering a mount with --allow-other=false",
    );
    m.unmount();
}

#[test]
fn user_asking_for_allow_other_is_told_about_fuse_conf() {
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        spoolfs_testkit::not_applicable(
            "user_asking_for_allow_other_is_told_about_fuse_conf",
            "/etc/fuse.conf allows user_allow_other on this machine",
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        spoolfs_testkit::skip(
            "user_asking_for_allow_other_is_told_about_fuse_conf",
            "needs root to run a command as another user",
        );
        return;
    }
    let mut cmd = command(spoolfs_bin());
    cmd.args(["mount", "/nonexistent-mount-point", "--allow-other"])
        .env("HOME", "/nonexistent")
        .uid(OTHER_UID)
        .gid(OTHER_UID);
    let out = run(&mut cmd, T);
    out.assert_clean_failure(&["user_allow_other"]);
    assert!(out.stderr.contains("/etc/fuse.conf"), "{out}");
}

/// Serialises the tests that install the mount(8) helpers in /sbin.
static HELPERS: Mutex<()> = Mutex::new(());

/// `/sbin/mount.spoolfs` and `/sbin/mount.fuse.spoolfs` pointing at the binary under test for
/// as long as it lives (mount(8) looks for helpers only there). `None` when other files of
/// those names are already there.
struct Helpers {
    made: Vec<PathBuf>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Helpers {
    fn install() -> Option<Helpers> {
        let lock = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let bin = fs::canonicalize(spoolfs_bin()).unwrap();
        let mut made = Vec::new();
        for name in ["mount.spoolfs", "mount.fuse.spoolfs"] {
            let link = Path::new("/sbin").join(name);
            match fs::read_link(&link) {
                Ok(target) if target == bin => {}
                Ok(_) | Err(_) if link.symlink_metadata().is_ok() => {
                    spoolfs_testkit::not_applicable(
                        "mount(8) helper tests",
                        &format!("{} exists and is not the binary under test", link.display()),
                    );
                    for l in made {
                        let _ = fs::remove_file(l);
                    }
                    return None;
                }
                _ => {
                    symlink(&bin, &link).unwrap();
                    made.push(link);
                }
            }
        }
        Some(Helpers { made, _lock: lock })
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for l in &self.made {
            let _ = fs::remove_file(l);
        }
    }
}

/// Runs mount(8) or umount(8) with `args` and the volume's environment.
fn mount8(v: &Volume, program: &str, args: &[&OsStr]) -> CmdOutput {
    let mut cmd = command(program);
    cmd.env("XDG_DATA_HOME", v.dir().join("xdg")).args(args);
    run(&mut cmd, T)
}

/// `mount -t spoolfs -o OPTIONS VOLUME MNT`, as fstab or an administrator would run it.
fn mount8_spoolfs(v: &Volume, options: &str, mnt: &Path) -> CmdOutput {
    let args = [
        os("-t"),
        os("spoolfs"),
        os("-o"),
        os(options),
        os(&v.meta_url),
        mnt.as_os_str(),
    ];
    mount8(v, "mount", &args)
}

/// mount(8) helpers print nothing when they succeed: scripts compare their output.
fn assert_silent_success(out: &CmdOutput) {
    out.assert_success();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{out}"
    );
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// Detaches `path` when dropped, so that a failed assertion leaves no mount behind.
struct Detach(PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            force_unmount(&self.0);
        }
    }
}

#[test]
fn mount8_helper_is_silent_and_flags_reach_the_kernel() {
    require_fuse!();
    let Some(_helpers) = Helpers::install() else {
        return;
    };
    let v = Volume::new(Backend::File);
    let mnt = v.new_subdir("mnt");
    let cache = v.new_subdir("cache");
    let _detach = Detach(mnt.clone());
    let options = format!("cache_dir={},noexec,nosuid,nodev,nofail", cache.display());

    // Silent on success.
    let out = mount8_spoolfs(&v, &options, &mnt);
    assert_silent_success(&out);
    let (opts, _) = mount_options(&mnt);
    for flag in ["noexec", "nosuid", "nodev", "rw"] {
        assert!(opts.contains(&flag.to_string()), "{flag} not in {opts:?}");
    }
    let script = mnt.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let err = std::process::Command::new(&script).output().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "noexec: {err}");

    // remount,ro: the kernel mount turns read-only (noexec kept); remount,rw: writable again.
    let out = mount8(&v, "mount", &[os("-o"), os("remount,ro"), mnt.as_os_str()]);
    assert_silent_success(&out);
    let (opts, _) = mount_options(&mnt);
    assert!(
        opts.contains(&"ro".to_string()) && opts.contains(&"noexec".to_string()),
        "{opts:?}"
    );
    assert_errno(
        fs::write(mnt.join("f"), b"x"),
        libc::EROFS,
        "write after remount,ro",
    );
    assert_eq!(fs::read(&script).unwrap(), b"#!/bin/sh\necho ran\n");
    let out = mount8(&v, "mount", &[os("-o"), os("remount,rw"), mnt.as_os_str()]);
    assert_silent_success(&out);
    let (opts, _) = mount_options(&mnt);
    assert!(opts.contains(&"rw".to_string()), "{opts:?}");
    fs::write(mnt.join("f"), b"after rw").unwrap();
    // The kernel's flags change by remount too.
    mount8(
        &v,
        "mount",
        &[os("-o"), os("remount,exec"), mnt.as_os_str()],
    )
    .assert_success();
    let ran = std::process::Command::new(&script).output().unwrap();
    assert_eq!(ran.stdout, b"ran\n");

    // Errors go to stderr with a non-zero status, nothing on stdout.
    let other = v.new_subdir("mnt-other");
    let out = mount8_spoolfs(&v, "frobnicate", &other);
    out.assert_clean_failure(&["frobnicate"]);
    assert_eq!(out.stdout, "", "{out}");
    assert!(!is_mounted(&other));

    // A plain umount, then root's suid and dev reach the kernel mount.
    mount8(&v, "umount", &[mnt.as_os_str()]).assert_success();
    let options = format!("cache_dir={},suid,dev", cache.display());
    let out = mount8_spoolfs(&v, &options, &mnt);
    out.assert_success();
    let (opts, _) = mount_options(&mnt);
    assert!(
        !opts.contains(&"nosuid".to_string()) && !opts.contains(&"nodev".to_string()),
        "{opts:?}"
    );
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"after rw");
    v.spoolfs_run([os("umount"), mnt.as_os_str()])
        .assert_success();
}

/// Unmounts `path` the way umount(8) does: umount2 without flags. EBUSY is retried for a few
/// seconds (as an administrator would): the kernel may still hold the file just closed while
/// its release goes to the daemon, and that is not what this test is about.
fn plain_umount(path: &Path) {
    let c = cstr(path);
    for _ in 0..50 {
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EBUSY),
            "umount {}: {err}",
            path.display()
        );
        eprintln!("umount {}: busy, again in 0.1 s", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("umount {}: still busy after 5 s", path.display());
}

#[test]
fn plain_umount_then_mount_again_ten_times() {
    require_fuse!();
    let helpers = Helpers::install();
    // Every PUT held for a second: after each plain umount the daemon goes on writing out the
    // round's data, holding the metadata store, while the next mount starts.
    let (v, proxy) = Volume::new_behind_proxy();
    proxy.add_fault(Fault::stall(Some(Duration::from_secs(1))).only(Method::Put));
    let mnt = v.new_subdir("mnt");
    let _detach = Detach(mnt.clone());
    const SIZE: usize = 3 << 20;
    let mut waited = 0;
    for round in 0..10u64 {
        let through_mount8 = helpers.is_some() && round % 2 == 1;
        let out = if through_mount8 {
            let options = format!(
                "cache_dir={},s3_endpoint={}",
                v.cache_dir().display(),
                proxy.endpoint()
            );
            mount8_spoolfs(&v, &options, &mnt)
        } else {
            let opts = MountOptions {
                daemon: true,
                mountpoint: Some(mnt.clone()),
                ..Default::default()
            };
            v.spoolfs_run(v.mount_args(&mnt, &opts))
        };
        assert!(out.success(), "round {round}: mount failed: {out}");
        assert!(is_mounted(&mnt), "round {round}: nothing mounted: {out}");
        if out.stderr.contains("waiting up to") {
            waited += 1;
            assert!(out.stderr.contains("--wait-previous"), "{out}");
        }
        fs::write(mnt.join(format!("round{round}")), random_bytes(round, SIZE)).unwrap();
        plain_umount(&mnt);
        // Nothing may ever land in the directory underneath.
        let under: Vec<_> = fs::read_dir(&mnt)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            under.is_empty(),
            "round {round}: files under the mount point: {under:?}"
        );
    }
    assert!(
        waited > 0,
        "no mount had to wait for its predecessor: the test proved nothing"
    );
    eprintln!("{waited} of 10 mounts waited for the previous daemon");

    proxy.clear_faults();
    let m = v.mount_at(&mnt);
    for round in 0..10u64 {
        let data = fs::read(m.join(format!("round{round}"))).unwrap();
        assert_bytes_eq(&data, &random_bytes(round, SIZE), &format!("round{round}"));
    }
    m.unmount();
}

/// Every file below `dir` (and `dir` itself and the directories below it, if `dirs_too`) is
/// private to its owner.
fn assert_private(dir: &Path, dirs_too: bool, checked: &mut usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let md = fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            if dirs_too {
                assert_eq!(
                    md.mode() & 0o077,
                    0,
                    "{} is {:o}",
                    e.path().display(),
                    md.mode()
                );
            }
            assert_private(&e.path(), dirs_too, checked);
        } else if md.is_file() {
            assert_eq!(
                md.mode() & 0o077,
                0,
                "{} is {:o}",
                e.path().display(),
                md.mode()
            );
            *checked += 1;
        }
    }
}

#[test]
fn local_files_are_private_under_umask_022() {
    require_fuse!();
    // SAFETY: umask has no preconditions; 022 is the usual default the daemon inherits.
    unsafe { libc::umask(0o022) };
    let v = Volume::new(Backend::File);
    let m = v.mount_with(MountOptions {
        daemon: true,
        extra_args: vec!["--cache-large-writes".into()],
        ..Default::default()
    });
    for i in 0..20u64 {
        fs::write(m.join(format!("small{i}")), random_bytes(i, 3000)).unwrap();
    }
    fs::write(m.join("large"), random_bytes(99, 3 << 20)).unwrap();
    let mnt = m.unmount();
    // Files of an earlier version, readable by others, are made private by the next mount.
    for old in [v.dir().join("meta.redb"), v.cache_dir().join("spoolfs.log")] {
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Read back from a fresh mount: the data cache fills from the object store.
    let m = v.mount_with(MountOptions {
        daemon: true,
        mountpoint: Some(mnt),
        ..Default::default()
    });
    assert_eq!(
        fs::read(m.join("large")).unwrap(),
        random_bytes(99, 3 << 20)
    );
    let mut checked = 0;
    assert_private(&v.cache_dir(), true, &mut checked);
    let md = fs::metadata(v.cache_dir()).unwrap();
    assert_eq!(md.mode() & 0o077, 0, "cache dir is {:o}", md.mode());
    assert!(v.cache_dir().join("spoolfs.log").is_file());
    // The object store's directory was made by the test; what spoolfs put in it is private.
    assert_private(&v.objects_dir(), true, &mut checked);
    let meta = fs::metadata(v.dir().join("meta.redb")).unwrap();
    assert_eq!(meta.mode() & 0o077, 0, "meta.redb is {:o}", meta.mode());
    assert!(checked > 5, "only {checked} files checked");
    m.unmount();

    // The log is never opened through a symlink.
    let target = v.dir().join("not-a-log");
    fs::write(&target, b"keep").unwrap();
    let link = v.dir().join("link.log");
    symlink(&target, &link).unwrap();
    let mnt = v.new_subdir("mnt-log");
    let out = v.mount_output(&mnt, &["--log-file", link.to_str().unwrap()]);
    out.assert_clean_failure(&["symbolic link"]);
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}
