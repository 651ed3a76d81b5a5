//! FUSE requests per file, counted by the mount's request metrics ([`spoolfs_fuse::stats`]):
//! what a small-file write, a repeated `ls -l`, a repeated scan for missing names and a
//! re-read cost on an exclusive volume (long kernel caches, listings kept across opens)
//! against a mount whose FUSE layer is configured as for a shared volume (1 s caches, no
//! listing cache; its in-memory store is still exclusive to the engine). Skipped when
//! /dev/fuse cannot be used.
//!
//! One test in this binary: the counters are per process.

mod common;

use common::engine;
use spoolfs_fuse::stats::{self, Op};
use spoolfs_fuse::{EXCLUSIVE_CACHE_TTL, MountOptions, SHARED_CACHE_TTL, mount_background};
use std::path::Path;
use std::time::Duration;

const FILES: u64 = 100;

/// Requests of each kind made while `f` runs.
fn count(f: impl FnOnce()) -> Vec<(Op, u64)> {
    // Releases (and forgets) reach us asynchronously: those of earlier work land first.
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<u64> = Op::ALL.iter().map(|&op| stats::total(op)).collect();
    f();
    std::thread::sleep(Duration::from_millis(200));
    Op::ALL
        .iter()
        .zip(before)
        .map(|(&op, b)| (op, stats::total(op) - b))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn of(counts: &[(Op, u64)], op: Op) -> u64 {
    counts.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
}

/// `ls -l DIR` (coreutils, as a user runs it); returns the number of entries it listed. Per
/// entry it asks for the attributes, the SELinux label (`security.selinux`, unless the device
/// refused it once with `EOPNOTSUPP`: coreutils then stops asking it) and the access ACL.
fn ls_l(dir: &Path) -> usize {
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .expect("ls runs");
    assert!(out.status.success(), "ls -l failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // The first line is "total N".
    text.lines().skip(1).count()
}

/// Looks up names that do not exist, as Python's import system and pip do.
fn scan_missing(dir: &Path) {
    for i in 0..FILES {
        assert!(std::fs::symlink_metadata(dir.join(format!("missing{i}"))).is_err());
    }
}

/// The workloads on one mount; returns the requests of (writes, second `ls -l`, second scan
/// of missing names, after a pause longer than the shared lifetime, reads through a
/// read-write open of files read before).
fn run(mnt: &Path, options: &MountOptions) -> [Vec<(Op, u64)>; 4] {
    let mount = mount_background(engine(), mnt, options).unwrap();
    let dir = mnt.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("warmup"), b"x").unwrap();
    let writes = count(|| {
        for i in 0..FILES {
            std::fs::write(dir.join(format!("f{i}")), b"x\n").unwrap();
        }
    });
    assert_eq!(ls_l(&dir), FILES as usize + 1);
    scan_missing(&dir);
    // Past the 1 s lifetime of a shared volume's caches.
    std::thread::sleep(SHARED_CACHE_TTL + Duration::from_millis(300));
    let ls = count(|| assert_eq!(ls_l(&dir), FILES as usize + 1));
    let missing = count(|| scan_missing(&dir));
    let page = vec![7u8; 4096];
    for i in 0..FILES {
        std::fs::write(dir.join(format!("p{i}")), &page).unwrap();
    }
    // The first read after the write moves the access time (relatime): it reaches the engine.
    for i in 0..FILES {
        assert_eq!(std::fs::read(dir.join(format!("p{i}"))).unwrap(), page);
    }
    let reads = count(|| {
        for i in 0..FILES {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(format!("p{i}")))
                .unwrap();
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut back).unwrap();
            assert_eq!(back, page);
        }
    });
    mount.umount().unwrap();
    [writes, ls, missing, reads]
}

