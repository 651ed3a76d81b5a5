//! Corruption of staged data found at the next mount, seen from outside as a user would:
//! twenty 64 KiB files written and closed on a mount with a long `--upload-delay` (so they
//! stay staged), the daemon killed with SIGKILL, one byte in the middle of one file's
//! staged data changed in its staging segment. The next mount must give back the other
//! nineteen byte for byte (and every namespace change after the damaged record), and report
//! the damaged file as DATA LOSS in its log, in `spoolfs status` and in `spoolfs fsck`.

use spoolfs_tests::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Every staging segment file of the volume's data log under `cache`.
fn data_segments(cache: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk_files(cache, &mut all);
    all.into_iter()
        .filter(|p| {
            p.parent().is_some_and(|d| d.ends_with("data"))
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect()
}

/// The segment file and offset where `data` (unique random bytes) is staged.
fn find_staged(cache: &Path, data: &[u8]) -> (PathBuf, u64) {
    let needle = &data[..64];
    for seg in data_segments(cache) {
        let bytes = fs::read(&seg).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            assert_eq!(
                &bytes[at..at + data.len()],
                data,
                "the whole file is staged there"
            );
            return (seg, at as u64);
        }
    }
    panic!(
        "the file's data is not in any staging segment under {}",
        cache.display()
    );
}

#[test]
fn one_bad_byte_in_staged_data_costs_only_that_file() {
    require_fuse!();
    let v = Volume::new(Backend::File);
    let cache = v.cache_dir();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i:02}"), random_bytes(500 + i, 64 << 10)))
        .collect();
    let m = v.mount_with(MountOptions {
        extra_args: vec!["--upload-delay".into(), "3600".into()],
        ..Default::default()
    });
    for (name, data) in &files {
        fs::write(m.join(name), data).unwrap(); // closed: acknowledged
    }
    m.kill9();

    let victim = 6;
    let (seg, at) = find_staged(&cache, &files[victim].1);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at + 32 * 1024).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at + 32 * 1024).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let m = v.mount();
    for (i, (name, data)) in files.iter().enumerate() {
        let got = fs::read(m.join(name)).unwrap_or_else(|e| panic!("{name} after replay: {e}"));
        if i == victim {
            assert_eq!(got.len(), data.len(), "{name} keeps its size");
            assert!(
                got.iter().all(|&b| b == 0),
                "{name}'s damaged range reads as zeros"
            );
        } else {
            assert_eq!(
                checksum(&got),
                checksum(data),
                "{name} reads back different bytes"
            );
        }
    }
    let log = m.log_text();
    assert!(
        log.contains("DATA LOSS"),
        "the mount log says nothing:\n{log}"
    );
    assert!(
        !log.contains("missing, ignoring"),
        "replay stopped at a gap:\n{log}"
    );
    let status = v.status_json(m.path());
    let losses = status["data_losses"]
        .as_array()
        .expect("status lists data losses");
    assert_eq!(losses.len(), 1, "{status}");
    assert_eq!(losses[0]["path"], format!("/{}", files[victim].0));
    assert_eq!(losses[0]["bytes"], 64 << 10);
    let text = v.spoolfs_run([std::ffi::OsStr::new("status"), m.path().as_os_str()]);
    assert!(text.stdout.contains("DATA LOSS"), "{text}");
    m.unmount();

    let cache_arg = cache.display().to_string();
    let fsck = |extra: &[&str]| {
        let mut args = vec!["fsck", "--meta", &v.meta_url, "--cache-dir", &cache_arg];
        args.extend_from_slice(extra);
        v.spoolfs_run(args)
    };
    let out = fsck(&[]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.contains("DATA LOSS"), "{out}");
    assert!(out.stdout.contains(&files[victim].0), "{out}");
    let out = fsck(&["--forget-losses"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "reported once more while forgotten: {out}"
    );
    let out = fsck(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing left after --forget-losses: {out}"
    );
}
