//! Wrong input and broken environments: every case must fail with a non-zero exit and a clear
//! message on stderr, never a panic, and must leave nothing mounted or running. Corrupted data
//! must read as EIO, never as wrong bytes.

use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

backend_tests!(
    bogus_meta_url,
    meta_without_volume,
    mountpoint_not_empty,
    mountpoint_missing,
    already_mounted,
    corrupted_block,
    sigkill_after_close,
);

/// Nothing mounted at `mp` and no process serving it.
fn assert_no_leftovers(mp: &Path) {
    assert!(!is_mounted(mp), "{} is still mounted", mp.display());
    let pids = pids_with_arg(mp.as_os_str());
    assert!(
        pids.is_empty(),
        "processes left for {}: {pids:?}",
        mp.display()
    );
}

const PHRASES_CREDENTIALS: &[&str] = &[
    "credential",
    "denied",
    "access",
    "signature",
    "forbidden",
    "authoriz",
    "403",
];
const PHRASES_UNREACHABLE: &[&str] = &[
    "connect",
    "unreachable",
    "refused",
    "endpoint",
    "reach",
    "timed out",
    "timeout",
];

fn bogus_meta_url(backend: Backend) {
    let vol = Volume::new(backend);
    let mp = vol.new_subdir("mnt");
    let out = vol.spoolfs_run([
        OsStr::new("mount"),
        OsStr::new("--meta"),
        OsStr::new("bogus://x"),
        mp.as_os_str(),
    ]);
    out.assert_clean_failure(&["bogus", "scheme", "unsupported", "url"]);
    assert_no_leftovers(&mp);
    // format with a bogus metadata URL and with a bogus storage URL.
    let scratch = format!("file://{}", vol.new_subdir("scratch").display());
    let other_meta = format!("redb://{}", vol.dir().join("other.redb").display());
    for (meta, storage, phrases) in [
        (
            "bogus://x",
            scratch.as_str(),
            &["bogus", "scheme", "unsupported", "url"][..],
        ),
        (
            other_meta.as_str(),
            "bogus://bucket",
            &["bogus", "scheme", "unsupported", "url", "storage"],
        ),
        // A relative redb path is not a URL with an absolute path.
        (
            "redb://relative.redb",
            scratch.as_str(),
            &["absolute", "path", "url", "host"],
        ),
    ] {
        let out = vol.spoolfs_run(["format", "--meta", meta, "--storage", storage, "n"]);
        out.assert_clean_failure(phrases);
    }
}

/// `spoolfs mount --meta META MP --cache-dir (fresh)`: its output.
fn mount_meta(vol: &Volume, meta: &str, mp: &Path) -> CmdOutput {
    vol.spoolfs_run([
        OsStr::new("mount"),
        OsStr::new("--meta"),
        OsStr::new(meta),
        mp.as_os_str(),
        OsStr::new("--cache-dir"),
        vol.new_subdir("cache").as_os_str(),
    ])
}

fn meta_without_volume(backend: Backend) {
    let vol = Volume::new(backend);
    let mp = vol.new_subdir("mnt");
    // A metadata file that does not exist.
    let missing = format!("redb://{}", vol.dir().join("nothing-here.redb").display());
    let out = mount_meta(&vol, &missing, &mp);
    out.assert_clean_failure(&["volume", "format", "not found", "no such", "does not exist"]);
    assert_no_leftovers(&mp);
    // A file that is not a metadata store at all.
    let junk = vol.dir().join("junk.redb");
    fs::write(&junk, random_bytes(3, 64 << 10)).unwrap();
    let junk_url = format!("redb://{}", junk.display());
    let out = mount_meta(&vol, &junk_url, &mp);
    out.assert_clean_failure(&[
        "metadata", "database", "redb", "corrupt", "invalid", "volume",
    ]);
    assert_no_leftovers(&mp);
    // status of a directory that is not a spoolfs mount must not panic.
    let out = vol.spoolfs_run([OsStr::new("status"), mp.as_os_str()]);
    assert!(
        !out.stderr.contains("panicked") && out.status.code().is_some(),
        "status crashed: {out}"
    );
}

