//! `spoolfs format`.

use crate::S3Args;
use anyhow::{Context, Result};
use clap::Args;
use spoolfs_engine::{FormatOptions, StorageConfig, VolumeRecord};
use spoolfs_metadata::KvStore;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Metadata store URL (redb:///path/meta.redb). Default: the default volume's.
    #[arg(long, value_name = "URL")]
    pub meta: Option<String>,
    /// Object store URL (file:///dir, s3://bucket/prefix). Default: the default volume's.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Size of the objects file data is cut into (64K to 64M, a power of two).
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size)]
    pub block_size: Option<u64>,
    /// Replace an existing volume (its data becomes unreachable).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub s3: S3Args,
    /// Volume name (1-63 characters of [A-Za-z0-9._-]).
    pub name: String,
}

/// Opens a metadata store, saying which one failed.
pub fn open_meta(url: &str) -> Result<Arc<dyn KvStore>> {
    spoolfs_metadata::open_store(url).context("cannot open the metadata store")
}

/// Creates the default volume's base directory and returns (meta URL, storage URL).
pub fn default_urls() -> Result<(String, String, std::path::PathBuf)> {
    let (meta, storage, base) = spoolfs_engine::default_volume_paths();
    std::fs::create_dir_all(&base)
        .with_context(|| format!("cannot create directory {}", base.display()))?;
    Ok((meta, storage, base))
}

/// Formats a volume; the caller prints what was made.
pub fn format(
    meta: &Arc<dyn KvStore>,
    name: &str,
    storage: StorageConfig,
    block_size: Option<u64>,
    force: bool,
) -> Result<VolumeRecord> {
    let opts = FormatOptions {
        name: name.to_string(),
        storage,
        block_size: block_size.unwrap_or(spoolfs_engine::volume::DEFAULT_BLOCK_SIZE),
        force,
    };
    spoolfs_engine::format_volume(meta, &opts)
        .with_context(|| format!("cannot format volume {name:?}"))
}

pub fn run(args: FormatArgs) -> Result<ExitCode> {
    let (meta_url, storage_url) = match (&args.meta, &args.storage) {
        (Some(m), Some(s)) => (m.clone(), s.clone()),
        _ => {
            let (m, s, _) = default_urls()?;
            (
                args.meta.clone().unwrap_or(m),
                args.storage.clone().unwrap_or(s),
            )
        }
    };
    // Format creates the schema of a PostgreSQL database that has none.
    let meta =
        spoolfs_metadata::format_store(&meta_url).context("cannot open the metadata store")?;
    let mut storage = StorageConfig {
        url: storage_url,
        ..Default::default()
    };
    args.s3.apply(&mut storage);
    let record = format(&meta, &args.name, storage, args.block_size, args.force)?;
    print_record(&record, &meta.describe());
    Ok(ExitCode::SUCCESS)
}

pub fn print_record(record: &VolumeRecord, meta: &str) {
    println!("formatted volume {:?}", record.name);
    println!("  uuid:       {}", record.uuid);
    println!("  storage:    {}", record.storage_url);
    if let Some(ep) = &record.s3_endpoint {
        println!("  endpoint:   {ep}");
    }
    if record.storage_url.starts_with("s3://") {
        let (style, why) = spoolfs_objects::s3_addressing(&record.storage_config());
        let style = match style {
            spoolfs_objects::S3Addressing::PathStyle => "path-style",
            spoolfs_objects::S3Addressing::VirtualHosted => "virtual-hosted",
        };
        println!("  requests:   {style} ({why})");
    }
    println!("  metadata:   {meta}");
    println!(
        "  block size: {}",
        crate::size::human_bytes(record.block_size)
    );
}
