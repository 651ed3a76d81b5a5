//! `spoolfs bench DIR`: a small fio-style benchmark of any directory.
//!
//! It works on any file system, spoolfs or not, so the same command run on a local disk is the
//! baseline. Tests, in order, inside a private work directory `DIR/.spoolfs-bench.*` that is
//! removed at the end (also on an error or Ctrl-C):
//!
//! 1. random writes of `--block-size` bytes at queue depth 1, each followed by `fsync`;
//! 2. the same without `fsync` (latency of `write` alone);
//! 3. random reads of `--block-size` bytes at queue depth 1, after asking the kernel to drop
//!    the file's cached pages (`posix_fadvise(DONTNEED)`);
//! 4. one sequential write of `--seq-size` bytes in `--seq-block` writes, then `fsync`;
//! 5. `--small-files` files made with create + write + close;
//! 6. `stat` of each of them; 7. `readdir` of their directory; 8. `unlink` of each of them.
//!
//! Latencies go into a log-linear histogram ([`Histogram`]: 32 linear buckets per power of
//! two, so a percentile is within about 3 % of the exact value).

use crate::size::parse_size;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Directory to measure: any writable directory, on spoolfs or not (run it on a local disk
    /// too, for a baseline). Files are made in a private subdirectory and removed at the end.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Small sizes and counts (a few seconds): for tests and a first look. Flags given
    /// explicitly win over the preset.
    #[arg(long)]
    pub quick: bool,
    /// Size of the file of the random write and read tests [default: 64M; --quick: 1M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub file_size: Option<u64>,
    /// Size of one random write or read.
    #[arg(long, value_name = "SIZE", default_value = "4K", value_parser = parse_nonzero_size)]
    pub block_size: u64,
    /// Operations of each random write and read test [default: 2000; --quick: 64].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub ops: Option<u64>,
    /// Bytes written by the sequential write test [default: 256M; --quick: 4M].
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub seq_size: Option<u64>,
    /// Size of one write of the sequential write test.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_nonzero_size)]
    pub seq_block: u64,
    /// Files made (then stat'ed, listed and removed) by the small-file tests [default: 1000;
    /// --quick: 64].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub small_files: Option<u64>,
    /// Size of each small file.
    #[arg(long, value_name = "SIZE", default_value = "4K", value_parser = parse_size)]
    pub small_file_size: u64,
    /// How many times the readdir test lists the directory of small files [default: 20;
    /// --quick: 5].
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub readdir_passes: Option<u64>,
    /// Longest time one test may run, in seconds; a test that reaches it stops early and says
    /// so [default: 30; --quick: 5].
    #[arg(long, value_name = "SECS", value_parser = parse_runtime)]
    pub runtime: Option<f64>,
    /// Seed of the random offsets [default: from the clock].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

fn parse_count(s: &str) -> Result<u64, String> {
    crate::size::parse_whole(s, "count", 1, 100_000_000)
}

fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("invalid size {s:?}: must not be 0")),
        n if n > 1 << 30 => Err(format!("invalid size {s:?}: at most 1G")),
        n => Ok(n),
    }
}

fn parse_runtime(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=86400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "invalid number of seconds {s:?}: expected 0.01 to 86400"
        )),
    }
}

/// The parameters of one run, after applying the preset.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub file_size: u64,
    pub block_size: u64,
    pub ops: u64,
    pub seq_size: u64,
    pub seq_block: u64,
    pub small_files: u64,
    pub small_file_size: u64,
    pub readdir_passes: u64,
    pub runtime_s: f64,
    pub seed: u64,
}

impl BenchArgs {
    pub fn params(&self) -> Result<Params> {
        let q = self.quick;
        let p = Params {
            file_size: self.file_size.unwrap_or(if q { 1 << 20 } else { 64 << 20 }),
            block_size: self.block_size,
            ops: self.ops.unwrap_or(if q { 64 } else { 2000 }),
            seq_size: self.seq_size.unwrap_or(if q { 4 << 20 } else { 256 << 20 }),
            seq_block: self.seq_block,
            small_files: self.small_files.unwrap_or(if q { 64 } else { 1000 }),
            small_file_size: self.small_file_size,
            readdir_passes: self.readdir_passes.unwrap_or(if q { 5 } else { 20 }),
            runtime_s: self.runtime.unwrap_or(if q { 5.0 } else { 30.0 }),
            seed: self.seed.unwrap_or_else(clock_seed),
        };
        if p.file_size < p.block_size {
            bail!(
                "--file-size ({}) must be at least --block-size ({})",
                p.file_size,
                p.block_size
            );
        }
        Ok(p)
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 32) | 1
}

