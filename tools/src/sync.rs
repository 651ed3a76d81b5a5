//! `spoolfs sync PATH`: returns once everything written under PATH before the call is in the
//! object store (today the barrier covers the whole volume that holds PATH).

use crate::control;
use crate::paths::runtime_files;
use crate::size::human_bytes;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// A file or directory inside a spoolfs mount.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Give up after this many seconds (exit status 1); default: wait as long as it takes.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

/// The spoolfs mount point that holds `path` (the deepest one).
pub fn mount_of(path: &Path) -> Result<PathBuf> {
    let mounts = spoolfs_fuse::read_mountinfo().context("cannot read /proc/self/mountinfo")?;
    for dir in path.ancestors() {
        if let Some(m) = mounts.iter().rev().find(|m| m.mount_point == dir) {
            if m.fs_type == "fuse.spoolfs" {
                return Ok(m.mount_point.clone());
            }
            bail!(
                "{} is not on a spoolfs mount (it is on a {} mount at {})",
                path.display(),
                m.fs_type,
                dir.display()
            );
        }
    }
    bail!("{} is not on a spoolfs mount", path.display())
}

pub fn run(args: SyncArgs) -> Result<ExitCode> {
    if let Some(t) = args.timeout
        && !(t.is_finite() && t > 0.0)
    {
        bail!("invalid --timeout {t}: expected a positive number of seconds");
    }
    let path = std::fs::canonicalize(&args.path)
        .with_context(|| format!("cannot resolve {}", args.path.display()))?;
    let mount_point = mount_of(&path)?;
    let files = runtime_files(&mount_point);
    let terminal = std::io::stderr().is_terminal();
    let mut shown = false;
    let result = control::sync(&files.socket, args.timeout, &mut |slices, bytes| {
        if terminal && slices > 0 {
            eprint!(
                "\rspoolfs sync: {} in {slices} slice(s) still to upload   ",
                human_bytes(bytes)
            );
            let _ = std::io::stderr().flush();
            shown = true;
        }
    });
    if shown {
        eprintln!();
    }
    result.with_context(|| format!("sync of {} did not finish", path.display()))?;
    println!(
        "spoolfs: everything written under {} before the sync is in the object store",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
