//! Flags of the writeback staging engine (`spoolfs mount`).

use crate::size::parse_size;
use clap::{ArgAction, Args};
use spoolfs_engine::staging::{IoEngineKind, StagingDurability};
use spoolfs_engine::writeback::StagingSettings;
use std::path::Path;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct StagingArgs {
    /// Acknowledge close/fsync once data is on the local staging device and upload it in the
    /// background (writeback mode). `--writeback=false`: close/fsync wait for the object store.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub writeback: bool,
    /// Engine threads writing the staging log, each with its own io_uring [default: CPUs].
    #[arg(long, value_name = "N")]
    pub engine_threads: Option<usize>,
    /// I/O engine for the staging log: auto (io_uring, else pwritev2), uring or psync.
    #[arg(long, value_name = "ENGINE", default_value = "auto", value_parser = parse_io_engine)]
    pub io_engine: IoEngineKind,
    /// flush: fsync/fdatasync push staged data through the device cache (survives a power
    /// cut); none: O_DIRECT only (survives a crash of spoolfs or the kernel, not a power cut).
    #[arg(long, value_name = "MODE", default_value = "flush", value_parser = parse_durability)]
    pub staging_durability: StagingDurability,
    /// Make close power-safe too, as fsync is: every close that wrote something flushes the
    /// staging device's cache (writeback mode; off: close survives a crash of spoolfs or the
    /// kernel, fsync also a power cut).
    #[arg(long)]
    pub durable_close: bool,
    /// Most bytes staged and not yet uploaded; at the limit writers wait for the uploaders.
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size)]
    pub max_staging: u64,
    /// Oldest staged byte allowed, in seconds; past it writers wait for the uploaders.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_secs)]
    pub max_staging_age: Duration,
    /// How long a writer waits for staging room before uploading its data itself, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub max_staging_wait: Duration,
    /// Size of one staging log segment file.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub staging_segment_size: u64,
    /// Threads uploading staged data.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub upload_threads: usize,
    /// How long small staged data waits to be packed with more into one object, in seconds
    /// (a sync or unmount does not wait).
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs_or_zero)]
    pub upload_delay: Duration,
    /// Target size of a pack object: small files are uploaded together in objects this big.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub pack_size: u64,
    /// Concurrent PUTs of one upload batch or one file's direct upload.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_uploads: usize,
    /// Concurrent delete requests of the garbage collector; each deletes up to 1,000 objects
    /// on S3 (a multi-object delete).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_deletes: usize,
    /// Bandwidth cap for background uploads, in bytes per second (e.g. 100M); 0: no cap.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub upload_limit: u64,
    /// Most bytes of just-staged data kept in memory until it is uploaded, so that the
    /// uploaders need not read it back from the staging device (0: always read it back).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub upload_buffer: u64,
    /// While writes keep arriving (data staged within the last `--upload-delay`), uploads
    /// wait until this many bytes are staged (or the oldest has waited 10 s), so that a
    /// burst of writes (a checkpoint) has the staging disk and the CPUs to itself; at most
    /// half of `--max-staging` (0: uploads start at once).
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = parse_size)]
    pub upload_hold: u64,
    /// A staging write not acknowledged by the device within this many seconds is given up
    /// and its data uploaded directly (a stalled or very slow staging device).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub staging_timeout: Duration,
}

fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "invalid number of seconds {s:?}: expected 0 to 3600"
        )),
    }
}

fn parse_io_engine(s: &str) -> Result<IoEngineKind, String> {
    match s {
        "auto" => Ok(IoEngineKind::Auto),
        "uring" | "io_uring" => Ok(IoEngineKind::Uring),
        "psync" => Ok(IoEngineKind::Psync),
        _ => Err(format!(
            "invalid io engine {s:?}: expected auto, uring or psync"
        )),
    }
}

fn parse_durability(s: &str) -> Result<StagingDurability, String> {
    match s {
        "flush" => Ok(StagingDurability::Flush),
        "none" => Ok(StagingDurability::None),
        _ => Err(format!(
            "invalid staging durability {s:?}: expected flush or none"
        )),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 30.0 * 86400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "invalid number of seconds {s:?}: expected more than 0, at most 30 days"
        )),
    }
}

