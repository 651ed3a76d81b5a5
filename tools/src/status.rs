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
    /// Instead of local mounts, list the sessions (mounts, on any node) of the volume in this
    /// metadata store; for a shared store (postgres://USER@HOST:PORT/DB).
    #[arg(long, value_name = "URL", conflicts_with = "mount_point")]
    pub meta: Option<String>,
}

/// `spoolfs status --meta URL`: the volume in the store and its sessions.
fn volume_sessions(url: &str, json: bool) -> Result<ExitCode> {
    let meta = crate::format::open_meta(url)?;
    let record = crate::format::read_volume_record(meta.as_ref())?;
    let sessions = spoolfs_engine::session::list(meta.as_ref())
        .with_context(|| format!("cannot list the sessions in {}", meta.describe()))?;
    let now = spoolfs_engine::session::now_s();
    let mut lease = None;
    meta.view(&mut |r| {
        lease =
            spoolfs_engine::session::lease::read(r, spoolfs_engine::session::lease::BACKGROUND)?;
        Ok(())
    })
    .with_context(|| format!("cannot read the background lease in {}", meta.describe()))?;
    // The holder's session, if it is listed, and whether the lease is in force.
    let lease_holder = lease
        .as_ref()
        .and_then(|l| sessions.iter().find(|s| s.id == l.holder));
    let lease_in_force = lease
        .as_ref()
        .is_some_and(|l| !l.expired(now) && lease_holder.is_some_and(|s| s.is_live(now)));
    if json {
        let list: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
                v["heartbeat_age_s"] = s.age_s(now).into();
                v["live"] = s.is_live(now).into();
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "metadata": meta.describe(),
                "volume_name": record.name,
                "volume_uuid": record.uuid,
                "sessions": list,
                "background_lease": lease.as_ref().map(|l| serde_json::json!({
                    "holder": l.holder,
                    "host": lease_holder.map(|s| s.host.clone()),
                    "mount_point": lease_holder.map(|s| s.mount_point.clone()),
                    "acquired_s": l.acquired_s,
                    "expires_s": l.expires_s,
                    "in_force": lease_in_force,
                })),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "volume {:?} ({}) in {}",
        record.name,
        record.uuid,
        meta.describe()
    );
    if sessions.is_empty() {
        println!("  no sessions (not mounted anywhere)");
    }
    match (&lease, lease_holder) {
        (None, _) => {
            println!("  background lease (dead-slice deletes, compaction, orphan sweep): not held")
        }
        (Some(l), holder) => {
            let who = match holder {
                Some(s) => format!("session {} (host {}, at {})", s.id, s.host, s.mount_point),
                None => format!("session {} (no longer listed)", l.holder),
            };
            let state = if lease_in_force {
                format!(
                    "expires in {}",
                    human_secs(l.expires_s.saturating_sub(now) as f64)
                )
            } else {
                "lapsed: the next mount to look takes it over".to_string()
            };
            println!(
                "  background lease (dead-slice deletes, compaction, orphan sweep): {who}, {state}"
            );
        }
    }
    for s in &sessions {
        let staged = if s.staged.bytes == 0 {
            "nothing staged".to_string()
        } else {
            format!(
                "{} staged in {} slice(s), oldest {}",
                human_bytes(s.staged.bytes),
                s.staged.slices,
                human_secs(s.staged.oldest_age_s)
            )
        };
        if s.is_live(now) {
            println!(
                "  session {}: host {} pid {} at {}, staging in {}, heartbeat {} ago, up {}, {staged}",
                s.id,
                s.host,
                s.pid,
                s.mount_point,
                s.cache_dir,
                human_secs(s.age_s(now) as f64),
                human_secs(now.saturating_sub(s.started_s) as f64),
            );
        } else {
            println!(
                "  session {}: DEAD (was host {} pid {} at {}); {staged} in {} on {}: it stays \
                 there, unreadable elsewhere, until that host mounts the volume again with \
                 that cache directory",
                s.id, s.host, s.pid, s.mount_point, s.cache_dir, s.host,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
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
    if let Some(url) = &args.meta {
        return volume_sessions(url, args.json);
    }
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

/// A duration for people: `42 s`, `3 min 20 s`, `2 h 05 min`.
fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
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
            line(
                "metadata:",
                if e.metadata_unapplied_changes > 0 {
                    format!(
                        "{}, {} change{} logged and not yet checkpointed",
                        e.metadata,
                        e.metadata_unapplied_changes,
                        if e.metadata_unapplied_changes == 1 {
                            ""
                        } else {
                            "s"
                        }
                    )
                } else {
                    e.metadata.clone()
                },
            );
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
                        "{} in {} slice{}, oldest {:.1} s",
                        human_bytes(e.staged_bytes),
                        e.staged_slices,
                        if e.staged_slices == 1 { "" } else { "s" },
                        e.oldest_staged_age_secs
                    ),
                );
            }
            if e.engine_threads > 0 {
                line(
                    "staging log:",
                    format!(
                        "{} of {} used; {} engine thread{}, {} io engine",
                        human_bytes(e.staging_used_bytes),
                        human_bytes(e.staging_capacity_bytes),
                        e.engine_threads,
                        if e.engine_threads == 1 { "" } else { "s" },
                        e.io_engine
                    ),
                );
            } else if let Some(staging) = &e.staging {
                line("staging log:", staging.clone());
            }
            if e.staging.is_some() || e.staged_bytes > 0 {
                let drain = match e.drain_eta_secs {
                    _ if e.staged_bytes == 0 => "nothing to drain".to_string(),
                    Some(eta) => format!("drains in about {}", human_secs(eta)),
                    None => "time to drain unknown (nothing uploaded lately)".to_string(),
                };
                line(
                    "upload rate:",
                    format!(
                        "{}/s over the last 10 s, {drain}",
                        human_bytes(e.upload_rate_bytes_per_sec as u64)
                    ),
                );
            }
            line(
                "block cache:",
                format!(
                    "{} of {}, {} hits, {} misses",
                    human_bytes(e.cache_bytes),
                    human_bytes(e.cache_capacity_bytes),
                    e.cache_hits,
                    e.cache_misses
                ),
            );
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
            if e.resident_bytes > 0 {
                line(
                    "memory:",
                    format!(
                        "{} resident, {} of it kept for large writes ({})",
                        human_bytes(e.resident_bytes),
                        human_bytes(e.kept_buffer_bytes),
                        match e.release_memory_after_secs {
                            Some(secs) => format!("freed after {} idle", human_secs(secs)),
                            None => "kept when idle".to_string(),
                        }
                    ),
                );
            }
            if let Some(p) = e.pack_fetch.as_ref().filter(|p| p.started > 0) {
                line(
                    "pack fetches:",
                    format!(
                        "{} packs ({}) fetched whole, {} reads served from them{}",
                        p.started,
                        human_bytes(p.bytes),
                        p.hits,
                        if p.errors > 0 {
                            format!(", {} failed", p.errors)
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            if !s.data_losses.is_empty() {
                line(
                    "DATA LOSS:",
                    format!(
                        "{} loss{} found at replay (corrupt staged data or namespace records; \
                         spoolfs fsck --forget-losses clears the list)",
                        s.data_losses.len(),
                        if s.data_losses.len() == 1 { "" } else { "es" }
                    ),
                );
                for l in &s.data_losses {
                    let file = match (&l.path, l.ino) {
                        (_, 0) => String::new(),
                        (Some(p), i) => format!(
                            "{p} (inode {i}) bytes [{}, {}): ",
                            l.offset,
                            l.offset + l.bytes
                        ),
                        (None, i) => {
                            format!("inode {i} bytes [{}, {}): ", l.offset, l.offset + l.bytes)
                        }
                    };
                    line("", format!("{file}{}", l.cause));
                }
            }
            if e.upload_errors > 0 {
                line("upload errors:", e.upload_errors.to_string());
            }
            if e.backpressure_events > 0 || e.staging_bypassed_slices > 0 {
                line(
                    "backpressure:",
                    format!(
                        "{} waits for staging room, {} slices uploaded around the log",
                        e.backpressure_events, e.staging_bypassed_slices
                    ),
                );
            }
            line("pending deletes:", e.pending_deletes.to_string());
            if let Some(held) = e.background_lease {
                line(
                    "background work:",
                    if held {
                        "here (this mount holds the volume's background lease)".into()
                    } else {
                        "on the mount holding the volume's background lease (status --meta \
                         URL names it)"
                            .into()
                    },
                );
            }
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
    if !s.fuse_transport.is_empty() {
        line("fuse transport:", s.fuse_transport.clone());
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
            control_socket: "/run/spoolfs/x.sock".into(),
            fuse_transport: "uring".into(),
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
                    "upload_rate_bytes_per_sec": 1024.0,
                    "drain_eta_secs": 2.0,
                    "cache_bytes": 3 << 20,
                    "cache_capacity_bytes": 256 << 20,
                    "cache_hits": 8,
                    "cache_misses": 9,
                    "backpressure_events": 4,
                    "staging_bypassed_slices": 5,
                    "background_lease": true,
                }))
                .unwrap(),
            ),
            engine_error: None,
            data_losses: vec![spoolfs_engine::losses::DataLoss {
                found_ns: 1,
                ino: 12,
                path: Some("/d/f".into()),
                offset: 0,
                bytes: 65536,
                slice: 77,
                cause: "staged data fails its checksum".into(),
            }],
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
            "background work: here",
            "2.0 KiB in 2 slices, oldest 1.5 s",
            "io_uring, 1 MiB of 1 GiB",
            "upload rate:     1.0 KiB/s over the last 10 s, drains in about 2.0 s",
            "block cache:     3.0 MiB of 256.0 MiB, 8 hits, 9 misses",
            "backpressure:    4 waits for staging room, 5 slices uploaded around the log",
            "upload errors:   1",
            "DATA LOSS:       1 loss found at replay",
            "/d/f (inode 12) bytes [0, 65536): staged data fails its checksum",
            "fuse transport:  uring",
            "pid 42",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        assert_eq!(human_secs(75.0), "1 min 15 s");
        assert_eq!(human_secs(7260.0), "2 h 01 min");
        let json = serde_json::to_string(&s).unwrap();
        let back: MountStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back.engine.unwrap().inodes, 10);
    }
}
