//! The FUSE front end of spoolfs: a thin adapter from the kernel's FUSE protocol (over
//! io_uring through `spoolfs-fuseuring`, or over /dev/fuse through `fuser`) to
//! [`spoolfs_engine::Engine`].
//!
//! Every FUSE request becomes one engine call; engine errors become errnos with
//! [`spoolfs_engine::FsError::errno`]. The adapter keeps no state of its own beyond the cache
//! lifetimes (TTLs) it hands to the kernel and the passthrough registrations of open files.
//!
//! - [`SpoolFs`]: what each FUSE operation does, whatever the transport (`ops`); the
//!   `fuser` adapter (`fs`) and the io_uring adapter (`uring`) decode requests and encode
//!   answers around it.
//! - [`MountOptions`], [`FuseSession`], [`mount_foreground`], [`mount_background`]: mounting;
//!   [`FuseTransport`], [`uring_unavailable`]: which transport serves.
//! - [`ask_request_sizes`], [`block_termination_signals`]: what every FUSE server here does
//!   alike (the `nullfs` example too).
//! - [`stats`]: per-operation request counts and latencies for the metrics.
//! - [`check_mount_point`]: the checks made before mounting (exists, directory, empty, not
//!   already a mount point).

// The io_uring transport crate, under its own name in every module.
extern crate spoolfs_fuseuring as fuseuring;

mod fs;
mod mount;
mod ops;
mod signals;
pub mod stats;
mod uring;

pub use fs::ask_request_sizes;
pub use mount::{
    BackgroundMount, EXCLUSIVE_CACHE_TTL, FuseSession, FuseTransport, MountEntry, MountError,
    MountOptions, SHARED_CACHE_TTL, Unmounter, check_mount_point, host_has_selinux, is_mount_point,
    mount_background, mount_foreground, parse_mountinfo, read_mountinfo, uring_unavailable,
};
pub use ops::{MAX_WRITE_BYTES, SpoolFs, panic_message};
pub use signals::block_termination_signals;
