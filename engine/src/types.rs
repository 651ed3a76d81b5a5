//! The vocabulary of the engine API.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

pub type Ino = u64;
/// The root directory's inode number (as FUSE expects).
pub const ROOT_INO: Ino = 1;
/// Longest name in a directory, in bytes (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (Linux PATH_MAX - 1).
pub const SYMLINK_MAX: usize = 4095;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Some(FileKind::File),
            libc::S_IFDIR => Some(FileKind::Dir),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }

    /// The DT_* value readdir reports.
    pub fn dirent_type(self) -> u8 {
        match self {
            FileKind::File => libc::DT_REG,
            FileKind::Dir => libc::DT_DIR,
            FileKind::Symlink => libc::DT_LNK,
            FileKind::Fifo => libc::DT_FIFO,
            FileKind::Socket => libc::DT_SOCK,
            FileKind::CharDevice => libc::DT_CHR,
            FileKind::BlockDevice => libc::DT_BLK,
        }
    }
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including set-id and sticky (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// 512-byte blocks in use (holes excluded where known).
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
    /// Preferred I/O size for `stat`.
    pub blksize: u32,
}

/// Who is calling: the credentials of the process behind a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The umask of a create, mkdir or mknod, applied to the new inode's mode unless its
    /// directory has a default ACL (which limits the mode instead); 0 when the mode given has
    /// it applied already. Decided in the create's own transaction: no extra read.
    pub umask: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
        umask: 0,
    };

    /// This caller, creating with `umask` (see [`Caller::umask`]).
    pub fn with_umask(self, umask: u32) -> Caller {
        Caller { umask, ..self }
    }
}

/// When a read moves a file's access time: the mount's `relatime` (the default),
/// `strictatime` or `noatime`, with the meaning they have on Linux file systems.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// On the first read after a change of the contents or attributes (atime not newer than
    /// mtime or ctime), or when atime is a day old.
    #[default]
    Relatime,
    /// On every read.
    Strictatime,
    /// Never (only `utimensat` sets it).
    Noatime,
}

impl AtimeMode {
    /// Whether a read at `now` moves an access time `atime` of a file last modified at
    /// `mtime` and changed at `ctime` (all in nanoseconds since the epoch).
    pub fn read_updates(self, atime: i64, mtime: i64, ctime: i64, now: i64) -> bool {
        const DAY_NS: i64 = 24 * 3600 * 1_000_000_000;
        match self {
            AtimeMode::Noatime => false,
            AtimeMode::Strictatime => atime != now,
            AtimeMode::Relatime => {
                atime <= mtime || atime <= ctime || now.saturating_sub(atime) >= DAY_NS
            }
        }
    }
}

/// A time to set with `utimensat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

/// The changes of one `setattr` call; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// New permission bits (the S_IFMT bits are ignored).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend to this size.
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<SystemTime>,
    /// The open file the change came through, if any.
    pub fh: Option<u64>,
}

/// Flags of `renameat2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// One directory entry. `offset` is the cookie to pass back to continue after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
    pub offset: u64,
}

/// `setxattr` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrSet {
    /// Create or replace.
    Any,
    /// XATTR_CREATE: fail with EEXIST if it exists.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if it does not.
    Replace,
}

/// What `statfs` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A snapshot of the engine's state for `spoolfs status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineStatus {
    pub volume_name: String,
    pub volume_uuid: String,
    /// "standard" (close/fsync wait for the object store) or "writeback".
    pub mode: String,
    pub metadata: String,
    pub storage: String,
    pub open_files: u64,
    pub inodes: u64,
    pub used_bytes: u64,
    /// Bytes written by applications and not yet in the object store.
    pub dirty_bytes: u64,
    pub objects_put: u64,
    pub objects_got: u64,
    pub pending_deletes: u64,
    /// Acknowledged bytes in the staging log, not yet in the object store.
    #[serde(default)]
    pub staged_bytes: u64,
    #[serde(default)]
    pub staged_slices: u64,
    /// Age of the oldest staged byte, in seconds.
    #[serde(default)]
    pub oldest_staged_age_secs: f64,
    #[serde(default)]
    pub upload_errors: u64,
    /// The staging log: io engine and usage.
    #[serde(default)]
    pub staging: Option<String>,
    /// Bytes of live records in the staging log (headers and padding included).
    #[serde(default)]
    pub staging_log_bytes: u64,
    /// Records read back from the staging log since mount: reads of staged data, and
    /// uploads whose data was no longer held in memory (`--upload-buffer`).
    #[serde(default)]
    pub staging_reads: u64,
    /// The local data cache on disk, when there is one.
    #[serde(default)]
    pub data_cache: Option<crate::diskcache::DiskCacheStats>,
    /// Opens answered with a FUSE passthrough to a cache file.
    #[serde(default)]
    pub passthrough_opens: u64,
    /// Whole-pack fetches into the local data cache (absent without one).
    #[serde(default)]
    pub pack_fetch: Option<PackFetchStats>,
    /// Metadata changes kept in memory (crash-safe in the namespace log) until the next
    /// checkpoint, at most about a second away, applies them to the metadata store.
    #[serde(default)]
    pub metadata_unapplied_changes: u64,
    /// Bytes of staged slices uploaded per second, over about the last 10 seconds.
    #[serde(default)]
    pub upload_rate_bytes_per_sec: f64,
    /// Staged bytes divided by the upload rate: 0 when nothing is staged, `None` (null) when
    /// something is staged but nothing was uploaded lately.
    #[serde(default)]
    pub drain_eta_secs: Option<f64>,
    /// Bytes of staged slices uploaded since the mount.
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Staged slices waiting for an uploader (not counting those being uploaded).
    #[serde(default)]
    pub upload_queue_slices: u64,
    /// Writers that had to wait for staging room (`--max-staging`, `--max-staging-age`).
    #[serde(default)]
    pub backpressure_events: u64,
    /// Slices sent straight to the object store because the staging log had no room or
    /// failed.
    #[serde(default)]
    pub staging_bypassed_slices: u64,
    /// On a shared volume: whether this mount held the volume's background lease at its last
    /// look (`None`: an exclusive volume, where the mount does all the work).
    #[serde(default)]
    pub background_lease: Option<bool>,
    #[serde(default)]
    pub staging_used_bytes: u64,
    #[serde(default)]
    pub staging_capacity_bytes: u64,
    /// Staging engine threads and the I/O engine they use ("uring", "psync"); 0 and empty
    /// without a staging log.
    #[serde(default)]
    pub engine_threads: u64,
    #[serde(default)]
    pub io_engine: String,
    /// The in-memory block cache.
    #[serde(default)]
    pub cache_bytes: u64,
    #[serde(default)]
    pub cache_capacity_bytes: u64,
    #[serde(default)]
    pub cache_hits: u64,
    #[serde(default)]
    pub cache_misses: u64,
    /// The daemon's resident memory (0 where it cannot be read).
    #[serde(default)]
    pub resident_bytes: u64,
    /// Of it, buffers kept for the next large write, freed once the mount is idle
    /// (`--release-memory-after`).
    #[serde(default)]
    pub kept_buffer_bytes: u64,
    /// `--release-memory-after` in seconds (`None`: memory is kept).
    #[serde(default)]
    pub release_memory_after_secs: Option<f64>,
}

