//! The local data cache on the node's disk (`--cache-dir`): verified object data kept after it
//! was fetched (or uploaded), so that reading it again costs a local read, not an object-store
//! round trip, and stays so across a remount.
//!
//! Entries are keyed like the in-memory block cache: a block of a slice, or a whole packed
//! slice. Slices never change once written (an overwrite makes a new slice), so an entry can
//! never be stale: it is only ever unused, and then evicted. Staged data is not here at all (it
//! is read from the staging log until its upload commits), so it can never be evicted.
//!
//! Files: `<dir>/<fan>/<slice hex>-<index hex>-<crc hex>`, where `<fan>` is the slice id
//! modulo 256 in two hex digits, holding exactly the data (so that a file can back a FUSE
//! passthrough open as it is), its CRC-32C in the name. Consecutive slices land in different
//! directories: an upload inserts thousands of small files a second, and one directory would
//! serialise them on its lock and crowd one ext4 block group. Written in place (no temporary
//! name, no rename: the index learns of a file only once it is written) and never fsynced: a
//! file torn by a crash fails its check and is dropped. Where the file system allows it, files
//! are written with O_DIRECT (from a few reused aligned buffers): a cold read fetches hundreds
//! of megabytes, and copying them into the page cache and writing them back later cost more CPU
//! than anything else spoolfs did then; the reader keeps what it just fetched in memory
//! anyway. Every read checks the CRC; a bad file
//! is deleted and reported as a miss, so the caller fetches the data again. Eviction is least
//! recently used, by bytes (`--cache-size`) and by free space on the file system
//! (`--cache-free-ratio`); at open the index is rebuilt from the directory, oldest access time
//! first.

use crate::blockcache::BlockId;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Settings of the local data cache.
#[derive(Clone, Debug)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    /// Most bytes of cached data (0: the cache is off).
    pub max_bytes: u64,
    /// Evict while less than this fraction of the file system is free.
    pub free_ratio: f64,
    /// Also keep a copy of the large slices this node uploads (stored as block objects: a
    /// checkpoint, a video). Off by default: a large sequential write would otherwise be
    /// written to the local disk twice (staging, then the cache) and push everything else out
    /// of the cache. Small slices are always kept, as the packs they are uploaded in.
    pub keep_large_uploads: bool,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct DiskCacheStats {
    pub bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    /// Files that failed their check (dropped and fetched again).
    pub corrupt: u64,
    pub evictions: u64,
}

struct Entry {
    size: u64,
    tick: u64,
    crc: u32,
}

#[derive(Default)]
struct Index {
    entries: BTreeMap<BlockId, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, BlockId>,
    next_tick: u64,
    bytes: u64,
}

impl Index {
    fn touch(&mut self, id: BlockId) -> bool {
        let tick = self.next_tick;
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, id);
        self.next_tick += 1;
        true
    }

    fn add(&mut self, id: BlockId, size: u64, crc: u32) {
        if self.entries.contains_key(&id) {
            self.touch(id);
            return;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(id, Entry { size, tick, crc });
        self.lru.insert(tick, id);
        self.bytes += size;
    }

    fn remove(&mut self, id: BlockId) -> bool {
        match self.entries.remove(&id) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.bytes -= e.size;
                true
            }
            None => false,
        }
    }
}

pub struct DiskCache {
    config: DiskCacheConfig,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    /// The file system is below its free-space floor, so nothing new is kept (said once in
    /// the log when it starts, and again when it ends).
    starved: std::sync::atomic::AtomicBool,
    /// Entries this mount has had read ahead into the page cache ([`DiskCache::read_ahead`])
    /// or has written through it (their pages are in it already).
    paged_in: Mutex<std::collections::HashSet<BlockId>>,
    /// New files are written with O_DIRECT (the cache directory's file system takes it).
    direct: bool,
    /// Aligned buffers O_DIRECT writes copy their data into, kept for the next ones: at most
    /// [`ALIGNED_KEPT`], each at most [`DIRECT_MAX`] plus one alignment.
    aligned: Mutex<Vec<Vec<u8>>>,
}

