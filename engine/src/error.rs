//! One error type for every engine call; each value knows its errno and keeps its cause
//! (`std::error::Error::source`), so a front end can print the whole chain.

use spoolfs_metadata::MetaError;
use spoolfs_objects::StorageError;
use spoolfs_staging::StagingError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX failure the caller caused or should expect (ENOENT, EEXIST, ...).
    #[error("{msg}")]
    Posix { errno: i32, msg: String },
    #[error(transparent)]
    Meta(MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A thread of the engine could not be started.
    #[error("cannot start {what}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A local directory the engine keeps its caches or logs in.
    #[error("{what} {}", path.display())]
    Local {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A staging log could not be opened.
    #[error("cannot open the staging log in {}", path.display())]
    StagingLog {
        path: PathBuf,
        #[source]
        source: StagingError,
    },
    /// A staging log could not be read (offline checks).
    #[error("cannot read the staging log")]
    StagingScan(#[source] StagingError),
    /// The volume record in the metadata store does not parse.
    #[error("volume record is unreadable")]
    VolumeRecord(#[source] serde_json::Error),
    /// The volume record's id is not a UUID.
    #[error("volume uuid {uuid:?} is not valid")]
    VolumeUuid {
        uuid: String,
        #[source]
        source: uuid::Error,
    },
    /// The namespace log is gone with the metadata store it logs for.
    #[error("the namespace log is closed")]
    NamespaceLogClosed,
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
            FsError::Local { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::StagingLog { source, .. } | FsError::StagingScan(source) => source.errno(),
            FsError::VolumeRecord(_) => libc::EIO,
            FsError::Spawn { .. } | FsError::VolumeUuid { .. } | FsError::NamespaceLogClosed => {
                libc::EIO
            }
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
