//! A mounted, served file system: the INIT handshake, the transport's threads, unmounting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::abi::{self, Plain};
use crate::fs::Filesystem;
use crate::mount::{self, FuseDev, UringSupport};
use crate::{Error, dev, uring};

/// The transport asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// io_uring when the kernel offers it, else /dev/fuse (with a log line saying why).
    Auto,
    /// io_uring, or an error.
    Uring,
    /// /dev/fuse.
    Dev,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportChoice::Auto),
            "uring" => Ok(TransportChoice::Uring),
            "dev" => Ok(TransportChoice::Dev),
            _ => Err(format!("unknown transport {s:?} (auto, uring or dev)")),
        }
    }
}

/// The transport a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Uring,
    Dev,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Uring => "uring",
            Transport::Dev => "dev",
        })
    }
}

/// Mount and transport settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub transport: TransportChoice,
    /// Threads reading /dev/fuse in the dev transport.
    pub dev_threads: usize,
    /// Entries (requests in flight) per ring queue.
    pub ring_depth: usize,
    /// Largest write request, in bytes (a multiple of 4096, 4 KiB to 1 MiB).
    pub max_write: u32,
    /// Most bytes the kernel may read ahead (it may allow less).
    pub max_readahead: u32,
    /// Pin each ring queue's thread to its CPU.
    pub pin_queues: bool,
    pub allow_other: bool,
    /// Name shown as the mount's source; its type is `fuse.<subtype>`.
    pub fsname: String,
    /// The mount's type after `fuse.`; the fsname when `None`.
    pub subtype: Option<String>,
    /// mount(2) flags (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`, `MS_NOATIME`).
    pub mount_flags: libc::c_ulong,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transport: TransportChoice::Auto,
            dev_threads: 2,
            ring_depth: 2,
            max_write: 128 * 1024,
            max_readahead: u32::MAX,
            pin_queues: true,
            allow_other: false,
            fsname: "fuseuring".into(),
            subtype: None,
            mount_flags: libc::MS_NOSUID | libc::MS_NODEV,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), Error> {
        if self.dev_threads == 0 || self.dev_threads > 64 {
            return Err(Error::Config("dev threads: 1 to 64".into()));
        }
        if self.ring_depth == 0 || self.ring_depth > 256 {
            return Err(Error::Config("ring depth: 1 to 256".into()));
        }
        if !(4096..=1 << 20).contains(&self.max_write) || !self.max_write.is_multiple_of(4096) {
            return Err(Error::Config(
                "max write: a multiple of 4096 from 4096 to 1048576".into(),
            ));
        }
        let bad_name = |n: &str| n.is_empty() || n.contains([',', ' ', '\0']);
        if bad_name(&self.fsname) || self.subtype.as_deref().is_some_and(bad_name) {
            return Err(Error::Config(
                "fsname and subtype: non-empty, without commas or spaces".into(),
            ));
        }
        Ok(())
    }
}

/// Opcodes counted one by one in [`Stats::by_opcode`]; higher ones share the last slot.
pub const COUNTED_OPCODES: usize = 64;

