//! How the file system is laid out in the ordered key-value store (see docs/FORMAT.md).
//!
//! | key | value |
//! |---|---|
//! | `V` | volume record (JSON) |
//! | `N` `i`/`s` | next free inode / slice id (u64 BE) |
//! | `S` `u`/`n` | used bytes / inode count (u64 BE) |
//! | `I` ino | [`InodeRec`] |
//! | `D` parent name | [`DentryRec`] |
//! | `C` ino chunk(u32 BE) pos(u32 BE) | [`SliceRec`]: one segment of the chunk's map |
//! | `X` ino name | xattr value |
//! | `O` ino | orphan: nlink 0 but still open when last seen |
//! | `G` slice id | [`DeadSlice`]: objects to delete |
//! | `T` slice id | [`StagedRec`]: the slice is in this node's staging log, not yet uploaded |
//! | `L` slice id | [`PackedRec`]: the slice lives in a pack object |
//! | `P` pack id | [`PackRec`]: a pack object and how many of its slices are alive |
//! | `Y` ino | the inode carries [`SYNC_UPLOAD_XATTR`]: flushes under it wait for the upload |
//!
//! Integers in keys are big-endian so that byte order is numeric order.

use crate::error::{FsError, Result};
use crate::types::{FileKind, Ino, ROOT_INO};
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const VOLUME_KEY: &[u8] = b"V";
pub const NEXT_INO_KEY: &[u8] = b"Ni";
pub const NEXT_SLICE_KEY: &[u8] = b"Ns";
pub const USED_BYTES_KEY: &[u8] = b"Su";
pub const INODE_COUNT_KEY: &[u8] = b"Sn";

/// A one-byte record tag followed by an inode number or an id, big-endian (so that a scan
/// walks them in numeric order).
fn id_key(tag: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The id a key made by `id_key` names (the tag byte, then the id big-endian); a key too
/// short to hold one is corrupt metadata. `what` names the key's kind in the error.
pub fn key_id(what: &str, key: &[u8]) -> Result<u64, MetaError> {
    match key.get(1..9) {
        Some(b) => Ok(u64::from_be_bytes(b.try_into().expect("eight bytes"))),
        None => Err(MetaError::Corrupt(format!(
            "{what} key of {} bytes has no id",
            key.len()
        ))),
    }
}

pub fn inode_key(ino: Ino) -> Vec<u8> {
    id_key(b'I', ino)
}

pub fn dentry_prefix(parent: Ino) -> Vec<u8> {
    id_key(b'D', parent)
}

pub fn dentry_key(parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = dentry_prefix(parent);
    k.extend_from_slice(name);
    k
}

pub fn chunk_prefix(ino: Ino) -> Vec<u8> {
    id_key(b'C', ino)
}

pub fn chunk_key(ino: Ino, chunk: u32) -> Vec<u8> {
    let mut k = chunk_prefix(ino);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// The key of the segment that starts at `pos` in a chunk. One key per segment keeps every
/// change small: a 4 KiB overwrite touches the segments it overlaps, not the whole map.
pub fn seg_key(ino: Ino, chunk: u32, pos: u32) -> Vec<u8> {
    let mut k = chunk_key(ino, chunk);
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

pub fn chunk_index_of_key(key: &[u8]) -> u32 {
    u32::from_be_bytes(key[9..13].try_into().expect("chunk key is 13 bytes"))
}

pub fn xattr_prefix(ino: Ino) -> Vec<u8> {
    id_key(b'X', ino)
}

pub fn xattr_key(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = xattr_prefix(ino);
    k.extend_from_slice(name);
    k
}

/// The extended attribute that marks a directory (or file): `close` and `fsync` of files under
/// it return only once their data is in the object store.
pub const SYNC_UPLOAD_XATTR: &[u8] = b"user.spoolfs.sync_upload";
/// File capabilities: removed by a write, a truncation or a change of owner, as the kernel
/// would (the FUSE front end takes that job over with `FUSE_HANDLE_KILLPRIV_V2`).
pub const CAPS_XATTR: &[u8] = b"security.capability";

pub const SYNC_MARK_PREFIX: &[u8] = b"Y";

/// Index of the inodes that carry [`SYNC_UPLOAD_XATTR`], loaded at mount.
pub fn sync_mark_key(ino: Ino) -> Vec<u8> {
    id_key(SYNC_MARK_PREFIX[0], ino)
}

pub fn orphan_key(ino: Ino) -> Vec<u8> {
    id_key(b'O', ino)
}

pub const DEAD_PREFIX: &[u8] = b"G";
pub const STAGED_PREFIX: &[u8] = b"T";

pub fn staged_key(slice: u64) -> Vec<u8> {
    id_key(b'T', slice)
}

pub fn packed_key(slice: u64) -> Vec<u8> {
    id_key(b'L', slice)
}

pub fn pack_key(pack: u64) -> Vec<u8> {
    id_key(b'P', pack)
}

/// Object keys are named in one place, the objects crate.
pub use spoolfs_objects::keys::{block_key, pack_object_key};

/// Where a packed slice is: bytes `[offset, offset + len)` of pack `pack`, with their CRC-32C.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackedRec {
    pub pack: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// A pack object: its size and how many of its slices are still alive (at zero it is deleted).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackRec {
    pub size: u64,
    pub live_slices: u32,
    pub live_bytes: u64,
}

/// The value of a `T` record; the uploader defines it.
pub use spoolfs_uploader::StagedRec;

pub fn dead_key(slice: u64) -> Vec<u8> {
    id_key(b'G', slice)
}

/// Nanoseconds since the epoch; times before it are clamped to it.
pub fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

pub fn from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn now_ns() -> i64 {
    to_ns(SystemTime::now())
}

/// An inode as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InodeRec {
    pub kind: FileKind,
    /// Permission bits, set-id and sticky bits (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
    /// For directories: the parent directory (the root is its own parent).
    pub parent: Ino,
    /// For symlinks: the target.
    pub target: Vec<u8>,
}

/// A directory entry as stored.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DentryRec {
    pub ino: Ino,
    pub kind: FileKind,
}

