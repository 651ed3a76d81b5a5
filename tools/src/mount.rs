//! `spoolfs mount`: start the engine and serve the volume over FUSE.
//!
//! Without `--foreground` the command re-executes itself as a daemon (`--foreground` plus the
//! hidden `--ready-fd N`) in a new session, with stdin from /dev/null and stdout/stderr in the
//! log file, and waits on a pipe: the daemon writes `ok VOLUME` once the kernel handshake is
//! done (the mount is usable), or `error MESSAGE`. So the command returns only when the mount
//! is ready, or fails with the daemon's own error message.

use crate::control::ControlServer;
use crate::format::default_urls;
use crate::metrics::MetricsEndpoint;
use crate::paths::{
    create_private_dir, default_cache_dir, is_root, make_private, open_log_file, private_umask,
    runtime_files,
};
use crate::staging_args::StagingArgs;
use crate::{S3Args, init_logging};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use spoolfs_engine::{AtimeMode, Engine, EngineConfig, StorageConfig};
use spoolfs_fuse::{FuseSession, FuseTransport, MountOptions, Unmounter};
use spoolfs_objects::ObjectStorage;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Metadata store URL of the volume. Default: the default volume (formatted on first use).
    #[arg(long, value_name = "URL")]
    pub meta: Option<String>,
    /// Where to mount: an existing, empty directory.
    #[arg(value_name = "MOUNTPOINT")]
    pub mount_point: PathBuf,
    /// Local cache and staging directory [default: $XDG_CACHE_HOME/spoolfs or ~/.cache/spoolfs].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Stay in the foreground (do not daemonise); logs go to stderr or --log-file.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Threads serving FUSE requests over /dev/fuse (over io_uring: one per CPU).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = parse_threads)]
    pub fuse_threads: usize,
    /// How long the kernel may cache file attributes, in seconds (0 to 86400), or auto: an
    /// hour on an exclusive volume (embedded metadata: only this mount can change it, and it
    /// tells the kernel what it changes by itself), 1 s on a shared one (PostgreSQL: how long
    /// another node's change may stay unseen here).
    #[arg(long, value_name = "SECS|auto", default_value = "auto", value_parser = parse_ttl)]
    pub attr_ttl: CacheTtl,
    /// How long the kernel may cache name lookups, found and missing names alike, in seconds
    /// (0 to 86400), or auto (as --attr-ttl).
    #[arg(long, value_name = "SECS|auto", default_value = "auto", value_parser = parse_ttl)]
    pub entry_ttl: CacheTtl,
    /// Most bytes of object data kept in the local data cache under --cache-dir (0: no disk
    /// cache). Data read from the object store, and data just uploaded, is kept there so
    /// that reading it again costs no object-store round trip, also after a remount.
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = crate::size::parse_size)]
    pub cache_size: u64,
    /// Keep at least this fraction of the cache file system free: the data cache shrinks
    /// (least recently used first) below it.
    #[arg(long, value_name = "FRACTION", default_value = "0.1", value_parser = parse_ratio)]
    pub cache_free_ratio: f64,
    /// Also keep a local copy of large files this node writes (slices over 1 MiB, uploaded as
    /// block objects) once they are uploaded. Off by default: a checkpoint would be written
    /// to the local disk twice and push everything else out of the cache. Small files are
    /// always kept.
    #[arg(long)]
    pub cache_large_writes: bool,
    /// auto: read-only opens of a file wholly in the local data cache and not open for writing
    /// go from the kernel straight to the cache file (FUSE passthrough; Linux 6.9+, root),
    /// falling back by itself where the kernel refuses; off: every read goes through spoolfs.
    /// Off by default: while a file is open that way, the kernel fails an open of it for
    /// writing (EIO).
    #[arg(long, value_name = "MODE", default_value = "off", value_enum)]
    pub passthrough: Passthrough,
    /// How FUSE requests travel between the kernel and spoolfs: uring (FUSE over io_uring:
    /// per-CPU queues, no system call per request; Linux 6.14+, the fuse module's
    /// enable_uring parameter on, root), dev (read and write on /dev/fuse), or auto (uring
    /// when the kernel offers it, else dev; the log says which). The mount fails with uring
    /// when the kernel cannot serve it.
    #[arg(long, value_name = "TRANSPORT", default_value = "auto", value_parser = parse_transport)]
    pub fuse_transport: FuseTransport,
    /// Requests in flight per io_uring queue (one queue per possible CPU, each request
    /// holding a 1 MiB buffer; a waiting F_SETLKW holds one until it is answered).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = parse_ring_depth)]
    pub fuse_ring_depth: usize,
    /// Bytes fetched ahead of a sequential reader, in the background (0: no readahead).
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = crate::size::parse_size)]
    pub readahead: u64,
    /// Largest pack object (small files uploaded together) fetched whole into the local data
    /// cache when one of its files is read cold or its directory is listed, so that its
    /// neighbours read locally (0: no whole-pack fetches). One fetch holds at most this much
    /// memory.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_pack_fetch_max)]
    pub pack_fetch_max: u64,
    /// Pack objects fetched at once (memory held by fetches: at most this many times
    /// --pack-fetch-max).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = parse_threads)]
    pub pack_fetch_threads: usize,
    /// Bytes of pack objects (and blocks, see --dir-prefetch-file-max) a directory listing
    /// fetches ahead for the files in it and in its subdirectories (see
    /// --dir-prefetch-depth), in the background (0: listings fetch nothing ahead). Those of
    /// the listed directory already in the local data cache are read ahead from it into
    /// memory instead, up to as many bytes.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = crate::size::parse_size)]
    pub dir_prefetch: u64,
    /// Levels of subdirectories a directory listing fetches ahead for too, breadth first,
    /// within the same --dir-prefetch (0: the listed directory alone): a program that lists
    /// a directory usually goes on into its subdirectories (an import, tar, a build). Not
    /// below a directory whose files are all in the local data cache already.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub dir_prefetch_depth: u32,
    /// A cold read of a small file whose pack is on its way also takes, in the same ranged
    /// GET, the small files stored up to this many bytes before and after it in the pack (0:
    /// the file alone), instead of waiting for the whole pack.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = crate::size::parse_size)]
    pub pack_read_nearby: u64,
    /// The largest file over 1 MiB (stored as blocks) that a directory listing fetches ahead
    /// too, within --dir-prefetch (0: only small files). Larger files are never fetched ahead
    /// of their reader.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = crate::size::parse_size)]
    pub dir_prefetch_file_max: u64,
    /// After this many seconds with no writes, uploads or object reads, free the buffers
    /// kept for large writes and give the memory of the last burst back to the system
    /// (0: keep it).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub release_memory_after: Duration,
    /// Let users other than the one who mounts use the mount (the kernel still checks each
    /// file's owner and mode: default_permissions). Default: on when root mounts (a mount of
    /// /home or a shared volume is for every user), off otherwise (a user's own mount stays
    /// private; other users' access also needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub allow_other: Option<bool>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Do not allow programs on the mount to be executed (the kernel's noexec).
    #[arg(long)]
    pub noexec: bool,
    /// Honour set-user-id and set-group-id bits (root only; the default is nosuid).
    #[arg(long)]
    pub suid: bool,
    /// Honour device files (root only; the default is nodev).
    #[arg(long)]
    pub dev: bool,
    /// Print nothing on success (errors still go to stderr).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// When an earlier spoolfs daemon of this volume is still finishing (after a plain
    /// `umount`, it writes out staged data and holds the metadata store until done), wait up
    /// to this many seconds for it to exit before giving up.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_secs)]
    pub wait_previous: Duration,
    /// When reads update access times, as the mount options of Linux file systems:
    /// relatime (on the first read after a change, or once a day), strictatime (every read),
    /// noatime (never). A read-only mount never updates them.
    #[arg(long, value_name = "RULE", default_value = "relatime", value_enum)]
    pub atime: Atime,
    /// POSIX ACLs (setfacl, getfacl), enforced by the kernel where it supports them for FUSE
    /// (`--acl=false`: refused, as with ext4's `noacl`).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub acl: bool,
    /// SELinux file labels (the `security.selinux` attribute): on: stored and served like any
    /// extended attribute; off: refused with EOPNOTSUPP, as a file system without labels does
    /// (`ls -l` then stops asking for every file's, a request per file saved); auto: on when
    /// SELinux is enabled on this host.
    #[arg(long, value_name = "MODE", default_value = "auto", value_enum)]
    pub selinux_xattrs: SelinuxXattrs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub staging: StagingArgs,
    /// Log file of the daemon [default: <cache dir>/spoolfs.log].
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// At unmount or on SIGTERM/SIGINT, how long the daemon waits for staged data to reach the
    /// object store before it exits, in seconds (what is left is uploaded at the next mount
    /// with the same --cache-dir). Keep it below a service manager's stop timeout.
    #[arg(long, value_name = "SECS", default_value = "86400", value_parser = parse_secs)]
    pub shutdown_timeout: Duration,
    /// On a shared metadata store (PostgreSQL): a mount renews its session every third of this
    /// many seconds, and a session not renewed for this long is dead (its volume may then be
    /// mounted elsewhere). Node clocks must agree to well within it.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_session_timeout)]
    pub session_timeout: Duration,
    /// On a shared metadata store: where this mount serves its staged slices to the volume's
    /// other mounts (port 0: any free port). Requests are authenticated with the volume's
    /// secret, kept in its metadata.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:0")]
    pub peer_listen: SocketAddr,
    /// The address other mounts are told to reach this one at [default: the --peer-listen
    /// address, or this host's address when listening on all interfaces].
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_advertise: Option<SocketAddr>,
    /// On a shared metadata store: how long a read of data staged on another node that cannot
    /// be reached waits for that node's upload before it fails with EIO, in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub peer_timeout: Duration,
    /// A process waiting for a file lock (`F_SETLKW`, blocking `flock`) held elsewhere looks
    /// again after a pause that doubles up to this many seconds (an unlock on this mount wakes
    /// it at once).
    #[arg(long, value_name = "SECS", default_value = "0.2", value_parser = parse_secs)]
    pub lock_wait_poll: Duration,
    /// Rewrite pack objects in the background when they are mostly dead
    /// (`--background-compact=false`: only `spoolfs gc --compact` does).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub background_compact: bool,
    /// Same as --background-compact=false.
    #[arg(long, conflicts_with = "background_compact")]
    pub no_background_compact: bool,
    /// Live fraction (0 to 1) below which the background compactor rewrites a pack.
    #[arg(long, value_name = "F", default_value = "0.5", value_parser = crate::gc::parse_fraction)]
    pub compact_threshold: f64,
    /// The background compactor runs once the volume's packs hold this many dead bytes.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = crate::size::parse_size)]
    pub compact_min_dead: u64,
    /// How often the background compactor looks, in seconds (at most one run per interval).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_interval)]
    pub compact_interval: Duration,
    /// Read settings from a TOML file whose keys are the long flags of this command
    /// (`max-staging = "4G"`, `allow-other = true`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9567; every metric is
    /// described in docs/METRICS.md). Without it nothing listens and requests are not timed.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// (internal) The pipe on which the daemon reports that the mount is ready.
    #[arg(long, hide = true, value_name = "FD")]
    pub ready_fd: Option<RawFd>,
}