fn mountpoint_not_empty(backend: Backend) {
    let vol = Volume::new(backend);
    let mp = vol.new_subdir("mnt");
    fs::write(mp.join("precious.txt"), b"do not hide me").unwrap();
    let out = vol.mount_output(&mp, &[]);
    out.assert_clean_failure(&["not empty"]);
    assert_no_leftovers(&mp);
    assert_eq!(
        fs::read(mp.join("precious.txt")).unwrap(),
        b"do not hide me"
    );
}

fn mountpoint_missing(backend: Backend) {
    let vol = Volume::new(backend);
    let mp = vol.dir().join("no-such-dir");
    let out = vol.mount_output(&mp, &[]);
    out.assert_clean_failure(&["does not exist", "no such", "not found", "not exist"]);
    assert!(!mp.exists(), "mount created the missing mount point");
    // A mount point that is a regular file.
    let f = vol.dir().join("a-file");
    fs::write(&f, b"x").unwrap();
    let out = vol.mount_output(&f, &[]);
    out.assert_clean_failure(&["not a directory", "directory"]);
}

fn already_mounted(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let m = vol.mount_daemon();
    fs::write(m.join("a"), b"first mount").unwrap();
    let status = vol.spoolfs_run([
        OsStr::new("status"),
        m.path().as_os_str(),
        OsStr::new("--json"),
    ]);
    status.assert_success();
    let json: serde_json::Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {status}"));
    assert!(json.is_object() || json.is_array(), "status --json: {json}");
    // Same volume, second mount point.
    let mp2 = vol.new_subdir("mnt");
    let out = vol.mount_output(&mp2, &[]);
    out.assert_clean_failure(&["already", "in use", "lock"]);
    assert_no_leftovers(&mp2);
    // Same volume, same mount point.
    let out = vol.mount_output(m.path(), &[]);
    out.assert_clean_failure(&["already", "in use", "lock", "not empty"]);
    // The first mount is unharmed.
    assert_eq!(fs::read(m.join("a")).unwrap(), b"first mount");
    fs::write(m.join("b"), b"still works").unwrap();
    let mp = m.path().to_path_buf();
    m.unmount();
    assert_no_leftovers(&mp);
    // And it mounts again once the first mount is gone.
    let m = vol.mount_daemon();
    assert_eq!(fs::read(m.join("b")).unwrap(), b"still works");
    m.unmount();
}

fn corrupted_block(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let big = random_bytes(21, 3 << 20);
    let small = random_bytes(22, 3000);
    {
        let m = vol.mount();
        fs::write(m.join("big.bin"), &big).unwrap();
        fs::write(m.join("small.bin"), &small).unwrap();
        fs::create_dir(m.join("dir")).unwrap();
        m.unmount();
    }
    let chunks = vol.chunk_files();
    assert!(
        !chunks.is_empty(),
        "no data objects under {} after close+unmount (unmount waits for uploads)",
        vol.objects_dir().display()
    );
    let total: u64 = chunks.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(
        total >= (big.len() + small.len()) as u64,
        "data objects hold {total} bytes, less than the {} written",
        big.len() + small.len()
    );
    // Flip a byte in every 1000 of the data part (not the trailer or a pack's index) of every
    // data object: a pack holds several files' slices (out-of-order FUSE writes can even cut
    // one file into several), and every one of them must be hit.
    for p in &chunks {
        let mut bytes = fs::read(p).unwrap();
        assert!(
            bytes.len() > 48,
            "{} is only {} bytes",
            p.display(),
            bytes.len()
        );
        for at in (0..bytes.len() - 48).step_by(1000) {
            bytes[at] ^= 0x5a;
        }
        fs::write(p, &bytes).unwrap();
    }
    // Mount with an empty cache so that every read goes to the object store.
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for (name, want) in [("big.bin", &big), ("small.bin", &small)] {
        match fs::read(m.join(name)) {
            Ok(got) if got == *want => panic!(
                "{name}: read the original bytes although every data object was corrupted \
                 (served from an unexpected cache?); objects: {:?}",
                chunks
                    .iter()
                    .map(|p| (
                        p.display().to_string(),
                        fs::metadata(p).map(|m| m.len()).ok()
                    ))
                    .collect::<Vec<_>>()
            ),
            Ok(_) => panic!("{name}: corrupted data was returned instead of EIO"),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "{name}: expected EIO, got {e}"
            ),
        }
    }
    // The file system is still alive and its metadata intact.
    assert_eq!(
        fs::metadata(m.join("big.bin")).unwrap().len(),
        big.len() as u64
    );
    assert!(fs::metadata(m.join("dir")).unwrap().is_dir());
    fs::write(m.join("new.txt"), b"new data after corruption").unwrap();
    assert_eq!(
        fs::read(m.join("new.txt")).unwrap(),
        b"new data after corruption"
    );
    let log = m.log_text();
    assert!(!log.contains("panicked"), "mount process panicked:\n{log}");
    m.unmount();
}

