//! An object store for tests that watches, fails or holds back some requests: an
//! [`Intercept`] says what it does with PUTs, GETs and deletes, [`Intercepted`] passes everything else on unchanged to
//! the volume's local-directory store.
#![allow(dead_code)] // each test crate uses its own subset

use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::Arc;

/// What a test store does with the PUTs, GETs and deletes it passes on to `inner`; by
/// default, nothing.
#[async_trait::async_trait]
pub trait Intercept: Send + Sync + std::fmt::Debug + 'static {
    /// The store's name in its description and in errors.
    const NAME: &'static str;

    /// Runs before every PUT (whole or multipart) of `location`; an error fails the PUT.
    fn check_put(&self, _location: &Path) -> Result<()> {
        Ok(())
    }

    async fn get_opts(
        &self,
        inner: &dyn ObjectStore,
        location: &Path,
        options: GetOptions,
    ) -> Result<GetResult> {
        inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        inner: &dyn ObjectStore,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        inner.delete_stream(locations)
    }
}

/// `inner` with the PUTs, GETs and deletes going through `hooks`.
#[derive(Debug)]
pub struct Intercepted<I> {
    pub inner: Arc<dyn ObjectStore>,
    pub hooks: I,
}

impl<I: Intercept> std::fmt::Display for Intercepted<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", I::NAME, self.inner)
    }
}

#[async_trait::async_trait]
impl<I: Intercept> ObjectStore for Intercepted<I> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.hooks.check_put(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.hooks.check_put(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.hooks
            .get_opts(self.inner.as_ref(), location, options)
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.hooks.delete_stream(self.inner.as_ref(), locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

impl super::Volume {
    /// The volume's object store, its PUTs, GETs and deletes going through `hooks`.
    pub fn intercepted_storage<I: Intercept>(
        &self,
        hooks: I,
    ) -> Arc<spoolfs_objects::ObjectStorage> {
        std::fs::create_dir_all(self.objects()).unwrap();
        let inner = object_store::local::LocalFileSystem::new_with_prefix(self.objects()).unwrap();
        let store = Intercepted {
            inner: Arc::new(inner),
            hooks,
        };
        Arc::new(spoolfs_objects::ObjectStorage::from_store(Arc::new(store), I::NAME).unwrap())
    }
}
