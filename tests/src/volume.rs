//! Test volumes (file or S3 store) in private directories, and the backend test matrix.

use super::*;

/// Where a test volume keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `file:///…/objects`
    File,
    /// `s3://spoolfs-test/vol` on a private s3s-fs.
    S3,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::File, Backend::S3];
}

thread_local! {
    /// Extra `spoolfs mount` arguments of the running test (its mode).
    pub(crate) static MODE_ARGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs a backend test with every mount in standard mode (`--writeback=false`: close and fsync
/// wait for the object store) instead of the default writeback mode.
pub fn run_backend_test_standard(name: &str, backend: Backend, test: fn(Backend)) {
    MODE_ARGS.with(|m| *m.borrow_mut() = vec!["--writeback=false".to_string()]);
    eprintln!("=== {name} [{backend:?}, standard mode]");
    let start = Instant::now();
    test(backend);
    eprintln!(
        "=== {name} [{backend:?}, standard mode] done in {:?}",
        start.elapsed()
    );
}

/// Runs `test` for one backend, with a banner on stderr (so logs say which backend failed).
pub fn run_backend_test(name: &str, backend: Backend, test: fn(Backend)) {
    eprintln!("=== {name} [{backend:?}]");
    let start = Instant::now();
    test(backend);
    eprintln!("=== {name} [{backend:?}] done in {:?}", start.elapsed());
}

/// Declares `#[test] fn file()`, `fn file_standard_mode()` and `fn s3()` in a module named after each given
/// function `fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn file() {
                    $crate::run_backend_test(
                        stringify!($name),
                        $crate::Backend::File,
                        super::$name,
                    );
                }
                #[test]
                fn file_standard_mode() {
                    $crate::run_backend_test_standard(
                        stringify!($name),
                        $crate::Backend::File,
                        super::$name,
                    );
                }
                #[test]
                fn s3() {
                    $crate::run_backend_test(
                        stringify!($name),
                        $crate::Backend::S3,
                        super::$name,
                    );
                }
            }
        )*
    };
}

/// A volume in a private temporary directory: metadata in `meta.redb`, data in `objects/`
/// (file store) or in the bucket of a private s3s-fs (S3 store).
pub struct Volume {
    pub backend: Backend,
    pub name: String,
    pub meta_url: String,
    pub storage_url: String,
    /// Extra arguments for `spoolfs format` (S3 endpoint and style).
    pub storage_args: Vec<String>,
    s3: Option<S3Server>,
    pub(crate) dir: TempDir,
    pub(crate) mounts: AtomicU64,
    /// `--s3-endpoint` for mounts, overriding the endpoint recorded by `spoolfs format`.
    mount_s3_endpoint: std::sync::Mutex<Option<String>>,
}

/// The S3 key prefix test volumes use inside [`TEST_BUCKET`].
pub const S3_PREFIX: &str = "vol";

impl Volume {
    /// A formatted volume; panics if `spoolfs format` fails.
    pub fn new(backend: Backend) -> Volume {
        let v = Volume::unformatted(backend);
        v.format().assert_success();
        v
    }

    /// A volume directory (and S3 server) but no `spoolfs format` yet.
    pub fn unformatted(backend: Backend) -> Volume {
        let dir = temp_dir(match backend {
            Backend::File => "vol-file",
            Backend::S3 => "vol-s3",
        });
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let name = format!("test{n}");
        let meta_url = format!("redb://{}", dir.path().join("meta.redb").display());
        fs::create_dir_all(dir.path().join("xdg")).expect("xdg dir");
        let (storage_url, storage_args, s3) = match backend {
            Backend::File => {
                let objects = dir.path().join("objects");
                fs::create_dir_all(&objects).expect("objects dir");
                (format!("file://{}", objects.display()), Vec::new(), None)
            }
            Backend::S3 => {
                let s3 = S3Server::start();
                (
                    format!("s3://{TEST_BUCKET}/{S3_PREFIX}"),
                    s3_args(&s3.endpoint()),
                    Some(s3),
                )
            }
        };
        Volume {
            backend,
            name,
            meta_url,
            storage_url,
            storage_args,
            s3,
            dir,
            mounts: AtomicU64::new(0),
            mount_s3_endpoint: std::sync::Mutex::new(None),
        }
    }

    /// Makes every later mount of this volume talk to `endpoint` (e.g. an S3 proxy's) instead of
    /// the endpoint recorded at format time (`None`: the recorded one again). Formatting is not
    /// affected.
    pub fn set_mount_s3_endpoint(&self, endpoint: Option<&str>) {
        *self
            .mount_s3_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = endpoint.map(str::to_string);
    }