/// SIGKILL of the mount process (foreground child, then daemon): what close() acknowledged is
/// in the object store, so it must all be there after a remount; nothing stays mounted.
fn sigkill_after_close(backend: Backend) {
    require_fuse!();
    let vol = Volume::new(backend);
    let data = random_bytes(31, (5 << 20) + 333);
    let m = vol.mount();
    fs::write(m.join("kept.bin"), &data).unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/small"), b"small").unwrap();
    let mp = m.path().to_path_buf();
    m.kill9();
    assert_no_leftovers(&mp);

    // What survives: kept.bin and one more file.
    let assert_kept = |m: &Mount, (name, bytes): (&str, &[u8]), after: &str| {
        assert_bytes_eq(
            &fs::read(m.join("kept.bin")).unwrap(),
            &data,
            &format!("kept.bin after {after}"),
        );
        assert_eq!(
            fs::read(m.join(name)).unwrap(),
            bytes,
            "{name} after {after}"
        );
    };
    let m = vol.mount_daemon();
    assert_kept(&m, ("dir/small", b"small"), "SIGKILL");
    fs::write(m.join("second.txt"), b"second").unwrap();
    let pid = m.pid().expect("daemon pid");
    let mp = m.path().to_path_buf();
    m.kill9();
    assert_no_leftovers(&mp);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z")),
        "daemon {pid} survived SIGKILL"
    );

    let m = vol.mount();
    assert_kept(&m, ("second.txt", b"second"), "2nd SIGKILL");
    m.unmount();
}

// ---- S3-only cases ---------------------------------------------------------------------------

#[test]
fn missing_bucket() {
    let vol = Volume::unformatted(Backend::S3);
    let endpoint = vol.s3().unwrap().endpoint();
    let meta = format!("redb://{}", vol.dir().join("nb.redb").display());
    let out = vol.spoolfs_run([
        "format",
        "--meta",
        &meta,
        "--storage",
        "s3://missing-one/x",
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        TEST_REGION,
        "--s3-path-style",
        "nb",
    ]);
    out.assert_clean_failure(&["bucket"]);

    // A formatted volume whose bucket disappears.
    vol.format().assert_success();
    vol.s3().unwrap().delete_bucket(TEST_BUCKET);
    let mp = vol.new_subdir("mnt");
    let out = vol.mount_output(&mp, &[]);
    out.assert_clean_failure(&["bucket"]);
    assert_no_leftovers(&mp);
}

