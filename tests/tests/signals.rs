//! Stopping a mount other than with `spoolfs umount`: SIGTERM (what systemd and `kill` send),
//! with the file system idle or busy, and `spoolfs umount --no-wait`. Each case ends with a
//! mount on a fresh cache directory (allowed only after a clean stop) that reads every byte
//! back.

use spoolfs_tests::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn write_files(dir: &Path, n: u64) -> Vec<(PathBuf, Vec<u8>)> {
    let mut rng = Rng::new(n);
    (0..n)
        .map(|i| {
            let len = if i == 0 {
                3 << 20
            } else {
                1 + rng.below(40_000)
            } as usize;
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            let path = dir.join(format!("f{i:03}"));
            fs::write(&path, &data).unwrap();
            (path.file_name().unwrap().into(), data)
        })
        .collect()
}

/// A daemon mount whose uploads wait (`SLOW_UPLOADS`), with `n` files of [`write_files`] in
/// directory `d`: the mount, and the files' names and contents.
fn mount_with_files(vol: &Volume, n: u64) -> (Mount<'_>, Vec<(PathBuf, Vec<u8>)>) {
    let m = vol.mount_daemon_slow_uploads();
    fs::create_dir(m.join("d")).unwrap();
    let files = write_files(&m.join("d"), n);
    (m, files)
}

/// Mounts on a fresh cache directory (refused unless the last mount stopped cleanly) and
/// compares every file.
fn check_on_fresh_cache(vol: &Volume, files: &[(PathBuf, Vec<u8>)], dir: &str) {
    let m = vol.mount_with(MountOptions {
        daemon: true,
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for (name, data) in files {
        let got = fs::read(m.join(dir).join(name)).unwrap();
        assert!(
            got == *data,
            "{dir}/{} differs after the stop",
            name.display()
        );
    }
    m.unmount();
}

fn sigterm(pid: u32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
}

#[test]
fn sigterm_uploads_everything_and_unmounts() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, files) = mount_with_files(&vol, 40);
    assert!(m.staged_bytes() > 0, "the test needs staged data");
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    sigterm(pid);
    // A second signal during the drain must not start a second shutdown or cut it short.
    std::thread::sleep(Duration::from_millis(20));
    sigterm(pid);
    wait_gone(pid, "SIGTERM");
    assert!(!is_mounted(&mp), "still mounted after SIGTERM");
    let log = m.log_text();
    assert!(!log.contains("panicked"), "daemon panicked:\n{log}");
    drop(m);
    check_on_fresh_cache(&vol, &files, "d");
}

#[test]
fn sigterm_while_busy_writes_out_then_detaches_and_refuses_changes() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, mut files) = mount_with_files(&vol, 10);
    // An open file keeps the mount busy; its first bytes are written but not closed.
    let first = b"written before the signal\n".to_vec();
    let mut open = fs::File::create(m.join("d/open")).unwrap();
    open.write_all(&first).unwrap();
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    sigterm(pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while is_mounted(&mp) {
        assert!(
            Instant::now() < deadline,
            "a busy mount was not detached within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Detached after everything was written out: later changes are refused, loudly.
    let later = open.write_all(b"after\n").and_then(|_| open.sync_all());
    let err = later.expect_err("a write after the shutdown must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    drop(open);
    wait_gone(pid, "the last file was closed");
    drop(m);
    files.push(("open".into(), first));
    check_on_fresh_cache(&vol, &files, "d");
}

#[test]
fn umount_no_wait_returns_at_once_and_the_daemon_finishes_uploading() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, files) = mount_with_files(&vol, 30);
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    let out = m.unmount_no_wait();
    out.assert_success();
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("staged"),
        "umount --no-wait should say what is still staged: {said}"
    );
    assert!(!is_mounted(&mp), "still mounted after umount --no-wait");
    // The daemon goes on uploading in the background, then exits cleanly.
    wait_gone(pid, "umount --no-wait");
    drop(m);
    check_on_fresh_cache(&vol, &files, "d");
}
