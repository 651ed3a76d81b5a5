//! `spoolfs umount`: unmount, then wait for the daemon to finish writing out its data.

use crate::control::WriteOut;
use crate::paths::{canonical_mount_point, is_root, runtime_files};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use std::ffi::CString;
use std::io::{IsTerminal, Write};
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

/// "1.2 MiB in 3 slice(s)" (plus what open files still buffer).
fn describe_left(w: &WriteOut) -> String {
    let mut s = format!(
        "{} in {} slice(s)",
        crate::size::human_bytes(w.staged_bytes),
        w.staged_slices
    );
    if w.dirty_bytes > 0 {
        s.push_str(&format!(
            ", and {} not yet staged",
            crate::size::human_bytes(w.dirty_bytes)
        ));
    }
    s
}

/// A progress line redrawn in place on a terminal.
#[derive(Default)]
struct Progress {
    /// Something was said (on a terminal: a line is drawn and not yet cleared).
    told: bool,
    last: String,
}

impl Progress {
    fn draw(&mut self, line: &str) {
        if line != self.last {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.last = line.to_string();
        }
        self.told = true;
    }

    /// Ends a drawn line, so what follows starts on a fresh one.
    fn clear(&mut self) {
        if !self.last.is_empty() {
            eprintln!();
            self.last.clear();
        }
    }
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
    // Asked before the unmount too: a daemon with nothing to upload may be gone before the
    // first look after it.
    let left_before = if args.no_wait {
        None
    } else {
        crate::control::writeout(&files.socket, Duration::from_secs(1)).ok()
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
    // The daemon exits once its staged data is in the object store; deletes of dead objects
    // are not waited for (the next mount resumes them).
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let terminal = std::io::stderr().is_terminal();
    let mut progress = Progress::default();
    let mut last_poll: Option<Instant> = None;
    let mut left = left_before;
    while alive(pid) {
        if start.elapsed() >= timeout {
            progress.clear();
            bail!(
                "unmounted {}, but its daemon (pid {pid}) is still uploading staged data after \
                 {} s{}; it keeps going in the background (see its log), and what it has not \
                 uploaded when it stops is uploaded at the next mount with the same --cache-dir",
                path.display(),
                args.timeout,
                left.map(|w| format!(" ({} left)", describe_left(&w)))
                    .unwrap_or_default()
            );
        }
        if last_poll.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            last_poll = Some(Instant::now());
            if let Ok(w) = crate::control::writeout(&files.socket, Duration::from_secs(1)) {
                left = Some(w);
            }
        }
        if start.elapsed() >= Duration::from_secs(1) {
            let what = left
                .map(|w| format!(": {} left", describe_left(&w)))
                .unwrap_or_default();
            let line = format!(
                "spoolfs: waiting for the daemon (pid {pid}) to upload staged data to the \
                 object store{what}"
            );
            if terminal {
                progress.draw(&line);
            } else if !progress.told {
                eprintln!("{line}");
                progress.told = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.clear();
    let pending_deletes = left.map_or(0, |w| w.pending_deletes);
    // The daemon says how it ended; no word means it died before it finished.
    let report = std::fs::read_to_string(&files.exit).unwrap_or_default();
    let _ = std::fs::remove_file(&files.exit);
    match report.trim() {
        "clean" => {
            println!("spoolfs: unmounted {}", path.display());
            if pending_deletes > 0 {
                eprintln!(
                    "spoolfs: the objects of {pending_deletes} dead slice(s) are still to be \
                     deleted; the next mount (or `spoolfs gc`) deletes them"
                );
            }
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
