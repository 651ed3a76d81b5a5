//! `spoolfs gc` on a mounted volume (the loopback S3 server): after most small files are
//! deleted, `gc --compact` rewrites the sparse pack objects, the bucket holds fewer objects,
//! and every remaining file reads back, before and after a remount. Then the same command on
//! the unmounted volume (`--meta`), refused while it is mounted.

use spoolfs_tests::*;
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

// Enough small files to fill at least 8 packs of 64 KiB when they are all uploaded at once
// (a `spoolfs sync` right after the writes packs them full).
const FILES: usize = 600;

fn content(i: usize) -> Vec<u8> {
    let line = format!("file {i} of the gc test\n");
    line.repeat(1 + i % 97).into_bytes()
}

fn json_report(out: &CmdOutput) -> serde_json::Value {
    assert!(out.success(), "spoolfs gc failed: {out}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn gc_compacts_packs_of_a_mounted_volume() {
    require_fuse!();
    let vol = Volume::new(Backend::S3);
    let m = vol.mount_with(MountOptions {
        // Small packs so a few hundred small files fill many; no background compactor, so
        // the object counts below are `spoolfs gc`'s doing.
        extra_args: vec![
            "--pack-size=64K".into(),
            "--background-compact=false".into(),
        ],
        ..Default::default()
    });
    fs::create_dir(m.join("d")).unwrap();
    for i in 0..FILES {
        fs::write(m.join(format!("d/f{i}")), content(i)).unwrap();
    }
    let sync = |what: &str| {
        let out = run(
            vol.spoolfs().arg("sync").arg(m.path()),
            Duration::from_secs(120),
        );
        assert!(out.success(), "spoolfs sync ({what}) failed: {out}");
    };
    sync("after writing");
    let full = vol.chunk_files().len();
    assert!(full >= 8, "{full} data objects");

    // Delete nine files in ten: most packs keep a slice or two.
    let mut kept = BTreeMap::new();
    for i in 0..FILES {
        let p = m.join(format!("d/f{i}"));
        if i % 10 == 3 {
            kept.insert(p, content(i));
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    sync("after deleting");

    let dry = json_report(&vol.spoolfs_run([
        "gc".as_ref(),
        m.path().as_os_str(),
        "--compact".as_ref(),
        "--dry-run".as_ref(),
        "--json".as_ref(),
    ]));
    assert_eq!(n(&dry, "packs_compacted"), 0, "{dry}");
    assert!(n(&dry, "packs_to_compact") > 0, "{dry}");

    let before = vol.chunk_files().len();
    let report = json_report(&vol.spoolfs_run([
        "gc".as_ref(),
        m.path().as_os_str(),
        "--compact".as_ref(),
        "--json".as_ref(),
    ]));
    eprintln!("{full} objects written, {before} before gc; report {report}");
    let after = vol.chunk_files().len();
    assert!(n(&report, "packs_compacted") >= 4, "{report}");
    assert!(n(&report, "bytes_reclaimed") > 0, "{report}");
    assert_eq!(
        report
            .get("errors")
            .and_then(|e| e.as_array())
            .map(Vec::len),
        Some(0),
        "{report}"
    );
    assert!(
        after < before && after <= before - n(&report, "packs_compacted") as usize + 2,
        "{before} objects before gc, {after} after: {report}"
    );
    for (p, data) in &kept {
        assert_eq!(&fs::read(p).unwrap(), data, "{}", p.display());
    }
    // The human report, on an idle volume: nothing left to compact.
    let out = vol.spoolfs_run(["gc".as_ref(), m.path().as_os_str(), "--compact".as_ref()]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("reclaimed:"), "{out}");
    assert!(out.stdout.contains("0 of 0 pack(s)"), "{out}");

    // Offline gc is refused while the volume is mounted.
    let out = vol.spoolfs_run(["gc", "--meta", &vol.meta_url]);
    out.assert_clean_failure(&["in use"]);
    m.unmount();

    // Remount from a fresh cache: every byte comes from the (compacted) bucket.
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for (p, data) in &kept {
        let rel = p
            .strip_prefix(p.parent().unwrap().parent().unwrap())
            .unwrap();
        assert_eq!(
            &fs::read(m.join(rel)).unwrap(),
            data,
            "{} after remount",
            rel.display()
        );
    }
    // Delete half of the rest, then gc the unmounted volume.
    let mut left = BTreeMap::new();
    for (i, (p, data)) in kept.iter().enumerate() {
        let rel = p
            .strip_prefix(p.parent().unwrap().parent().unwrap())
            .unwrap();
        if i % 2 == 0 {
            fs::remove_file(m.join(rel)).unwrap();
        } else {
            left.insert(rel.to_path_buf(), data.clone());
        }
    }
    m.unmount();
    let bytes = || -> u64 {
        vol.chunk_files()
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let before = bytes();
    let report = json_report(&vol.spoolfs_run([
        "gc",
        "--meta",
        &vol.meta_url,
        "--compact",
        "--threshold",
        "0.9",
        "--json",
    ]));
    let after = bytes();
    assert!(n(&report, "packs_compacted") >= 1, "{report}");
    assert!(
        after < before && before - after == n(&report, "bytes_reclaimed"),
        "{before} bytes of objects before offline gc, {after} after: {report}"
    );
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for (rel, data) in &left {
        assert_eq!(
            &fs::read(m.join(rel)).unwrap(),
            data,
            "{} after offline gc",
            rel.display()
        );
    }
    m.unmount();
}

#[test]
fn gc_reports_clear_errors() {
    let vol = Volume::new(Backend::File);
    // Not a spoolfs mount.
    let dir = vol.new_subdir("plain");
    let out = vol.spoolfs_run(["gc".as_ref(), dir.as_os_str()]);
    out.assert_clean_failure(&["not"]);
    // Bad arguments.
    let out = vol.spoolfs_run(["gc", "--meta", &vol.meta_url, "--threshold", "3"]);
    out.assert_clean_failure(&["fraction"]);
    let out = vol.spoolfs_run(["gc", "--meta", &vol.meta_url, "--min-age", "soon"]);
    out.assert_clean_failure(&["duration"]);
    // An empty volume, offline: nothing to do, exit 0.
    let out = vol.spoolfs_run(["gc", "--meta", &vol.meta_url, "--dry-run"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("dry run"), "{out}");
}
