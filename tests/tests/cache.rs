//! The local data cache through a real mount: `spoolfs warmup` fills it, and a remount reads
//! everything from it with the object store out of reach.

use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;

#[test]
fn warmup_then_remount_reads_without_the_object_store() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    {
        let m = vol.mount();
        let mut rng = Rng::new(7);
        for d in 0..3 {
            fs::create_dir(m.join(format!("tree/d{d}")).parent().unwrap()).ok();
            fs::create_dir(m.join(format!("tree/d{d}"))).unwrap();
            for i in 0..20 {
                let len = if i == 0 {
                    5 << 20
                } else {
                    rng.below(30_000) as usize
                };
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                let rel = PathBuf::from(format!("tree/d{d}/f{i}"));
                fs::write(m.join(&rel), &data).unwrap();
                files.push((rel, data));
            }
        }
        m.unmount();
    }
    // A fresh cache directory: nothing cached yet. warmup reads the tree in. (No free-space
    // floor: on a nearly full test machine the cache would otherwise evict what it just got.)
    let cache = vol.new_subdir("cache2");
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(cache.clone()),
        extra_args: vec!["--cache-free-ratio".into(), "0".into()],
        ..Default::default()
    });
    let out = vol.spoolfs_run([OsStr::new("warmup"), m.join("tree").as_os_str()]);
    out.assert_success();
    assert!(out.stdout.contains("60 files"), "{out}");
    assert!(
        out.stdout.contains("/s)"),
        "bytes per second in the summary: {out}"
    );
    // The daemon fetched the tree's packs whole, and says so.
    let status = vol.spoolfs_run([OsStr::new("status"), m.path().as_os_str()]);
    assert!(status.stdout.contains("pack fetches:"), "{status}");
    // Not on a spoolfs mount: a clear error.
    vol.spoolfs_run([OsStr::new("warmup"), vol.dir().as_os_str()])
        .assert_clean_failure(&["not on a spoolfs mount"]);
    let mp = m.unmount();

    // The object store out of reach (an empty directory in its place): a remount on the same
    // cache directory still reads every byte, from the local data cache.
    let objects = vol.objects_dir();
    let hidden = objects.with_extension("hidden");
    fs::rename(&objects, &hidden).unwrap();
    fs::create_dir(&objects).unwrap();
    let m = vol.mount_with(MountOptions {
        mountpoint: Some(mp),
        cache_dir: Some(cache),
        extra_args: vec!["--cache-free-ratio".into(), "0".into()],
        ..Default::default()
    });
    for (rel, data) in &files {
        let got = fs::read(m.join(rel)).unwrap_or_else(|e| {
            panic!(
                "{} unreadable without the object store: {e}\n{}",
                rel.display(),
                m.log_text()
            )
        });
        assert!(got == *data, "{} differs", rel.display());
    }
    let status = vol.spoolfs_run([OsStr::new("status"), m.path().as_os_str()]);
    assert!(status.stdout.contains("data cache:"), "{status}");
    m.unmount();
    fs::remove_dir_all(&objects).unwrap();
    fs::rename(&hidden, &objects).unwrap();
}

fn passthrough_opens(vol: &Volume, mp: &std::path::Path) -> u64 {
    let out = vol.spoolfs_run([OsStr::new("status"), mp.as_os_str(), OsStr::new("--json")]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["engine"]["passthrough_opens"].as_u64().unwrap_or(0)
}

/// With --passthrough auto, read-only opens of cached files are served by the kernel from
/// the cache file; the bytes are the same as with it off, and a file opened for writing (or
/// with buffered or staged changes) never uses it.
#[test]
fn passthrough_on_and_off_read_the_same_bytes() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let mut rng = Rng::new(11);
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for mode in ["auto", "off"] {
        let m = vol.mount_with(MountOptions {
            // The cache keeps what it reads whatever this machine's disk has free.
            extra_args: vec![
                "--passthrough".into(),
                mode.into(),
                "--cache-free-ratio".into(),
                "0".into(),
            ],
            ..Default::default()
        });
        if files.is_empty() {
            for i in 0..8 {
                let mut data = vec![0u8; 1 + rng.below(200_000) as usize];
                rng.fill(&mut data);
                let rel = PathBuf::from(format!("p{i}"));
                fs::write(m.join(&rel), &data).unwrap();
                files.push((rel, data));
            }
            vol.spoolfs_run([OsStr::new("sync"), m.path().as_os_str()])
                .assert_success();
        }
        // Twice: the first read may fill the cache, the second finds every file cached.
        for _ in 0..2 {
            for (rel, data) in &files {
                assert!(
                    fs::read(m.join(rel)).unwrap() == *data,
                    "{mode}: {}",
                    rel.display()
                );
            }
        }
        let served = passthrough_opens(&vol, m.path());
        if mode == "off" {
            assert_eq!(served, 0);
        } else if m.log_text().contains("passthrough on") {
            assert!(served >= files.len() as u64, "passthrough opens: {served}");
        } else {
            eprintln!("NOTE: this kernel refused FUSE passthrough; only the fallback was tested");
        }
        // Opened for writing: never passthrough, and what is written through it reads back.
        let before = passthrough_opens(&vol, m.path());
        let path = m.join(&files[0].0);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"changed").unwrap();
        drop(f);
        files[0].1[..7].copy_from_slice(b"changed");
        assert!(
            fs::read(&path).unwrap() == files[0].1,
            "{mode}: after a write"
        );
        assert_eq!(passthrough_opens(&vol, m.path()), before, "{mode}");
        m.unmount();
    }
}
