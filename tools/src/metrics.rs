//! `spoolfs mount --metrics ADDR`: the `metrics` recorder (Prometheus exposition format) and a
//! small HTTP endpoint on a plain std `TcpListener` thread, so no second async runtime is
//! started. Every metric is listed in `docs/METRICS.md`.
//!
//! Three sources feed it:
//! - the object store (`spoolfs-objects`) records each request through the `metrics` macros;
//! - FUSE requests are counted per thread (`spoolfs_fuse::stats`) and handed over by
//!   [`collect`];
//! - the engine's own state (staged bytes, queues, cache, counters it already keeps) is
//!   sampled by [`collect`] from `Engine::metrics`, never pushed on each change.
//!
//! [`collect`] runs once a second on the `spoolfs-metrics` thread and before every scrape.

use anyhow::{Context, Result, anyhow};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use spoolfs_engine::Engine;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Weak;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Byte bounds of the object size histogram: 4 KiB to 64 MiB, by fours.
const SIZE_BOUNDS: [f64; 8] = [
    4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// `--metrics` values: `HOST:PORT` (an IP address or a name that resolves).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = |why: String| {
        format!("invalid metrics address {s:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:9567)")
    };
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| bad("the name resolves to no address".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The bound listener and the installed recorder, before the engine exists.
pub struct MetricsEndpoint {
    listener: TcpListener,
    handle: PrometheusHandle,
    addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `addr` and installs the global recorder. Called before mounting, so a bad or busy
    /// address fails the mount.
    pub fn bind(addr: SocketAddr) -> Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen for metrics on {addr} (--metrics)"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        let bounds = spoolfs_fuse::stats::LATENCY_BOUNDS_SECS;
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("spoolfs_fuse_op_duration_seconds".into()),
                &bounds,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("spoolfs_object_request_duration_seconds".into()),
                    &bounds,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("spoolfs_object_request_size_bytes".into()),
                    &SIZE_BOUNDS,
                )
            })
            .map_err(|e| anyhow!("cannot configure the metrics recorder: {e}"))?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))?;
        describe();
        spoolfs_fuse::stats::enable();
        Ok(MetricsEndpoint {
            listener,
            handle,
            addr,
        })
    }

    /// Starts the scrape thread and the once-a-second collector. `store` is the metadata store
    /// whose round trips and retries are reported (a shared store's; zero for redb).
    pub fn start(
        self,
        engine: &Arc<Engine>,
        store: Arc<dyn spoolfs_metadata::KvStore>,
    ) -> Result<()> {
        let MetricsEndpoint {
            listener,
            handle,
            addr,
        } = self;
        let state = Arc::new(Collector {
            engine: Arc::downgrade(engine),
            store,
            handle,
            lock: Mutex::new(()),
        });
        collect(&state);
        let ticker = state.clone();
        std::thread::Builder::new()
            .name("spoolfs-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    collect(&ticker);
                    ticker.handle.run_upkeep();
                }
            })
            .context("cannot start the metrics thread")?;
        std::thread::Builder::new()
            .name("spoolfs-metrics-http".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => serve(&state, stream),
                        Err(e) => {
                            warn!("metrics endpoint: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .context("cannot start the metrics endpoint thread")?;
        info!("metrics at http://{addr}/metrics");
        Ok(())
    }
}

struct Collector {
    engine: Weak<Engine>,
    store: Arc<dyn spoolfs_metadata::KvStore>,
    handle: PrometheusHandle,
    /// One collection at a time (the tick and a scrape may meet).
    lock: Mutex<()>,
}

/// Answers one HTTP request: `GET /metrics` (or `/`) with the exposition text, else 404.
fn serve(state: &Collector, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            collect(state);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                state.handle.render(),
            )
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = &stream;
    let _ = out.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = out.write_all(body.as_bytes());
    }
    let _ = out.flush();
}