/// At most 1 GiB: a pack is held in memory while it is fetched.
fn parse_pack_fetch_max(s: &str) -> Result<u64, String> {
    let v = crate::size::parse_size(s)?;
    if v > 1 << 30 {
        return Err(format!(
            "invalid size {s:?}: at most 1G (a fetch holds it in memory)"
        ));
    }
    Ok(v)
}

/// `--attr-ttl`/`--entry-ttl`: a lifetime, or one that depends on whether the volume is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheTtl {
    Auto,
    Fixed(Duration),
}

impl CacheTtl {
    /// The lifetime to give the kernel on a volume that is `shared` or not.
    pub fn resolve(self, shared: bool) -> Duration {
        match self {
            CacheTtl::Fixed(d) => d,
            CacheTtl::Auto if shared => spoolfs_fuse::SHARED_CACHE_TTL,
            CacheTtl::Auto => spoolfs_fuse::EXCLUSIVE_CACHE_TTL,
        }
    }

    /// As given on the command line (the daemon gets it back that way).
    fn arg(self) -> String {
        match self {
            CacheTtl::Auto => "auto".into(),
            CacheTtl::Fixed(d) => d.as_secs_f64().to_string(),
        }
    }
}

fn parse_ttl(s: &str) -> Result<CacheTtl, String> {
    if s == "auto" {
        return Ok(CacheTtl::Auto);
    }
    parse_secs(s)
        .map(CacheTtl::Fixed)
        .map_err(|e| format!("{e}, or auto"))
}

