//! `spoolfs mount --metrics ADDR` and `spoolfs status`: the documented metrics are served, move
//! as a workload runs (staged bytes rise, then fall to zero after `spoolfs sync`), and the
//! status the control socket reports agrees with them; the socket is owner-only; a bad
//! metrics address fails the mount before anything is mounted; an idle mount gives back the
//! memory its last large write kept.

use spoolfs_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

const FILES: usize = 16;
const FILE_SIZE: usize = 64 << 10;

/// One scrape: every sample by its series (`name{labels}`), and the metric families (`# TYPE`).
struct Scrape {
    samples: BTreeMap<String, f64>,
    families: BTreeSet<String>,
    text: String,
}

impl Scrape {
    fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of a series that must be there.
    fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{}", self.text))
    }

    /// The one series of `name` (with labels) and its value.
    fn labelled(&self, name: &str) -> (&str, f64) {
        let prefix = format!("{name}{{");
        let hits: Vec<_> = self
            .samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        assert_eq!(hits.len(), 1, "series of {name}: {hits:?}");
        (hits[0].0.as_str(), *hits[0].1)
    }
}

/// `GET /metrics` with a plain TCP stream.
fn scrape(addr: &str) -> Scrape {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "scrape answered {head}");
    assert!(head.contains("text/plain"), "content type: {head}");
    let mut samples = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value: {line}"));
            samples.insert(series.to_string(), v);
        }
    }
    Scrape {
        samples,
        families,
        text: body.to_string(),
    }
}

/// The metric names of the table in docs/METRICS.md.
fn documented() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/METRICS.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `spoolfs_"))
        .map(|rest| format!("spoolfs_{}", rest.split('`').next().unwrap()))
        .collect();
    assert!(names.len() > 20, "docs/METRICS.md lists {names:?}");
    names
}

fn status_json(vol: &Volume, mp: &Path) -> serde_json::Value {
    let out = vol.spoolfs_run([OsStr::new("status"), mp.as_os_str(), OsStr::new("--json")]);
    out.assert_success();
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not one JSON object ({e}): {out}"))
}

fn u(v: &serde_json::Value, field: &str) -> u64 {
    v["engine"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no engine.{field} in {v}"))
}

/// Mounts `vol` with `--metrics` on a free loopback port and `extra` arguments; the mount and
/// the metrics address.
fn mount_with_metrics<'v>(vol: &'v Volume, extra: &[&str]) -> (Mount<'v>, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut extra_args = vec!["--metrics".to_string(), addr.clone()];
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    let m = vol.mount_with(MountOptions {
        extra_args,
        ..Default::default()
    });
    (m, addr)
}

/// On an exclusive volume a descriptor opened only for reading is closed without a FLUSH
/// request (the kernel keeps the file locks, so there is nothing to release); a descriptor
/// that wrote still flushes at its close.
#[test]
fn read_only_closes_send_no_flush_on_an_exclusive_volume() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let (m, addr) = mount_with_metrics(&vol, &[]);
    let flushes = || {
        scrape(&addr)
            .value("spoolfs_fuse_ops_total{op=\"flush\"}")
            .unwrap_or(0.0)
    };
    let path = m.join("f");
    fs::write(&path, b"written").unwrap();
    let before = flushes();
    assert!(before >= 1.0, "the write's close sent no FLUSH");
    for _ in 0..20 {
        assert_eq!(fs::read(&path).unwrap(), b"written");
    }
    assert_eq!(flushes(), before, "read-only closes sent FLUSH requests");
    fs::write(&path, b"again").unwrap();
    assert!(flushes() > before, "a written file's close sent no FLUSH");
    m.unmount();
}

/// A mount idle for `--release-memory-after` frees the buffers its last large write kept,
/// and `spoolfs status` shows the daemon's memory before and after; the file is intact.
#[test]
fn an_idle_mount_gives_back_the_memory_of_a_large_write() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    let m = vol.mount_with(MountOptions {
        extra_args: vec!["--release-memory-after".into(), "2".into()],
        ..Default::default()
    });
    let data = random_bytes(7, 48 << 20);
    let path = m.join("ckpt");
    let mut f = fs::File::create(&path).unwrap();
    for piece in data.chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    // The daemon's threads give their buffers back just after the appends; well within the
    // two seconds of quiet that free them.
    let mut busy = status_json(&vol, m.path());
    for _ in 0..10 {
        if u(&busy, "kept_buffer_bytes") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        busy = status_json(&vol, m.path());
    }
    assert!(u(&busy, "kept_buffer_bytes") > 0, "nothing kept: {busy}");
    assert!(u(&busy, "resident_bytes") > u(&busy, "kept_buffer_bytes"));
    let text = vol.spoolfs_run([OsStr::new("status"), m.path().as_os_str()]);
    assert!(text.stdout.contains("memory:"), "{text}");

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let idle = loop {
        let st = status_json(&vol, m.path());
        if u(&st, "kept_buffer_bytes") == 0 || std::time::Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        u(&idle, "kept_buffer_bytes"),
        0,
        "still kept after idling: {idle}"
    );
    assert!(fs::read(&path).unwrap() == data, "the file changed");
    m.unmount();
}