/// Hands the FUSE threads' counts to the recorder and samples the engine's state.
fn collect(state: &Collector) {
    let _one = state.lock.lock().unwrap_or_else(|e| e.into_inner());
    spoolfs_fuse::stats::collect();
    let Some(engine) = state.engine.upgrade() else {
        return;
    };
    let m = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.metrics())) {
        Ok(m) => m,
        Err(p) => {
            warn!(
                "metrics: the engine failed to report: {}",
                spoolfs_fuse::panic_message(p)
            );
            return;
        }
    };
    let peer = engine.peer_stats();
    drop(engine);
    // Without a staging log every staging figure is zero.
    let staging = m.staging.clone().unwrap_or_default();
    gauge!(
        "spoolfs_mount_info",
        "mode" => if m.writeback { "writeback" } else { "standard" },
        "io_engine" => if staging.io_engine.is_empty() { "none" } else { staging.io_engine },
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
    gauge!("spoolfs_staged_bytes").set(m.staged_bytes as f64);
    gauge!("spoolfs_staged_slices").set(m.staged_slices as f64);
    gauge!("spoolfs_metadata_unapplied_changes").set(m.metadata_unapplied_changes as f64);
    gauge!("spoolfs_oldest_staged_age_seconds").set(m.oldest_staged_age_secs);
    gauge!("spoolfs_dirty_bytes").set(m.dirty_bytes as f64);
    gauge!("spoolfs_open_files").set(m.open_files as f64);
    gauge!("spoolfs_upload_queue_slices").set(m.upload_queue_slices as f64);
    gauge!("spoolfs_uploading_slices").set(m.uploading_slices as f64);
    gauge!("spoolfs_upload_rate_bytes_per_second").set(m.upload_rate_bytes_per_sec);
    counter!("spoolfs_uploaded_bytes_total").absolute(m.uploaded_bytes);
    counter!("spoolfs_uploaded_slices_total").absolute(m.uploaded_slices);
    counter!("spoolfs_upload_retries_total").absolute(m.upload_errors);
    counter!("spoolfs_backpressure_waits_total").absolute(m.backpressure_waits);
    counter!("spoolfs_backpressure_timeouts_total").absolute(m.backpressure_timeouts);
    counter!("spoolfs_staging_bypassed_slices_total").absolute(m.staging_bypassed_slices);
    gauge!("spoolfs_staging_used_bytes").set(staging.used_bytes as f64);
    gauge!("spoolfs_staging_capacity_bytes").set(staging.capacity_bytes as f64);
    gauge!("spoolfs_staging_segments").set(staging.segments as f64);
    counter!("spoolfs_staging_appends_total").absolute(staging.appends);
    counter!("spoolfs_staging_device_flushes_total").absolute(staging.device_flushes);
    counter!("spoolfs_namespace_log_waits_total").absolute(m.namespace_log_waits);
    counter!("spoolfs_namespace_log_deferred_total").absolute(m.namespace_log_deferred);
    gauge!("spoolfs_engine_threads").set(m.engine_threads as f64);
    for (i, depth) in m.engine_queue_depths.iter().enumerate() {
        gauge!("spoolfs_engine_queue_depth", "thread" => i.to_string()).set(*depth as f64);
    }
    gauge!("spoolfs_cache_bytes").set(m.cache_bytes as f64);
    gauge!("spoolfs_cache_blocks").set(m.cache_blocks as f64);
    gauge!("spoolfs_cache_capacity_bytes").set(m.cache_capacity_bytes as f64);
    counter!("spoolfs_cache_hits_total").absolute(m.cache_hits);
    counter!("spoolfs_cache_misses_total").absolute(m.cache_misses);
    let p = &m.pack_fetch;
    counter!("spoolfs_pack_fetches_total").absolute(p.started);
    counter!("spoolfs_pack_fetch_bytes_total").absolute(p.bytes);
    counter!("spoolfs_pack_fetch_hits_total").absolute(p.hits);
    counter!("spoolfs_pack_fetch_errors_total").absolute(p.errors);
    counter!("spoolfs_pack_fetch_dropped_total").absolute(p.dropped);
    let store = state.store.stats();
    counter!("spoolfs_metadata_round_trips_total").absolute(store.round_trips);
    counter!("spoolfs_metadata_transactions_total").absolute(store.transactions);
    counter!("spoolfs_metadata_retries_total").absolute(store.retries);
    counter!("spoolfs_metadata_optimistic_misses_total").absolute(store.optimistic_misses);
    counter!("spoolfs_metadata_waited_commits_total").absolute(store.waited_commits);
    counter!("spoolfs_metadata_flushes_total").absolute(store.flushes);
    counter!("spoolfs_peer_reads_total").absolute(peer.reads);
    counter!("spoolfs_peer_read_bytes_total").absolute(peer.bytes);
    counter!("spoolfs_peer_read_failures_total").absolute(peer.failures);
    counter!("spoolfs_peer_read_latency_microseconds_total").absolute(peer.latency_us);
    counter!("spoolfs_peer_served_reads_total").absolute(peer.served);
}

