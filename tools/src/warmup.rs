//! `spoolfs warmup PATH`: reads every file under PATH through the mount, so that its data is
//! in the mount's local data cache (`--cache-size`) before anyone needs it: later reads, also
//! after a remount, cost no object-store round trip.

use crate::size::human_bytes;
use crate::sync::mount_of;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct WarmupArgs {
    /// A file or directory inside a spoolfs mount.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Files read at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub jobs: usize,
}

struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

pub fn run(args: WarmupArgs) -> Result<ExitCode> {
    if args.jobs == 0 || args.jobs > 256 {
        bail!("invalid --jobs {}: expected 1 to 256", args.jobs);
    }
    let path = std::fs::canonicalize(&args.path)
        .with_context(|| format!("cannot resolve {}", args.path.display()))?;
    mount_of(&path)?;
    let mut files = Vec::new();
    collect(&path, &mut files)?;
    let total_files = files.len() as u64;
    let total_bytes: u64 = files.iter().map(|(_, n)| n).sum();
    let queue = Mutex::new(files.into_iter());
    let progress = Progress {
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    let start = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        for _ in 0..args.jobs {
            s.spawn(|| {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some((file, _)) = next else { break };
                    match read_through(&file, &mut buf, &progress.bytes) {
                        Ok(()) => {}
                        Err(e) => {
                            eprintln!("spoolfs warmup: {}: {e}", file.display());
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    progress.files.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if terminal {
            s.spawn(|| {
                while progress.files.load(Ordering::Relaxed) < total_files {
                    eprint!(
                        "\rspoolfs warmup: {}/{} files, {} of {}   ",
                        progress.files.load(Ordering::Relaxed),
                        total_files,
                        human_bytes(progress.bytes.load(Ordering::Relaxed)),
                        human_bytes(total_bytes)
                    );
                    let _ = std::io::stderr().flush();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                eprint!("\r\x1b[K");
            });
        }
    });
    let errors = progress.errors.load(Ordering::Relaxed);
    let bytes = progress.bytes.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "spoolfs warmup: {} files, {} in {:.1} s ({}/s){}",
        total_files - errors,
        human_bytes(bytes),
        secs,
        human_bytes((bytes as f64 / secs.max(1e-3)) as u64),
        if errors > 0 {
            format!("; {errors} file(s) could not be read")
        } else {
            String::new()
        }
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Every regular file under `path` (not following symlinks), with its size.
fn collect(path: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.is_file() {
        out.push((path.to_path_buf(), meta.len()));
    } else if meta.is_dir() {
        let entries =
            std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            collect(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn read_through(file: &Path, buf: &mut [u8], bytes: &AtomicU64) -> std::io::Result<()> {
    let mut f = std::fs::File::open(file)?;
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
