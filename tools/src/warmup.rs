//! `spoolfs warmup PATH`: fetches the data of every file under PATH into the mount's local
//! data cache (`--cache-size`) before anyone needs it: later reads, also after a remount, cost
//! no object-store round trip. The daemon does the work (asked over its control socket): whole
//! packs and blocks, `--jobs` fetches at once, the same fetches a cold read makes. A daemon too
//! old for that request gets the files read through the mount instead.

use crate::control;
use crate::paths::runtime_files;
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
    /// Objects fetched at once.
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
    let mount_point = mount_of(&path)?;
    let inside = path.strip_prefix(&mount_point).unwrap_or(Path::new(""));
    if let Some(inside) = inside.to_str() {
        let request = control::WarmupRequest {
            path: inside.to_string(),
            jobs: args.jobs,
        };
        let socket = runtime_files(&mount_point).socket;
        let terminal = std::io::stderr().is_terminal();
        let mut shown = false;
        let answer = control::warmup(&socket, &request, &mut |r| {
            if terminal {
                eprint!(
                    "\rspoolfs warmup: {} of {} ({}/s)   ",
                    human_bytes(r.done_bytes),
                    human_bytes(r.total_bytes),
                    human_bytes(rate(r.fetched_bytes, r.secs))
                );
                let _ = std::io::stderr().flush();
                shown = true;
            }
        });
        if shown {
            eprint!("\r\x1b[K");
        }
        match answer.with_context(|| format!("warmup of {} did not finish", path.display()))? {
            Some(r) => {
                println!(
                    "spoolfs warmup: {} files, {} in {:.1} s ({}/s), {} fetched from the object \
                     store{}",
                    r.files,
                    human_bytes(r.done_bytes),
                    r.secs,
                    human_bytes(rate(r.done_bytes, r.secs)),
                    human_bytes(r.fetched_bytes),
                    if r.errors > 0 {
                        format!("; {} object(s) could not be fetched", r.errors)
                    } else {
                        String::new()
                    }
                );
                return Ok(if r.errors > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            None => eprintln!(
                "spoolfs warmup: the daemon is too old to fetch by itself; reading the files \
                 through the mount"
            ),
        }
    }
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
                    let bytes = progress.bytes.load(Ordering::Relaxed);
                    eprint!(
                        "\rspoolfs warmup: {}/{} files, {} of {} ({}/s)   ",
                        progress.files.load(Ordering::Relaxed),
                        total_files,
                        human_bytes(bytes),
                        human_bytes(total_bytes),
                        human_bytes(rate(bytes, start.elapsed().as_secs_f64()))
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
        human_bytes(rate(bytes, secs)),
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

/// Bytes per second.
fn rate(bytes: u64, secs: f64) -> u64 {
    (bytes as f64 / secs.max(1e-3)) as u64
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
