//! What the FUSE tests share: an engine on a fresh in-memory volume (metadata and objects).

use spoolfs_engine::{Engine, EngineConfig, FormatOptions, StorageConfig};
use spoolfs_fuse::FuseTransport;
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

/// The transport `SPOOLFS_TEST_FUSE_TRANSPORT` asks for (`uring`, `dev` or `auto`; unset:
/// the default, auto). For `uring`, the fuse module's `enable_uring` switch is turned on when
/// it is off (root only), so that a mount fails only when the kernel cannot do it.
#[allow(dead_code)]
pub fn transport() -> FuseTransport {
    let Ok(name) = std::env::var("SPOOLFS_TEST_FUSE_TRANSPORT") else {
        return FuseTransport::default();
    };
    let transport: FuseTransport = name
        .parse()
        .unwrap_or_else(|e| panic!("SPOOLFS_TEST_FUSE_TRANSPORT: {e}"));
    if transport == FuseTransport::Uring {
        let param = "/sys/module/fuse/parameters/enable_uring";
        if std::fs::read_to_string(param).is_ok_and(|v| v.trim() == "N")
            && let Err(e) = std::fs::write(param, "Y")
        {
            eprintln!("cannot turn {param} on: {e}");
        }
    }
    transport
}