/// Requests served, by the path they came through and by opcode.
#[derive(Debug)]
pub struct Stats {
    /// Through an io_uring queue.
    pub ring_requests: AtomicU64,
    /// Through read(2) on /dev/fuse (INIT not counted).
    pub dev_requests: AtomicU64,
    /// Of those, the ones answered (not FORGET, BATCH_FORGET or INTERRUPT).
    pub dev_replies: AtomicU64,
    /// Requests by opcode, both paths together.
    pub by_opcode: [AtomicU64; COUNTED_OPCODES],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ring_requests: AtomicU64::new(0),
            dev_requests: AtomicU64::new(0),
            dev_replies: AtomicU64::new(0),
            by_opcode: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    pub(crate) fn count_opcode(&self, opcode: u32) {
        let slot = (opcode as usize).min(COUNTED_OPCODES - 1);
        self.by_opcode[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// (opcode, requests) for every opcode seen, by opcode.
    pub fn opcode_counts(&self) -> Vec<(u32, u64)> {
        self.by_opcode
            .iter()
            .enumerate()
            .map(|(op, n)| (op as u32, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// (requests through the ring, requests through /dev/fuse).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ring_requests.load(Ordering::Relaxed),
            self.dev_requests.load(Ordering::Relaxed),
        )
    }
}

/// Unmounts a session's mount point; can be sent to another thread (a signal handler).
#[derive(Debug, Clone)]
pub struct Unmounter {
    mountpoint: PathBuf,
}

impl Unmounter {
    pub fn unmount(&self) -> std::io::Result<()> {
        mount::unmount(&self.mountpoint)
    }
}

/// Sends the kernel notifications about its caches (writes to /dev/fuse with `unique` 0),
/// whichever transport serves the requests.
#[derive(Debug, Clone)]
pub struct Notifier {
    dev: Arc<FuseDev>,
}

/// A file registered with the kernel as the backing file of passthrough opens (Linux 6.9+,
/// needs CAP_SYS_ADMIN); unregistered when dropped.
#[derive(Debug)]
pub struct BackingId {
    id: i32,
    dev: Arc<FuseDev>,
}

impl BackingId {
    /// The id an open reply names (`Opened::backing_id`).
    pub fn id(&self) -> i32 {
        self.id
    }
}

impl Drop for BackingId {
    fn drop(&mut self) {
        let id = self.id as u32;
        // SAFETY: the ioctl reads a u32 from a live local. A failure leaves the id registered
        // until the connection ends: nothing to do about it here.
        unsafe {
            libc::ioctl(
                self.dev.fd(),
                abi::FUSE_DEV_IOC_BACKING_CLOSE as _,
                &id as *const u32,
            )
        };
    }
}

impl Notifier {
    /// Drops the kernel's cached attributes of `ino`, and its cached pages from `offset` for
    /// `len` bytes (0: to the end; a negative `offset`: none). ENOENT: the kernel does not
    /// know the inode (nothing cached).
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> std::io::Result<()> {
        let body = abi::NotifyInvalInodeOut {
            ino,
            off: offset,
            len,
        };
        let header = abi::OutHeader {
            len: (size_of::<abi::OutHeader>() + size_of::<abi::NotifyInvalInodeOut>()) as u32,
            error: abi::FUSE_NOTIFY_INVAL_INODE,
            unique: 0,
        };
        self.dev.write_reply(&[header.as_bytes(), body.as_bytes()])
    }

    /// Registers `file` as a backing file for passthrough opens (the session must have been
    /// granted FUSE_PASSTHROUGH at INIT).
    pub fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        use std::os::fd::AsRawFd;
        let map = abi::BackingMap {
            fd: file.as_raw_fd(),
            ..Default::default()
        };
        // SAFETY: the ioctl reads a BackingMap from a live local.
        let id = unsafe {
            libc::ioctl(
                self.dev.fd(),
                abi::FUSE_DEV_IOC_BACKING_OPEN as _,
                &map as *const abi::BackingMap,
            )
        };
        if id < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BackingId {
            id,
            dev: self.dev.clone(),
        })
    }
}

/// A mounted file system being served. Dropping it unmounts and waits for the threads.
pub struct Session {
    mountpoint: PathBuf,
    /// The connection, for notifications.
    dev: FuseDev,
    transport: Transport,
    stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters that stay readable after the session ended.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// A notifier on this session's connection.
    pub fn notifier(&self) -> std::io::Result<Notifier> {
        Ok(Notifier {
            dev: Arc::new(self.dev.try_clone()?),
        })
    }

    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Unmounts and waits until every thread has stopped.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let result = mount::unmount(&self.mountpoint);
        self.join();
        result
    }

    /// Waits until the file system is unmounted (from anywhere) and every thread stopped.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = mount::unmount(&self.mountpoint);
            self.join();
        }
    }
}

