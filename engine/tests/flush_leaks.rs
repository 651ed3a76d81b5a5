//! A flush that fails gives back the staging space it took. When the staging log refuses one
//! of a flush's slices, that slice is PUT directly; if that PUT fails, the flush fails, and the
//! records it had already staged (which nothing points at) must be freed: otherwise they stay
//! allocated until the next mount.

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use spoolfs_engine::staging::{FaultConfig, StagingDurability};
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use spoolfs_objects::ObjectStorage;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;
use common::Volume as Fixture;
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;

/// An object store whose PUTs fail while `failing` is set.
#[derive(Debug)]
struct FailingPuts {
    inner: Arc<dyn ObjectStore>,
    failing: Arc<AtomicBool>,
}

impl std::fmt::Display for FailingPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failing-puts({})", self.inner)
    }
}

impl FailingPuts {
    fn check(&self) -> object_store::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "failing-puts",
                source: "injected PUT failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailingPuts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Records of the staging log not yet freed.
fn live_records(e: &Engine) -> u64 {
    e.metrics().staging.expect("a staging log").live_records
}

#[test]
fn a_flush_whose_direct_upload_fails_frees_what_it_staged() {
    let f = Fixture::new();
    let failing = Arc::new(AtomicBool::new(false));
    let local = object_store::local::LocalFileSystem::new_with_prefix(f.objects()).unwrap();
    let store = FailingPuts {
        inner: Arc::new(local),
        failing: failing.clone(),
    };
    let storage = Arc::new(ObjectStorage::from_store(Arc::new(store), "failing-puts").unwrap());
    let faults = FaultConfig::new();
    let settings = StagingSettings {
        durability: StagingDurability::Flush,
        // Nothing uploads: every live record is one a flush left.
        upload_threads: 0,
        faults: Some(faults.clone()),
        ..StagingSettings::for_tests(f.dir.path().join("cache"))
    };
    let meta = f.meta();
    let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
    let (meta, staging) = writeback::open_staging(meta, &record, &settings).unwrap();
    let config = EngineConfig {
        staging: Some(staging),
        meta_flush_interval: Duration::from_secs(3600),
        compaction: None,
        drain_on_shutdown: None,
        ..Default::default()
    };
    let e = Engine::start(meta, storage, record, config).unwrap();

    let (a, fh) = e.create(&ME, ROOT_INO, b"f", 0o644, libc::O_RDWR).unwrap();
    // Three runs, apart from each other: the first two are staged before the commit, the
    // last rides with it.
    let runs = [(0u64, 1u64), (200_000, 2), (400_000, 3)];
    for (off, seed) in runs {
        e.write(&ME, a.ino, fh, off, &random_bytes(seed, 10_000))
            .unwrap();
    }
    assert_eq!(live_records(&e), 0);
    // The second run's staging write fails (it goes to the object store), and so does the PUT.
    faults.fail_write(2);
    failing.store(true, Ordering::SeqCst);
    assert!(e.flush(a.ino, fh).is_err(), "the flush reported no error");
    assert_eq!(
        live_records(&e),
        0,
        "the failed flush left its staged records allocated"
    );
    // With the store back, the same flush succeeds and the data is all there.
    failing.store(false, Ordering::SeqCst);
    e.flush(a.ino, fh).unwrap();
    for (off, seed) in runs {
        assert_eq!(
            e.read(a.ino, fh, off, 10_000).unwrap(),
            random_bytes(seed, 10_000)
        );
    }
    e.release(a.ino, fh).unwrap();
    drop(e);
}
