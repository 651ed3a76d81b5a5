//! Object store faults, injected by an S3 proxy (`spoolfs-s3proxy`) between the mount and
//! `s3s-fs`: 503 SlowDown, 500 InternalError, connection resets, and stalls.
//!
//! Every scenario checks the promises that matter when the store misbehaves:
//!
//! * writes keep being acknowledged in writeback mode (the data waits in staging);
//! * `spoolfs sync` does not return success while the data is not in the store (with
//!   `--timeout` it exits non-zero), and returns success once the fault clears;
//! * `spoolfs umount` succeeds once the store works again;
//! * after a remount with a fresh cache directory (so everything comes from the bucket, read
//!   through the proxy, with faults on GETs where the client can retry), every file is
//!   byte-identical;
//! * every data object in the bucket is whole: each pack object's footer and index checksum,
//!   each block object's trailer and CRC, check out.

use spoolfs_s3proxy::{Fault, Method, Proxy};
use spoolfs_tests::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A volume on its own s3s-fs, whose mounts go through a proxy.
struct Rig {
    vol: Volume,
    proxy: Proxy,
}

fn rig() -> Rig {
    let (vol, proxy) = Volume::new_behind_proxy();
    // A little latency, so that requests overlap as they would against a real region.
    proxy.set_delay(Duration::from_millis(2));
    Rig { vol, proxy }
}

type Files = BTreeMap<PathBuf, Vec<u8>>;

/// Writes `n` small files (1 byte to 40 KiB: they go into pack objects) and one 1.5 MiB file
/// (block objects) into `root/dir`, each a whole create-write-close. Every write must succeed.
fn write_batch(root: &Path, dir: &str, n: usize, seed: u64, files: &mut Files) {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(root.join(dir)).expect("mkdir");
    for i in 0..=n {
        let rel = PathBuf::from(format!("{dir}/f{i}"));
        let len = if i == n {
            3 << 19
        } else {
            1 + rng.below(40 << 10) as usize
        };
        let data = rng.bytes(len);
        fs::write(root.join(&rel), &data)
            .unwrap_or_else(|e| panic!("write {} while the store fails: {e}", rel.display()));
        files.insert(rel, data);
    }
}

#[track_caller]
fn check_files(root: &Path, files: &Files, what: &str) {
    for (rel, data) in files {
        let got = fs::read(root.join(rel))
            .unwrap_or_else(|e| panic!("{what}: read {}: {e}", rel.display()));
        assert_eq!(
            checksum(&got),
            checksum(data),
            "{what}: {} differs (len {} vs {})",
            rel.display(),
            got.len(),
            data.len()
        );
    }
}

fn staged_slices(vol: &Volume, mp: &Path) -> u64 {
    vol.status_json(mp)["engine"]["staged_slices"]
        .as_u64()
        .expect("staged_slices in status")
}

/// `spoolfs sync MP [--timeout SECS]`, killed (test failure) after `limit`.
fn sync(vol: &Volume, mp: &Path, timeout: Option<f64>, limit: Duration) -> CmdOutput {
    let mut cmd = vol.spoolfs();
    cmd.arg("sync").arg(mp);
    if let Some(t) = timeout {
        cmd.args(["--timeout", &t.to_string()]);
    }
    run(&mut cmd, limit)
}

fn spawn_sync(vol: &Volume, mp: &Path) -> Child {
    vol.spoolfs()
        .arg("sync")
        .arg(mp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spoolfs sync")
}

/// Waits for a child started by [`spawn_sync`]; returns (success, stdout + stderr).
fn wait_child(mut c: Child, limit: Duration) -> (bool, String, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            let mut text = String::new();
            if let Some(mut o) = c.stdout.take() {
                let _ = o.read_to_string(&mut text);
            }
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut text);
            }
            return (st.success(), text, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("spoolfs sync did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every data object of the volume is whole. Returns (packs, blocks).
fn check_bucket(vol: &Volume) -> (usize, usize) {
    let mut all = Vec::new();
    walk_files(&vol.objects_dir(), &mut all);
    let (mut packs, mut blocks) = (0, 0);
    for p in &all {
        let rel = p.strip_prefix(vol.objects_dir()).unwrap_or(p);
        let key = rel.to_string_lossy().into_owned();
        let data = fs::read(p).unwrap_or_else(|e| panic!("read object {key}: {e}"));
        if key.starts_with("packs/") {
            let entries = spoolfs_objects::decode_pack_index(&key, &data)
                .unwrap_or_else(|e| panic!("pack object {key} is not whole: {e}"));
            for e in &entries {
                let piece = data[e.offset as usize..e.offset as usize + e.len as usize].to_vec();
                spoolfs_objects::verify_packed(&key, e, bytes::Bytes::from(piece))
                    .unwrap_or_else(|err| panic!("pack object {key}: {err}"));
            }
            packs += 1;
        } else if key.starts_with("chunks/") {
            let len: usize = key
                .rsplit('_')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("block key {key} does not end in its length"));
            let block = spoolfs_objects::decode_block(&key, bytes::Bytes::from(data))
                .unwrap_or_else(|e| panic!("block object {key} is not whole: {e}"));
            assert_eq!(
                block.len(),
                len,
                "block object {key}: length differs from its key"
            );
            blocks += 1;
        }
    }
    // s3s-fs writes an object to `.tmp.N.internal.part` in its root and renames it into place:
    // a leftover one is an upload that never finished.
    let root = vol.s3().expect("S3 volume").root();
    let partial: Vec<String> = fs::read_dir(root)
        .expect("read the s3s-fs root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp."))
        .collect();
    assert!(
        partial.is_empty(),
        "half-written uploads in the s3s-fs root: {partial:?}"
    );
    assert!(
        packs + blocks > 0,
        "no data object in {}",
        vol.objects_dir().display()
    );
    (packs, blocks)
}