/// Why io_uring cannot be used here, if it cannot (before mounting).
pub fn uring_unavailable() -> Option<String> {
    match mount::uring_support() {
        UringSupport::Enabled => {}
        UringSupport::Disabled => {
            return Some(format!(
                "{} is N (as root: echo Y > {})",
                mount::ENABLE_URING_PARAM,
                mount::ENABLE_URING_PARAM
            ));
        }
        UringSupport::Missing => {
            return Some(format!(
                "no {}: the kernel lacks FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)",
                mount::ENABLE_URING_PARAM
            ));
        }
    }
    uring::probe()
        .err()
        .map(|e| format!("cannot create an io_uring with 128-byte entries: {e}"))
}

/// Mounts `fs` on `mountpoint` and serves it on background threads.
pub fn mount<F: Filesystem>(
    fs: Arc<F>,
    mountpoint: &Path,
    config: &Config,
) -> Result<Session, Error> {
    config.validate()?;
    let mountpoint = mount::check_mountpoint(mountpoint)?;
    let mut want_uring = config.transport != TransportChoice::Dev;
    if want_uring && let Some(why) = uring_unavailable() {
        if config.transport == TransportChoice::Uring {
            return Err(Error::UringUnavailable(why));
        }
        eprintln!("fuseuring: FUSE over io_uring unavailable ({why}); serving over /dev/fuse");
        want_uring = false;
    }

    let dev = FuseDev::open()?;
    let subtype = config.subtype.as_deref().unwrap_or(&config.fsname);
    mount::mount(
        &dev,
        &mountpoint,
        &config.fsname,
        subtype,
        config.mount_flags,
        config.allow_other,
    )?;
    let fail = |e: Error| {
        let _ = mount::unmount(&mountpoint);
        e
    };
    let (offered_uring, granted) = answer_init(&dev, &*fs, config, want_uring).map_err(fail)?;
    if want_uring && !offered_uring {
        let why = "the kernel did not offer FUSE_OVER_IO_URING at INIT".to_string();
        if config.transport == TransportChoice::Uring {
            return Err(fail(Error::UringUnavailable(why)));
        }
        eprintln!("fuseuring: {why}; serving over /dev/fuse");
        want_uring = false;
    }
    fs.init(granted);

    let stats = Arc::new(Stats::default());
    let buf_size = config.max_write as usize + 4096;
    let mut threads = Vec::new();
    let spawn_dev = |threads: &mut Vec<JoinHandle<()>>, n: usize| -> Result<(), Error> {
        for i in 0..n {
            let (fs, stats) = (fs.clone(), stats.clone());
            let dev = dev.try_clone().map_err(Error::Io)?;
            let t = std::thread::Builder::new()
                .name(format!("fuse-dev-{i}"))
                .spawn(move || dev::serve(&*fs, &dev, &stats, buf_size))
                .map_err(Error::Io)?;
            threads.push(t);
        }
        Ok(())
    };

    let mut transport = Transport::Dev;
    if want_uring {
        // FORGET and INTERRUPT keep coming through /dev/fuse.
        spawn_dev(&mut threads, 1).map_err(fail)?;
        match start_queues(&fs, &dev, config, &stats, &mut threads) {
            Ok(()) => transport = Transport::Uring,
            Err(why) => {
                if config.transport == TransportChoice::Uring {
                    let _ = mount::unmount(&mountpoint);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(Error::UringSetup(why));
                }
                // A failed REGISTER turns the connection back to /dev/fuse.
                eprintln!("fuseuring: {why}; serving over /dev/fuse");
                spawn_dev(&mut threads, config.dev_threads.saturating_sub(1)).map_err(fail)?;
            }
        }
    } else {
        spawn_dev(&mut threads, config.dev_threads).map_err(fail)?;
    }
    Ok(Session {
        mountpoint,
        dev,
        transport,
        stats,
        threads,
    })
}