/// Alignment of an O_DIRECT write's buffer, offset and length.
const DIRECT_ALIGN: usize = 4096;
/// Entries larger than this are written through the page cache (no buffer that large is kept).
const DIRECT_MAX: usize = 32 << 20;
/// Aligned buffers kept between writes.
const ALIGNED_KEPT: usize = 4;

/// Entries remembered as read ahead or written, at most (then forgotten all at once).
const PAGED_IN_REMEMBERED: usize = 1 << 16;

/// Whether files in `dir` can be written with O_DIRECT (tmpfs, for one, refuses it): one
/// aligned block written to a probe file, which is then removed.
fn takes_direct_writes(dir: &Path) -> bool {
    let probe = dir.join(".direct-write-probe");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_DIRECT);
    let took = options.open(&probe).and_then(|f| {
        let mut buf = Vec::new();
        std::os::unix::fs::FileExt::write_all_at(&f, aligned(&mut buf, DIRECT_ALIGN), 0)
    });
    let _ = std::fs::remove_file(&probe);
    took.is_ok()
}

/// `len` bytes of `buf` starting at an address aligned for O_DIRECT (`buf` grown to hold
/// them).
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len + DIRECT_ALIGN {
        buf.resize(len + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    &mut buf[start..start + len]
}

/// The directory of a slice's files: consecutive slices in different ones.
fn fan(id: BlockId) -> u8 {
    (id.slice % 256) as u8
}

/// The fan number a directory name stands for.
fn fan_of(name: &std::ffi::OsStr) -> Option<u8> {
    let name = name.to_str()?;
    (name.len() == 2).then(|| u8::from_str_radix(name, 16).ok())?
}

fn file_name(id: BlockId, crc: u32) -> String {
    format!("{:016x}-{:08x}-{crc:08x}", id.slice, id.index)
}

fn parse_name(name: &str) -> Option<(BlockId, u32)> {
    let mut parts = name.split('-');
    let (s, i, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || s.len() != 16 || i.len() != 8 || c.len() != 8 {
        return None;
    }
    let id = BlockId {
        slice: u64::from_str_radix(s, 16).ok()?,
        index: u32::from_str_radix(i, 16).ok()?,
    };
    Some((id, u32::from_str_radix(c, 16).ok()?))
}

impl DiskCache {
    /// Opens (creating) the cache directory and indexes what a previous mount left there.
    pub fn open(config: DiskCacheConfig) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(&config.dir)?;
        let mut found: Vec<(std::time::SystemTime, BlockId, u64, u32)> = Vec::new();
        for entry in std::fs::read_dir(&config.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let meta = entry.metadata()?;
            if meta.is_dir() && fan_of(&name).is_some() {
                for inner in std::fs::read_dir(entry.path())? {
                    let inner = inner?;
                    let meta = inner.metadata()?;
                    match inner.file_name().to_str().and_then(parse_name) {
                        Some((id, crc)) if meta.is_file() && fan_of(&name) == Some(fan(id)) => {
                            let used = meta.accessed().or_else(|_| meta.modified());
                            let used = used.unwrap_or(std::time::UNIX_EPOCH);
                            found.push((used, id, meta.len(), crc));
                        }
                        _ => {
                            let _ = std::fs::remove_file(inner.path());
                        }
                    }
                }
                continue;
            }
            match name.to_str().and_then(parse_name) {
                // The flat layout of earlier versions: moved into its directory.
                Some((id, crc)) if meta.is_file() => {
                    let to = config.dir.join(format!("{:02x}", fan(id)));
                    let moved = std::fs::create_dir_all(&to)
                        .and_then(|()| std::fs::rename(entry.path(), to.join(&name)));
                    if moved.is_ok() {
                        let used = meta.accessed().or_else(|_| meta.modified());
                        let used = used.unwrap_or(std::time::UNIX_EPOCH);
                        found.push((used, id, meta.len(), crc));
                    } else {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                // Temporary files of earlier versions, and anything else.
                _ if meta.is_file() => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, id, size, crc) in found {
            index.add(id, size, crc);
        }
        let direct = takes_direct_writes(&config.dir);
        let cache = DiskCache {
            config,
            index: Mutex::new(index),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            starved: std::sync::atomic::AtomicBool::new(false),
            paged_in: Mutex::new(std::collections::HashSet::new()),
            direct,
            aligned: Mutex::new(Vec::new()),
        };
        cache.evict(0);
        Ok(cache)
    }

    fn path(&self, id: BlockId, crc: u32) -> PathBuf {
        self.config
            .dir
            .join(format!("{:02x}", fan(id)))
            .join(file_name(id, crc))
    }

    /// Opens the file of `id` and checks it: its file and bytes, or `None` on a miss or a
    /// bad file (then dropped). `count_miss`: a miss is counted here (else the caller looks
    /// elsewhere in this cache first and counts it with [`DiskCache::note_miss`]).
    fn open_checked(&self, id: BlockId, count_miss: bool) -> Option<(std::fs::File, Vec<u8>)> {
        let Some(crc) = self.touch(id) else {
            if count_miss {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        };
        let path = self.path(id, crc);
        let checked = std::fs::File::open(&path).ok().and_then(|mut f| {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut b).ok()?;
            (crc32c::crc32c(&b) == crc).then_some((f, b))
        });
        if checked.is_none() {
            crate::warn_limited!(
                "local cache file {} is damaged or gone; fetching it again",
                path.display()
            );
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            if count_miss {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
            self.index.lock().remove(id);
            let _ = std::fs::remove_file(&path);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        checked
    }

    /// Starts reading the file of `id` into the page cache in the background, once per mount
    /// and not for a file this mount wrote (`posix_fadvise(WILLNEED)`; nothing is read into
    /// this process): a directory listed on a warm cache then finds its files' data in
    /// memory, as a listing on a cold cache has it fetched. Nothing is checked here; the read
    /// that follows checks what it reads.
    pub fn read_ahead(&self, id: BlockId) {
        let Some(crc) = self.index.lock().entries.get(&id).map(|e| e.crc) else {
            return;
        };
        if !self.note_paged_in(id) {
            return;
        }
        if let Ok(file) = std::fs::File::open(self.path(id, crc)) {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor; the advice only starts reads into the page cache.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
    }

    /// Notes that the pages of `id`'s file are in the page cache (read ahead or just
    /// written); false if that was noted already.
    fn note_paged_in(&self, id: BlockId) -> bool {
        let mut paged_in = self.paged_in.lock();
        if paged_in.len() >= PAGED_IN_REMEMBERED {
            paged_in.clear();
        }
        paged_in.insert(id)
    }

    /// Whether `id` is cached (not checked: a read checks it).
    pub fn contains(&self, id: BlockId) -> bool {
        self.index.lock().entries.contains_key(&id)
    }

    /// Whether an entry of `size` bytes would be kept (at most half of the cache).
    pub fn takes(&self, size: u64) -> bool {
        self.config.max_bytes > 0 && size <= self.config.max_bytes / 2
    }

    /// Whether a whole pack of `size` bytes is worth fetching into the cache: it is a small
    /// part of the cache (at most 1/64: fetched packs then live long enough to be read), and
    /// the file system is not below its free-space floor (there the cache keeps nothing, and
    /// a whole-pack fetch would be fetched again by every reader).
    pub fn keeps_whole_pack(&self, size: u64) -> bool {
        size <= self.config.max_bytes / 64 && !self.low_on_space()
    }

    /// Whether the blocks of large uploaded slices are kept too.
    pub fn keeps_large_uploads(&self) -> bool {
        self.config.keep_large_uploads
    }

    /// A slice stored in a cached pack: `len` bytes at `offset` of the pack's file, checked
    /// against `crc` (the CRC its `L` record keeps; the file's own CRC would mean reading the
    /// whole pack). `None` on a miss; a pack whose bytes fail the check is dropped.
    pub fn get_packed_slice(&self, pack: u64, offset: u64, len: u32, crc: u32) -> Option<Vec<u8>> {
        let id = BlockId::pack(pack);
        let file_crc = self.touch(id)?;
        let mut buf = vec![0u8; len as usize];
        let read = std::fs::File::open(self.path(id, file_crc))
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset));
        if read.is_err() || crc32c::crc32c(&buf) != crc {
            crate::warn_limited!(
                "local cache file of pack {pack} is damaged or gone; fetching it again"
            );
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.remove(id);
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(buf)
    }

    /// Marks `id` used now; the CRC its file name carries, or `None` if it is not cached.
    fn touch(&self, id: BlockId) -> Option<u32> {
        let mut index = self.index.lock();
        if !index.touch(id) {
            return None;
        }
        index.entries.get(&id).map(|e| e.crc)
    }

    /// The cached bytes of `id`, checked; `None` on a miss or a bad file (then dropped).
    pub fn get(&self, id: BlockId) -> Option<Bytes> {
        self.open_checked(id, true).map(|(_, b)| Bytes::from(b))
    }

    /// Like [`DiskCache::get`], but a miss is not counted: a packed slice has its own file
    /// here only when it was fetched alone; usually its pack's file serves it
    /// ([`DiskCache::get_packed_slice`]), and only when neither does is it a miss.
    pub fn get_uncounted(&self, id: BlockId) -> Option<Bytes> {
        self.open_checked(id, false).map(|(_, b)| Bytes::from(b))
    }

    /// Counts a miss that [`DiskCache::get_uncounted`] left to its caller.
    pub fn note_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The cache file of `id`, checked, opened read-only: it holds exactly the data (a FUSE
    /// passthrough open reads it directly). Eviction may unlink it; the open file stays
    /// readable.
    pub fn file(&self, id: BlockId) -> Option<std::fs::File> {
        self.open_checked(id, true).map(|(f, _)| f)
    }

    /// Keeps a copy of `data` (already verified by the caller). Failures only cost the copy.
    pub fn insert(&self, id: BlockId, data: &[u8]) {
        let size = data.len() as u64;
        if !self.takes(size) {
            return;
        }
        if self.index.lock().entries.contains_key(&id) {
            return;
        }
        // Below the floor, a copy would be evicted as soon as it is written.
        if self.note_starved(self.low_on_space()) {
            return;
        }
        let crc = crc32c::crc32c(data);
        let path = self.path(id, crc);
        let direct = self.direct && data.len() <= DIRECT_MAX;
        // Never rewrite an existing file: a concurrent insert of the same data may already
        // be indexed and open (a passthrough open reads the file itself).
        let create = || {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            if direct {
                std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_DIRECT);
            }
            options.open(&path)
        };
        let file = create().or_else(|e| match e.kind() {
            // The first file of its directory.
            std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path.parent().expect("in a fan directory"))?;
                create()
            }
            _ => Err(e),
        });
        let written = match file {
            Ok(f) if direct => self.write_direct(&f, data),
            Ok(mut f) => f.write_all(data),
            Err(e) => {
                tracing::debug!("cannot keep a local copy of {id:?}: {e}");
                return;
            }
        };
        if let Err(e) = written {
            tracing::debug!("cannot keep a local copy of {id:?}: {e}");
            let _ = std::fs::remove_file(&path);
            return;
        }
        self.index.lock().add(id, size, crc);
        if !direct {
            self.note_paged_in(id);
        }
        self.evict(0);
    }

    /// Writes `data` to the new file `f` (opened with O_DIRECT) from an aligned buffer, padded
    /// to the alignment and then cut to its length: the file holds exactly the data.
    fn write_direct(&self, f: &std::fs::File, data: &[u8]) -> std::io::Result<()> {
        let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let mut buf = self.aligned.lock().pop().unwrap_or_default();
        let out = aligned(&mut buf, padded);
        out[..data.len()].copy_from_slice(data);
        out[data.len()..].fill(0);
        let written = std::os::unix::fs::FileExt::write_all_at(f, out, 0).and_then(|()| {
            if padded == data.len() {
                Ok(())
            } else {
                f.set_len(data.len() as u64)
            }
        });
        let mut kept = self.aligned.lock();
        if kept.len() < ALIGNED_KEPT {
            kept.push(buf);
        }
        written
    }

    /// Drops every entry of `slice` (its objects are being deleted).
    pub fn remove_slice(&self, slice: u64) {
        let ids: Vec<BlockId> = {
            let index = self.index.lock();
            let lo = BlockId { slice, index: 0 };
            let hi = BlockId {
                slice,
                index: u32::MAX,
            };
            index.entries.range(lo..=hi).map(|(id, _)| *id).collect()
        };
        for id in ids {
            self.remove(id);
        }
    }

    fn remove(&self, id: BlockId) -> bool {
        let crc = self.index.lock().entries.get(&id).map(|e| e.crc);
        match crc {
            Some(crc) if self.index.lock().remove(id) => {
                let _ = std::fs::remove_file(self.path(id, crc));
                true
            }
            _ => false,
        }
    }

    /// Evicts least recently used entries until the cache is under its size and the file
    /// system has its free fraction (plus `extra` bytes about to be written).
    fn evict(&self, extra: u64) {
        loop {
            let victim = {
                let index = self.index.lock();
                let over = index.bytes + extra > self.config.max_bytes;
                let short_of_space = index.bytes > 0 && self.low_on_space();
                if !over && !short_of_space {
                    return;
                }
                match index.lru.first_key_value() {
                    Some((_, id)) => *id,
                    None => return,
                }
            };
            if self.remove(victim) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records whether the file system is below its free-space floor, saying so in the log
    /// when that changes: a cache that keeps nothing makes every read of the object store's
    /// data cold, which the user must be able to find out. Returns `starved`.
    fn note_starved(&self, starved: bool) -> bool {
        if self.starved.swap(starved, Ordering::Relaxed) != starved {
            let free = free_fraction(&self.config.dir).unwrap_or(0.0);
            if starved {
                tracing::warn!(
                    "the local data cache in {} keeps nothing new: its file system has {:.1}% \
                     free, below --cache-free-ratio {:.1}%; reads of data not cached fetch it \
                     from the object store every time",
                    self.config.dir.display(),
                    free * 100.0,
                    self.config.free_ratio * 100.0
                );
            } else {
                tracing::info!(
                    "the local data cache in {} keeps data again ({:.1}% free)",
                    self.config.dir.display(),
                    free * 100.0
                );
            }
        }
        starved
    }

    fn low_on_space(&self) -> bool {
        if self.config.free_ratio <= 0.0 {
            return false;
        }
        match free_fraction(&self.config.dir) {
            Some(f) => f < self.config.free_ratio,
            None => false,
        }
    }

    pub fn stats(&self) -> DiskCacheStats {
        let index = self.index.lock();
        DiskCacheStats {
            bytes: index.bytes,
            entries: index.entries.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// Free fraction of the file system holding `dir` (for unprivileged users).
fn free_fraction(dir: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is NUL-terminated and `st` a valid out pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> DiskCache {
        DiskCache::open(DiskCacheConfig {
            dir: dir.to_path_buf(),
            max_bytes: max,
            free_ratio: 0.0,
            keep_large_uploads: true,
        })
        .unwrap()
    }

    fn walk_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk_files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    fn id(slice: u64, index: u32) -> BlockId {
        BlockId { slice, index }
    }

    /// A file a direct write made holds exactly the data, is read back like any other, and
    /// leaves no page in the page cache; with direct writes off (a file system that refuses
    /// them), the same entries go through the page cache.
    #[test]
    fn entries_written_around_the_page_cache_hold_exactly_their_data() {
        let test = "entries_written_around_the_page_cache_hold_exactly_their_data";
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), 1 << 30);
        if !c.direct {
            spoolfs_testkit::skip(
                test,
                "the temporary directory's file system refuses O_DIRECT",
            );
            return;
        }
        // Unaligned, aligned, and larger than one kept buffer's first size.
        let sizes = [1usize, 4095, 4096, 100_003, 3 << 20, (4 << 20) + 17];
        for (i, &len) in sizes.iter().enumerate() {
            let data = spoolfs_testkit::random_bytes(i as u64, len);
            c.insert(id(i as u64 + 1, 0), &data);
            let path = c.path(id(i as u64 + 1, 0), crc32c::crc32c(&data));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
            assert_eq!(
                spoolfs_testkit::resident_pages(&path).0,
                0,
                "{len} bytes written around the page cache"
            );
            assert_eq!(c.get(id(i as u64 + 1, 0)).unwrap(), Bytes::from(data));
        }
        assert!(c.aligned.lock().len() <= ALIGNED_KEPT);
        // Through the page cache, as on a file system without O_DIRECT.
        c.direct = false;
        let data = spoolfs_testkit::random_bytes(99, 5000);
        c.insert(id(99, 0), &data);
        assert_eq!(c.get(id(99, 0)).unwrap(), Bytes::from(data));
        let after = cache(dir.path(), 1 << 30);
        assert_eq!(
            after.stats().entries,
            sizes.len() as u64 + 1,
            "all indexed again"
        );
    }

    #[test]
    fn keeps_checks_evicts_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 10_000);
        c.insert(id(1, 0), &[1u8; 3000]);
        c.insert(id(2, 0), &[2u8; 3000]);
        c.insert(id(3, u32::MAX), &[3u8; 3000]);
        assert_eq!(c.get(id(1, 0)).unwrap(), Bytes::from(vec![1u8; 3000]));
        // Over 10,000 bytes: the least recently used (slice 2, as 1 was just read) goes.
        c.insert(id(4, 0), &[4u8; 3000]);
        assert!(c.get(id(2, 0)).is_none());
        assert!(c.get(id(1, 0)).is_some());
        assert!(c.stats().bytes <= 10_000);
        assert_eq!(c.stats().evictions, 1);
        drop(c);
        // Warm restart: the index comes back from the directory.
        let c = cache(dir.path(), 10_000);
        assert_eq!(c.stats().entries, 3);
        assert_eq!(
            c.get(id(3, u32::MAX)).unwrap(),
            Bytes::from(vec![3u8; 3000])
        );
        // A damaged file is detected, dropped and reported as a miss, never served.
        let path = c.path(id(4, 0), crc32c::crc32c(&[4u8; 3000]));
        let mut b = std::fs::read(&path).unwrap();
        b[10] ^= 0xff;
        std::fs::write(&path, b).unwrap();
        assert!(c.get(id(4, 0)).is_none());
        assert_eq!(c.stats().corrupt, 1);
        assert!(!path.exists());
        // Dead slices go.
        c.remove_slice(1);
        assert!(c.get(id(1, 0)).is_none());
    }

    #[test]
    fn files_of_the_flat_layout_move_into_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let data = [7u8; 100];
        let old = dir
            .path()
            .join(file_name(id(0x1234, 0), crc32c::crc32c(&data)));
        std::fs::write(&old, data).unwrap();
        std::fs::write(dir.path().join(".tmp-1-2"), b"half").unwrap();
        let c = cache(dir.path(), 10_000);
        assert_eq!(c.get(id(0x1234, 0)).unwrap(), Bytes::from(data.to_vec()));
        assert!(!old.exists());
        assert!(
            dir.path()
                .join("34")
                .join(old.file_name().unwrap())
                .exists()
        );
        assert!(!dir.path().join(".tmp-1-2").exists());
    }

    #[test]
    fn whole_packs_only_when_they_would_stay() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 64 << 20);
        assert!(c.keeps_whole_pack(1 << 20));
        assert!(!c.keeps_whole_pack(2 << 20), "over 1/64 of the cache");
        // Below the free-space floor the cache keeps nothing: no whole packs either.
        let full = DiskCache::open(DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 64 << 20,
            free_ratio: 1.0,
            keep_large_uploads: true,
        })
        .unwrap();
        assert!(!full.keeps_whole_pack(4096));
        // Below the floor nothing is written at all (it would be evicted at once).
        full.insert(id(9, 0), &[9u8; 100]);
        assert_eq!(full.stats().entries, 0);
        assert!(
            full.starved.load(Ordering::Relaxed),
            "the starvation is noted"
        );
        let files = walk_files(&full.config.dir);
        assert!(files.is_empty(), "files written below the floor: {files:?}");
    }

    #[test]
    fn read_ahead_brings_a_cached_file_into_memory_once() {
        use spoolfs_testkit::{drop_from_page_cache, resident_pages};
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 1 << 20];
        cache(dir.path(), 64 << 20).insert(id(7, 0), &data);
        // A new mount finds it on disk, out of the page cache.
        let mut c = cache(dir.path(), 64 << 20);
        let path = c.path(id(7, 0), crc32c::crc32c(&data));
        if !drop_from_page_cache(&path) {
            spoolfs_testkit::skip(
                "read_ahead_brings_a_cached_file_into_memory_once",
                "the temporary directory's file system keeps files in memory (tmpfs?)",
            );
            return;
        }
        let pages = resident_pages(&path).1;
        // The resident pages of `file` once all of them are in memory, or 10 s have passed.
        let resident_soon = |file: &Path| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while resident_pages(file).0 < pages && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            resident_pages(file)
        };
        // WILLNEED is advice: the kernel's readahead may skip a page it cannot allocate at
        // once (a CI run once had 254 of 256). Most of the file in memory is the promise.
        let mostly_in = |(resident, total): (usize, usize)| resident * 10 >= total * 9;
        c.read_ahead(id(7, 0));
        let read = resident_soon(&path);
        assert!(
            read.1 == pages && mostly_in(read),
            "read ahead whole: {read:?}"
        );
        assert_eq!(c.get(id(7, 0)).unwrap(), Bytes::from(data.clone()));
        // Nothing cached, nothing read ahead (or remembered).
        c.read_ahead(id(8, 0));
        assert!(!c.paged_in.lock().contains(&id(8, 0)));
        // Once per mount, and never for a file this mount wrote through the page cache: its
        // pages were in memory. One written around the page cache is read ahead.
        assert!(drop_from_page_cache(&path));
        c.read_ahead(id(7, 0));
        let direct = c.direct;
        c.insert(id(9, 0), &data);
        c.direct = false;
        c.insert(id(10, 0), &data);
        let nine = c.path(id(9, 0), crc32c::crc32c(&data));
        let ten = c.path(id(10, 0), crc32c::crc32c(&data));
        assert!(drop_from_page_cache(&nine) && drop_from_page_cache(&ten));
        c.read_ahead(id(9, 0));
        c.read_ahead(id(10, 0));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(resident_pages(&path).0, 0, "read ahead twice in one mount");
        assert_eq!(
            resident_pages(&ten).0,
            0,
            "read ahead after this mount wrote it through the page cache"
        );
        if direct {
            let read = resident_soon(&nine);
            assert!(mostly_in(read), "written around it: {read:?}");
        }
    }

    #[test]
    fn off_when_the_size_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 0);
        c.insert(id(1, 0), b"x");
        assert!(c.get(id(1, 0)).is_none());
    }
}
