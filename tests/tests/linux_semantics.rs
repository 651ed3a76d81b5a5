//! What a Linux local file system does and a spoolfs mount must do too: files and directories
//! removed while open stay usable until closed; access times follow the mount's rule
//! (relatime, strictatime, noatime); file handles (`open_by_handle_at`) work across a
//! remount, as NFS re-export needs; fallocate beyond the free space is ENOSPC.

use spoolfs_tests::*;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

/// A mount whose attributes the kernel does not cache, so that `stat` shows what spoolfs has.
fn uncached_mount<'v>(v: &'v Volume, extra: &[&str]) -> Mount<'v> {
    let mut extra_args: Vec<String> = ["--attr-ttl", "0", "--entry-ttl", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    v.mount_with(MountOptions {
        extra_args,
        ..Default::default()
    })
}

fn fstat(fd: &impl AsRawFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid out-buffer; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn check(r: libc::c_int, what: &str) {
    assert_eq!(
        r,
        0,
        "{what}: {}",
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    );
}

fn open_dir(p: &Path) -> OwnedFd {
    let c = cstr(p);
    // SAFETY: a valid path; the returned fd is owned below.
    // O_CLOEXEC: processes other tests start meanwhile must not inherit it (and keep the mount
    // busy).
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just opened and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The names getdents finds in an open directory (from its start).
fn list_fd(fd: &OwnedFd) -> Vec<String> {
    // SAFETY: fdopendir takes a duplicate, which closedir closes.
    unsafe {
        let dup = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0);
        assert!(dup >= 0);
        let dir = libc::fdopendir(dup);
        assert!(!dir.is_null(), "fdopendir");
        libc::rewinddir(dir);
        let mut names = Vec::new();
        loop {
            *libc::__errno_location() = 0;
            let ent = libc::readdir(dir);
            if ent.is_null() {
                let err = *libc::__errno_location();
                assert!(
                    err == 0 || err == libc::ENOENT,
                    "readdir: {}",
                    errno_name(err)
                );
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr());
            let name = name.to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        libc::closedir(dir);
        names
    }
}

fn fset_xattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid name and buffer.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fget_xattr(fd: &impl AsRawFd, name: &str) -> std::io::Result<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid name and buffer.
    let r = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// fchmod, fchown, futimens and xattrs on an open descriptor, checked by fstat.
fn check_attr_calls(fd: &impl AsRawFd, what: &str) {
    let raw = fd.as_raw_fd();
    // SAFETY: plain syscalls on an open descriptor.
    unsafe {
        check(libc::fchmod(raw, 0o750), &format!("{what}: fchmod"));
        check(libc::fchown(raw, 1234, 5678), &format!("{what}: fchown"));
        let times = [
            libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: 2_000_000,
                tv_nsec: 7,
            },
        ];
        check(
            libc::futimens(raw, times.as_ptr()),
            &format!("{what}: futimens"),
        );
    }
    let st = fstat(fd).unwrap_or_else(|e| panic!("{what}: fstat after changes: {e}"));
    assert_eq!(st.st_mode & 0o7777, 0o750, "{what}: mode");
    assert_eq!((st.st_uid, st.st_gid), (1234, 5678), "{what}: owner");
    assert_eq!(
        (st.st_atime, st.st_mtime),
        (1_000_000, 2_000_000),
        "{what}: times"
    );
    fset_xattr(fd, "user.kept", b"yes").unwrap_or_else(|e| panic!("{what}: fsetxattr: {e}"));
    assert_eq!(
        fget_xattr(fd, "user.kept").unwrap_or_else(|e| panic!("{what}: fgetxattr: {e}")),
        b"yes"
    );
}

#[test]
fn open_but_removed() {
    require_fuse!();
    let v = Volume::new(Backend::File);
    let m = v.mount();

    // A directory removed with rmdir while open.
    let d = m.join("gone");
    fs::create_dir(&d).unwrap();
    let dfd = open_dir(&d);
    fs::remove_dir(&d).unwrap();
    let st = fstat(&dfd).expect("fstat of an open directory after rmdir");
    assert_eq!(st.st_nlink, 0, "link count of a removed directory");
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert!(
        list_fd(&dfd).is_empty(),
        "a removed directory lists nothing"
    );
    check_attr_calls(&dfd, "rmdir'ed directory");
    // Nothing can be created in it.
    let name = CString::new("child").unwrap();
    // SAFETY: valid fd and name.
    let r = unsafe { libc::mkdirat(dfd.as_raw_fd(), name.as_ptr(), 0o755) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOENT),
        "mkdir in a removed directory"
    );
    drop(dfd);

    // A directory replaced by a rename over it.
    let a = m.join("a");
    let b = m.join("b");
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("inside"), b"x").unwrap();
    let bfd = open_dir(&b);
    let b_ino = fstat(&bfd).unwrap().st_ino;
    fs::rename(&a, &b).unwrap();
    let st = fstat(&bfd).expect("fstat of an open directory replaced by rename");
    assert_eq!(st.st_ino, b_ino);
    assert_eq!(st.st_nlink, 0, "link count of a replaced directory");
    assert!(
        list_fd(&bfd).is_empty(),
        "a replaced directory lists nothing"
    );
    check_attr_calls(&bfd, "replaced directory");
    drop(bfd);
    assert_eq!(fs::read(b.join("inside")).unwrap(), b"x");

    // A file unlinked while open: read, write, ftruncate, fstat and the attribute calls.
    let f = m.join("file");
    fs::write(&f, b"hello world").unwrap();
    let mut file = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    fs::remove_file(&f).unwrap();
    assert_eq!(fstat(&file).unwrap().st_nlink, 0);
    let mut s = String::new();
    file.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world");
    file.write_all(b"!!").unwrap();
    file.set_len(5).unwrap();
    file.write_at(b"HELLO", 0).unwrap();
    file.sync_all().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut got = Vec::new();
    file.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"HELLO");
    assert_eq!(fstat(&file).unwrap().st_size, 5);
    check_attr_calls(&file, "unlinked file");
    drop(file);

    // A file replaced by a rename over it.
    fs::write(m.join("old"), b"old data").unwrap();
    fs::write(m.join("new"), b"new data").unwrap();
    let old = File::open(m.join("old")).unwrap();
    fs::rename(m.join("new"), m.join("old")).unwrap();
    assert_eq!(fstat(&old).unwrap().st_nlink, 0);
    assert_eq!(
        fs::read_to_string({
            let mut p = std::path::PathBuf::from("/proc/self/fd");
            p.push(old.as_raw_fd().to_string());
            p
        })
        .unwrap(),
        "old data"
    );
    drop(old);

    // Closed: everything removed is gone, the rest is as it was after a remount too.
    let mut names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "old"]);
    m.unmount();
    let m = v.mount();
    assert_eq!(fs::read(m.join("old")).unwrap(), b"new data");
    assert_eq!(fs::read(m.join("b/inside")).unwrap(), b"x");
    m.unmount();
    let cache = v.cache_dir().display().to_string();
    let out = v.spoolfs_run(["fsck", "--meta", v.meta_url.as_str(), "--cache-dir", &cache]);
    assert!(out.success(), "fsck after the removals: {out}");
}

