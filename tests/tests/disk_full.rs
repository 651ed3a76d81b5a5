//! The staging device fills up. The cache directory (staging log, namespace log, data cache)
//! is a small ext4 file system on a loop device, and more is written than it can hold:
//!
//! * every write, close and fsync is still acknowledged (slices that find no room go straight
//!   to the object store), never ENOSPC or EIO, since the object store is reachable;
//! * the engine reports the slices that bypassed staging;
//! * every file reads back byte for byte, before and after a remount.
//!
//! Needs root (loop devices, like every FUSE test) and `mkfs.ext4`; without them it is
//! skipped, and under `CI=true` it fails.

use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small ext4 file system in an image file, loop-mounted for the life of the value.
struct SmallFs {
    mountpoint: PathBuf,
}

impl SmallFs {
    fn new(dir: &Path, bytes: u64) -> Result<SmallFs, String> {
        let image = dir.join("cache.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("image: {e}"))?;
        let out = run(
            command("mkfs.ext4").args([OsStr::new("-q"), OsStr::new("-F"), image.as_os_str()]),
            Duration::from_secs(60),
        );
        if !out.success() {
            return Err(format!("mkfs.ext4: {out:?}"));
        }
        let mountpoint = dir.join("smallfs");
        fs::create_dir_all(&mountpoint).map_err(|e| e.to_string())?;
        let out = run(
            command("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mountpoint),
            Duration::from_secs(60),
        );
        if !out.success() {
            return Err(format!("mount -o loop: {out:?}"));
        }
        Ok(SmallFs { mountpoint })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = run(
            command("umount").arg("-l").arg(&self.mountpoint),
            Duration::from_secs(60),
        );
    }
}

fn check_all(m: &Path, files: &[(PathBuf, Vec<u8>)], what: &str) {
    for (rel, data) in files {
        let got = fs::read(m.join(rel)).unwrap_or_else(|e| panic!("{what}: {rel:?}: {e}"));
        assert!(
            got == *data,
            "{what}: {} differs (len {} vs {})",
            rel.display(),
            got.len(),
            data.len()
        );
    }
}

#[test]
fn a_full_staging_disk_is_never_an_error() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    // 40 MiB: room for the first segments (4 MiB each), not for what is written below.
    let small = match SmallFs::new(&vol.new_subdir("disk"), 40 << 20) {
        Ok(s) => s,
        Err(e) => {
            spoolfs_testkit::skip(
                "a_full_staging_disk_is_never_an_error",
                &format!("needs a loop device and mkfs.ext4 for a small file system: {e}"),
            );
            return;
        }
    };
    let cache = small.mountpoint.join("cache");
    let opts = || MountOptions {
        cache_dir: Some(cache.clone()),
        extra_args: [
            "--staging-segment-size",
            "4M",
            "--max-staging",
            "1G",
            "--max-staging-wait",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    };
    let m = vol.mount_with(opts());
    fs::create_dir(m.join("d")).unwrap();
    let mut rng = Rng::new(0xd15c_f011);
    let mut files = Vec::new();
    // 96 MiB of files of 1 to 6 MiB, every other one fsynced, and small ones in between.
    let mut written = 0usize;
    let mut i = 0;
    while written < 96 << 20 {
        let len = if i % 3 == 2 {
            1 + rng.below(8192) as usize
        } else {
            (1 << 20) + rng.below(5 << 20) as usize
        };
        let data = rng.bytes(len);
        let rel = PathBuf::from(format!("d/f{i}"));
        let mut f = fs::File::create(m.join(&rel))
            .unwrap_or_else(|e| panic!("create {rel:?} with the staging disk full: {e}"));
        f.write_all(&data)
            .unwrap_or_else(|e| panic!("write {rel:?} with the staging disk full: {e}"));
        if i % 2 == 0 {
            f.sync_all()
                .unwrap_or_else(|e| panic!("fsync {rel:?} with the staging disk full: {e}"));
        }
        drop(f);
        written += len;
        files.push((rel, data));
        i += 1;
    }
    let free = free_bytes(&small.mountpoint);
    let st = vol.status_json(m.path());
    let bypassed = st["engine"]["staging_bypassed_slices"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{} files, {} MiB written; {} KiB left on the staging file system; {bypassed} \
         slice(s) went straight to the object store",
        files.len(),
        written >> 20,
        free >> 10
    );
    assert!(
        bypassed > 0,
        "more was written than the staging disk holds, yet nothing bypassed it: {st}"
    );
    check_all(m.path(), &files, "with the staging disk full");
    let out = run(
        vol.spoolfs().arg("sync").arg(m.path()),
        Duration::from_secs(300),
    );
    assert!(out.success(), "spoolfs sync failed: {out:?}");
    m.unmount();

    let m = vol.mount_with(opts());
    check_all(m.path(), &files, "after a remount");
    m.unmount();
}

/// Bytes available on the file system holding `p`.
fn free_bytes(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is NUL-terminated and `st` a valid out pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail * st.f_frsize
}
