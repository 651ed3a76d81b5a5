//! Model-based property test of the engine (in the style of mountpoint-s3's reference tests).
//!
//! Random sequences of file system operations run against both the real [`Engine`] (over a
//! redb metadata file and a `file://` object store in a temporary directory) and a small
//! in-memory reference model with Linux semantics. After every operation the outcome (success
//! or the exact errno), returned data and attributes are compared, and the whole namespace is
//! walked (readdir + lookup + getattr of every node). File contents, symlink targets and
//! xattrs of every node are compared at `Verify`/`Remount` operations and at the end of every
//! case. `Remount` shuts the engine down, drops it, reopens the stores and starts a new engine.
//!
//! Conventions:
//! - The harness plays the kernel: it resolves the parent directory of a path in the model
//!   and maps it to the engine's inode. Operations whose parent does not resolve (or whose
//!   target has a kind the kernel would never pass, e.g. `open` of a directory) are skipped.
//! - The name space is tiny (`a`..`d`, depth up to 3) so that collisions are frequent.
//! - `PROPTEST_CASES` overrides the number of cases, `MODEL_OPS` the maximum sequence length.
//! - On failure the shrunk operation sequence is printed; paste it into a `#[test]` that calls
//!   `run_ops` to keep it as a regression.

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use spoolfs_engine::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "../common/mod.rs"]
mod common;
mod exec;
mod harness;
mod ops;
mod reference;
mod runner;

use harness::*;
use ops::*;
use reference::*;
use runner::*;
use spoolfs_testkit::random_bytes;

pub(crate) const KIB: u64 = 1024;
pub(crate) const MIB: u64 = 1024 * 1024;
/// The chunk size of every volume (64 MiB); writes near it cross a chunk boundary.
pub(crate) const CHUNK: u64 = 64 * MIB;
/// The block size of the test volume: small so that slices span several blocks.
pub(crate) const BLOCK: u64 = 64 * KIB;
/// At most this many files are open at once (more `Open`s are skipped).
pub(crate) const MAX_HANDLES: usize = 6;
pub(crate) const ROOT: Caller = Caller::ROOT;

/// Pseudo-errnos for cases where Linux's VFS answers before the file system is asked and the
/// engine could legitimately check in another order: the engine never sees these through FUSE,
/// so any errno of the set is accepted.
/// Renaming a directory into its own subtree (Linux: EINVAL) or onto an ancestor of the source
/// (Linux: ENOTEMPTY); it must fail, but the engine may notice another problem first.
pub(crate) const ANY_TRAP: i32 = -1;
/// Hard-linking a directory onto an existing name (Linux: EEXIST).
pub(crate) const EEXIST_OR_EPERM: i32 = -2;
/// Renaming a missing entry to a name that is too long (Linux: ENOENT).
pub(crate) const ENOENT_OR_ENAMETOOLONG: i32 = -3;

pub(crate) fn accepted(e: i32) -> &'static [i32] {
    match e {
        ANY_TRAP => &[libc::ENOTEMPTY, libc::EINVAL, libc::EISDIR, libc::ENOTDIR],
        EEXIST_OR_EPERM => &[libc::EEXIST, libc::EPERM],
        ENOENT_OR_ENAMETOOLONG => &[libc::ENOENT, libc::ENAMETOOLONG],
        _ => &[],
    }
}

pub(crate) static OPS_RUN: AtomicUsize = AtomicUsize::new(0);
pub(crate) static OPS_SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// Silences panic messages of the property test's thread while it shrinks.
pub(crate) static QUIET: AtomicBool = AtomicBool::new(false);

#[test]
fn model_random_ops() {
    random_ops(env_usize("PROPTEST_CASES", 128) as u32, true);
}

/// The same against a PostgreSQL metadata store (a private server; a fresh database per case),
/// where every transaction commits in the database (the shared mode of a mount). Fewer cases:
/// each costs a database.
#[test]
fn model_random_ops_on_postgres() {
    let pg = spoolfs_testkit::require_postgres!();
    harness::ON_POSTGRES.set(Some(pg));
    random_ops(env_usize("PROPTEST_CASES_POSTGRES", 8) as u32, false);
}