// ---------------------------------------------------------------------------------------------
// Histogram

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// A log-linear histogram of `u64` values (nanoseconds here): values below 32 are exact, above
/// each power of two is split into 32 equal buckets, so a bucket is at most 1/32 of its value
/// wide. Min, max and mean are exact.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let shift = exp - SUB_BITS;
        let sub = (v >> shift) - SUB;
        (SUB + shift as u64 * SUB + sub) as usize
    }

    /// The largest value that falls into bucket `i`.
    fn bucket_high(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = (i - SUB) / SUB;
        let sub = (i - SUB) % SUB;
        let low = (SUB + sub) << shift;
        low + ((1u64 << shift) - 1)
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    pub fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below or at which a fraction `q` (0..=1) of the values are: the upper edge of
    /// the bucket holding the value of that rank, clamped to the exact min and max (so it is
    /// never below the true value, and never more than one bucket width above it).
    pub fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// Latencies in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyUs {
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl LatencyUs {
    fn of(h: &Histogram) -> LatencyUs {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyUs {
            mean: h.mean() / 1000.0,
            min: us(h.min()),
            p50: us(h.percentile(0.50)),
            p90: us(h.percentile(0.90)),
            p99: us(h.percentile(0.99)),
            p99_9: us(h.percentile(0.999)),
            max: us(h.max()),
        }
    }
}

/// A test of many timed operations.
#[derive(Debug, Clone, Serialize)]
pub struct OpsResult {
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub latency_us: LatencyUs,
    /// The test stopped at the --runtime limit before doing all its operations.
    pub limited: bool,
}

impl OpsResult {
    fn of(h: &Histogram, elapsed: Duration, limited: bool) -> OpsResult {
        let seconds = elapsed.as_secs_f64();
        OpsResult {
            ops: h.count(),
            seconds,
            ops_per_s: rate(h.count() as f64, seconds),
            latency_us: LatencyUs::of(h),
            limited,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SeqResult {
    pub bytes: u64,
    pub seconds: f64,
    pub write_seconds: f64,
    pub fsync_seconds: f64,
    /// Decimal megabytes (10^6 bytes) per second, fsync included.
    pub mb_per_s: f64,
    pub limited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaddirResult {
    pub listings: u64,
    pub entries: u64,
    pub seconds: f64,
    pub entries_per_s: f64,
    pub listings_per_s: f64,
    pub limited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// `--block-size` random writes, each followed by fsync (latency: write + fsync).
    pub randwrite_fsync: OpsResult,
    /// `--block-size` random writes without fsync.
    pub randwrite: OpsResult,
    /// `--block-size` random reads after dropping the file's cached pages.
    pub randread: OpsResult,
    /// `--seq-size` bytes in `--seq-block` writes, then one fsync.
    pub seqwrite_fsync: SeqResult,
    /// create + write `--small-file-size` bytes + close, per file.
    pub small_files: OpsResult,
    pub stat: OpsResult,
    pub readdir: ReaddirResult,
    pub unlink: OpsResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dir: PathBuf,
    /// Type of the file system holding DIR (from /proc/self/mountinfo), e.g. "fuse.spoolfs".
    pub fs_type: String,
    pub quick: bool,
    pub params: Params,
    pub seconds: f64,
    pub results: Results,
}

fn rate(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { n / seconds } else { 0.0 }
}

// ---------------------------------------------------------------------------------------------
// Interruption and progress

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C (or SIGTERM) stops the running test; the work directory is still removed.
fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One line of progress on stderr, redrawn at most ten times a second, only on a terminal.
struct Progress {
    enabled: bool,
    step: usize,
    steps: usize,
    label: String,
    last: Option<Instant>,
}

impl Progress {
    fn new(steps: usize) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            step: 0,
            steps,
            label: String::new(),
            last: None,
        }
    }

    fn start(&mut self, label: &str) {
        self.step += 1;
        self.label = label.to_string();
        self.last = None;
        self.tick(0, 0);
    }

    fn tick(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if let Some(last) = self.last
            && now.duration_since(last) < Duration::from_millis(100)
        {
            return;
        }
        self.last = Some(now);
        let count = if total > 0 {
            format!(" {done}/{total}")
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K[{}/{}] {}{count}",
            self.step, self.steps, self.label
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The private work directory; removed (with everything in it) when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "spoolfs bench: cannot remove {}: {e}; remove it by hand",
                self.0.display()
            );
        }
    }
}

/// xorshift64*: offsets and buffer contents, reproducible with --seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Checks that `dir` is an existing directory and makes the private work directory in it.
fn make_work_dir(dir: &Path) -> Result<WorkDir> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist", dir.display())
        }
        Err(e) => bail!("cannot access {}: {e}", dir.display()),
    }
    let name = format!(
        ".spoolfs-bench.{}.{:x}",
        std::process::id(),
        clock_seed() & 0xffff_ffff
    );
    let work = dir.join(name);
    fs::create_dir(&work).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a writable directory: cannot create {} ({e})",
            dir.display(),
            work.display()
        )
    })?;
    Ok(WorkDir(work))
}

