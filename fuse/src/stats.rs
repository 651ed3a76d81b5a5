//! Counts and latencies of FUSE requests per operation, aggregated per thread and handed to
//! the `metrics` facade by a collector (the metrics exporter's tick and every scrape).
//!
//! The hot path (one FUSE request) touches only its own thread's shard: two clock reads, a
//! bucket search over 22 bounds and four plain loads and stores of counters no other thread
//! writes (single-writer atomics: no lock, no read-modify-write instruction, no shared cache
//! line). The collector reads every shard, turns what changed since its last look into
//! `counter!` increments and `histogram!` samples, and remembers what it has seen; shards are
//! never reset, so a collection racing with a request loses nothing (it is seen next time).
//!
//! Histogram samples are handed over per bucket: `n` requests that fell into the bucket
//! `(lo, hi]` with total duration `s` become `n` samples of value `s / n` (clamped into the
//! bucket), so an exporter configured with the same bounds ([`LATENCY_BOUNDS_SECS`]) shows
//! exact bucket counts, exact counts and an exact sum.
//!
//! Nothing is timed unless [`enable`] was called (`spoolfs mount --metrics`): a disabled
//! request pays one relaxed load of a flag.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets; one more bucket holds the rest.
pub const LATENCY_BOUNDS_SECS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
const BUCKETS: usize = BOUNDS_NS.len() + 1;

macro_rules! ops {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// A FUSE operation, as the `op` label of the metrics names it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op {
            $($variant),*
        }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name),*
                }
            }
        }
    };
}

ops! {
    Lookup => "lookup",
    Forget => "forget",
    Getattr => "getattr",
    Setattr => "setattr",
    Readlink => "readlink",
    Mknod => "mknod",
    Mkdir => "mkdir",
    Unlink => "unlink",
    Rmdir => "rmdir",
    Symlink => "symlink",
    Rename => "rename",
    Link => "link",
    Open => "open",
    Read => "read",
    Write => "write",
    Flush => "flush",
    Release => "release",
    Fsync => "fsync",
    Opendir => "opendir",
    Readdir => "readdir",
    Readdirplus => "readdirplus",
    Releasedir => "releasedir",
    Fsyncdir => "fsyncdir",
    Statfs => "statfs",
    Setxattr => "setxattr",
    Getxattr => "getxattr",
    Listxattr => "listxattr",
    Removexattr => "removexattr",
    Create => "create",
    Fallocate => "fallocate",
    Getlk => "getlk",
    Setlk => "setlk",
}

const OPS: usize = Op::ALL.len();

static ENABLED: AtomicBool = AtomicBool::new(false);
static SHARDS: Mutex<Vec<Arc<Shard>>> = Mutex::new(Vec::new());

/// Turns timing on (before the FUSE session starts).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// One operation's counters in one thread's shard.
#[derive(Default)]
struct OpCell {
    count: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    sums_ns: [AtomicU64; BUCKETS],
}

/// What the collector last handed over from one [`OpCell`].
#[derive(Clone, Copy, Default)]
struct Seen {
    count: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
    sums_ns: [u64; BUCKETS],
}

struct Shard {
    ops: [OpCell; OPS],
    /// Only the collector touches it.
    seen: Mutex<[Seen; OPS]>,
}

thread_local! {
    static SHARD: Arc<Shard> = {
        let shard = Arc::new(Shard {
            ops: std::array::from_fn(|_| OpCell::default()),
            seen: Mutex::new([Seen::default(); OPS]),
        });
        SHARDS.lock().unwrap_or_else(|e| e.into_inner()).push(shard.clone());
        shard
    };
}

/// Adds `n` to a counter only this thread writes: a plain load and store.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
}

fn bucket_of(ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&b| b < ns)
}

/// The start of a timed request: `None` (nothing to do) when metrics are off.
#[inline]
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Counts one finished request of `op` in this thread's shard.
#[inline]
pub fn finish(op: Op, started: Option<Instant>, ok: bool) {
    let Some(t0) = started else { return };
    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    record(op, ns, ok);
}

fn record(op: Op, ns: u64, ok: bool) {
    let b = bucket_of(ns);
    SHARD.with(|s| {
        let c = &s.ops[op as usize];
        bump(&c.sums_ns[b], ns);
        bump(&c.buckets[b], 1);
        if !ok {
            bump(&c.errors, 1);
        }
        bump(&c.count, 1);
    });
}