/// atime and mtime of `p` in nanoseconds.
fn times_ns(p: &Path) -> (i128, i128) {
    let md = fs::metadata(p).unwrap();
    (
        md.atime() as i128 * 1_000_000_000 + md.atime_nsec() as i128,
        md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    )
}

/// Opens, reads all of and closes `p`.
fn read_file(p: &Path) {
    let mut buf = Vec::new();
    File::open(p).unwrap().read_to_end(&mut buf).unwrap();
    assert!(!buf.is_empty());
}

fn tick() {
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn access_times() {
    require_fuse!();
    let v = Volume::new(Backend::File);

    // relatime (the default).
    let m = uncached_mount(&v, &[]);
    let f = m.join("f");
    fs::write(&f, b"contents").unwrap();
    tick();
    let (a0, m0) = times_ns(&f);
    assert!(a0 <= m0);
    read_file(&f);
    let (a1, _) = times_ns(&f);
    assert!(
        a1 > a0,
        "relatime: the first read after a write moves atime"
    );
    tick();
    read_file(&f);
    read_file(&f);
    assert_eq!(
        times_ns(&f).0,
        a1,
        "relatime: later reads leave atime alone"
    );
    // A write through a handle kept open, then a read through it: the buffered write counts.
    let mut h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    tick();
    h.write_all(b"CON").unwrap();
    let mut buf = [0u8; 3];
    h.read_at(&mut buf, 0).unwrap();
    drop(h);
    let (a2, m2) = times_ns(&f);
    assert!(
        a2 > a1 && a2 >= m2,
        "relatime: a read after a write moves atime"
    );
    tick();
    read_file(&f);
    assert_eq!(times_ns(&f).0, a2, "relatime: a second read leaves it");
    // A change of attributes (ctime) counts too.
    fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    tick();
    read_file(&f);
    let a3 = times_ns(&f).0;
    assert!(a3 > a2, "relatime: a read after chmod moves atime");
    // Listing a directory leaves its atime alone (as `nodiratime`).
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("x"), b"x").unwrap();
    tick();
    let da0 = times_ns(&d).0;
    fs::read_dir(&d).unwrap().for_each(drop);
    assert_eq!(times_ns(&d).0, da0, "a listing leaves a directory's atime");
    m.unmount();

    // strictatime: every read.
    let m = uncached_mount(&v, &["--atime", "strictatime"]);
    let f = m.join("f");
    let mut last = times_ns(&f).0;
    for i in 0..3 {
        tick();
        read_file(&f);
        let now = times_ns(&f).0;
        assert!(now > last, "strictatime: read {i} moves atime");
        last = now;
    }
    m.unmount();

    // noatime: never, not even after a write.
    let m = uncached_mount(&v, &["--atime", "noatime"]);
    let f = m.join("f");
    fs::write(&f, b"rewritten").unwrap();
    let a = times_ns(&f).0;
    tick();
    read_file(&f);
    read_file(&f);
    assert_eq!(times_ns(&f).0, a, "noatime: reads leave atime alone");
    let opts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = opts
        .lines()
        .find(|l| l.contains(&format!(" {} ", m.path().display())))
        .expect("the mount in mountinfo");
    assert!(line.contains("noatime"), "mountinfo shows noatime: {line}");
    m.unmount();
}