fn fs_type_of(dir: &Path) -> String {
    let Ok(canon) = fs::canonicalize(dir) else {
        return "unknown".into();
    };
    let Ok(mounts) = spoolfs_fuse::read_mountinfo() else {
        return "unknown".into();
    };
    mounts
        .iter()
        .filter(|m| canon.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .map(|m| m.fs_type.clone())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let params = args.params()?;
    let work = make_work_dir(&args.dir)?;
    catch_interrupts();
    let start = Instant::now();
    let results = match run_tests(&work.0, &params) {
        Ok(r) => r,
        Err(e) => {
            drop(work);
            if INTERRUPTED.load(Ordering::Relaxed) {
                eprintln!("spoolfs bench: interrupted; removed its files");
                return Ok(ExitCode::from(130));
            }
            return Err(e);
        }
    };
    drop(work);
    let report = Report {
        dir: args.dir.clone(),
        fs_type: fs_type_of(&args.dir),
        quick: args.quick,
        params,
        seconds: start.elapsed().as_secs_f64(),
        results,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render_table(&report))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A deadline check for one test: true once `runtime` has passed since `start`.
struct Limit {
    start: Instant,
    runtime: Duration,
}

impl Limit {
    fn new(runtime_s: f64) -> Limit {
        Limit {
            start: Instant::now(),
            runtime: Duration::from_secs_f64(runtime_s),
        }
    }

    fn reached(&self) -> bool {
        self.start.elapsed() >= self.runtime
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Runs `op(i)` for `i` in `0..n`, each timed by `op` itself, until all are done or the
/// runtime limit is reached; returns the result and how many ran.
fn timed_ops(
    progress: &mut Progress,
    runtime_s: f64,
    n: u64,
    mut op: impl FnMut(u64) -> Result<Duration>,
) -> Result<(OpsResult, u64)> {
    let mut h = Histogram::default();
    let limit = Limit::new(runtime_s);
    let mut limited = false;
    let mut done = 0;
    for i in 0..n {
        check_interrupted()?;
        h.record(nanos(op(i)?));
        done = i + 1;
        progress.tick(done, n);
        if done < n && limit.reached() {
            limited = true;
            break;
        }
    }
    Ok((OpsResult::of(&h, limit.start.elapsed(), limited), done))
}

/// The tests, in order: random I/O on one file, a sequential write, then small files.
fn run_tests(work: &Path, p: &Params) -> Result<Results> {
    let mut progress = Progress::new(9);
    let mut rng = Rng(p.seed | 1);
    let mut block = vec![0u8; p.block_size as usize];
    rng.fill(&mut block);

    let rand_path = work.join("random.dat");
    progress.start("laying out the random I/O file");
    lay_out(&mut progress, &mut rng, &rand_path, p.file_size)?;
    progress.start(&format!("random {} writes + fsync", fmt_size(p.block_size)));
    let randwrite_fsync = random_writes(&mut progress, &mut rng, &mut block, &rand_path, p, true)?;
    progress.start(&format!("random {} writes", fmt_size(p.block_size)));
    let randwrite = random_writes(&mut progress, &mut rng, &mut block, &rand_path, p, false)?;
    progress.start(&format!("random {} reads", fmt_size(p.block_size)));
    let randread = random_reads(&mut progress, &mut rng, &mut block, &rand_path, p)?;
    fs::remove_file(&rand_path)
        .with_context(|| format!("cannot remove {}", rand_path.display()))?;

    progress.start(&format!(
        "sequential write of {} + fsync",
        fmt_size(p.seq_size)
    ));
    let seqwrite_fsync =
        sequential_write(&mut progress, &mut rng, &work.join("sequential.dat"), p)?;

    let small_dir = work.join("small");
    fs::create_dir(&small_dir).with_context(|| format!("cannot create {}", small_dir.display()))?;
    let name = |i: u64| small_dir.join(format!("f{i:07}"));
    let mut content = vec![0u8; p.small_file_size as usize];
    rng.fill(&mut content);

    progress.start(&format!(
        "create + write {} + close",
        fmt_size(p.small_file_size)
    ));
    let (small_files, made) = timed_ops(&mut progress, p.runtime_s, p.small_files, |i| {
        let path = name(i);
        let t = Instant::now();
        let mut f =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(&content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        drop(f);
        Ok(t.elapsed())
    })?;
    progress.start("stat");
    let (stat, _) = timed_ops(&mut progress, p.runtime_s, made, |i| {
        let path = name(i);
        let t = Instant::now();
        fs::symlink_metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        Ok(t.elapsed())
    })?;
    progress.start("readdir");
    let readdir = list_repeatedly(&mut progress, &small_dir, p)?;
    progress.start("unlink");
    let unlink = unlink_all(&mut progress, made, &name, p)?;
    progress.clear();

    Ok(Results {
        randwrite_fsync,
        randwrite,
        randread,
        seqwrite_fsync,
        small_files,
        stat,
        readdir,
        unlink,
    })
}

/// Writes the file of the random tests (not timed).
fn lay_out(progress: &mut Progress, rng: &mut Rng, path: &Path, size: u64) -> Result<()> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let chunk_len = (1u64 << 20).min(size) as usize;
    let mut chunk = vec![0u8; chunk_len];
    rng.fill(&mut chunk);
    let mut off = 0;
    while off < size {
        check_interrupted()?;
        let n = chunk_len.min((size - off) as usize);
        f.write_all_at(&chunk[..n], off)
            .with_context(|| format!("cannot write {}", path.display()))?;
        off += n as u64;
        progress.tick(off >> 20, size >> 20);
    }
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// Random block writes, each followed by an fsync when `fsync`.
fn random_writes(
    progress: &mut Progress,
    rng: &mut Rng,
    block: &mut [u8],
    path: &Path,
    p: &Params,
    fsync: bool,
) -> Result<OpsResult> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let blocks = p.file_size / p.block_size;
    let (result, _) = timed_ops(progress, p.runtime_s, p.ops, |i| {
        let off = rng.below(blocks) * p.block_size;
        block[..8].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        f.write_all_at(block, off)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if fsync {
            f.sync_all()
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
        Ok(t.elapsed())
    })?;
    // Not timed: leave nothing dirty for the next test.
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(result)
}

/// Random block reads, from a cold page cache where the kernel allows.
fn random_reads(
    progress: &mut Progress,
    rng: &mut Rng,
    block: &mut [u8],
    path: &Path,
    p: &Params,
) -> Result<OpsResult> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Best effort: start from a cold page cache for this file.
    // SAFETY: a valid descriptor; the call only gives advice.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let blocks = p.file_size / p.block_size;
    let (result, _) = timed_ops(progress, p.runtime_s, p.ops, |_| {
        let off = rng.below(blocks) * p.block_size;
        let t = Instant::now();
        f.read_exact_at(block, off)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(t.elapsed())
    })?;
    Ok(result)
}

/// One sequential write of `seq_size` bytes in `seq_block` writes, then an fsync.
fn sequential_write(
    progress: &mut Progress,
    rng: &mut Rng,
    path: &Path,
    p: &Params,
) -> Result<SeqResult> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut buf = vec![0u8; p.seq_block as usize];
    rng.fill(&mut buf);
    let limit = Limit::new(p.runtime_s);
    let mut written = 0u64;
    let mut limited = false;
    let mut n = 0u64;
    while written < p.seq_size {
        check_interrupted()?;
        let len = p.seq_block.min(p.seq_size - written) as usize;
        buf[..8.min(len)].copy_from_slice(&n.to_le_bytes()[..8.min(len)]);
        (&f).write_all(&buf[..len])
            .with_context(|| format!("cannot write {}", path.display()))?;
        written += len as u64;
        n += 1;
        progress.tick(written >> 20, p.seq_size >> 20);
        if written < p.seq_size && limit.reached() {
            limited = true;
            break;
        }
    }
    let write_seconds = limit.start.elapsed().as_secs_f64();
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    let seconds = limit.start.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(SeqResult {
        bytes: written,
        seconds,
        write_seconds,
        fsync_seconds: seconds - write_seconds,
        mb_per_s: rate(written as f64 / 1e6, seconds),
        limited,
    })
}

/// Lists the small-file directory `readdir_passes` times.
fn list_repeatedly(progress: &mut Progress, dir: &Path, p: &Params) -> Result<ReaddirResult> {
    let limit = Limit::new(p.runtime_s);
    let mut limited = false;
    let mut entries = 0u64;
    let mut listings = 0u64;
    for pass in 0..p.readdir_passes {
        check_interrupted()?;
        for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            e.with_context(|| format!("cannot list {}", dir.display()))?;
            entries += 1;
        }
        listings += 1;
        progress.tick(pass + 1, p.readdir_passes);
        if pass + 1 < p.readdir_passes && limit.reached() {
            limited = true;
            break;
        }
    }
    let seconds = limit.start.elapsed().as_secs_f64();
    Ok(ReaddirResult {
        listings,
        entries,
        seconds,
        entries_per_s: rate(entries as f64, seconds),
        listings_per_s: rate(listings as f64, seconds),
        limited,
    })
}

/// Removes every small file (the work directory is removed anyway); only those within the
/// runtime limit are timed.
fn unlink_all(
    progress: &mut Progress,
    made: u64,
    name: &dyn Fn(u64) -> PathBuf,
    p: &Params,
) -> Result<OpsResult> {
    let mut h = Histogram::default();
    let limit = Limit::new(p.runtime_s);
    let mut limited = false;
    let mut elapsed = None;
    for i in 0..made {
        check_interrupted()?;
        let path = name(i);
        let t = Instant::now();
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        if elapsed.is_none() {
            h.record(nanos(t.elapsed()));
            if i + 1 < made && limit.reached() {
                limited = true;
                elapsed = Some(limit.start.elapsed());
            }
        }
        progress.tick(i + 1, made);
    }
    Ok(OpsResult::of(
        &h,
        elapsed.unwrap_or_else(|| limit.start.elapsed()),
        limited,
    ))
}

// ---------------------------------------------------------------------------------------------
// The table

fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn fmt_rate(v: f64, unit: &str) -> String {
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

pub fn render_table(r: &Report) -> String {
    let p = &r.params;
    let bs = fmt_size(p.block_size);
    let mut s = format!(
        "spoolfs bench {} ({}): {} file, {} blocks, QD1, seed {}, {:.1} s\n\n",
        r.dir.display(),
        r.fs_type,
        fmt_size(p.file_size),
        bs,
        p.seed,
        r.seconds
    );
    let header = [
        "test", "ops", "rate", "mean", "p50", "p90", "p99", "p99.9", "max",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    let mut limited = Vec::new();
    let mut ops_row = |name: String, o: &OpsResult, unit: &str| {
        let l = &o.latency_us;
        if o.limited {
            limited.push(name.clone());
        }
        rows.push([
            name,
            o.ops.to_string(),
            fmt_rate(o.ops_per_s, unit),
            fmt_us(l.mean),
            fmt_us(l.p50),
            fmt_us(l.p90),
            fmt_us(l.p99),
            fmt_us(l.p99_9),
            fmt_us(l.max),
        ]);
    };
    let res = &r.results;
    ops_row(
        format!("randwrite {bs} + fsync"),
        &res.randwrite_fsync,
        "ops/s",
    );
    ops_row(format!("randwrite {bs}"), &res.randwrite, "ops/s");
    ops_row(format!("randread {bs} (cold)"), &res.randread, "ops/s");
    ops_row(
        format!("create+write {}+close", fmt_size(p.small_file_size)),
        &res.small_files,
        "files/s",
    );
    ops_row("stat".into(), &res.stat, "ops/s");
    ops_row("unlink".into(), &res.unlink, "ops/s");
    let seq = &res.seqwrite_fsync;
    let dir = &res.readdir;
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i == 0 {
                l.push_str(&format!("{cell:<w$}"));
            } else {
                l.push_str(&format!("  {cell:>w$}"));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    s.push('\n');
    s.push_str(&format!(
        "seqwrite {} in {} writes + fsync: {} (writes {}, fsync {})\n",
        fmt_size(seq.bytes),
        fmt_size(p.seq_block),
        fmt_rate(seq.mb_per_s, "MB/s"),
        fmt_us(seq.write_seconds * 1e6),
        fmt_us(seq.fsync_seconds * 1e6)
    ));
    s.push_str(&format!(
        "readdir of {} entries, {} times: {} ({} per listing)\n",
        dir.entries.checked_div(dir.listings).unwrap_or(0),
        dir.listings,
        fmt_rate(dir.entries_per_s, "entries/s"),
        fmt_us(rate(dir.seconds * 1e6, dir.listings as f64))
    ));
    s.push_str(
        "\nQD1; latencies per operation (randwrite + fsync: the write and its fsync together);\n\
         cold randread: after posix_fadvise(DONTNEED) on the file; MB/s: 10^6 bytes per second\n",
    );
    if seq.limited {
        limited.push("seqwrite".to_string());
    }
    if dir.limited {
        limited.push("readdir".to_string());
    }
    if !limited.is_empty() {
        s.push_str(&format!(
            "stopped at the --runtime limit ({} s): {}\n",
            p.runtime_s,
            limited.join(", ")
        ));
    }
    s
}

/// `4 KiB`, `1.5 MiB`: whole numbers without decimals.
fn fmt_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && n >= 1 << (10 * (unit + 1)) {
        unit += 1;
    }
    let div = 1u64 << (10 * unit);
    if n.is_multiple_of(div) {
        format!("{} {}", n / div, UNITS[unit])
    } else {
        format!("{:.1} {}", n as f64 / div as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_every_value() {
        for v in (0..100_000u64).chain([u64::MAX - 1, u64::MAX, 1 << 40, (1 << 40) - 1]) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(Histogram::bucket_high(i) >= v, "{v}");
            if i > 0 {
                assert!(Histogram::bucket_high(i - 1) < v, "{v}");
            }
        }
        assert_eq!(Histogram::bucket_high(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn histogram_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100_000);
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
        for (q, exact) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.percentile(q) as f64;
            assert!(
                got >= exact && got <= exact * 1.04,
                "p{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.percentile(1.0), 100_000);
        assert_eq!(h.percentile(0.0), 1);

        let mut small = Histogram::default();
        for v in [3, 3, 7, 20] {
            small.record(v);
        }
        assert_eq!(small.percentile(0.5), 3);
        assert_eq!(small.percentile(0.75), 7);
        assert_eq!(small.percentile(0.999), 20);
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }

    #[test]
    fn percentiles_are_ordered() {
        let mut rng = Rng(12345);
        let mut h = Histogram::default();
        for _ in 0..10_000 {
            let v = rng.below(1000) * rng.below(1000) + rng.below(1 << 30) * (rng.below(50) / 49);
            h.record(v);
        }
        let l = LatencyUs::of(&h);
        assert!(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99);
        assert!(l.p99 <= l.p99_9 && l.p99_9 <= l.max);
    }

    #[test]
    fn quick_preset_and_overrides() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let t = T::try_parse_from(["t", "/tmp", "--quick", "--ops", "7"]).unwrap();
        let p = t.b.params().unwrap();
        assert_eq!((p.ops, p.file_size, p.small_files), (7, 1 << 20, 64));
        let t = T::try_parse_from(["t", "/tmp", "--file-size", "1K"]).unwrap();
        assert!(t.b.params().is_err(), "file smaller than a block");
        assert!(T::try_parse_from(["t", "/tmp", "--ops", "0"]).is_err());
        assert!(T::try_parse_from(["t", "/tmp", "--runtime", "-1"]).is_err());
        assert!(T::try_parse_from(["t", "/tmp", "--block-size", "0"]).is_err());
    }
}