/// One piece of a slice that is visible in a chunk: bytes `[off, off+len)` of slice `id`
/// appear at `[pos, pos+len)` of the chunk. Slice id 0 is a hole (reads as zeros).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SliceRec {
    pub id: u64,
    /// The whole slice's length: it fixes the object keys of its blocks.
    pub size: u32,
    pub off: u32,
    pub len: u32,
    pub pos: u32,
}

/// A slice whose objects are to be deleted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadSlice {
    pub size: u32,
}

fn codec_err(what: &str, e: bincode::Error) -> MetaError {
    MetaError::Corrupt(format!("cannot decode {what}: {e}"))
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory records always serialise")
}

pub fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, MetaError> {
    bincode::deserialize(bytes).map_err(|e| codec_err(what, e))
}

/// Decodes a `T` record (of either version, see [`StagedRec::decode`]).
pub fn decode_staged(bytes: &[u8]) -> Result<StagedRec, MetaError> {
    StagedRec::decode(bytes).map_err(|e| codec_err("staged record", e))
}

/// A `T` row as scanned: the staged slice its key names, and its record.
pub fn staged_entry(key: &[u8], value: &[u8]) -> Result<(u64, StagedRec), MetaError> {
    Ok((key_id("staged slice", key)?, decode_staged(value)?))
}

/// The `statfs` counters, which every create and close updates. On a shared store each mount
/// adds to a row of its own (the key, then the store's counter shard as u32 BE, holding an i64
/// BE delta) instead of the one row every node would conflict on; the value is the key's own
/// row plus every shard.
fn is_sharded_counter(key: &[u8]) -> bool {
    key == USED_BYTES_KEY || key == INODE_COUNT_KEY
}

/// The row [`add_u64`] changes for `key` in this transaction's store.
pub fn counter_key(r: &dyn KvRead, key: &[u8]) -> Vec<u8> {
    match r.counter_shard() {
        Some(shard) if is_sharded_counter(key) => {
            let mut k = key.to_vec();
            k.extend_from_slice(&shard.to_be_bytes());
            k
        }
        _ => key.to_vec(),
    }
}

/// Sets a counter to `value`, dropping its shards.
pub fn set_counter(t: &mut dyn KvTxn, key: &[u8], value: u64) -> Result<(), MetaError> {
    if is_sharded_counter(key) {
        for (k, _) in t.scan(key, &prefix_end(key), usize::MAX)? {
            if k.len() > key.len() {
                t.delete(&k)?;
            }
        }
    }
    t.put(key, &value.to_be_bytes())
}

fn exact_u64(key: &[u8], v: &[u8]) -> Result<u64, MetaError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| MetaError::Corrupt(format!("counter {key:?} is not 8 bytes")))
}

