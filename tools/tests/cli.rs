//! The `spoolfs` command as users run it: exit codes, one-line errors, and (as root with
//! /dev/fuse) a daemon mount from format to umount.

use std::path::Path;
use std::process::{Command, Output};

fn spoolfs(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spoolfs"))
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env("XDG_DATA_HOME", cache.join("data"))
        .env_remove("SPOOLFS_LOG")
        .output()
        .expect("run spoolfs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure: non-zero exit, a `spoolfs: ` line on stderr containing `needle`, no panic.
fn assert_fails(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "unexpected success: {err}");
    assert!(err.starts_with("spoolfs: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn format_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meta = format!("redb://{}/meta.redb", d.display());
    let storage = format!("file://{}/objects", d.display());
    let o = spoolfs(
        &["format", "--meta", &meta, "--storage", &storage, "vol"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("\"vol\"") && out.contains("uuid:") && out.contains(&storage),
        "{out}"
    );

    let o = spoolfs(
        &["format", "--meta", &meta, "--storage", &storage, "vol"],
        d,
    );
    assert_fails(&o, "--force");
    let o = spoolfs(
        &[
            "format",
            "--meta",
            &meta,
            "--storage",
            &storage,
            "--force",
            "vol2",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = spoolfs(
        &["format", "--meta", "nope://x", "--storage", &storage, "v"],
        d,
    );
    assert_fails(&o, "invalid metadata URL");
    let o = spoolfs(
        &[
            "format",
            "--meta",
            &format!("redb://{}/m2.redb", d.display()),
            "--storage",
            &storage,
            "--block-size",
            "3M",
            "v",
        ],
        d,
    );
    assert_fails(&o, "block size");

    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap();
    let o = spoolfs(&["mount", "--meta", "nope://x", mnt_s], d);
    assert_fails(&o, "invalid metadata URL");
    let empty_meta = format!("redb://{}/empty.redb", d.display());
    let o = spoolfs(&["mount", "--meta", &empty_meta, mnt_s], d);
    assert_fails(&o, "no volume in");
    assert_fails(&o, "run spoolfs format");
    let o = spoolfs(
        &[
            "mount",
            "--meta",
            &meta,
            d.join("missing").to_str().unwrap(),
        ],
        d,
    );
    assert_fails(&o, "does not exist");
    std::fs::write(d.join("file"), b"x").unwrap();
    let o = spoolfs(&["mount", "--meta", &meta, d.to_str().unwrap()], d);
    assert_fails(&o, "is not empty");

    let o = spoolfs(&["umount", mnt_s], d);
    assert_fails(&o, "not a spoolfs mount");
    let o = spoolfs(&["status", mnt_s], d);
    assert_fails(&o, "not a spoolfs mount");
}

#[test]
fn daemon_mount_status_umount() {
    spoolfs_testkit::require_fuse!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap();
    // No --meta: the default volume (under XDG_DATA_HOME) is formatted on first mount.
    let o = spoolfs(&["mount", mnt_s], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("mounted default at"), "{}", stdout(&o));

    let result = std::panic::catch_unwind(|| {
        std::fs::write(mnt.join("a"), b"hi\n").unwrap();
        assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"hi\n");

        // A second mount of the same volume elsewhere: the metadata store is locked.
        let other = d.join("other");
        std::fs::create_dir(&other).unwrap();
        let o = spoolfs(&["mount", other.to_str().unwrap()], d);
        assert_fails(&o, "already mounted?");

        let o = spoolfs(&["status", mnt_s, "--json"], d);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["engine"]["volume_name"], "default");
        assert_eq!(v["storage_reachable"], true);
        assert!(v["pid"].as_u64().unwrap() > 0);
        let o = spoolfs(&["status", mnt_s], d);
        assert!(stdout(&o).contains("volume \"default\""), "{}", stdout(&o));
        v["pid"].as_u64().unwrap() as i32
    });

    let o = spoolfs(&["umount", mnt_s], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = result.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());

    // Mount again: the data is still there.
    let o = spoolfs(&["mount", mnt_s], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let content = std::fs::read(mnt.join("a"));
    let o = spoolfs(&["umount", mnt_s], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(content.unwrap(), b"hi\n");
}
