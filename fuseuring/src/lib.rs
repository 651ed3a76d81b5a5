//! A FUSE transport over io_uring (Linux 6.14+), beside the classic one over /dev/fuse,
//! serving a file system of this crate's own [`Filesystem`] trait.
//!
//! - [`abi`]: the kernel structs and constants (`include/uapi/linux/fuse.h`).
//! - [`protocol`]: request decoding and reply encoding, one [`protocol::dispatch`] for both
//!   transports.
//! - [`fs`]: the [`Filesystem`] trait and its types; [`memfs::MemFs`]: an in-memory file
//!   system implementing it.
//! - [`mount`](mod@mount): mount(2) on an open /dev/fuse, unmounting, the `enable_uring`
//!   switch.
//! - [`session`]: the INIT handshake and the transports: [`session::mount`] returns a
//!   running [`session::Session`]; its [`Notifier`] writes kernel-cache notifications and
//!   registers passthrough backing files ([`BackingId`]).
//!
//! Over io_uring, after INIT is answered with `FUSE_OVER_IO_URING`, one thread per possible
//! CPU owns a ring with a few entries, each a pair of buffers (headers, payload) registered
//! with the kernel by a `FUSE_IO_URING_CMD_REGISTER` command; the completion of that
//! command is a request, and the reply goes back in the same buffers with
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for the next request. FORGET and
//! INTERRUPT still come through /dev/fuse, read by one more thread. A request answered after
//! its handler returned (a lock that waits, through a [`fs::LateReply`]) is committed by its
//! queue's thread once an eventfd the ring reads wakes it.

pub mod abi;
mod dev;
pub mod fs;
pub mod memfs;
pub mod mount;
pub mod protocol;
pub mod session;
mod uring;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use fs::{Errno, Filesystem};
pub use session::{BackingId, Config, Notifier, Session, Transport, TransportChoice, mount};

/// Why a mount could not be served.
#[derive(Debug)]
pub enum Error {
    /// /dev/fuse could not be opened.
    Device(String),
    /// The mount point is unusable.
    MountPoint(PathBuf, String),
    /// mount(2) failed.
    Mount(PathBuf, io::Error),
    /// A setting is invalid.
    Config(String),
    /// The INIT handshake failed.
    Init(String),
    /// FUSE over io_uring was asked for and is not available here.
    UringUnavailable(String),
    /// The io_uring transport failed to start.
    UringSetup(String),
    /// Reading or writing the connection failed.
    Io(io::Error),
}

impl Error {
    /// The errno closest to this error, for callers that report one.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Device(_) => libc::ENODEV,
            Error::MountPoint(..) => libc::ENOTDIR,
            Error::Mount(_, e) | Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Config(_) => libc::EINVAL,
            Error::Init(_) => libc::EPROTO,
            Error::UringUnavailable(_) | Error::UringSetup(_) => libc::EOPNOTSUPP,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Device(e) => write!(f, "cannot open /dev/fuse: {e}"),
            Error::MountPoint(p, e) => write!(f, "mount point {}: {e}", p.display()),
            Error::Mount(p, e) => write!(f, "mount(2) on {} failed: {e}", p.display()),
            Error::Config(e) => write!(f, "invalid setting: {e}"),
            Error::Init(e) => write!(f, "FUSE INIT failed: {e}"),
            Error::UringUnavailable(e) => write!(f, "FUSE over io_uring unavailable: {e}"),
            Error::UringSetup(e) => write!(f, "FUSE over io_uring failed to start: {e}"),
            Error::Io(e) => write!(f, "FUSE connection: {e}"),
        }
    }
}

impl std::error::Error for Error {}