fn parse_transport(s: &str) -> Result<FuseTransport, String> {
    s.parse()
}

fn parse_ring_depth(s: &str) -> Result<usize, String> {
    crate::size::parse_whole(s, "ring depth", 1, 256)
}

fn parse_threads(s: &str) -> Result<usize, String> {
    crate::size::parse_whole(s, "thread count", 1, 256)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("invalid number of seconds {s:?}"))?;
    if !v.is_finite() || !(0.0..=86400.0).contains(&v) {
        return Err(format!(
            "invalid number of seconds {s:?}: expected 0 to 86400"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Heartbeats are recorded in whole seconds: below 3 s a live session could look dead for a
/// moment, and other mounts would then drop its locks.
fn parse_session_timeout(s: &str) -> Result<Duration, String> {
    let v = parse_secs(s)?;
    if v < Duration::from_secs(3) {
        return Err(format!(
            "invalid session timeout {s:?}: at least 3 seconds (heartbeats are recorded in whole seconds)"
        ));
    }
    Ok(v)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=86400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "invalid interval {s:?}: expected 0.1 to 86400 seconds"
        )),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path))
    }
}

pub fn run(args: MountArgs, log_level: Option<&str>) -> Result<ExitCode> {
    // Before anything is opened or started: a refused option fails here, on the caller's
    // terminal, not later in the daemon's log.
    check_privileged_options(&args, is_root(), Path::new(FUSE_CONF))?;
    // Every file the mount creates (staging segments, cache files, the metadata store, the log)
    // holds users' data or names: readable by this user only, whatever umask it was given.
    private_umask();
    if args.foreground || args.ready_fd.is_some() {
        serve(args, log_level)
    } else {
        init_logging(log_level, "warn", None);
        daemonise(args, log_level)
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: start the daemon and wait for its word.

fn daemonise(args: MountArgs, log_level: Option<&str>) -> Result<ExitCode> {
    // Fail fast on a bad mount point; the daemon checks again.
    let mount_point = spoolfs_fuse::check_mount_point(&args.mount_point)?;
    let cache_dir = absolute(&args.cache_dir.clone().unwrap_or_else(default_cache_dir))?;
    create_private_dir(&cache_dir)?;
    let log_path = absolute(
        &args
            .log_file
            .clone()
            .unwrap_or_else(|| cache_dir.join("spoolfs.log")),
    )?;
    let log = open_log_file(&log_path)?;
    // As in the daemon, a busy or foreign metrics address fails first, before any waiting.
    if let Some(addr) = args.metrics {
        drop(MetricsEndpoint::bind(addr)?);
    }
    // An earlier daemon of this volume may still be writing out data after a plain `umount`:
    // wait for it here, where the caller sees what is being waited for.
    let meta_url = match &args.meta {
        Some(url) => url.clone(),
        None => default_urls()?.0,
    };
    drop(open_meta_waiting(&meta_url, args.wait_previous, &|m| {
        eprintln!("spoolfs: {m}")
    })?);
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // With stdin/stdout/stderr closed, the pipe could land on 0-2, which the child's stdio
    // redirection would overwrite: move the write end above them.
    if fds[1] <= 2 {
        // SAFETY: fds[1] is open; F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let moved = unsafe { libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 3) };
        if moved < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot move a pipe descriptor");
        }
        // SAFETY: closing the original, now duplicated, descriptor we own.
        unsafe { libc::close(fds[1]) };
        fds[1] = moved;
    }
    // SAFETY: pipe2 (or fcntl) just returned these descriptors; each is owned once.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let write_fd = fds[1];

    let exe = std::env::current_exe().context("cannot find the spoolfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&mount_point).arg("--foreground");
    cmd.arg("--ready-fd").arg(write_fd.to_string());
    cmd.arg("--cache-dir").arg(&cache_dir);
    cmd.arg("--log-file").arg(&log_path);
    if let Some(meta) = &args.meta {
        cmd.arg("--meta").arg(meta);
    }
    cmd.arg("--fuse-threads").arg(args.fuse_threads.to_string());
    cmd.arg("--fuse-transport")
        .arg(args.fuse_transport.to_string())
        .arg("--fuse-ring-depth")
        .arg(args.fuse_ring_depth.to_string());
    cmd.arg("--attr-ttl").arg(args.attr_ttl.arg());
    cmd.arg("--entry-ttl").arg(args.entry_ttl.arg());
    cmd.arg("--readahead").arg(args.readahead.to_string());
    cmd.arg("--release-memory-after")
        .arg(args.release_memory_after.as_secs_f64().to_string());
    cmd.arg("--pack-fetch-max")
        .arg(args.pack_fetch_max.to_string())
        .arg("--pack-fetch-threads")
        .arg(args.pack_fetch_threads.to_string())
        .arg("--dir-prefetch")
        .arg(args.dir_prefetch.to_string())
        .arg("--dir-prefetch-depth")
        .arg(args.dir_prefetch_depth.to_string())
        .arg("--pack-read-nearby")
        .arg(args.pack_read_nearby.to_string())
        .arg("--dir-prefetch-file-max")
        .arg(args.dir_prefetch_file_max.to_string());
    cmd.arg("--passthrough").arg(match args.passthrough {
        Passthrough::Auto => "auto",
        Passthrough::Off => "off",
    });
    cmd.arg("--cache-size")
        .arg(args.cache_size.to_string())
        .arg("--cache-free-ratio")
        .arg(args.cache_free_ratio.to_string());
    if args.cache_large_writes {
        cmd.arg("--cache-large-writes");
    }
    cmd.arg("--shutdown-timeout")
        .arg(args.shutdown_timeout.as_secs_f64().to_string());
    cmd.arg("--session-timeout")
        .arg(args.session_timeout.as_secs_f64().to_string());
    cmd.arg("--peer-listen").arg(args.peer_listen.to_string());
    if let Some(addr) = args.peer_advertise {
        cmd.arg("--peer-advertise").arg(addr.to_string());
    }
    cmd.arg("--peer-timeout")
        .arg(args.peer_timeout.as_secs_f64().to_string());
    cmd.arg("--lock-wait-poll")
        .arg(args.lock_wait_poll.as_secs_f64().to_string());
    cmd.arg(format!("--allow-other={}", allow_other(&args)));
    if args.read_only {
        cmd.arg("--read-only");
    }
    for (on, flag) in [
        (args.noexec, "--noexec"),
        (args.suid, "--suid"),
        (args.dev, "--dev"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.arg("--wait-previous")
        .arg(args.wait_previous.as_secs_f64().to_string());
    cmd.arg("--atime").arg(args.atime.name());
    cmd.arg(format!("--acl={}", args.acl));
    cmd.arg("--selinux-xattrs").arg(args.selinux_xattrs.name());
    if let Some(addr) = args.metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    cmd.arg(format!(
        "--background-compact={}",
        args.background_compact && !args.no_background_compact
    ));
    cmd.arg("--compact-threshold")
        .arg(args.compact_threshold.to_string());
    cmd.arg("--compact-min-dead")
        .arg(args.compact_min_dead.to_string());
    cmd.arg("--compact-interval")
        .arg(args.compact_interval.as_secs_f64().to_string());
    cmd.args(args.s3.to_args());
    cmd.args(args.staging.to_args());
    if let Some(level) = log_level {
        cmd.arg("--log-level").arg(level);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log file")?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(write_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the spoolfs daemon")?;
    drop(write_end);

    let mut answer = String::new();
    let _ = read_end.read_to_string(&mut answer);
    let answer = answer.trim_end();
    if let Some(volume) = answer.strip_prefix("ok ") {
        if args.quiet {
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "spoolfs: mounted {volume} at {}; logs in {}",
            mount_point.display(),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait().ok();
    if let Some(message) = answer.strip_prefix("error ") {
        bail!("{message}");
    }
    let tail = log_tail(&log_path, log_start);
    Err(anyhow!(
        "the spoolfs daemon exited{} before the mount was ready; see {}{}",
        status.map(|s| format!(" ({s})")).unwrap_or_default(),
        log_path.display(),
        if tail.is_empty() {
            String::new()
        } else {
            format!(":\n{tail}")
        }
    ))
}

/// The last lines the daemon wrote to its log.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let new = &bytes[(from as usize).min(bytes.len())..];
    let text = String::from_utf8_lossy(new);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The daemon (or a foreground mount).

/// The daemon's end of the readiness pipe.
struct Ready(Option<File>);

impl Ready {
    fn send(&mut self, message: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(message.as_bytes());
            let _ = f.write_all(b"\n");
        }
    }
}

fn serve(args: MountArgs, log_level: Option<&str>) -> Result<ExitCode> {
    let daemon = args.ready_fd.is_some();
    // SAFETY: the parent passed us this descriptor for our exclusive use.
    let mut ready = Ready(args.ready_fd.map(|fd| unsafe { File::from_raw_fd(fd) }));
    if daemon {
        // stderr is already the log file.
        init_logging(log_level, "info", None);
    } else {
        init_logging(log_level, "info", args.log_file.as_ref());
    }
    let signals = spoolfs_fuse::block_termination_signals();

    let setup = catch_unwind(AssertUnwindSafe(|| prepare(&args)));
    let mounted = match setup {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            // main prints it to stderr (the log file, for a daemon).
            ready.send(&format!("error {e:#}"));
            return Err(e);
        }
        Err(p) => {
            let e = anyhow!(
                "the engine failed while starting: {}",
                spoolfs_fuse::panic_message(p)
            );
            ready.send(&format!("error {e:#}"));
            return Err(e);
        }
    };
    let Mounted {
        engine,
        storage,
        mut session,
        volume,
        cache_dir,
        meta_session,
    } = mounted;

    let mount_point = session.mount_point().to_path_buf();
    let files = runtime_files(&mount_point);
    let cleanup = || {
        // After a plain umount this daemon goes on writing out data, and the next mount at the
        // same place may already have written its own files: remove them only if ours.
        if crate::umount::read_pid(&files.pid) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&files.socket);
            let _ = std::fs::remove_file(&files.pid);
        }
    };
    let _ = std::fs::remove_file(&files.exit);
    if let Err(e) = std::fs::create_dir_all(files.pid.parent().unwrap_or(Path::new("/")))
        .and_then(|()| std::fs::write(&files.pid, format!("{}\n", std::process::id())))
    {
        warn!("cannot write pid file {}: {e}", files.pid.display());
    }
    let control = ControlServer {
        engine: engine.clone(),
        storage,
        mount_point: mount_point.clone(),
        read_only: args.read_only,
        log_file: args.log_file.clone(),
        cache_dir,
        control_socket: files.socket.clone(),
        fuse_transport: session.transport().to_string(),
    };
    if let Err(e) = control.start(&files.socket) {
        warn!("{e:#}; `spoolfs status` will not work for this mount");
    }
    spawn_signal_thread(signals, engine.clone(), session.unmounter());

    info!(
        "serving volume {volume:?} at {} (pid {})",
        mount_point.display(),
        std::process::id()
    );
    ready.send(&format!("ok {volume}"));
    if daemon {
        // Do not keep the directory we were started from busy.
        let _ = std::env::set_current_dir("/");
    }
    let result = session.run();
    // Tell `spoolfs umount` how we ended: it reports success only for a clean stop.
    let status = engine.status();
    let report = if status.staged_bytes == 0 && status.dirty_bytes == 0 {
        "clean\n".to_string()
    } else {
        format!(
            "staged {} bytes in {} slices\n",
            status.staged_bytes, status.staged_slices
        )
    };
    drop(engine);
    // The volume's session ends once this daemon has nothing more to write; what it could not
    // upload stays listed in its session record.
    let left = spoolfs_engine::session::StagedReport {
        bytes: status.staged_bytes,
        slices: status.staged_slices,
        oldest_age_s: status.oldest_staged_age_secs,
    };
    if let Some(mut s) = meta_session
        && let Err(e) = s.end_with(left)
    {
        warn!("cannot remove this mount's session from the metadata store: {e}");
    }
    if let Err(e) = std::fs::write(&files.exit, report) {
        warn!("cannot write {}: {e}", files.exit.display());
    }
    cleanup();
    match result {
        Ok(()) => {
            info!("unmounted {}; exiting", mount_point.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(anyhow!(e).context(format!(
            "the FUSE session at {} ended with an error",
            mount_point.display()
        ))),
    }
}

/// On SIGTERM, SIGINT or SIGHUP: write everything out, then unmount; the FUSE session then
/// ends and `serve` returns.
fn spawn_signal_thread(set: libc::sigset_t, engine: Arc<Engine>, mut unmounter: Unmounter) {
    let spawned = std::thread::Builder::new()
        .name("spoolfs-signals".into())
        .spawn(move || {
            let mut unmounting = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if unmounting {
                    info!("received signal {sig}; already unmounting, still writing out data");
                    continue;
                }
                unmounting = true;
                // Unmounted, the session ends and the engine shuts down as after `spoolfs
                // umount`: buffered data is written out and uploads are waited for.
                info!("received signal {sig}; unmounting, then writing out data");
                match unmounter.try_unmount() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => error!("unmount failed: {e}"),
                }
                // Busy (files open): write out and upload everything while still serving,
                // then detach. Changes after that fail with EROFS, never silently.
                info!("file system busy: writing out data before detaching it");
                match catch_unwind(AssertUnwindSafe(|| engine.shutdown())) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!("engine shutdown failed: {e}"),
                    Err(p) => error!(
                        "engine shutdown panicked: {}",
                        spoolfs_fuse::panic_message(p)
                    ),
                }
                if let Err(e) = unmounter.detach() {
                    error!("detaching the mount failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the signal thread: {e}");
    }
}

struct Mounted {
    engine: Arc<Engine>,
    storage: Arc<ObjectStorage>,
    session: FuseSession,
    volume: String,
    cache_dir: PathBuf,
    /// This mount's session record on a shared metadata store.
    meta_session: Option<spoolfs_engine::session::Session>,
}

/// Everything up to a mounted, handshaken FUSE session. Every failure is a clear error.
fn prepare(args: &MountArgs) -> Result<Mounted> {
    let mount_point = spoolfs_fuse::check_mount_point(&args.mount_point)?;
    // Bound first: a busy or foreign address fails the mount before anything is opened.
    let metrics = args.metrics.map(MetricsEndpoint::bind).transpose()?;
    let cache_dir = absolute(&args.cache_dir.clone().unwrap_or_else(default_cache_dir))?;
    create_private_dir(&cache_dir)?;

    let (meta_url, default_storage) = match &args.meta {
        Some(url) => (url.clone(), None),
        None => {
            let (meta, storage, _) = default_urls()?;
            (meta, Some(storage))
        }
    };
    let meta = open_meta_waiting(&meta_url, args.wait_previous, &|m| info!("{m}"))?;
    let record = match spoolfs_engine::volume::read_record(meta.as_ref())
        .with_context(|| format!("cannot read the volume record in {}", meta.describe()))?
    {
        Some(r) => r,
        None => match default_storage {
            // The zero-configuration path: the default volume is made on first mount.
            Some(storage_url) => {
                let mut storage = StorageConfig {
                    url: storage_url,
                    ..Default::default()
                };
                args.s3.apply(&mut storage);
                let r = crate::format::format(&meta, "default", storage, None, false)?;
                info!(
                    "formatted the default volume ({}) in {}",
                    r.uuid,
                    meta.describe()
                );
                r
            }
            None => bail!("no volume in {}; run spoolfs format", meta.describe()),
        },
    };

    // On a shared store other nodes may mount the volume too: each mount is a session.
    let meta_session = if meta.is_shared() {
        let s = spoolfs_engine::session::Session::register(
            meta.clone(),
            &mount_point.display().to_string(),
            &cache_dir.join(&record.uuid).display().to_string(),
            args.session_timeout,
        )
        .with_context(|| format!("cannot mount volume {:?}", record.name))?;
        info!("session {} registered in {}", s.rec.id, meta.describe());
        Some(s)
    } else {
        None
    };
    let storage = args.s3.open_storage(&record)?;
    let storage = Arc::new(storage);
    let volume = record.name.clone();
    // The staging and namespace logs are opened in both modes: a standard mount still replays
    // and uploads whatever an earlier writeback mount left staged.
    let settings = args.staging.settings(&cache_dir).map_err(|e| anyhow!(e))?;
    let shared = meta.is_shared();
    let store_for_metrics = meta.clone();
    // File locks are written straight to the shared store, under this mount's session.
    let shared_locks = meta_session
        .as_ref()
        .map(|s| spoolfs_engine::locks::SharedLocks {
            store: meta.clone(),
            session_id: s.rec.id.clone(),
        });
    let (meta, staging) = spoolfs_engine::writeback::open_staging(meta, &record, &settings)
        .with_context(|| format!("cannot open the staging log of volume {volume:?}"))?;
    let config = EngineConfig {
        staging: Some(staging),
        max_uploads: args.staging.max_uploads,
        max_deletes: args.staging.max_deletes,
        drain_on_shutdown: Some(args.shutdown_timeout),
        disk_cache: Some(spoolfs_engine::diskcache::DiskCacheConfig {
            dir: cache_dir.join(&record.uuid).join("blocks"),
            max_bytes: args.cache_size,
            free_ratio: args.cache_free_ratio,
            keep_large_uploads: args.cache_large_writes,
        }),
        readahead_bytes: args.readahead,
        release_memory_after: Some(args.release_memory_after).filter(|d| !d.is_zero()),
        pack_fetch: spoolfs_engine::packfetch::PackFetchConfig {
            max_bytes: args.pack_fetch_max,
            threads: args.pack_fetch_threads,
            dir_budget_bytes: args.dir_prefetch,
            dir_depth: args.dir_prefetch_depth,
            nearby_bytes: args.pack_read_nearby,
            dir_file_max_bytes: args.dir_prefetch_file_max,
        },
        // A read-only mount changes nothing in the object store. On a shared store the
        // compactor runs only on the mount holding the volume's background lease.
        compaction: (args.background_compact && !args.no_background_compact && !args.read_only)
            .then_some(spoolfs_engine::gc::CompactionSettings {
                threshold: args.compact_threshold,
                min_dead_bytes: args.compact_min_dead,
                interval: args.compact_interval,
            }),
        durable_close: args.staging.durable_close,
        shared_locks,
        lock_wait_max_backoff: args.lock_wait_poll,
        own_dir_attr_ttl: args.attr_ttl.resolve(shared),
        atime: if args.read_only {
            AtimeMode::Noatime
        } else {
            args.atime.mode()
        },
        peer: shared.then_some(spoolfs_engine::peers::PeerSettings {
            listen: args.peer_listen,
            advertise: args.peer_advertise,
            timeout: args.peer_timeout,
        }),
        ..Default::default()
    };
    let engine = Engine::start(meta, storage.clone(), record, config)
        .with_context(|| format!("cannot start volume {volume:?}"))?;
    let mut meta_session = meta_session;
    if let (Some(s), Some((listen, advertised, node_id))) =
        (meta_session.as_mut(), engine.peer_endpoint())
    {
        if let Err(e) = s.advertise(node_id, advertised) {
            let _ = engine.shutdown();
            return Err(anyhow!(e).context("cannot record the peer address in the session"));
        }
        info!("serving staged slices to other mounts on {listen}, advertised as {advertised}");
    }
    if let Some(s) = &meta_session {
        let engine = Arc::downgrade(&engine);
        s.report_with(Box::new(move || {
            let m = engine.upgrade()?.metrics();
            Some(spoolfs_engine::session::StagedReport {
                bytes: m.staged_bytes,
                slices: m.staged_slices,
                oldest_age_s: m.oldest_staged_age_secs,
            })
        }));
    }
    info!(
        "volume {volume:?} in {} mode",
        if engine.is_writeback() {
            "writeback"
        } else {
            "standard"
        }
    );

    if let Some(m) = metrics
        && let Err(e) = m.start(&engine, store_for_metrics)
    {
        let _ = engine.shutdown();
        return Err(e);
    }

    let options = MountOptions {
        fuse_threads: args.fuse_threads,
        attr_ttl: args.attr_ttl.resolve(shared),
        entry_ttl: args.entry_ttl.resolve(shared),
        allow_other: allow_other(args),
        read_only: args.read_only,
        noatime: args.atime == Atime::Noatime,
        acl: args.acl,
        selinux_xattrs: args.selinux_xattrs.resolve(),
        fs_name: volume.clone(),
        passthrough: args.passthrough == Passthrough::Auto,
        noexec: args.noexec,
        suid: args.suid,
        dev: args.dev,
        exclusive: !shared,
        transport: args.fuse_transport,
        ring_depth: args.fuse_ring_depth,
    };
    let session = match FuseSession::new(engine.clone(), &mount_point, &options) {
        Ok(s) => s,
        Err(e) => {
            // Nothing was served: still make sure nothing buffered is lost.
            let _ = engine.shutdown();
            return Err(e.into());
        }
    };
    Ok(Mounted {
        engine,
        storage,
        session,
        volume,
        cache_dir,
        meta_session,
    })
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "invalid fraction {s:?}: expected 0 to 0.99 (e.g. 0.1)"
        )),
    }
}

/// `--atime`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atime {
    Relatime,
    Strictatime,
    Noatime,
}

