//! Operator tools: `spoolfs bench`, the `mount.spoolfs` helper of mount(8) and /etc/fstab,
//! `spoolfs mount --config`, `spoolfs completions` and `spoolfs install-helper`.
//! Everything here is quick (a few seconds); the FUSE tests skip without root and /dev/fuse.

use serde_json::Value;
use spoolfs_tests::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn spoolfs(args: &[&OsStr]) -> CmdOutput {
    run(command(spoolfs_bin()).args(args), T)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `spoolfs bench DIR --quick ARGS`
fn bench_quick(dir: &Path, args: &[&str]) -> CmdOutput {
    let mut all = vec![os("bench"), dir.as_os_str(), os("--quick")];
    all.extend(args.iter().map(|s| os(s)));
    spoolfs(&all)
}

/// Every entry of `dir` (to check that the benchmark left nothing behind).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("no {path:?} in the JSON output:\n{v:#}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {cur}"))
}

/// Checks one timed test of the JSON report: operations done, a positive rate, and ordered
/// latency percentiles.
fn check_ops(report: &Value, test: &str, expected_ops: f64) {
    let ops = num(report, &format!("results.{test}.ops"));
    assert_eq!(ops, expected_ops, "{test}: ops");
    let rate = num(report, &format!("results.{test}.ops_per_s"));
    assert!(rate > 0.0 && rate.is_finite(), "{test}: rate {rate}");
    let l = |k: &str| num(report, &format!("results.{test}.latency_us.{k}"));
    let chain = [l("min"), l("p50"), l("p90"), l("p99"), l("p99_9"), l("max")];
    assert!(chain[0] > 0.0, "{test}: min latency {}", chain[0]);
    assert!(
        chain.windows(2).all(|w| w[0] <= w[1]),
        "{test}: latencies not ordered min<=p50<=p90<=p99<=p99.9<=max: {chain:?}"
    );
    let mean = l("mean");
    assert!(
        mean >= chain[0] && mean <= chain[5],
        "{test}: mean {mean} outside [min, max] {chain:?}"
    );
    assert_eq!(
        report["results"][test]["limited"],
        Value::Bool(false),
        "{test}: stopped at the runtime limit"
    );
}

#[test]
fn bench_quick_json() {
    let dir = temp_dir("bench");
    let out = bench_quick(dir.path(), &["--json", "--seed", "7"]);
    out.assert_success();
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("bench --json printed invalid JSON ({e}): {out}"));
    assert_eq!(report["quick"], Value::Bool(true));
    assert_eq!(num(&report, "params.seed"), 7.0);
    assert_eq!(num(&report, "params.block_size"), 4096.0);
    let ops = num(&report, "params.ops");
    let files = num(&report, "params.small_files");
    assert!(ops >= 1.0 && files >= 1.0);
    for test in ["randwrite_fsync", "randwrite", "randread"] {
        check_ops(&report, test, ops);
    }
    for test in ["small_files", "stat", "unlink"] {
        check_ops(&report, test, files);
    }
    let seq_size = num(&report, "params.seq_size");
    assert_eq!(num(&report, "results.seqwrite_fsync.bytes"), seq_size);
    let mbps = num(&report, "results.seqwrite_fsync.mb_per_s");
    assert!(mbps > 0.0 && mbps.is_finite(), "seqwrite MB/s {mbps}");
    assert!(num(&report, "results.seqwrite_fsync.fsync_seconds") >= 0.0);
    let listings = num(&report, "results.readdir.listings");
    assert_eq!(listings, num(&report, "params.readdir_passes"));
    assert_eq!(num(&report, "results.readdir.entries"), listings * files);
    assert!(num(&report, "results.readdir.entries_per_s") > 0.0);
    assert!(
        report["fs_type"].as_str().is_some_and(|t| !t.is_empty()),
        "no fs_type: {report:#}"
    );
    assert!(
        entries(dir.path()).is_empty(),
        "bench left files behind: {:?}",
        entries(dir.path())
    );

    // The table: every test and every percentile, and again nothing left behind.
    fs::write(dir.path().join("mine"), b"not the benchmark's").unwrap();
    let out = bench_quick(dir.path(), &["--ops", "16"]);
    out.assert_success();
    for word in [
        "randwrite 4 KiB + fsync",
        "randwrite 4 KiB",
        "randread 4 KiB",
        "create+write 4 KiB+close",
        "stat",
        "unlink",
        "seqwrite 4 MiB",
        "MB/s",
        "readdir of 64 entries",
        "p50",
        "p90",
        "p99",
        "p99.9",
    ] {
        assert!(out.stdout.contains(word), "no {word:?} in the table: {out}");
    }
    assert!(
        out.stderr.is_empty(),
        "progress on stderr that is not a terminal: {out}"
    );
    assert_eq!(entries(dir.path()), ["mine"]);
}

