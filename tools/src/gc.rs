//! `spoolfs gc`: reclaim object-store space. Deletes objects no metadata refers to (older than
//! `--min-age`) and, with `--compact`, rewrites pack objects whose live fraction is below
//! `--threshold`. On a mounted volume the daemon does the work (over its control socket), safely
//! while the volume is in use; `--meta URL` works on an unmounted volume.

use crate::S3Args;
use crate::control;
use crate::format::open_meta;
use crate::paths::{canonical_mount_point, runtime_files};
use crate::size::human_bytes;
use crate::umount::find_spoolfs_mount;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use spoolfs_engine::gc::{GcOptions, GcReport};
use spoolfs_engine::{Engine, EngineConfig};
use std::io::{IsTerminal, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// The mount point of a mounted volume (the daemon does the work while the volume stays
    /// in use).
    #[arg(
        value_name = "MOUNTPOINT",
        required_unless_present = "meta",
        conflicts_with = "meta"
    )]
    pub mount_point: Option<PathBuf>,
    /// Work on an unmounted volume instead: its metadata store URL, as given to `spoolfs
    /// mount --meta`. The volume must have been unmounted cleanly.
    #[arg(long, value_name = "URL")]
    pub meta: Option<String>,
    /// Also rewrite pack objects whose live fraction is below --threshold.
    #[arg(long)]
    pub compact: bool,
    /// Live fraction (0 to 1) below which --compact rewrites a pack.
    #[arg(long, value_name = "F", default_value = "0.5", value_parser = parse_fraction)]
    pub threshold: f64,
    /// Unreferenced objects younger than this are kept (an upload may be about to commit
    /// them): `90s`, `30m`, `1h`, `2d`, or seconds.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Report what would be reclaimed; delete and rewrite nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

pub fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid fraction {s:?}: expected 0 to 1, e.g. 0.5")),
    }
}