impl Atime {
    pub fn name(self) -> &'static str {
        match self {
            Atime::Relatime => "relatime",
            Atime::Strictatime => "strictatime",
            Atime::Noatime => "noatime",
        }
    }

    pub fn mode(self) -> AtimeMode {
        match self {
            Atime::Relatime => AtimeMode::Relatime,
            Atime::Strictatime => AtimeMode::Strictatime,
            Atime::Noatime => AtimeMode::Noatime,
        }
    }
}

/// `--passthrough`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passthrough {
    Auto,
    Off,
}

/// `--selinux-xattrs`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelinuxXattrs {
    Auto,
    On,
    Off,
}

impl SelinuxXattrs {
    fn name(self) -> &'static str {
        match self {
            SelinuxXattrs::Auto => "auto",
            SelinuxXattrs::On => "on",
            SelinuxXattrs::Off => "off",
        }
    }

    /// Whether the mount serves labels.
    pub fn resolve(self) -> bool {
        match self {
            SelinuxXattrs::Auto => spoolfs_fuse::host_has_selinux(),
            SelinuxXattrs::On => true,
            SelinuxXattrs::Off => false,
        }
    }
}

/// Where the FUSE library reads whether users may mount with allow_other.
const FUSE_CONF: &str = "/etc/fuse.conf";

