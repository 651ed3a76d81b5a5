//! The spoolfs engine: a POSIX file system over a metadata store and an object store.
//!
//! The engine speaks in inode numbers, names and byte ranges; it knows nothing about FUSE.
//! Front ends (the `spoolfs-fuse` crate today) translate their requests into calls on
//! [`Engine`] and its errors into errnos with [`FsError::errno`].
//!
//! Layout of the crate (dependencies point down this list; only `fs` knows [`Engine`]):
//! - `fs`: the [`Engine`]: start, shutdown, background loops, status and metrics, and every
//!   POSIX operation as a thin method (checks, caches, then a component below).
//! - `open`: open files (the open-inode table with each inode's buffered writes, the handles).
//! - `write`: the write path (pending runs, the phases of a flush, the hand-off to the
//!   uploader).
//! - `namespace`: the metadata transaction of every namespace operation, as free functions
//!   over a transaction.
//! - `reader`, `readahead` and [`packfetch`]: the read path (object reader, caches, readahead
//!   threads, whole-pack fetches into the local data cache).
//! - [`reclaim`] (also [`gc`]): dead slices, pack compaction, the orphan sweep.
//! - [`writeback`]: opening the staging logs, replay, what the uploader commits through
//!   (the upload pipeline itself is the `spoolfs-uploader` crate).
//! - `meta`: the metadata store as the components use it; [`wal`]: the namespace log.
//! - [`locks`]: `flock` and POSIX byte-range locks, in the (shared) metadata.
//! - [`session`]: the mounts of a volume on a shared metadata store (PostgreSQL).
//! - helpers: `data` (chunk maps), [`schema`] (keys and records), [`volume`],
//!   `ids`, [`blockcache`], [`diskcache`], [`acl`], [`fsck`].
//! - [`types`] and [`error`]: the vocabulary of the API; one error type that carries an
//!   errno and its cause.

pub mod acl;
pub mod blockcache;
mod data;
pub mod diskcache;
pub mod error;
mod fs;
pub mod fsck;
pub mod holds;
mod ids;
pub mod locks;
pub mod losses;
mod meta;
mod namespace;
mod open;
pub mod packfetch;
pub mod peers;
mod readahead;
mod reader;
pub mod reclaim;
pub mod schema;
pub mod session;
mod stop;
pub mod types;
pub mod volume;
pub mod wal;
mod write;
pub mod writeback;

pub use error::{FsError, Result};
pub use fs::{Engine, EngineConfig};
/// `spoolfs_engine::gc` is the path tools and tests know.
pub use reclaim as gc;
/// Rate-limited logging is its own crate; these paths are the ones front ends use.
pub use spoolfs_lograte as lograte;
pub use spoolfs_lograte::{error_limited, log_limited, warn_limited};
pub use spoolfs_objects::StorageConfig;
/// The staging log is its own crate; this path is the one front ends and tests know.
pub use spoolfs_staging as staging;
pub use types::*;
pub use volume::{FormatOptions, VolumeRecord, default_volume_paths, format_volume};