/// `name_to_handle_at(AT_FDCWD, p)`: the handle bytes (with their header).
fn name_to_handle(p: &Path) -> Vec<u8> {
    const MAX: usize = 128;
    let mut buf = vec![0u8; std::mem::size_of::<libc::file_handle>() + MAX];
    let c = cstr(p);
    let mut mount_id = 0;
    // SAFETY: buf is large and aligned enough for a file_handle header plus MAX bytes.
    unsafe {
        let h = buf.as_mut_ptr() as *mut libc::file_handle;
        (*h).handle_bytes = MAX as u32;
        let r = libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), h, &mut mount_id, 0);
        assert_eq!(
            r,
            0,
            "name_to_handle_at {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    buf
}

fn open_by_handle(mount: &Path, handle: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
    let mfd = open_dir(mount);
    let mut h = handle.to_vec();
    // SAFETY: h holds a handle filled by name_to_handle_at.
    let fd = unsafe {
        libc::open_by_handle_at(
            mfd.as_raw_fd(),
            h.as_mut_ptr() as *mut libc::file_handle,
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[test]
fn file_handles() {
    require_fuse!();
    let v = Volume::new(Backend::File);
    let m = v.mount();
    fs::create_dir_all(m.join("d1/d2")).unwrap();
    fs::write(m.join("d1/d2/file"), b"by handle").unwrap();
    let file_handle = name_to_handle(&m.join("d1/d2/file"));
    let dir_handle = name_to_handle(&m.join("d1/d2"));

    // While the kernel knows the inodes.
    let fd = open_by_handle(m.path(), &file_handle, libc::O_RDONLY).expect("open_by_handle_at");
    let mut s = String::new();
    File::from(fd).read_to_string(&mut s).unwrap();
    assert_eq!(s, "by handle");

    // After a remount the kernel knows nothing: it finds them by their inode numbers.
    let mp = m.unmount();
    let m = v.mount_at(&mp);
    let fd = open_by_handle(m.path(), &file_handle, libc::O_RDWR)
        .expect("open_by_handle_at of a file after a remount");
    let mut f = File::from(fd);
    f.write_all(b"BY").unwrap();
    drop(f);
    assert_eq!(fs::read(m.join("d1/d2/file")).unwrap(), b"BY handle");
    let dfd = open_by_handle(m.path(), &dir_handle, libc::O_RDONLY | libc::O_DIRECTORY)
        .expect("open_by_handle_at of a directory after a remount");
    assert_eq!(list_fd(&dfd), ["file"]);
    // The directory is connected to its place in the tree ("..").
    let link = fs::read_link(format!("/proc/self/fd/{}", dfd.as_raw_fd())).unwrap();
    assert_eq!(link, m.join("d1/d2"));
    drop(dfd);

    // A removed file's handle is stale.
    fs::remove_file(m.join("d1/d2/file")).unwrap();
    let err = open_by_handle(m.path(), &file_handle, libc::O_RDONLY).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    m.unmount();
}

#[test]
fn fallocate_beyond_free_space() {
    require_fuse!();
    let m = Mount::of_new_volume(Backend::File);
    let p = m.join("f");
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o644)
        .open(&p)
        .unwrap();
    let free = {
        let st = statvfs(m.path()).unwrap();
        st.f_bavail * st.f_frsize
    };
    // SAFETY: plain syscalls on an open file.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(
        r,
        0,
        "a small fallocate: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
    for (mode, len) in [
        (0, free + (2 << 20)),
        (libc::FALLOC_FL_KEEP_SIZE, free + (2 << 20)),
        (0, free.saturating_mul(4)),
    ] {
        // SAFETY: as above.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, len as i64) };
        let err = std::io::Error::last_os_error();
        assert_eq!(r, -1, "fallocate of {len} bytes (mode {mode}) succeeded");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOSPC),
            "fallocate of {len} bytes (mode {mode}): {err}"
        );
    }
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20, "size unchanged");
    drop(f);
    m.unmount();
}
