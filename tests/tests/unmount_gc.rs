//! Unmount waits for staged data, not for garbage collection. Files are overwritten and
//! deleted on a loopback S3 server behind 20 ms of latency per request while the server holds
//! every delete request: thousands of dead slices are pending when the volume is unmounted
//! (`spoolfs umount`, umount(8), or SIGTERM to its daemon). The unmount still returns at once with status 0, the dead
//! objects are left in the bucket, and the next mount deletes them in a few bulk requests;
//! every remaining file reads back byte for byte.

use spoolfs_s3proxy::{Fault, Method, Proxy};
use spoolfs_tests::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Latency the proxy adds to every request.
const LATENCY: Duration = Duration::from_millis(20);
/// Files of this size go one to a pack object with `--pack-size=64K`: every dead slice
/// empties a pack, and so costs one object delete.
const FILE_BYTES: usize = 40_000;

/// Mount arguments: small packs, and no background compactor (the object counts below are
/// the garbage collector's doing).
fn mount_args() -> Vec<String> {
    vec![
        "--pack-size=64K".into(),
        "--background-compact=false".into(),
    ]
}

fn content(seed: u64) -> Vec<u8> {
    random_bytes(seed, FILE_BYTES)
}

/// A volume on S3 reached through a proxy that adds [`LATENCY`] to every request.
fn slow_volume() -> (Volume, Proxy) {
    let (vol, proxy) = Volume::new_behind_proxy();
    proxy.set_delay(LATENCY);
    (vol, proxy)
}

fn mount(vol: &Volume) -> Mount<'_> {
    vol.mount_with(MountOptions {
        extra_args: mount_args(),
        ..Default::default()
    })
}

fn sync(vol: &Volume, m: &Mount) {
    let out = run(
        vol.spoolfs().arg("sync").arg(m.path()),
        Duration::from_secs(300),
    );
    assert!(out.success(), "spoolfs sync failed: {out}");
}

fn pending_deletes(vol: &Volume, m: &Mount) -> u64 {
    let st = vol.status_json(m.path());
    st.pointer("/engine/pending_deletes")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no engine.pending_deletes in {st}"))
}

/// The server holds every delete request (single and bulk) until the faults are cleared.
fn hold_deletes(proxy: &Proxy) {
    proxy.add_fault(Fault::stall(None).only(Method::Post));
    proxy.add_fault(Fault::stall(None).only(Method::Delete));
}

/// Writes `n` files `f{i}` and uploads them; overwrites the first half and deletes the other
/// half while deletes are held. Returns what the remaining files hold.
fn make_garbage(vol: &Volume, proxy: &Proxy, m: &Mount, n: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    for i in 0..n {
        fs::write(m.join(format!("f{i}")), content(i)).unwrap();
    }
    sync(vol, m);
    hold_deletes(proxy);
    let mut kept = BTreeMap::new();
    for i in 0..n {
        let name = PathBuf::from(format!("f{i}"));
        if i < n / 2 {
            let data = content(1_000_000 + i);
            fs::write(m.join(&name), &data).unwrap();
            kept.insert(name, data);
        } else {
            fs::remove_file(m.join(&name)).unwrap();
        }
    }
    sync(vol, m);
    kept
}

/// Waits (up to `limit`) until the mount has no pending deletes.
fn wait_for_no_pending_deletes(vol: &Volume, m: &Mount, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = pending_deletes(vol, m);
        if left == 0 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{left} deletes still pending {limit:?} after the mount"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// After the garbage was left behind: a new mount deletes it in bulk (few requests, none of
/// them a single-object DELETE), the bucket keeps only the live packs, and every file reads
/// back.
fn next_mount_finishes(vol: &Volume, proxy: &Proxy, kept: &BTreeMap<PathBuf, Vec<u8>>) {
    proxy.clear_faults();
    // Held requests of the gone daemon are forwarded once released: let them finish before
    // counting.
    let start = Instant::now();
    while proxy.stalled() > 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let objects_before = vol.chunk_files().len();
    proxy.reset_counts();
    let m = mount(vol);
    wait_for_no_pending_deletes(vol, &m, Duration::from_secs(120));
    let counts = proxy.counts();
    let objects_after = vol.chunk_files().len();
    eprintln!(
        "next mount: {objects_before} objects before, {objects_after} after; requests: {counts}"
    );
    assert_eq!(counts.delete, 0, "single-object deletes: {counts}");
    let dead = objects_before.saturating_sub(kept.len());
    // One bulk request per 1,000 objects, and a few more for the batching of slices.
    assert!(
        counts.post as usize <= dead.div_ceil(1000) + 4,
        "{} bulk delete requests for about {dead} dead objects: {counts}",
        counts.post
    );
    assert!(
        objects_after <= kept.len() + 2,
        "{objects_after} objects left for {} live files",
        kept.len()
    );
    for (name, data) in kept {
        let got = fs::read(m.join(name)).unwrap();
        assert_bytes_eq(&got, data, &name.display().to_string());
    }
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        kept.len(),
        "files after the remount: {names:?}"
    );
    m.unmount();
}