/// Whether the mount lets other users in: as asked, else on for root and off for a user.
fn allow_other(args: &MountArgs) -> bool {
    args.allow_other.unwrap_or_else(is_root)
}

/// Refuses, with what to do instead, the options the kernel or fusermount would refuse or
/// silently drop for a mount by `root` or not.
fn check_privileged_options(args: &MountArgs, root: bool, fuse_conf: &Path) -> Result<()> {
    if root {
        return Ok(());
    }
    if args.suid || args.dev {
        bail!(
            "--{} is only honoured for a mount by root (FUSE mounts of other users are always \
             nosuid,nodev); mount as root or drop the option",
            if args.suid { "suid" } else { "dev" }
        );
    }
    if args.allow_other == Some(true) && !user_allow_other(fuse_conf) {
        bail!(
            "--allow-other needs `user_allow_other` in {} for a mount by a user other than \
             root (ask the administrator to add that line), or mount as root",
            fuse_conf.display()
        );
    }
    Ok(())
}

/// Whether fuse.conf has an uncommented `user_allow_other` line.
fn user_allow_other(fuse_conf: &Path) -> bool {
    std::fs::read_to_string(fuse_conf).is_ok_and(|text| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "user_allow_other")
    })
}

/// Opens the metadata store at `url`. While another process holds it that no longer serves a
/// mount (an earlier daemon of this volume that a plain `umount` detached, still writing out
/// staged data), waits up to `limit` for it to exit, saying through `say` what it waits for.
/// A holder that still serves a mount is an error at once: waiting would not end.
/// (The daemon keeps /dev/fuse open while it writes out data, so that says nothing.)
fn open_meta_waiting(
    url: &str,
    limit: Duration,
    say: &dyn Fn(String),
) -> Result<Arc<dyn spoolfs_metadata::KvStore>> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        let path = match spoolfs_metadata::open_store(url) {
            Ok(meta) => {
                // A metadata file made before spoolfs made its files private.
                if let Some(file) = url.strip_prefix("redb://") {
                    make_private(Path::new(file))?;
                }
                if announced {
                    say(format!(
                        "the earlier daemon let go of the metadata store after {:.1} s",
                        start.elapsed().as_secs_f64()
                    ));
                }
                return Ok(meta);
            }
            Err(spoolfs_metadata::MetaError::Locked { path }) => path,
            Err(e) => return Err(anyhow!(e).context("cannot open the metadata store")),
        };
        let holders = metadata_holders(Path::new(&path));
        let serving: Vec<String> = holders
            .iter()
            .filter_map(|h| serving_mount_of(h.pid))
            .map(|m| m.display().to_string())
            .collect();
        let describe = |list: &[Holder]| {
            if list.is_empty() {
                "another process".to_string()
            } else {
                list.iter()
                    .map(|h| format!("process {} ({})", h.pid, h.command))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if !serving.is_empty() {
            bail!(
                "metadata store {path} is already in use by {}, which serves the mount at {}: \
                 is the volume already mounted? Unmount it first",
                describe(&holders),
                serving.join(", ")
            );
        }
        if start.elapsed() >= limit {
            bail!(
                "metadata store {path} is still in use by {} after {} s; it is probably an \
                 earlier spoolfs daemon of this volume still writing out data: wait for it \
                 (`spoolfs status`, its log), or allow longer with --wait-previous SECS",
                describe(&holders),
                limit.as_secs()
            );
        }
        if !announced {
            announced = true;
            say(format!(
                "metadata store {path} is in use by {}, an earlier daemon of this volume that \
                 is still writing out data; waiting up to {} s for it to finish \
                 (--wait-previous)",
                describe(&holders),
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process that has a file open.
struct Holder {
    pid: u32,
    /// Its command line, shortened.
    command: String,
}

/// The spoolfs mount that daemon `pid` serves, if it still serves one: a mounted spoolfs mount
/// point whose pid file names it. (A daemon that a plain umount detached serves none; it only
/// writes out what is staged.)
fn serving_mount_of(pid: u32) -> Option<PathBuf> {
    spoolfs_fuse::read_mountinfo()
        .ok()?
        .into_iter()
        .filter(|m| m.fs_type == "fuse.spoolfs")
        .find(|m| crate::umount::read_pid(&runtime_files(&m.mount_point).pid) == Some(pid as i32))
        .map(|m| m.mount_point)
}

/// The other processes (that this user may inspect) with `path` open.
fn metadata_holders(path: &Path) -> Vec<Holder> {
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path));
        if holds {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let mut command = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            if command.len() > 100 {
                let cut = (0..=100).rev().find(|&i| command.is_char_boundary(i));
                command.truncate(cut.unwrap_or(0));
                command.push('…');
            }
            out.push(Holder { pid, command });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn mount_args(extra: &[&str]) -> MountArgs {
        let mut argv = vec!["spoolfs", "mount", "/m"];
        argv.extend(extra);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Mount(m) => *m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_timeout_is_at_least_three_seconds() {
        assert_eq!(
            mount_args(&["--session-timeout", "3"]).session_timeout,
            Duration::from_secs(3)
        );
        let err = crate::Cli::try_parse_from(["spoolfs", "mount", "/m", "--session-timeout", "2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 3 seconds"), "{err}");
    }

    /// The defaults are written twice, as flag strings here and in `EngineConfig::default`
    /// for the engine's other users (tests, tools); a mount must get the same.
    #[test]
    fn flag_defaults_are_the_engine_defaults() {
        let args = mount_args(&[]);
        let engine = EngineConfig::default();
        assert_eq!(Some(args.release_memory_after), engine.release_memory_after);
        assert_eq!(args.readahead, engine.readahead_bytes);
        assert_eq!(args.staging.max_uploads, engine.max_uploads);
        assert_eq!(args.staging.max_deletes, engine.max_deletes);
        assert_eq!(Some(args.shutdown_timeout), engine.drain_on_shutdown);
        assert_eq!(args.lock_wait_poll, engine.lock_wait_max_backoff);
        let fetch = engine.pack_fetch;
        assert_eq!(args.pack_fetch_max, fetch.max_bytes);
        assert_eq!(args.pack_fetch_threads, fetch.threads);
        assert_eq!(args.dir_prefetch, fetch.dir_budget_bytes);
        assert_eq!(args.dir_prefetch_depth, fetch.dir_depth);
        assert_eq!(args.pack_read_nearby, fetch.nearby_bytes);
        assert_eq!(args.dir_prefetch_file_max, fetch.dir_file_max_bytes);
        let compaction = engine.compaction.expect("on by default");
        assert_eq!(args.compact_threshold, compaction.threshold);
        assert_eq!(args.compact_min_dead, compaction.min_dead_bytes);
        assert_eq!(args.compact_interval, compaction.interval);
    }

    #[test]
    fn allow_other_defaults_to_root() {
        let conf = tempfile::NamedTempFile::new().unwrap();
        let args = mount_args(&[]);
        assert_eq!(args.allow_other, None);
        assert_eq!(allow_other(&args), is_root());
        assert_eq!(mount_args(&["--allow-other"]).allow_other, Some(true));
        assert_eq!(
            mount_args(&["--allow-other=false"]).allow_other,
            Some(false)
        );
        assert!(
            crate::Cli::try_parse_from(["spoolfs", "mount", "/m", "--allow-other=maybe"]).is_err()
        );

        // A user asking for allow_other without user_allow_other is told why it fails.
        std::fs::write(conf.path(), "# user_allow_other\nmount_max = 10\n").unwrap();
        let err = check_privileged_options(&mount_args(&["--allow-other"]), false, conf.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("user_allow_other"), "{err}");
        check_privileged_options(&mount_args(&[]), false, conf.path()).unwrap();
        check_privileged_options(&mount_args(&["--allow-other"]), true, conf.path()).unwrap();
        std::fs::write(conf.path(), "user_allow_other\n").unwrap();
        check_privileged_options(&mount_args(&["--allow-other"]), false, conf.path()).unwrap();
        let err = check_privileged_options(&mount_args(&["--suid"]), false, conf.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--suid") && err.contains("root"), "{err}");
        check_privileged_options(&mount_args(&["--suid", "--dev"]), true, conf.path()).unwrap();
    }

    #[test]
    fn waits_for_the_metadata_store_then_gives_up_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redb://{}", dir.path().join("meta.redb").display());
        let held = spoolfs_metadata::open_store(&url).unwrap();
        let said = std::sync::Mutex::new(Vec::new());
        let start = Instant::now();
        let err = open_meta_waiting(&url, Duration::from_millis(300), &|m| {
            said.lock().unwrap().push(m)
        })
        .err()
        .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        let err = format!("{err:#}");
        assert!(err.contains("--wait-previous"), "{err}");
        assert_eq!(said.lock().unwrap().len(), 1, "{:?}", said.lock().unwrap());
        assert!(said.lock().unwrap()[0].contains("waiting up to"));

        // Released while waiting: the wait ends with the store open.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        open_meta_waiting(&url, Duration::from_secs(30), &|_| {}).unwrap();
        releaser.join().unwrap();
    }
}
