//! `spoolfs fsck` on a real volume: refused while mounted, clean after a clean unmount
//! (exit 0), an object deleted from the store is found and named (exit 1), `--repair` fixes
//! it (exit 0, data loss reported) and a second run is clean; the other files are intact.

use spoolfs_tests::*;
use std::fs;

fn fsck(v: &Volume, extra: &[&str]) -> CmdOutput {
    let cache = v.cache_dir().display().to_string();
    let mut args = vec!["fsck", "--meta", &v.meta_url, "--cache-dir", &cache];
    args.extend_from_slice(extra);
    v.spoolfs_run(args)
}

#[test]
fn fsck_finds_and_repairs_a_deleted_object() {
    require_fuse!();
    let v = Volume::new(Backend::File);
    let big = random_bytes(1, 6 << 20);
    let small: Vec<Vec<u8>> = (0..5)
        .map(|i| random_bytes(10 + i, 2000 + 500 * i as usize))
        .collect();
    let m = v.mount();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/big"), &big).unwrap();
    for (i, s) in small.iter().enumerate() {
        fs::write(m.join(format!("small{i}")), s).unwrap();
    }
    // A mounted volume is refused.
    let out = fsck(&v, &[]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("mounted"), "{out}");
    let mp = m.unmount();

    let out = fsck(&v, &["--verify-data"]);
    assert_eq!(out.status.code(), Some(0), "clean volume: {out}");
    assert!(out.stdout.contains("0 errors, 0 warnings"), "{out}");

    // Delete one block object of the large file.
    let block = v
        .chunk_files()
        .into_iter()
        .find(|p| p.components().any(|c| c.as_os_str() == "chunks"))
        .expect("the large file is stored in block objects");
    let key = block.file_name().unwrap().to_string_lossy().into_owned();
    fs::remove_file(&block).unwrap();

    let out = fsck(&v, &[]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.stdout.contains("missing-object") && out.stdout.contains("/d/big"),
        "{out}"
    );
    assert!(out.stdout.contains(&key), "the missing key is named: {out}");
    assert!(out.stdout.contains("1 error"), "{out}");

    let json = fsck(&v, &["--json"]);
    assert_eq!(json.status.code(), Some(1), "{json}");
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON report");
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "missing-object" && f["path"] == "/d/big"),
        "{json}"
    );

    let out = fsck(&v, &["--repair"]);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stdout.contains("[repaired]"), "{out}");
    assert!(out.stdout.contains("DATA LOSS"), "{out}");

    let out = fsck(&v, &["--verify-data"]);
    assert_eq!(out.status.code(), Some(0), "after repair: {out}");
    assert!(out.stdout.contains("0 errors, 0 warnings"), "{out}");

    // The other files are intact; the damaged one keeps its size, the lost range reads zeros.
    let m = v.mount_at(&mp);
    for (i, s) in small.iter().enumerate() {
        assert!(fs::read(m.join(format!("small{i}"))).unwrap() == *s);
    }
    let got = fs::read(m.join("d/big")).unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got != big);
    let zeros = got
        .iter()
        .zip(&big)
        .filter(|(a, b)| a != b)
        .all(|(a, _)| *a == 0);
    assert!(zeros, "bytes that differ are zeros (a hole)");
    m.unmount();
}