/// Unmounts, checks the bucket, and reads everything back through a fresh cache directory,
/// with `read_fault` (GETs only) active during the read-back.
fn remount_and_check(
    rig: &Rig,
    mp: PathBuf,
    files: &Files,
    writeback: bool,
    read_fault: Option<Fault>,
) {
    let (packs, blocks) = check_bucket(&rig.vol);
    eprintln!("    bucket: {packs} pack objects, {blocks} block objects, all whole");
    assert!(
        packs > 0 || !writeback,
        "writeback mode, yet no pack object in the bucket"
    );
    let m = rig.vol.mount_with(MountOptions {
        mountpoint: Some(mp),
        cache_dir: Some(rig.vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    rig.proxy.reset_counts();
    if let Some(f) = read_fault {
        rig.proxy.add_fault(f.only(Method::Get));
    }
    check_files(
        m.path(),
        files,
        "after a remount with a fresh cache directory",
    );
    let gets = rig.proxy.counts().get;
    let injected = rig.proxy.injected().get;
    rig.proxy.clear_faults();
    eprintln!(
        "    read back {} files: {gets} GETs, {injected} of them faulted",
        files.len()
    );
    assert!(gets > 0, "the read-back did not come from the object store");
    m.unmount();
}

/// The scenario for a fault that makes PUTs fail (503, 500, reset): a period in which every
/// PUT fails (writes go on; `sync --timeout` fails; a plain `sync` waits through it and
/// succeeds once the fault clears), then a period in which 30% of them fail (sync succeeds
/// anyway), then the read-back.
fn put_failures(fault: Fault, label: &str) {
    let started = Instant::now();
    let rig = rig();
    let m = rig.vol.mount();
    let mp = m.path().to_path_buf();
    let mut files = Files::new();

    write_batch(&mp, "before", 20, 1, &mut files);
    sync(&rig.vol, &mp, Some(60.0), Duration::from_secs(90)).assert_success();

    // 1. Every PUT fails.
    rig.proxy.add_fault(fault.clone().only(Method::Put));
    write_batch(&mp, "outage", 40, 2, &mut files);
    wait_until(
        &format!("{label}: the uploader tries a PUT"),
        Duration::from_secs(20),
        || rig.proxy.injected().put >= 1,
    );
    let out = sync(&rig.vol, &mp, Some(1.5), Duration::from_secs(60));
    out.assert_sync_timed_out(&format!("{label}: every PUT fails"));
    assert!(staged_slices(&rig.vol, &mp) > 0, "{label}: nothing staged");
    let waiting = spawn_sync(&rig.vol, &mp);
    std::thread::sleep(Duration::from_millis(1500));
    let failed_puts = rig.proxy.injected().put;
    let mut waiting = waiting;
    assert!(
        waiting.try_wait().expect("try_wait").is_none(),
        "{label}: spoolfs sync returned while every PUT fails ({failed_puts} failed)"
    );
    rig.proxy.clear_faults();
    let cleared = Instant::now();
    let (ok, text, _) = wait_child(waiting, Duration::from_secs(90));
    assert!(ok, "{label}: sync failed after the fault cleared: {text}");
    eprintln!(
        "    {label}: {failed_puts} PUTs failed; sync succeeded {:?} after the fault cleared",
        cleared.elapsed()
    );
    assert_eq!(
        staged_slices(&rig.vol, &mp),
        0,
        "{label}: staged after sync"
    );

    // 2. Half of the PUTs fail (which ones is deterministic: the proxy's generator is
    // seeded and only PUTs draw from it), over five rounds of writes and syncs.
    rig.proxy
        .add_fault(fault.clone().only(Method::Put).fraction(0.5));
    let before = rig.proxy.injected().put;
    let t = Instant::now();
    for round in 0..5 {
        write_batch(&mp, &format!("flaky{round}"), 15, 3 + round, &mut files);
        let out = sync(&rig.vol, &mp, None, Duration::from_secs(90));
        assert!(
            out.success(),
            "{label}: sync failed with half of the PUTs failing: {out}"
        );
    }
    let failed = rig.proxy.injected().put - before;
    eprintln!(
        "    {label}: half of the PUTs failing: 5 rounds of writes and syncs in {:?}, {failed} \
         PUTs failed",
        t.elapsed()
    );
    assert!(failed > 0, "{label}: no PUT failed in the flaky period");
    rig.proxy.clear_faults();
    check_files(&mp, &files, "before unmounting");
    let mp = m.unmount();

    remount_and_check(&rig, mp, &files, true, Some(fault.fraction(0.3)));
    eprintln!("    {label}: done in {:?}", started.elapsed());
}

#[test]
fn slowdown_503() {
    require_fuse!();
    put_failures(Fault::slow_down(), "503 SlowDown");
}

#[test]
fn internal_error_500() {
    require_fuse!();
    put_failures(Fault::internal_error(), "500 InternalError");
}

#[test]
fn connection_resets() {
    require_fuse!();
    put_failures(Fault::reset(), "connection reset");
}

/// Stalled PUTs: writes go on; `sync --timeout` gives up with a non-zero exit while the store
/// stalls; a plain `sync` and `spoolfs umount` wait and succeed once the stall ends, whether it
/// is cleared or times out by itself.
#[test]
fn stalls() {
    require_fuse!();
    let started = Instant::now();
    let rig = rig();
    let m = rig.vol.mount();
    let mp = m.path().to_path_buf();
    let mut files = Files::new();

    // 1. Until cleared.
    rig.proxy.add_fault(Fault::stall(None).only(Method::Put));
    write_batch(&mp, "stalled", 40, 11, &mut files);
    wait_until("a PUT is stalled", Duration::from_secs(20), || {
        rig.proxy.stalled() >= 1
    });
    let t = Instant::now();
    let out = sync(&rig.vol, &mp, Some(2.0), Duration::from_secs(60));
    assert!(
        !out.success() && out.status.code() == Some(1),
        "sync --timeout 2 did not fail (exit 1) while the store stalls: {out}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1900) && t.elapsed() < Duration::from_secs(20),
        "sync --timeout 2 took {:?}",
        t.elapsed()
    );
    let mut waiting = spawn_sync(&rig.vol, &mp);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        waiting.try_wait().expect("try_wait").is_none(),
        "spoolfs sync returned while the store stalls"
    );
    assert!(staged_slices(&rig.vol, &mp) > 0);
    rig.proxy.clear_faults();
    let (ok, text, after) = wait_child(waiting, Duration::from_secs(90));
    assert!(ok, "sync failed after the stall was cleared: {text}");
    eprintln!("    stall: sync succeeded {after:?} after the stall was cleared");
    assert_eq!(staged_slices(&rig.vol, &mp), 0);

    // 2. A stall that ends by itself (3 s, the next two PUTs).
    rig.proxy.add_fault(
        Fault::stall(Some(Duration::from_secs(3)))
            .only(Method::Put)
            .times(2),
    );
    let t = Instant::now();
    write_batch(&mp, "timed", 40, 12, &mut files);
    let out = sync(&rig.vol, &mp, None, Duration::from_secs(60));
    assert!(out.success(), "sync through a 3 s stall: {out}");
    assert!(rig.proxy.injected().put >= 1, "no PUT was stalled");
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "sync returned after {:?}, before the 3 s stall ended",
        t.elapsed()
    );

    // 3. Unmount while the store stalls: umount waits, and succeeds once it is cleared.
    rig.proxy.add_fault(Fault::stall(None).only(Method::Put));
    write_batch(&mp, "umount", 30, 13, &mut files);
    wait_until("a PUT is stalled", Duration::from_secs(20), || {
        rig.proxy.stalled() >= 1
    });
    let mp = std::thread::scope(|s| {
        let h = s.spawn(|| m.unmount());
        std::thread::sleep(Duration::from_millis(2000));
        assert!(
            !h.is_finished(),
            "spoolfs umount returned while the store stalls"
        );
        rig.proxy.clear_faults();
        h.join().expect("unmount")
    });

    let slow_read = Fault::stall(Some(Duration::from_millis(200))).fraction(0.2);
    remount_and_check(&rig, mp, &files, true, Some(slow_read));
    eprintln!("    stalls: done in {:?}", started.elapsed());
}

/// Standard mode (`--writeback=false`): close waits for the object store, so it waits through
/// 503s and 500s (the client retries them) and returns success; the data is all there.
#[test]
fn standard_mode_retries() {
    require_fuse!();
    let rig = rig();
    let m = rig.vol.mount_with(MountOptions {
        extra_args: vec!["--writeback=false".into()],
        ..Default::default()
    });
    let mp = m.path().to_path_buf();
    let mut files = Files::new();
    rig.proxy
        .add_fault(Fault::slow_down().only(Method::Put).fraction(0.3));
    rig.proxy
        .add_fault(Fault::internal_error().only(Method::Put).times(3));
    write_batch(&mp, "std", 20, 21, &mut files);
    assert!(rig.proxy.injected().put >= 3, "no PUT failed");
    rig.proxy.clear_faults();
    let mp = m.unmount();
    remount_and_check(&rig, mp, &files, false, None);
}