#[test]
fn bench_refuses_bad_directories_and_flags() {
    let dir = temp_dir("bench-bad");
    let missing = dir.path().join("missing");
    bench_quick(&missing, &[]).assert_clean_failure(&["does not exist"]);
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    bench_quick(&file, &[]).assert_clean_failure(&["not a directory"]);
    // A directory nobody may create files in (as root: /proc).
    let read_only = if fuse_available() {
        PathBuf::from("/proc")
    } else {
        let d = dir.path().join("ro");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        d
    };
    bench_quick(&read_only, &[]).assert_clean_failure(&["not a writable directory"]);
    for bad in [
        ["--ops", "0"],
        ["--block-size", "0"],
        ["--runtime", "0"],
        ["--file-size", "1K"],
    ] {
        bench_quick(dir.path(), &bad).assert_clean_failure(&["invalid", "must be at least"]);
    }
    let left: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|e| e.starts_with(".spoolfs-bench"))
        .collect();
    assert!(left.is_empty(), "bench left {left:?} behind");
}

#[test]
fn config_file_keys_values_and_precedence() {
    let dir = temp_dir("config");
    let mnt = dir.path().join("no-such-mount-point");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    let mount = |config: &Path, extra: &[&str]| {
        let mut args = vec![
            os("mount"),
            mnt.as_os_str(),
            os("--config"),
            config.as_os_str(),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        spoolfs(&args)
    };

    let unknown = write(
        "unknown.toml",
        "max-staging = \"4G\"\nmax-stagin = \"4G\"\n",
    );
    let out = mount(&unknown, &[]);
    out.assert_clean_failure(&["unknown key \"max-stagin\""]);
    assert!(out.stderr.contains("unknown.toml"), "file not named: {out}");
    let snake = write("snake.toml", "max_staging = \"4G\"\n");
    mount(&snake, &[]).assert_clean_failure(&["did you mean \"max-staging\""]);
    let bad_toml = write("bad.toml", "max-staging = \n");
    mount(&bad_toml, &[]).assert_clean_failure(&["not valid toml"]);
    mount(&dir.path().join("absent.toml"), &[]).assert_clean_failure(&["cannot read config"]);
    let nested = write("nested.toml", "config = \"other.toml\"\n");
    mount(&nested, &[]).assert_clean_failure(&["cannot name another"]);

    // Values reach the flags' own parsers...
    let bad_value = write("bad-value.toml", "fuse-threads = 0\n");
    mount(&bad_value, &[]).assert_clean_failure(&["invalid value '0' for '--fuse-threads"]);
    // ...unless the command line sets the flag: then the file's value is not used, and the
    // mount gets as far as the (missing) mount point.
    mount(&bad_value, &["--fuse-threads", "2"]).assert_clean_failure(&["no-such-mount-point"]);
}

#[test]
fn config_file_mount() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let file_cache = vol.dir().join("cache-from-file");
    let config = vol.dir().join("mount.toml");
    fs::write(
        &config,
        format!(
            "# settings of this test volume\nread-only = true\nmax-staging = \"1G\"\n\
             upload-threads = 2\ncache-dir = \"{}\"\n",
            file_cache.display()
        ),
    )
    .unwrap();
    // Write something first, with an ordinary mount.
    let m = vol.mount();
    fs::write(m.join("hello"), b"from before\n").unwrap();
    m.unmount();

    let m = vol.mount_with(MountOptions {
        extra_args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    assert_eq!(fs::read(m.join("hello")).unwrap(), b"from before\n");
    let err = fs::write(m.join("new"), b"x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "read-only = true from the config file not applied: {err}"
    );
    // The test harness gives --cache-dir on the command line: it wins over the file's.
    assert!(
        !file_cache.exists(),
        "the file's cache-dir was used although the command line gave one"
    );
    m.unmount();
}

/// Unmounts (or at least detaches) `path` when dropped, so a failed assertion leaves no mount.
struct Unmounter<'a>(&'a Volume, PathBuf);

impl Drop for Unmounter<'_> {
    fn drop(&mut self) {
        if is_mounted(&self.1) {
            let _ = try_run(
                self.0.spoolfs().arg("umount").arg(&self.1),
                Duration::from_secs(60),
            );
        }
        if is_mounted(&self.1) {
            force_unmount(&self.1);
        }
    }
}