#[test]
fn requests_per_file() {
    spoolfs_testkit::require_fuse!();
    stats::enable();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("shared"), dir.path().join("exclusive"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();

    let shared = MountOptions {
        fs_name: "t".into(),
        transport: common::transport(),
        attr_ttl: SHARED_CACHE_TTL,
        entry_ttl: SHARED_CACHE_TTL,
        exclusive: false,
        // SELinux labels served (a host with SELinux): `ls` asks for each file's.
        selinux_xattrs: true,
        ..Default::default()
    };
    let exclusive = MountOptions {
        attr_ttl: EXCLUSIVE_CACHE_TTL,
        entry_ttl: EXCLUSIVE_CACHE_TTL,
        exclusive: true,
        // Labels refused (a host without SELinux): `ls` asks once.
        selinux_xattrs: false,
        ..shared.clone()
    };
    let [s_writes, s_ls, s_missing, s_reads] = run(&a, &shared);
    let [x_writes, x_ls, x_missing, x_reads] = run(&b, &exclusive);
    eprintln!("{FILES} small files written, shared: {s_writes:?}");
    eprintln!("{FILES} small files written, exclusive: {x_writes:?}");
    eprintln!("ls -l of {FILES} files again, shared: {s_ls:?}");
    eprintln!("ls -l of {FILES} files again, exclusive: {x_ls:?}");
    eprintln!("{FILES} missing names again, shared: {s_missing:?}");
    eprintln!("{FILES} missing names again, exclusive: {x_missing:?}");
    eprintln!("{FILES} files read again through a read-write open, shared: {s_reads:?}");
    eprintln!("{FILES} files read again through a read-write open, exclusive: {x_reads:?}");

    // A small file written (open O_CREAT, write, close): lookup of the new name, create, the
    // kernel's security.capability check before the first write (it asks once per inode it
    // has not checked since its attributes last came in), write, flush, release, and the
    // directory's attributes again (the create dropped them): 7. Nothing else.
    for w in [&s_writes, &x_writes] {
        for op in [Op::Lookup, Op::Create, Op::Write, Op::Flush, Op::Release] {
            assert_eq!(of(w, op), FILES, "{op:?} per small file: {w:?}");
        }
        assert!(of(w, Op::Getxattr) <= FILES, "{w:?}");
        assert!(of(w, Op::Getattr) <= FILES, "{w:?}");
        let total: u64 = w.iter().map(|(_, n)| n).sum();
        assert!(total <= 7 * FILES, "more than 7 requests per file: {w:?}");
    }

    // `ls -l` again, after the 1 s lifetime: with 1 s caches the kernel lists the directory
    // again with READDIRPLUS, which refreshes every entry and so drops its cached ACL; and
    // with labels served `ls` asks for each file's (the kernel caches no other extended
    // attribute): two GETXATTR per entry. On the exclusive volume the listing, the attributes
    // and the ACLs are still cached, and the label is refused at the first file, after which
    // `ls` asks no more: no request per entry at all.
    assert!(
        of(&s_ls, Op::Readdirplus) + of(&s_ls, Op::Readdir) >= 1,
        "{s_ls:?}"
    );
    assert!(of(&s_ls, Op::Getxattr) >= 2 * FILES, "{s_ls:?}");
    assert_eq!(
        of(&x_ls, Op::Readdirplus) + of(&x_ls, Op::Readdir),
        0,
        "{x_ls:?}"
    );
    assert!(
        of(&x_ls, Op::Getxattr) <= 1,
        "a GETXATTR per entry (`ls` kept asking for the label): {x_ls:?}"
    );
    assert_eq!(of(&x_ls, Op::Lookup), 0, "{x_ls:?}");
    let per_listing: u64 = x_ls.iter().map(|(_, n)| n).sum();
    assert!(
        per_listing <= 5,
        "ls -l costs more than opendir, releasedir, a getattr or two and one label: {x_ls:?}"
    );

    // Missing names looked up again after the 1 s lifetime: one LOOKUP each with 1 s caches,
    // none on the exclusive volume (negative entries kept).
    assert_eq!(of(&s_missing, Op::Lookup), FILES, "{s_missing:?}");
    assert_eq!(
        x_missing.iter().map(|(_, n)| n).sum::<u64>(),
        0,
        "{x_missing:?}"
    );

    // A file read before, opened again for reading and writing and read: the engine's store
    // is exclusive on both mounts (the page-cache rule is the engine's, by its store), and an
    // exclusive volume keeps the pages at every open (close-to-open checks, a shared
    // volume's rule, drop them at an open for writing).
    for r in [&s_reads, &x_reads] {
        assert_eq!(of(r, Op::Read), 0, "{r:?}");
        assert_eq!(of(r, Op::Open), FILES, "{r:?}");
    }
}
