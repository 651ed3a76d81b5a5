//! `spoolfs umount`: unmount, then wait for the daemon to finish writing out its data.

use crate::paths::{canonical_mount_point, is_root, runtime_files};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    #[arg(value_name = "MOUNTPOINT")]
    pub mount_point: PathBuf,
    /// Detach now even if files are open (the daemon exits when they are closed).
    #[arg(long, short = 'l')]
    pub lazy: bool,
    /// How long to wait for the daemon to write out its data, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Do not wait for staged data to reach the object store: unmount, say how much is still
    /// staged, and leave the daemon uploading it in the background.
    #[arg(long)]
    pub no_wait: bool,
}

/// The fuse.spoolfs entry mounted at the canonical `path`, or a clear error.
pub fn find_spoolfs_mount(path: &Path) -> Result<spoolfs_fuse::MountEntry> {
    let mounts = spoolfs_fuse::read_mountinfo().context("cannot read /proc/self/mountinfo")?;
    match mounts.iter().rev().find(|m| m.mount_point == path) {
        Some(m) if m.fs_type == "fuse.spoolfs" => Ok(m.clone()),
        Some(m) => bail!(
            "{} is not a spoolfs mount (it is a {} mount)",
            path.display(),
            m.fs_type
        ),
        None => bail!(
            "{} is not a spoolfs mount (nothing is mounted there)",
            path.display()
        ),
    }
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process.
/// Whether any thread of process `pid` still runs. Its main thread turns zombie first while
/// others (blocked in I/O) wind down still holding the process's files, such as the
/// metadata store's lock: the process is gone only when every thread is.
pub fn alive(pid: i32) -> bool {
    let running = |stat: &str| {
        // The state follows the command name in parentheses.
        !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X')
        )
    };
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| running(&s))),
        Err(_) => false,
    }
}

fn unmount(path: &Path, lazy: bool) -> Result<()> {
    if is_root() {
        let c = CString::new(path.as_os_str().as_bytes()).context("bad mount point")?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            bail!(
                "{} is busy (files or directories in it are in use); close them, \
                 or use `spoolfs umount --lazy`",
                path.display()
            );
        }
        return Err(anyhow!(e).context(format!("cannot unmount {}", path.display())));
    }
    let mut last = None;
    for tool in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(tool);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg(path).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                bail!(
                    "cannot unmount {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "cannot unmount {}: neither fusermount3 nor fusermount is installed ({})",
        path.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

pub fn run(args: UmountArgs) -> Result<ExitCode> {
    let path = canonical_mount_point(&args.mount_point)
        .with_context(|| format!("cannot resolve {}", args.mount_point.display()))?;
    find_spoolfs_mount(&path)?;
    let files = runtime_files(&path);
    let pid = read_pid(&files.pid).filter(|&p| alive(p));
    let staged_before = if args.no_wait {
        crate::control::query(&files.socket)
            .ok()
            .and_then(|(_, st)| st.engine)
            .map(|e| (e.staged_bytes, e.staged_slices))
    } else {
        None
    };
    unmount(&path, args.lazy)?;
    if args.no_wait {
        match (staged_before, pid) {
            (Some((bytes, slices)), Some(pid)) if bytes > 0 => println!(
                "spoolfs: unmounted {}; {} in {slices} slice(s) still staged, uploading in the \
                 background (daemon pid {pid})",
                path.display(),
                crate::size::human_bytes(bytes)
            ),
            _ => println!("spoolfs: unmounted {}", path.display()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let remove_stale = || {
        let _ = std::fs::remove_file(&files.socket);
        let _ = std::fs::remove_file(&files.pid);
    };
    let Some(pid) = pid else {
        // No daemon (it died): its runtime files are stale.
        remove_stale();
        println!("spoolfs: unmounted {}", path.display());
        return Ok(ExitCode::SUCCESS);
    };
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let mut told = false;
    while alive(pid) {
        if start.elapsed() >= timeout {
            bail!(
                "unmounted {}, but its daemon (pid {pid}) is still writing out data after {} s; \
                 it keeps going in the background (see its log)",
                path.display(),
                args.timeout
            );
        }
        if !told && start.elapsed() >= Duration::from_secs(1) {
            eprintln!("spoolfs: waiting for the daemon (pid {pid}) to write out its data...");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon says how it ended; no word means it died before it finished.
    let report = std::fs::read_to_string(&files.exit).unwrap_or_default();
    let _ = std::fs::remove_file(&files.exit);
    match report.trim() {
        "clean" => {
            println!("spoolfs: unmounted {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        "" => bail!(
            "unmounted {}, but its daemon (pid {pid}) died before it finished writing out data; \
             anything still staged is uploaded at the next mount with the same --cache-dir",
            path.display()
        ),
        other => bail!(
            "unmounted {}, but not everything reached the object store ({other}); it is \
             uploaded at the next mount with the same --cache-dir",
            path.display()
        ),
    }
}
