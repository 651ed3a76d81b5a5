//! Opening an object store from a URL and calling it from synchronous code.

use crate::{Result, StorageError};
use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the volume's objects live and how to reach them. Credentials are never part of it:
/// they come from the environment when the store is opened.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    /// `file:///dir`, `s3://bucket/prefix` or `memory://`.
    pub url: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Force path-style requests (`endpoint/bucket/key`); wins over `s3_virtual_hosted`.
    pub s3_path_style: bool,
    /// Force virtual-hosted requests (`bucket.endpoint/key`). With neither, see
    /// [`s3_addressing`].
    pub s3_virtual_hosted: bool,
    /// Sign no requests (public buckets).
    pub s3_anonymous: bool,
    /// How long the start-up reachability check waits.
    pub check_timeout: Option<Duration>,
}

/// Most keys one bulk delete request may carry (S3's `DeleteObjects` limit).
pub const DELETE_BATCH_KEYS: usize = 1000;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the volume prefix.
    pub key: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// A blocking handle on one object store, rooted at the volume's prefix.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
    runtime: tokio::runtime::Runtime,
    check_timeout: Duration,
    /// What the start-up check needs to explain an S3 refusal; `None` for other stores.
    s3: Option<S3Facts>,
    /// A `file://` store's directory: a PUT returns only once the object file, its name and
    /// any directory made for it are synced, as an object store's PUT is durable when it
    /// returns (the staged copy of the data is freed after it).
    local_root: Option<std::path::PathBuf>,
    /// Objects synced that way (tests).
    local_syncs: std::sync::atomic::AtomicU64,
}

/// How S3 requests name the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Addressing {
    /// `endpoint/bucket/key`: what self-hosted servers (MinIO, Ceph RGW, SeaweedFS, Garage)
    /// expect, and the only form an IP address or `localhost` can carry.
    PathStyle,
    /// `bucket.endpoint/key`: what AWS expects.
    VirtualHosted,
}

/// The addressing `config` asks for, and why: forced by a flag, else path style for an endpoint
/// whose host is an IP address or `localhost` (a bucket cannot go into such a host name, and
/// every common S3 client decides the same way), else virtual-hosted.
pub fn s3_addressing(config: &StorageConfig) -> (S3Addressing, &'static str) {
    if config.s3_path_style {
        return (S3Addressing::PathStyle, "--s3-path-style");
    }
    if config.s3_virtual_hosted {
        return (S3Addressing::VirtualHosted, "--s3-virtual-hosted");
    }
    let Some(endpoint) = &config.s3_endpoint else {
        return (S3Addressing::VirtualHosted, "AWS endpoint");
    };
    match url::Url::parse(endpoint).ok().and_then(|u| {
        u.host().map(|h| match h {
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => "the endpoint is an IP address",
            url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => {
                "the endpoint is localhost"
            }
            url::Host::Domain(_) => "",
        })
    }) {
        Some(why) if !why.is_empty() => (S3Addressing::PathStyle, why),
        _ => (S3Addressing::VirtualHosted, "the endpoint is a host name"),
    }
}

