//! Reads of slices staged on another mount of the same volume.
//!
//! A mount of a shared volume acknowledges a `close` once the data is in its local staging
//! log; until the upload finishes, the only copy is there. Each mount runs a [`PeerServer`]
//! that serves its staged slices to the volume's other mounts, and reads another mount's staged
//! slices with a [`PeerClient`]. The engine implements [`StagedSlices`] over its uploader.
//!
//! Only holders of the volume's secret may read: every request carries an HMAC-SHA256 over a
//! per-connection server nonce and the request (the secret never travels), and every reply
//! to an authenticated request carries one too. Replies carry the CRC-32C of their data,
//! which the client checks. The wire format is in docs/FORMAT.md, "Peer protocol".
//!
//! This crate knows nothing of inodes, metadata or the staging log: slice ids and bytes only.

mod client;
pub mod protocol;
mod server;

pub use client::{PeerClient, PeerClientConfig, PeerClientStats};
pub use protocol::ErrorCode;
pub use server::{PeerServer, PeerServerConfig, PeerServerStats, advertised_addr};

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// What a staged slice's owner failed with, as the engine reports it.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The staged slices a [`PeerServer`] serves: the engine implements it over its uploader.
/// Called from the server's blocking threads.
pub trait StagedSlices: Send + Sync {
    /// Bytes `[offset, offset + len)` of slice `slice_id` if it is staged on this node,
    /// `Ok(None)` if it is not (uploaded since, or never staged here). A read beyond the
    /// slice's end is an error.
    fn read_staged(
        &self,
        slice_id: u64,
        offset: u32,
        len: u32,
    ) -> Result<Option<Bytes>, SourceError>;

    /// Another mount wants slice `slice_id`: upload it next. Called after every read served,
    /// so it must be cheap when the slice is already at the front or gone.
    fn prioritise(&self, slice_id: u64);
}

/// Why a peer read failed. The engine answers the application with `EIO` whatever the cause
/// (after waiting for the upload where that can help); the variant says why in its log line.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} is unreachable: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("peer {addr} refused the request ({code:?}): {message}")]
    Refused {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("slice {slice} is not staged on peer {addr}")]
    NotStaged { addr: SocketAddr, slice: u64 },
    #[error("peer {addr} failed to read staged slice {slice}: {message}")]
    ReadFailed {
        addr: SocketAddr,
        slice: u64,
        message: String,
    },
    #[error(
        "slice {slice} at {offset} from peer {addr}: CRC-32C {actual:08x}, the reply says {expected:08x}"
    )]
    Checksum {
        addr: SocketAddr,
        slice: u64,
        offset: u32,
        expected: u32,
        actual: u32,
    },
    #[error("peer {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
}

impl PeerError {
    /// The errno that describes the failure (for logs and metrics; see the type's note).
    pub fn errno(&self) -> i32 {
        match self {
            PeerError::Unreachable { .. } => libc::EHOSTUNREACH,
            PeerError::Timeout { .. } => libc::ETIMEDOUT,
            PeerError::Refused { .. } => libc::EACCES,
            PeerError::NotStaged { .. } => libc::ENODATA,
            PeerError::ReadFailed { .. } | PeerError::Checksum { .. } => libc::EIO,
            PeerError::Protocol { .. } => libc::EPROTO,
        }
    }

    /// Whether waiting for the owner's upload can still succeed: the owner did not say the
    /// request itself is wrong.
    pub fn upload_may_help(&self) -> bool {
        !matches!(self, PeerError::Refused { .. })
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the volume's peer secret has {0} bytes; at least {min} are needed",
        min = protocol::MIN_SECRET_LEN
    )]
    ShortSecret(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot listen for peer reads on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the peer server's threads: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A new random secret for a volume (kept in its metadata; every mount reads it there).
pub fn new_secret() -> std::io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    fill_random(&mut secret)?;
    Ok(secret)
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| std::io::Error::other("the operating system's random source failed"))
}