#[test]
fn unmount_leaves_pending_deletes_to_the_next_mount() {
    require_fuse!();
    let (vol, proxy) = slow_volume();
    let m = mount(&vol);
    let files = 2400;
    let kept = make_garbage(&vol, &proxy, &m, files);
    let pending = pending_deletes(&vol, &m);
    assert!(
        pending >= files,
        "{pending} pending deletes after overwriting and deleting {files} files"
    );
    let objects = vol.chunk_files().len();
    assert!(objects as u64 >= files + files / 2, "{objects} objects");

    let start = Instant::now();
    let out = vol.spoolfs_run([OsStr::new("umount"), m.path().as_os_str()]);
    let took = start.elapsed();
    // What deleting the dead objects one request at a time would cost, at the least.
    let one_by_one = LATENCY * pending as u32;
    eprintln!(
        "umount with {pending} pending deletes took {took:?} (one by one: at least \
         {one_by_one:?}): {out}"
    );
    assert!(out.success(), "spoolfs umount failed: {out}");
    assert!(
        took < one_by_one / 4,
        "umount took {took:?} with {pending} deletes pending; one by one they take at least \
         {one_by_one:?}: {out}"
    );
    assert!(!is_mounted(m.path()), "still mounted after spoolfs umount");
    assert!(
        out.stderr.contains(&format!(
            "objects of {pending} dead slice(s) are still to be deleted"
        )),
        "umount did not say that deletes are left for the next mount: {out}"
    );
    // Unmount did not wait for them: the dead objects are still in the bucket.
    let left = vol.chunk_files().len();
    assert!(
        left + 10 >= objects,
        "{objects} objects before the unmount, {left} after: the unmount deleted them"
    );
    drop(m);
    next_mount_finishes(&vol, &proxy, &kept);
}

/// Stops the mount (`stop` gets its pid and mount point) with thousands of deletes pending
/// and held: the daemon exits well within what the deletes would take one by one, cleanly.
fn stop_leaves_pending_deletes(how: &str, stop: impl FnOnce(u32, &std::path::Path)) {
    let (vol, proxy) = slow_volume();
    let m = mount(&vol);
    let files = 1200;
    let kept = make_garbage(&vol, &proxy, &m, files);
    let pending = pending_deletes(&vol, &m);
    assert!(pending >= files, "{pending} pending deletes");
    let pid = m.pid().expect("the mount's pid");
    let start = Instant::now();
    stop(pid, m.path());
    let one_by_one = LATENCY * pending as u32;
    let limit = one_by_one / 4;
    let exited = || match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie until the test reaps it.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    };
    while is_mounted(m.path()) || !exited() {
        assert!(
            start.elapsed() < limit,
            "the daemon still runs {limit:?} after {how} with {pending} deletes pending:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let log = m.log_text();
    eprintln!("{how} with {pending} pending deletes: the daemon exited after {took:?}");
    assert!(
        log.contains("exiting") && !log.contains("panicked"),
        "the daemon did not end cleanly after {how}:\n{log}"
    );
    drop(m);
    next_mount_finishes(&vol, &proxy, &kept);
}

#[test]
fn sigterm_leaves_pending_deletes_to_the_next_mount() {
    require_fuse!();
    stop_leaves_pending_deletes("SIGTERM", |pid, _| {
        // SAFETY: sending a signal has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    });
}

#[test]
fn plain_umount_leaves_pending_deletes_to_the_next_mount() {
    require_fuse!();
    stop_leaves_pending_deletes("umount(8)", |_, mp| {
        let c = cstr(mp);
        // SAFETY: `c` is a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
        assert_eq!(rc, 0, "umount: {}", std::io::Error::last_os_error());
    });
}

/// While the daemon uploads (the server holds PUTs for a while), `spoolfs umount` says what it
/// waits for and how much is left, then exits 0.
#[test]
fn umount_says_what_it_waits_for() {
    require_fuse!();
    let (vol, proxy) = Volume::new_behind_proxy();
    let m = vol.mount_with(MountOptions {
        // Uploads wait for company: everything is staged when the unmount starts.
        extra_args: vec!["--upload-delay=600".into()],
        ..Default::default()
    });
    let mut kept = BTreeMap::new();
    for i in 0..20u64 {
        let name = PathBuf::from(format!("f{i}"));
        fs::write(m.join(&name), content(i)).unwrap();
        kept.insert(name, content(i));
    }
    proxy.add_fault(Fault::stall(Some(Duration::from_secs(3))).only(Method::Put));
    let out = vol.spoolfs_run([OsStr::new("umount"), m.path().as_os_str()]);
    eprintln!("{out}");
    assert!(out.success(), "spoolfs umount failed: {out}");
    assert!(
        out.stderr
            .contains("to upload staged data to the object store")
            && out.stderr.contains("slice(s) left"),
        "umount did not say what it waits for: {out}"
    );
    drop(m);
    proxy.clear_faults();
    // Everything reached the bucket: a mount on a fresh cache directory reads it back.
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for (name, data) in &kept {
        assert_bytes_eq(
            &fs::read(m.join(name)).unwrap(),
            data,
            &name.display().to_string(),
        );
    }
    m.unmount();
}
