//! Mounts the in-memory file system over io_uring or /dev/fuse and serves it until it is
//! unmounted or the process gets SIGINT, SIGTERM or SIGHUP (which unmount it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use spoolfs_fuseuring::memfs::MemFs;
use spoolfs_fuseuring::mount::{ENABLE_URING_PARAM, set_enable_uring, uring_support};
use spoolfs_fuseuring::{Config, TransportChoice};

#[derive(Parser)]
#[command(about = "An in-memory FUSE file system served over io_uring or /dev/fuse")]
struct Args {
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// auto (io_uring when the kernel offers it, else /dev/fuse), uring, or dev.
    #[arg(long, default_value = "auto")]
    transport: TransportChoice,
    /// Set the fuse module's enable_uring to Y for this mount (needs root), and restore
    /// its previous value at exit. The kernel reads it only at mount time.
    #[arg(long)]
    enable_uring: bool,
    /// Threads reading /dev/fuse (dev transport).
    #[arg(long, default_value_t = 2)]
    dev_threads: usize,
    /// Entries (requests in flight) per io_uring queue; one queue per possible CPU.
    #[arg(long, default_value_t = 2)]
    ring_depth: usize,
    /// Do not pin each io_uring queue's thread to its CPU.
    #[arg(long)]
    no_pin: bool,
    /// Largest write request in bytes (multiple of 4096, up to 1 MiB).
    #[arg(long, default_value_t = 128 * 1024)]
    max_write: u32,
    /// Seconds the kernel may cache names (entries).
    #[arg(long, default_value_t = 1.0)]
    entry_timeout: f64,
    /// Seconds the kernel may cache attributes.
    #[arg(long, default_value_t = 1.0)]
    attr_timeout: f64,
    /// Let other users access the mount.
    #[arg(long)]
    allow_other: bool,
    /// Print the requests served per path (ring, /dev/fuse) and per opcode at exit.
    #[arg(long)]
    stats: bool,
}

fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("--{name}: a number of seconds >= 0"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (entry_ttl, attr_ttl) = match (
        seconds("entry-timeout", args.entry_timeout),
        seconds("attr-timeout", args.attr_timeout),
    ) {
        (Ok(e), Ok(a)) => (e, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fuseuring-memfs: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        transport: args.transport,
        dev_threads: args.dev_threads,
        ring_depth: args.ring_depth,
        max_write: args.max_write,
        pin_queues: !args.no_pin,
        allow_other: args.allow_other,
        fsname: "fuseuring-memfs".into(),
        ..Config::default()
    };
    // Before any thread starts, so that all inherit the mask and only sigwait sees them.
    let signals = block_termination_signals();

    let mut restore_uring = None;
    if args.enable_uring && args.transport != TransportChoice::Dev {
        if uring_support() == spoolfs_fuseuring::mount::UringSupport::Missing {
            eprintln!(
                "fuseuring-memfs: --enable-uring: no {ENABLE_URING_PARAM}; the kernel lacks FUSE over io_uring"
            );
            return ExitCode::from(1);
        }
        match set_enable_uring(true) {
            Ok(before) => {
                eprintln!(
                    "fuseuring-memfs: set {ENABLE_URING_PARAM} to Y (was {})",
                    if before { "Y" } else { "N" }
                );
                restore_uring = Some(before);
            }
            Err(e) => {
                eprintln!("fuseuring-memfs: --enable-uring: writing {ENABLE_URING_PARAM}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let restore = |restore_uring: Option<bool>| {
        if let Some(before) = restore_uring {
            match set_enable_uring(before) {
                Ok(_) => eprintln!(
                    "fuseuring-memfs: restored {ENABLE_URING_PARAM} to {}",
                    if before { "Y" } else { "N" }
                ),
                Err(e) => eprintln!("fuseuring-memfs: restoring {ENABLE_URING_PARAM}: {e}"),
            }
        }
    };

    let fs = Arc::new(MemFs::new(entry_ttl, attr_ttl));
    let session = match spoolfs_fuseuring::mount(fs, &args.mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("fuseuring-memfs: {e}");
            restore(restore_uring);
            return ExitCode::from(1);
        }
    };
    // The kernel decided at mount time; the switch can go back now.
    restore(restore_uring);
    eprintln!(
        "fuseuring-memfs: serving {} over {}",
        session.mountpoint().display(),
        session.transport()
    );

    let unmounter = session.unmounter();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: signals is an initialised set; sig is a valid out pointer.
        if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
            eprintln!("fuseuring-memfs: signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                eprintln!("fuseuring-memfs: unmount failed: {e}");
            }
        }
    });
    let stats = session.stats();
    session.wait();
    let (ring_count, dev_count) = stats.counts();
    if args.stats {
        eprintln!(
            "fuseuring-memfs: requests served: {ring_count} through the ring, {dev_count} through /dev/fuse"
        );
        let by_opcode: Vec<String> = stats
            .opcode_counts()
            .into_iter()
            .map(|(op, n)| format!("{} {n}", spoolfs_fuseuring::abi::opcode_name(op)))
            .collect();
        eprintln!("fuseuring-memfs: by opcode: {}", by_opcode.join(", "));
    }
    eprintln!("fuseuring-memfs: unmounted");
    ExitCode::SUCCESS
}
