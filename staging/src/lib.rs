//! The writeback staging log: records (a slice's bytes plus where they belong) appended with
//! O_DIRECT to preallocated segment files on the local disk, acknowledged once they are on the
//! device (and, for durable appends, through its cache), read back until uploaded, replayed
//! after a crash.
//!
//! # Threads
//!
//! [`StagingLog::open`] starts `threads` engine threads (default: one per CPU). Each owns its
//! own I/O engine (its own io_uring, or plain `pwritev2`) and its own active segment. An
//! append is handed to thread `ino % threads` over a bounded queue (so one inode's records
//! stay in order; an idle thread sleeps on it without spinning, `queue`) and the caller
//! blocks until that thread replies. A thread
//! drains whatever is queued (up to 256 requests), places each record, submits all writes at
//! once, then, if any request of the batch was durable (or a [`StagingLog::sync`]), flushes
//! once for all of them before replying: group commit. A batch with a single durable append
//! and nothing else, after batches whose writes were all flushed, is written with
//! `RWF_DSYNC` instead (one system call, no separate flush). Only then: on a device with FUA,
//! `RWF_DSYNC` makes that one write durable and flushes nothing else from the device's
//! cache. [`FlushMode`] forces `fdatasync` always, or `RWF_DSYNC` wherever it covers. Reads
//! go to thread `segment % threads`. Free segments are shared by all threads through one
//! short mutex taken only when a segment fills up or is recycled, never per append.
//!
//! # Buffers
//!
//! Each engine thread has a pool of page-aligned buffers (default 64 of 1 MiB + 64 KiB,
//! [`StagingTuning::pool_buffers`]) carved out of one anonymous mapping and, with the uring
//! engine, registered with its ring. The caller of an append builds the record directly in
//! a free buffer of the target thread's pool (taken without a lock; given back when the
//! request is done), and the thread writes it with `WRITE_FIXED`. A record of
//! [`BUILD_OFF_CALLER`] bytes or more handed over with [`StagingLog::submit_shared`] (the
//! full runs of a large write) is built instead by the log's one builder thread, which
//! copies it, computes its CRCs, lets go of the caller's data and hands it on: the writer
//! goes on with its next write meanwhile. [`StagingLog::sync`] also covers what the
//! builder still holds. Between such records the builder keeps two empty buffers of their
//! size ready, pages faulted in, for the writer's next runs
//! ([`StagingLog::take_prepared_run`]). Reads fill pool buffers
//! with `READ_FIXED`. A record larger than a pool buffer, or one that finds every buffer in
//! use, gets a temporary aligned allocation and plain `WRITE`/`READ` instead
//! ([`StagingUsage::pool_misses`]); a record larger than a pool buffer takes one an earlier
//! large record gave back, when one is big enough (up to 64 MiB of them kept per thread,
//! [`StagingUsage::large_reused`]), so that a large sequential write does not fault in and
//! zero a fresh buffer for every record. If the kernel refuses the registration (locked-memory
//! limit, old kernel) the pool is used unregistered, with a log line; the psync engine
//! always uses it unregistered.
//!
//! # Durability
//!
//! - An acknowledged append is on the device (O_DIRECT, completed): it survives a crash of
//!   the process or of the kernel.
//! - With [`StagingDurability::Flush`] (the default) an append made with `durable = true`
//!   is also pushed through the device's volatile cache (`RWF_DSYNC` or `fdatasync` of the
//!   segment, which on a preallocated, zero-filled file is a pure device cache flush): it
//!   survives a power cut. [`StagingLog::sync`] does the same for everything appended before.
//! - With [`StagingDurability::None`] `durable` is ignored: appends survive a process or kernel
//!   crash but NOT a power cut or a VM/host loss. `sync` still flushes.
//! - A segment's header (its generation) is always made durable before any record of that
//!   generation is written, so a durable record never depends on an unflushed header.
//!
//! # On-disk format (segment header version 1, record version 2; all integers little-endian)
//!
//! The staging directory holds segment files `seg-NNNNNN.log` (NNNNNN = segment index,
//! decimal, at least 6 digits), `0 <= index < max_segments` (at most [`MAX_SEGMENTS`]; a file
//! named with a larger index is refused, not trusted to size the log). Each is exactly
//! `segment_size` bytes, created as `seg-NNNNNN.tmp`, preallocated (`fallocate`), really
//! written with zeros, `fsync`ed, renamed into place and the directory `fsync`ed; afterwards
//! it is only ever overwritten in place with O_DIRECT, so no write changes file-system
//! metadata. Files are created lazily when a segment is first needed. Each engine thread also keeps a bulk
//! segment for records of at least 1 MiB; one created for that is only preallocated, not
//! zero-filled (its first writes convert extents, which a few large records can afford),
//! and small records use it only when no other segment is free. A write into space never
//! written before is on the device when it completes, but its extents become "written" only
//! with the file system's next journal commit, and a kernel crash before that reads it back
//! as zeros: so an append that reaches past what is known to be written (found with `FIEMAP`
//! at open, then tracked) is flushed before it is acknowledged, durable or not. Only the
//! first life of a bulk segment pays this, once per batch.
//!
//! `align` is the record alignment: `max(stx_dio_offset_align, stx_dio_mem_align)` from
//! `statx(STATX_DIOALIGN)` of a file in the directory, clamped to [4096, 65536] (4096 when the
//! kernel or file system does not report it; never below 4096 because a 512-byte logical
//! sector on a 4 KiB physical sector makes smaller writes a device read-modify-write).
//!
//! **Segment header block**, bytes `[0, align)` of a segment (the rest of the block is zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"SPOOLSEG"` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | CRC-32C of bytes 0..64 with this field left out |
//! | 16 | 16 | volume uuid |
//! | 32 | 8 | generation |
//! | 40 | 8 | segment size in bytes |
//! | 48 | 4 | record alignment of this generation |
//! | 52 | 4 | segment index |
//! | 56 | 8 | time the header was written, µs since the Unix epoch |
//!
//! Generations come from one counter for the whole log and grow every time any segment is
//! given a new life (created, or recycled once all its records were freed). At open the
//! counter restarts above `max(every generation seen) + number of segments`, so a generation
//! never repeats even if a crash lost some header writes.
//!
//! **Record**, starting at an offset that is a multiple of `align`, the first one at `align`:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"SPRC"` |
//! | 4 | 4 | record version (3; versions 1 and 2 are still read) |
//! | 8 | 4 | header CRC-32C: bytes `0..72+4n` (version 3: `0..80+4n`) with this field left out |
//! | 12 | 4 | version 2: CRC-32C of the carried namespace record (the last `meta_len` data bytes; of no bytes when `meta_len` is 0). Version 1: `n` |
//! | 16 | 8 | generation (must equal the segment header's) |
//! | 24 | 8 | sequence number (global, increasing in append order) |
//! | 32 | 8 | ino |
//! | 40 | 8 | slice id |
//! | 48 | 4 | chunk index |
//! | 52 | 4 | position of the data in the chunk |
//! | 56 | 4 | len: data bytes |
//! | 60 | 4 | meta_len: of the `len` data bytes, the last `meta_len` are a namespace-log record committed together with the slice (0: a plain slice; see `docs/FORMAT.md`) |
//! | 64 | 8 | append time, µs since the Unix epoch |
//! | 72 | 4·n | CRC-32C of each 64 KiB piece of data (the last may be shorter); `n` = ceil(len / 65536) |
//! | 72+4n | 8 | version 3: flushed-through, the sequence number through which every record of the log had been through a completed flush when this one was placed (covered by the header CRC; a header region without room for it is written as version 2) |
//!
//! then zero padding to `header_len = round_up(72 + 4n, align)`, then the `len` data bytes,
//! then zero padding to a multiple of `align`. A record occupies
//! `round_up(header_len + len, align)` bytes; the next record follows immediately.
//!
//! **Validity and replay.** A record is valid if its magic, version and header CRC are right,
//! its generation equals its segment's, it fits in the segment and every piece CRC matches.
//! Replay reads each segment from its first record: all zeros, or a record of an earlier
//! generation (or an older copy of one already seen), is the clean end of the log. A record
//! whose header passes but whose data does not is stepped over (its length is known); a
//! header that fails its check is stepped over by looking for the next valid header of the
//! generation at the following multiples of the alignment. Whatever fails a check after the
//! last valid record of a segment is a torn tail (a write a crash cut short, never
//! acknowledged), skipped and counted in a warning. So is a failing record that a power cut
//! explains: written in a boot of the machine that has ended and numbered above what that
//! boot's intact records say was flushed (see `boots.rs`: after a power cut any subset of
//! the unflushed writes may be missing or torn). Otherwise, before a valid record it is *damage*:
//! a damaged record is returned with [`Replayed::damaged`] (and its carried namespace record,
//! when that passes its own CRC), an unreadable region as a [`LogDamage`]. A segment header
//! that fails its check is damage too (a header is made durable before any record of its
//! generation is written): the generation and alignment are inferred from the record headers
//! behind it that pass. A segment with damage is neither re-stamped nor reused until the
//! owner has recorded the loss ([`StagingLog::release_damage`]) and freed its records.
//! Valid records of all segments are returned sorted by sequence number; duplicates of one
//! sequence number (a record rewritten after a failed write before it, see below) are
//! returned once.
//!
//! **Failed writes.** When a write fails, the records placed after it in the same segment
//! are rewritten over it (same bytes, lower offset), so no acknowledged record ever sits
//! behind an invalid one. An append that returned an error may still be found by replay (its
//! bytes may have reached the disk); the engine decides from its metadata what to keep.
//!
//! **Frees are not persisted.** Replay returns every valid record of each segment's current
//! generation, including records freed since; the engine drops those its metadata says are
//! already uploaded. Once every record of a full segment is freed, the segment gets a new
//! generation (header rewritten and flushed) and its old records are invalid from then on,
//! after the recycle barrier ([`StagingLog::set_recycle_barrier`]) has made durable what
//! freed them; while it fails, the segment keeps its records and is tried again later.
//! At open, segments with no valid record are given a new generation at once; segments with
//! records, or with damage, are kept, sealed, until all of them are freed again (and the
//! damage released).

