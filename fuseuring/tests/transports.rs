//! Both transports serving the in-memory file system, driven through the kernel by another
//! thread: files written, read back byte for byte, listed, renamed and removed.
//!
//! Needs root and /dev/fuse (and, for the io_uring cases, a kernel with FUSE over
//! io_uring); without them each test says so loudly and returns. The io_uring cases set the
//! fuse module's `enable_uring` for their mount and restore its previous value.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use spoolfs_fuseuring::memfs::MemFs;
use spoolfs_fuseuring::mount::{UringSupport, set_enable_uring, uring_support};
use spoolfs_fuseuring::{Config, Error, Transport, TransportChoice};

/// The tests change a kernel-wide switch: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why FUSE tests cannot run here, if they cannot.
fn fuse_missing() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mount(2) needs CAP_SYS_ADMIN)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    None
}

macro_rules! require_fuse {
    ($name:expr) => {
        if let Some(why) = fuse_missing() {
            eprintln!("\n!!!!! SKIPPED {}: {why} !!!!!\n", $name);
            return;
        }
    };
}

macro_rules! require_uring {
    ($name:expr) => {
        if uring_support() == UringSupport::Missing {
            eprintln!(
                "\n!!!!! SKIPPED {}: the kernel has no FUSE over io_uring (Linux 6.14+) !!!!!\n",
                $name
            );
            return;
        }
    };
}

/// Sets `enable_uring` for the guard's life, then puts back what was there.
struct EnableUring {
    before: bool,
}

impl EnableUring {
    fn set(on: bool) -> Self {
        let before = set_enable_uring(on).expect("write enable_uring");
        EnableUring { before }
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        set_enable_uring(self.before).expect("restore enable_uring");
    }
}

fn config(transport: TransportChoice) -> Config {
    Config {
        transport,
        ..Config::default()
    }
}

fn memfs() -> Arc<MemFs> {
    Arc::new(MemFs::new(Duration::from_secs(1), Duration::from_secs(1)))
}

/// Deterministic bytes that differ per file and per position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect()
}

/// The workload, run on another thread than the one serving (and the test's own).
fn exercise(root: &Path) {
    let dir = root.join("d");
    fs::create_dir(&dir).expect("mkdir");

    // Small files, each with its own content.
    let mut expected = BTreeSet::new();
    for i in 0..200u64 {
        let name = format!("f{i}");
        fs::write(dir.join(&name), pattern(i, (i as usize * 37) % 3000)).expect("write small");
        expected.insert(OsString::from(name));
    }
    // A file larger than one write request (128 KiB), and one rewritten in the middle.
    let big = pattern(1000, 700 * 1024 + 123);
    fs::write(dir.join("big"), &big).expect("write big");
    expected.insert("big".into());
    let mut patched = pattern(2000, 300 * 1024);
    {
        let mut f = fs::File::create(dir.join("patched")).expect("create patched");
        f.write_all(&patched).expect("write patched");
        let hole = pattern(2001, 5000);
        f.write_all_at(&hole, 100_000).expect("pwrite patched");
        patched[100_000..105_000].copy_from_slice(&hole);
        f.set_len(250_000).expect("truncate patched");
        patched.truncate(250_000);
        f.sync_all().expect("fsync");
    }
    expected.insert("patched".into());

    for i in 0..200u64 {
        let got = fs::read(dir.join(format!("f{i}"))).expect("read small");
        assert_eq!(got, pattern(i, (i as usize * 37) % 3000), "content of f{i}");
    }
    assert!(
        fs::read(dir.join("big")).expect("read big") == big,
        "content of big"
    );
    assert!(
        fs::read(dir.join("patched")).expect("read patched") == patched,
        "content of patched"
    );
    assert_eq!(
        fs::metadata(dir.join("big")).expect("stat").size(),
        big.len() as u64
    );
    assert_eq!(names(&dir), expected, "listing of d");

    // Reading from an offset.
    let mut f = fs::File::open(dir.join("big")).expect("open big");
    f.seek(SeekFrom::Start(200_000)).expect("seek");
    let mut part = vec![0u8; 10_000];
    f.read_exact(&mut part).expect("read part");
    assert_eq!(part, big[200_000..210_000]);

    // Rename, and a file unlinked while open stays readable through its handle.
    fs::rename(dir.join("f0"), dir.join("renamed")).expect("rename");
    expected.remove(&OsString::from("f0"));
    expected.insert("renamed".into());
    assert_eq!(
        fs::read(dir.join("renamed")).expect("read renamed"),
        pattern(0, 0)
    );
    fs::remove_file(dir.join("big")).expect("unlink big while open");
    expected.remove(&OsString::from("big"));
    let mut rest = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut rest).expect("read unlinked");
    assert!(rest == big, "content of the unlinked, still open file");
    drop(f);

    // Unlink every other small file.
    for i in (1..200u64).step_by(2) {
        fs::remove_file(dir.join(format!("f{i}"))).expect("unlink");
        expected.remove(&OsString::from(format!("f{i}")));
    }
    assert_eq!(names(&dir), expected, "listing after unlinks");
    assert!(matches!(
        fs::read(dir.join("f1")).map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOENT))
    ));

    // A non-empty directory cannot go; an emptied one can.
    let err = fs::remove_dir(&dir).expect_err("rmdir of a non-empty directory");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    for name in &expected {
        fs::remove_file(dir.join(name)).expect("unlink rest");
    }
    fs::remove_dir(&dir).expect("rmdir");
    assert!(names(root).is_empty(), "root is empty at the end");
}