#[test]
fn fstab_helper_mounts_with_options() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let bin = vol.new_subdir("sbin");
    let helper = bin.join("mount.spoolfs");
    symlink(spoolfs_bin(), &helper).unwrap();
    let mnt = vol.new_subdir("mnt");
    let cache = vol.new_subdir("cache-fstab");
    let helper_cmd = |args: &[&OsStr]| {
        let mut cmd = command(&helper);
        cmd.env("XDG_DATA_HOME", vol.dir().join("xdg")).args(args);
        run(&mut cmd, T)
    };
    let options = format!(
        "rw,defaults,nofail,_netdev,noauto,x-systemd.automount,cache_dir={},max-staging=1G,\
         upload-threads=2,allow_other,writeback=true",
        cache.display()
    );

    // `mount.spoolfs META_URL DIR ARGS...`, as mount(8) runs it.
    let with_options = |args: &[&str]| {
        let mut all = vec![os(&vol.meta_url), mnt.as_os_str()];
        all.extend(args.iter().map(|a| os(a)));
        helper_cmd(&all)
    };
    // -f (fake): says what it would run, mounts nothing.
    let out = with_options(&["-f", "-o", &options]);
    out.assert_success();
    assert!(
        out.stderr
            .contains(&format!("--meta={} {}", vol.meta_url, mnt.display()))
            && out.stderr.contains("--allow-other")
            && out.stderr.contains("--max-staging=1G"),
        "{out}"
    );
    assert!(!is_mounted(&mnt));

    // Unknown options: exit 1 (mount(8): bad usage), nothing mounted.
    let out = helper_cmd(&[os("default"), mnt.as_os_str(), os("-o"), os("rw,bogus=1")]);
    out.assert_clean_failure(&["unknown mount option \"bogus\""]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(!is_mounted(&mnt));

    // What mount(8) runs for `mount -t spoolfs -o OPTIONS META_URL DIR`.
    let out = with_options(&["-n", "-o", &options, "-t", "spoolfs"]);
    let guard = Unmounter(&vol, mnt.clone());
    out.assert_success();
    assert!(
        is_mounted(&mnt),
        "mount.spoolfs returned 0, nothing mounted: {out}"
    );
    assert!(
        cache.join("spoolfs.log").is_file(),
        "cache_dir= option not used: {out}"
    );
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mnt.join("through-helper.bin"), &data).unwrap();
    fs::create_dir(mnt.join("dir")).unwrap();
    fs::write(mnt.join("dir/small"), b"small\n").unwrap();
    assert_eq!(fs::read(mnt.join("through-helper.bin")).unwrap(), data);
    vol.spoolfs_run([os("umount"), mnt.as_os_str()])
        .assert_success();
    assert!(!is_mounted(&mnt), "still mounted after spoolfs umount");
    drop(guard);

    // The data is in the volume: an ordinary mount reads it back.
    let m = vol.mount();
    assert_eq!(fs::read(m.join("through-helper.bin")).unwrap(), data);
    assert_eq!(fs::read(m.join("dir/small")).unwrap(), b"small\n");
    m.unmount();
}

#[test]
fn completions_print_scripts() {
    let out = spoolfs(&[os("completions"), os("bash")]);
    out.assert_success();
    assert!(
        out.stdout.contains("_spoolfs()") && out.stdout.contains("complete -F"),
        "not a bash completion script: {out}"
    );
    for word in ["mount", "bench", "--max-staging", "--config"] {
        assert!(out.stdout.contains(word), "bash completions lack {word}");
    }
    for shell in ["zsh", "fish"] {
        let out = spoolfs(&[os("completions"), os(shell)]);
        out.assert_success();
        assert!(out.stdout.contains("spoolfs"), "{shell}: {out}");
    }
    spoolfs(&[os("completions"), os("tcsh")]).assert_clean_failure(&["invalid value"]);
}

#[test]
fn install_helper_makes_links() {
    let dir = temp_dir("install-helper");
    let out = spoolfs(&[os("install-helper"), os("--dir"), dir.path().as_os_str()]);
    out.assert_success();
    let exe = fs::canonicalize(spoolfs_bin()).unwrap();
    for name in ["mount.spoolfs", "mount.fuse.spoolfs"] {
        let link = dir.path().join(name);
        assert_eq!(fs::canonicalize(&link).unwrap(), exe, "{name}");
    }
    // Again: nothing to do.
    let out = spoolfs(&[os("install-helper"), os("--dir"), dir.path().as_os_str()]);
    out.assert_success();
    assert!(out.stdout.contains("already there"), "{out}");
    // Someone else's file is not replaced without --force.
    let other = dir.path().join("mount.spoolfs");
    fs::remove_file(&other).unwrap();
    fs::write(&other, b"#!/bin/sh\n").unwrap();
    spoolfs(&[os("install-helper"), os("--dir"), dir.path().as_os_str()])
        .assert_clean_failure(&["--force"]);
    spoolfs(&[
        os("install-helper"),
        os("--dir"),
        dir.path().as_os_str(),
        os("--force"),
    ])
    .assert_success();
    assert_eq!(fs::canonicalize(&other).unwrap(), exe);
    let missing = dir.path().join("missing");
    spoolfs(&[os("install-helper"), os("--dir"), missing.as_os_str()])
        .assert_clean_failure(&["not a directory"]);
}
