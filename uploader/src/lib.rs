//! Object storage for spoolfs: opening a store from its URL, checksummed block objects, and
//! blocking wrappers so synchronous callers (FUSE threads, the engine) can use the async
//! `object_store` clients.
//!
//! This crate knows nothing about inodes or metadata. The engine decides which bytes go into
//! which object; this crate puts them there and gets them back, verified.

mod block;
mod pack;
mod storage;

pub use block::{BLOCK_TRAILER_LEN, decode_block, encode_block};
pub use pack::{PackEntry, decode_pack_index, encode_pack, verify_packed};
pub use storage::{
    DELETE_BATCH_KEYS, ObjectInfo, ObjectStorage, S3Addressing, StorageConfig, error_kind,
    s3_addressing,
};

/// Errors from the object store, each with the errno a file system call reports.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key} already exists")]
    AlreadyExists { key: String },
    #[error("checksum mismatch in object {key}: {detail}")]
    Checksum { key: String, detail: String },
    #[error("access denied by the object store ({detail}); check the credentials")]
    Denied { detail: String },
    #[error("object store unreachable or failing: {detail}")]
    Unavailable { detail: String },
    #[error("object store configuration error: {0}")]
    Config(String),
    /// The store answered, but refused this volume's settings (no such bucket, credentials,
    /// region, bucket name, TLS): the detail names the likely cause and the flag that fixes it.
    #[error("{detail}")]
    Misconfigured { detail: String },
}

impl StorageError {
    pub fn errno(&self) -> i32 {
        match self {
            StorageError::NotFound { .. } => libc::ENOENT,
            StorageError::AlreadyExists { .. } => libc::EEXIST,
            StorageError::Denied { .. } => libc::EACCES,
            StorageError::BadUrl { .. }
            | StorageError::Config(_)
            | StorageError::Misconfigured { .. } => libc::EINVAL,
            StorageError::Checksum { .. } | StorageError::Unavailable { .. } => libc::EIO,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
