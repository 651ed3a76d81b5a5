//! Volumes: the record that says where a volume's data lives and how it is cut, kept in the
//! metadata store and copied into the bucket (so a bucket explains itself).

use crate::error::{FsError, Result};
use crate::schema;
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{Durability, KvStore};
use spoolfs_objects::{ObjectStorage, StorageConfig, StorageError};
use std::path::PathBuf;
use std::sync::Arc;

/// The on-disk format version this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;
/// Chunk size: a file is cut into chunks of this many bytes.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// The key of the volume record's copy in the bucket.
pub const BUCKET_RECORD_KEY: &str = "spoolfs.volume.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub uuid: String,
    pub name: String,
    pub storage_url: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: bool,
    /// Forced virtual-hosted requests (absent in records written before it existed).
    #[serde(default)]
    pub s3_virtual_hosted: bool,
    pub block_size: u64,
    pub chunk_size: u64,
    pub format_version: u32,
    /// Seconds since the epoch.
    pub created: u64,
}

impl VolumeRecord {
    pub fn storage_config(&self) -> StorageConfig {
        StorageConfig {
            url: self.storage_url.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            s3_virtual_hosted: self.s3_virtual_hosted,
            ..Default::default()
        }
    }
}

pub struct FormatOptions {
    pub name: String,
    pub storage: StorageConfig,
    pub block_size: u64,
    /// Overwrite an existing volume record (the data of the old volume becomes unreachable).
    pub force: bool,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(FsError::new(
            libc::EINVAL,
            format!("invalid volume name {name:?}: use 1-63 characters of [A-Za-z0-9._-]"),
        ))
    }
}

/// Creates a volume: its record and root directory in `meta`, and the record's copy in the
/// bucket. Refuses to overwrite an existing volume unless `force` is set.
pub fn format_volume(meta: &Arc<dyn KvStore>, opts: &FormatOptions) -> Result<VolumeRecord> {
    check_name(&opts.name)?;
    if !(64 << 10..=64 << 20).contains(&opts.block_size) || !opts.block_size.is_power_of_two() {
        return Err(FsError::new(
            libc::EINVAL,
            format!(
                "invalid block size {}: must be a power of two between 64 KiB and 64 MiB",
                opts.block_size
            ),
        ));
    }
    if let Some(existing) = read_record(meta.as_ref())?
        && !opts.force
    {
        return Err(FsError::new(
            libc::EEXIST,
            format!(
                "metadata store {} already holds volume {:?} ({}); use --force to replace it",
                meta.describe(),
                existing.name,
                existing.uuid
            ),
        ));
    }
    let storage = ObjectStorage::open(&opts.storage)?;
    storage.check()?;
    match storage.get(BUCKET_RECORD_KEY) {
        Ok(bytes) if !opts.force => {
            let other: Option<VolumeRecord> = serde_json::from_slice(&bytes).ok();
            return Err(FsError::new(
                libc::EEXIST,
                format!(
                    "{} already holds volume {}; use --force to format over it",
                    storage.describe(),
                    other
                        .map(|r| format!("{:?} ({})", r.name, r.uuid))
                        .unwrap_or_else(|| "of unknown format".into())
                ),
            ));
        }
        Ok(_) | Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let record = VolumeRecord {
        uuid: uuid::Uuid::new_v4().to_string(),
        name: opts.name.clone(),
        storage_url: opts.storage.url.clone(),
        s3_endpoint: opts.storage.s3_endpoint.clone(),
        s3_region: opts.storage.s3_region.clone(),
        s3_path_style: opts.storage.s3_path_style,
        s3_virtual_hosted: opts.storage.s3_virtual_hosted,
        block_size: opts.block_size,
        chunk_size: DEFAULT_CHUNK_SIZE,
        format_version: FORMAT_VERSION,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let json = serde_json::to_vec_pretty(&record).expect("record serialises");
    storage.put(BUCKET_RECORD_KEY, json.clone().into())?;
    meta.update(Durability::Durable, &mut |txn| {
        if opts.force {
            // Wipe every key of the old volume.
            loop {
                let keys = txn.scan(&[], &[0xff; 9], 4096)?;
                if keys.is_empty() {
                    break;
                }
                for (k, _) in keys {
                    txn.delete(&k)?;
                }
            }
        }
        txn.put(schema::VOLUME_KEY, &json)?;
        crate::peers::create_secret(txn)?;
        schema::init_root(txn)?;
        Ok(())
    })?;
    Ok(record)
}

/// The volume record in a metadata store, if it has one.
pub fn read_record(meta: &dyn KvStore) -> Result<Option<VolumeRecord>> {
    let mut raw = None;
    meta.view(&mut |r| {
        raw = r.get(schema::VOLUME_KEY)?;
        Ok(())
    })?;
    match raw {
        None => Ok(None),
        Some(bytes) => {
            let record: VolumeRecord =
                serde_json::from_slice(&bytes).map_err(FsError::VolumeRecord)?;
            if record.format_version > FORMAT_VERSION {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!(
                        "volume {:?} has format version {}, this spoolfs understands up to {}",
                        record.name, record.format_version, FORMAT_VERSION
                    ),
                ));
            }
            Ok(Some(record))
        }
    }
}

/// Where the zero-configuration default volume lives: (metadata URL, storage URL).
/// `$XDG_DATA_HOME/spoolfs` or `~/.local/share/spoolfs`.
pub fn default_volume_paths() -> (String, String, PathBuf) {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("spoolfs");
    let meta = format!("redb://{}", base.join("meta.redb").display());
    let storage = format!("file://{}", base.join("objects").display());
    (meta, storage, base)
}
