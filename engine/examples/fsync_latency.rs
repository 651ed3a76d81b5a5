//! In-process latency of the durable-ack path, without FUSE: 4 KiB random writes into one file,
//! each followed by `fsync` (or by nothing, or by a `close`-style flush), through a writeback
//! engine whose staging and namespace logs live under DIR (put it on the disk under test).
//!
//!   cargo run --release -p spoolfs-engine --example fsync_latency -- DIR [OPS] [fsync|flush]
//!
//! Prints p50/p90/p99 in microseconds, and the CPU time the calling thread spent per call (the
//! engine's own work on the caller's side: the transaction, building the record; the rest of
//! the latency is waiting for the engine thread and the device). `benches/fio.sh` measures the
//! same through the kernel.

use spoolfs_engine::writeback::{StagingSettings, open_staging};
use spoolfs_engine::*;
use spoolfs_metadata::{KvStore, RedbStore};
use spoolfs_objects::ObjectStorage;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        return Err("usage: fsync_latency DIR [OPS] [fsync|flush]".into());
    };
    let ops: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let mode = args.get(2).map(String::as_str).unwrap_or("fsync");
    if !matches!(mode, "fsync" | "flush") {
        return Err(format!("unknown mode {mode:?} (fsync or flush)").into());
    }
    let root = tempfile::tempdir_in(dir)?;
    let meta: Arc<dyn KvStore> = Arc::new(RedbStore::open(&root.path().join("meta.redb"))?);
    let storage_config = StorageConfig {
        url: format!("file://{}/objects", root.path().display()),
        ..Default::default()
    };
    format_volume(
        &meta,
        &FormatOptions {
            name: "bench".into(),
            storage: storage_config.clone(),
            block_size: 4 << 20,
            force: false,
        },
    )?;
    let record = volume::read_record(meta.as_ref())?.ok_or("no volume record")?;
    // The mount's defaults, with a smaller staging bound and fewer uploaders.
    let settings = StagingSettings {
        cache_dir: root.path().join("cache"),
        max_staging_bytes: 1 << 30,
        max_staging_wait: Duration::from_secs(60),
        upload_threads: 2,
        ..Default::default()
    };
    let (meta, staging) = open_staging(meta, &record, &settings)?;
    let storage = Arc::new(ObjectStorage::open(&storage_config)?);
    let config = EngineConfig {
        staging: Some(staging),
        ..Default::default()
    };
    let engine = Engine::start(meta, storage, record, config)?;
    let (attr, fh) = engine.create(&Caller::ROOT, ROOT_INO, b"f", 0o644, libc::O_RDWR)?;
    let file_size: u64 = 64 << 20;
    let mut rng = spoolfs_testkit::Rng::new(1);
    let block = vec![0xa5u8; 4096];
    let mut lat = Vec::with_capacity(ops);
    let cpu_before = thread_cpu();
    for _ in 0..ops {
        let off = rng.below(file_size / 4096) * 4096;
        let t = Instant::now();
        engine.write(&Caller::ROOT, attr.ino, fh, off, &block)?;
        match mode {
            "fsync" => engine.fsync(attr.ino, fh, false)?,
            _ => engine.flush(attr.ino, fh)?,
        }
        lat.push(t.elapsed());
    }
    let cpu_per_op = (thread_cpu() - cpu_before).as_secs_f64() * 1e6 / ops as f64;
    engine.release(attr.ino, fh)?;
    engine.shutdown()?;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "{ops} x 4 KiB write+{mode}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs; caller CPU {cpu_per_op:.1} µs per call",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    Ok(())
}

/// CPU time (user and system) of the calling thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