mod boots;
mod buf;
mod format;
mod io;
mod oneshot;
mod queue;
mod replay;
mod segments;
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod untrusted_tests;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use oneshot::RecvError;
use parking_lot::Mutex;
use queue::Sender as RequestSender;

pub use io::FaultConfig;
pub use segments::{MAX_SEGMENTS, RecycleBarrier};
pub use sim::{CutPlan, CutReport, FlushScope, SimDevice, Unflushed};

/// Bytes allocated by `buffers` (their capacity, not their length): what keeping them costs.
pub fn capacity_bytes(buffers: &[Vec<u8>]) -> u64 {
    buffers.iter().map(|b| b.capacity() as u64).sum()
}

use buf::{BufPool, IoBuf, MAX_POOL_BUFFERS};
use format::{PIECE_LEN, decode_record_header, record_header_len, record_size};
use io::{FaultyBackend, IoBackend, PsyncBackend, RealFiles, SegmentFiles, UringBackend};
use segments::{BUF_ALIGN, SEALED, SegState, Shared, now_us, segment_path};
use worker::{Request, Worker};

/// Which I/O engine the engine threads use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngineKind {
    /// io_uring if the kernel (or container) allows it, else pwritev2; logged at open.
    #[default]
    Auto,
    Uring,
    Psync,
}

/// What a durable append promises. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StagingDurability {
    /// Durable appends survive a power cut (`RWF_DSYNC` or `fdatasync`).
    #[default]
    Flush,
    /// O_DIRECT only: appends survive a crash of the process or kernel, not a power cut.
    None,
}

/// How a thread makes a batch's durable appends durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushMode {
    /// `RWF_DSYNC` for a batch of one durable append, else plain writes + one `fdatasync`.
    #[default]
    Auto,
    /// Always plain writes + one `fdatasync` per batch.
    Fdatasync,
    /// `RWF_DSYNC` on each durable write wherever that covers the batch (no group commit).
    Dsync,
}

#[derive(Debug, Clone)]
pub struct StagingConfig {
    pub dir: PathBuf,
    /// Bytes per segment file; a multiple of 64 KiB, at least 128 KiB. Default 64 MiB.
    pub segment_size: u64,
    /// Capacity is `max_segments * segment_size`. Default 64.
    pub max_segments: usize,
    /// Engine threads. Default: number of CPUs.
    pub threads: usize,
    pub io_engine: IoEngineKind,
    pub durability: StagingDurability,
    /// Written into every segment header; a directory of another volume is refused.
    pub volume_uuid: [u8; 16],
}

/// Knobs most users leave alone: see [`StagingLog::open_tuned`].
#[derive(Debug, Clone)]
pub struct StagingTuning {
    pub flush_mode: FlushMode,
    /// Fault injection (tests).
    pub faults: Option<Arc<FaultConfig>>,
    /// A simulated device that records every write, flush and segment-file operation, so
    /// that a test can cut the power at any point (tests; see [`SimDevice`]).
    pub device: Option<Arc<SimDevice>>,
    /// Buffers in each engine thread's pool (0: no pool, every append and read allocates a
    /// buffer). Default 64. At most 65536; io_uring registers at most 16384 (more: the
    /// pool is used unregistered).
    pub pool_buffers: usize,
    /// Bytes per pool buffer: one whole record (header, data, padding) or read region.
    /// Rounded up to 4 KiB, and down to the largest record a segment holds. Default
    /// 1 MiB + 64 KiB, so that a record of 1 MiB of data fits at any alignment.
    pub pool_buffer_size: usize,
    /// An append not acknowledged within this time fails with [`StagingError::TooSlow`] (the
    /// caller stores the data elsewhere); if it completes later, its record is freed at once.
    /// Default 5 s.
    pub append_timeout: Duration,
}

impl Default for StagingTuning {
    fn default() -> StagingTuning {
        StagingTuning {
            flush_mode: FlushMode::Auto,
            faults: None,
            device: None,
            pool_buffers: 64,
            pool_buffer_size: (1 << 20) + (64 << 10),
            append_timeout: Duration::from_secs(5),
        }
    }
}

impl StagingConfig {
    pub fn new(dir: impl Into<PathBuf>, volume_uuid: [u8; 16]) -> StagingConfig {
        StagingConfig {
            dir: dir.into(),
            segment_size: 64 << 20,
            max_segments: 64,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            io_engine: IoEngineKind::Auto,
            durability: StagingDurability::Flush,
            volume_uuid,
        }
    }

    /// A small log for tests: 4 segments of `segment_size` bytes, one engine thread.
    pub fn for_tests(
        dir: impl Into<PathBuf>,
        volume_uuid: [u8; 16],
        segment_size: u64,
    ) -> StagingConfig {
        StagingConfig {
            segment_size,
            max_segments: 4,
            threads: 1,
            ..StagingConfig::new(dir, volume_uuid)
        }
    }
}

/// What a record is about; `len` is the number of data bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    pub ino: u64,
    pub chunk: u32,
    pub pos: u32,
    pub slice_id: u64,
    /// Data bytes in all.
    pub len: u32,
    /// Of the `len` data bytes, the last `meta_len` are a namespace-log record that rides
    /// with the slice (one append for a slice and its metadata change); 0 for a plain slice.
    pub meta_len: u32,
}

/// Where a record lives: segment index, byte offset of its header (aligned), data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StagedLoc {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

/// A record found by replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub header: RecordHeader,
    pub loc: StagedLoc,
    pub seq: u64,
    /// When it was appended (µs since the Unix epoch).
    pub time_us: u64,
    /// Ranges `[start, end)` of the slice's data (the bytes before a carried namespace
    /// record) that fail their CRC: corruption in the middle of a segment (valid records
    /// follow it). Empty for an intact record. A damaged record cannot be read whole; whoever
    /// handles it records the loss and frees it.
    pub damaged: Vec<(u32, u32)>,
    /// The carried namespace record (the last `meta_len` data bytes), when there is one and
    /// it passes its own check, even if the slice's data does not.
    pub carried: Option<Vec<u8>>,
}