/// `90`, `90s`, `30m`, `1.5h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let bad = || format!("invalid duration {text:?}: expected e.g. 90s, 30m, 1h, 2d");
    let v: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        _ => return Err(bad()),
    };
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!(
            "invalid duration {text:?}: expected at most 365 days"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86400) {
        format!("{}d", s / 86400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Progress on stderr when it is a terminal.
struct Progress {
    terminal: bool,
    shown: bool,
}

impl Progress {
    fn update(&mut self, phase: &str, done: u64, total: u64) {
        if !self.terminal {
            return;
        }
        if total > 0 {
            eprint!("\r\x1b[Kspoolfs gc: {phase} {done}/{total}");
        } else {
            eprint!("\r\x1b[Kspoolfs gc: {phase}…");
        }
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            let _ = std::io::stderr().flush();
            self.shown = false;
        }
    }
}

pub fn run(args: GcArgs) -> Result<ExitCode> {
    let opts = GcOptions {
        sweep: true,
        compact: args.compact,
        threshold: args.threshold,
        min_age: args.min_age,
        dry_run: args.dry_run,
    };
    let mut progress = Progress {
        terminal: std::io::stderr().is_terminal(),
        shown: false,
    };
    let (target, result) = match (&args.mount_point, &args.meta) {
        (Some(mp), _) => {
            let path = canonical_mount_point(mp)
                .with_context(|| format!("cannot resolve {}", mp.display()))?;
            find_spoolfs_mount(&path)?;
            let files = runtime_files(&path);
            let result = control::gc(&files.socket, &opts, &mut |p, d, t| {
                progress.update(p, d, t)
            })
            .with_context(|| format!("gc of {} failed", path.display()));
            (path.display().to_string(), result)
        }
        (None, Some(url)) => {
            let result = offline(url, &args.s3, &opts, &mut |p, d, t| {
                progress.update(p, d, t)
            });
            (url.clone(), result)
        }
        (None, None) => bail!("give a mount point, or --meta URL for an unmounted volume"),
    };
    progress.finish();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", describe(&target, &opts, &report));
    }
    if !report.errors.is_empty() {
        if !args.json {
            eprintln!(
                "spoolfs gc: {} problem(s), listed above; everything else was done",
                report.errors.len()
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Garbage collection of an unmounted volume, by an engine of our own.
fn offline(
    url: &str,
    s3: &S3Args,
    opts: &GcOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<GcReport> {
    let meta = open_meta(url).map_err(|e| {
        let busy = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<spoolfs_metadata::MetaError>(),
                Some(spoolfs_metadata::MetaError::Locked { .. })
            )
        });
        if busy {
            e.context(
                "the volume is in use (mounted?); run `spoolfs gc MOUNTPOINT` on its mount instead",
            )
        } else {
            e
        }
    })?;
    spoolfs_engine::session::refuse_if_mounted(
        meta.as_ref(),
        "run `spoolfs gc MOUNTPOINT` on its mount instead",
    )?;
    let record = spoolfs_engine::volume::read_record(meta.as_ref())
        .with_context(|| format!("cannot read the volume record in {}", meta.describe()))?
        .ok_or_else(|| anyhow!("no volume in {}", meta.describe()))?;
    if !spoolfs_engine::writeback::metadata_is_self_contained(meta.as_ref())? {
        bail!(
            "volume {:?} was not unmounted cleanly: its staging and namespace logs hold changes \
             the metadata store does not have yet. Mount it (the mount replays them), then run \
             `spoolfs gc MOUNTPOINT`",
            record.name
        );
    }
    let storage = s3.open_storage(&record)?;
    let config = EngineConfig {
        compaction: None,
        drain_on_shutdown: None,
        ..Default::default()
    };
    let name = record.name.clone();
    let engine = Engine::start(meta, Arc::new(storage), record, config)
        .with_context(|| format!("cannot open volume {name:?}"))?;
    let result = catch_unwind(AssertUnwindSafe(|| engine.run_gc(opts, progress)));
    let stopped = engine.shutdown();
    let report = match result {
        Ok(r) => r.with_context(|| format!("gc of volume {name:?} failed"))?,
        Err(p) => bail!(
            "gc of volume {name:?} failed: {}",
            spoolfs_fuse::panic_message(p)
        ),
    };
    stopped.with_context(|| format!("cannot close volume {name:?}"))?;
    Ok(report)
}

/// The human report.
pub fn describe(target: &str, opts: &GcOptions, r: &GcReport) -> String {
    let mut out = format!(
        "spoolfs gc of {target}{}\n",
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<18} {v}\n"));
    if !r.dry_run {
        line(
            "dead slices:",
            format!(
                "{} deleted ({} of objects)",
                r.dead_slices_collected,
                human_bytes(r.dead_object_bytes)
            ),
        );
    }
    line("objects listed:", r.objects_listed.to_string());
    line(
        "orphans:",
        format!(
            "{} found ({}), {} deleted ({}); {} unreferenced but younger than {} kept",
            r.orphans_found,
            human_bytes(r.orphan_bytes),
            r.orphans_deleted,
            human_bytes(r.orphan_bytes_deleted),
            r.young_unreferenced,
            human_duration(opts.min_age)
        ),
    );
    if r.unknown_objects > 0 {
        line(
            "unknown objects:",
            format!("{} (not spoolfs keys; left alone)", r.unknown_objects),
        );
    }
    line(
        "packs before:",
        format!(
            "{} ({}, {} of it dead)",
            r.packs,
            human_bytes(r.pack_bytes),
            human_bytes(r.pack_dead_bytes)
        ),
    );
    if opts.compact {
        line(
            "compaction:",
            if r.dry_run {
                format!(
                    "{} pack(s) below {:.0}% live would be rewritten",
                    r.packs_to_compact,
                    opts.threshold * 100.0
                )
            } else {
                format!(
                    "{} of {} pack(s) below {:.0}% live rewritten into {}; {} slice(s), {} moved",
                    r.packs_compacted,
                    r.packs_to_compact,
                    opts.threshold * 100.0,
                    r.packs_written,
                    r.slices_moved,
                    human_bytes(r.bytes_moved)
                )
            },
        );
    }
    line(
        if r.dry_run {
            "would reclaim:"
        } else {
            "reclaimed:"
        },
        human_bytes(r.bytes_reclaimed),
    );
    for e in &r.errors {
        out.push_str(&format!("  problem: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fractions() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1000d").is_err());
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("nan").is_err());
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
    }
}
