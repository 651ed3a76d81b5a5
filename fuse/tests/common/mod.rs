//! What the FUSE tests share: an engine on a fresh in-memory volume (metadata and objects).

use spoolfs_engine::{Engine, EngineConfig, FormatOptions, StorageConfig};
use spoolfs_objects::ObjectStorage;
use std::sync::Arc;

/// An engine on a new volume whose metadata and objects live in memory.
pub fn engine() -> Arc<Engine> {
    let meta = spoolfs_metadata::open_store("memory://").unwrap();
    let storage_config = StorageConfig {
        url: "memory://".into(),
        ..Default::default()
    };
    let record = spoolfs_engine::format_volume(
        &meta,
        &FormatOptions {
            name: "t".into(),
            storage: storage_config.clone(),
            block_size: 1 << 20,
            force: false,
        },
    )
    .unwrap();
    let storage = Arc::new(ObjectStorage::open(&storage_config).unwrap());
    Engine::start(meta, storage, record, EngineConfig::default()).unwrap()
}