/// The engine's numbers that are cheap to take (no metadata scan): what the metrics exporter
/// samples once a second and at every scrape. `Engine::status` is built from the same
/// snapshot, so the two agree.
#[derive(Clone, Debug, Default)]
pub struct EngineMetrics {
    pub writeback: bool,
    pub open_files: u64,
    /// Bytes written by applications and not yet staged or uploaded.
    pub dirty_bytes: u64,
    pub objects_put: u64,
    pub objects_got: u64,
    pub staged_bytes: u64,
    pub staged_slices: u64,
    pub oldest_staged_age_secs: f64,
    /// Staged slices waiting for an uploader, and those being uploaded now.
    pub upload_queue_slices: u64,
    pub uploading_slices: u64,
    pub uploaded_bytes: u64,
    pub uploaded_slices: u64,
    /// Upload batches that failed (each is retried).
    pub upload_errors: u64,
    pub upload_rate_bytes_per_sec: f64,
    /// Writers that waited for staging room, and waits that timed out.
    pub backpressure_waits: u64,
    pub backpressure_timeouts: u64,
    pub staging_bypassed_slices: u64,
    /// The staging log (all zero without one).
    pub staging: Option<crate::staging::StagingUsage>,
    pub engine_threads: u64,
    /// Requests queued per staging engine thread.
    pub engine_queue_depths: Vec<u64>,
    pub cache_bytes: u64,
    pub cache_blocks: u64,
    pub cache_capacity_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Metadata changes kept in memory until the next checkpoint applies them to the store.
    pub metadata_unapplied_changes: u64,
    /// Calls that waited for the namespace log's device, and creates that did not (see
    /// `wal::WalStats`; zero without a namespace log).
    pub namespace_log_waits: u64,
    pub namespace_log_deferred: u64,
    /// Whole-pack fetches (all zero without a local data cache).
    pub pack_fetch: PackFetchStats,
}

#[cfg(test)]
mod atime_tests {
    use super::AtimeMode;

    #[test]
    fn atime_rules() {
        const S: i64 = 1_000_000_000;
        let day = 24 * 3600 * S;
        let now = 10 * day;
        let (mtime, ctime) = (now - 3600 * S, now - 3600 * S);
        let r = AtimeMode::Relatime;
        // Not newer than mtime or ctime: the first read after a change moves it.
        assert!(r.read_updates(mtime, mtime, ctime, now));
        assert!(r.read_updates(mtime - S, mtime, ctime, now));
        assert!(r.read_updates(mtime + S, mtime, now - 1, now));
        // Newer than both and less than a day old: left alone.
        assert!(!r.read_updates(mtime + S, mtime, ctime, now));
        assert!(!r.read_updates(now - day + S, now - 2 * day, now - 2 * day, now));
        // A day old: moves.
        assert!(r.read_updates(now - day, now - 2 * day, now - 2 * day, now));
        assert!(AtimeMode::Strictatime.read_updates(now - S, mtime, ctime, now));
        assert!(!AtimeMode::Noatime.read_updates(mtime - day, mtime, ctime, now));
    }
}

/// Counts of the pack fetcher, for the metrics and `spoolfs status`.
#[derive(Default, Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct PackFetchStats {
    /// Whole-pack fetches started (a GET each).
    pub started: u64,
    /// Bytes they fetched.
    pub bytes: u64,
    /// Reads served from a pack this mount fetched.
    pub hits: u64,
    /// Fetches that failed (the readers then fetch their slices themselves).
    pub errors: u64,
    /// Jobs dropped because the queue was full.
    pub dropped: u64,
    /// Directories planned (listed, read in sequence, or below a listed one).
    pub dirs_planned: u64,
    /// Most fetches in flight at once, and most bytes they held.
    pub peak_concurrent: u64,
    pub peak_bytes_in_flight: u64,
}