impl Replayed {
    /// The record `r` a scan of segment `segment` found.
    fn found(segment: u32, r: replay::ScannedRecord) -> Replayed {
        Replayed {
            header: r.rec.header,
            loc: StagedLoc {
                segment,
                offset: r.offset,
                len: r.rec.header.len,
            },
            seq: r.rec.meta.seq,
            time_us: r.rec.meta.time_us,
            damaged: r.damaged,
            carried: r.carried,
        }
    }
}

/// Bytes of the log that fail their checks with records behind them: a damaged segment
/// header, or a record whose header is unreadable (so neither its length nor its owner is
/// known). Records whose header is readable but whose data is damaged are reported in
/// [`Replayed::damaged`] instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    pub segment: u32,
    /// Byte range `[offset, offset + len)` of the segment file.
    pub offset: u64,
    pub len: u64,
    /// The segment's generation (inferred from its records when its header is damaged; 0
    /// when nothing is known): the same damage found again has the same one.
    pub generation: u64,
    /// What failed: "segment header" or "record header".
    pub what: &'static str,
}

impl LogDamage {
    /// The unreadable ranges a scan of segment `segment` found.
    fn found_in(segment: u32, scan: &replay::ScanResult) -> impl Iterator<Item = LogDamage> + '_ {
        let generation = scan.header.as_ref().map_or(0, |h| h.generation);
        scan.unreadable.iter().map(move |u| LogDamage {
            segment,
            offset: u.offset,
            len: u.len,
            generation,
            what: if u.offset == 0 {
                "segment header"
            } else {
                "record header"
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StagingUsage {
    /// Bytes of live (appended, not freed) records, headers and padding included.
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub live_records: u64,
    /// Segments holding records or being written (not free).
    pub segments: usize,
    pub max_segments: usize,
    pub io_engine: &'static str,
    /// Age of the oldest record in any segment still holding live records (an upper bound on
    /// the age of the oldest live record: kept per segment, not per record).
    pub oldest_live_age: Duration,
    /// Device flushes issued (`fdatasync`s and `RWF_DSYNC` writes) since open.
    pub device_flushes: u64,
    /// Of those, `fdatasync`s of a segment file.
    pub datasyncs: u64,
    /// Of those, writes made with `RWF_DSYNC`.
    pub dsync_writes: u64,
    /// Successful appends since open.
    pub appends: u64,
    /// Read requests served since open.
    pub reads: u64,
    /// Segments taken out of use after a failed recycle.
    pub broken_segments: u64,
    /// Writes submitted as io_uring `WRITE_FIXED` from a registered pool buffer.
    pub fixed_writes: u64,
    /// Reads submitted as io_uring `READ_FIXED` into a registered pool buffer.
    pub fixed_reads: u64,
    /// Appends and reads that could not take a pool buffer (record larger than a pool
    /// buffer, or every buffer in use) and used a temporary allocation.
    pub pool_misses: u64,
    /// Records larger than a pool buffer written from a large buffer an earlier record gave
    /// back (not counted in `pool_misses`).
    pub large_reused: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StagingError {
    /// No free segment: upload directly instead.
    #[error("staging log is full")]
    Full,
    #[error("record of {len} bytes does not fit in a staging segment")]
    TooLarge { len: u32 },
    #[error("{msg}")]
    Io { errno: i32, msg: String },
    #[error("staging checksum mismatch in segment {segment} at offset {offset}: {what}")]
    Checksum {
        segment: u32,
        offset: u64,
        what: String,
    },
    /// The location's segment was recycled: the record was freed.
    #[error("stale staging location: segment {segment} offset {offset}")]
    Stale { segment: u32, offset: u64 },
    #[error("invalid staging request: {0}")]
    Invalid(String),
    #[error("staging directory belongs to volume {found}, not {expected}")]
    ForeignVolume { expected: String, found: String },
    #[error("staging log is shut down")]
    Closed,
    /// The device did not acknowledge an append in time: store the data elsewhere.
    #[error("staging device too slow: no acknowledgement after {0:?}")]
    TooSlow(Duration),
}

impl StagingError {
    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> StagingError {
        StagingError::Io {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            msg: format!("{what}: {e}"),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            StagingError::Full => libc::ENOSPC,
            StagingError::TooLarge { .. } => libc::EFBIG,
            StagingError::Io { errno, .. } => *errno,
            StagingError::Checksum { .. } => libc::EIO,
            StagingError::Stale { .. } => libc::ESTALE,
            StagingError::Invalid(_) | StagingError::ForeignVolume { .. } => libc::EINVAL,
            StagingError::Closed => libc::EIO,
            StagingError::TooSlow(_) => libc::ETIMEDOUT,
        }
    }
}

/// Answers a request an engine thread's closed queue refused: its caller hears of it when it
/// waits.
fn refuse(request: Request) {
    if let Request::Append { reply, .. } = request {
        let _ = reply.send(Err(StagingError::Closed));
    }
}

/// An append handed to its engine thread; [`PendingAppend::wait`] gives its place. Wait for
/// every one: a record whose answer was never received stays allocated.
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<StagedLoc, StagingError>>,
    timeout: Duration,
}

impl PendingAppend {
    /// Whether the engine thread has answered: [`PendingAppend::wait`] would not block.
    pub fn is_done(&self) -> bool {
        self.rx.is_ready()
    }

    /// Blocks until the record is on the device (and through its cache when durable), or
    /// [`StagingError::TooSlow`] after the staging timeout.
    pub fn wait(self) -> Result<StagedLoc, StagingError> {
        match self.rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            // The engine thread frees the record if it completes after all.
            Err(RecvError::Timeout) => Err(StagingError::TooSlow(self.timeout)),
            Err(RecvError::Disconnected) => Err(StagingError::Closed),
        }
    }
}

/// The staging log. `Sync`: every method takes `&self` and may be called from any thread.
pub struct StagingLog {
    shared: Arc<Shared>,
    /// The engine threads' queues and buffer pools, shared with the builder thread.
    records: Arc<Records>,
    /// The builder thread's queue (see [`StagingLog::submit_shared`]); `None` once closing.
    builder: Option<Sender<BuildJob>>,
    builder_thread: Mutex<Option<JoinHandle<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The spare maker ([`segments::make_spares`]).
    spares: Mutex<Option<JoinHandle<()>>>,
    /// How long an append may take before the caller gives up on the device.
    append_timeout: Duration,
    /// Damage replay found, and the segments held out of use because of it.
    damage: Mutex<(Vec<LogDamage>, Vec<u32>)>,
    /// See [`StagingLog::restarted`].
    restarted: bool,
}

/// Requests one engine thread's queue holds before senders block.
const QUEUE_DEPTH: usize = 1024;

/// Records handed over with [`StagingLog::submit_shared`] this large or larger are built on
/// the builder thread: copying and checksumming a 16 MiB run takes milliseconds, which a
/// sequential writer would otherwise wait for every 16 MiB.
pub const BUILD_OFF_CALLER: usize = 1 << 20;

/// Records the builder thread's queue holds before senders block (each holds a run the
/// writer keeps anyway, so this bounds no memory of its own).
const BUILD_QUEUE_DEPTH: usize = 64;

/// The engine threads' queues and buffer pools, and how records are built for them.
struct Records {
    shared: Arc<Shared>,
    senders: Vec<RequestSender<Request>>,
    /// Each engine thread's buffer pool, by thread (empty: no pools).
    pools: Vec<Arc<BufPool>>,
    /// Empty run buffers the builder thread made ready, their pages already faulted in (see
    /// [`StagingLog::take_prepared_run`]).
    prepared_runs: Mutex<Vec<Vec<u8>>>,
}

/// Run buffers the builder thread keeps ready once large runs arrive.
const PREPARED_RUNS: usize = 2;

/// What the builder thread is asked to do.
enum BuildJob {
    /// Build a record and hand it to its engine thread.
    Record {
        header: RecordHeader,
        data: Arc<Vec<u8>>,
        durable: bool,
        reply: worker::Reply<StagedLoc>,
    },
    /// Answer once every record asked for before is with its engine thread (what
    /// [`StagingLog::sync`] covers).
    Drained(oneshot::Sender<()>),
}

impl Records {
    /// Refuses a record whose header does not match its `total` data bytes, or that no
    /// segment can hold.
    fn check(&self, header: &RecordHeader, total: u64) -> Result<(), StagingError> {
        if total != u64::from(header.len) || header.meta_len > header.len {
            return Err(StagingError::Invalid(format!(
                "header says {} bytes ({} of them metadata), data has {total}",
                header.len, header.meta_len
            )));
        }
        let align = self.shared.align;
        if record_size(header.len, align) > self.shared.segment_size - align {
            return Err(StagingError::TooLarge { len: header.len });
        }
        Ok(())
    }

    /// The engine thread that writes the records of `header`'s inode.
    fn thread_of(&self, header: &RecordHeader) -> usize {
        (header.ino % self.senders.len() as u64) as usize
    }

    /// The record as engine thread `t` writes it: header, the concatenation of `parts`,
    /// padding; in a buffer of that thread's pool when one is free (a large record in a
    /// large buffer an earlier one gave back, when there is one).
    fn build(&self, t: usize, header: &RecordHeader, parts: &[&[u8]]) -> IoBuf {
        let align = self.shared.align;
        let size = record_size(header.len, align);
        let hlen = record_header_len(header.len, align) as usize;
        let mut buf = IoBuf::for_record(self.pools.get(t), size as usize);
        let b = buf.as_mut_slice();
        let (head, rest) = b.split_at_mut(hlen);
        let (body, pad) = rest.split_at_mut(header.len as usize);
        // A pool buffer holds a previous record: every byte is written.
        let mut at = 0;
        for part in parts {
            body[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        head.fill(0);
        format::encode_record_header(head, header, body, now_us());
        pad.fill(0);
        buf
    }

    /// Hands a record's request to engine thread `t`. If that thread is gone, the request's
    /// reply is answered with the error too (for a caller that already holds its receiver).
    fn send(&self, t: usize, request: Request) -> Result<(), StagingError> {
        if let Err(crossbeam_channel::SendError(refused)) = self.senders[t].send(request) {
            refuse(refused);
            return Err(StagingError::Closed);
        }
        Ok(())
    }

    /// The request to append a built record (`durable` only counts when the log flushes).
    fn append(
        &self,
        buf: IoBuf,
        len: u32,
        durable: bool,
        reply: worker::Reply<StagedLoc>,
    ) -> Request {
        Request::Append {
            buf,
            len,
            durable: durable && self.shared.durability == StagingDurability::Flush,
            reply,
        }
    }

    /// Makes ready up to [`PREPARED_RUNS`] empty buffers of `capacity` bytes, every page
    /// touched (older ones of another capacity are dropped).
    fn prepare_runs(&self, capacity: usize) {
        self.prepared_runs
            .lock()
            .retain(|b| b.capacity() == capacity);
        while self.prepared_runs.lock().len() < PREPARED_RUNS {
            // One byte written per page (not `vec![0; n]`, whose pages are mapped untouched).
            let mut run: Vec<u8> = Vec::with_capacity(capacity);
            for page in run.spare_capacity_mut().chunks_mut(4096) {
                // SAFETY: a write into the vector's own spare capacity; volatile so that it
                // is not elided (nothing reads it).
                unsafe {
                    std::ptr::write_volatile(page.as_mut_ptr(), std::mem::MaybeUninit::new(0))
                };
            }
            let mut ready = self.prepared_runs.lock();
            if ready.len() >= PREPARED_RUNS {
                break;
            }
            ready.push(run);
        }
    }

    /// Builds a job's record, lets go of its data, and hands the record to its engine thread.
    fn build_and_send(&self, job: BuildJob) -> Result<(), StagingError> {
        match job {
            BuildJob::Record {
                header,
                data,
                durable,
                reply,
            } => {
                let t = self.thread_of(&header);
                let buf = self.build(t, &header, &[&data]);
                drop(data);
                self.send(t, self.append(buf, header.len, durable, reply))
            }
            BuildJob::Drained(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        }
    }
}

/// The builder thread: builds the records of [`StagingLog::submit_shared`] until its queue
/// closes (a record it cannot hand on is answered with the error).
fn run_builder(records: Arc<Records>, jobs: crossbeam_channel::Receiver<BuildJob>) {
    for job in jobs.iter() {
        let run_capacity = match &job {
            BuildJob::Record { data, .. } => Some(data.capacity()),
            BuildJob::Drained(_) => None,
        };
        let _ = records.build_and_send(job);
        // Between records, a writer of large runs gets fresh run buffers whose pages this
        // thread faulted in: a fresh 16 MiB buffer costs its filler 4,096 page faults.
        if let Some(capacity) = run_capacity
            && jobs.is_empty()
        {
            records.prepare_runs(capacity);
        }
    }
}

fn hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

/// One engine thread's backend, its uring registered with `pool` when there is one. A
/// failed registration is returned beside the (working, unregistered) backend.
fn make_backend(
    kind: &'static str,
    faults: &Option<Arc<FaultConfig>>,
    device: &Option<Arc<SimDevice>>,
    pool: Option<&Arc<BufPool>>,
) -> Result<(Box<dyn IoBackend>, Option<std::io::Error>), StagingError> {
    let mut register_err = None;
    let inner: Box<dyn IoBackend> = if kind == "uring" {
        let mut ring = UringBackend::new().map_err(|e| StagingError::io("io_uring setup", e))?;
        if let Some(pool) = pool {
            register_err = ring.register(pool.clone()).err();
        }
        Box::new(ring)
    } else {
        Box::new(PsyncBackend)
    };
    let inner: Box<dyn IoBackend> = match device {
        Some(d) => Box::new(sim::SimBackend {
            inner,
            device: d.clone(),
        }),
        None => inner,
    };
    let backend: Box<dyn IoBackend> = match faults {
        Some(f) => Box::new(FaultyBackend {
            inner,
            faults: f.clone(),
        }),
        None => inner,
    };
    Ok((backend, register_err))
}

impl StagingLog {
    /// Opens (creating if needed) the log in `config.dir`, replays it, starts the engine
    /// threads. Returns every valid record, in sequence order.
    pub fn open(config: StagingConfig) -> Result<(StagingLog, Vec<Replayed>), StagingError> {
        StagingLog::open_tuned(config, StagingTuning::default())
    }

    /// [`StagingLog::open`] with a flush mode and fault injection.
    pub fn open_tuned(
        config: StagingConfig,
        tuning: StagingTuning,
    ) -> Result<(StagingLog, Vec<Replayed>), StagingError> {
        if config.segment_size < (128 << 10) || !config.segment_size.is_multiple_of(PIECE_LEN) {
            return Err(StagingError::Invalid(format!(
                "segment size {} is not a multiple of 64 KiB of at least 128 KiB",
                config.segment_size
            )));
        }
        if config.max_segments == 0 || config.threads == 0 {
            return Err(StagingError::Invalid(
                "max_segments and threads must be positive".into(),
            ));
        }
        if config.max_segments > MAX_SEGMENTS {
            return Err(StagingError::Invalid(format!(
                "{} segments, at most {MAX_SEGMENTS} (use larger segments)",
                config.max_segments
            )));
        }
        if tuning.pool_buffers > MAX_POOL_BUFFERS {
            return Err(StagingError::Invalid(format!(
                "{} pool buffers per thread, at most {MAX_POOL_BUFFERS}",
                tuning.pool_buffers
            )));
        }
        let dir = &config.dir;
        let fs: Arc<dyn SegmentFiles> = match &tuning.device {
            Some(d) => d.clone(),
            None => Arc::new(RealFiles),
        };
        std::fs::create_dir_all(dir).map_err(|e| StagingError::io(format!("mkdir {dir:?}"), e))?;
        let align = segments::dio_align(dir);

        // Existing segments (stray .tmp files are half-made segments: removed).
        let mut existing: Vec<u32> = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| StagingError::io(format!("read {dir:?}"), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(i) = segments::parse_segment_name(&name) {
                if i as usize >= MAX_SEGMENTS {
                    return Err(StagingError::Invalid(format!(
                        "{:?}: segment index {i} is beyond the limit of {MAX_SEGMENTS} \
                         segments, so not a file this log wrote; move it out of the directory",
                        entry.path()
                    )));
                }
                existing.push(i);
            } else if name.starts_with("seg-") && name.ends_with(".tmp") {
                let _ = fs.remove(&entry.path());
            }
        }
        existing.sort_unstable();
        let nsegs = config
            .max_segments
            .max(existing.last().map_or(0, |&i| i as usize + 1));

        let io_engine: &'static str = match config.io_engine {
            IoEngineKind::Psync => "psync",
            IoEngineKind::Uring => {
                UringBackend::new().map_err(|e| StagingError::io("io_uring setup", e))?;
                "uring"
            }
            IoEngineKind::Auto => match UringBackend::new() {
                Ok(_) => {
                    tracing::info!("staging log: io_uring available, using the uring engine");
                    "uring"
                }
                Err(e) => {
                    tracing::info!(error = %e, "staging log: io_uring unavailable, using the psync (pwritev2) engine");
                    "psync"
                }
            },
        };

        let shared = Shared {
            dir: dir.clone(),
            segment_size: config.segment_size,
            align,
            volume_uuid: config.volume_uuid,
            durability: config.durability,
            io_engine,
            fs: fs.clone(),
            files: (0..nsegs).map(|_| OnceLock::new()).collect(),
            segs: (0..nsegs).map(|_| SegState::default()).collect(),
            free: Mutex::new(Default::default()),
            free_cv: Default::default(),
            spare_demand: Default::default(),
            making_spare: AtomicU32::new(u32::MAX),
            stopping: Default::default(),
            create_lock: Mutex::new(()),
            next_seq: AtomicU64::new(1),
            unflushed_from: (0..config.threads)
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            next_gen: AtomicU64::new(1),
            flushes: AtomicU64::new(0),
            datasyncs: AtomicU64::new(0),
            dsync_writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            live_records: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            recycle_barrier: OnceLock::new(),
            #[cfg(debug_assertions)]
            live_set: Mutex::new(Default::default()),
        };

        // Replay.
        let mut found: Vec<Replayed> = Vec::new();
        let mut damage: Vec<LogDamage> = Vec::new();
        let mut held: Vec<u32> = Vec::new();
        let mut torn = 0usize;
        let mut max_gen = 0u64;
        let mut empty: Vec<u32> = Vec::new();
        let mut scans = Vec::with_capacity(existing.len());
        for &i in &existing {
            let path = segment_path(dir, i);
            let file = fs
                .open(&path)
                .map_err(|e| StagingError::io(format!("open {path:?}"), e))?;
            let size = file
                .metadata()
                .map_err(|e| StagingError::io(format!("stat {path:?}"), e))?
                .len();
            if size != config.segment_size {
                return Err(StagingError::Invalid(format!(
                    "{path:?} is {size} bytes, the configured segment size is {}",
                    config.segment_size
                )));
            }
            let scan = replay::scan_segment(&file, size)
                .map_err(|e| StagingError::io(format!("scan {path:?}"), e))?;
            scans.push((i, file, scan));
        }
        // Which failing records a power cut explains: known only once every segment's
        // intact records (and the watermarks they carry) are in.
        let recorded_boots = boots::Boots::read(dir);
        let boot_id = fs.boot_id();
        let cuts = boots::PowerCuts::new(
            recorded_boots.as_ref(),
            boot_id.as_deref(),
            scans.iter().flat_map(|(_, _, scan)| {
                scan.records
                    .iter()
                    .filter(|r| r.intact)
                    .map(|r| (r.rec.meta.seq, r.rec.flushed_through))
            }),
        );
        let mut power_cut = 0usize;
        let mut lowest_seq: Option<u64> = None;
        for (i, file, mut scan) in scans {
            power_cut += scan.forgive_power_cut(&cuts);
            if let Some(low) = scan.records.iter().map(|r| r.rec.meta.seq).min() {
                lowest_seq = Some(lowest_seq.map_or(low, |l| l.min(low)));
            }
            max_gen = max_gen.max(scan.max_generation_seen);
            torn += usize::from(scan.corrupt_tail);
            let st = &shared.segs[i as usize];
            if scan.damaged() {
                // Not re-stamped, not reused, until the owner has recorded the loss.
                held.push(i);
                damage.extend(LogDamage::found_in(i, &scan));
            }
            if let Some(h) = &scan.header {
                if !scan.header_damaged && h.volume_uuid != config.volume_uuid {
                    return Err(StagingError::ForeignVolume {
                        expected: hex(&config.volume_uuid),
                        found: hex(&h.volume_uuid),
                    });
                }
                st.generation.store(h.generation, Ordering::SeqCst);
                st.align.store(h.align, Ordering::SeqCst);
            }
            st.converted.store(
                segments::first_unwritten(&file, config.segment_size),
                Ordering::SeqCst,
            );
            let _ = shared.files[i as usize].set(file);
            if scan.records.is_empty() {
                if !scan.damaged() {
                    empty.push(i);
                }
                continue;
            }
            let mut oldest = u64::MAX;
            for r in scan.records {
                oldest = oldest.min(r.rec.meta.time_us.max(1));
                found.push(Replayed::found(i, r));
            }
            st.oldest_us.store(oldest, Ordering::SeqCst);
        }
        // One record rewritten after a failed write before it may appear twice.
        found.sort_by_key(|r| (r.seq, r.loc));
        found.dedup_by_key(|r| r.seq);
        for r in &found {
            shared.note_live(r.loc.segment, r.loc.offset);
            let st = &shared.segs[r.loc.segment as usize];
            st.state.fetch_add(1, Ordering::SeqCst);
            let a = u64::from(st.align.load(Ordering::SeqCst));
            shared
                .live_bytes
                .fetch_add(record_size(r.loc.len, a), Ordering::Relaxed);
        }
        shared
            .live_records
            .store(found.len() as u64, Ordering::Relaxed);
        for r in &found {
            // Segments with live records are sealed: new appends go to fresh segments.
            let st = &shared.segs[r.loc.segment as usize];
            st.state.fetch_or(SEALED, Ordering::SeqCst);
        }
        for &i in &held {
            // One reference for the damage, dropped by `release_damage`.
            let st = &shared.segs[i as usize];
            st.state.fetch_add(1, Ordering::SeqCst);
            st.state.fetch_or(SEALED, Ordering::SeqCst);
        }
        let damaged_records = found.iter().filter(|r| !r.damaged.is_empty()).count();
        if !damage.is_empty() || damaged_records > 0 {
            tracing::error!(
                segments = held.len(),
                damaged_records,
                unreadable_regions = damage.len(),
                dir = %dir.display(),
                "staging replay: records that fail their checksums in the middle of a segment \
                 (corruption, not a torn write); every other record is kept"
            );
        }
        if torn > 0 {
            tracing::warn!(
                segments = torn,
                "staging replay: skipped torn or corrupt tails (records never acknowledged as durable)"
            );
        }
        if power_cut > 0 {
            tracing::warn!(
                records = power_cut,
                dir = %dir.display(),
                "staging replay: the machine restarted since the log was last open, and \
                 records that no device flush had covered are torn or missing (a power cut \
                 keeps any subset of such writes); skipped like torn tails: they were never \
                 acknowledged as power-safe"
            );
        }
        let max_seq = found.iter().map(|r| r.seq).max().unwrap_or(0);
        shared.next_seq.store(max_seq + 1, Ordering::SeqCst);
        if boot_id.is_none() {
            tracing::warn!(
                "staging log in {}: the boot id is unknown, so every restart is taken for a \
                 possible power cut: a record no flush covered that fails its checks is \
                 skipped, not reported as damage",
                dir.display()
            );
        }
        // Made durable before anything is appended in this boot.
        if let Some(next) = cuts.next_file(boot_id.as_deref(), max_seq + 1, lowest_seq) {
            next.write(fs.as_ref(), dir)
                .map_err(|e| StagingError::io(format!("write the boots file in {dir:?}"), e))?;
        }
        shared
            .next_gen
            .store(max_gen + nsegs as u64 + 1, Ordering::SeqCst);
        {
            let mut free = shared.free.lock();
            for &i in &empty {
                shared.restamp_now(i)?;
                free.push_back(i);
            }
            for i in 0..nsegs as u32 {
                if !shared.exists(i) {
                    free.push_back(i);
                }
            }
        }
        let shared = Arc::new(shared);

        // Have one segment per thread ready so first appends do not wait for a zero fill. A
        // disk without room for them is no reason to refuse the mount: appends then find the
        // log full and their data goes straight to the object store.
        let precreate: Vec<u32> = {
            let free = shared.free.lock();
            let ready = free.iter().filter(|&&i| shared.exists(i)).count();
            free.iter()
                .copied()
                .filter(|&i| !shared.exists(i))
                .take(config.threads.saturating_sub(ready))
                .collect()
        };
        for i in precreate {
            if let Err(e) = shared.create_segment(i) {
                tracing::warn!(
                    "staging log in {}: cannot prepare a segment ({e}); appends fall back to \
                     the object store until there is room",
                    dir.display()
                );
                break;
            }
        }

        // Each thread's buffer pool: no buffer larger than the largest record.
        let max_record = config.segment_size - format::segment_header_block(align);
        let pool_buffer_size =
            (tuning.pool_buffer_size.next_multiple_of(BUF_ALIGN) as u64).min(max_record) as usize;
        let mut pools = Vec::new();
        if tuning.pool_buffers > 0 && pool_buffer_size > 0 {
            for _ in 0..config.threads {
                match BufPool::new(tuning.pool_buffers, pool_buffer_size) {
                    Ok(p) => pools.push(Arc::new(p)),
                    Err(e) => {
                        tracing::warn!(error = %e, "staging log: cannot map the I/O buffer pools; allocating a buffer per I/O");
                        pools.clear();
                        break;
                    }
                }
            }
        }

        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut unregistered = 0;
        let mut register_err = None;
        for t in 0..config.threads {
            let (backend, err) =
                make_backend(io_engine, &tuning.faults, &tuning.device, pools.get(t))?;
            if let Some(e) = err {
                unregistered += 1;
                register_err = Some(e);
            }
            let (tx, rx) = queue::bounded(QUEUE_DEPTH);
            let w = Worker::new(shared.clone(), t, backend, rx, tuning.flush_mode);
            let h = std::thread::Builder::new()
                .name(format!("spool-stage-{t}"))
                .spawn(move || w.run())
                .map_err(|e| StagingError::io("spawn engine thread", e))?;
            senders.push(tx);
            threads.push(h);
        }
        // Last: nothing after it can fail and leave the thread running.
        let spares = {
            let shared = shared.clone();
            let spares = config.threads;
            std::thread::Builder::new()
                .name("spool-spares".into())
                .spawn(move || segments::make_spares(&shared, spares))
                .map_err(|e| StagingError::io("spawn the segment preparer", e))?
        };
        let records = Arc::new(Records {
            shared: shared.clone(),
            senders,
            pools,
            prepared_runs: Mutex::new(Vec::new()),
        });
        // Without a builder thread, large records are built by their callers.
        let (builder, builder_thread) = {
            let (tx, rx) = bounded(BUILD_QUEUE_DEPTH);
            let records = records.clone();
            match std::thread::Builder::new()
                .name("spool-build".into())
                .spawn(move || run_builder(records, rx))
            {
                Ok(h) => (Some(tx), Some(h)),
                Err(e) => {
                    tracing::warn!(error = %e, "staging log: cannot start the record builder thread; writers build their records themselves");
                    (None, None)
                }
            }
        };
        if let Some(e) = register_err {
            tracing::warn!(
                error = %e,
                threads = unregistered,
                buffers = tuning.pool_buffers,
                buffer_size = pool_buffer_size,
                "staging log: cannot register the I/O buffer pool with io_uring (locked-memory \
                 limit? raise RLIMIT_MEMLOCK or shrink the pool); using plain reads and writes"
            );
        }
        tracing::debug!(
            dir = ?dir,
            align,
            segments = nsegs,
            replayed = found.len(),
            io_engine,
            "staging log open"
        );
        Ok((
            StagingLog {
                shared,
                records,
                builder,
                builder_thread: Mutex::new(builder_thread),
                threads: Mutex::new(threads),
                spares: Mutex::new(Some(spares)),
                append_timeout: tuning.append_timeout,
                damage: Mutex::new((damage, held)),
                restarted: cuts.restarted(),
            },
            found,
        ))
    }

    /// Appends one record. Blocks until it is on the device (and through its cache when
    /// `durable` and the durability is [`StagingDurability::Flush`]). [`StagingError::Full`]
    /// at once when no segment is free.
    pub fn append(
        &self,
        header: &RecordHeader,
        data: &[u8],
        durable: bool,
    ) -> Result<StagedLoc, StagingError> {
        self.submit_parts(header, &[data], durable)?.wait()
    }

    /// Hands the concatenation of `parts` (a slice and the namespace record that rides with
    /// it) to its engine thread as one record, without joining them first, and returns at
    /// once: the caller overlaps other work with the device write, then waits.
    pub fn submit_parts(
        &self,
        header: &RecordHeader,
        parts: &[&[u8]],
        durable: bool,
    ) -> Result<PendingAppend, StagingError> {
        let (t, request, pending) = self.prepare(header, parts, durable)?;
        self.records.send(t, request)?;
        Ok(pending)
    }

    /// Checks and builds the record of `parts` for its engine thread: the thread, the request
    /// to hand it, and the caller's end of the answer.
    fn prepare(
        &self,
        header: &RecordHeader,
        parts: &[&[u8]],
        durable: bool,
    ) -> Result<(usize, Request, PendingAppend), StagingError> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.records.check(header, total)?;
        let (reply, rx) = oneshot::channel();
        let t = self.records.thread_of(header);
        let buf = self.records.build(t, header, parts);
        let pending = PendingAppend {
            rx,
            timeout: self.append_timeout,
        };
        Ok((
            t,
            self.records.append(buf, header.len, durable, reply),
            pending,
        ))
    }

    /// [`Self::submit_parts`] of several records of one part each, handed over together: an
    /// engine thread asleep is woken once, after the last of its records, so that it writes
    /// them as one batch rather than the first alone. One answer per record, in order.
    pub fn submit_batch(
        &self,
        records: &[(RecordHeader, &[u8])],
        durable: bool,
    ) -> Vec<Result<PendingAppend, StagingError>> {
        let threads = self.records.senders.len();
        let mut answers = Vec::with_capacity(records.len());
        let mut requests: Vec<Vec<Request>> = (0..threads).map(|_| Vec::new()).collect();
        for (header, data) in records {
            answers.push(
                self.prepare(header, &[data], durable)
                    .map(|(t, request, pending)| {
                        requests[t].push(request);
                        pending
                    }),
            );
        }
        for (t, batch) in requests.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            // A refused record's caller hears of it when it waits.
            self.records.senders[t]
                .send_all(batch)
                .into_iter()
                .for_each(refuse);
        }
        answers
    }

    /// As [`Self::submit_parts`] for one part the caller shares: a record of at least
    /// [`BUILD_OFF_CALLER`] bytes is built (copied into an aligned buffer, its CRCs computed)
    /// on the log's builder thread instead of the caller's, so that a writer handing over
    /// a full run of a large write goes on with its next write meanwhile. The builder lets
    /// go of `data` before the record is written.
    pub fn submit_shared(
        &self,
        header: &RecordHeader,
        data: Arc<Vec<u8>>,
        durable: bool,
    ) -> Result<PendingAppend, StagingError> {
        if data.len() < BUILD_OFF_CALLER {
            return self.submit_parts(header, &[&data], durable);
        }
        self.records.check(header, data.len() as u64)?;
        let (tx, rx) = oneshot::channel();
        let job = BuildJob::Record {
            header: *header,
            data,
            durable,
            reply: tx,
        };
        let sent = match &self.builder {
            Some(builder) => builder.send(job),
            None => Err(crossbeam_channel::SendError(job)),
        };
        // Without a builder thread (it could not be started), the record is built here.
        if let Err(crossbeam_channel::SendError(job)) = sent {
            self.records.build_and_send(job)?;
        }
        Ok(PendingAppend {
            rx,
            timeout: self.append_timeout,
        })
    }

    /// Bytes of the buffers kept for the next large records: run buffers made ready for the
    /// writer and the engine threads' large record buffers.
    pub fn kept_buffer_bytes(&self) -> u64 {
        let runs = capacity_bytes(&self.records.prepared_runs.lock());
        let large: u64 = self
            .records
            .pools
            .iter()
            .map(|p| p.kept_large_bytes())
            .sum();
        runs + large
    }

    /// Frees the buffers [`Self::kept_buffer_bytes`] counts (an idle mount gives its memory
    /// back; the next large write makes new ones); returns their bytes.
    pub fn release_kept_buffers(&self) -> u64 {
        let runs = capacity_bytes(&std::mem::take(&mut *self.records.prepared_runs.lock()));
        let large: u64 = self.records.pools.iter().map(|p| p.release_large()).sum();
        runs + large
    }

    /// An empty buffer with room for at least `capacity` bytes whose pages are already
    /// faulted in, if the builder thread has one ready (it prepares them once runs of large
    /// writes arrive, for the writer's next runs).
    pub fn take_prepared_run(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut ready = self.records.prepared_runs.lock();
        let at = ready.iter().position(|b| b.capacity() >= capacity)?;
        Some(ready.swap_remove(at))
    }

    /// Reads data bytes `[offset, offset + out.len())` of the record at `loc`, checking the
    /// header and the CRC of every 64 KiB piece the range touches.
    pub fn read(&self, loc: &StagedLoc, offset: u32, out: &mut [u8]) -> Result<(), StagingError> {
        let end = u64::from(offset) + out.len() as u64;
        if end > u64::from(loc.len) {
            return Err(StagingError::Invalid(format!(
                "read of [{offset}, {end}) beyond a record of {} bytes",
                loc.len
            )));
        }
        if out.is_empty() {
            return Ok(());
        }
        let st = self
            .shared
            .segs
            .get(loc.segment as usize)
            .ok_or_else(|| StagingError::Invalid(format!("no segment {}", loc.segment)))?;
        let generation = st.generation.load(Ordering::SeqCst);
        let align = u64::from(st.align.load(Ordering::SeqCst));
        let hlen = record_header_len(loc.len, align);
        let p0 = u64::from(offset) / PIECE_LEN;
        let p1 = end.div_ceil(PIECE_LEN);
        let data_end = (p1 * PIECE_LEN).min(u64::from(loc.len));
        let t = loc.segment as usize % self.records.senders.len();
        let pool = self.records.pools.get(t);
        let region = |from: u64, to: u64| {
            let len = format::align_up(to - from, align) as usize;
            (loc.offset + from, IoBuf::new(pool, len))
        };
        let ranges = if p0 == 0 {
            vec![region(0, hlen + data_end)]
        } else {
            vec![
                region(0, hlen),
                region(hlen + p0 * PIECE_LEN, hlen + data_end),
            ]
        };
        let (tx, rx) = oneshot::channel();
        self.records.senders[t]
            .send(Request::Read {
                segment: loc.segment,
                ranges,
                reply: tx,
            })
            .map_err(|_| StagingError::Closed)?;
        let bufs = rx.recv().map_err(|_| StagingError::Closed)??;

        let bad = |what: String| StagingError::Checksum {
            segment: loc.segment,
            offset: loc.offset,
            what,
        };
        let rec = decode_record_header(&bufs[0].as_slice()[..hlen as usize])
            .map_err(|e| bad(format!("record header {e:?}")))?;
        if rec.meta.generation != generation || st.generation.load(Ordering::SeqCst) != generation {
            return Err(StagingError::Stale {
                segment: loc.segment,
                offset: loc.offset,
            });
        }
        if rec.header.len != loc.len {
            return Err(bad(format!(
                "record holds {} bytes, location says {}",
                rec.header.len, loc.len
            )));
        }
        // `data` starts at piece p0.
        let data = if p0 == 0 {
            &bufs[0].as_slice()[hlen as usize..(hlen + data_end) as usize]
        } else {
            &bufs[1].as_slice()[..(data_end - p0 * PIECE_LEN) as usize]
        };
        for (i, piece) in data.chunks(PIECE_LEN as usize).enumerate() {
            let p = p0 as usize + i;
            if crc32c::crc32c(piece) != rec.crcs[p] {
                return Err(bad(format!("data piece {p}")));
            }
        }
        let from = (u64::from(offset) - p0 * PIECE_LEN) as usize;
        out.copy_from_slice(&data[from..from + out.len()]);
        Ok(())
    }

    /// The record at `loc` is no longer needed (uploaded, or its file deleted). When every
    /// record of a full segment is freed, the segment is recycled. Each location must be
    /// freed at most once.
    pub fn free(&self, loc: &StagedLoc) {
        let Some(st) = self.shared.segs.get(loc.segment as usize) else {
            return;
        };
        self.shared.note_freed(loc.segment, loc.offset);
        let align = u64::from(st.align.load(Ordering::SeqCst));
        self.shared
            .live_bytes
            .fetch_sub(record_size(loc.len, align), Ordering::Relaxed);
        self.shared.live_records.fetch_sub(1, Ordering::Relaxed);
        let prev = st.state.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(
            prev & !SEALED > 0,
            "staging free of a segment with no live record"
        );
        if prev == SEALED | 1 {
            let t = loc.segment as usize % self.records.senders.len();
            let _ = self.records.senders[t].send(Request::Recycle {
                segment: loc.segment,
            });
        }
    }

    pub fn usage(&self) -> StagingUsage {
        let s = &self.shared;
        let pool_sum = |f: fn(&BufPool) -> &AtomicU64| -> u64 {
            self.records
                .pools
                .iter()
                .map(|p| f(p).load(Ordering::Relaxed))
                .sum()
        };
        let free = s.free.lock().len();
        let now = now_us();
        let oldest = s
            .segs
            .iter()
            .filter(|st| st.state.load(Ordering::Relaxed) & !SEALED > 0)
            .map(|st| st.oldest_us.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .min();
        StagingUsage {
            used_bytes: s.live_bytes.load(Ordering::Relaxed),
            capacity_bytes: s.segs.len() as u64 * s.segment_size,
            live_records: s.live_records.load(Ordering::Relaxed),
            segments: s.segs.len() - free - s.broken.load(Ordering::Relaxed) as usize,
            max_segments: s.segs.len(),
            io_engine: s.io_engine,
            oldest_live_age: oldest
                .map(|t| Duration::from_micros(now.saturating_sub(t)))
                .unwrap_or_default(),
            device_flushes: s.flushes.load(Ordering::Relaxed),
            datasyncs: s.datasyncs.load(Ordering::Relaxed),
            dsync_writes: s.dsync_writes.load(Ordering::Relaxed),
            reads: s.reads.load(Ordering::Relaxed),
            appends: s.appends.load(Ordering::Relaxed),
            broken_segments: s.broken.load(Ordering::Relaxed),
            fixed_writes: pool_sum(|p| &p.fixed_writes),
            fixed_reads: pool_sum(|p| &p.fixed_reads),
            pool_misses: pool_sum(|p| &p.misses),
            large_reused: pool_sum(|p| &p.large_reused),
        }
    }

    /// Makes everything appended before the call power-safe (flushes every thread's
    /// unflushed segments), whatever the durability setting.
    pub fn sync(&self) -> Result<(), StagingError> {
        // Records still with the builder thread were appended too.
        if let Some(builder) = &self.builder {
            let (tx, rx) = oneshot::channel();
            if builder.send(BuildJob::Drained(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
        let rxs: Vec<_> = self
            .records
            .senders
            .iter()
            .map(|s| {
                let (tx, rx) = oneshot::channel();
                s.send(Request::Sync { reply: tx })
                    .map_err(|_| StagingError::Closed)?;
                Ok(rx)
            })
            .collect::<Result<_, StagingError>>()?;
        for rx in rxs {
            rx.recv().map_err(|_| StagingError::Closed)??;
        }
        Ok(())
    }

    /// Engine threads (one I/O engine and one request queue each).
    pub fn threads(&self) -> usize {
        self.records.senders.len()
    }

    /// Requests waiting in each engine thread's queue, by thread.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.records.senders.iter().map(|s| s.len()).collect()
    }

    /// The direct-I/O alignment records use.
    pub fn alignment(&self) -> u64 {
        self.shared.align
    }

    /// Sets what must happen before a segment whose records were all freed gets a new header
    /// (which destroys them): making durable the metadata changes that freed them (an
    /// upload's commit, a dead slice's collection). Without it, a power cut after the header
    /// but before those changes reached stable storage would bring back metadata pointing at
    /// records that are gone. The barrier runs on the engine thread; when it fails, the
    /// segment is left as it is and tried again later. Set once; later calls are ignored.
    pub fn set_recycle_barrier(&self, barrier: segments::RecycleBarrier) {
        let _ = self.shared.recycle_barrier.set(barrier);
    }

    /// Whether the machine restarted (or that is not known) since the log was last open:
    /// writes no flush covered may have been lost or torn by a power cut.
    pub fn restarted(&self) -> bool {
        self.restarted
    }

    /// Unreadable regions replay found in the middle of segments (see [`LogDamage`]).
    pub fn damage(&self) -> Vec<LogDamage> {
        self.damage.lock().0.clone()
    }

    /// The loss that replay found is recorded elsewhere: segments held because of damage
    /// may be recycled once their (remaining) records are freed.
    pub fn release_damage(&self) {
        let held = std::mem::take(&mut self.damage.lock().1);
        for segment in held {
            let st = &self.shared.segs[segment as usize];
            let prev = st.state.fetch_sub(1, Ordering::SeqCst);
            if prev == SEALED | 1 {
                let t = segment as usize % self.records.senders.len();
                let _ = self.records.senders[t].send(Request::Recycle { segment });
            }
        }
    }
}

impl Drop for StagingLog {
    fn drop(&mut self) {
        // The builder first: it hands what it was given to the engine threads, then exits.
        self.builder = None;
        if let Some(h) = self.builder_thread.lock().take() {
            let _ = h.join();
        }
        for s in &self.records.senders {
            let _ = s.send(Request::Shutdown);
        }
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
        {
            let _free = self.shared.free.lock();
            self.shared.stopping.store(true, Ordering::SeqCst);
            self.shared.free_cv.notify_all();
        }
        if let Some(h) = self.spares.lock().take() {
            let _ = h.join();
        }
    }
}

const _: () = assert!(PIECE_LEN == 65536);

/// A valid record found by [`scan_dir`], with what an offline checker needs to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The record as replay finds it.
    pub record: Replayed,
    /// Bytes the record occupies in its segment (header, data, padding).
    pub bytes: u64,
    /// The segment file and the byte offset of the record's data in it.
    pub path: PathBuf,
    pub data_offset: u64,
}

/// What [`scan_dir`] found in a log directory.
#[derive(Debug, Clone, Default)]
pub struct LogScan {
    /// Valid records of every segment's current generation, in sequence order (one copy of a
    /// record written twice).
    pub records: Vec<LogRecord>,
    pub segments: usize,
    /// Segments whose scan stopped at a torn or corrupt record.
    pub torn_segments: usize,
    /// Unreadable regions with valid records behind them (see [`LogDamage`]).
    pub damage: Vec<LogDamage>,
}

/// Reads a staging log directory without changing anything in it (no segment is created,
/// restamped or recycled, no thread is started): `fsck` of an unmounted volume. A missing
/// directory is an empty log. Segments of another volume are refused.
pub fn scan_dir(dir: &std::path::Path, volume_uuid: [u8; 16]) -> Result<LogScan, StagingError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = LogScan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StagingError::io(format!("read {dir:?}"), e)),
    };
    let mut existing: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            segments::parse_segment_name(&name.to_string_lossy())
        })
        .collect();
    existing.sort_unstable();
    let mut scans = Vec::with_capacity(existing.len());
    for i in existing {
        let path = segment_path(dir, i);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path))
            .map_err(|e| StagingError::io(format!("open {path:?}"), e))?;
        let size = file
            .metadata()
            .map_err(|e| StagingError::io(format!("stat {path:?}"), e))?
            .len();
        if size < BUF_ALIGN as u64 {
            continue;
        }
        let scan = replay::scan_segment(&file, size)
            .map_err(|e| StagingError::io(format!("scan {path:?}"), e))?;
        scans.push((i, path, scan));
    }
    // As an open would: what a power cut explains is no damage.
    let cuts = boots::PowerCuts::new(
        boots::Boots::read(dir).as_ref(),
        RealFiles.boot_id().as_deref(),
        scans.iter().flat_map(|(_, _, scan)| {
            scan.records
                .iter()
                .filter(|r| r.intact)
                .map(|r| (r.rec.meta.seq, r.rec.flushed_through))
        }),
    );
    for (i, path, mut scan) in scans {
        scan.forgive_power_cut(&cuts);
        out.segments += 1;
        out.torn_segments += usize::from(scan.corrupt_tail);
        out.damage.extend(LogDamage::found_in(i, &scan));
        let Some(h) = &scan.header else { continue };
        if !scan.header_damaged && h.volume_uuid != volume_uuid {
            return Err(StagingError::ForeignVolume {
                expected: hex(&volume_uuid),
                found: hex(&h.volume_uuid),
            });
        }
        let align = u64::from(h.align);
        for r in scan.records {
            let (len, offset) = (r.rec.header.len, r.offset);
            out.records.push(LogRecord {
                record: Replayed::found(i, r),
                bytes: record_size(len, align),
                path: path.clone(),
                data_offset: offset + format::record_header_len(len, align),
            });
        }
    }
    out.records.sort_by_key(|r| (r.record.seq, r.record.loc));
    out.records.dedup_by_key(|r| r.record.seq);
    Ok(out)
}

/// The rule "whoever deletes a `T` record frees the record, exactly once" is checked in debug
/// builds: these tests show the check fires.
#[cfg(all(test, debug_assertions))]
mod freed_once {
    use super::*;

    fn log_with_one_record() -> (tempfile::TempDir, StagingLog, StagedLoc) {
        let dir = tempfile::tempdir().unwrap();
        let config = StagingConfig::for_tests(dir.path(), *b"spoolfs-test-vol", 1 << 20);
        let (log, _) = StagingLog::open(config).unwrap();
        let header = RecordHeader {
            ino: 1,
            chunk: 0,
            pos: 0,
            slice_id: 7,
            len: 4096,
            meta_len: 0,
        };
        let loc = log.append(&header, &[3u8; 4096], false).unwrap();
        (dir, log, loc)
    }

    #[test]
    fn a_record_freed_once_is_fine() {
        let (_dir, log, loc) = log_with_one_record();
        log.free(&loc);
        assert_eq!(log.usage().live_records, 0);
    }

    #[test]
    #[should_panic(expected = "freed twice")]
    fn a_record_freed_twice_panics() {
        let (_dir, log, loc) = log_with_one_record();
        log.free(&loc);
        log.free(&loc);
    }
}