/// Starts one queue thread per possible CPU and waits until each registered its entries.
fn start_queues<F: Filesystem>(
    fs: &Arc<F>,
    dev: &FuseDev,
    config: &Config,
    stats: &Arc<Stats>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<(), String> {
    let queues = mount::possible_cpus();
    if queues > u16::MAX as usize {
        return Err(format!(
            "{queues} CPUs: more queues than the protocol allows"
        ));
    }
    // The kernel refuses payload buffers smaller than its largest request or reply
    // (max_write, max_pages pages, at least 8 KiB).
    let payload_size = (config.max_write as usize).max(8192);
    let (started_tx, started_rx) = mpsc::channel();
    for qid in 0..queues {
        let (fs, stats, started) = (fs.clone(), stats.clone(), started_tx.clone());
        let dev = dev.try_clone().map_err(|e| e.to_string())?;
        let setup = uring::QueueSetup {
            qid: qid as u16,
            depth: config.ring_depth,
            payload_size,
            pin: config.pin_queues,
        };
        let t = std::thread::Builder::new()
            .name(format!("fuse-ring-{qid}"))
            .spawn(move || uring::run_queue(&*fs, dev, setup, &stats, started))
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    drop(started_tx);
    let mut errors = Vec::new();
    for _ in 0..queues {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a queue thread ended before registering".into()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Reads INIT from the new connection and answers it. Returns whether the kernel offered
/// FUSE over io_uring (it is accepted only when `want_uring`) and the capabilities granted.
fn answer_init<F: Filesystem>(
    dev: &FuseDev,
    fs: &F,
    config: &Config,
    want_uring: bool,
) -> Result<(bool, u64), Error> {
    let mut buf = vec![0u8; config.max_write as usize + 4096];
    let n = loop {
        match dev.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::ENOENT)) => {}
            Err(e) => return Err(Error::Io(e)),
        }
    };
    let header = abi::InHeader::read_from(&buf[..n])
        .ok_or_else(|| Error::Init(format!("short first request ({n} bytes)")))?;
    if header.opcode != abi::FUSE_INIT {
        return Err(Error::Init(format!(
            "first request has opcode {}, not INIT",
            header.opcode
        )));
    }
    let init = abi::InitIn::read_from(&buf[size_of::<abi::InHeader>()..n])
        .ok_or_else(|| Error::Init("short INIT request".into()))?;
    if init.major != abi::KERNEL_VERSION || init.minor < 31 {
        let reply = abi::OutHeader {
            len: size_of::<abi::OutHeader>() as u32,
            error: -libc::EPROTO,
            unique: header.unique,
        };
        let _ = dev.write_reply(&[reply.as_bytes()]);
        return Err(Error::Init(format!(
            "kernel speaks FUSE {}.{}; 7.31 or later is needed",
            init.major, init.minor
        )));
    }
    let offered = init.flags as u64
        | if init.flags as u64 & abi::FUSE_INIT_EXT != 0 {
            (init.flags2 as u64) << 32
        } else {
            0
        };
    let offered_uring = offered & abi::FUSE_OVER_IO_URING != 0;
    let mut wanted = abi::FUSE_ASYNC_READ
        | abi::FUSE_BIG_WRITES
        | abi::FUSE_PARALLEL_DIROPS
        | abi::FUSE_MAX_PAGES
        | abi::FUSE_INIT_EXT;
    if want_uring {
        wanted |= abi::FUSE_OVER_IO_URING;
    }
    wanted |= fs.init_flags(offered);
    let flags = offered & wanted;
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION.min(init.minor),
        max_readahead: init.max_readahead.min(config.max_readahead),
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        max_background: 64,
        congestion_threshold: 48,
        max_write: config.max_write,
        time_gran: 1,
        max_pages: (config.max_write / 4096) as u16,
        // Passthrough files may not be FUSE files themselves (the kernel's stack limit).
        max_stack_depth: if flags & abi::FUSE_PASSTHROUGH != 0 {
            1
        } else {
            0
        },
        ..Default::default()
    };
    let reply = abi::OutHeader {
        len: (size_of::<abi::OutHeader>() + size_of::<abi::InitOut>()) as u32,
        error: 0,
        unique: header.unique,
    };
    dev.write_reply(&[reply.as_bytes(), out.as_bytes()])
        .map_err(Error::Io)?;
    Ok((offered_uring, flags))
}
