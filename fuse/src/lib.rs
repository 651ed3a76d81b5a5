//! The FUSE front end of spoolfs: a thin adapter from the kernel's FUSE protocol (through
//! `fuser`) to [`spoolfs_engine::Engine`].
//!
//! Every FUSE request becomes one engine call; engine errors become errnos with
//! [`spoolfs_engine::FsError::errno`]. The adapter keeps no state of its own beyond the cache
//! lifetimes (TTLs) it hands to the kernel.
//!
//! - [`SpoolFs`]: the `fuser::Filesystem` implementation.
//! - [`MountOptions`], [`FuseSession`], [`mount_foreground`], [`mount_background`]: mounting.
//! - [`ask_request_sizes`], [`block_termination_signals`]: what every FUSE server here does
//!   alike (the `nullfs` example too).
//! - [`stats`]: per-operation request counts and latencies for the metrics.
//! - [`check_mount_point`]: the checks made before mounting (exists, directory, empty, not
//!   already a mount point).

mod fs;
mod mount;
mod signals;
pub mod stats;

pub use fs::{MAX_WRITE_BYTES, SpoolFs, ask_request_sizes, panic_message};
pub use mount::{
    BackgroundMount, EXCLUSIVE_CACHE_TTL, FuseSession, MountEntry, MountError, MountOptions,
    SHARED_CACHE_TTL, Unmounter, check_mount_point, host_has_selinux, is_mount_point,
    mount_background, mount_foreground, parse_mountinfo, read_mountinfo,
};
pub use signals::block_termination_signals;
