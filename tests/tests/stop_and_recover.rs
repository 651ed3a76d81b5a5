//! The other ways a mount stops, and what the next mount must do after each:
//!
//! * SIGINT and SIGHUP stop a mount as SIGTERM does: everything staged is uploaded first, and
//!   then a mount on a fresh cache directory (allowed only after a clean stop) reads it all;
//! * after a crash (SIGKILL) with data staged, a mount that asks for another cache directory
//!   is refused with a message naming the right one, and a mount with the right one uploads
//!   and reads every byte;
//! * `--shutdown-timeout` bounds that upload when the object store does not answer: the
//!   daemon exits with data still staged, and the same holds for the next mount;
//! * after `spoolfs umount --no-wait`, a crash of the daemon before its uploads end loses
//!   nothing: the next mount needs the same cache directory and reads every byte;
//! * after `spoolfs sync`, the object store alone holds every byte: the mount is killed (so no
//!   clean unmount uploads anything) and its staged data removed, and the next mount reads
//!   it all. (A second mount beside the first cannot check this: the metadata store is the
//!   first mount's, locked.)

use spoolfs_s3proxy::{Fault, Method};
use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

fn write_files(dir: &Path, n: u64, seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
    fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = 1 + rng.below(40_000) as usize;
            let data = rng.bytes(len);
            let name = PathBuf::from(format!("f{i:03}"));
            fs::write(dir.join(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

/// A daemon mount whose uploads wait (`SLOW_UPLOADS`), with 20 files of [`write_files`]
/// from `seed` in directory `d`, still staged: the mount, and the files' names and contents.
fn mount_with_staged_files(vol: &Volume, seed: u64) -> (Mount<'_>, Vec<(PathBuf, Vec<u8>)>) {
    let m = vol.mount_daemon_slow_uploads();
    let files = write_files(&m.join("d"), 20, seed);
    assert!(
        m.staged_bytes() > 0,
        "the test needs staged data (seed {seed})"
    );
    (m, files)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn pid_is_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn check_files(m: &Mount, dir: &str, files: &[(PathBuf, Vec<u8>)], what: &str) {
    for (name, data) in files {
        let got = fs::read(m.join(dir).join(name))
            .unwrap_or_else(|e| panic!("{what}: {dir}/{}: {e}", name.display()));
        assert!(got == *data, "{what}: {dir}/{} differs", name.display());
    }
}

#[test]
fn sigint_and_sighup_upload_everything_and_unmount() {
    require_fuse!();
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP")] {
        let vol = Volume::new(Backend::File);
        let (m, files) = mount_with_staged_files(&vol, sig as u64);
        let pid = m.pid().expect("daemon pid");
        let mp = m.path().to_path_buf();
        signal(pid, sig);
        wait_gone(pid, name);
        assert!(!is_mounted(&mp), "still mounted after {name}");
        let log = m.log_text();
        assert!(!log.contains("panicked"), "{name}: daemon panicked:\n{log}");
        drop(m);
        // Only a clean stop lets another cache directory mount the volume.
        let fresh = vol.mount_with(MountOptions {
            daemon: true,
            cache_dir: Some(vol.new_subdir("fresh-cache")),
            ..Default::default()
        });
        check_files(&fresh, "d", &files, name);
        fresh.unmount();
    }
}

/// With data staged in the volume's cache directory by a mount that did not stop cleanly:
/// another cache directory is refused, naming the right one; the right one reads every file
/// of `d`, and `spoolfs sync` uploads them.
fn check_only_the_same_cache_mounts(vol: &Volume, files: &[(PathBuf, Vec<u8>)]) {
    let refused = vol.try_mount_with(MountOptions {
        daemon: true,
        cache_dir: Some(vol.new_subdir("other-cache")),
        ..Default::default()
    });
    let err = match refused {
        Ok(m) => {
            m.unmount();
            panic!("a mount with another cache directory was allowed with data staged elsewhere");
        }
        Err(e) => e,
    };
    assert!(
        err.contains("--cache-dir") && err.contains(&vol.cache_dir().display().to_string()),
        "the refusal does not name the cache directory to use: {err}"
    );
    let again = vol.mount_daemon();
    check_files(&again, "d", files, "on the same cache directory");
    let out = vol.spoolfs_run([OsStr::new("sync"), again.path().as_os_str()]);
    out.assert_success();
    assert_eq!(again.staged_bytes(), 0, "sync left data staged");
    again.unmount();
}

#[test]
fn a_mount_with_another_cache_is_refused_after_a_crash() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, files) = mount_with_staged_files(&vol, 3);
    m.kill9();
    check_only_the_same_cache_mounts(&vol, &files);
}

/// Mounts behind a proxy with `--shutdown-timeout 2`, makes every PUT meet `fault`, writes 20
/// files (contents from `seed`) and sends SIGTERM: the daemon must stop (`what` names the
/// case in a failure), unmounted, without a panic. `check` then sees how long the stop took,
/// the mount and the proxy; last, only a mount with the same cache directory gets the files.
fn stop_while_every_put_meets(
    fault: Fault,
    what: &str,
    seed: u64,
    check: impl FnOnce(std::time::Duration, &Mount, &spoolfs_s3proxy::Proxy),
) {
    let (vol, proxy) = Volume::new_behind_proxy();
    let m = vol.mount_with(MountOptions {
        daemon: true,
        extra_args: ["--shutdown-timeout", "2"]
            .iter()
            .chain(SLOW_UPLOADS.iter())
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    });
    proxy.add_fault(fault.only(Method::Put));
    let files = write_files(&m.join("d"), 20, seed);
    assert!(m.staged_bytes() > 0, "the test needs staged data");
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    let t = std::time::Instant::now();
    signal(pid, libc::SIGTERM);
    if std::panic::catch_unwind(|| wait_gone(pid, what)).is_err() {
        panic!("the daemon did not stop; its log:\n{}", m.log_text());
    }
    check(t.elapsed(), &m, &proxy);
    assert!(!is_mounted(&mp), "still mounted after the shutdown timeout");
    let log = m.log_text();
    assert!(!log.contains("panicked"), "daemon panicked:\n{log}");
    drop(m);
    proxy.clear_faults();
    check_only_the_same_cache_mounts(&vol, &files);
}

/// `--shutdown-timeout` bounds the stop even while every PUT stalls: an upload thread blocked
/// in a PUT is left behind, and what it was uploading stays staged for the same cache.
#[test]
fn shutdown_timeout_bounds_the_drain_and_the_next_mount_needs_the_same_cache() {
    require_fuse!();
    // Every PUT stalls until the fault is cleared: only the timeout can end the drain.
    stop_while_every_put_meets(
        Fault::stall(None),
        "SIGTERM with --shutdown-timeout 2 and a stalled store",
        7,
        |_, _, _| {},
    );
}

/// `--shutdown-timeout` bounds the stop while every PUT fails with 500 InternalError too: the
/// uploaders retry with backoff (the client's own retries, then the uploader's) and hold
/// nothing back once the stop waits; at the timeout the daemon exits within the join grace,
/// and what it could not upload stays staged for the same cache.
#[test]
fn shutdown_timeout_bounds_the_stop_while_every_put_fails() {
    require_fuse!();
    stop_while_every_put_meets(
        Fault::internal_error(),
        "SIGTERM with --shutdown-timeout 2 while every PUT fails",
        8,
        |took, m, proxy| {
            eprintln!("    stopped {took:?} after SIGTERM, every PUT failing");
            // 2 s of drain, at most 5 s for the upload threads to notice; the rest is slack
            // for a loaded machine, far below the minutes of the client's retries.
            assert!(
                took < std::time::Duration::from_secs(30),
                "the daemon took {took:?} to stop; its log:\n{}",
                m.log_text()
            );
            assert!(proxy.injected().put > 0, "no PUT failed");
        },
    );
}

/// `spoolfs umount --no-wait` promises that what is still staged survives a crash of spoolfs
/// until the uploads end: the daemon, still uploading in the background (every PUT stalls),
/// is killed; the next mount must use the same cache directory and reads every byte.
#[test]
fn a_crash_after_umount_no_wait_loses_nothing() {
    require_fuse!();
    let (vol, proxy) = Volume::new_behind_proxy();
    let (m, files) = mount_with_staged_files(&vol, 13);
    // Every PUT stalls until the fault is cleared: the uploads cannot end before the kill.
    proxy.add_fault(Fault::stall(None).only(Method::Put));
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    let out = m.unmount_no_wait();
    out.assert_success();
    assert!(!is_mounted(&mp), "still mounted after umount --no-wait");
    assert!(
        pid_is_alive(pid),
        "the daemon exited although no upload could end: nothing left to crash"
    );
    m.kill9();
    proxy.clear_faults();
    check_only_the_same_cache_mounts(&vol, &files);
}

/// `spoolfs sync` returns only once everything is in the object store, with the metadata
/// that points at it durable: after it, the mount is killed (no clean unmount uploads
/// anything) and its staged data thrown away, and the next mount still reads every byte.
#[test]
fn after_spoolfs_sync_the_object_store_alone_has_every_byte() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, files) = mount_with_staged_files(&vol, 11);
    let out = vol.spoolfs_run([OsStr::new("sync"), m.path().as_os_str()]);
    out.assert_success();
    m.kill9();
    // Only the staged data goes; the namespace log stays, as after any crash.
    let mut data_logs = 0;
    for volume_dir in fs::read_dir(vol.cache_dir()).unwrap().flatten() {
        let data = volume_dir.path().join("data");
        if data.is_dir() {
            fs::remove_dir_all(&data).unwrap();
            data_logs += 1;
        }
    }
    assert_eq!(
        data_logs, 1,
        "expected one staging data log under the cache directory"
    );
    let again = vol.mount_daemon();
    check_files(
        &again,
        "d",
        &files,
        "after sync, a kill and the loss of the staged data",
    );
    assert_eq!(again.staged_bytes(), 0);
    again.unmount();
}