/// The endpoint of virtual-hosted requests to `bucket` at `endpoint`: the bucket goes in front
/// of the host name, unless the endpoint already starts with it.
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> std::result::Result<String, String> {
    let mut url = url::Url::parse(endpoint).map_err(|e| format!("invalid endpoint: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| "the endpoint has no host".to_string())?
        .to_string();
    if !host.starts_with(&format!("{bucket}.")) {
        url.set_host(Some(&format!("{bucket}.{host}")))
            .map_err(|e| format!("cannot put bucket {bucket:?} into host {host:?}: {e}"))?;
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// What explains an S3 error at start-up.
#[derive(Debug, Clone)]
struct S3Facts {
    bucket: String,
    endpoint: Option<String>,
    region: String,
    addressing: S3Addressing,
}

/// The text of `e` and of every error below it, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text between `<tag>` and `</tag>` in an S3 error body.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(&text[start..start + len])
}

/// One line naming the likely cause of an S3 refusal and the flag (or setting) that fixes it;
/// `None` when the error says nothing recognisable.
fn explain_s3_error(facts: &S3Facts, detail: &str) -> Option<String> {
    let code = xml_field(detail, "Code").unwrap_or("");
    let has = |s: &str| code == s || detail.contains(s);
    let lower = detail.to_ascii_lowercase();
    let bucket = &facts.bucket;
    let at = facts
        .endpoint
        .as_deref()
        .map(|e| format!(" at {e}"))
        .unwrap_or_default();
    if has("AuthorizationHeaderMalformed")
        || has("PermanentRedirect")
        || has("IncorrectEndpoint")
        || has("IllegalLocationConstraintException")
        || (lower.contains("region") && lower.contains("expecting"))
    {
        let expected = xml_field(detail, "Region").map(str::to_string).or_else(|| {
            let at = lower.find("expecting '")? + "expecting '".len();
            let len = detail[at..].find('\'')?;
            Some(detail[at..at + len].to_string())
        });
        return Some(match expected {
            Some(r) => format!(
                "bucket {bucket:?} is in region {r:?}, not {:?}: pass --s3-region {r}",
                facts.region
            ),
            None => format!(
                "the server refused region {:?} for bucket {bucket:?}: pass the bucket's \
                 region with --s3-region",
                facts.region
            ),
        });
    }
    if has("NoSuchBucket") {
        return Some(format!(
            "bucket {bucket:?} does not exist{at}: create it first (spoolfs does not create \
             buckets), or name an existing bucket in --storage s3://BUCKET/PREFIX"
        ));
    }
    if has("InvalidBucketName") {
        return Some(match facts.addressing {
            S3Addressing::VirtualHosted => format!(
                "the server refused bucket name {bucket:?} in the host name (virtual-hosted \
                 requests); most self-hosted servers need path-style requests: pass \
                 --s3-path-style"
            ),
            S3Addressing::PathStyle => format!(
                "the server refused bucket name {bucket:?}: S3 bucket names are 3 to 63 \
                 lowercase letters, digits, dots and hyphens; fix the bucket in --storage \
                 s3://BUCKET/PREFIX"
            ),
        });
    }
    if has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("InvalidToken")
        || has("ExpiredToken")
        || has("AccessDenied")
        || has("403 Forbidden")
    {
        let why = [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "ExpiredToken",
            "AccessDenied",
        ]
        .into_iter()
        .find(|c| has(c))
        .unwrap_or("403 Forbidden");
        return Some(format!(
            "the server refused the credentials for bucket {bucket:?} ({why}): check \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or pass \
             --s3-anonymous for a public bucket"
        ));
    }
    if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("ssl")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
    {
        return Some(format!(
            "TLS with the S3 endpoint{at} failed: if the server speaks plain HTTP, give \
             --s3-endpoint an http:// URL; if its certificate is self-signed, make this machine \
             trust its CA"
        ));
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        return Some(match facts.addressing {
            S3Addressing::VirtualHosted if facts.endpoint.is_some() => format!(
                "the host name of virtual-hosted requests (bucket {bucket:?} in front of the \
                 endpoint's host) does not resolve: pass --s3-path-style, or fix \
                 --s3-endpoint"
            ),
            _ => "the S3 endpoint's host name does not resolve: fix --s3-endpoint".to_string(),
        });
    }
    None
}

/// What to add to "no answer" from the store: with virtual-hosted requests to an endpoint of
/// one's own, the request went to a host name with the bucket in front of the endpoint's,
/// which may resolve slowly or to nothing that answers.
fn no_answer_hint(facts: Option<&S3Facts>) -> &'static str {
    match facts {
        Some(f) if f.addressing == S3Addressing::VirtualHosted && f.endpoint.is_some() => {
            " (virtual-hosted requests go to the bucket's own host name; most self-hosted \
             servers need --s3-path-style)"
        }
        _ => "",
    }
}

fn map_err(key: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StorageError::NotFound {
            key: key.to_string(),
        },
        E::AlreadyExists { .. } | E::Precondition { .. } => StorageError::AlreadyExists {
            key: key.to_string(),
        },
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => {
            StorageError::Denied {
                detail: source.to_string(),
            }
        }
        other => {
            let detail = other.to_string();
            // The status with its reason: a bare "403" also matches a port such as 40383 in
            // the request's URL, which made an unreachable endpoint look like bad credentials.
            if detail.contains("403 Forbidden")
                || detail.contains("AccessDenied")
                || detail.contains("SignatureDoesNotMatch")
                || detail.contains("InvalidAccessKeyId")
            {
                StorageError::Denied { detail }
            } else {
                StorageError::Unavailable { detail }
            }
        }
    }
}

/// The `kind` label of `spoolfs_object_errors_total`.
pub fn error_kind(e: &StorageError) -> &'static str {
    match e {
        StorageError::NotFound { .. } => "not_found",
        StorageError::AlreadyExists { .. } => "already_exists",
        StorageError::Checksum { .. } => "checksum",
        StorageError::Denied { .. } => "denied",
        StorageError::Unavailable { .. } => "unavailable",
        StorageError::BadUrl { .. }
        | StorageError::Config(_)
        | StorageError::Misconfigured { .. } => "config",
    }
}

