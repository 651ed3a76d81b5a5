//! Helpers shared by the engine's integration tests (each test file is its own crate and
//! includes this module with `mod common;`). Engine-agnostic helpers (the seeded generator,
//! data patterns) are in the `spoolfs-testkit` crate.

pub mod store;

/// The block size of a test [`Volume`].
#[allow(dead_code)]
pub const BLOCK_SIZE: usize = 64 << 10;

/// Formats volume `name` with [`BLOCK_SIZE`] blocks in `meta`, its objects in `storage`.
#[allow(dead_code)]
pub fn format_test_volume(
    meta: &std::sync::Arc<dyn spoolfs_metadata::KvStore>,
    name: &str,
    storage: spoolfs_engine::StorageConfig,
) -> spoolfs_engine::VolumeRecord {
    spoolfs_engine::format_volume(
        meta,
        &spoolfs_engine::FormatOptions {
            name: name.into(),
            storage,
            block_size: BLOCK_SIZE as u64,
            force: false,
        },
    )
    .unwrap()
}

/// A formatted test volume in a temporary directory: redb metadata (`m.redb`), a `file://`
/// object store (`objects/`), room for a cache directory. Test files add the engines they
/// need in their own `impl` blocks.
pub struct Volume {
    pub dir: tempfile::TempDir,
    /// A PostgreSQL metadata store instead of `m.redb` (see [`Volume::on_postgres`]).
    pub meta_url: Option<String>,
}

// Each test crate uses its own subset.
#[allow(dead_code)]
impl Volume {
    /// Formats a volume with [`BLOCK_SIZE`] blocks.
    pub fn new() -> Self {
        Self::formatted(None)
    }

    /// [`Volume::new`] with its metadata in the PostgreSQL database at `url` (schema created).
    pub fn on_postgres(url: &str) -> Self {
        drop(spoolfs_metadata::format_store(url).unwrap());
        Self::formatted(Some(url.to_string()))
    }

    fn formatted(meta_url: Option<String>) -> Self {
        let v = Volume {
            dir: tempfile::tempdir().unwrap(),
            meta_url,
        };
        format_test_volume(&v.meta(), "t", v.storage_config());
        v
    }

    /// The metadata store, opened again (waiting a little for an engine just dropped to
    /// release its lock).
    pub fn meta(&self) -> std::sync::Arc<dyn spoolfs_metadata::KvStore> {
        if let Some(url) = &self.meta_url {
            return spoolfs_metadata::open_store(url).unwrap();
        }
        let path = self.dir.path().join("m.redb");
        for _ in 0..50 {
            match spoolfs_metadata::RedbStore::open(&path) {
                Ok(s) => return std::sync::Arc::new(s),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        std::sync::Arc::new(spoolfs_metadata::RedbStore::open(&path).unwrap())
    }

    pub fn storage_config(&self) -> spoolfs_engine::StorageConfig {
        spoolfs_engine::StorageConfig {
            url: format!("file://{}", self.objects().display()),
            ..Default::default()
        }
    }

    pub fn objects(&self) -> std::path::PathBuf {
        self.dir.path().join("objects")
    }
}

// Each test crate uses its own subset.
#[allow(dead_code)]
impl Volume {
    /// The volume record, read from the metadata store.
    pub fn record(&self) -> spoolfs_engine::VolumeRecord {
        spoolfs_engine::volume::read_record(self.meta().as_ref())
            .unwrap()
            .expect("volume is formatted")
    }

    /// Starts an engine on this volume with `config`; with `staging`, a writeback engine (what
    /// a mount runs) whose logs live where `staging` says.
    pub fn start_engine(
        &self,
        staging: Option<&spoolfs_engine::writeback::StagingSettings>,
        config: spoolfs_engine::EngineConfig,
    ) -> std::sync::Arc<spoolfs_engine::Engine> {
        let meta = self.meta();
        let record = spoolfs_engine::volume::read_record(meta.as_ref())
            .unwrap()
            .expect("volume is formatted");
        let storage = std::sync::Arc::new(
            spoolfs_objects::ObjectStorage::open(&self.storage_config()).unwrap(),
        );
        let (meta, config) = match staging {
            Some(settings) => {
                let (meta, staging) =
                    spoolfs_engine::writeback::open_staging(meta, &record, settings).unwrap();
                let config = spoolfs_engine::EngineConfig {
                    staging: Some(staging),
                    ..config
                };
                (meta, config)
            }
            None => (meta, config),
        };
        spoolfs_engine::Engine::start(meta, storage, record, config).unwrap()
    }
}

/// Whether `done` holds within `limit`, looking every 10 ms (and once more at the end).
#[allow(dead_code)]
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    done()
}

/// Every file below `dir` (none if it does not exist), sorted.
#[allow(dead_code)]
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// How many files there are below `dir`.
#[allow(dead_code)]
pub fn count_files(dir: &std::path::Path) -> usize {
    files_under(dir).len()
}

/// The whole contents of file `ino`, read through a handle of its own.
#[allow(dead_code)]
pub fn read_all(e: &spoolfs_engine::Engine, ino: spoolfs_engine::Ino) -> Vec<u8> {
    let me = spoolfs_engine::Caller::ROOT;
    let fh = e.open(&me, ino, libc::O_RDONLY).unwrap();
    let size = e.getattr(ino).unwrap().size;
    let out = e.read(ino, fh, 0, size as u32 + 10).unwrap();
    e.release(ino, fh).unwrap();
    out
}

/// Creates file `name` in the root directory holding `data`: written, flushed and closed.
#[allow(dead_code)]
pub fn create_file(e: &spoolfs_engine::Engine, name: &str, data: &[u8]) -> spoolfs_engine::Ino {
    let me = spoolfs_engine::Caller::ROOT;
    let (a, fh) = e
        .create(
            &me,
            spoolfs_engine::ROOT_INO,
            name.as_bytes(),
            0o644,
            libc::O_RDWR,
        )
        .unwrap();
    e.write(&me, a.ino, fh, 0, data).unwrap();
    e.flush(a.ino, fh).unwrap();
    e.release(a.ino, fh).unwrap();
    a.ino
}