fn random_ops(cases: u32, thousands: bool) {
    let max_ops = env_usize("MODEL_OPS", 150);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 300_000,
        ..ProptestConfig::default()
    };
    // Panics inside the engine are failures to shrink; keep their messages out of the way.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.load(Ordering::Relaxed)
            || !std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("model_random_ops"))
        {
            default_hook(info);
        }
    }));
    QUIET.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let buffers = prop_oneof![
        Just(Buffers::Large),
        Just(Buffers::Small),
        Just(Buffers::Tiny),
        Just(Buffers::Writeback)
    ];
    let strategy = (buffers, proptest::collection::vec(op(), 1..=max_ops));
    let result = runner.run(&strategy, |(buffers, ops)| {
        run_ops_with(buffers, &ops).map_err(|f| TestCaseError::fail(f.msg))
    });
    let run = OPS_RUN.load(Ordering::Relaxed);
    let skipped = OPS_SKIPPED.load(Ordering::Relaxed);
    eprintln!(
        "model_random_ops: {cases} cases, {run} operations run, {skipped} skipped, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {
            QUIET.store(false, Ordering::Relaxed);
            // The contract of this test: a default run executes thousands of operations.
            if thousands
                && std::env::var("PROPTEST_CASES").is_err()
                && std::env::var("MODEL_OPS").is_err()
            {
                assert!(
                    run >= 3000,
                    "only {run} operations ran; the model test must run thousands"
                );
            }
        }
        Err(TestError::Fail(reason, (buffers, ops))) => {
            let deadline = Instant::now() + Duration::from_secs(120);
            let (min, msg) = minimize(buffers, ops.clone(), deadline);
            QUIET.store(false, Ordering::Relaxed);
            panic!(
                "proptest's minimal input ({buffers:?}) failed with: {reason}\n{ops:#?}\n\n\
                 minimized with literal paths ({buffers:?}), failing with: {msg}\n{}",
                listing(&min)
            );
        }
        Err(e) => {
            QUIET.store(false, Ordering::Relaxed);
            panic!("{e}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic regressions
// ---------------------------------------------------------------------------------------------

/// A truncate through the handle of a file just created, then a write: the truncate's flush
/// (nothing buffered) must still make the write start from the truncated size, not from what
/// the create left known.
#[test]
fn ftruncate_of_a_new_file_then_write_keeps_the_size() {
    run_ops(&[
        Op::Create {
            path: p("a"),
            perm: Perm(0o644),
        },
        Op::HTruncate {
            h: 0,
            size: 155_009,
        },
        Op::HWrite {
            h: 0,
            off: 0,
            len: 1,
            seed: 0,
        },
    ]);
}

#[test]
fn write_truncate_down_extend_reads_zeros() {
    run_ops(&[
        Op::Create {
            path: p("a"),
            perm: Perm(0o644),
        },
        Op::HWrite {
            h: 0,
            off: 0,
            len: 100_000,
            seed: 1,
        },
        Op::HFlush { h: 0 },
        Op::Truncate {
            path: p("a"),
            size: 10_000,
        },
        Op::Read {
            path: p("a"),
            off: 0,
            len: 100_000,
        },
        Op::Truncate {
            path: p("a"),
            size: 150_000,
        },
        Op::HRead {
            h: 0,
            off: 9_000,
            len: 100_000,
        },
        // Data written after the shrink must not resurrect the old bytes around it.
        Op::HWrite {
            h: 0,
            off: 120_000,
            len: 10,
            seed: 2,
        },
        Op::HRead {
            h: 0,
            off: 0,
            len: 150_000,
        },
        Op::HTruncate { h: 0, size: 5_000 },
        Op::HTruncate { h: 0, size: 70_000 },
        Op::Remount,
        Op::Read {
            path: p("a"),
            off: 0,
            len: 131_072,
        },
    ]);
}

#[test]
fn overwrite_inside_earlier_slice_across_block_boundary() {
    run_ops(&[
        Op::Create {
            path: p("b"),
            perm: Perm(0o644),
        },
        Op::HWrite {
            h: 0,
            off: 0,
            len: 200 * 1024,
            seed: 3,
        },
        Op::HFlush { h: 0 },
        Op::Open {
            path: p("b"),
            trunc: false,
        },
        // Unflushed overwrite through a second handle, straddling the 64 KiB block boundary.
        Op::HWrite {
            h: 1,
            off: BLOCK - 500,
            len: 1000,
            seed: 4,
        },
        Op::HRead {
            h: 0,
            off: BLOCK - 5000,
            len: 10_000,
        },
        Op::HFlush { h: 1 },
        Op::HRead {
            h: 0,
            off: 0,
            len: 128 * 1024,
        },
        // Overwrite again inside the overwritten range, then across the next boundary.
        Op::HWrite {
            h: 0,
            off: BLOCK - 100,
            len: 2 * BLOCK as u32 + 200,
            seed: 5,
        },
        Op::HRead {
            h: 1,
            off: BLOCK - 1000,
            len: 100_000,
        },
        Op::Remount,
        Op::Read {
            path: p("b"),
            off: BLOCK - 1000,
            len: 128 * 1024,
        },
    ]);
}

#[test]
fn small_writes_around_the_chunk_boundary() {
    run_ops(&[
        Op::Create {
            path: p("c"),
            perm: Perm(0o600),
        },
        Op::HWrite {
            h: 0,
            off: CHUNK - 5,
            len: 10,
            seed: 6,
        },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::HFlush { h: 0 },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::Truncate {
            path: p("c"),
            size: CHUNK - 2,
        },
        Op::HWrite {
            h: 0,
            off: CHUNK + 3,
            len: 4,
            seed: 7,
        },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::Remount,
        Op::Read {
            path: p("c"),
            off: CHUNK - 10,
            len: 20,
        },
    ]);
}

#[test]
fn namespace_edge_cases() {
    run_ops(&[
        Op::Mkdir {
            path: p("a"),
            perm: Perm(0o755),
        },
        Op::Mkdir {
            path: p("a/b"),
            perm: Perm(0o755),
        },
        Op::Create {
            path: p("c"),
            perm: Perm(0o644),
        },
        Op::Link {
            from: p("c"),
            to: p("a/c"),
        },
        // Rename onto another link of the same file: no-op.
        Op::Rename {
            from: p("c"),
            to: p("a/c"),
            flag: RFlag::None,
        },
        Op::Link {
            from: p("a"),
            to: p("d"),
        },
        Op::Rename {
            from: p("c"),
            to: p("a"),
            flag: RFlag::None,
        },
        Op::Rename {
            from: p("a"),
            to: p("c"),
            flag: RFlag::None,
        },
        Op::Rename {
            from: p("a/b"),
            to: p("c"),
            flag: RFlag::Exchange,
        },
        Op::Rename {
            from: p("a/b"),
            to: p("a"),
            flag: RFlag::NoReplace,
        },
        Op::Rmdir { path: p("c") },
        Op::Unlink { path: p("a") },
        Op::Rmdir { path: p("a") },
        Op::Create {
            path: p("L*256"),
            perm: Perm(0o644),
        },
        Op::Create {
            path: p("m*255"),
            perm: Perm(0o644),
        },
        Op::Remount,
    ]);
}
