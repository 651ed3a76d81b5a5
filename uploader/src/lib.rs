//! The uploader: staged slices on their way from this node's staging log to the object store.
//!
//! Life of a staged slice:
//! 1. The engine's flush appends it to the staging log (O_DIRECT) and commits, in one metadata
//!    transaction, its place in the chunk map and a `T` record saying where it is staged;
//!    then hands it over with [`Uploader::add`]. Writers wait in [`Uploader::wait_for_room`]
//!    while the staged bytes or the age of the oldest staged byte are over their limits
//!    (backpressure).
//! 2. An upload thread ([`run_uploader`]) takes a batch of them, reads them back (checksummed),
//!    PUTs their blocks and packs (small slices share pack objects), deletes their `T` records
//!    in one transaction (through the engine's [`Catalog`]), and frees the log space once no
//!    reader is still reading it (readers go through [`Uploader::read_staged`]). Whoever
//!    deletes a `T` record in a transaction frees the space: exactly one.
//! 3. A slice that dies while staged (overwritten, truncated, unlinked) is never uploaded: the
//!    engine's dead-slice collection deletes its `T` record and calls
//!    [`Uploader::remove_many`].
//!
//! The crate knows object keys and formats (from `spoolfs-objects`) and the staging log (from
//! `spoolfs-staging`), not inodes or metadata keys.

mod limiter;
mod staged;
mod upload;
mod uploader;

pub use limiter::{RateWindow, UploadLimiter};
pub use staged::{Staged, StagedRec, StagedSet, UNKNOWN_SEGMENT, now_ns};
pub use upload::{Catalog, PackUpload, run_uploader, upload_batch};
pub use uploader::{NamespaceProgress, UploadOptions, UploadStats, Uploader};

/// Most staged slices one uploader moves per metadata transaction: enough that thousands of
/// small files share a handful of pack objects.
pub const UPLOAD_BATCH: usize = 4096;
/// Most staged bytes one uploader takes at once (more slices wait for the next batch).
pub const UPLOAD_BATCH_BYTES: u64 = 64 << 20;
/// Default target size of a pack object (`--pack-size`).
pub const DEFAULT_PACK_SIZE: usize = 8 << 20;

/// Why an upload batch failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading staged slice {slice}")]
    ReadStaged {
        slice: u64,
        #[source]
        source: spoolfs_staging::StagingError,
    },
    #[error(transparent)]
    Store(#[from] spoolfs_objects::StorageError),
    #[error("recording the upload in the metadata")]
    Catalog(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl UploadError {
    fn catalog(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        UploadError::Catalog(Box::new(e))
    }
}

/// An error and its causes, for a log line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
