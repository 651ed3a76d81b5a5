//! The I/O engines behind the staging log: io_uring and pwritev2, one instance per engine
//! thread, and a fault-injecting wrapper for tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

use super::buf::BufPool;

/// One positioned write. The buffer must stay alive and aligned until the call returns.
#[derive(Clone, Copy)]
pub(crate) struct WriteOp {
    pub fd: RawFd,
    pub offset: u64,
    pub ptr: *const u8,
    pub len: usize,
    /// Write with `RWF_DSYNC`: durable when it completes.
    pub dsync: bool,
}

/// What an engine thread needs from the device. Implementations are owned by one thread.
pub(crate) trait IoBackend: Send {
    /// Runs all writes (possibly concurrently) and returns one result per write, in order.
    /// A short write is an error (`EIO`).
    fn write_batch(&mut self, ops: &[WriteOp]) -> Vec<io::Result<()>>;
    /// Fills `buf` from `offset`.
    fn read(&mut self, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `fdatasync` of every fd (one device flush each on a pre-written file).
    fn datasync(&mut self, fds: &[RawFd]) -> io::Result<()>;
}

/// The segment-file operations that decide what a power cut leaves behind: making a segment
/// file (create, preallocate, write its header, zero-fill, sync, rename into place, sync the
/// directory), opening one, re-stamping it, removing a half-made one. The engine threads'
/// appends and flushes go through [`IoBackend`]; together the two are everything the staging
/// log does to its device, so a simulated device ([`crate::SimDevice`]) sees all of it.
pub(crate) trait SegmentFiles: Send + Sync {
    /// Creates (or truncates) `path` for writing.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Reserves `[0, len)` (`fallocate`): unwritten extents, which read as zeros.
    fn preallocate(&self, file: &File, len: u64) -> io::Result<()>;
    /// Sets the size (a sparse file where `fallocate` is unavailable).
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;
    fn write_at(&self, file: &File, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes `len` zero bytes from `offset`.
    fn zero_fill(&self, file: &File, offset: u64, len: u64) -> io::Result<()>;
    /// `fsync`: the file's data and size are on stable storage (not its name).
    fn sync(&self, file: &File) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// `fsync` of a directory: creates, renames and removes in it are on stable storage.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing segment for O_DIRECT reads and writes.
    fn open(&self, path: &Path) -> io::Result<File>;
    /// This boot of the machine: a restart since the log was last opened may have been a
    /// power cut (see [`crate::boots`]). `None` when it cannot be known.
    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

/// The real file system.
pub(crate) struct RealFiles;

impl SegmentFiles for RealFiles {
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    fn preallocate(&self, file: &File, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on an fd the caller owns.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as i64) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn write_at(&self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        file.write_all_at(data, offset)
    }

    fn zero_fill(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
    }
}

fn short(what: &str, done: usize, want: usize) -> io::Error {
    io::Error::other(format!("short {what}: {done} of {want} bytes"))
}

/// Plain system calls: `pwritev2` (with `RWF_DSYNC` when asked), `pread`, `fdatasync`.
pub(crate) struct PsyncBackend;

impl IoBackend for PsyncBackend {
    fn write_batch(&mut self, ops: &[WriteOp]) -> Vec<io::Result<()>> {
        ops.iter()
            .map(|op| {
                let iov = libc::iovec {
                    iov_base: op.ptr as *mut libc::c_void,
                    iov_len: op.len,
                };
                let flags = if op.dsync { libc::RWF_DSYNC } else { 0 };
                loop {
                    // SAFETY: iov points at op.len readable bytes the caller keeps alive.
                    let r = unsafe { libc::pwritev2(op.fd, &iov, 1, op.offset as i64, flags) };
                    if r < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(e);
                    }
                    if r as usize != op.len {
                        return Err(short("write", r as usize, op.len));
                    }
                    return Ok(());
                }
            })
            .collect()
    }

    fn read(&mut self, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the destination range is inside buf.
            let r = unsafe {
                libc::pread(
                    fd,
                    buf[done..].as_mut_ptr() as *mut libc::c_void,
                    buf.len() - done,
                    (offset + done as u64) as i64,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(short("read", done, buf.len()));
            }
            done += r as usize;
        }
        Ok(())
    }

    fn datasync(&mut self, fds: &[RawFd]) -> io::Result<()> {
        for &fd in fds {
            // SAFETY: plain syscall on an fd the caller owns.
            if unsafe { libc::fdatasync(fd) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// One io_uring per engine thread. Writes of a batch are all submitted with one
/// `io_uring_enter`; reads use `IORING_OP_READ`; flushes are `fdatasync(2)` (see `datasync`).
///
/// When the thread's [`BufPool`] is registered with the ring ([`UringBackend::register`]),
/// a write or read whose buffer lies inside one pool buffer is submitted as `WRITE_FIXED` /
/// `READ_FIXED` with that buffer's index (the kernel does not pin and map the pages per
/// I/O); any other buffer uses the plain opcodes.
pub(crate) struct UringBackend {
    ring: IoUring,
    /// The pool registered with `ring`. Declared after `ring` so that it is dropped after it:
    /// the registered memory stays mapped as long as the ring exists.
    pool: Option<Arc<BufPool>>,
    /// Tests: this many next waits fail after submitting.
    #[cfg(test)]
    pub(crate) fail_enters: u32,
}

const RING_ENTRIES: u32 = 256;

impl UringBackend {
    pub fn new() -> io::Result<UringBackend> {
        Ok(UringBackend {
            ring: IoUring::new(RING_ENTRIES)?,
            pool: None,
            #[cfg(test)]
            fail_enters: 0,
        })
    }

    /// Registers every buffer of `pool` with the ring (buffer index = pool index). Fails
    /// (and the backend goes on with plain opcodes) when the kernel refuses: locked-memory
    /// limit (`RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`), too many buffers, old kernel.
    pub fn register(&mut self, pool: Arc<BufPool>) -> io::Result<()> {
        if self.pool.is_some() {
            return Err(io::Error::other("a buffer pool is already registered"));
        }
        let iovecs = pool.iovecs();
        // SAFETY: the iovecs cover the pool's mapping, which stays mapped while the ring
        // exists (self.pool holds it and is dropped after self.ring).
        unsafe { self.ring.submitter().register_buffers(&iovecs) }?;
        self.pool = Some(pool);
        Ok(())
    }

    /// The registered pool and the index of its buffer holding `[ptr, ptr + len)`, if any.
    fn fixed(&self, ptr: *const u8, len: usize) -> Option<(&BufPool, u16)> {
        let pool = self.pool.as_deref()?;
        Some((pool, pool.index_of(ptr, len)?))
    }

    /// Pushes `entries`, waits for all completions and returns the raw results by index.
    fn run(&mut self, entries: Vec<io_uring::squeue::Entry>) -> io::Result<Vec<i32>> {
        let mut results = vec![0i32; entries.len()];
        for (chunk_no, chunk) in entries.chunks(RING_ENTRIES as usize).enumerate() {
            let base = chunk_no * RING_ENTRIES as usize;
            {
                let mut sq = self.ring.submission();
                for (i, e) in chunk.iter().enumerate() {
                    let e = e.clone().user_data((base + i) as u64);
                    // SAFETY: the buffers the entries point to outlive this call, which waits
                    // for every completion before returning.
                    unsafe { sq.push(&e) }.expect("submission queue has room for a chunk");
                }
            }
            // Every entry pushed is waited for and reaped, even after an error: one still in
            // flight would complete into a buffer the caller frees or reuses once this
            // returns, and its completion would be taken for one of the next batch's.
            let mut got = 0;
            let mut failed: Option<io::Error> = None;
            let mut retries = 0u32;
            while got < chunk.len() {
                match self.enter(chunk.len() - got) {
                    Ok(_) => retries = 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // EBUSY/EAGAIN: completions or memory to be freed first; anything
                        // else: the entries may still be in flight all the same. Back off
                        // and wait again; a stuck device makes the callers time out
                        // (`append_timeout`) and take another path, never reuse a buffer.
                        if retries == 0 && e.raw_os_error() != Some(libc::EBUSY) {
                            tracing::warn!(error = %e, "staging: io_uring wait failed; draining the batch before reporting it");
                        }
                        retries += 1;
                        if failed.is_none() && e.raw_os_error() != Some(libc::EBUSY) {
                            failed = Some(e);
                        }
                        std::thread::sleep(Duration::from_micros(100 << retries.min(10)));
                    }
                }
                for cqe in self.ring.completion() {
                    results[cqe.user_data() as usize] = cqe.result();
                    got += 1;
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(results)
    }

    /// Completions waiting in the ring (none between calls).
    #[cfg(test)]
    pub(crate) fn pending_completions(&mut self) -> usize {
        self.ring.completion().len()
    }

    /// Submits what is queued and waits for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_enters > 0 {
            // The failure the tests stage: the entries were submitted (in flight), then
            // the wait failed.
            self.fail_enters -= 1;
            self.ring.submit()?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.ring.submit_and_wait(want)
    }
}

impl IoBackend for UringBackend {
    fn write_batch(&mut self, ops: &[WriteOp]) -> Vec<io::Result<()>> {
        let entries = ops
            .iter()
            .map(|op| {
                let flags = if op.dsync { libc::RWF_DSYNC } else { 0 };
                let fd = types::Fd(op.fd);
                match self.fixed(op.ptr, op.len) {
                    Some((pool, index)) => {
                        pool.fixed_writes.fetch_add(1, Ordering::Relaxed);
                        opcode::WriteFixed::new(fd, op.ptr, op.len as u32, index)
                            .offset(op.offset)
                            .rw_flags(flags)
                            .build()
                    }
                    None => opcode::Write::new(fd, op.ptr, op.len as u32)
                        .offset(op.offset)
                        .rw_flags(flags)
                        .build(),
                }
            })
            .collect();
        match self.run(entries) {
            Ok(res) => res
                .iter()
                .zip(ops)
                .map(|(&r, op)| {
                    if r < 0 {
                        Err(io::Error::from_raw_os_error(-r))
                    } else if r as usize != op.len {
                        Err(short("write", r as usize, op.len))
                    } else {
                        Ok(())
                    }
                })
                .collect(),
            Err(e) => ops
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    fn read(&mut self, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let (ptr, len) = (rest.as_mut_ptr(), rest.len());
            let e = match self.fixed(ptr, len) {
                Some((pool, index)) => {
                    pool.fixed_reads.fetch_add(1, Ordering::Relaxed);
                    opcode::ReadFixed::new(types::Fd(fd), ptr, len as u32, index)
                        .offset(offset + done as u64)
                        .build()
                }
                None => opcode::Read::new(types::Fd(fd), ptr, len as u32)
                    .offset(offset + done as u64)
                    .build(),
            };
            let r = self.run(vec![e])?[0];
            if r < 0 {
                if r == -libc::EINTR || r == -libc::EAGAIN {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-r));
            }
            if r == 0 {
                return Err(short("read", done, buf.len()));
            }
            done += r as usize;
        }
        Ok(())
    }

    /// `fdatasync(2)` called directly: `IORING_OP_FSYNC` is always punted to an io-wq
    /// worker, which measured ~100 µs slower per flush here, and the thread waits for the
    /// flush anyway before it replies.
    fn datasync(&mut self, fds: &[RawFd]) -> io::Result<()> {
        PsyncBackend.datasync(fds)
    }
}

/// Faults to inject into every write and flush of a staging log (tests only, but public so
/// that the engine's own fault tests can use it). Writes are counted over all engine threads,
/// segment header writes of recycled segments included; "the nth write from now" is relative
/// to the count when the fault is armed. Everything can be re-armed at run time.
#[derive(Debug, Default)]
pub struct FaultConfig {
    writes: AtomicU64,
    fail_at: AtomicU64,
    torn_at: AtomicU64,
    torn_keep: AtomicU64,
    delay_us: AtomicU64,
    fail_flushes: AtomicBool,
    /// Every write whose number is a multiple of this fails (0: off).
    fail_every: AtomicU64,
    /// Every write whose number is a multiple of this is torn (0: off).
    tear_every: AtomicU64,
    armed: AtomicBool,
}

impl FaultConfig {
    pub fn new() -> Arc<FaultConfig> {
        Arc::new(FaultConfig::default())
    }

    /// Writes issued so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The `n`th write from now (1 = the next one) fails with `EIO` and writes nothing.
    pub fn fail_write(&self, n: u64) {
        self.fail_at.store(self.writes() + n, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The `n`th write from now writes only its first `keep` bytes (rounded down to 4 KiB),
    /// then fails with `EIO`: a torn write.
    pub fn tear_write(&self, n: u64, keep: u64) {
        self.torn_keep.store(keep & !4095, Ordering::SeqCst);
        self.torn_at.store(self.writes() + n, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Every write waits this long first (`Duration::ZERO` turns it off).
    pub fn delay_writes(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Every `n`th write fails with `EIO` (0 turns it off).
    pub fn fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Every `n`th write is torn after `keep` bytes (0 turns it off).
    pub fn tear_every(&self, n: u64, keep: u64) {
        self.torn_keep.store(keep & !4095, Ordering::SeqCst);
        self.tear_every.store(n, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Parses a fault plan such as `fail_every=7,tear_every=11,delay_us=500,fail_flushes`
    /// (the `SPOOLFS_STAGING_FAULTS` variable of test mounts).
    pub fn from_spec(spec: &str) -> Result<Arc<FaultConfig>, String> {
        let f = FaultConfig::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("fault {key:?} needs a number, got {value:?}"))
            };
            match key {
                "fail_every" => f.fail_every(num()?),
                "tear_every" => f.tear_every(num()?, 4096),
                "delay_us" => f.delay_writes(Duration::from_micros(num()?)),
                "fail_flushes" => f.fail_flushes(true),
                _ => return Err(format!("unknown fault {key:?}")),
            }
        }
        Ok(f)
    }

    /// Every flush fails with `EIO` while set.
    pub fn fail_flushes(&self, on: bool) {
        self.fail_flushes.store(on, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// Wraps a backend and applies a [`FaultConfig`].
pub(crate) struct FaultyBackend {
    pub inner: Box<dyn IoBackend>,
    pub faults: Arc<FaultConfig>,
}

/// Injected errors carry no raw errno; [`super::StagingError::io`] reports them as `EIO`.
fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl IoBackend for FaultyBackend {
    fn write_batch(&mut self, ops: &[WriteOp]) -> Vec<io::Result<()>> {
        let f = &self.faults;
        if !f.armed.load(Ordering::SeqCst) {
            f.writes.fetch_add(ops.len() as u64, Ordering::SeqCst);
            return self.inner.write_batch(ops);
        }
        let delay = f.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        ops.iter()
            .map(|op| {
                let n = f.writes.fetch_add(1, Ordering::SeqCst) + 1;
                let every = |a: &AtomicU64| {
                    let k = a.load(Ordering::SeqCst);
                    k > 0 && n.is_multiple_of(k)
                };
                if n == f.fail_at.load(Ordering::SeqCst) || every(&f.fail_every) {
                    return Err(eio("failed write"));
                }
                if n == f.torn_at.load(Ordering::SeqCst) || every(&f.tear_every) {
                    let keep = (f.torn_keep.load(Ordering::SeqCst) as usize).min(op.len);
                    if keep > 0 {
                        let part = WriteOp {
                            len: keep,
                            dsync: false,
                            ..*op
                        };
                        self.inner.write_batch(&[part]).pop().unwrap()?;
                    }
                    return Err(eio("torn write"));
                }
                if op.dsync && f.fail_flushes.load(Ordering::SeqCst) {
                    // The data reaches the device, the cache flush fails.
                    let plain = WriteOp {
                        dsync: false,
                        ..*op
                    };
                    self.inner.write_batch(&[plain]).pop().unwrap()?;
                    return Err(eio("failed flush (RWF_DSYNC write)"));
                }
                self.inner
                    .write_batch(std::slice::from_ref(op))
                    .pop()
                    .unwrap()
            })
            .collect()
    }

    fn read(&mut self, fd: RawFd, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read(fd, offset, buf)
    }

    fn datasync(&mut self, fds: &[RawFd]) -> io::Result<()> {
        if self.faults.fail_flushes.load(Ordering::SeqCst) {
            return Err(eio("failed flush"));
        }
        self.inner.datasync(fds)
    }
}
