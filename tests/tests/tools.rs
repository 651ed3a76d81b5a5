//! Everyday tools on a spoolfs mount, on the file store and on S3: `cp -a`, `tar`, `git`,
//! `python3 -m venv` + `pip install`; each verified again after a remount.

use spoolfs_tests::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

backend_tests!(cp_and_tar, git_repo, python_venv);

const T: Duration = Duration::from_secs(300);

/// Builds a tree of a few hundred files in `root`: nested directories, varied sizes and modes,
/// symlinks (file, directory, dangling), a hard link, an empty directory, a FIFO, odd names,
/// explicit timestamps and user xattrs (when the local file system takes them).
fn make_tree(root: &Path) -> usize {
    let mut rng = Rng::new(99);
    let modes = [0o644, 0o600, 0o755, 0o444, 0o640, 0o700];
    let mut files = 0;
    for d in 0..5 {
        for s in 0..4 {
            let dir = root.join(format!("dir{d}/sub{s}/leaf"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..15 {
                let size = match rng.below(20) {
                    0 => rng.below(2 << 20) as usize,
                    1..=3 => 0,
                    _ => rng.below(24 << 10) as usize,
                };
                let p = dir.join(format!("file{f}.dat"));
                fs::write(&p, rng.bytes(size)).unwrap();
                let mode = modes[rng.below(modes.len() as u64) as usize];
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                files += 1;
            }
            fs::write(dir.parent().unwrap().join("mid.txt"), format!("{d}/{s}\n")).unwrap();
            files += 1;
        }
    }
    fs::create_dir_all(root.join("empty/dir")).unwrap();
    fs::write(root.join("with space.txt"), b"space\n").unwrap();
    fs::write(root.join("-dash"), b"dash\n").unwrap();
    fs::write(root.join("ünïcødé-名前.txt"), "unicode\n").unwrap();
    symlink("dir0/sub0/mid.txt", root.join("link-to-file")).unwrap();
    symlink("dir1/sub1", root.join("link-to-dir")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("../../mid.txt", root.join("dir2/sub2/leaf/up-link")).unwrap();
    fs::write(root.join("hard-a"), b"shared by two names\n").unwrap();
    fs::hard_link(root.join("hard-a"), root.join("dir3/hard-b")).unwrap();
    mkfifo(&root.join("fifo"), 0o644).unwrap();
    fs::set_permissions(root.join("dir4"), fs::Permissions::from_mode(0o750)).unwrap();
    let _ = set_xattr(&root.join("hard-a"), "user.origin", b"tools-test", 0);
    let _ = set_xattr(&root.join("dir1"), "user.dir", b"d", 0);
    set_times(
        &root.join("with space.txt"),
        (1_000_000_000, 0),
        (1_234_567_890, 987_654_321),
        true,
    )
    .unwrap();
    set_times(&root.join("dangling"), (1, 0), (1_111_111_111, 1), false).unwrap();
    files + 5
}

/// What cp -a and rsync -aHAX keep: everything.
const CROSS_FS: SnapOptions = SnapOptions::EXACT;

/// What tar (default GNU format, no --xattrs) keeps.
const TAR: SnapOptions = SnapOptions {
    mtime: true,
    mtime_nsec: false,
    dir_mtime: true,
    symlink_mtime: false,
    nlink: true,
    xattrs: false,
};

/// `tar -C dir -cf tarfile .`, run in `cwd`.
fn tar_create(cwd: &Path, dir: &Path, tarfile: &Path) {
    let (dir, tarfile) = (dir.to_str().unwrap(), tarfile.to_str().unwrap());
    run_ok(cwd, "tar", &["-C", dir, "-cf", tarfile, "."], T);
}

/// `tar -C dir --numeric-owner -xpf tarfile`, run in `cwd`.
fn tar_extract(cwd: &Path, tarfile: &Path, dir: &Path) {
    let (dir, tarfile) = (dir.to_str().unwrap(), tarfile.to_str().unwrap());
    run_ok(
        cwd,
        "tar",
        &["-C", dir, "--numeric-owner", "-xpf", tarfile],
        T,
    );
}

/// `python3 -m pip ARGS…` (the argument groups in order), run in `cwd`.
fn pip(cwd: &Path, groups: &[&[&str]]) {
    let mut args = vec!["-m", "pip"];
    args.extend(groups.iter().flat_map(|g| g.iter().copied()));
    run_ok(cwd, "python3", &args, T);
}

fn cp_and_tar(backend: Backend) {
    require_fuse!();
    let local = temp_dir("tools-src");
    let src = local.path().join("src");
    fs::create_dir(&src).unwrap();
    let nfiles = make_tree(&src);
    assert!(nfiles >= 300, "tree has {nfiles} files");
    let src_exact = snapshot_tree(&src, CROSS_FS);
    let src_tar = snapshot_tree(&src, TAR);

    let vol = Volume::new(backend);
    let m = vol.mount();
    let dst = m.join("copy");
    let srcs = src.to_str().unwrap();
    let dsts = dst.to_str().unwrap();
    run_ok(m.path(), "cp", &["-a", srcs, dsts], T);
    run_ok(
        m.path(),
        "diff",
        &["-r", "--no-dereference", "--exclude=fifo", srcs, dsts],
        T,
    );
    assert_snapshots_eq(&snapshot_tree(&dst, CROSS_FS), &src_exact, "cp -a copy");

    // tar into the mount, extract inside the mount, archive again and extract locally.
    let tarfile = m.join("tree.tar");
    let untar = m.join("untar");
    fs::create_dir(&untar).unwrap();
    tar_create(m.path(), &src, &tarfile);
    tar_extract(m.path(), &tarfile, &untar);
    let mut untar_snap = snapshot_tree(&untar, TAR);
    let mut want = src_tar.clone();
    // The root directory's own mtime changes as tar fills it; compare the contents only.
    untar_snap.remove(Path::new(""));
    want.remove(Path::new(""));
    assert_snapshots_eq(&untar_snap, &want, "tar x inside the mount");
    run_ok(m.path(), "tar", &["-tf", tarfile.to_str().unwrap()], T);
    let back_tar = local.path().join("back.tar");
    let back = local.path().join("back");
    fs::create_dir(&back).unwrap();
    tar_create(m.path(), &untar, &back_tar);
    tar_extract(m.path(), &back_tar, &back);
    let mut back_snap = snapshot_tree(&back, TAR);
    back_snap.remove(Path::new(""));
    assert_snapshots_eq(&back_snap, &want, "tar round trip out of the mount");
    let tar_bytes = fs::read(&tarfile).unwrap();
    m.unmount();

    let m = vol.mount();
    let dst = m.join("copy");
    run_ok(
        m.path(),
        "diff",
        &[
            "-r",
            "--no-dereference",
            "--exclude=fifo",
            srcs,
            dst.to_str().unwrap(),
        ],
        T,
    );
    assert_snapshots_eq(
        &snapshot_tree(&dst, CROSS_FS),
        &src_exact,
        "cp -a copy after remount",
    );
    let mut untar_snap = snapshot_tree(&m.join("untar"), TAR);
    untar_snap.remove(Path::new(""));
    assert_snapshots_eq(&untar_snap, &want, "tar x after remount");
    assert_bytes_eq(
        &fs::read(m.join("tree.tar")).unwrap(),
        &tar_bytes,
        "tree.tar after remount",
    );
    // Copy back out of the mount after the remount too.
    let again = local.path().join("again");
    run_ok(
        m.path(),
        "cp",
        &["-a", dst.to_str().unwrap(), again.to_str().unwrap()],
        T,
    );
    assert_snapshots_eq(
        &snapshot_tree(&again, CROSS_FS),
        &src_exact,
        "cp -a back out",
    );
    m.unmount();
}

fn git(dir: &Path, args: &[&str]) -> CmdOutput {
    run_ok(dir, "git", args, T)
}

fn git_repo(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let m = vol.mount();
    let repo = m.join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let mut rng = Rng::new(5);
    for d in 0..4 {
        fs::create_dir_all(repo.join(format!("src/mod{d}"))).unwrap();
        for f in 0..10 {
            let text: String = (0..(1 + rng.below(200)))
                .map(|i| format!("line {i} of {d}/{f}: {}\n", rng.next_u64()))
                .collect();
            fs::write(repo.join(format!("src/mod{d}/f{f}.txt")), text).unwrap();
        }
    }
    fs::write(repo.join("blob.bin"), random_bytes(6, 3 << 20)).unwrap();
    fs::write(repo.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("src/mod0/f0.txt", repo.join("link")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    // Second commit: edit, rename, delete.
    fs::write(repo.join("src/mod1/f1.txt"), b"rewritten\n").unwrap();
    git(&repo, &["mv", "src/mod2/f2.txt", "src/mod2/renamed.txt"]);
    git(&repo, &["rm", "-q", "src/mod3/f3.txt"]);
    git(&repo, &["commit", "-q", "-a", "-m", "second"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    git(&repo, &["gc", "-q", "--aggressive"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    let log = git(&repo, &["log", "--format=%s"]);
    assert_eq!(log.stdout, "second\nfirst\n", "git log");
    let status = git(&repo, &["status", "--porcelain"]);
    assert_eq!(status.stdout, "", "git status after commits");
    let head = git(&repo, &["rev-parse", "HEAD"]).stdout;
    // A local clone hard-links the object files.
    git(m.path(), &["clone", "-q", "repo", "clone"]);
    git(&m.join("clone"), &["fsck", "--full"]);
    assert_eq!(git(&m.join("clone"), &["rev-parse", "HEAD"]).stdout, head);
    let before = snapshot_tree(m.path(), SnapOptions::EXACT);
    // Same mount point again: the clone's origin is an absolute path into the mount.
    let mp = m.unmount();

    let m = vol.mount_at(&mp);
    let repo = m.join("repo");
    assert_snapshots_eq(
        &snapshot_tree(m.path(), SnapOptions::EXACT),
        &before,
        "after remount",
    );
    git(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(
        git(&repo, &["status", "--porcelain"]).stdout,
        "",
        "git status after remount"
    );
    assert_eq!(git(&repo, &["rev-parse", "HEAD"]).stdout, head);
    assert_eq!(
        git(&repo, &["log", "--format=%s"]).stdout,
        "second\nfirst\n"
    );
    // Keep working after the remount.
    fs::write(repo.join("after.txt"), b"after remount\n").unwrap();
    git(&repo, &["add", "after.txt"]);
    git(&repo, &["commit", "-q", "-m", "third"]);
    git(&repo, &["fsck", "--full"]);
    git(&m.join("clone"), &["pull", "-q", "--ff-only"]);
    assert_eq!(
        fs::read(m.join("clone/after.txt")).unwrap(),
        b"after remount\n",
        "pulled file"
    );
    m.unmount();
}

/// Writes a minimal pure-Python wheel by hand (no setuptools, no network).
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1]
files = {
    "tinypkg/__init__.py": "from .core import answer\n",
    "tinypkg/core.py": "def answer():\n    return 42\n",
    "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
    "tinypkg-1.0.dist-info/WHEEL":
        "Wheel-Version: 1.0\nGenerator: spoolfs-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    z.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;

fn python_venv(backend: Backend) {
    require_fuse!();
    let local = temp_dir("tools-py");
    let script = local.path().join("make_wheel.py");
    fs::write(&script, MAKE_WHEEL).unwrap();
    let wheel = local.path().join("tinypkg-1.0-py3-none-any.whl");
    run_ok(
        local.path(),
        "python3",
        &[script.to_str().unwrap(), wheel.to_str().unwrap()],
        T,
    );

    let vol = Volume::new(backend);
    let m = vol.mount();
    let venv = m.join("venv");
    run_ok(
        m.path(),
        "python3",
        &["-m", "venv", "--without-pip", venv.to_str().unwrap()],
        T,
    );
    let py = venv.join("bin/python");
    let pys = py.to_str().unwrap();
    let wheel = wheel.to_str().unwrap();
    let offline = ["--no-index", "--no-deps", "--no-cache-dir"];
    pip(
        m.path(),
        &[&["--python", pys, "install"], &offline[..], &[wheel]],
    );
    // A --target install, imported through PYTHONPATH.
    let target = m.join("target");
    let target_arg = ["--target", target.to_str().unwrap(), wheel];
    pip(m.path(), &[&["install"], &offline[..], &target_arg]);
    let check = "import sys, tinypkg; assert tinypkg.answer() == 42; print(sys.prefix); \
                 print(tinypkg.__file__)";
    let check_venv = |m: &Mount| {
        let out = run_ok(
            m.path(),
            m.join("venv/bin/python").to_str().unwrap(),
            &["-c", check],
            T,
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with(m.path().to_str().unwrap()),
            "venv prefix: {out}"
        );
        assert!(
            lines[1].starts_with(m.path().to_str().unwrap()),
            "module path: {out}"
        );
        let out = run(
            command("python3")
                .args(["-c", check])
                .env("PYTHONPATH", m.join("target"))
                .current_dir(m.path()),
            T,
        );
        out.assert_success();
        assert!(
            out.stdout.contains("/target/tinypkg/"),
            "--target import: {out}"
        );
    };
    check_venv(&m);
    // Byte-compile inside the mount (many small writes and renames).
    run_ok(
        m.path(),
        pys,
        &[
            "-m",
            "compileall",
            "-q",
            m.join("venv/lib").to_str().unwrap(),
        ],
        T,
    );
    let before = snapshot_tree(m.path(), SnapOptions::EXACT);
    m.unmount();

    let m = vol.mount();
    assert_snapshots_eq(
        &snapshot_tree(m.path(), SnapOptions::EXACT),
        &before,
        "after remount",
    );
    check_venv(&m);
    let py = m.join("venv/bin/python");
    pip(
        m.path(),
        &[&[
            "--python",
            py.to_str().unwrap(),
            "uninstall",
            "-y",
            "-q",
            "tinypkg",
        ]],
    );
    let out = run(
        command(m.join("venv/bin/python")).args(["-c", "import tinypkg"]),
        T,
    );
    assert!(
        !out.success(),
        "tinypkg still importable after uninstall: {out}"
    );
    m.unmount();
}
