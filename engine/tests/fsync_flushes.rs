//! `fsync`, `fdatasync`, directory `fsync` and standard mode's `fsync` reach stable storage.
//! A power cut cannot be staged here, so each test counts what makes data power-safe: device
//! flushes of the staging log (writeback), durable commits of the metadata store (directory
//! fsync, standard mode). Each fails if its call stops flushing.

use spoolfs_engine::staging::StagingDurability;
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use spoolfs_metadata::{Durability, KvStore, MetaError, UpdateFn, ViewFn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;
use common::Volume as Fixture;
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;

/// A metadata store that counts its durable commits (`persist`, durable updates).
struct Counting {
    inner: Arc<dyn KvStore>,
    durable_commits: Arc<AtomicU64>,
}

impl KvStore for Counting {
    fn view(&self, f: ViewFn<'_>) -> Result<(), MetaError> {
        self.inner.view(f)
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<(), MetaError> {
        self.inner.update(durability, f)?;
        if durability == Durability::Durable {
            self.durable_commits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), MetaError> {
        self.inner.persist()?;
        self.durable_commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("counting({})", self.inner.describe())
    }
}

/// An engine on `f` whose metadata store counts durable commits; writeback with `staging`.
/// Nothing runs in the background that flushes on its own: no uploaders (an upload frees
/// records, and recycling a segment flushes), no periodic checkpoint.
fn counted_engine(f: &Fixture, writeback: bool) -> (Arc<Engine>, Arc<AtomicU64>) {
    let durable_commits = Arc::new(AtomicU64::new(0));
    let meta: Arc<dyn KvStore> = Arc::new(Counting {
        inner: f.meta(),
        durable_commits: durable_commits.clone(),
    });
    let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
    let storage = Arc::new(spoolfs_objects::ObjectStorage::open(&f.storage_config()).unwrap());
    let mut config = EngineConfig {
        meta_flush_interval: Duration::from_secs(3600),
        compaction: None,
        // Nothing uploads: shutdown does not wait for staged data to drain.
        drain_on_shutdown: None,
        ..Default::default()
    };
    let meta = if writeback {
        let settings = StagingSettings {
            durability: StagingDurability::Flush,
            upload_threads: 0,
            ..StagingSettings::for_tests(f.dir.path().join("cache"))
        };
        let (meta, staging) = writeback::open_staging(meta, &record, &settings).unwrap();
        config.staging = Some(staging);
        meta
    } else {
        meta
    };
    let e = Engine::start(meta, storage, record, config).unwrap();
    (e, durable_commits)
}

/// A counted engine (see [`counted_engine`]) with file `f` in the root directory holding
/// 10,000 bytes from `seed`, written and still open: the engine, its durable commits, the
/// file and its handle.
fn engine_with_open_file(
    f: &Fixture,
    writeback: bool,
    seed: u64,
) -> (Arc<Engine>, Arc<AtomicU64>, Ino, u64) {
    let (e, durable_commits) = counted_engine(f, writeback);
    let (a, fh) = e.create(&ME, ROOT_INO, b"f", 0o644, libc::O_RDWR).unwrap();
    e.write(&ME, a.ino, fh, 0, &random_bytes(seed, 10_000))
        .unwrap();
    (e, durable_commits, a.ino, fh)
}

/// Device flushes of the staging log so far.
fn flushes(e: &Engine) -> u64 {
    e.metrics().staging.expect("a staging log").device_flushes
}

/// Writeback: a descriptor whose data an earlier `close` already wrote to the staging log
/// (O_DIRECT, not flushed) has nothing pending when `fsync` comes; the record is still in the
/// device cache, and `fsync` must flush it. The same for `fdatasync`.
#[test]
fn fsync_after_close_flushes_the_staging_device() {
    for datasync in [false, true] {
        let f = Fixture::new();
        let (e, _, ino, fh) = engine_with_open_file(&f, true, 1);
        let before_close = flushes(&e);
        e.flush(ino, fh).unwrap();
        let closed = flushes(&e);
        assert_eq!(
            closed, before_close,
            "close flushed the device: this test would show nothing"
        );
        e.fsync(ino, fh, datasync).unwrap();
        let synced = flushes(&e);
        assert!(
            synced > closed,
            "{} after close flushed nothing ({closed} -> {synced} device flushes)",
            if datasync { "fdatasync" } else { "fsync" }
        );
        // Once flushed, another fsync has nothing to flush.
        e.fsync(ino, fh, datasync).unwrap();
        assert_eq!(flushes(&e), synced, "a second fsync flushed again");
        e.release(ino, fh).unwrap();
        e.shutdown().unwrap();
    }
}

/// Writeback: `fsync` with writes still buffered stages them and flushes the device.
#[test]
fn fsync_with_pending_writes_flushes_the_staging_device() {
    for datasync in [false, true] {
        let f = Fixture::new();
        let (e, _, ino, fh) = engine_with_open_file(&f, true, 2);
        let before = flushes(&e);
        e.fsync(ino, fh, datasync).unwrap();
        assert!(
            flushes(&e) > before,
            "fsync (datasync {datasync}) flushed nothing"
        );
        e.release(ino, fh).unwrap();
        e.shutdown().unwrap();
    }
}

/// Directory `fsync` makes the directory's entries durable in the metadata store, in
/// writeback and in standard mode.
#[test]
fn fsyncdir_commits_the_metadata_durably() {
    for writeback in [true, false] {
        let f = Fixture::new();
        let (e, durable_commits) = counted_engine(&f, writeback);
        let d = e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
        let (a, fh) = e.create(&ME, d.ino, b"f", 0o644, libc::O_RDWR).unwrap();
        e.release(a.ino, fh).unwrap();
        e.rename(&ME, d.ino, b"f", d.ino, b"g", RenameFlags::default())
            .unwrap();
        let before = durable_commits.load(Ordering::SeqCst);
        e.fsyncdir(d.ino).unwrap();
        assert!(
            durable_commits.load(Ordering::SeqCst) > before,
            "fsyncdir made nothing durable (writeback {writeback})"
        );
        e.shutdown().unwrap();
    }
}

/// Standard mode: `fsync` and `fdatasync` commit the metadata durably, whether the data
/// went out with an earlier `close` or is still buffered.
#[test]
fn standard_mode_fsync_commits_the_metadata_durably() {
    for datasync in [false, true] {
        let f = Fixture::new();
        let (e, durable_commits, ino, fh) = engine_with_open_file(&f, false, 3);
        let before = durable_commits.load(Ordering::SeqCst);
        e.fsync(ino, fh, datasync).unwrap();
        let synced = durable_commits.load(Ordering::SeqCst);
        assert!(
            synced > before,
            "fsync of buffered writes made nothing durable"
        );
        e.write(&ME, ino, fh, 0, b"again").unwrap();
        e.flush(ino, fh).unwrap();
        // A change that close does not make durable on its own: a timestamp.
        e.setattr(
            &ME,
            ino,
            &SetAttr {
                mtime: Some(TimeSet::At(
                    std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
                )),
                ..Default::default()
            },
        )
        .unwrap();
        let before = durable_commits.load(Ordering::SeqCst);
        e.fsync(ino, fh, datasync).unwrap();
        assert!(
            durable_commits.load(Ordering::SeqCst) > before,
            "fsync after close made nothing durable (datasync {datasync})"
        );
        e.release(ino, fh).unwrap();
        e.shutdown().unwrap();
    }
}
