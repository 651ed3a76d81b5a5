//! One error type for every engine call; each value knows its errno.

use spoolfs_metadata::MetaError;
use spoolfs_objects::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX failure the caller caused or should expect (ENOENT, EEXIST, ...).
    #[error("{msg}")]
    Posix { errno: i32, msg: String },
    #[error(transparent)]
    Meta(MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Other(String),
}

impl FsError {
    pub fn new(errno: i32, msg: impl Into<String>) -> Self {
        FsError::Posix {
            errno,
            msg: msg.into(),
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            FsError::Posix { errno, .. } => *errno,
            FsError::Meta(e) => e.errno(),
            FsError::Storage(e) => e.errno(),
            FsError::Other(_) => libc::EIO,
        }
    }
}

/// Errors that abort a metadata transaction carry their errno through the store.
impl From<FsError> for MetaError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Meta(m) => m,
            other => MetaError::Errno(other.errno(), other.to_string()),
        }
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Errno(errno, msg) => FsError::Posix { errno, msg },
            other => FsError::Meta(other),
        }
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;