/// Hands what every thread counted since the last call to the `metrics` facade:
/// `spoolfs_fuse_ops_total{op}`, `spoolfs_fuse_op_errors_total{op}` and
/// `spoolfs_fuse_op_duration_seconds{op}`. Calls are serialised.
pub fn collect() {
    if !enabled() {
        return;
    }
    let shards = SHARDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for shard in shards {
        let mut seen = shard.seen.lock().unwrap_or_else(|e| e.into_inner());
        for &op in Op::ALL {
            let cell = &shard.ops[op as usize];
            let last = &mut seen[op as usize];
            let name = op.name();
            let count = cell.count.load(Ordering::Acquire);
            if count != last.count {
                metrics::counter!("spoolfs_fuse_ops_total", "op" => name)
                    .increment(count.wrapping_sub(last.count));
                last.count = count;
            }
            let errors = cell.errors.load(Ordering::Acquire);
            if errors != last.errors {
                metrics::counter!("spoolfs_fuse_op_errors_total", "op" => name)
                    .increment(errors.wrapping_sub(last.errors));
                last.errors = errors;
            }
            for b in 0..BUCKETS {
                let n = cell.buckets[b].load(Ordering::Acquire);
                if n == last.buckets[b] {
                    continue;
                }
                let sum = cell.sums_ns[b].load(Ordering::Acquire);
                let dn = n.wrapping_sub(last.buckets[b]);
                let ds = sum.wrapping_sub(last.sums_ns[b]);
                last.buckets[b] = n;
                last.sums_ns[b] = sum;
                metrics::histogram!("spoolfs_fuse_op_duration_seconds", "op" => name)
                    .record_many(bucket_value(b, ds, dn), dn as usize);
            }
        }
    }
}

/// Requests of `op` counted so far by every thread (nothing unless [`enable`] was called):
/// what a test asserts request counts with, without a metrics exporter.
pub fn total(op: Op) -> u64 {
    let shards = SHARDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    shards
        .iter()
        .map(|s| s.ops[op as usize].count.load(Ordering::Acquire))
        .sum()
}

/// The value that stands for `n` samples of total `sum_ns` in bucket `b`: their mean, kept
/// inside the bucket (a request counted between the collector's two loads can skew it).
fn bucket_value(b: usize, sum_ns: u64, n: u64) -> f64 {
    let mean = sum_ns as f64 / n as f64 / 1e9;
    let lo = if b == 0 {
        0.0
    } else {
        LATENCY_BOUNDS_SECS[b - 1]
    };
    let hi = LATENCY_BOUNDS_SECS.get(b).copied().unwrap_or(f64::INFINITY);
    mean.clamp(lo.next_up(), hi.min(f64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree() {
        for (ns, s) in BOUNDS_NS.iter().zip(LATENCY_BOUNDS_SECS) {
            assert_eq!(*ns as f64 / 1e9, s);
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(20_000_000_000), BUCKETS - 1);
        let names: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), OPS);
    }

    #[test]
    fn bucket_values_stay_in_their_bucket() {
        // Mean inside the bucket: kept.
        assert_eq!(bucket_value(1, 3_000, 2), 1.5e-6);
        // Skewed means are clamped into (lo, hi].
        assert_eq!(bucket_value(1, 10_000, 1), 2.5e-6);
        assert!(bucket_value(1, 10, 1) > 1e-6);
        assert!(bucket_value(BUCKETS - 1, 0, 1) > 10.0);
    }

    #[test]
    fn shards_count_per_thread_and_collect_deltas() {
        enable();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    for i in 0..100u64 {
                        record(Op::Mknod, i * 1_000, i % 10 != 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = |f: fn(&OpCell) -> &AtomicU64| -> u64 {
            SHARDS
                .lock()
                .unwrap()
                .iter()
                .map(|s| f(&s.ops[Op::Mknod as usize]).load(Ordering::Relaxed))
                .sum()
        };
        assert_eq!(total(|c| &c.count), 300);
        assert_eq!(total(|c| &c.errors), 30);
        // No recorder in this test: collecting only advances what was seen.
        collect();
        for s in SHARDS.lock().unwrap().iter() {
            let seen = s.seen.lock().unwrap()[Op::Mknod as usize];
            assert_eq!(
                seen.count,
                s.ops[Op::Mknod as usize].count.load(Ordering::Relaxed)
            );
        }
    }
}