#[test]
fn wrong_credentials() {
    let vol = Volume::unformatted(Backend::S3);
    let args = vol.format_args();
    let out = run(
        vol.spoolfs()
            .args(&args)
            .env("AWS_SECRET_ACCESS_KEY", "definitely-wrong"),
        Duration::from_secs(120),
    );
    out.assert_clean_failure(PHRASES_CREDENTIALS);
    // Unknown access key too.
    let out = run(
        vol.spoolfs().args(&args).env("AWS_ACCESS_KEY_ID", "nobody"),
        Duration::from_secs(120),
    );
    out.assert_clean_failure(PHRASES_CREDENTIALS);
    // No credentials at all.
    let out = run(
        vol.spoolfs()
            .args(&args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY"),
        Duration::from_secs(120),
    );
    out.assert_clean_failure(PHRASES_CREDENTIALS);
    // The failed attempts left nothing behind: a correct format works without --force.
    vol.format().assert_success();

    let mp = vol.new_subdir("mnt");
    let out = vol.mount_output_env(&mp, &[], &[("AWS_SECRET_ACCESS_KEY", "definitely-wrong")]);
    out.assert_clean_failure(PHRASES_CREDENTIALS);
    assert_no_leftovers(&mp);
}

#[test]
fn unreachable_endpoint() {
    let vol = Volume::unformatted(Backend::S3);
    let meta = format!("redb://{}", vol.dir().join("un.redb").display());
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let out = vol.spoolfs_run([
        "format",
        "--meta",
        &meta,
        "--storage",
        &format!("s3://{TEST_BUCKET}/x"),
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        TEST_REGION,
        "--s3-path-style",
        "un",
    ]);
    out.assert_clean_failure(PHRASES_UNREACHABLE);
    assert!(
        out.elapsed < Duration::from_secs(45),
        "format took {:?} to notice a closed port",
        out.elapsed
    );

    // A formatted volume whose server goes away.
    let mut vol = vol;
    vol.format().assert_success();
    vol.s3_mut().unwrap().stop();
    let mp = vol.new_subdir("mnt");
    let out = vol.mount_output(&mp, &[]);
    out.assert_clean_failure(PHRASES_UNREACHABLE);
    assert!(
        out.elapsed < Duration::from_secs(45),
        "mount took {:?} to notice a closed port",
        out.elapsed
    );
    assert_no_leftovers(&mp);
}

#[test]
fn format_refuses_to_overwrite() {
    for backend in Backend::ALL {
        let vol = Volume::new(backend);
        let out = vol.format();
        out.assert_clean_failure(&["already", "exist", "--force"]);
        let mut args = vol.format_args();
        args.insert(1, "--force".into());
        vol.spoolfs_run(&args).assert_success();
        // Invalid volume name and block size.
        let meta = format!("redb://{}", vol.dir().join("bad.redb").display());
        let storage = format!("file://{}", vol.new_subdir("bad-objects").display());
        let out = vol.spoolfs_run(["format", "--meta", &meta, "--storage", &storage, "bad/name"]);
        out.assert_clean_failure(&["name"]);
        let out = vol.spoolfs_run([
            "format",
            "--meta",
            &meta,
            "--storage",
            &storage,
            "--block-size",
            "3000",
            "okname",
        ]);
        out.assert_clean_failure(&["block size", "block-size", "size"]);
    }
}

/// `--fuse-transport uring` where the kernel cannot serve it fails the mount, saying why; a
/// transport that does not exist is refused before anything is opened.
#[test]
fn fuse_transport_uring_unavailable_or_unknown() {
    spoolfs_testkit::require_fuse!();
    let vol = Volume::new(Backend::File);
    let mp = vol.new_subdir("mnt");
    let out = vol.mount_output(&mp, &["--fuse-transport", "sideways"]);
    out.assert_clean_failure(&["unknown FUSE transport"]);
    assert_no_leftovers(&mp);

    let param = "/sys/module/fuse/parameters/enable_uring";
    let why = match fs::read_to_string(param) {
        Err(_) => "the kernel lacks FUSE over io_uring",
        Ok(v) if v.trim() == "N" => "enable_uring is N",
        Ok(_) => {
            // Switching it off here would disturb other mounts of this run.
            spoolfs_testkit::not_applicable(
                "fuse_transport_uring_unavailable_or_unknown",
                "the kernel offers FUSE over io_uring here: nothing to refuse",
            );
            return;
        }
    };
    let out = vol.mount_output(&mp, &["--fuse-transport", "uring"]);
    out.assert_clean_failure(&[why]);
    assert!(
        out.stderr.contains("--fuse-transport uring"),
        "the error does not name the flag: {out}"
    );
    assert_no_leftovers(&mp);
    // auto serves over /dev/fuse instead.
    let m = vol.mount_with(MountOptions {
        extra_args: vec!["--fuse-transport".into(), "auto".into()],
        daemon: true,
        ..Default::default()
    });
    assert_eq!(m.status()["fuse_transport"], "dev");
    m.unmount();
}