#[test]
fn metrics_and_status_follow_a_workload() {
    require_fuse!();
    let vol = Volume::new(Backend::File);
    // A long upload delay keeps the small files staged until `spoolfs sync`.
    let (m, addr) = mount_with_metrics(&vol, &["--upload-delay", "600"]);

    // Before anything is written: served, documented, nothing staged.
    let s0 = scrape(&addr);
    assert_eq!(s0.get("spoolfs_staged_bytes"), 0.0);

    fs::create_dir(m.join("d")).unwrap();
    let mut total = 0u64;
    for i in 0..FILES {
        let data = random_bytes(i as u64, FILE_SIZE);
        fs::write(m.join(format!("d/f{i}")), &data).unwrap();
        total += data.len() as u64;
    }
    assert_eq!(
        fs::read(m.join("d/f3")).unwrap(),
        random_bytes(3, FILE_SIZE),
        "read back from the staging log"
    );

    // Staged: the gauges show it, the FUSE counters moved, nothing was PUT yet.
    let s1 = scrape(&addr);
    assert_eq!(s1.get("spoolfs_staged_bytes"), total as f64);
    assert_eq!(s1.get("spoolfs_staged_slices"), FILES as f64);
    assert_eq!(s1.get("spoolfs_upload_queue_slices"), FILES as f64);
    assert!(s1.get("spoolfs_oldest_staged_age_seconds") > 0.0);
    assert!(s1.get("spoolfs_staging_used_bytes") >= total as f64);
    assert!(s1.get(r#"spoolfs_fuse_ops_total{op="create"}"#) >= FILES as f64);
    assert!(s1.get(r#"spoolfs_fuse_ops_total{op="write"}"#) >= FILES as f64);
    assert!(s1.get(r#"spoolfs_fuse_ops_total{op="flush"}"#) >= FILES as f64);
    assert!(s1.get(r#"spoolfs_fuse_ops_total{op="read"}"#) >= 1.0);
    // One wait for the device per small file (at its close; its create does not wait), plus
    // a few for the mkdir, the id reservations and the read's access time.
    let waits =
        s1.get("spoolfs_namespace_log_waits_total") - s0.get("spoolfs_namespace_log_waits_total");
    let deferred = s1.get("spoolfs_namespace_log_deferred_total")
        - s0.get("spoolfs_namespace_log_deferred_total");
    assert_eq!(deferred, FILES as f64, "creates that did not wait");
    assert!(
        (FILES as f64..=FILES as f64 + 6.0).contains(&waits),
        "{waits} namespace-log waits for {FILES} small files"
    );
    assert_eq!(
        s1.value(r#"spoolfs_object_requests_total{op="put"}"#)
            .unwrap_or(0.0),
        0.0,
        "nothing uploaded before the sync"
    );
    let (info, one) = s1.labelled("spoolfs_mount_info");
    assert_eq!(one, 1.0);
    assert!(info.contains(r#"mode="writeback""#), "{info}");

    // The control socket says the same, and is owner-only.
    let st = status_json(&vol, m.path());
    assert_eq!(u(&st, "staged_bytes"), total);
    assert_eq!(u(&st, "staged_slices"), FILES as u64);
    assert_eq!(
        u(&st, "engine_threads") as f64,
        s1.get("spoolfs_engine_threads")
    );
    assert!(u(&st, "engine_threads") >= 1);
    let io_engine = st["engine"]["io_engine"].as_str().unwrap();
    assert!(
        info.contains(&format!(r#"io_engine="{io_engine}""#)),
        "{info} vs status io_engine {io_engine:?}"
    );
    assert_eq!(st["engine"]["mode"], "writeback");
    assert_eq!(
        u(&st, "cache_capacity_bytes") as f64,
        s1.get("spoolfs_cache_capacity_bytes")
    );
    assert!(
        st["engine"]["drain_eta_secs"].is_null(),
        "staged with nothing uploaded lately: no time to drain: {st}"
    );
    let socket = Path::new(st["control_socket"].as_str().expect("control_socket"));
    let meta = fs::metadata(socket).unwrap();
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of {}",
        socket.display()
    );
    let human = vol.spoolfs_run([OsStr::new("status"), m.path().as_os_str()]);
    human.assert_success();
    for needle in [
        "staged:",
        "upload rate:",
        "time to drain unknown",
        "cache:",
        "engine thread",
    ] {
        assert!(human.stdout.contains(needle), "{needle:?} in {human}");
    }

    // After the barrier: nothing staged, the uploads counted.
    run(
        vol.spoolfs().arg("sync").arg(m.path()),
        Duration::from_secs(60),
    )
    .assert_success();
    let s2 = scrape(&addr);
    assert_eq!(s2.get("spoolfs_staged_bytes"), 0.0);
    assert_eq!(s2.get("spoolfs_staged_slices"), 0.0);
    assert_eq!(s2.get("spoolfs_upload_queue_slices"), 0.0);
    assert_eq!(s2.get("spoolfs_uploaded_bytes_total"), total as f64);
    assert_eq!(s2.get("spoolfs_uploaded_slices_total"), FILES as f64);
    let puts = s2.get(r#"spoolfs_object_requests_total{op="put"}"#);
    assert!(puts >= 1.0, "PUTs: {puts}");
    assert!(s2.get(r#"spoolfs_object_bytes_total{op="put"}"#) >= total as f64);
    assert_eq!(
        s2.get(r#"spoolfs_object_request_duration_seconds_count{op="put"}"#),
        puts
    );
    let writes = s2.get(r#"spoolfs_fuse_ops_total{op="write"}"#);
    assert_eq!(
        s2.get(r#"spoolfs_fuse_op_duration_seconds_count{op="write"}"#),
        writes,
        "histogram and counter of FUSE writes"
    );
    assert_eq!(
        s2.get(r#"spoolfs_fuse_op_duration_seconds_bucket{op="write",le="+Inf"}"#),
        writes
    );
    assert!(s2.get(r#"spoolfs_fuse_op_duration_seconds_sum{op="write"}"#) > 0.0);
    assert!(s2.get(r#"spoolfs_fuse_ops_total{op="flush"}"#) >= FILES as f64);
    // The rate needs half a second of history; this test may be faster than that.
    let mut rate = s2.get("spoolfs_upload_rate_bytes_per_second");
    for _ in 0..20 {
        if rate > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rate = scrape(&addr).get("spoolfs_upload_rate_bytes_per_second");
    }
    assert!(rate > 0.0, "upload rate after the sync: {rate}");

    // Every documented metric is served (errors only once one happened), and nothing else.
    let docs = documented();
    let appears_later: BTreeSet<String> = ["spoolfs_object_errors_total".to_string()].into();
    let missing: Vec<_> = docs
        .difference(&s2.families)
        .filter(|n| !appears_later.contains(*n))
        .collect();
    assert!(missing.is_empty(), "documented but not served: {missing:?}");
    let undocumented: Vec<_> = s2.families.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/METRICS.md: {undocumented:?}"
    );

    let st = status_json(&vol, m.path());
    assert_eq!(u(&st, "staged_bytes"), 0);
    assert_eq!(u(&st, "staged_slices"), 0);
    assert_eq!(u(&st, "uploaded_bytes"), total);
    assert_eq!(st["engine"]["drain_eta_secs"].as_f64(), Some(0.0));
    assert!(st["engine"]["upload_rate_bytes_per_sec"].as_f64().unwrap() > 0.0);
    let objects_put = u(&st, "objects_put");
    assert!(
        objects_put >= 1 && objects_put as f64 <= puts,
        "engine objects_put {objects_put}, metrics PUTs {puts}"
    );

    // A second mount on the same metrics address, and one with a malformed address: clear
    // errors, nothing mounted.
    let mp2 = vol.new_subdir("mnt-busy");
    vol.mount_output(&mp2, &["--metrics", &addr])
        .assert_clean_failure(&["cannot listen for metrics"]);
    assert!(!is_mounted(&mp2));
    vol.mount_output(&mp2, &["--metrics", "not-an-address"])
        .assert_clean_failure(&["invalid metrics address"]);
    assert!(!is_mounted(&mp2));

    m.unmount();
}
