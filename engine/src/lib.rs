//! The spoolfs engine: a POSIX file system over a metadata store and an object store.
//!
//! The engine speaks in inode numbers, names and byte ranges; it knows nothing about FUSE.
//! Front ends (the `spoolfs-fuse` crate today) translate their requests into calls on
//! [`Engine`] and its errors into errnos with [`FsError::errno`].
//!
//! Layout of the crate:
//! - [`types`]: attributes, callers, flags: the vocabulary of the API.
//! - [`error`]: one error type that carries an errno and its cause.
//! - [`volume`]: formatting a volume and reading its record.
//! - [`schema`]: how inodes, directory entries, chunks and slices are laid out as keys.
//! - [`fs`]: the namespace operations (lookup, create, rename, ...).
//! - [`data`]: the data path (write buffering, slices, reads, truncation).
//! - [`gc`]: space reclamation (orphan sweep, pack compaction).

pub mod acl;
pub mod blockcache;
mod data;
pub mod diskcache;
pub mod error;
mod fs;
pub mod fsck;
pub mod gc;
mod ids;
pub mod lograte;
mod readahead;
pub mod schema;
pub mod staging;
pub mod types;
pub mod volume;
pub mod wal;
pub mod writeback;

pub use error::{FsError, Result};
pub use fs::{Engine, EngineConfig};
pub use spoolfs_uploader::StorageConfig;
pub use types::*;
pub use volume::{FormatOptions, VolumeRecord, default_volume_paths, format_volume};