pub fn get_u64(r: &dyn KvRead, key: &[u8]) -> Result<u64, MetaError> {
    if is_sharded_counter(key) {
        let mut total: i128 = 0;
        for (k, v) in r.scan(key, &prefix_end(key), usize::MAX)? {
            total += if k.len() == key.len() {
                exact_u64(key, &v)? as i128
            } else {
                exact_u64(&k, &v)? as i64 as i128
            };
        }
        return Ok(total.clamp(0, u64::MAX as i128) as u64);
    }
    Ok(match r.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().expect("8 bytes")),
        Some(_) => {
            return Err(MetaError::Corrupt(format!(
                "counter {key:?} is not 8 bytes"
            )));
        }
        None => 0,
    })
}

pub fn add_u64(t: &mut dyn KvTxn, key: &[u8], delta: i64) -> Result<(), MetaError> {
    let shard = counter_key(t, key);
    if shard.len() != key.len() {
        let v = match t.get(&shard)? {
            Some(v) => exact_u64(&shard, &v)? as i64,
            None => 0,
        };
        return t.put(&shard, &v.saturating_add(delta).to_be_bytes());
    }
    let v = get_u64(t, key)?;
    let new = if delta >= 0 {
        v.saturating_add(delta as u64)
    } else {
        v.saturating_sub(delta.unsigned_abs())
    };
    t.put(key, &new.to_be_bytes())
}

pub fn get_inode(r: &dyn KvRead, ino: Ino) -> Result<Option<InodeRec>, MetaError> {
    match r.get(&inode_key(ino))? {
        Some(bytes) => Ok(Some(decode("inode", &bytes)?)),
        None => Ok(None),
    }
}

/// The inode, or ENOENT.
pub fn must_inode(r: &dyn KvRead, ino: Ino) -> Result<InodeRec, MetaError> {
    get_inode(r, ino)?
        .ok_or_else(|| MetaError::Errno(libc::ENOENT, format!("inode {ino} not found")))
}

pub fn put_inode(t: &mut dyn KvTxn, ino: Ino, rec: &InodeRec) -> Result<(), MetaError> {
    t.put(&inode_key(ino), &encode(rec))
}

pub fn get_dentry(
    r: &dyn KvRead,
    parent: Ino,
    name: &[u8],
) -> Result<Option<DentryRec>, MetaError> {
    match r.get(&dentry_key(parent, name))? {
        Some(bytes) => Ok(Some(decode("directory entry", &bytes)?)),
        None => Ok(None),
    }
}

impl InodeRec {
    /// A new inode of `kind`, owned by root, in `parent`, created at `now`, with the links a
    /// new one has (its name; a directory also its "." entry) and no contents.
    pub fn new(kind: FileKind, perm: u16, parent: Ino, now: i64) -> InodeRec {
        InodeRec {
            kind,
            perm,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            crtime_ns: now,
            parent,
            target: Vec::new(),
        }
    }

    /// A new, empty directory owned by root, in `parent`, created at `now`.
    pub fn empty_dir(perm: u16, parent: Ino, now: i64) -> InodeRec {
        InodeRec::new(FileKind::Dir, perm, parent, now)
    }
}

pub fn init_root(t: &mut dyn KvTxn) -> Result<(), MetaError> {
    if get_inode(t, ROOT_INO)?.is_some() {
        return Ok(());
    }
    let root = InodeRec::empty_dir(0o755, ROOT_INO, now_ns());
    put_inode(t, ROOT_INO, &root)?;
    t.put(NEXT_INO_KEY, &(ROOT_INO + 1).to_be_bytes())?;
    t.put(NEXT_SLICE_KEY, &1u64.to_be_bytes())?;
    t.put(INODE_COUNT_KEY, &1u64.to_be_bytes())?;
    Ok(())
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::new(
            libc::EINVAL,
            format!("invalid name {:?}", String::from_utf8_lossy(name)),
        ));
    }
    if name.len() > crate::types::NAME_MAX {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            "name longer than 255 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_is_read_back_and_a_short_key_is_corrupt_metadata() {
        assert_eq!(key_id("inode", &inode_key(42)).unwrap(), 42);
        assert_eq!(key_id("segment", &seg_key(7, 3, 9)).unwrap(), 7);
        let err = key_id("staged slice", b"T\x00\x01").unwrap_err();
        assert!(
            matches!(&err, MetaError::Corrupt(m) if m.contains("staged slice key of 3 bytes")),
            "{err}"
        );
        assert_eq!(err.errno(), libc::EIO);
    }
}
