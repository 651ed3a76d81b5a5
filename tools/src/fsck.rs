//! `spoolfs fsck`: check (and with `--repair`, repair) an unmounted volume: its metadata
//! against the object store and, with `--cache-dir`, the staging log.
//!
//! Exit status: 0 when no errors remain (warnings and notes do not count), 1 when errors were
//! found and not repaired, 2 when the check itself could not run (usage, a mounted volume,
//! I/O errors).

use crate::S3Args;
use crate::size::human_bytes;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use spoolfs_engine::fsck::{FsckOptions, FsckReport, Severity};
use spoolfs_metadata::MetaError;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Metadata store URL of the volume (as given to mount). Default: the default volume's.
    #[arg(long, value_name = "URL")]
    pub meta: Option<String>,
    /// The --cache-dir the volume was mounted with: also check the staging log (needed when
    /// the last mount did not end cleanly and left staged data there).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Fix what is safe to fix: dangling entries, link counts, pack and space counters;
    /// ranges whose data is missing or corrupt become holes (reported as data loss);
    /// unreferenced objects older than --orphan-grace are deleted.
    #[arg(long)]
    pub repair: bool,
    /// Fetch every referenced block and packed slice and check its checksum (slow: reads
    /// the whole volume).
    #[arg(long)]
    pub verify_data: bool,
    /// Unreferenced objects younger than this (in seconds) are reported but never deleted.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_grace)]
    pub orphan_grace: Duration,
    /// After reporting them, delete the data losses that mounts recorded (corruption found in
    /// the staging or namespace log at replay): once you have restored or given up those files.
    #[arg(long)]
    pub forget_losses: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "invalid number of seconds {s:?}: expected 0 or more"
        )),
    }
}

/// Runs the check; errors that stop it are reported here with exit status 2.
pub fn run(args: FsckArgs) -> Result<ExitCode> {
    match check(&args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("spoolfs fsck: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn check(args: &FsckArgs) -> Result<ExitCode> {
    let meta_url = match &args.meta {
        Some(m) => m.clone(),
        None => spoolfs_engine::default_volume_paths().0,
    };
    // Do not create an empty store where none is.
    if let Some(path) = meta_url.strip_prefix("redb://")
        && !std::path::Path::new(path).exists()
    {
        bail!("no volume at {meta_url}: {path} does not exist");
    }
    let meta = match spoolfs_metadata::open_store(&meta_url) {
        Ok(m) => m,
        Err(MetaError::Locked { path }) => bail!(
            "the volume is mounted (its metadata store {path} is in use by another process); \
             unmount it first: fsck checks unmounted volumes only"
        ),
        Err(e) => return Err(anyhow!(e).context("cannot open the metadata store")),
    };
    spoolfs_engine::session::refuse_if_mounted(
        meta.as_ref(),
        "unmount it first: fsck checks unmounted volumes only",
    )?;
    let record = spoolfs_engine::volume::read_record(meta.as_ref())
        .with_context(|| format!("cannot read the volume record in {}", meta.describe()))?
        .ok_or_else(|| anyhow!("no volume in {}", meta.describe()))?;
    let cache_dir = match &args.cache_dir {
        Some(d) if d.is_absolute() => Some(d.clone()),
        Some(d) => Some(
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(d),
        ),
        None => None,
    };
    let notes = spoolfs_engine::fsck::check_offline(meta.as_ref(), &record, cache_dir.as_deref())?;
    let storage = args.s3.open_storage(&record)?;
    let opts = FsckOptions {
        repair: args.repair,
        verify_data: args.verify_data,
        staging_dir: cache_dir.as_ref().map(|d| d.join(&record.uuid)),
        orphan_grace: args.orphan_grace,
        forget_losses: args.forget_losses,
    };
    let terminal = !args.json && std::io::stderr().is_terminal();
    let mut last_shown = std::time::Instant::now();
    let mut shown = false;
    let mut progress = |phase: &str, done: u64, total: u64| {
        if !terminal || last_shown.elapsed() < Duration::from_millis(200) {
            return;
        }
        last_shown = std::time::Instant::now();
        shown = true;
        if total > 0 {
            eprint!("\rspoolfs fsck: {phase} {done}/{total}            ");
        } else {
            eprint!("\rspoolfs fsck: {phase}...                        ");
        }
        let _ = std::io::stderr().flush();
    };
    let mut report =
        spoolfs_engine::fsck::fsck(meta.as_ref(), &storage, &record, &opts, &mut progress)?;
    if shown {
        eprint!("\r{:60}\r", "");
    }
    report.findings.extend(notes);
    let code = if report.unrepaired_errors() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("cannot encode the report")?
        );
    } else {
        print_report(&report, &meta.describe(), storage.describe(), args);
    }
    Ok(code)
}

