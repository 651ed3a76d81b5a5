//! The engine: namespace operations over the metadata store.

use crate::error::Result;
use crate::types::*;
use crate::volume::VolumeRecord;
use spoolfs_metadata::KvStore;
use spoolfs_uploader::ObjectStorage;
use std::sync::Arc;
use std::time::Duration;

/// How to open a mounted volume.
#[derive(Clone)]
pub struct EngineConfig {
    /// Bytes of written data an open file may buffer before it is uploaded.
    pub max_dirty_per_file: u64,
    /// Bytes of decoded object blocks kept in memory for reads.
    pub block_cache_bytes: u64,
    /// How often namespace changes are made durable in the metadata store.
    pub meta_flush_interval: Duration,
    /// Concurrent object PUTs while uploading one file's data.
    pub max_uploads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_dirty_per_file: 64 << 20,
            block_cache_bytes: 256 << 20,
            meta_flush_interval: Duration::from_secs(1),
            max_uploads: 16,
        }
    }
}

pub struct Engine {
    _p: (),
}

#[allow(unused_variables)]
impl Engine {
    /// Opens a formatted volume. `storage` is opened by the caller (from the volume record,
    /// possibly with overrides) and checked.
    pub fn start(
        meta: Arc<dyn KvStore>,
        storage: Arc<ObjectStorage>,
        volume: VolumeRecord,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        todo!()
    }
    pub fn volume(&self) -> &VolumeRecord {
        todo!()
    }
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        todo!()
    }
    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: Ino, nlookup: u64) {}
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        todo!()
    }
    pub fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> Result<Attr> {
        todo!()
    }
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        todo!()
    }
    /// `mode` carries the file type bits (S_IFIFO, ...) and the permission bits, umask applied.
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        todo!()
    }
    /// `mode`: permission bits, umask applied.
    pub fn mkdir(&self, caller: &Caller, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        todo!()
    }
    pub fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr> {
        todo!()
    }
    pub fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        todo!()
    }
    pub fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Attr> {
        todo!()
    }
    /// Opens a file; `flags` are the open(2) flags (O_TRUNC is honoured here). Returns a handle.
    pub fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> Result<u64> {
        todo!()
    }
    /// Creates and opens a regular file. `mode`: permission bits, umask applied.
    pub fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, u64)> {
        todo!()
    }
    pub fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        todo!()
    }
    /// Returns the number of bytes written (all of them, or an error).
    pub fn write(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32> {
        todo!()
    }
    /// close(2) of one descriptor: in standard mode, returns when the data is in the object store.
    pub fn flush(&self, ino: Ino, fh: u64) -> Result<()> {
        todo!()
    }
    pub fn fsync(&self, ino: Ino, fh: u64, datasync: bool) -> Result<()> {
        todo!()
    }
    pub fn release(&self, ino: Ino, fh: u64) -> Result<()> {
        todo!()
    }
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        todo!()
    }
    /// Entries after cookie `offset` (0 = from the start), including "." and "..".
    pub fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        todo!()
    }
    pub fn releasedir(&self, ino: Ino, fh: u64) -> Result<()> {
        todo!()
    }
    pub fn fsyncdir(&self, ino: Ino) -> Result<()> {
        todo!()
    }
    pub fn statfs(&self) -> Result<StatFs> {
        todo!()
    }
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrSet,
    ) -> Result<()> {
        todo!()
    }
    /// The value; the front end answers size queries from its length.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        todo!()
    }
    pub fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> Result<()> {
        todo!()
    }
    /// fallocate(2): mode 0 and FALLOC_FL_KEEP_SIZE allocate (holes already read as zeros),
    /// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE zeroes a range; others are EOPNOTSUPP.
    pub fn fallocate(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        todo!()
    }
    pub fn status(&self) -> EngineStatus {
        todo!()
    }
    /// Uploads everything buffered and makes the metadata durable (unmount).
    pub fn shutdown(&self) -> Result<()> {
        todo!()
    }
}
