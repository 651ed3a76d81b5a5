//! `spoolfs status`: ask mounts' control sockets what they are doing.

use crate::control::{MountStatus, query};
use crate::paths::{canonical_mount_point, runtime_files};
use crate::size::human_bytes;
use crate::umount::{alive, find_spoolfs_mount, read_pid};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A mount point; without one, every spoolfs mount is shown.
    #[arg(value_name = "MOUNTPOINT")]
    pub mount_point: Option<PathBuf>,
    /// Print JSON (one object for a mount point, an array otherwise).
    #[arg(long)]
    pub json: bool,
}

fn query_mount(path: &Path) -> Result<(String, MountStatus)> {
    let files = runtime_files(path);
    if let Some(pid) = read_pid(&files.pid)
        && !alive(pid)
    {
        anyhow::bail!(
            "the spoolfs daemon of {} (pid {pid}) is not running; the mount is dead: \
             unmount it with `spoolfs umount {}`",
            path.display(),
            path.display()
        );
    }
    query(&files.socket).with_context(|| format!("cannot get the status of {}", path.display()))
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    if let Some(mp) = &args.mount_point {
        let path = canonical_mount_point(mp)
            .with_context(|| format!("cannot resolve {}", mp.display()))?;
        find_spoolfs_mount(&path)?;
        let (raw, status) = query_mount(&path)?;
        if args.json {
            println!("{raw}");
        } else {
            print!("{}", describe(&status));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mounts: Vec<PathBuf> = spoolfs_fuse::read_mountinfo()
        .context("cannot read /proc/self/mountinfo")?
        .into_iter()
        .filter(|m| m.fs_type == "fuse.spoolfs")
        .map(|m| m.mount_point)
        .collect();
    let mut failed = false;
    let mut json = Vec::new();
    for (i, path) in mounts.iter().enumerate() {
        match query_mount(path) {
            Ok((raw, status)) => {
                if args.json {
                    json.push(serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null));
                } else {
                    if i > 0 {
                        println!();
                    }
                    print!("{}", describe(&status));
                }
            }
            Err(e) => {
                failed = true;
                if args.json {
                    json.push(serde_json::json!({
                        "mount_point": path,
                        "error": format!("{e:#}"),
                    }));
                } else {
                    if i > 0 {
                        println!();
                    }
                    println!("{}: {e:#}", path.display());
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(json));
    } else if mounts.is_empty() {
        println!("no spoolfs mounts");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The human summary of one mount.
pub fn describe(s: &MountStatus) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<16} {v}\n"));
    let mut head = format!("{}", s.mount_point.display());
    match &s.engine {
        Some(e) => {
            head.push_str(&format!(": volume {:?} ({})", e.volume_name, e.volume_uuid));
            line(
                "mode:",
                format!("{}{}", e.mode, if s.read_only { ", read-only" } else { "" }),
            );
            line("metadata:", e.metadata.clone());
            line(
                "storage:",
                format!(
                    "{} ({})",
                    e.storage,
                    match (&s.storage_reachable, &s.storage_error) {
                        (true, _) => "reachable".to_string(),
                        (false, Some(err)) => format!("UNREACHABLE: {err}"),
                        (false, None) => "UNREACHABLE".to_string(),
                    }
                ),
            );
            line("open files:", e.open_files.to_string());
            line("inodes:", e.inodes.to_string());
            line("used:", human_bytes(e.used_bytes));
            line(
                "dirty:",
                format!("{} not yet in object storage", human_bytes(e.dirty_bytes)),
            );
            if e.staging.is_some() || e.staged_bytes > 0 {
                line(
                    "staged:",
                    format!(
                        "{} in {} slices, oldest {:.1} s",
                        human_bytes(e.staged_bytes),
                        e.staged_slices,
                        e.oldest_staged_age_secs
                    ),
                );
            }
            if let Some(staging) = &e.staging {
                line("staging log:", staging.clone());
            }
            if let Some(c) = &e.data_cache {
                line(
                    "data cache:",
                    format!(
                        "{} in {} entries, {} hits, {} misses{}",
                        human_bytes(c.bytes),
                        c.entries,
                        c.hits,
                        c.misses,
                        if c.corrupt > 0 {
                            format!(", {} damaged files dropped", c.corrupt)
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            if e.upload_errors > 0 {
                line("upload errors:", e.upload_errors.to_string());
            }
            line("pending deletes:", e.pending_deletes.to_string());
            line(
                "objects:",
                format!("{} put, {} got", e.objects_put, e.objects_got),
            );
        }
        None => {
            line(
                "engine:",
                format!(
                    "no status ({})",
                    s.engine_error.as_deref().unwrap_or("unknown error")
                ),
            );
            line(
                "storage:",
                if s.storage_reachable {
                    "reachable".to_string()
                } else {
                    format!(
                        "UNREACHABLE: {}",
                        s.storage_error.as_deref().unwrap_or("unknown error")
                    )
                },
            );
        }
    }
    line(
        "daemon:",
        format!(
            "pid {}{}",
            s.pid,
            s.log_file
                .as_ref()
                .map(|l| format!(", log {}", l.display()))
                .unwrap_or_default()
        ),
    );
    format!("{head}\n{out}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoolfs_engine::EngineStatus;

    #[test]
    fn summary_names_every_field() {
        let s = MountStatus {
            pid: 42,
            mount_point: "/mnt/x".into(),
            read_only: false,
            log_file: Some("/var/log/s.log".into()),
            cache_dir: "/c".into(),
            storage_reachable: false,
            storage_error: Some("connection refused".into()),
            // From JSON, so fields the engine adds later (with defaults) do not break this.
            engine: Some(
                serde_json::from_value::<EngineStatus>(serde_json::json!({
                    "volume_name": "vol",
                    "volume_uuid": "u-1",
                    "mode": "writeback",
                    "metadata": "redb:///m",
                    "storage": "file:///o",
                    "open_files": 3,
                    "inodes": 10,
                    "used_bytes": 4 << 20,
                    "dirty_bytes": 1024,
                    "objects_put": 5,
                    "objects_got": 6,
                    "pending_deletes": 7,
                    "staged_bytes": 2048,
                    "staged_slices": 2,
                    "oldest_staged_age_secs": 1.5,
                    "upload_errors": 1,
                    "staging": "io_uring, 1 MiB of 1 GiB",
                }))
                .unwrap(),
            ),
            engine_error: None,
        };
        let text = describe(&s);
        for needle in [
            "/mnt/x: volume \"vol\" (u-1)",
            "mode:            writeback",
            "redb:///m",
            "UNREACHABLE: connection refused",
            "open files:",
            "4.0 MiB",
            "1.0 KiB not yet",
            "pending deletes: 7",
            "2.0 KiB in 2 slices, oldest 1.5 s",
            "io_uring, 1 MiB of 1 GiB",
            "upload errors:   1",
            "pid 42",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        let json = serde_json::to_string(&s).unwrap();
        let back: MountStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back.engine.unwrap().inodes, 10);
    }
}