/// Every metric's help text (what `# HELP` shows); `docs/METRICS.md` has the same list.
fn describe() {
    use metrics::Unit;
    describe_gauge!(
        "spoolfs_mount_info",
        "Always 1; labels: mode (writeback, standard), io_engine (uring, psync, none), version"
    );
    describe_gauge!(
        "spoolfs_staged_bytes",
        Unit::Bytes,
        "Acknowledged bytes in the staging log, not yet in the object store"
    );
    describe_gauge!("spoolfs_staged_slices", "Staged slices not yet uploaded");
    describe_gauge!(
        "spoolfs_metadata_unapplied_changes",
        "Metadata changes kept in memory (crash-safe in the namespace log) until the next checkpoint"
    );
    describe_gauge!(
        "spoolfs_oldest_staged_age_seconds",
        Unit::Seconds,
        "Age of the oldest staged byte (0 when nothing is staged)"
    );
    describe_gauge!(
        "spoolfs_dirty_bytes",
        Unit::Bytes,
        "Bytes written by applications and buffered in memory (not yet staged or uploaded)"
    );
    describe_gauge!("spoolfs_open_files", "Open file handles");
    describe_gauge!(
        "spoolfs_upload_queue_slices",
        "Staged slices waiting for an uploader"
    );
    describe_gauge!(
        "spoolfs_uploading_slices",
        "Staged slices an uploader is uploading now"
    );
    describe_gauge!(
        "spoolfs_upload_rate_bytes_per_second",
        "Staged bytes uploaded per second over about the last 10 seconds"
    );
    describe_counter!(
        "spoolfs_uploaded_bytes_total",
        Unit::Bytes,
        "Staged bytes uploaded to the object store"
    );
    describe_counter!(
        "spoolfs_uploaded_slices_total",
        "Staged slices uploaded to the object store"
    );
    describe_counter!(
        "spoolfs_upload_retries_total",
        "Upload batches that failed and were queued again"
    );
    describe_counter!(
        "spoolfs_backpressure_waits_total",
        "Writers that found --max-staging or --max-staging-age reached and waited"
    );
    describe_counter!(
        "spoolfs_backpressure_timeouts_total",
        "Waits for staging room that ran out of --max-staging-wait"
    );
    describe_counter!(
        "spoolfs_staging_bypassed_slices_total",
        "Slices sent straight to the object store (staging log full, failing, or no room in time)"
    );
    describe_gauge!(
        "spoolfs_staging_used_bytes",
        Unit::Bytes,
        "Staging log space held by live records (headers and padding included)"
    );
    describe_gauge!(
        "spoolfs_staging_capacity_bytes",
        Unit::Bytes,
        "Staging log size (segments times segment size)"
    );
    describe_gauge!("spoolfs_staging_segments", "Staging segments in use");
    describe_counter!("spoolfs_staging_appends_total", "Staging log appends");
    describe_counter!(
        "spoolfs_staging_device_flushes_total",
        "Device cache flushes of the staging log (fdatasync or RWF_DSYNC writes)"
    );
    describe_counter!(
        "spoolfs_namespace_log_waits_total",
        "Calls that waited for the namespace log's records to reach the device"
    );
    describe_counter!(
        "spoolfs_namespace_log_deferred_total",
        "Creates that returned without waiting for their namespace log record (the close waits)"
    );
    describe_gauge!("spoolfs_engine_threads", "Staging engine threads");
    describe_gauge!(
        "spoolfs_engine_queue_depth",
        "Requests queued for a staging engine thread; label: thread"
    );
    describe_gauge!(
        "spoolfs_cache_bytes",
        Unit::Bytes,
        "Bytes of decoded blocks in the in-memory block cache"
    );
    describe_gauge!(
        "spoolfs_cache_blocks",
        "Blocks in the in-memory block cache"
    );
    describe_gauge!(
        "spoolfs_cache_capacity_bytes",
        Unit::Bytes,
        "Capacity of the in-memory block cache"
    );
    describe_counter!(
        "spoolfs_pack_fetches_total",
        "Pack objects fetched whole into the local data cache (a cold read, a listing)"
    );
    describe_counter!(
        "spoolfs_pack_fetch_bytes_total",
        "Bytes of pack objects fetched whole"
    );
    describe_counter!(
        "spoolfs_pack_fetch_hits_total",
        "Reads served from a pack this mount fetched whole"
    );
    describe_counter!(
        "spoolfs_pack_fetch_errors_total",
        "Whole-pack fetches that failed (the readers fetch their slices themselves)"
    );
    describe_counter!(
        "spoolfs_pack_fetch_dropped_total",
        "Packs or directories not fetched ahead because the queue was full"
    );
    describe_counter!(
        "spoolfs_cache_hits_total",
        "Block cache lookups that found their block"
    );
    describe_counter!(
        "spoolfs_cache_misses_total",
        "Block cache lookups that went to the object store"
    );
    describe_counter!(
        "spoolfs_peer_reads_total",
        "Reads of slices staged on another mount, answered by that mount"
    );
    describe_counter!(
        "spoolfs_peer_read_bytes_total",
        Unit::Bytes,
        "Bytes read from slices staged on another mount"
    );
    describe_counter!(
        "spoolfs_peer_read_failures_total",
        "Reads of slices staged on another mount that failed with EIO (owner unreachable past --peer-timeout, refused, or bad data)"
    );
    describe_counter!(
        "spoolfs_peer_read_latency_microseconds_total",
        "Sum of the latencies of successful peer requests (divide by spoolfs_peer_reads_total)"
    );
    describe_counter!(
        "spoolfs_peer_served_reads_total",
        "Reads of this mount's staged slices served to other mounts"
    );
    describe_counter!(
        "spoolfs_metadata_round_trips_total",
        "Round trips to a networked metadata store (PostgreSQL); 0 for redb"
    );
    describe_counter!(
        "spoolfs_metadata_transactions_total",
        "Transactions run on a networked metadata store, retries included"
    );
    describe_counter!(
        "spoolfs_metadata_retries_total",
        "Metadata transactions run again after a serialization failure or a deadlock"
    );
    describe_counter!(
        "spoolfs_metadata_optimistic_misses_total",
        "Metadata transactions run again because a row read from this mount's memory had changed in the database"
    );
    describe_counter!(
        "spoolfs_metadata_waited_commits_total",
        "Commits on a networked metadata store that waited for the database's durable flush (fsync, uploads, id claims, locks, sessions)"
    );
    describe_counter!(
        "spoolfs_metadata_flushes_total",
        "Explicit waits for a networked metadata store's durable flush (fsync of a clean file, sync, the periodic checkpoint, before deleting objects)"
    );
    describe_counter!(
        "spoolfs_object_requests_total",
        "Object store requests; label: op (put, get, delete, list)"
    );
    describe_counter!(
        "spoolfs_object_bytes_total",
        Unit::Bytes,
        "Object data sent (put) or received (get); label: op"
    );
    describe_counter!(
        "spoolfs_object_errors_total",
        "Failed object store requests (after the client's own retries); labels: op, kind"
    );
    describe_histogram!(
        "spoolfs_object_request_duration_seconds",
        Unit::Seconds,
        "Object store request latency; label: op"
    );
    describe_histogram!(
        "spoolfs_object_request_size_bytes",
        Unit::Bytes,
        "Object data per successful put or get request; label: op"
    );
    describe_counter!("spoolfs_fuse_ops_total", "FUSE requests handled; label: op");
    describe_counter!(
        "spoolfs_fuse_op_errors_total",
        "FUSE requests answered with an error (ENOENT of a lookup included); label: op"
    );
    describe_histogram!(
        "spoolfs_fuse_op_duration_seconds",
        Unit::Seconds,
        "Time from a FUSE request reaching spoolfs to its answer; label: op"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:9567").unwrap(),
            "127.0.0.1:9567".parse().unwrap()
        );
        assert!(parse_addr("[::1]:9567").is_ok());
        assert!(parse_addr("localhost:9567").is_ok());
        for bad in ["", "127.0.0.1", "127.0.0.1:99999", "nonsense", ":9567x"] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains("invalid metrics address"), "{bad}: {e}");
        }
    }
}
