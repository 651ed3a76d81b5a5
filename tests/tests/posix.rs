//! POSIX behaviour of a spoolfs mount, on the file store and on S3: data I/O, the namespace,
//! attributes; each test ends by unmounting, remounting and checking every byte and attribute.

use spoolfs_tests::*;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

backend_tests!(data_io, namespace, attributes);

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Reads `len` bytes at `off` (fewer at end of file).
fn pread(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .unwrap_or_else(|e| panic!("pread at {}: {e}", off + done as u64));
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

/// Writes `data` at `off` of the existing file `p` (pwrite, no truncation).
fn write_at(p: &Path, off: u64, data: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(data, off)
        .unwrap();
}

fn read_window(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    pread(&f, off, len)
}

/// Files whose exact contents are checked before and after the remount.
type Expected = BTreeMap<PathBuf, Vec<u8>>;

fn check_contents(m: &Mount, expected: &Expected, when: &str) {
    for (rel, data) in expected {
        let p = m.join(rel);
        let got = fs::read(&p).unwrap_or_else(|e| panic!("{when}: read {}: {e}", p.display()));
        assert_bytes_eq(&got, data, &format!("{when}: {}", rel.display()));
    }
}

/// Holes in the sparse file: (offset, length) windows that must read as zeros.
const SPARSE_HOLES: &[(u64, usize)] = &[
    (4096, 64 * KIB),
    ((20 * MIB - 4096) as u64, 4096 + 123),
    ((20 * MIB + 123 + 4096) as u64, 8 * KIB),
    ((64 * MIB - 8192) as u64, 16 * KIB),
    ((66 * MIB - 8192) as u64, 8192),
];
const SPARSE_DATA: &[(u64, u64)] = &[
    (0, 11),
    ((20 * MIB + 123) as u64, 12),
    ((66 * MIB) as u64, 13),
];
const SPARSE_SIZE: u64 = (66 * MIB + 4096) as u64;

fn check_sparse(m: &Mount, when: &str) {
    let p = m.join("sparse.bin");
    let md = fs::metadata(&p).unwrap_or_else(|e| panic!("{when}: stat sparse: {e}"));
    assert_eq!(md.len(), SPARSE_SIZE, "{when}: sparse file size");
    for &(off, len) in SPARSE_HOLES {
        let got = read_window(&p, off, len);
        assert_bytes_eq(&got, &vec![0u8; len], &format!("{when}: hole at {off}"));
    }
    for &(off, seed) in SPARSE_DATA {
        let got = read_window(&p, off, 4096);
        assert_bytes_eq(
            &got,
            &random_bytes(seed, 4096),
            &format!("{when}: data at {off}"),
        );
    }
}

const BIG_LEN: usize = 70 * MIB;
const BIG_SEED: u64 = 4242;

fn check_big(m: &Mount, big: &[u8], when: &str) {
    let p = m.join("big.bin");
    assert_eq!(
        fs::metadata(&p).unwrap().len(),
        BIG_LEN as u64,
        "{when}: big size"
    );
    let got = fs::read(&p).unwrap_or_else(|e| panic!("{when}: read big: {e}"));
    assert_bytes_eq(&got, big, &format!("{when}: big.bin"));
    // A read that straddles the 64 MiB chunk boundary.
    let off = 64 * MIB - 5000;
    let w = read_window(&p, off as u64, 10_000);
    assert_bytes_eq(
        &w,
        &big[off..off + 10_000],
        &format!("{when}: big.bin across 64 MiB"),
    );
    // The very end.
    let w = read_window(&p, (BIG_LEN - 100) as u64, 1000);
    assert_bytes_eq(&w, &big[BIG_LEN - 100..], &format!("{when}: big.bin tail"));
}

fn data_io(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let m = vol.mount();
    let mut expected = Expected::new();

    // Plain create / write / read, and an empty file.
    fs::write(m.join("hello.txt"), b"hello, spoolfs\n").unwrap();
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello, spoolfs\n");
    File::create(m.join("empty")).unwrap();
    assert_eq!(fs::metadata(m.join("empty")).unwrap().len(), 0);
    expected.insert("empty".into(), Vec::new());
    // Overwrite in the middle.
    {
        let f = OpenOptions::new()
            .write(true)
            .open(m.join("hello.txt"))
            .unwrap();
        f.write_all_at(b"SPOOL", 7).unwrap();
    }
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello, SPOOLfs\n");
    expected.insert("hello.txt".into(), b"hello, SPOOLfs\n".to_vec());

    // Random-offset writes against an in-memory model, with reads in between.
    {
        let mut rng = Rng::new(1);
        let mut model: Vec<u8> = Vec::new();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(m.join("random.bin"))
            .unwrap();
        for i in 0..300 {
            let off = rng.below(12 * MIB as u64) as usize;
            let len = if rng.below(3) == 0 {
                1 + rng.below(100) as usize
            } else {
                1 + rng.below(256 * KIB as u64) as usize
            };
            let data = rng.bytes(len);
            f.write_all_at(&data, off as u64).unwrap();
            if model.len() < off + len {
                model.resize(off + len, 0);
            }
            model[off..off + len].copy_from_slice(&data);
            if i % 25 == 24 {
                let roff = rng.below(model.len() as u64 + 1000) as usize;
                let rlen = 1 + rng.below(300 * KIB as u64) as usize;
                let got = pread(&f, roff as u64, rlen);
                let want = &model[roff.min(model.len())..(roff + rlen).min(model.len())];
                assert_bytes_eq(
                    &got,
                    want,
                    &format!("random.bin read {rlen}@{roff} after op {i}"),
                );
                assert_eq!(
                    f.metadata().unwrap().len(),
                    model.len() as u64,
                    "fstat size"
                );
            }
            if i % 100 == 99 {
                f.sync_all().unwrap();
            }
        }
        drop(f);
        assert_bytes_eq(
            &fs::read(m.join("random.bin")).unwrap(),
            &model,
            "random.bin",
        );
        expected.insert("random.bin".into(), model);
    }

    // O_APPEND: one writer, then two interleaved writers.
    {
        let mut want = Vec::new();
        for i in 0..40 {
            let line = format!("line {i}\n");
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(m.join("append.log"))
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
        }
        let mut a = OpenOptions::new()
            .append(true)
            .open(m.join("append.log"))
            .unwrap();
        let mut b = OpenOptions::new()
            .append(true)
            .open(m.join("append.log"))
            .unwrap();
        for i in 0..20 {
            let la = format!("a{i}\n");
            let lb = format!("bb{i}\n");
            a.write_all(la.as_bytes()).unwrap();
            b.write_all(lb.as_bytes()).unwrap();
            want.extend_from_slice(la.as_bytes());
            want.extend_from_slice(lb.as_bytes());
        }
        drop((a, b));
        assert_bytes_eq(
            &fs::read(m.join("append.log")).unwrap(),
            &want,
            "append.log",
        );
        expected.insert("append.log".into(), want);
    }

    // O_TRUNC
    {
        fs::write(m.join("otrunc.txt"), b"a fairly long first content").unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("otrunc.txt"))
            .unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0, "size right after O_TRUNC");
        f.write_all(b"short").unwrap();
        drop(f);
        assert_eq!(fs::read(m.join("otrunc.txt")).unwrap(), b"short");
        expected.insert("otrunc.txt".into(), b"short".to_vec());
    }

    // Sparse file with holes inside a chunk and across the 64 MiB chunk boundary.
    {
        let f = File::create(m.join("sparse.bin")).unwrap();
        for &(off, seed) in SPARSE_DATA {
            f.write_all_at(&random_bytes(seed, 4096), off).unwrap();
        }
        drop(f);
        check_sparse(&m, "before remount");
        // A file extended by truncate only: all zeros.
        let f = File::create(m.join("extended.bin")).unwrap();
        f.set_len(3 * MIB as u64 + 5).unwrap();
        drop(f);
        expected.insert("extended.bin".into(), vec![0u8; 3 * MIB + 5]);
    }

    // A file over 64 MiB, written sequentially in 1 MiB writes.
    let big = random_bytes(BIG_SEED, BIG_LEN);
    {
        let mut f = File::create(m.join("big.bin")).unwrap();
        for c in big.chunks(MIB) {
            f.write_all(c).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        check_big(&m, &big, "before remount");
    }

    // Truncate down, then up: the cut-off bytes must come back as zeros.
    {
        let data = random_bytes(9, 9 * MIB);
        fs::write(m.join("trunc.bin"), &data).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(m.join("trunc.bin"))
            .unwrap();
        let cut = 5 * MIB + 7;
        f.set_len(cut as u64).unwrap();
        assert_eq!(fs::metadata(m.join("trunc.bin")).unwrap().len(), cut as u64);
        assert_bytes_eq(
            &fs::read(m.join("trunc.bin")).unwrap(),
            &data[..cut],
            "trunc.bin cut",
        );
        f.set_len(9 * MIB as u64).unwrap();
        drop(f);
        let mut want = data[..cut].to_vec();
        want.resize(9 * MIB, 0);
        assert_bytes_eq(
            &fs::read(m.join("trunc.bin")).unwrap(),
            &want,
            "trunc.bin regrown",
        );
        expected.insert("trunc.bin".into(), want);

        // Small file, and truncation of data that is still being written on an open fd.
        fs::write(m.join("trunc-small"), random_bytes(10, 1000)).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(m.join("trunc-small"))
            .unwrap();
        f.set_len(10).unwrap();
        f.set_len(100).unwrap();
        drop(f);
        let mut want = random_bytes(10, 10);
        want.resize(100, 0);
        assert_bytes_eq(
            &fs::read(m.join("trunc-small")).unwrap(),
            &want,
            "trunc-small",
        );
        expected.insert("trunc-small".into(), want);

        let mut f = File::create(m.join("trunc-open")).unwrap();
        let d = random_bytes(11, 100);
        f.write_all(&d).unwrap();
        f.set_len(50).unwrap();
        f.write_all_at(b"0123456789", 200).unwrap();
        drop(f);
        let mut want = d[..50].to_vec();
        want.resize(200, 0);
        want.extend_from_slice(b"0123456789");
        assert_bytes_eq(
            &fs::read(m.join("trunc-open")).unwrap(),
            &want,
            "trunc-open",
        );
        expected.insert("trunc-open".into(), want);
    }

    // Unlinking an open file: still readable and writable through the descriptor.
    {
        let d = random_bytes(12, MIB + 17);
        fs::write(m.join("doomed.bin"), &d).unwrap();
        let mut r = File::open(m.join("doomed.bin")).unwrap();
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("doomed.bin"))
            .unwrap();
        fs::remove_file(m.join("doomed.bin")).unwrap();
        assert_errno(
            fs::metadata(m.join("doomed.bin")),
            libc::ENOENT,
            "stat unlinked",
        );
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_bytes_eq(&got, &d, "read after unlink");
        rw.write_all_at(b"still here", 5).unwrap();
        assert_eq!(pread(&rw, 5, 10), b"still here");
        r.seek(SeekFrom::Start(5)).unwrap();
        let mut ten = [0u8; 10];
        r.read_exact(&mut ten).unwrap();
        assert_eq!(&ten, b"still here");
        drop((r, rw));
        assert_errno(
            fs::metadata(m.join("doomed.bin")),
            libc::ENOENT,
            "after close",
        );
    }

    check_contents(&m, &expected, "before remount");
    let before = snapshot_tree(m.path(), SnapOptions::EXACT);
    let mp = m.unmount();

    let m = vol.mount_at(&mp);
    check_contents(&m, &expected, "after remount");
    check_sparse(&m, "after remount");
    check_big(&m, &big, "after remount");
    let after = snapshot_tree(m.path(), SnapOptions::EXACT);
    assert_snapshots_eq(&after, &before, "tree after remount");
    m.unmount();
}