fn print_report(r: &FsckReport, meta: &str, objects: &str, args: &FsckArgs) {
    let s = &r.stats;
    println!(
        "volume {:?} ({}): metadata {meta}, objects {objects}",
        r.volume, r.uuid
    );
    println!(
        "checked {} inodes ({} directories), {} entries, {} segments, {} live slices ({}; {} \
         packed, {} staged), {} objects ({}){}",
        s.inodes,
        s.directories,
        s.entries,
        s.segments,
        s.live_slices,
        human_bytes(s.live_bytes),
        s.packed_slices,
        s.staged_slices,
        s.objects,
        human_bytes(s.object_bytes),
        if r.verify_data {
            format!(", {} verified", s.objects_verified)
        } else {
            String::new()
        }
    );
    if s.staged_unchecked > 0 {
        println!(
            "{} staged slice(s) not checked against the staging log (pass --cache-dir)",
            s.staged_unchecked
        );
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Error => "ERROR  ",
            Severity::Warning => "warning",
            Severity::Note => "note   ",
        };
        let at = match (&f.path, f.ino) {
            (Some(p), Some(i)) => format!("{p} (inode {i}): "),
            (None, Some(i)) => format!("inode {i}: "),
            _ => String::new(),
        };
        println!(
            "{sev} {:<20} {at}{}{}",
            f.kind,
            f.message,
            if f.repaired { " [repaired]" } else { "" }
        );
    }
    if s.orphan_objects > 0 {
        println!(
            "orphans: {} object(s), {} referenced by nothing{}",
            s.orphan_objects,
            human_bytes(s.orphan_bytes),
            if r.repair {
                format!(
                    "; deleted {} ({})",
                    s.orphan_objects_deleted,
                    human_bytes(s.orphan_bytes_deleted)
                )
            } else {
                format!(
                    " (--repair deletes those older than {}s)",
                    args.orphan_grace.as_secs()
                )
            }
        );
    }
    if s.recorded_losses > 0 {
        println!(
            "DATA LOSS: {} loss(es) recorded when staged data or namespace changes failed their \
             checksums at a mount ({} of file data read as zeros; listed above as data-loss){}",
            s.recorded_losses,
            human_bytes(s.recorded_lost_bytes),
            if s.losses_forgotten > 0 {
                format!("; {} forgotten (--forget-losses)", s.losses_forgotten)
            } else {
                "; --forget-losses clears the list".into()
            }
        );
    }
    if s.data_lost_bytes > 0 {
        println!(
            "DATA LOSS: {} of file data could not be recovered and now read as zeros (the \
             files are listed above)",
            human_bytes(s.data_lost_bytes)
        );
    }
    let (errors, warnings) = (r.errors(), r.warnings());
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    let mut summary = format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    );
    if r.repair {
        summary += &format!("; repaired {}", r.repaired());
        let left = r.unrepaired_errors();
        if left > 0 {
            summary += &format!("; {} not repairable automatically", plural(left, "error"));
        }
    } else if errors + warnings > 0 {
        summary += "; run with --repair to fix what is safe to fix";
    }
    println!("{summary}");
}
