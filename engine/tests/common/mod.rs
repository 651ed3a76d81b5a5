//! Helpers shared by the engine's integration tests (each test file is its own crate and
//! includes this module with `mod common;`).

/// Deterministic pseudo-random bytes (xorshift): the same for the same seed, different
/// across seeds, so a test writes data it can check byte for byte later.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The block size of a test [`Volume`].
#[allow(dead_code)]
pub const BLOCK_SIZE: usize = 64 << 10;

/// A formatted test volume in a temporary directory: redb metadata (`m.redb`), a `file://`
/// object store (`objects/`), room for a cache directory. Test files add the engines they
/// need in their own `impl` blocks.
pub struct Volume {
    pub dir: tempfile::TempDir,
}

// Each test crate uses its own subset.
#[allow(dead_code)]
impl Volume {
    /// Formats a volume with [`BLOCK_SIZE`] blocks.
    pub fn new() -> Self {
        let v = Volume {
            dir: tempfile::tempdir().unwrap(),
        };
        spoolfs_engine::format_volume(
            &v.meta(),
            &spoolfs_engine::FormatOptions {
                name: "t".into(),
                storage: v.storage_config(),
                block_size: BLOCK_SIZE as u64,
                force: false,
            },
        )
        .unwrap();
        v
    }

    /// The metadata store, opened again (waiting a little for an engine just dropped to
    /// release its lock).
    pub fn meta(&self) -> std::sync::Arc<dyn spoolfs_metadata::KvStore> {
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