/// `value` of `flag` within `lo..=hi`, or the message that says what is expected.
fn check_range<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if lo <= value && value <= hi {
        return Ok(());
    }
    Err(format!("invalid {flag} {value}: expected {lo} to {hi}"))
}

impl StagingArgs {
    pub fn settings(&self, cache_dir: &Path) -> Result<StagingSettings, String> {
        let threads = self
            .engine_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        check_range("--engine-threads", threads, 1, 256)?;
        if self.staging_segment_size < (1 << 20)
            || self.staging_segment_size > (1 << 30)
            || !self.staging_segment_size.is_multiple_of(64 << 10)
        {
            return Err(format!(
                "invalid --staging-segment-size {}: a multiple of 64 KiB from 1 MiB to 1 GiB",
                self.staging_segment_size
            ));
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.pack_size) {
            return Err(format!(
                "invalid --pack-size {}: expected 64 KiB to 1 GiB",
                self.pack_size
            ));
        }
        check_range("--max-uploads", self.max_uploads, 1, 1024)?;
        check_range("--max-deletes", self.max_deletes, 1, 1024)?;
        check_range("--upload-threads", self.upload_threads, 1, 256)?;
        Ok(StagingSettings {
            cache_dir: cache_dir.to_path_buf(),
            writeback: self.writeback,
            engine_threads: threads,
            io_engine: self.io_engine,
            durability: self.staging_durability,
            segment_size: self.staging_segment_size,
            max_staging_bytes: self.max_staging.max(self.staging_segment_size),
            max_staging_age: self.max_staging_age,
            max_staging_wait: self.max_staging_wait,
            upload_threads: self.upload_threads,
            upload_delay: self.upload_delay,
            pack_size: self.pack_size as usize,
            upload_limit: self.upload_limit,
            upload_buffer: self.upload_buffer,
            upload_hold: self.upload_hold,
            staging_timeout: self.staging_timeout,
            // Test mounts inject staging faults through the environment (see docs/ARCHITECTURE.md).
            faults: match std::env::var("SPOOLFS_STAGING_FAULTS") {
                Ok(spec) if !spec.is_empty() => {
                    Some(spoolfs_engine::staging::FaultConfig::from_spec(&spec)?)
                }
                _ => None,
            },
            namespace_faults: match std::env::var("SPOOLFS_NAMESPACE_FAULTS") {
                Ok(spec) if !spec.is_empty() => {
                    Some(spoolfs_engine::staging::FaultConfig::from_spec(&spec)?)
                }
                _ => None,
            },
            device: None,
        })
    }

    /// The same flags, for the daemon's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![
            format!("--writeback={}", self.writeback),
            format!(
                "--io-engine={}",
                match self.io_engine {
                    IoEngineKind::Auto => "auto",
                    IoEngineKind::Uring => "uring",
                    IoEngineKind::Psync => "psync",
                }
            ),
            format!(
                "--staging-durability={}",
                match self.staging_durability {
                    StagingDurability::Flush => "flush",
                    StagingDurability::None => "none",
                }
            ),
            format!("--max-staging={}", self.max_staging),
            format!("--max-staging-age={}", self.max_staging_age.as_secs_f64()),
            format!("--max-staging-wait={}", self.max_staging_wait.as_secs_f64()),
            format!("--staging-segment-size={}", self.staging_segment_size),
            format!("--upload-threads={}", self.upload_threads),
            format!("--upload-delay={}", self.upload_delay.as_secs_f64()),
            format!("--pack-size={}", self.pack_size),
            format!("--max-uploads={}", self.max_uploads),
            format!("--max-deletes={}", self.max_deletes),
            format!("--upload-limit={}", self.upload_limit),
            format!("--upload-buffer={}", self.upload_buffer),
            format!("--upload-hold={}", self.upload_hold),
            format!("--staging-timeout={}", self.staging_timeout.as_secs_f64()),
        ];
        if let Some(n) = self.engine_threads {
            out.push(format!("--engine-threads={n}"));
        }
        if self.durable_close {
            out.push("--durable-close".into());
        }
        out
    }
}