/// Records one object-store request through the `metrics` facade (a no-op unless a recorder
/// is installed). Requests take milliseconds, so they are recorded directly, not aggregated.
/// `bytes`: sent (PUT) or received (GET); `None` for requests that move no object data.
fn observe<T>(op: &'static str, start: Instant, result: &Result<T>, bytes: Option<u64>) {
    metrics::counter!("spoolfs_object_requests_total", "op" => op).increment(1);
    metrics::histogram!("spoolfs_object_request_duration_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            if let Some(n) = bytes {
                metrics::counter!("spoolfs_object_bytes_total", "op" => op).increment(n);
                metrics::histogram!("spoolfs_object_request_size_bytes", "op" => op)
                    .record(n as f64);
            }
        }
        Err(e) => {
            metrics::counter!("spoolfs_object_errors_total", "op" => op, "kind" => error_kind(e))
                .increment(1);
        }
    }
}

impl ObjectStorage {
    pub fn open(config: &StorageConfig) -> Result<Self> {
        let bad = |reason: String| StorageError::BadUrl {
            url: config.url.clone(),
            reason,
        };
        let url = url::Url::parse(&config.url).map_err(|e| bad(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("spoolfs-io")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Config(format!("cannot start I/O runtime: {e}")))?;
        let mut s3_facts = None;
        let mut local_root = None;
        let (store, prefix, describe): (Arc<dyn ObjectStore>, String, String) = match url.scheme() {
            "file" => {
                let dir = url.path();
                if dir.is_empty() || dir == "/" {
                    return Err(bad("expected file:///absolute/directory".into()));
                }
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(format!("cannot create directory {dir}: {e}")))?;
                let fs = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(format!("cannot open directory {dir}: {e}")))?;
                local_root = Some(std::path::PathBuf::from(dir));
                (Arc::new(fs), String::new(), format!("file://{dir}"))
            }
            "memory" => (
                Arc::new(InMemory::new()),
                String::new(),
                "memory://".to_string(),
            ),
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("expected s3://bucket[/prefix]".into()))?;
                let prefix = url.path().trim_matches('/').to_string();
                let retry = RetryConfig {
                    max_retries: 10,
                    retry_timeout: Duration::from_secs(120),
                    ..Default::default()
                };
                let region = config.s3_region.as_deref().unwrap_or("us-east-1");
                let (addressing, why) = s3_addressing(config);
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_virtual_hosted_style_request(addressing == S3Addressing::VirtualHosted)
                    .with_retry(retry)
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(60)),
                    );
                if let Some(endpoint) = &config.s3_endpoint {
                    // object_store takes a virtual-hosted endpoint as is: the bucket must
                    // already be in it.
                    let endpoint = match addressing {
                        S3Addressing::PathStyle => endpoint.clone(),
                        S3Addressing::VirtualHosted => virtual_hosted_endpoint(endpoint, bucket)
                            .map_err(|e| StorageError::Config(format!("--s3-endpoint: {e}")))?,
                    };
                    builder = builder
                        .with_endpoint(&endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if config.s3_anonymous {
                    builder = builder.with_skip_signature(true);
                } else {
                    // Credentials only from the environment, read here and never stored. Without
                    // them we refuse rather than let the client probe instance metadata.
                    let key = std::env::var("AWS_ACCESS_KEY_ID").ok();
                    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
                    match (key, secret) {
                        (Some(k), Some(s)) => {
                            builder = builder.with_access_key_id(k).with_secret_access_key(s);
                            if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
                                builder = builder.with_token(token);
                            }
                        }
                        _ => {
                            return Err(StorageError::Config(
                                "no S3 credentials: set AWS_ACCESS_KEY_ID and \
                                 AWS_SECRET_ACCESS_KEY (or pass --s3-anonymous)"
                                    .into(),
                            ));
                        }
                    }
                }
                let s3 = builder
                    .build()
                    .map_err(|e| StorageError::Config(e.to_string()))?;
                let style = match addressing {
                    S3Addressing::PathStyle => "path-style",
                    S3Addressing::VirtualHosted => "virtual-hosted",
                };
                let describe = match &config.s3_endpoint {
                    Some(ep) => format!("s3://{bucket}/{prefix} at {ep} ({style}: {why})"),
                    None => format!("s3://{bucket}/{prefix} ({style}: {why})"),
                };
                s3_facts = Some(S3Facts {
                    bucket: bucket.to_string(),
                    endpoint: config.s3_endpoint.clone(),
                    region: region.to_string(),
                    addressing,
                });
                (Arc::new(s3), prefix, describe)
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}; supported: file:///dir, s3://bucket/prefix, memory://"
                )));
            }
        };
        Ok(ObjectStorage {
            store,
            prefix,
            describe,
            runtime,
            check_timeout: config.check_timeout.unwrap_or(Duration::from_secs(15)),
            s3: s3_facts,
            local_root,
            local_syncs: Default::default(),
        })
    }

    /// Wraps an existing store (tests use this to inject faults or count requests).
    pub fn from_store(store: Arc<dyn ObjectStore>, describe: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| StorageError::Config(format!("cannot start I/O runtime: {e}")))?;
        Ok(ObjectStorage {
            store,
            prefix: String::new(),
            describe: describe.to_string(),
            runtime,
            check_timeout: Duration::from_secs(15),
            s3: None,
            local_root: None,
            local_syncs: Default::default(),
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    pub fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        let len = data.len() as u64;
        let start = Instant::now();
        let r = self
            .runtime
            .block_on(self.store.put(&path, data.into()))
            .map(|_| ())
            .map_err(|e| map_err(key, e))
            .and_then(|_| self.sync_local(key));
        observe("put", start, &r, Some(len));
        r
    }

    /// Objects a `file://` store has synced since it was opened (0 for other stores).
    pub fn local_syncs(&self) -> u64 {
        self.local_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a `file://` store: syncs the object's file, then each directory from its own up
    /// to the store's (the rename that put it in place, and any directory made for it).
    fn sync_local(&self, key: &str) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key);
        let failed = |what: &std::path::Path, e: std::io::Error| StorageError::Unavailable {
            detail: format!("cannot sync {}: {e}", what.display()),
        };
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| failed(&file, e))?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed(d, e))?;
            if d == root.as_path() {
                break;
            }
            dir = d.parent();
        }
        self.local_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Puts many objects with at most `concurrency` requests in flight; the first error wins.
    pub fn put_many(&self, objects: Vec<(String, Bytes)>, concurrency: usize) -> Result<()> {
        let store = &self.store;
        let this = self;
        self.runtime
            .block_on(async move {
                let mut puts =
                    futures::stream::iter(objects.into_iter().map(|(key, data)| async move {
                        let path = this.path(&key);
                        let len = data.len() as u64;
                        let start = Instant::now();
                        let r = store
                            .put(&path, data.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| map_err(&key, e));
                        observe("put", start, &r, Some(len));
                        r.map(|_| key)
                    }))
                    .buffer_unordered(concurrency.max(1));
                let mut done = Vec::new();
                while let Some(result) = puts.next().await {
                    done.push(result?);
                }
                Ok(done)
            })
            .and_then(|done| done.iter().try_for_each(|key| self.sync_local(key)))
    }

    /// Puts only if no object has the key; `AlreadyExists` otherwise.
    pub fn put_if_absent(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let len = data.len() as u64;
        let start = Instant::now();
        let r = self
            .runtime
            .block_on(self.store.put_opts(&path, data.into(), opts))
            .map(|_| ())
            .map_err(|e| map_err(key, e))
            .and_then(|_| self.sync_local(key));
        observe("put", start, &r, Some(len));
        r
    }

    pub fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let start = Instant::now();
        let r = self
            .runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| map_err(key, e));
        observe("get", start, &r, r.as_ref().ok().map(|b| b.len() as u64));
        r
    }

    /// Bytes `[start, end)` of an object (a ranged GET).
    pub fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let path = self.path(key);
        let began = Instant::now();
        let r = self
            .runtime
            .block_on(self.store.get_range(&path, start..end))
            .map_err(|e| map_err(key, e));
        observe("get", began, &r, r.as_ref().ok().map(|b| b.len() as u64));
        r
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let start = Instant::now();
        let r = match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        };
        observe("delete", start, &r, None);
        r
    }

    /// Deletes many objects, [`DELETE_BATCH_KEYS`] keys a batch, with at most `concurrency`
    /// batches in flight. A batch is one request where the store has a bulk delete (S3's
    /// multi-object delete); elsewhere the store deletes the batch's objects itself (a local
    /// directory: a few files at a time). Missing objects count as deleted. On an error some
    /// of the other objects may be deleted already; deleting them again is harmless.
    /// `give_up` is asked every 100 ms: once it says so, the requests in flight are dropped
    /// and the call fails (an unmount does not wait for deletes).
    pub fn delete_many(
        &self,
        keys: &[String],
        concurrency: usize,
        give_up: &dyn Fn() -> bool,
    ) -> Result<()> {
        let this = self;
        let work = async move {
            let mut batches =
                futures::stream::iter(keys.chunks(DELETE_BATCH_KEYS).map(|batch| async move {
                    let paths: Vec<object_store::Result<ObjPath>> =
                        batch.iter().map(|k| Ok(this.path(k))).collect();
                    let start = Instant::now();
                    let mut results = this
                        .store
                        .delete_stream(futures::stream::iter(paths).boxed());
                    let mut r = Ok(());
                    while let Some(one) = results.next().await {
                        match one {
                            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => {
                                let what = format!("{} (in a batch of {})", batch[0], batch.len());
                                r = Err(map_err(&what, e));
                                break;
                            }
                        }
                    }
                    // One request per batch on S3, the unit its costs and limits count.
                    observe("delete", start, &r, None);
                    r
                }))
                .buffer_unordered(concurrency.max(1));
            while let Some(result) = batches.next().await {
                result?;
            }
            Ok(())
        };
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if give_up() {
                    return;
                }
            }
        };
        self.runtime.block_on(async {
            futures::pin_mut!(work);
            futures::pin_mut!(watch);
            match futures::future::select(work, watch).await {
                futures::future::Either::Left((result, _)) => result,
                futures::future::Either::Right(((), _)) => Err(StorageError::Unavailable {
                    detail: format!("deleting {} object(s): given up", keys.len()),
                }),
            }
        })
    }

    /// Keys (relative to the volume prefix) that start with `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let start = Instant::now();
        let r = self
            .list_detailed(prefix)
            .map(|objects| objects.into_iter().map(|o| o.key).collect());
        observe("list", start, &r, None);
        r
    }

    /// Objects (relative keys, sizes, modification times) whose keys start with `prefix`:
    /// one listing, for `fsck` and the garbage collector (whose grace period needs the age).
    pub fn list_detailed(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.path(prefix);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.runtime.block_on(async {
            let mut out = Vec::new();
            let mut stream = self.store.list(Some(&root));
            while let Some(item) = stream.next().await {
                let meta = item.map_err(|e| map_err(prefix, e))?;
                let key = meta.location.to_string();
                let millis = meta.last_modified.timestamp_millis();
                let modified = if millis >= 0 {
                    std::time::UNIX_EPOCH + Duration::from_millis(millis as u64)
                } else {
                    std::time::UNIX_EPOCH
                };
                out.push(ObjectInfo {
                    key: key.strip_prefix(&strip).unwrap_or(&key).to_string(),
                    size: meta.size,
                    modified,
                });
            }
            Ok(out)
        })
    }

    /// Several byte ranges `[start, end)` of one object; nearby ranges are fetched with one
    /// ranged GET (the store client coalesces them).
    pub fn get_ranges(&self, key: &str, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>> {
        let path = self.path(key);
        let ranges: Vec<std::ops::Range<u64>> = ranges.iter().map(|(a, b)| *a..*b).collect();
        self.runtime
            .block_on(self.store.get_ranges(&path, &ranges))
            .map_err(|e| map_err(key, e))
    }

    /// Proves the store answers and accepts our credentials: lists the volume prefix, bounded
    /// by the check timeout, so a wrong endpoint fails in seconds with a clear message.
    pub fn check(&self) -> Result<()> {
        let root = self.path("");
        let fut = async {
            let mut stream = self.store.list(Some(&root));
            match stream.next().await {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e),
            }
        };
        match self
            .runtime
            .block_on(async { tokio::time::timeout(self.check_timeout, fut).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if let Some(facts) = &self.s3
                    && let Some(why) = explain_s3_error(facts, &error_chain(&e))
                {
                    return Err(StorageError::Misconfigured {
                        detail: format!("{}: {why}", self.describe),
                    });
                }
                let mapped = map_err("", e);
                Err(match mapped {
                    StorageError::NotFound { .. } => StorageError::Unavailable {
                        detail: format!("{}: bucket not found", self.describe),
                    },
                    StorageError::Unavailable { detail } if detail.contains("NoSuchBucket") => {
                        StorageError::Unavailable {
                            detail: format!("{}: the bucket does not exist", self.describe),
                        }
                    }
                    StorageError::Unavailable { detail } => StorageError::Unavailable {
                        detail: format!("{}: {detail}", self.describe),
                    },
                    other => other,
                })
            }
            Err(_) => Err(StorageError::Unavailable {
                detail: format!(
                    "{}: no answer within {:?}{}",
                    self.describe,
                    self.check_timeout,
                    no_answer_hint(self.s3.as_ref())
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh local directory, kept as long as the returned guard lives.
    fn local_store() -> (tempfile::TempDir, ObjectStorage) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket", dir.path().display());
        let s = ObjectStorage::open(&StorageConfig {
            url,
            ..Default::default()
        })
        .unwrap();
        (dir, s)
    }

    /// A `file://` PUT returns once the object is synced (file, its name, its new
    /// directories): the staged copy of the data is freed after it, so a power cut must not
    /// take the object back.
    #[test]
    fn local_store_puts_are_synced() {
        let (_dir, s) = local_store();
        s.put("a/b/one", Bytes::from_static(b"1")).unwrap();
        assert_eq!(s.local_syncs(), 1);
        s.put_many(
            (0..5)
                .map(|i| {
                    (
                        format!("packs/0/0/{i}.pack"),
                        Bytes::from(vec![i as u8; 100]),
                    )
                })
                .collect(),
            3,
        )
        .unwrap();
        assert_eq!(s.local_syncs(), 6);
        s.put_if_absent("c", Bytes::from_static(b"2")).unwrap();
        assert_eq!(s.local_syncs(), 7);
        assert!(s.put_if_absent("c", Bytes::from_static(b"3")).is_err());
        assert_eq!(s.local_syncs(), 7, "a refused PUT syncs nothing");
    }

    #[test]
    fn local_store_roundtrip_and_conditional_put() {
        let (_dir, s) = local_store();
        s.check().unwrap();
        s.put("a/b", Bytes::from_static(b"hello")).unwrap();
        assert_eq!(&s.get("a/b").unwrap()[..], b"hello");
        assert!(matches!(
            s.put_if_absent("a/b", Bytes::from_static(b"x")),
            Err(StorageError::AlreadyExists { .. })
        ));
        assert_eq!(s.list("a/").unwrap(), vec!["a/b".to_string()]);
        s.delete("a/b").unwrap();
        s.delete("a/b").unwrap();
        assert!(matches!(s.get("a/b"), Err(StorageError::NotFound { .. })));
    }

    #[test]
    fn delete_many_deletes_every_object_and_ignores_missing_ones() {
        let (_dir, s) = local_store();
        // More than two batches, and keys that were never written.
        let keys: Vec<String> = (0..DELETE_BATCH_KEYS * 2 + 7)
            .map(|i| format!("d/{}/{i}", i % 13))
            .collect();
        for k in keys.iter().step_by(2) {
            s.put(k, Bytes::from_static(b"x")).unwrap();
        }
        s.put("keep", Bytes::from_static(b"y")).unwrap();
        s.delete_many(&keys, 4, &|| false).unwrap();
        assert_eq!(s.list("").unwrap(), vec!["keep".to_string()]);
        s.delete_many(&[], 4, &|| false).unwrap();
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["ftp://x", "s3://", "file:///", "nonsense"] {
            let r = ObjectStorage::open(&StorageConfig {
                url: url.into(),
                ..Default::default()
            });
            assert!(r.is_err(), "{url} accepted");
        }
    }

    fn s3(endpoint: Option<&str>, path: bool, virt: bool) -> StorageConfig {
        StorageConfig {
            url: "s3://bkt/p".into(),
            s3_endpoint: endpoint.map(str::to_string),
            s3_path_style: path,
            s3_virtual_hosted: virt,
            ..Default::default()
        }
    }

    #[test]
    fn addressing_follows_the_endpoint_unless_forced() {
        use S3Addressing::*;
        let style = |c: &StorageConfig| s3_addressing(c).0;
        // (endpoint, --s3-path-style, --s3-virtual-hosted) and the style chosen.
        let cases = [
            (Some("http://127.0.0.1:9000"), false, false, PathStyle),
            (Some("http://[::1]:9000"), false, false, PathStyle),
            (Some("http://localhost:9000"), false, false, PathStyle),
            (Some("https://s3.example.com"), false, false, VirtualHosted),
            (None, false, false, VirtualHosted),
            (Some("https://s3.example.com"), true, false, PathStyle),
            (Some("http://127.0.0.1:9000"), false, true, VirtualHosted),
            (None, true, true, PathStyle),
        ];
        for (endpoint, path_style, virtual_hosted, want) in cases {
            assert_eq!(
                style(&s3(endpoint, path_style, virtual_hosted)),
                want,
                "{endpoint:?} path-style {path_style} virtual-hosted {virtual_hosted}"
            );
        }
        assert_eq!(
            virtual_hosted_endpoint("https://s3.example.com:8443/", "bkt").unwrap(),
            "https://bkt.s3.example.com:8443"
        );
        assert_eq!(
            virtual_hosted_endpoint("https://bkt.s3.example.com", "bkt").unwrap(),
            "https://bkt.s3.example.com"
        );
    }

    #[test]
    fn s3_refusals_name_cause_and_flag() {
        let facts = S3Facts {
            bucket: "bkt".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            addressing: S3Addressing::VirtualHosted,
        };
        let why = |detail: &str| explain_s3_error(&facts, detail).unwrap_or_default();
        assert!(why("<Error><Code>NoSuchBucket</Code></Error>").contains("does not exist"));
        assert!(why("<Code>InvalidBucketName</Code>").contains("--s3-path-style"));
        assert!(why("<Code>SignatureDoesNotMatch</Code>").contains("AWS_SECRET_ACCESS_KEY"));
        let region = why(
            "<Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is \
             wrong; expecting 'eu-west-1'</Message>",
        );
        assert!(region.contains("--s3-region eu-west-1"), "{region}");
        assert!(why("invalid peer certificate: UnknownIssuer").contains("TLS"));
        assert!(explain_s3_error(&facts, "connection refused").is_none());
        for line in [why("<Code>NoSuchBucket</Code>"), region] {
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn no_answer_to_virtual_hosted_requests_names_path_style() {
        let mut facts = S3Facts {
            bucket: "bkt".into(),
            endpoint: Some("http://localhost:9000".into()),
            region: "us-east-1".into(),
            addressing: S3Addressing::VirtualHosted,
        };
        assert!(no_answer_hint(Some(&facts)).contains("--s3-path-style"));
        // Path-style requests, or AWS's own endpoints: nothing to suggest.
        facts.addressing = S3Addressing::PathStyle;
        assert_eq!(no_answer_hint(Some(&facts)), "");
        facts.addressing = S3Addressing::VirtualHosted;
        facts.endpoint = None;
        assert_eq!(no_answer_hint(Some(&facts)), "");
        assert_eq!(no_answer_hint(None), "");
    }

    #[test]
    fn a_port_with_403_in_it_is_not_a_denial() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        };
        let unreachable = generic(
            "Error performing GET http://127.0.0.1:40383/bucket?list-type=2 in 1.9s, after 10 \
             retries - HTTP error: error sending request",
        );
        assert_eq!(map_err("", unreachable).errno(), libc::EIO);
        let forbidden = generic(
            "Error performing GET http://127.0.0.1:9000/bucket in 10ms - Server returned \
             non-2xx status code: 403 Forbidden: ",
        );
        assert_eq!(map_err("", forbidden).errno(), libc::EACCES);
    }

    #[test]
    fn unreachable_endpoint_fails_fast() {
        // A port nobody listens on: the check must fail within its timeout, not hang.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let s = ObjectStorage::open(&StorageConfig {
            url: "s3://bucket".into(),
            s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
            s3_path_style: true,
            s3_anonymous: true,
            check_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        })
        .unwrap();
        let start = std::time::Instant::now();
        let err = s.check().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(err.errno(), libc::EIO, "{err}");
    }
}