    /// A volume formatted on a fresh database of the PostgreSQL server `pg`, its data in a
    /// file store.
    pub fn on_postgres(pg: &spoolfs_testkit::pg::PgServer) -> Volume {
        let mut vol = Volume::unformatted(Backend::File);
        vol.meta_url = pg.url(&pg.new_database());
        vol.format().assert_success();
        vol
    }

    /// A new S3 volume whose mounts reach its server through a proxy (delays, faults, request
    /// counts): see [`Volume::proxy_mounts`].
    pub fn new_behind_proxy() -> (Volume, spoolfs_s3proxy::Proxy) {
        let vol = Volume::new(Backend::S3);
        let proxy = vol.proxy_mounts();
        (vol, proxy)
    }

    /// Starts a proxy in front of this S3 volume's server and makes every later mount talk
    /// to the server through it.
    pub fn proxy_mounts(&self) -> spoolfs_s3proxy::Proxy {
        let proxy = self.s3().expect("an S3 volume").start_proxy();
        self.set_mount_s3_endpoint(Some(&proxy.endpoint()));
        proxy
    }

    /// The endpoint set with [`Volume::set_mount_s3_endpoint`].
    pub fn mount_s3_endpoint(&self) -> Option<String> {
        self.mount_s3_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The volume's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn s3(&self) -> Option<&S3Server> {
        self.s3.as_ref()
    }

    pub fn s3_mut(&mut self) -> Option<&mut S3Server> {
        self.s3.as_mut()
    }

    /// The default cache directory of this volume's mounts.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A `spoolfs` command with a clean environment whose default volume lives in this
    /// volume's directory (`XDG_DATA_HOME`).
    pub fn spoolfs(&self) -> Command {
        let mut cmd = command(spoolfs_bin());
        cmd.env("XDG_DATA_HOME", self.dir.path().join("xdg"));
        cmd
    }

    /// Runs `spoolfs ARGS` (60 s timeout).
    pub fn spoolfs_run<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.spoolfs().args(args), Duration::from_secs(60))
    }

    /// `spoolfs status MOUNTPOINT --json`: the status of the mount (its first entry).
    pub fn status_json(&self, mountpoint: &Path) -> serde_json::Value {
        let out = self.spoolfs_run([
            OsStr::new("status"),
            mountpoint.as_os_str(),
            OsStr::new("--json"),
        ]);
        out.assert_success();
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out:?}"));
        if v.is_array() { v[0].clone() } else { v }
    }

    /// Arguments of `spoolfs format` for this volume.
    pub fn format_args(&self) -> Vec<String> {
        let mut a = vec![
            "format".to_string(),
            "--meta".into(),
            self.meta_url.clone(),
            "--storage".into(),
            self.storage_url.clone(),
        ];
        a.extend(self.storage_args.iter().cloned());
        a.push(self.name.clone());
        a
    }

    pub fn format(&self) -> CmdOutput {
        self.spoolfs_run(self.format_args())
    }

    /// The directory that holds this volume's objects on the local disk (the file store's
    /// directory, or the prefix's directory inside the s3s-fs root).
    pub fn objects_dir(&self) -> PathBuf {
        match &self.s3 {
            None => self.dir.path().join("objects"),
            Some(s3) => s3.bucket_dir(TEST_BUCKET).join(S3_PREFIX),
        }
    }

    /// Every data object (a block object below `chunks/` or a pack object below `packs/`) of
    /// this volume, sorted.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_files(&self.objects_dir(), &mut out);
        out.retain(|p| {
            p.components()
                .any(|c| c.as_os_str() == "chunks" || c.as_os_str() == "packs")
        });
        out.sort();
        out
    }

    /// A fresh, empty directory inside this volume's directory (e.g. a mount point).
    pub fn new_subdir(&self, tag: &str) -> PathBuf {
        let n = self.mounts.fetch_add(1, Ordering::Relaxed);
        let p = self.dir.path().join(format!("{tag}{n}"));
        fs::create_dir_all(&p).expect("create subdir");
        p
    }
}

fn s3_args(endpoint: &str) -> Vec<String> {
    vec![
        "--s3-endpoint".into(),
        endpoint.into(),
        "--s3-region".into(),
        TEST_REGION.into(),
        "--s3-path-style".into(),
    ]
}

/// Every regular file below `dir` (not following symlinks).
pub fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}
