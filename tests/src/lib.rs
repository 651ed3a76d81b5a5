//! Support library for the spoolfs integration tests.
//!
//! * [`spoolfs_bin`] finds the `spoolfs` binary (`$SPOOLFS_BIN` or `target/debug/spoolfs`); the
//!   tests never build it themselves (`tests/run.sh` does).
//! * [`S3Server`] runs `s3s-fs` on a free loopback port with a private root directory.
//! * [`Volume`] formats a volume (file store or S3 store) in a private temporary directory.
//! * [`Mount`] mounts a volume (a `--foreground` child process, or the daemon) and always tears
//!   the mount down on drop, also when the test panics.
//!
//! * [`S3Server::start_proxy`] puts a [`spoolfs_s3proxy::Proxy`] (delays, request counts, fault
//!   injection) in front of a server; [`Volume::set_mount_s3_endpoint`] makes a volume's mounts
//!   use it.
//!
//! Every child process gets an explicit environment: no CA bundle variables (they break plain
//! http on loopback), no proxies, no AWS profile, and the fixed test keys.
//!
//! The crate's modules, by role: [`process`] (environment, binaries, commands), [`s3`] (the S3
//! server), [`volume`] (test volumes and the backend matrix), [`mount`] (mounts and their
//! teardown), [`posix`] (errno checks, system call wrappers), [`snapshot`] (tree snapshots).
//! Everything public is re-exported at the crate root (`spoolfs_tests::Volume`, …); the
//! engine-agnostic data helpers come from `spoolfs-testkit`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const TEST_ACCESS_KEY: &str = "spoolfs-test-access";
pub const TEST_SECRET_KEY: &str = "spoolfs-test-secret-0123456789";
pub const TEST_BUCKET: &str = "spoolfs-test";
pub const TEST_REGION: &str = "us-east-1";

pub mod mount;
pub mod posix;
pub mod process;
pub mod s3;
pub mod snapshot;
pub mod volume;

pub use mount::*;
pub use posix::*;
pub use process::*;
pub use s3::*;
pub use snapshot::*;
pub use spoolfs_testkit::{
    Rng, assert_bytes_eq, checksum, fuse_available, random_bytes, require_fuse,
};
pub use volume::*;
