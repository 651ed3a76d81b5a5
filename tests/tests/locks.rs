//! File locks through FUSE: `flock` and `fcntl` byte-range locks exclude other processes on
//! one mount of a default volume, and other mounts of one PostgreSQL volume (separate
//! processes and cache directories, as separate nodes); `F_GETLK` reports the lock in the way;
//! a killed waiter takes nothing; a lock held by a mount killed with SIGKILL is released once
//! its session times out.
//!
//! The lock holders are forked children (POSIX locks belong to a process); the other side is
//! this test process.

use spoolfs_tests::*;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
enum How {
    /// `flock(LOCK_EX)`.
    Flock,
    /// `fcntl(F_SETLKW)` of a write lock over `start`, `len` bytes.
    Posix { start: i64, len: i64 },
}

/// A forked child that takes a lock on a file and holds it until released (killed when
/// dropped).
struct Holder {
    pid: libc::pid_t,
    /// The child writes one status byte here once it holds the lock (0) or failed.
    ready: File,
    /// Written to once to let the child go.
    release: File,
}

/// Forks a child that opens `path` and takes the lock `how`, waiting for it.
fn fork_holder(path: &Path, how: How) -> Holder {
    let (ready, release) = (pipe(), pipe());
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child only makes async-signal-safe calls (open, flock/fcntl, read, write,
    // _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            let fd = libc::open(c_path.as_ptr(), libc::O_RDWR);
            let status: u8 = if fd < 0 {
                1
            } else {
                let r = match how {
                    How::Flock => libc::flock(fd, libc::LOCK_EX),
                    How::Posix { start, len } => {
                        let fl = flock_struct(libc::F_WRLCK, start, len);
                        libc::fcntl(fd, libc::F_SETLKW, &fl)
                    }
                };
                if r == 0 { 0 } else { 2 }
            };
            libc::write(ready.1, (&status as *const u8).cast(), 1);
            let mut b = 0u8;
            libc::read(release.0, (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    unsafe {
        libc::close(ready.1);
        libc::close(release.0);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: these ends are ours alone from here.
    Holder {
        pid,
        ready: unsafe { File::from_raw_fd(ready.0) },
        release: unsafe { File::from_raw_fd(release.1) },
    }
}

/// Forks a child that takes the lock `how` on `path`; returns once it holds it.
fn hold(path: &Path, how: How) -> Holder {
    let h = fork_holder(path, how);
    assert_eq!(
        h.wait_locked(Duration::from_secs(30)),
        Some(0),
        "the child could not take {how:?}"
    );
    h
}

impl Holder {
    /// The child's status byte (0: it holds the lock; 255: it died first), or None if it is
    /// still waiting after `within`.
    fn wait_locked(&self, within: Duration) -> Option<u8> {
        let mut pfd = libc::pollfd {
            fd: self.ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let n = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as i32) };
        if n == 0 {
            return None;
        }
        let mut status = [255u8];
        let r = unsafe { libc::read(self.ready.as_raw_fd(), status.as_mut_ptr().cast(), 1) };
        Some(if r == 1 { status[0] } else { 255 })
    }

    /// Lets the child go: it exits, and its lock goes with its last close.
    fn release(mut self) {
        use std::io::Write;
        self.release.write_all(b"x").unwrap();
        self.reap(Duration::from_secs(20));
    }

    fn reap(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut status = 0;
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid || r < 0 {
                self.pid = 0;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not exit within {within:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.pid > 0 {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let mut status = 0;
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// The tests of this file one at a time: a child forked by one test inherits every descriptor
/// the others hold open at that moment, and keeps their mounts busy until it exits.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FORKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FORKING.lock().unwrap_or_else(|e| e.into_inner())
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: all-zero is a valid flock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// `fcntl(F_SETLK)`: Ok, or the errno.
fn setlk(f: &File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

/// `fcntl(F_SETLKW)`.
fn setlkw(f: &File, typ: i32, start: i64, len: i64) -> Result<(), i32> {
    let fl = flock_struct(typ, start, len);
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

/// `fcntl(F_GETLK)` of a write lock over the range: the lock in the way (type, start, len,
/// pid), or None.
fn getlk(f: &File, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let mut fl = flock_struct(libc::F_WRLCK, start, len);
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0,
        "F_GETLK: {}",
        std::io::Error::last_os_error()
    );
    (fl.l_type as i32 != libc::F_UNLCK).then_some((
        fl.l_type as i32,
        fl.l_start,
        fl.l_len,
        fl.l_pid,
    ))
}

/// `flock(LOCK_EX | LOCK_NB)`: Ok, or the errno.
fn flock_nb(f: &File) -> Result<(), i32> {
    match unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

fn unflock(f: &File) {
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
}

/// Retries `f` until it is Ok or `within` has passed; returns how long it took.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> Result<(), i32>) -> Duration {
    let started = Instant::now();
    loop {
        match f() {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() < within => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{what}: still errno {e} after {within:?}"),
        }
    }
}

/// flock and fcntl exclusion between a child holding the lock through `holder_path` and this
/// process using `other_path` (the same file, on the same or another mount).
fn exclusion(holder_path: &Path, other_path: &Path, holder_is_local: bool) {
    // flock: the child's exclusive lock keeps ours out until it lets go.
    let child = hold(holder_path, How::Flock);
    let f = open_rw(other_path);
    assert_eq!(
        flock_nb(&f),
        Err(libc::EWOULDBLOCK),
        "flock over a held flock"
    );
    child.release();
    eventually(Duration::from_secs(5), "flock after release", || {
        flock_nb(&f)
    });
    // Now ours keeps a new child out: it waits (blocking flock) until we unlock.
    let c = fork_holder(holder_path, How::Flock);
    assert_eq!(
        c.wait_locked(Duration::from_millis(500)),
        None,
        "a blocking flock got a held lock"
    );
    unflock(&f);
    assert_eq!(c.wait_locked(Duration::from_secs(10)), Some(0));
    c.release();

    // fcntl byte ranges: the child write-locks bytes 100..200.
    let child = hold(
        holder_path,
        How::Posix {
            start: 100,
            len: 100,
        },
    );
    assert_eq!(setlk(&f, libc::F_WRLCK, 150, 10), Err(libc::EAGAIN));
    assert_eq!(setlk(&f, libc::F_RDLCK, 199, 1), Err(libc::EAGAIN));
    // Ranges that do not overlap are free.
    setlk(&f, libc::F_WRLCK, 0, 100).unwrap();
    setlk(&f, libc::F_RDLCK, 200, 0).unwrap();
    // F_GETLK names the lock in the way: type, range and (same node only) the holder's pid.
    let (typ, start, len, pid) = getlk(&f, 0, 0).expect("F_GETLK sees the child's lock");
    assert_eq!((typ, start, len), (libc::F_WRLCK, 100, 100));
    if holder_is_local {
        assert_eq!(pid, child.pid);
    } else {
        assert_eq!(pid, 0, "a lock of another node has no pid here");
    }
    assert_eq!(getlk(&f, 300, 10), None);
    // A waiter (F_SETLKW) gets the range once the child lets go.
    // (The clone goes back to this thread: closing any descriptor of the file would release
    // all of this process's POSIX locks on it.)
    let waiter = std::thread::spawn({
        let f = f.try_clone().unwrap();
        move || {
            let r = setlkw(&f, libc::F_WRLCK, 120, 10).map(|()| Instant::now());
            (r, f)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "F_SETLKW got a held range");
    // The waiter must get the range only after the child was told to let go (timed from here,
    // not from the waiter's own start, which a busy machine can delay).
    let releasing = Instant::now();
    child.release();
    let (acquired, f_clone) = waiter.join().unwrap();
    let acquired = acquired.expect("F_SETLKW");
    assert!(
        acquired >= releasing,
        "F_SETLKW returned {:?} before the holder let go",
        releasing - acquired
    );
    // Now our locks (0..130 write, 200.. read) keep a child out of bytes 125..126.
    let c = fork_holder(holder_path, How::Posix { start: 125, len: 1 });
    assert_eq!(c.wait_locked(Duration::from_millis(300)), None);
    // Unlock of a sub-range: 120..130 only; the child gets in.
    setlk(&f, libc::F_UNLCK, 120, 10).unwrap();
    assert_eq!(c.wait_locked(Duration::from_secs(10)), Some(0));
    c.release();
    // What is left of ours (0..100 write, 200.. read) still excludes; F_GETLK reports only
    // the locks of others, never this process's own.
    assert_eq!(
        fork_holder(holder_path, How::Posix { start: 99, len: 1 })
            .wait_locked(Duration::from_millis(300)),
        None
    );
    let child = hold(
        holder_path,
        How::Posix {
            start: 150,
            len: 10,
        },
    );
    assert_eq!(getlk(&f, 0, 0).map(|l| (l.1, l.2)), Some((150, 10)));
    drop(child);
    // Closing any descriptor of the file releases this process's POSIX locks.
    drop(f_clone);
    drop(f);
    let child = hold(holder_path, How::Posix { start: 0, len: 0 });
    child.release();
}

#[test]
fn flock_and_fcntl_exclude_processes_on_one_mount() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = Mount::of_new_volume(Backend::File);
    let path = m.join("locked");
    fs::write(&path, b"some bytes").unwrap();
    exclusion(&path, &path, true);

    // A waiter killed while it waits takes nothing: it dies promptly, and the range is free
    // once the holder lets go.
    let holder = hold(&path, How::Posix { start: 0, len: 0 });
    let mut waiter = fork_holder(&path, How::Posix { start: 0, len: 1 });
    assert_eq!(waiter.wait_locked(Duration::from_millis(300)), None);
    unsafe { libc::kill(waiter.pid, libc::SIGKILL) };
    waiter.reap(Duration::from_secs(5));
    holder.release();
    let f = open_rw(&path);
    setlk(&f, libc::F_WRLCK, 0, 0).expect("the killed waiter left a lock behind");
    drop(f);
    m.unmount();
}

#[test]
fn locks_exclude_across_two_mounts_of_a_postgres_volume_and_die_with_their_session() {
    require_fuse!();
    let _alone = one_at_a_time();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    let a = vol.mount_node("a", &["--session-timeout", "3"]);
    let b = vol.mount_node("b", &[]);
    fs::write(a.join("shared"), b"locked across nodes").unwrap();
    // B sees the new name within the entry cache lifetime.
    eventually(Duration::from_secs(5), "the file on B", || {
        fs::metadata(b.join("shared")).map(|_| ()).map_err(|_| 0)
    });
    exclusion(&a.join("shared"), &b.join("shared"), false);
    // And the other way round: a lock taken on B keeps A out.
    let child = hold(&b.join("shared"), How::Flock);
    assert_eq!(
        flock_nb(&open_rw(&a.join("shared"))),
        Err(libc::EWOULDBLOCK)
    );
    child.release();

    // A lock held through A when A's mount process is killed: B stays out while A's session
    // is live, and gets in once A's heartbeat is older than its timeout (3 s).
    let holder = hold(&a.join("shared"), How::Posix { start: 0, len: 0 });
    let f = open_rw(&b.join("shared"));
    assert_eq!(setlk(&f, libc::F_WRLCK, 0, 1), Err(libc::EAGAIN));
    a.kill9();
    let killed = Instant::now();
    assert_eq!(
        setlk(&f, libc::F_WRLCK, 0, 1),
        Err(libc::EAGAIN),
        "the lock of a killed mount went before its session timed out"
    );
    eventually(Duration::from_secs(20), "the dead mount's lock", || {
        setlk(&f, libc::F_WRLCK, 0, 1)
    });
    // (When depends on A's last heartbeat: up to the 3 s timeout, in whole seconds.)
    eprintln!(
        "the killed mount's lock was released {:?} after the kill",
        killed.elapsed()
    );
    drop(holder);
    drop(f);
    b.unmount();
}

/// POSIX: closing any descriptor of a file releases the process's fcntl locks on it, one
/// opened only for reading too. On an exclusive volume the kernel keeps the locks (and such a
/// close sends spoolfs no FLUSH); on a shared volume spoolfs releases them at the FLUSH.
#[test]
fn closing_a_read_only_descriptor_releases_the_process_locks() {
    require_fuse!();
    let _alone = one_at_a_time();
    let m = Mount::of_new_volume(Backend::File);
    let path = m.join("locked");
    fs::write(&path, b"some bytes").unwrap();
    let f = open_rw(&path);
    setlk(&f, libc::F_WRLCK, 0, 0).unwrap();
    let waiter = fork_holder(&path, How::Posix { start: 0, len: 1 });
    assert_eq!(
        waiter.wait_locked(Duration::from_millis(300)),
        None,
        "a child got a range this process holds"
    );
    drop(File::open(&path).unwrap());
    assert_eq!(
        waiter.wait_locked(Duration::from_secs(10)),
        Some(0),
        "closing a read-only descriptor left the lock in place"
    );
    waiter.release();
    drop(f);
    m.unmount();
}