/// Mounts over `choice`, checks it runs `expected`, runs the workload from another thread,
/// unmounts; returns (requests through the ring, through /dev/fuse, answered through it).
fn mount_and_exercise(choice: TransportChoice, expected: Transport) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().to_path_buf();
    let root_dev = fs::metadata(&mountpoint).expect("stat").dev();
    let session = spoolfs_fuseuring::mount(memfs(), &mountpoint, &config(choice)).expect("mount");
    assert_eq!(session.transport(), expected);
    assert_ne!(
        fs::metadata(&mountpoint).expect("stat mount").dev(),
        root_dev,
        "mounted"
    );
    let stats = session.stats();
    let root = mountpoint.clone();
    let worker = std::thread::spawn(move || exercise(&root));
    let result = worker.join();
    session.unmount().expect("unmount");
    assert_eq!(
        fs::metadata(&mountpoint).expect("stat after").dev(),
        root_dev,
        "unmounted"
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    (
        stats
            .ring_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .dev_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        stats.dev_replies.load(std::sync::atomic::Ordering::Relaxed),
    )
}

#[test]
fn dev_transport_serves_files_byte_exact() {
    require_fuse!("dev_transport_serves_files_byte_exact");
    let _serial = serial();
    let (ring, dev, replies) = mount_and_exercise(TransportChoice::Dev, Transport::Dev);
    assert_eq!(ring, 0, "no ring on the dev transport");
    assert!(
        replies > 400,
        "requests answered through /dev/fuse: {replies}"
    );
    assert!(dev >= replies);
}

#[test]
fn uring_transport_serves_files_byte_exact_and_answers_only_through_the_ring() {
    let name = "uring_transport_serves_files_byte_exact_and_answers_only_through_the_ring";
    require_fuse!(name);
    require_uring!(name);
    let _serial = serial();
    let before = uring_support();
    {
        let _uring = EnableUring::set(true);
        let (ring, _dev, replies) = mount_and_exercise(TransportChoice::Uring, Transport::Uring);
        assert!(ring > 400, "requests through the ring: {ring}");
        // Only FORGET, BATCH_FORGET and INTERRUPT (never answered) may use /dev/fuse.
        assert_eq!(replies, 0, "requests answered through /dev/fuse");
    }
    assert_eq!(uring_support(), before, "enable_uring restored");
}

#[test]
fn uring_switched_off_is_a_clear_error_and_auto_falls_back_to_dev() {
    let name = "uring_switched_off_is_a_clear_error_and_auto_falls_back_to_dev";
    require_fuse!(name);
    require_uring!(name);
    let _serial = serial();
    let _uring = EnableUring::set(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = spoolfs_fuseuring::mount(memfs(), dir.path(), &config(TransportChoice::Uring))
        .err()
        .expect("uring refused while enable_uring is N");
    assert!(matches!(err, Error::UringUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("enable_uring is N"), "{err}");
    assert!(names(dir.path()).is_empty(), "nothing left mounted");

    let session = spoolfs_fuseuring::mount(memfs(), dir.path(), &config(TransportChoice::Auto))
        .expect("auto mounts");
    assert_eq!(session.transport(), Transport::Dev);
    fs::write(dir.path().join("x"), b"over /dev/fuse").expect("write");
    assert_eq!(
        fs::read(dir.path().join("x")).expect("read"),
        b"over /dev/fuse"
    );
    session.unmount().expect("unmount");
}

#[test]
fn a_missing_mountpoint_is_an_error_not_a_panic() {
    let err = spoolfs_fuseuring::mount(
        memfs(),
        Path::new("/nonexistent/fuseuring"),
        &config(TransportChoice::Dev),
    )
    .err()
    .expect("refused");
    assert!(matches!(err, Error::MountPoint(..)), "{err:?}");
}

/// Unmounted by someone else (umount(8)), the session's threads all stop by themselves.
fn external_unmount_ends_the_session(choice: TransportChoice, expected: Transport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = spoolfs_fuseuring::mount(memfs(), dir.path(), &config(choice)).expect("mount");
    assert_eq!(session.transport(), expected);
    fs::write(dir.path().join("x"), b"x").expect("write");
    spoolfs_fuseuring::mount::unmount(dir.path()).expect("unmount from outside");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        session.wait();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("every thread stopped within 20 s of the unmount");
}

#[test]
fn dev_session_ends_when_unmounted_from_outside() {
    require_fuse!("dev_session_ends_when_unmounted_from_outside");
    let _serial = serial();
    external_unmount_ends_the_session(TransportChoice::Dev, Transport::Dev);
}

#[test]
fn uring_session_ends_when_unmounted_from_outside() {
    let name = "uring_session_ends_when_unmounted_from_outside";
    require_fuse!(name);
    require_uring!(name);
    let _serial = serial();
    let _uring = EnableUring::set(true);
    external_unmount_ends_the_session(TransportChoice::Uring, Transport::Uring);
}