fn namespace(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let m = vol.mount();
    let p = |rel: &str| m.join(rel);

    assert_eq!(
        statfs_type(m.path()).unwrap(),
        FUSE_SUPER_MAGIC,
        "not a FUSE mount"
    );
    let st = statvfs(m.path()).unwrap();
    assert!(st.f_bsize > 0, "statfs f_bsize is 0");
    assert!(st.f_namemax >= 255, "statfs f_namemax {}", st.f_namemax);
    assert!(
        st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_blocks,
        "statfs blocks"
    );

    // mkdir / rmdir
    fs::create_dir(p("d1")).unwrap();
    fs::create_dir(p("d1/sub")).unwrap();
    fs::write(p("d1/sub/f"), b"x").unwrap();
    assert_errno(fs::create_dir(p("d1")), libc::EEXIST, "mkdir existing");
    assert_errno(fs::remove_dir(p("d1")), libc::ENOTEMPTY, "rmdir non-empty");
    assert_errno(
        fs::remove_dir(p("d1/sub")),
        libc::ENOTEMPTY,
        "rmdir non-empty sub",
    );
    fs::remove_file(p("d1/sub/f")).unwrap();
    assert_errno(fs::metadata(p("d1/sub/f")), libc::ENOENT, "stat unlinked");
    fs::remove_dir(p("d1/sub")).unwrap();
    assert_errno(fs::metadata(p("d1/sub")), libc::ENOENT, "stat removed dir");
    assert_eq!(fs::read_dir(p("d1")).unwrap().count(), 0);

    // Error cases
    fs::write(p("file"), b"content").unwrap();
    // Each operation on its path fails with its errno.
    type Op = fn(&Path) -> std::io::Result<()>;
    #[rustfmt::skip]
    let cases: [(&str, Op, i32, &str); 13] = [
        ("missing", |q| File::open(q).map(drop), libc::ENOENT, "open missing"),
        ("missing", |q| fs::remove_file(q), libc::ENOENT, "unlink missing"),
        ("missing", |q| fs::remove_dir(q), libc::ENOENT, "rmdir missing"),
        ("missing", |q| fs::rename(q, q.with_file_name("x")), libc::ENOENT, "rename missing"),
        ("missing/x", |q| File::create(q).map(drop), libc::ENOENT, "create in missing dir"),
        ("file", |q| OpenOptions::new().write(true).create_new(true).open(q).map(drop),
            libc::EEXIST, "O_EXCL existing"),
        ("file", |q| fs::create_dir(q), libc::EEXIST, "mkdir over file"),
        ("d1", |q| OpenOptions::new().write(true).open(q).map(drop), libc::EISDIR,
            "open dir for write"),
        ("d1", |q| fs::remove_file(q), libc::EISDIR, "unlink dir"),
        ("file", |q| fs::remove_dir(q), libc::ENOTDIR, "rmdir file"),
        ("file/x", |q| File::create(q).map(drop), libc::ENOTDIR, "create under file"),
        ("file/x", |q| fs::create_dir(q), libc::ENOTDIR, "mkdir under file"),
        ("file", |q| fs::read_dir(q).map(drop), libc::ENOTDIR, "opendir file"),
    ];
    for (path, op, errno, what) in cases {
        assert_errno(op(&p(path)), errno, what);
    }

    // Name length: 255 is fine, 256 is ENAMETOOLONG.
    let n255 = "n".repeat(255);
    let n256 = "m".repeat(256);
    fs::write(p(&n255), b"long name").unwrap();
    assert_eq!(fs::read(p(&n255)).unwrap(), b"long name");
    assert_errno(
        File::create(p(&n256)),
        libc::ENAMETOOLONG,
        "create 256-byte name",
    );
    assert_errno(
        fs::create_dir(p(&n256)),
        libc::ENAMETOOLONG,
        "mkdir 256-byte name",
    );
    assert_errno(
        fs::rename(p("file"), p(&n256)),
        libc::ENAMETOOLONG,
        "rename to 256",
    );
    assert_errno(symlink("x", p(&n256)), libc::ENAMETOOLONG, "symlink 256");

    // rename: new name, overwrite, across directories, directories.
    fs::create_dir(p("r")).unwrap();
    fs::create_dir(p("r2")).unwrap();
    fs::write(p("r/a"), b"AAAA").unwrap();
    fs::write(p("r/c"), b"CC").unwrap();
    fs::rename(p("r/a"), p("r/b")).unwrap();
    assert_errno(
        fs::metadata(p("r/a")),
        libc::ENOENT,
        "old name after rename",
    );
    assert_eq!(fs::read(p("r/b")).unwrap(), b"AAAA");
    fs::rename(p("r/b"), p("r/c")).unwrap();
    assert_eq!(fs::read(p("r/c")).unwrap(), b"AAAA", "rename overwrite");
    assert_errno(
        fs::metadata(p("r/b")),
        libc::ENOENT,
        "source after overwrite",
    );
    fs::rename(p("r/c"), p("r2/c")).unwrap();
    assert_eq!(fs::read(p("r2/c")).unwrap(), b"AAAA");
    fs::write(p("r/keep"), b"keep").unwrap();
    fs::rename(p("r"), p("r-renamed")).unwrap();
    assert_eq!(fs::read(p("r-renamed/keep")).unwrap(), b"keep");
    assert_errno(fs::metadata(p("r")), libc::ENOENT, "old dir name");
    assert_errno(
        fs::rename(p("r-renamed"), p("r-renamed/inside")),
        libc::EINVAL,
        "dir into itself",
    );

    // RENAME_NOREPLACE
    fs::write(p("x"), b"X").unwrap();
    fs::write(p("y"), b"Y").unwrap();
    assert_errno(
        renameat2(&p("x"), &p("y"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE",
    );
    assert_eq!(fs::read(p("x")).unwrap(), b"X");
    assert_eq!(fs::read(p("y")).unwrap(), b"Y");
    renameat2(&p("x"), &p("z"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(p("z")).unwrap(), b"X");
    assert_errno(fs::metadata(p("x")), libc::ENOENT, "NOREPLACE source");

    // RENAME_EXCHANGE: two files, then a file and a directory.
    renameat2(&p("y"), &p("z"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(p("y")).unwrap(), b"X", "exchange y");
    assert_eq!(fs::read(p("z")).unwrap(), b"Y", "exchange z");
    fs::create_dir(p("ex-dir")).unwrap();
    fs::write(p("ex-dir/inner"), b"inner").unwrap();
    fs::write(p("ex-file"), b"ex").unwrap();
    renameat2(&p("ex-file"), &p("ex-dir"), libc::RENAME_EXCHANGE).unwrap();
    assert!(fs::metadata(p("ex-file")).unwrap().is_dir());
    assert_eq!(fs::read(p("ex-file/inner")).unwrap(), b"inner");
    assert_eq!(fs::read(p("ex-dir")).unwrap(), b"ex");
    assert_errno(
        renameat2(&p("y"), &p("no-such"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "exchange with missing",
    );

    // Directory onto directory.
    fs::create_dir(p("dA")).unwrap();
    fs::write(p("dA/fa"), b"fa").unwrap();
    fs::create_dir(p("dB")).unwrap();
    fs::write(p("dB/fb"), b"fb").unwrap();
    fs::create_dir(p("dC")).unwrap();
    assert_errno(
        fs::rename(p("dA"), p("dB")),
        libc::ENOTEMPTY,
        "dir onto non-empty dir",
    );
    assert_eq!(fs::read(p("dB/fb")).unwrap(), b"fb");
    fs::rename(p("dA"), p("dC")).unwrap();
    assert_eq!(fs::read(p("dC/fa")).unwrap(), b"fa");
    assert_errno(
        fs::metadata(p("dA")),
        libc::ENOENT,
        "dir renamed onto empty dir",
    );
    for (from, to, errno, what) in [
        ("file", "dB", libc::EISDIR, "file onto dir"),
        ("dB", "file", libc::ENOTDIR, "dir onto file"),
    ] {
        assert_errno(fs::rename(p(from), p(to)), errno, what);
    }

    // Hard links
    fs::write(p("h1"), b"hard link data").unwrap();
    fs::hard_link(p("h1"), p("h2")).unwrap();
    let (m1, m2) = (
        fs::metadata(p("h1")).unwrap(),
        fs::metadata(p("h2")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino(), "hard links share the inode");
    assert_eq!((m1.nlink(), m2.nlink()), (2, 2), "nlink after link");
    write_at(&p("h2"), 0, b"HARD");
    assert_eq!(fs::read(p("h1")).unwrap(), b"HARD link data", "data shared");
    fs::hard_link(p("h1"), p("dB/h3")).unwrap();
    assert_eq!(fs::metadata(p("h2")).unwrap().nlink(), 3);
    fs::remove_file(p("h1")).unwrap();
    assert_eq!(
        fs::metadata(p("h2")).unwrap().nlink(),
        2,
        "nlink after unlink"
    );
    assert_eq!(fs::read(p("dB/h3")).unwrap(), b"HARD link data");
    for (from, to, errno, what) in [
        ("h2", "y", libc::EEXIST, "link onto existing"),
        ("dB", "dirlink", libc::EPERM, "link a directory"),
        ("missing", "l", libc::ENOENT, "link missing"),
    ] {
        assert_errno(fs::hard_link(p(from), p(to)), errno, what);
    }

    // Symbolic links
    symlink("target/does/not/exist", p("dangling")).unwrap();
    assert_eq!(
        fs::read_link(p("dangling")).unwrap(),
        Path::new("target/does/not/exist")
    );
    assert!(
        fs::symlink_metadata(p("dangling"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_errno(fs::metadata(p("dangling")), libc::ENOENT, "follow dangling");
    symlink("h2", p("to-h2")).unwrap();
    assert_eq!(fs::read(p("to-h2")).unwrap(), b"HARD link data");
    let long_target = format!("/{}", "t/".repeat(600));
    symlink(&long_target, p("long-link")).unwrap();
    assert_eq!(
        fs::read_link(p("long-link")).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(
        fs::symlink_metadata(p("long-link")).unwrap().len(),
        long_target.len() as u64,
        "symlink size is its target's length"
    );
    symlink("dB", p("to-dir")).unwrap();
    assert_eq!(fs::read(p("to-dir/fb")).unwrap(), b"fb");
    assert_errno(symlink("x", p("y")), libc::EEXIST, "symlink onto existing");

    // FIFO
    mkfifo(&p("fifo"), 0o640).unwrap();
    let md = fs::symlink_metadata(p("fifo")).unwrap();
    assert!(md.file_type().is_fifo_type(), "mkfifo made {:o}", md.mode());
    assert_eq!(md.mode() & 0o777, 0o640);

    // Listing of the root
    let mut names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = [
        "d1",
        "file",
        "r-renamed",
        "r2",
        "y",
        "z",
        "ex-dir",
        "ex-file",
        "dB",
        "dC",
        "h2",
        "dangling",
        "to-h2",
        "long-link",
        "to-dir",
        "fifo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.push(n255.clone());
    want.sort();
    assert_eq!(names, want, "root listing");

    let before = snapshot_tree(m.path(), SnapOptions::EXACT);
    let ino_h2 = fs::metadata(p("h2")).unwrap().ino();
    m.unmount();

    let m = vol.mount();
    let p = |rel: &str| m.join(rel);
    let after = snapshot_tree(m.path(), SnapOptions::EXACT);
    assert_snapshots_eq(&after, &before, "namespace after remount");
    assert_eq!(
        fs::metadata(p("h2")).unwrap().ino(),
        ino_h2,
        "inode number stable"
    );
    assert_eq!(
        fs::metadata(p("dB/h3")).unwrap().ino(),
        ino_h2,
        "hard link after remount"
    );
    assert_eq!(fs::metadata(p("h2")).unwrap().nlink(), 2);
    assert_eq!(
        fs::read_link(p("long-link")).unwrap(),
        Path::new(&long_target)
    );
    assert!(
        fs::symlink_metadata(p("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_type()
    );
    // The namespace is still writable after the remount.
    fs::rename(p("z"), p("z2")).unwrap();
    fs::remove_dir_all(p("dB")).unwrap();
    assert_eq!(fs::metadata(p("h2")).unwrap().nlink(), 1);
    m.unmount();
}

trait FifoType {
    fn is_fifo_type(&self) -> bool;
}

impl FifoType for fs::FileType {
    fn is_fifo_type(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

fn stat_times(p: &Path) -> ((i64, i64), (i64, i64)) {
    let md = fs::symlink_metadata(p).unwrap();
    ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
}

fn attributes(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let m = vol.mount();
    let p = |rel: &str| m.join(rel);

    fs::write(p("attr.txt"), b"attributes").unwrap();
    fs::create_dir(p("adir")).unwrap();
    symlink("attr.txt", p("alink")).unwrap();

    // chmod
    fs::set_permissions(p("attr.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(p("attr.txt")).unwrap().mode() & 0o7777, 0o640);
    fs::set_permissions(p("adir"), fs::Permissions::from_mode(0o1770)).unwrap();
    assert_eq!(fs::metadata(p("adir")).unwrap().mode() & 0o7777, 0o1770);
    fs::write(p("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(p("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(p("suid")).unwrap().mode() & 0o7777, 0o4755);
    assert!(
        fs::metadata(p("adir")).unwrap().is_dir(),
        "chmod kept the file type"
    );

    // chown / lchown
    let ctime_before = fs::metadata(p("attr.txt")).unwrap().ctime();
    std::os::unix::fs::chown(p("attr.txt"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(p("attr.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678), "chown");
    assert!(md.ctime() >= ctime_before, "ctime went backwards");
    std::os::unix::fs::chown(p("attr.txt"), Some(4321), None).unwrap();
    let md = fs::metadata(p("attr.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 5678), "chown uid only");
    std::os::unix::fs::chown(p("adir"), None, Some(99)).unwrap();
    assert_eq!(fs::metadata(p("adir")).unwrap().gid(), 99);
    lchown(&p("alink"), 777, 888).unwrap();
    let lmd = fs::symlink_metadata(p("alink")).unwrap();
    assert_eq!((lmd.uid(), lmd.gid()), (777, 888), "lchown on a symlink");
    assert_eq!(
        fs::metadata(p("attr.txt")).unwrap().uid(),
        4321,
        "lchown followed the link"
    );

    // utimens, with nanoseconds
    let at = (1_500_000_000, 111_111_111);
    let mt = (1_600_000_000, 123_456_789);
    set_times(&p("attr.txt"), at, mt, true).unwrap();
    assert_eq!(stat_times(&p("attr.txt")), (at, mt), "utimens on a file");
    set_times(&p("adir"), at, (1_600_000_001, 5), true).unwrap();
    assert_eq!(
        stat_times(&p("adir")).1,
        (1_600_000_001, 5),
        "utimens on a dir"
    );
    set_times(&p("alink"), at, (1_600_000_002, 7), false).unwrap();
    assert_eq!(
        stat_times(&p("alink")).1,
        (1_600_000_002, 7),
        "utimens on a symlink"
    );
    assert_eq!(
        stat_times(&p("attr.txt")).1,
        mt,
        "link utimens followed the link"
    );
    // A write moves mtime to now.
    fs::write(p("touched"), b"1").unwrap();
    set_times(&p("touched"), at, mt, true).unwrap();
    write_at(&p("touched"), 0, b"2");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mt2 = fs::metadata(p("touched")).unwrap().mtime();
    assert!(
        (now - 60..=now + 60).contains(&mt2),
        "mtime after write is {mt2}, now {now}"
    );
    // Creating a file in a directory moves the directory's mtime.
    set_times(&p("adir"), at, mt, true).unwrap();
    fs::write(p("adir/new"), b"n").unwrap();
    assert!(
        fs::metadata(p("adir")).unwrap().mtime() > mt.0,
        "dir mtime after create"
    );
    set_times(&p("adir"), at, (1_600_000_001, 5), true).unwrap();

    // Extended attributes
    let f = p("attr.txt");
    let blob = random_bytes(77, 1000);
    set_xattr(&f, "user.a", b"alpha", 0).unwrap();
    set_xattr(&f, "user.b", &blob, 0).unwrap();
    set_xattr(&f, "user.empty", b"", 0).unwrap();
    assert_eq!(get_xattr(&f, "user.a").unwrap(), b"alpha");
    assert_eq!(get_xattr(&f, "user.b").unwrap(), blob);
    assert_eq!(get_xattr(&f, "user.empty").unwrap(), b"");
    assert_eq!(list_xattr(&f).unwrap(), ["user.a", "user.b", "user.empty"]);
    assert_errno(
        get_xattr(&f, "user.missing"),
        libc::ENODATA,
        "get missing xattr",
    );
    assert_errno(
        set_xattr(&f, "user.a", b"x", libc::XATTR_CREATE),
        libc::EEXIST,
        "XATTR_CREATE",
    );
    assert_errno(
        set_xattr(&f, "user.c", b"x", libc::XATTR_REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE missing",
    );
    set_xattr(&f, "user.a", b"beta", libc::XATTR_REPLACE).unwrap();
    assert_eq!(get_xattr(&f, "user.a").unwrap(), b"beta");
    {
        // A buffer that is too small: ERANGE.
        let (c, n) = (cstr(&f), std::ffi::CString::new("user.a").unwrap());
        let mut small = [0u8; 2];
        // SAFETY: valid path, name and a 2-byte buffer.
        let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 2) };
        assert_eq!(rc, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
    }
    remove_xattr(&f, "user.b").unwrap();
    assert_errno(
        remove_xattr(&f, "user.b"),
        libc::ENODATA,
        "remove missing xattr",
    );
    assert_eq!(list_xattr(&f).unwrap(), ["user.a", "user.empty"]);
    set_xattr(&p("adir"), "user.dir", b"on a directory", 0).unwrap();
    assert_eq!(
        get_xattr(&p("adir"), "user.dir").unwrap(),
        b"on a directory"
    );
    // xattrs follow the inode through a rename and are shared by hard links.
    fs::hard_link(p("attr.txt"), p("attr-link")).unwrap();
    assert_eq!(get_xattr(&p("attr-link"), "user.a").unwrap(), b"beta");
    fs::rename(p("attr.txt"), p("attr-renamed.txt")).unwrap();
    assert_eq!(
        get_xattr(&p("attr-renamed.txt"), "user.a").unwrap(),
        b"beta"
    );

    // File capabilities go whenever the file is written, truncated or given a new owner, as
    // on a local file system; spoolfs does it itself (FUSE_HANDLE_KILLPRIV_V2), on every
    // write, not only the first one after a close.
    let caps = p("caps.bin");
    fs::write(&caps, b"binary").unwrap();
    // VFS_CAP_REVISION_2, permitted: CAP_NET_RAW.
    let mut cap = Vec::new();
    for word in [0x0200_0000u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    let cap_gone = |what: &str| {
        assert_errno(
            get_xattr(&caps, "security.capability"),
            libc::ENODATA,
            &format!("security.capability after {what}"),
        )
    };
    set_xattr(&caps, "security.capability", &cap, 0).unwrap();
    assert_eq!(get_xattr(&caps, "security.capability").unwrap(), cap);
    {
        let mut f = fs::OpenOptions::new().append(true).open(&caps).unwrap();
        f.write_all(b" more").unwrap();
        cap_gone("a write");
        set_xattr(&caps, "security.capability", &cap, 0).unwrap();
        f.write_all(b" again").unwrap();
        cap_gone("a second write on the same descriptor");
    }
    set_xattr(&caps, "security.capability", &cap, 0).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&caps)
        .unwrap()
        .set_len(3)
        .unwrap();
    cap_gone("a truncation");
    set_xattr(&caps, "security.capability", &cap, 0).unwrap();
    std::os::unix::fs::chown(&caps, Some(42), None).unwrap();
    cap_gone("a chown");
    fs::remove_file(&caps).unwrap();

    let before = snapshot_tree(m.path(), SnapOptions::EXACT);
    // Spot checks that the snapshot holds what was set.
    let e = &before[Path::new("attr-renamed.txt")];
    assert_eq!(
        (e.perm, e.uid, e.gid, e.mtime, e.nlink),
        (0o640, 4321, 5678, Some(mt), Some(2))
    );
    assert_eq!(e.xattrs.len(), 2);
    m.unmount();

    let m = vol.mount();
    let after = snapshot_tree(m.path(), SnapOptions::EXACT);
    assert_snapshots_eq(&after, &before, "attributes after remount");
    assert_eq!(
        get_xattr(&m.join("attr-renamed.txt"), "user.a").unwrap(),
        b"beta"
    );
    assert_errno(
        get_xattr(&m.join("attr-renamed.txt"), "user.b"),
        libc::ENODATA,
        "removed xattr after remount",
    );
    m.unmount();
}
