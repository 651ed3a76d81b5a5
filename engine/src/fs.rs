//! The engine: namespace operations over the metadata store, and the data path (write
//! buffering per open inode, slices uploaded as checksummed block objects, resolved reads).

use crate::acl;
use crate::blockcache::BlockId;
use crate::data;
use crate::error::{FsError, Result};
use crate::holds::{self, HoldNeed, Holds};
use crate::ids::{INODE_ID_BATCH, IdAllocator, SLICE_ID_BATCH};
use crate::namespace::{self, MAX_FILE_SIZE, NewNode, XATTR_VALUE_MAX, to_attr};
use crate::open::OpenFiles;
use crate::reader::{Counters, ObjectReader, ReaderConfig};
use crate::reclaim::{DEAD_BATCH, Reclaimer, count_dead};
use crate::schema::{self, InodeRec};
use crate::stop::StopSignal;
use crate::types::*;
use crate::volume::VolumeRecord;
use crate::write::{FileState, KnownInode, WritePath};
use crate::writeback::{StagingOptions, UploadCatalog};
use parking_lot::{Mutex, RwLock};
use spoolfs_metadata::{Durability, KvRead, KvStore, KvTxn, MetaError};
use spoolfs_objects::ObjectStorage;
use spoolfs_uploader::{Uploader, run_uploader};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// After this long with no writes, uploads or object reads, the buffers kept for large
    /// writes are freed and the allocator gives its free memory back to the system (`None`:
    /// never). See [`Engine::release_idle_memory`].
    pub release_memory_after: Option<Duration>,
    /// Concurrent object PUTs while uploading one file's data.
    pub max_uploads: usize,
    /// Concurrent bulk delete requests of the garbage collector (each of up to
    /// [`spoolfs_uploader::DELETE_BATCH_KEYS`] objects).
    pub max_deletes: usize,
    /// The staging log (writeback mode, and draining what an earlier writeback mount left).
    pub staging: Option<StagingOptions>,
    /// At shutdown, wait for staged data to reach the object store (`None`: stop at once).
    pub drain_on_shutdown: Option<Duration>,
    /// The local data cache on disk (`None`: only the in-memory block cache).
    pub disk_cache: Option<crate::diskcache::DiskCacheConfig>,
    /// Bytes fetched ahead of a sequential reader (0: no readahead).
    pub readahead_bytes: u64,
    /// Threads fetching ahead.
    pub readahead_threads: usize,
    /// Whole-pack fetches of cold small files into the local data cache, and the prefetch
    /// of a listed directory's files.
    pub pack_fetch: crate::packfetch::PackFetchConfig,
    /// The background compactor (`None`: off).
    pub compaction: Option<crate::gc::CompactionSettings>,
    /// Writeback: `close` makes what it wrote power-safe, as `fsync` does (a device flush),
    /// not only crash-safe.
    pub durable_close: bool,
    /// When reads move access times (the mount's relatime, strictatime or noatime).
    pub atime: AtimeMode,
    /// On a shared store: serve this mount's staged slices to the volume's other mounts and
    /// read theirs (`None`: neither).
    pub peer: Option<crate::peers::PeerSettings>,
    /// Where file locks live: the shared store and this mount's session (`None`: an exclusive
    /// volume, whose locks are private to the mount).
    pub shared_locks: Option<crate::locks::SharedLocks>,
    /// The longest pause of a blocked `F_SETLKW` between two looks at the lock table.
    pub lock_wait_max_backoff: Duration,
    /// How long the kernel may keep attributes (the mount's `--attr-ttl`). On a shared store,
    /// a directory's attributes as this mount's own create, mkdir or unlink in it committed
    /// them answer the kernel's next `getattr` of it for that long (0: never).
    pub own_dir_attr_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_dirty_per_file: 64 << 20,
            block_cache_bytes: 256 << 20,
            meta_flush_interval: Duration::from_secs(1),
            release_memory_after: Some(DEFAULT_RELEASE_MEMORY_AFTER),
            max_uploads: 16,
            max_deletes: 4,
            staging: None,
            drain_on_shutdown: Some(Duration::from_secs(24 * 3600)),
            disk_cache: None,
            readahead_bytes: 32 << 20,
            readahead_threads: 4,
            pack_fetch: Default::default(),
            compaction: Some(crate::gc::CompactionSettings::default()),
            durable_close: false,
            atime: AtimeMode::default(),
            peer: None,
            shared_locks: None,
            lock_wait_max_backoff: Duration::from_millis(200),
            own_dir_attr_ttl: Duration::ZERO,
        }
    }
}

/// The default of [`EngineConfig::release_memory_after`]: long enough that the writes of one
/// job (a checkpoint every few seconds, a build) keep their buffers, short enough that an
/// idle mount does not hold the memory of its last burst.
pub const DEFAULT_RELEASE_MEMORY_AFTER: Duration = Duration::from_secs(30);

/// Reported by `statfs`: a nominal capacity, since an object store has no fixed size.
const NOMINAL_CAPACITY_BYTES: u64 = 1 << 50;
const NOMINAL_INODES: u64 = 1 << 40;
pub struct Engine {
    /// The metadata store; refuses changes once the engine has shut down.
    pub(crate) meta: Arc<crate::meta::Meta>,
    pub(crate) storage: Arc<ObjectStorage>,
    volume: VolumeRecord,
    pub(crate) config: EngineConfig,
    pub(crate) writeback: Option<Arc<Uploader>>,
    inode_ids: IdAllocator,
    /// Open inodes with their buffered writes, and file handles.
    open: OpenFiles,
    /// Buffered writes and their flush.
    write: WritePath,
    /// Directory listings of open directory handles.
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    /// Reads object data through the block cache and the local data cache.
    pub(crate) reader: Arc<ObjectReader>,
    pub(crate) counters: Arc<Counters>,
    /// Shared with the background threads, which must not keep the engine alive while they
    /// wait (a dropped engine must release the metadata store).
    stop: Arc<StopSignal>,
    background: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Size and mtime of each file at its last open here, for `keep_cache`.
    opened_as: Mutex<HashMap<Ino, (i64, u64)>>,
    /// Held for the whole of [`Engine::shutdown`]; true once it has run. Afterwards changes
    /// are refused (nothing would make them durable or upload them): see [`crate::meta::Meta::close`].
    shut_down: Mutex<bool>,
    /// Dead slices, compaction, the orphan sweep.
    reclaim: Reclaimer,
    /// What the upload threads record their work through (they hold it weakly).
    upload_catalog: Arc<UploadCatalog>,
    /// File locks (`flock`, `fcntl`).
    locks: Arc<crate::locks::LockTable>,
    /// On a shared volume with a session: this mount's open-file holds.
    holds: Option<Arc<Holds>>,
    /// On a shared volume with a session: the lease its volume-wide background work runs
    /// under (see [`crate::session::lease`]), and what the last look at it found.
    lease: Option<BackgroundLease>,
    /// On a shared store: directories this mount just changed by a create or an unlink in
    /// them, with their attributes as committed, for the kernel's next `getattr` of each
    /// (see [`EngineConfig::own_dir_attr_ttl`]). Used once, never by a transaction.
    own_dir_attrs: Mutex<HashMap<Ino, (InodeRec, std::time::Instant)>>,
    /// On a shared store: access times that reads here moved, not yet written (inode to the
    /// read's time and the mtime and ctime it saw). The holds thread writes them in batches a
    /// moment later, so a read does not wait for a database round trip; this mount's own
    /// attributes show them at once.
    pending_atimes: Mutex<HashMap<Ino, (i64, i64, i64)>>,
}

/// Most directories [`Engine::own_dir_attrs`] keeps (more: it starts again empty).
const OWN_DIR_ATTRS_MAX: usize = 1024;

struct BackgroundLease {
    session: String,
    /// The session's timeout: how long a taken lease runs before the heartbeat renews it.
    ttl_s: u64,
    /// When this mount last looked, and whether it held the lease then.
    seen: Mutex<Option<(std::time::Instant, bool)>>,
}

/// How long a look at the background lease stands before the next one reads it again.
const LEASE_LOOK_INTERVAL: Duration = Duration::from_millis(900);

impl Engine {
    /// Opens a formatted volume. `storage` is opened by the caller (from the volume record,
    /// possibly with overrides) and checked.
    pub fn start(
        meta: Arc<dyn KvStore>,
        storage: Arc<ObjectStorage>,
        volume: VolumeRecord,
        config: EngineConfig,
    ) -> Result<Arc<Engine>> {
        let locks = Arc::new(match &config.shared_locks {
            Some(shared) => {
                crate::locks::LockTable::shared(shared.clone(), config.lock_wait_max_backoff)?
            }
            None => crate::locks::LockTable::local(config.lock_wait_max_backoff),
        });
        let holds = match &config.shared_locks {
            Some(shared) if meta.is_shared() => {
                Some(Arc::new(Holds::new(shared.session_id.clone())))
            }
            _ => None,
        };
        let lease = match &holds {
            Some(h) => Some(BackgroundLease {
                session: h.session.clone(),
                ttl_s: session_timeout_s(meta.as_ref(), &h.session)?,
                seen: Mutex::new(None),
            }),
            None => None,
        };
        let meta = Arc::new(crate::meta::Meta::new(meta));
        let writeback = config.staging.as_ref().map(|o| {
            Arc::new(Uploader::new(
                o.uploads.clone(),
                storage.clone(),
                config.max_uploads,
            ))
        });
        let counters = Arc::new(Counters::default());
        let reader = ObjectReader::start(
            meta.clone(),
            storage.clone(),
            &volume,
            &ReaderConfig {
                block_cache_bytes: config.block_cache_bytes,
                disk_cache: config.disk_cache.as_ref(),
                readahead_bytes: config.readahead_bytes,
                readahead_threads: config.readahead_threads,
                pack_fetch: config.pack_fetch,
            },
            writeback.clone(),
            counters.clone(),
        )?;
        if let (Some(settings), Some(uploader)) = (&config.peer, &writeback)
            && meta.store().is_shared()
        {
            let secret = crate::peers::volume_secret(meta.store())?;
            let uuid =
                uuid::Uuid::parse_str(&volume.uuid).map_err(|source| FsError::VolumeUuid {
                    uuid: volume.uuid.clone(),
                    source,
                })?;
            let peers = crate::peers::Peers::start(
                meta.clone(),
                uploader.clone(),
                *uuid.as_bytes(),
                &secret,
                settings,
            )?;
            let _ = reader.peers.set(peers);
        }
        let slice_ids = Arc::new(IdAllocator::new(schema::NEXT_SLICE_KEY, SLICE_ID_BATCH));
        let stop = Arc::new(StopSignal::default());
        let reclaim = Reclaimer {
            meta: meta.clone(),
            storage: storage.clone(),
            reader: reader.clone(),
            uploader: writeback.clone(),
            counters: counters.clone(),
            slice_ids: slice_ids.clone(),
            block_size: volume.block_size,
            stop: stop.clone(),
            gc_lock: Mutex::new(()),
            collecting: Mutex::new(()),
            max_deletes: config.max_deletes,
        };
        let upload_catalog = Arc::new(UploadCatalog {
            meta: meta.clone(),
            slice_ids: slice_ids.clone(),
            reader: reader.clone(),
            counters: counters.clone(),
            stop: stop.clone(),
            block_size: volume.block_size as usize,
            commit_turn: parking_lot::Mutex::new(()),
        });
        let write = WritePath {
            meta: meta.clone(),
            storage: storage.clone(),
            uploader: writeback.clone(),
            slice_ids,
            counters: counters.clone(),
            stop: stop.clone(),
            block_size: volume.block_size as usize,
            chunk_size: volume.chunk_size,
            max_dirty_per_file: config.max_dirty_per_file,
            max_uploads: config.max_uploads,
            namespace_log: config.staging.as_ref().and_then(|s| s.wal.clone()),
            sync_marks: RwLock::new(Default::default()),
            run_buffers: Default::default(),
        };
        let engine = Arc::new(Engine {
            reader,
            meta,
            storage,
            volume,
            writeback,
            config,
            inode_ids: IdAllocator::new(schema::NEXT_INO_KEY, INODE_ID_BATCH),
            open: OpenFiles::default(),
            write,
            dirs: Mutex::new(HashMap::new()),
            counters,
            reclaim,
            upload_catalog,
            stop,
            background: Mutex::new(Vec::new()),
            opened_as: Mutex::new(HashMap::new()),
            shut_down: Mutex::new(false),
            locks,
            holds,
            lease,
            own_dir_attrs: Mutex::new(HashMap::new()),
            pending_atimes: Mutex::new(HashMap::new()),
        });
        let session = engine.holds.as_ref().map(|h| h.session.clone());
        engine.meta.store().update(Durability::Durable, &mut |t| {
            namespace::init(t, session.as_deref())
        })?;
        let marks = engine.view(namespace::sync_marks)?;
        *engine.write.sync_marks.write() = marks;
        if let Some(wb) = engine.writeback.as_ref() {
            let replayed = engine
                .config
                .staging
                .as_ref()
                .map(|s| s.replayed.clone())
                .unwrap_or_default();
            crate::writeback::replay_staged(&engine.meta, wb, &replayed)?;
        }
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|source| FsError::Spawn {
                    what: "a background thread",
                    source,
                })
        };
        // The engine's own loops: each holds it weakly (it is dropped while they run) and
        // watches its stop signal.
        let spawn_engine_loop = |name: &str, body: fn(std::sync::Weak<Engine>, Arc<StopSignal>)| {
            let weak = Arc::downgrade(&engine);
            let stop = engine.stop.clone();
            spawn(name.into(), Box::new(move || body(weak, stop)))
        };
        let mut threads = vec![spawn_engine_loop("spoolfs-bg", background_loop)?];
        if engine.config.compaction.is_some() {
            threads.push(spawn_engine_loop("spoolfs-compact", compactor_loop)?);
        }
        if let Some(wb) = engine.writeback.as_ref() {
            for i in 0..wb.opts.upload_threads {
                let weak = Arc::downgrade(&engine.upload_catalog);
                let wb = wb.clone();
                threads.push(spawn(
                    format!("spoolfs-up{i}"),
                    Box::new(move || run_uploader(weak, wb)),
                )?);
            }
        }
        if engine.holds.is_some() {
            threads.push(spawn_engine_loop("spoolfs-holds", holds_loop)?);
        }
        *engine.background.lock() = threads;
        Ok(engine)
    }

    pub fn volume(&self) -> &VolumeRecord {
        &self.volume
    }

    fn blksize(&self) -> u32 {
        self.volume.block_size.min(1 << 20) as u32
    }

    fn chunk_size(&self) -> u64 {
        self.volume.chunk_size
    }

    fn refuse_after_shutdown(&self) -> Result<()> {
        self.meta.refuse_if_closed()
    }

    pub(crate) fn stopping_now(&self) -> bool {
        self.stop.now()
    }

    /// The engine is shutting down: long background work should stop.
    fn stopping(&self) -> bool {
        self.stopping_now() || self.stop.is_raised()
    }

    pub(crate) fn view<T>(&self, f: impl Fn(&dyn KvRead) -> Result<T, MetaError>) -> Result<T> {
        self.meta.view(f)
    }

    pub(crate) fn update<T>(
        &self,
        f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<T> {
        self.meta.update(f)
    }

    /// [`Self::update`] through the namespace log without waiting for its record
    /// ([`crate::wal::WalStore::update_deferred`]): `f`'s result and the number to wait for.
    fn update_deferred<T>(
        &self,
        wal: &crate::wal::WalStore,
        f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<(T, u64)> {
        self.update_not_waiting(|g| wal.update_deferred(g), f)
    }

    /// [`Self::update_deferred`] with the record held back until the next one the namespace
    /// log writes ([`crate::wal::WalStore::update_held`]).
    fn update_held<T>(
        &self,
        wal: &crate::wal::WalStore,
        f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<(T, u64)> {
        self.update_not_waiting(|g| wal.update_held(g), f)
    }

    /// Runs `f` through `update` (a [`crate::wal::WalStore`] call that does not wait for the
    /// device): `f`'s result and the number to wait for.
    fn update_not_waiting<T>(
        &self,
        update: impl FnOnce(spoolfs_metadata::UpdateFn<'_>) -> spoolfs_metadata::Result<u64>,
        mut f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<(T, u64)> {
        self.meta.guarded(|| {
            let mut out = None;
            let seq = update(&mut |t| {
                out = Some(f(t)?);
                Ok(())
            })?;
            Ok((out.expect("update ran"), seq))
        })
    }

    /// Attributes of an inode read earlier as `rec`. For an open file the record is read again
    /// under the file's state lock, so that a flush committing between the two reads cannot
    /// make a stale size pass for the current one.
    fn attr_of(&self, ino: Ino, rec: &InodeRec) -> Attr {
        let mut attr = self.attr_unmoved(ino, rec);
        if let Some(&(atime_ns, _, _)) = self.pending_atimes.lock().get(&ino) {
            attr.atime = attr.atime.max(schema::from_ns(atime_ns));
        }
        attr
    }

    /// [`Engine::attr_of`] without the access times not yet written.
    fn attr_unmoved(&self, ino: Ino, rec: &InodeRec) -> Attr {
        if rec.kind == FileKind::File
            && let Some(state) = self.state_of(ino)
        {
            let st = state.read();
            if let Ok(fresh) = self.view(|r| schema::must_inode(r, ino)) {
                return overlaid(to_attr(ino, &fresh, self.blksize()), &st);
            }
        }
        to_attr(ino, rec, self.blksize())
    }

    // ---------------------------------------------------------------- pins and handles

    pub(crate) fn pin(&self, ino: Ino, handle: bool) -> Arc<RwLock<FileState>> {
        self.open.pin(ino, handle)
    }

    pub(crate) fn unpin(&self, ino: Ino, handle: bool) -> bool {
        self.open.unpin(ino, handle)
    }

    // ---------------------------------------------------------------- namespace

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(FsError::new(
                libc::ENAMETOOLONG,
                "name longer than 255 bytes",
            ));
        }
        if name == b"." {
            return self.lookup_ino(parent);
        }
        let (ino, rec) = self.view(|r| namespace::lookup(r, parent, name))?;
        if rec.kind == FileKind::File {
            // Files opened one after another: their neighbours are fetched ahead.
            self.reader.note_lookup(parent);
        }
        Ok(self.attr_of(ino, &rec))
    }

    /// A lookup by inode number alone: the kernel's export support (`open_by_handle_at`, NFS
    /// re-export) asks for "." in an inode of any kind whose handle it was given. An inode
    /// with no name left is gone for that purpose (the kernel answers ESTALE).
    fn lookup_ino(&self, ino: Ino) -> Result<Attr> {
        let rec = self.view(|r| schema::must_inode(r, ino))?;
        if rec.nlink == 0 {
            return Err(FsError::new(
                libc::ENOENT,
                format!("inode {ino} was removed"),
            ));
        }
        Ok(self.attr_of(ino, &rec))
    }

    /// The kernel dropped `nlookup` references to `ino`. Inode lifetimes follow links and open
    /// handles, so there is nothing to do.
    pub fn forget(&self, _ino: Ino, _nlookup: u64) {}

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some(rec) = self.own_dir_attrs_of(ino) {
            return Ok(self.attr_of(ino, &rec));
        }
        if let Some(state) = self.state_of(ino) {
            // Open here: one read under the file's state lock (see `attr_of`).
            let st = state.read();
            let rec = self.view(|r| schema::must_inode(r, ino))?;
            return Ok(overlaid(to_attr(ino, &rec, self.blksize()), &st));
        }
        let rec = self.view(|r| schema::must_inode(r, ino))?;
        Ok(self.attr_of(ino, &rec))
    }

    pub fn setattr(&self, caller: &Caller, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.own_dir_attrs.lock().remove(&ino);
        let state = self.pin(ino, false);
        let result = self.setattr_pinned(caller, ino, set, &state);
        self.unpin(ino, false);
        result
    }

    fn setattr_pinned(
        &self,
        caller: &Caller,
        ino: Ino,
        set: &SetAttr,
        state: &Arc<RwLock<FileState>>,
    ) -> Result<Attr> {
        let mut state = state.write();
        let chunk_size = self.chunk_size();
        // Writeback on an exclusive volume: an attribute change of a regular file (not a size
        // change, which frees data) returns once its namespace record is submitted, as a
        // create does; the file's close, an fsync, any later call that waits for the namespace
        // log (the log is ordered) or the next checkpoint waits for it. `tar x` and `cp -p`
        // set the times, owner and mode of each file through its descriptor before closing
        // it, pip after closing it: either way one wait per file, at its close, not four. A
        // directory's or a link's change has no close to carry it, and waits.
        let defer = match (set.size, self.write.deferring_log()) {
            (None, Some(wal))
                if self.view(|r| schema::must_inode(r, ino))?.kind == FileKind::File =>
            {
                Some(wal)
            }
            _ => None,
        };
        let Some(wal) = defer else {
            // Settle buffered data first so sizes and times below apply on top of it.
            self.write.flush_locked(ino, &mut state, false)?;
            let rec = self.update(|t| namespace::setattr(t, caller, ino, set, chunk_size))?;
            return Ok(to_attr(ino, &rec, self.blksize()));
        };
        // Buffered data stays buffered: the change leaves size and data alone, and the flush
        // that commits the data keeps what the change wrote (it rewrites only size and times,
        // taken from the overlay, which takes the change's times here).
        let (rec, seq) = self.update_held(&wal, |t| {
            namespace::setattr(t, caller, ino, set, chunk_size)
        })?;
        state.note_unlogged(seq);
        // The next write reads the permission bits and capabilities this change may have set.
        state.forget_known();
        state.take_attr_change(set.mtime.is_some(), rec.mtime_ns, rec.ctime_ns);
        Ok(overlaid(to_attr(ino, &rec, self.blksize()), &state))
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let rec = self.view(|r| schema::must_inode(r, ino))?;
        if rec.kind != FileKind::Symlink {
            return Err(FsError::new(libc::EINVAL, "not a symbolic link"));
        }
        Ok(rec.target)
    }

    /// Creates an inode and its directory entry in one transaction, also recording `hold`'s
    /// hold of the new inode when there is one.
    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u32,
        target: &[u8],
        hold: Option<&Holds>,
    ) -> Result<(Ino, InodeRec)> {
        self.make_node_deferred(caller, parent, name, kind, (perm, rdev, target), hold, None)
            .map(|(ino, rec, _)| (ino, rec))
    }

    /// [`Self::make_node`] that, given the namespace log in `defer`, returns without waiting
    /// for the device: also returns the number to wait for (see `WalStore::wait_logged`; 0:
    /// nothing to wait for).
    #[allow(clippy::too_many_arguments)]
    fn make_node_deferred(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        (perm, rdev, target): (u32, u32, &[u8]),
        hold: Option<&Holds>,
        defer: Option<Arc<crate::wal::WalStore>>,
    ) -> Result<(Ino, InodeRec, u64)> {
        schema::check_name(name)?;
        let ino = self.inode_ids.next(self.meta.store())?;
        let keep_parent = self.keeps_own_dir_attrs();
        let node = NewNode {
            kind,
            perm,
            rdev,
            target,
        };
        let body = |t: &mut dyn KvTxn| {
            // A fresh id: nothing is stored under its prefixes yet, which a shared store may
            // remember, so that the first close reads the empty chunk map without a round trip.
            let mut prefixes = vec![
                schema::chunk_prefix(ino),
                schema::xattr_prefix(ino),
                holds::hold_prefix(ino),
            ];
            if kind == FileKind::Dir {
                prefixes.push(schema::dentry_prefix(ino));
            }
            for prefix in &prefixes {
                t.note_empty(prefix, &spoolfs_metadata::prefix_end(prefix));
            }
            let rec = namespace::make_node(t, caller, parent, name, ino, &node)?;
            if let Some(h) = hold {
                holds::put_hold(t, ino, &h.session)?;
            }
            Ok((rec, dir_as_written(t, parent, keep_parent)?))
        };
        let (rec, prec, seq) = match defer {
            None => {
                let (rec, prec) = self.update(body)?;
                (rec, prec, 0)
            }
            Some(wal) => {
                let ((rec, prec), seq) = self.update_deferred(&wal, body)?;
                (rec, prec, seq)
            }
        };
        if let Some(prec) = prec {
            self.note_own_dir_attrs(parent, prec);
        }
        Ok((ino, rec, seq))
    }

    /// `mode` carries the file type bits (S_IFIFO, ...) and the permission bits, umask applied
    /// (or in `caller.umask`).
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        let kind = FileKind::from_mode(mode)
            .ok_or_else(|| FsError::new(libc::EINVAL, "unknown file type in mode"))?;
        if matches!(kind, FileKind::Dir | FileKind::Symlink) {
            return Err(FsError::new(
                libc::EINVAL,
                "mknod cannot make this file type",
            ));
        }
        let (ino, rec) = self.make_node(caller, parent, name, kind, mode, rdev, &[], None)?;
        Ok(to_attr(ino, &rec, self.blksize()))
    }

    /// `mode`: permission bits, umask applied (or in `caller.umask`).
    pub fn mkdir(&self, caller: &Caller, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let (ino, rec) = self.make_node(caller, parent, name, FileKind::Dir, mode, 0, &[], None)?;
        Ok(to_attr(ino, &rec, self.blksize()))
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr> {
        if target.is_empty() {
            return Err(FsError::new(libc::ENOENT, "empty symlink target"));
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::new(libc::ENAMETOOLONG, "symlink target too long"));
        }
        let (ino, rec) = self.make_node(
            caller,
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            target,
            None,
        )?;
        Ok(to_attr(ino, &rec, self.blksize()))
    }

    /// Whether `ino`, losing its last name in transaction `r`, is open here (then marked so
    /// that its last close here deletes it) or, on a shared volume, held open by any mount.
    fn still_open(&self, r: &dyn KvRead, ino: Ino) -> Result<bool, MetaError> {
        if self.open.keep_unlinked(ino) {
            return Ok(true);
        }
        match &self.holds {
            Some(_) => holds::is_held(r, ino),
            None => Ok(false),
        }
    }

    pub fn unlink(&self, _caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        let keep_parent = self.keeps_own_dir_attrs();
        let prec = self.update(|t| {
            namespace::remove_entry(t, parent, name, false, &|r, ino| self.still_open(r, ino))?;
            dir_as_written(t, parent, keep_parent)
        })?;
        if let Some(prec) = prec {
            self.note_own_dir_attrs(parent, prec);
        }
        Ok(())
    }

    pub fn rmdir(&self, _caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(FsError::new(libc::EINVAL, "cannot remove \".\""));
        }
        if name == b".." {
            return Err(FsError::new(libc::ENOTEMPTY, "cannot remove \"..\""));
        }
        // The removed directory's own attributes change too (its link count).
        self.own_dir_attrs.lock().clear();
        self.update(|t| {
            namespace::remove_entry(t, parent, name, true, &|r, ino| self.still_open(r, ino))
        })
    }

    pub fn rename(
        &self,
        _caller: &Caller,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.noreplace && flags.exchange {
            return Err(FsError::new(
                libc::EINVAL,
                "RENAME_NOREPLACE with RENAME_EXCHANGE",
            ));
        }
        let keep = self.keeps_own_dir_attrs();
        let written = self.update(|t| {
            let still_open = |r: &dyn KvRead, ino| self.still_open(r, ino);
            namespace::rename(t, parent, name, new_parent, new_name, flags, &still_open)?;
            // What the transaction wrote, read back from it (no round trip).
            let mut moved = vec![schema::get_dentry(t, new_parent, new_name)?];
            if flags.exchange {
                moved.push(schema::get_dentry(t, parent, name)?);
            }
            if moved.iter().flatten().any(|d| d.kind == FileKind::Dir) {
                return Ok(None);
            }
            let from = dir_as_written(t, parent, keep)?;
            let to = match new_parent == parent {
                true => None,
                false => dir_as_written(t, new_parent, keep)?,
            };
            Ok(Some((from, to)))
        })?;
        match written {
            // A moved directory's own attributes change too (its ctime, its parent).
            None => self.own_dir_attrs.lock().clear(),
            // The kernel asks for the attributes of the directories next: this mount knows them.
            Some((from, to)) => {
                for (dir, rec) in [(parent, from), (new_parent, to)] {
                    if let Some(rec) = rec {
                        self.note_own_dir_attrs(dir, rec);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn link(
        &self,
        _caller: &Caller,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Attr> {
        schema::check_name(new_name)?;
        let rec = self.update(|t| namespace::link(t, ino, new_parent, new_name))?;
        Ok(self.attr_of(ino, &rec))
    }

    // ---------------------------------------------------------------- open files

    /// Opens a file; `flags` are the open(2) flags (O_TRUNC is honoured here). Returns a handle.
    pub fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> Result<u64> {
        self.open_file(caller, ino, flags).map(|(fh, _)| fh)
    }

    /// `open`, and whether the kernel may keep the file's cached pages. On an exclusive volume
    /// always (every change to the file went through this mount's kernel, which kept its pages
    /// up to date). On a shared one when the file is opened for reading and its size and mtime
    /// are what they were at its previous open here (close-to-open consistency: a change made
    /// anywhere since then drops the cache). Never when the next read must move the access
    /// time: that read must reach the engine.
    pub fn open_file(&self, caller: &Caller, ino: Ino, flags: i32) -> Result<(u64, bool)> {
        let (fh, rec) = self.open_inner(caller, ino, flags)?;
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let buffered = self
            .state_of(ino)
            .is_some_and(|s| s.read().overlay().is_some());
        let now = (rec.mtime_ns, rec.size);
        // Reads served from the kernel's page cache never reach the engine: when the next
        // read must move the access time, the cache is dropped so that the read comes here.
        let atime_due = self.config.atime.read_updates(
            rec.atime_ns,
            rec.mtime_ns,
            rec.ctime_ns,
            schema::now_ns(),
        );
        if !self.meta.store().is_shared() {
            return Ok((fh, !atime_due && rec.kind == FileKind::File));
        }
        let mut seen = self.opened_as.lock();
        let keep = !writing && !buffered && !atime_due && seen.get(&ino) == Some(&now);
        if seen.len() >= 1 << 16 && !seen.contains_key(&ino) {
            // Bounded: forgetting only costs a re-read.
            seen.clear();
        }
        seen.insert(ino, now);
        Ok((fh, keep && rec.kind == FileKind::File))
    }

    /// Copies a packed slice out of its locally cached pack into a cache file of its own (a
    /// passthrough open needs a file holding exactly the slice), and opens it.
    fn cache_own_file(
        &self,
        disk: &crate::diskcache::DiskCache,
        slice: u64,
    ) -> Option<std::fs::File> {
        let v = self.view(|r| r.get(&schema::packed_key(slice))).ok()??;
        let p: schema::PackedRec = schema::decode("packed slice", &v).ok()?;
        let b = disk.get_packed_slice(p.pack, p.offset, p.len, p.crc)?;
        disk.insert(BlockId::whole(slice), &b);
        disk.file(BlockId::whole(slice))
    }

    /// A local file holding exactly the current contents of `ino`, for a FUSE passthrough
    /// open: when the file is one slice, already in the local data cache (checked now), not
    /// staged, with no buffered writes and not open for writing on this node.
    pub fn passthrough_source(&self, ino: Ino) -> Option<std::fs::File> {
        let disk = self.reader.disk.as_ref()?;
        if self.open.has_writer(ino) {
            return None;
        }
        if self
            .state_of(ino)
            .is_some_and(|s| s.read().overlay().is_some())
        {
            return None;
        }
        let (rec, segs) = self
            .view(|r| {
                let rec = schema::must_inode(r, ino)?;
                let segs = data::load(r, ino, 0, 0, u32::MAX)?;
                Ok((rec, segs))
            })
            .ok()?;
        let [s] = segs.as_slice() else {
            return None;
        };
        let whole = rec.kind == FileKind::File
            && rec.size > 0
            && s.pos == 0
            && s.off == 0
            && s.len as u64 == rec.size
            && s.size as u64 == rec.size
            && rec.size <= self.volume.block_size.min(self.chunk_size());
        if !whole
            || self
                .writeback
                .as_ref()
                .is_some_and(|wb| wb.get(s.id).is_some())
        {
            return None;
        }
        let file = disk
            .file(BlockId::whole(s.id))
            .or_else(|| disk.file(BlockId::block(s.id, 0)))
            .or_else(|| self.cache_own_file(disk, s.id))?;
        self.counters
            .passthrough_opens
            .fetch_add(1, Ordering::Relaxed);
        Some(file)
    }

    /// Opens a handle; returns it and the inode as it is after the open (O_TRUNC applied).
    fn open_inner(&self, caller: &Caller, ino: Ino, flags: i32) -> Result<(u64, InodeRec)> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        // Pinned first: from here no drop of this mount's hold of the inode starts.
        let state = self.pin(ino, true);
        let rec = match self.read_and_hold(ino) {
            Ok((rec, _)) if rec.kind == FileKind::Dir && writing => {
                Err(FsError::new(libc::EISDIR, "is a directory"))
            }
            other => other,
        };
        let (rec, has_caps) = match rec {
            Ok(read) => read,
            Err(e) => {
                self.unpin(ino, true);
                if let Some(h) = &self.holds {
                    h.queue_drop(ino);
                }
                return Err(e);
            }
        };
        let fh = self.open.new_handle(ino, writing);
        if flags & libc::O_TRUNC != 0 && writing && rec.kind == FileKind::File {
            let set = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            if let Err(e) = self.setattr(caller, ino, &set) {
                let _ = self.release(ino, fh);
                return Err(e);
            }
            return Ok((fh, self.view(|r| schema::must_inode(r, ino))?));
        }
        if writing && rec.kind == FileKind::File {
            // The first write starts from the inode as this open read it (close-to-open).
            state.write().set_known(KnownInode {
                size: rec.size,
                mtime_ns: rec.mtime_ns,
                ctime_ns: rec.ctime_ns,
                perm: rec.perm,
                has_caps,
            });
        }
        Ok((fh, rec))
    }

    /// The inode being opened (pinned as an open handle). On a shared volume, also records this
    /// mount's hold of it, in the same transaction, unless it is recorded already: an open
    /// costs one transaction either way. Also says whether the inode has capabilities (read
    /// in the same round trip), which the first write must drop.
    fn read_and_hold(&self, ino: Ino) -> Result<(InodeRec, bool)> {
        let (inode_key, caps_key) = (
            schema::inode_key(ino),
            schema::xattr_key(ino, schema::CAPS_XATTR),
        );
        let read = |r: &dyn KvRead| -> Result<(InodeRec, bool), MetaError> {
            r.prefetch(&[&inode_key, &caps_key], &[])?;
            Ok((schema::must_inode(r, ino)?, r.get(&caps_key)?.is_some()))
        };
        match &self.holds {
            Some(h) if h.need(ino) == HoldNeed::Write => {
                let read = self.update(|t| {
                    let read = read(t)?;
                    holds::put_hold(t, ino, &h.session)?;
                    Ok(read)
                })?;
                h.recorded(ino);
                Ok(read)
            }
            _ => self.view(read),
        }
    }

    /// Creates and opens a regular file. `mode`: permission bits, umask applied (or in
    /// `caller.umask`).
    pub fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, u64)> {
        // The new file is held by this mount from its creation (in the same transaction).
        let hold = self.holds.as_deref();
        // Writeback on an exclusive volume: the create does not wait for the device; the
        // file's close (or fsync, or any later call that waits for the namespace log) does.
        let defer = self.write.deferring_log();
        let made = self.make_node_deferred(
            caller,
            parent,
            name,
            FileKind::File,
            (mode, 0, &[]),
            hold,
            defer,
        );
        match made {
            Ok((ino, rec, seq)) => {
                let state = self.pin(ino, true);
                let mut state = state.write();
                // The first write starts from the inode as made here: no read of it.
                state.set_known(KnownInode {
                    size: rec.size,
                    mtime_ns: rec.mtime_ns,
                    ctime_ns: rec.ctime_ns,
                    perm: rec.perm,
                    has_caps: false,
                });
                state.note_unlogged(seq);
                drop(state);
                if let Some(h) = hold {
                    h.recorded(ino);
                }
                let fh = self.open.new_handle(ino, true);
                Ok((to_attr(ino, &rec, self.blksize()), fh))
            }
            Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                let attr = self.lookup(parent, name)?;
                if attr.kind == FileKind::Dir {
                    return Err(FsError::new(libc::EISDIR, "is a directory"));
                }
                let fh = self.open(caller, attr.ino, flags)?;
                Ok((self.getattr(attr.ino)?, fh))
            }
            Err(e) => Err(e),
        }
    }

    fn state_of(&self, ino: Ino) -> Option<Arc<RwLock<FileState>>> {
        self.open.state_of(ino)
    }

    /// Whether [`Engine::own_dir_attrs`] is in use: a shared store, a nonzero lifetime.
    fn keeps_own_dir_attrs(&self) -> bool {
        !self.config.own_dir_attr_ttl.is_zero() && self.meta.store().is_shared()
    }

    /// Remembers `dir`'s attributes as this mount's own transaction just committed them.
    fn note_own_dir_attrs(&self, dir: Ino, rec: InodeRec) {
        let mut map = self.own_dir_attrs.lock();
        if map.len() >= OWN_DIR_ATTRS_MAX {
            map.clear();
        }
        map.insert(dir, (rec, std::time::Instant::now()));
    }

    /// `dir`'s attributes as this mount last committed them, once, within their lifetime.
    fn own_dir_attrs_of(&self, dir: Ino) -> Option<InodeRec> {
        // Every getattr asks: no lock where nothing is ever kept (an exclusive volume).
        if !self.keeps_own_dir_attrs() {
            return None;
        }
        let (rec, at) = self.own_dir_attrs.lock().remove(&dir)?;
        (at.elapsed() < self.config.own_dir_attr_ttl).then_some(rec)
    }

    /// The inode is about to change here other than by a write: the next write reads it.
    fn forget_known(&self, ino: Ino) {
        self.own_dir_attrs.lock().remove(&ino);
        if let Some(state) = self.state_of(ino) {
            state.write().forget_known();
        }
    }

    pub fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let state = self.pin(ino, false);
        let result = self.read_pinned(ino, offset, size, &state);
        self.unpin(ino, false);
        if let (Ok(out), Some(ra)) = (&result, &self.reader.readahead)
            && !out.is_empty()
        {
            let len = out.len() as u64;
            let sequential = self.open.advance_stream(fh, offset, len);
            let bs = self.volume.block_size;
            // Once per block boundary crossed (and at the start of a stream), not per read.
            if sequential && (offset / bs != (offset + len) / bs || offset < len * 2) {
                self.reader.queue_readahead(ra, ino, offset + len);
            }
        }
        result
    }

    fn read_pinned(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        state: &Arc<RwLock<FileState>>,
    ) -> Result<Vec<u8>> {
        let state = state.read();
        let cs = self.chunk_size();
        let first_chunk = (offset / cs) as u32;
        let first_start = first_chunk as u64 * cs;
        let first_lo = (offset - first_start) as u32;
        let first_hi = (offset.saturating_add(size as u64) - first_start).min(cs) as u32;
        let inode_key = schema::inode_key(ino);
        let first_map = (
            schema::seg_key(ino, first_chunk, first_lo),
            schema::seg_key(ino, first_chunk, first_hi),
        );
        // The inode and the map of the part of the chunk the read starts in, in one round
        // trip on a networked store (a small file's whole read).
        let (rec, mut first_segs) = self.view(|r| {
            r.prefetch(&[&inode_key], &[(&first_map.0, &first_map.1)])?;
            let rec = schema::must_inode(r, ino)?;
            let file_size = state.overlay().map(|o| o.size).unwrap_or(rec.size);
            let end = file_size.min(offset.saturating_add(size as u64));
            let segs = if rec.kind == FileKind::File && offset < end {
                let hi = (end - first_start).min(cs) as u32;
                Some(data::load(r, ino, first_chunk, first_lo, hi)?)
            } else {
                None
            };
            Ok((rec, segs))
        })?;
        if rec.kind == FileKind::Dir {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        let file_size = state.overlay().map(|o| o.size).unwrap_or(rec.size);
        // The times a reader sees: buffered writes count as modifications.
        let (mtime_ns, ctime_ns) = state
            .overlay()
            .map_or((rec.mtime_ns, rec.ctime_ns), |o| (o.mtime_ns, o.ctime_ns));
        if size == 0 {
            return Ok(Vec::new());
        }
        if offset >= file_size {
            // A read at the end of the file is still a read (it moves atime on ext4).
            drop(state);
            self.maybe_update_atime(ino, rec.atime_ns, mtime_ns, ctime_ns);
            return Ok(Vec::new());
        }
        let end = file_size.min(offset + size as u64);
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let chunk = (pos / cs) as u32;
            let chunk_start = chunk as u64 * cs;
            let in_start = (pos - chunk_start) as u32;
            let in_end = ((end - chunk_start).min(cs)) as u32;
            let segs = match first_segs.take() {
                Some(segs) if chunk == first_chunk => segs,
                _ => self.view(|r| data::load(r, ino, chunk, in_start, in_end))?,
            };
            for piece in data::plan_read(&segs, in_start, in_end) {
                let dst_off = (chunk_start + piece.pos as u64 - offset) as usize;
                self.reader
                    .read_piece(&piece, &mut out[dst_off..dst_off + piece.len as usize])?;
            }
            // Pending writes are newer than anything stored.
            for (p_pos, p_data) in state.pending_in(chunk) {
                let p_end = p_pos + p_data.len() as u32;
                let lo = p_pos.max(in_start);
                let hi = p_end.min(in_end);
                if lo < hi {
                    let dst_off = (chunk_start + lo as u64 - offset) as usize;
                    out[dst_off..dst_off + (hi - lo) as usize]
                        .copy_from_slice(&p_data[(lo - p_pos) as usize..(hi - p_pos) as usize]);
                }
            }
            pos = chunk_start + in_end as u64;
        }
        drop(state);
        self.maybe_update_atime(ino, rec.atime_ns, mtime_ns, ctime_ns);
        Ok(out)
    }

    /// After a read: moves the access time if the mount's rule ([`AtimeMode`]) says so, given
    /// the times the reader saw (`mtime_ns`, `ctime_ns` include buffered writes).
    fn maybe_update_atime(&self, ino: Ino, atime_ns: i64, mtime_ns: i64, ctime_ns: i64) {
        let now = schema::now_ns();
        let rule = self.config.atime;
        if !rule.read_updates(atime_ns, mtime_ns, ctime_ns, now) {
            return;
        }
        if self.holds.is_some() {
            let mut pending = self.pending_atimes.lock();
            let entry = pending.entry(ino).or_insert((now, mtime_ns, ctime_ns));
            *entry = (
                entry.0.max(now),
                entry.1.max(mtime_ns),
                entry.2.max(ctime_ns),
            );
            return;
        }
        let r = self.update(|t| namespace::update_atime(t, ino, rule, (mtime_ns, ctime_ns), now));
        if let Err(e) = r {
            tracing::debug!("atime update of inode {ino} failed: {e}");
        }
    }

    /// Writes the access times reads moved here since the last call (shared stores), a few
    /// inodes per transaction. Like the reads' own updates on an exclusive volume, a failure
    /// is only logged.
    fn write_pending_atimes(&self) {
        // Left in the map until written: meanwhile this mount's attributes still show them.
        let pending: Vec<(Ino, (i64, i64, i64))> = self
            .pending_atimes
            .lock()
            .iter()
            .map(|(&ino, &times)| (ino, times))
            .collect();
        let rule = self.config.atime;
        for part in pending.chunks(crate::meta::SHARED_BATCH_ROWS) {
            let keys: Vec<Vec<u8>> = part
                .iter()
                .map(|(ino, _)| schema::inode_key(*ino))
                .collect();
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let r = self.update(|t| {
                t.prefetch(&keys, &[])?;
                for &(ino, (now, mtime_ns, ctime_ns)) in part {
                    namespace::update_atime(t, ino, rule, (mtime_ns, ctime_ns), now)?;
                }
                Ok(())
            });
            if let Err(e) = &r {
                tracing::debug!("atime update of {} inodes failed: {e}", part.len());
            }
            // Written, or given up (as a read's own update on an exclusive volume is); a read
            // that moved one again meanwhile stays for the next time.
            let mut map = self.pending_atimes.lock();
            for (ino, times) in part {
                if map.get(ino) == Some(times) {
                    map.remove(ino);
                }
            }
        }
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
        let _ = fh;
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(FsError::new(libc::EFBIG, "file too large"));
        }
        self.refuse_after_shutdown()?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let state = self.pin(ino, false);
        let result = self
            .write
            .write(caller, ino, offset, data, &mut state.write());
        self.unpin(ino, false);
        result
    }

    fn flush_inode(&self, ino: Ino) -> Result<()> {
        if let Some(state) = self.state_of(ino) {
            let mut state = state.write();
            self.write.flush_for_close(ino, &mut state)?;
            // With nothing to commit, the close still promises the file's create and
            // attribute changes made here.
            self.write.wait_changes_logged(&mut state)?;
        }
        Ok(())
    }

    /// Flushes the buffered writes of every open file (to staging or the object store).
    pub(crate) fn flush_all_open(&self) -> Result<()> {
        for ino in self.open.inodes() {
            self.flush_inode(ino)?;
        }
        Ok(())
    }

    /// Where the peer server listens and is advertised, and this node's id (shared volumes).
    pub fn peer_endpoint(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr, u64)> {
        self.reader
            .peers
            .get()
            .map(|p| (p.local_addr(), p.advertised(), p.node_id()))
    }

    /// Peer read counters (zero on an exclusive volume).
    pub fn peer_stats(&self) -> crate::peers::PeerStats {
        self.reader
            .peers
            .get()
            .map(|p| p.stats())
            .unwrap_or_default()
    }

    /// Whether new writes are acknowledged from the staging log.
    pub fn is_writeback(&self) -> bool {
        self.write.is_writeback()
    }

    /// close(2) of one descriptor: in standard mode, returns when the data is in the object store.
    pub fn flush(&self, ino: Ino, fh: u64) -> Result<()> {
        let writing = || self.open.is_writing(fh);
        if self.config.durable_close && self.is_writeback() && writing() {
            // `--durable-close`: what close promises is what fsync promises (a descriptor
            // opened for reading has nothing to make durable).
            return self.fsync(ino, fh, false);
        }
        self.flush_inode(ino)
    }

    /// Standard mode: data in the object store, all metadata durable. Writeback: data and
    /// metadata through the device cache (one flush covers the staging log and the namespace
    /// log, which live on the same device).
    pub fn fsync(&self, ino: Ino, fh: u64, datasync: bool) -> Result<()> {
        let _ = (fh, datasync);
        if let Some(state) = self.state_of(ino) {
            let mut state = state.write();
            if state.overlay().is_some() {
                self.write.flush_locked(ino, &mut state, true)?;
                return Ok(());
            }
        }
        if self.is_writeback() {
            self.meta.store().sync()?;
            Ok(())
        } else {
            self.persist_meta()
        }
    }

    pub(crate) fn persist_meta(&self) -> Result<()> {
        self.meta.persist()
    }

    pub fn release(&self, ino: Ino, fh: u64) -> Result<()> {
        if !self.open.remove_handle(ino, fh) {
            return Err(FsError::new(
                libc::EBADF,
                format!("unknown file handle {fh}"),
            ));
        }
        let flushed = self.flush_inode(ino);
        if let Err(e) = &flushed {
            crate::error_limited!("uploading inode {ino} at release failed: {e}");
        }
        let last_unlinked = self.unpin(ino, true);
        if let Some(h) = &self.holds {
            // Shared volume: the hold goes a moment later, off the close path, and with it the
            // inode if it is an orphan nobody else holds (see `holds_loop`).
            h.queue_drop(ino);
        } else if last_unlinked {
            // The last handle of an inode whose last name went while it was open: it goes now
            // (unless the unlink failed after all). Other closes need no transaction.
            self.update(|t| namespace::purge_if_unlinked(t, ino))?;
        }
        flushed
    }

    // ---------------------------------------------------------------- directories

    fn list_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        self.view(|r| namespace::list_dir(r, ino))
    }

    /// Opens a directory. Like an open file, an open directory outlives its removal (rmdir,
    /// or a rename over it): it goes at its last close.
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        let entries = self.list_dir(ino)?;
        self.pin(ino, true);
        let fh = self.open.next_fh();
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    /// Entries after cookie `offset` (0 = from the start), including "." and "..".
    /// The listing is a snapshot taken at opendir (and again at offset 0, for rewinddir).
    pub fn readdir(&self, ino: Ino, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        if offset == 0 {
            let fresh = self.list_dir(ino)?;
            self.dirs.lock().insert(fh, fresh);
            // In the background: the packs the listed files point at.
            self.reader.prefetch_dir(ino);
        }
        let dirs = self.dirs.lock();
        let entries = dirs
            .get(&fh)
            .ok_or_else(|| FsError::new(libc::EBADF, format!("unknown directory handle {fh}")))?;
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    pub fn releasedir(&self, ino: Ino, fh: u64) -> Result<()> {
        if self.dirs.lock().remove(&fh).is_none() {
            return Ok(());
        }
        if self.unpin(ino, true) {
            // Its last handle, and it was removed while open: it goes now.
            self.update(|t| namespace::purge_if_unlinked(t, ino))?;
        }
        Ok(())
    }

    pub fn fsyncdir(&self, ino: Ino) -> Result<()> {
        self.view(|r| namespace::must_dir(r, ino))?;
        self.persist_meta()
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let (used, inodes) = self.view(|r| {
            Ok((
                schema::get_u64(r, schema::USED_BYTES_KEY)?,
                schema::get_u64(r, schema::INODE_COUNT_KEY)?,
            ))
        })?;
        let bsize = 4096u64;
        let blocks = NOMINAL_CAPACITY_BYTES / bsize;
        let free = blocks.saturating_sub(used.div_ceil(bsize));
        Ok(StatFs {
            blocks,
            bfree: free,
            bavail: free,
            files: NOMINAL_INODES,
            ffree: NOMINAL_INODES.saturating_sub(inodes),
            bsize: bsize as u32,
            namelen: NAME_MAX as u32,
            frsize: bsize as u32,
        })
    }

    // ---------------------------------------------------------------- xattrs

    pub fn setxattr(
        &self,
        _caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrSet,
    ) -> Result<()> {
        let rec = self.view(|r| schema::must_inode(r, ino))?;
        namespace::check_xattr_name(name, rec.kind)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(FsError::new(libc::E2BIG, "attribute value too large"));
        }
        if name == schema::CAPS_XATTR {
            // Writes check for capabilities once per flush: settle the pending ones, so
            // that the next write removes what is set now.
            self.flush_inode(ino)?;
        }
        self.forget_known(ino);
        let acl = if acl::is_acl_name(name) {
            Some(acl::Acl::parse(value)?)
        } else {
            None
        };
        self.update(|t| namespace::setxattr(t, ino, name, value, mode, acl.as_ref()))?;
        if name == schema::SYNC_UPLOAD_XATTR {
            self.write.sync_marks.write().insert(ino);
        }
        Ok(())
    }

    /// The value; the front end answers size queries from its length.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        namespace::check_xattr_name_len(name)?;
        // The kernel asks for the capabilities before every write(2): a file being written
        // here is known to have none (its first write dropped them).
        if name == schema::CAPS_XATTR
            && self
                .state_of(ino)
                .is_some_and(|s| s.read().surely_without_caps())
        {
            return Err(FsError::new(libc::ENODATA, "no such attribute"));
        }
        self.view(|r| namespace::getxattr(r, ino, name))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.view(|r| namespace::listxattr(r, ino))
    }

    pub fn removexattr(&self, _caller: &Caller, ino: Ino, name: &[u8]) -> Result<()> {
        namespace::check_xattr_name_len(name)?;
        self.forget_known(ino);
        self.update(|t| namespace::removexattr(t, ino, name))?;
        if name == schema::SYNC_UPLOAD_XATTR {
            self.write.sync_marks.write().remove(&ino);
        }
        Ok(())
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
        let _ = fh;
        if length == 0 {
            return Err(FsError::new(libc::EINVAL, "zero length"));
        }
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if mode == 0 || mode == KEEP {
            // Allocating more than statfs says is free is ENOSPC, as on a local file system
            // (checked before the size limit, which is the nominal capacity).
            let size = self.getattr(ino)?.size;
            let wanted = offset.saturating_add(length).saturating_sub(size);
            let st = self.statfs()?;
            if wanted > st.bavail.saturating_mul(st.frsize as u64) {
                return Err(FsError::new(
                    libc::ENOSPC,
                    "fallocate: more than the free space",
                ));
            }
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or_else(|| FsError::new(libc::EFBIG, "file too large"))?;
        let rec = self.view(|r| schema::must_inode(r, ino))?;
        if rec.kind == FileKind::Dir {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        if rec.kind != FileKind::File {
            return Err(FsError::new(libc::ENODEV, "not a regular file"));
        }
        self.forget_known(ino);
        if matches!(mode, 0 | KEEP | PUNCH) {
            // Like ext4, which calls file_modified() for every mode.
            self.write.drop_privileges(caller, ino)?;
        }
        match mode {
            0 => {
                let size = self.getattr(ino)?.size;
                if end > size {
                    let set = SetAttr {
                        size: Some(end),
                        ..Default::default()
                    };
                    self.setattr(caller, ino, &set)?;
                }
                Ok(())
            }
            KEEP => Ok(()),
            PUNCH => {
                let state = self.pin(ino, false);
                let result = (|| {
                    let mut st = state.write();
                    self.write.flush_locked(ino, &mut st, false)?;
                    let cs = self.chunk_size();
                    self.update(|t| namespace::punch_hole(t, ino, offset, end, cs))
                })();
                self.unpin(ino, false);
                result
            }
            _ => Err(FsError::new(
                libc::EOPNOTSUPP,
                "fallocate mode not supported",
            )),
        }
    }

    // ---------------------------------------------------------------- lifecycle

    /// The cheap part of the engine's state (no metadata scan), for the metrics exporter.
    pub fn metrics(&self) -> EngineMetrics {
        let cache = self.reader.cache.usage();
        let wal_stats = self.namespace_log_stats().unwrap_or_default();
        let mut m = EngineMetrics {
            writeback: self.is_writeback(),
            open_files: self.open.handle_count() as u64,
            dirty_bytes: self.counters.dirty_bytes.load(Ordering::Relaxed),
            objects_put: self.counters.objects_put.load(Ordering::Relaxed),
            objects_got: self.counters.objects_got.load(Ordering::Relaxed),
            cache_bytes: cache.bytes,
            cache_blocks: cache.blocks,
            cache_capacity_bytes: cache.capacity_bytes,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            metadata_unapplied_changes: self.meta.store().unapplied_changes(),
            namespace_log_waits: wal_stats.device_waits,
            namespace_log_deferred: wal_stats.deferred,
            pack_fetch: self.reader.pack_fetch_stats().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(wb) = self.writeback.as_ref() {
            {
                let set = wb.set.lock();
                m.staged_bytes = set.bytes;
                m.staged_slices = set.map.len() as u64;
                m.oldest_staged_age_secs = set
                    .map
                    .values()
                    .map(|r| r.rec.staged_ns)
                    .min()
                    .map(|ns| (schema::now_ns() - ns).max(0) as f64 / 1e9)
                    .unwrap_or(0.0);
                m.upload_queue_slices = set.queue.len() as u64;
                m.uploading_slices = set.busy as u64;
                m.upload_errors = set.upload_errors;
            }
            let st = &wb.stats;
            m.uploaded_bytes = st.uploaded_bytes.load(Ordering::Relaxed);
            m.uploaded_slices = st.uploaded_slices.load(Ordering::Relaxed);
            m.backpressure_waits = st.backpressure_waits.load(Ordering::Relaxed);
            m.backpressure_timeouts = st.backpressure_timeouts.load(Ordering::Relaxed);
            m.staging_bypassed_slices = st.bypassed.load(Ordering::Relaxed);
            m.upload_rate_bytes_per_sec = wb.upload_rate();
            m.engine_threads = wb.opts.log.threads() as u64;
            m.engine_queue_depths = wb
                .opts
                .log
                .queue_depths()
                .into_iter()
                .map(|d| d as u64)
                .collect();
            m.staging = Some(wb.opts.log.usage());
        }
        m
    }

    /// What the background thread watches to see the mount idle: write requests, objects
    /// put and got, staged bytes.
    fn activity(&self) -> [u64; 4] {
        let staged = self.writeback.as_ref().map_or(0, |wb| wb.set.lock().bytes);
        [
            self.counters.writes.load(Ordering::Relaxed),
            self.counters.objects_put.load(Ordering::Relaxed),
            self.counters.objects_got.load(Ordering::Relaxed),
            staged,
        ]
    }

    /// Frees the buffers kept for the next large write (run and record buffers) and has the
    /// allocator return its free memory to the system: after a burst of writes or reads the
    /// memory it used would otherwise stay with the process (hundreds of MiB after a
    /// checkpoint). The next large write pays for fresh memory again. Returns the bytes of
    /// kept buffers freed.
    pub fn release_idle_memory(&self) -> u64 {
        let freed = self.write.release_kept_buffers();
        let before = resident_bytes();
        // SAFETY: malloc_trim only returns free memory of the allocator's own to the system.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(
            "idle: freed {freed} bytes of kept write buffers; resident memory {} -> {} bytes",
            before.unwrap_or(0),
            resident_bytes().unwrap_or(0)
        );
        freed
    }

    /// Bytes of the buffers kept for the next large write (see [`Self::release_idle_memory`]).
    pub fn kept_buffer_bytes(&self) -> u64 {
        self.write.kept_buffer_bytes()
    }

    /// `spoolfs warmup`: fetches the data of every regular file under `path` (names from the
    /// root, `/`-separated) into the local data cache, whole packs at a time, with `jobs`
    /// fetches at once. `progress` sees how far it is now and then.
    pub fn warm(
        &self,
        path: &[u8],
        jobs: usize,
        progress: &mut dyn FnMut(&crate::packfetch::WarmReport),
    ) -> Result<crate::packfetch::WarmReport> {
        let mut top = ROOT_INO;
        for name in path
            .split(|b| *b == b'/')
            .filter(|n| !n.is_empty() && *n != b".")
        {
            top = self.lookup(top, name)?.ino;
        }
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        match self.getattr(top)?.kind {
            FileKind::File => files.push(top),
            FileKind::Dir => dirs.push(top),
            _ => {}
        }
        while let Some(dir) = dirs.pop() {
            if self.stopping() {
                return Err(FsError::new(libc::ESHUTDOWN, "the mount is stopping"));
            }
            for entry in self.list_dir(dir)? {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                match entry.kind {
                    FileKind::File => files.push(entry.ino),
                    FileKind::Dir => dirs.push(entry.ino),
                    _ => {}
                }
            }
        }
        self.reader.warm(&files, jobs, progress)
    }

    /// The data losses replay has recorded (see [`crate::losses::DataLoss`]), oldest first.
    pub fn data_losses(&self) -> Result<Vec<crate::losses::DataLoss>> {
        self.meta.view(crate::losses::list)
    }

    /// Dead slices whose objects are still to be deleted (their `G` records).
    pub fn pending_deletes(&self) -> Result<u64> {
        self.view(count_dead)
    }

    /// How often calls waited for the namespace log's device (`None`: no namespace log, as
    /// on a shared volume).
    pub fn namespace_log_stats(&self) -> Option<crate::wal::WalStats> {
        let wal = self.write.namespace_log.as_ref()?.upgrade()?;
        Some(wal.stats())
    }

    pub fn status(&self) -> EngineStatus {
        let (used, inodes, pending_deletes) = self
            .view(|r| {
                Ok((
                    schema::get_u64(r, schema::USED_BYTES_KEY)?,
                    schema::get_u64(r, schema::INODE_COUNT_KEY)?,
                    count_dead(r)?,
                ))
            })
            .unwrap_or((0, 0, 0));
        let m = self.metrics();
        let staging = m.staging.as_ref();
        let drain_eta_secs = if m.staged_bytes == 0 {
            Some(0.0)
        } else if m.upload_rate_bytes_per_sec > 0.0 {
            Some(m.staged_bytes as f64 / m.upload_rate_bytes_per_sec)
        } else {
            None
        };
        EngineStatus {
            volume_name: self.volume.name.clone(),
            volume_uuid: self.volume.uuid.clone(),
            mode: if m.writeback {
                "writeback".into()
            } else {
                "standard".into()
            },
            metadata: self.meta.store().describe(),
            storage: self.storage.describe().to_string(),
            open_files: m.open_files,
            inodes,
            used_bytes: used,
            dirty_bytes: m.dirty_bytes,
            objects_put: m.objects_put,
            objects_got: m.objects_got,
            pending_deletes,
            staged_bytes: m.staged_bytes,
            staged_slices: m.staged_slices,
            oldest_staged_age_secs: m.oldest_staged_age_secs,
            upload_errors: m.upload_errors,
            staging: staging.map(|u| {
                format!(
                    "{} io engine, {} of {} bytes used",
                    u.io_engine, u.used_bytes, u.capacity_bytes
                )
            }),
            upload_rate_bytes_per_sec: m.upload_rate_bytes_per_sec,
            drain_eta_secs,
            uploaded_bytes: m.uploaded_bytes,
            upload_queue_slices: m.upload_queue_slices,
            backpressure_events: m.backpressure_waits,
            staging_bypassed_slices: m.staging_bypassed_slices,
            background_lease: self
                .lease
                .as_ref()
                .map(|l| l.seen.lock().is_some_and(|(_, held)| held)),
            staging_used_bytes: staging.map_or(0, |u| u.used_bytes),
            staging_capacity_bytes: staging.map_or(0, |u| u.capacity_bytes),
            engine_threads: m.engine_threads,
            io_engine: staging.map(|u| u.io_engine.to_string()).unwrap_or_default(),
            cache_bytes: m.cache_bytes,
            cache_capacity_bytes: m.cache_capacity_bytes,
            cache_hits: m.cache_hits,
            cache_misses: m.cache_misses,
            staging_log_bytes: staging.map_or(0, |u| u.used_bytes),
            staging_reads: staging.map_or(0, |u| u.reads),
            data_cache: self.reader.disk.as_ref().map(|d| d.stats()),
            passthrough_opens: self.counters.passthrough_opens.load(Ordering::Relaxed),
            pack_fetch: self.reader.pack_fetch_stats(),
            metadata_unapplied_changes: m.metadata_unapplied_changes,
            resident_bytes: resident_bytes().unwrap_or(0),
            kept_buffer_bytes: self.kept_buffer_bytes(),
            release_memory_after_secs: self.config.release_memory_after.map(|d| d.as_secs_f64()),
        }
    }

    /// The barrier of `spoolfs sync`: returns once everything written before the call is in
    /// the object store and the metadata pointing at it is durable. Buffered writes of open
    /// files are flushed first; then the slices staged at that moment are waited for (slices
    /// staged later are not). `progress` sees (slices, bytes) still to go.
    pub fn sync_to_object_store(
        &self,
        timeout: Option<Duration>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.flush_all_open()?;
        if let Some(wb) = self.writeback.as_ref() {
            wb.wait_staged_now(timeout, progress)
                .map_err(|(slices, bytes)| {
                    FsError::new(
                        libc::ETIMEDOUT,
                        format!(
                            "{slices} slice(s), {bytes} bytes, are still not in the object store"
                        ),
                    )
                })?;
        }
        self.persist_meta()
    }

    /// Waits until nothing is staged (or `timeout` passes); returns the bytes still staged.
    pub fn drain_uploads(&self, timeout: Option<Duration>) -> u64 {
        self.writeback.as_ref().map_or(0, |wb| wb.drain(timeout))
    }

    /// The background thread's checkpoint, run now: makes the metadata durable and frees the
    /// staging-log records that checkpoint covered (their segments may then be recycled).
    pub fn checkpoint(&self) -> Result<()> {
        self.persist_meta()?;
        if let Some(wb) = self.writeback.as_ref() {
            wb.free_checkpointed();
        }
        Ok(())
    }

    /// Deletes the objects of dead slices (`G` records), `DEAD_BATCH` slices at a time, up
    /// to `max` of them; stops early once the engine is stopping (what is left stays recorded
    /// and is collected by the next mount or `spoolfs gc`). Returns how many it removed.
    pub fn collect_garbage(&self, max: usize) -> Result<usize> {
        self.reclaim.collect_garbage(max)
    }

    /// The volume's pack accounting, checked against the `L` records.
    pub fn pack_usage(&self) -> Result<crate::gc::PackUsage> {
        self.reclaim.pack_usage()
    }

    /// One garbage collection run: dead slices first, then compaction (if asked), then the
    /// orphan sweep (if asked). Runs of this engine take turns (the background compactor too).
    pub fn run_gc(
        &self,
        opts: &crate::gc::GcOptions,
        progress: crate::gc::GcProgress,
    ) -> Result<crate::gc::GcReport> {
        if !opts.dry_run {
            self.require_background_lease("garbage collection")?;
        }
        self.reclaim.run_gc(opts, progress)
    }

    /// Drops this mount's holds of files no longer open here: those closed since the last
    /// batch, or with `all` every one (at shutdown). An orphan left unheld goes with its hold.
    fn drop_holds(&self, all: bool) {
        let Some(h) = &self.holds else { return };
        let batch = h.take_batch(&|ino| self.open.has_handles(ino), all);
        // In transactions of a few inodes (each reads an inode and scans its holds), then one
        // wait for the database's flush for all of them, not one per transaction.
        for part in batch.chunks(crate::meta::SHARED_BATCH_ROWS / 2) {
            self.drop_hold_batch(h, part);
        }
        if !batch.is_empty()
            && let Err(err) = self.meta.store().sync()
        {
            crate::warn_limited!("flushing {} dropped open-file holds: {err}", batch.len());
        }
    }

    fn drop_hold_batch(&self, h: &holds::Holds, batch: &[Ino]) {
        let keys: Vec<Vec<u8>> = batch.iter().map(|&ino| schema::inode_key(ino)).collect();
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let prefixes: Vec<(Vec<u8>, Vec<u8>)> = batch
            .iter()
            .map(|&ino| {
                let p = holds::hold_prefix(ino);
                let end = spoolfs_metadata::prefix_end(&p);
                (p, end)
            })
            .collect();
        let ranges: Vec<(&[u8], &[u8])> = prefixes
            .iter()
            .map(|(s, e)| (s.as_slice(), e.as_slice()))
            .collect();
        let result = self.meta.store().update(Durability::Visible, &mut |t| {
            // The whole batch's inodes and holds in one round trip on a networked store.
            t.prefetch(&keys, &ranges)?;
            let mut freed = 0;
            for &ino in batch {
                freed += holds::drop_hold(t, ino, &h.session)? as u64;
            }
            if freed > 0 {
                tracing::debug!("deleted {freed} orphans at the close of their last holder");
            }
            Ok(())
        });
        if let Err(err) = &result {
            crate::warn_limited!("dropping {} open-file holds: {err}", batch.len());
        }
        h.finish_batch(batch, result.is_ok());
    }

    /// Drops the holds of dead sessions and deletes the orphans nobody holds.
    pub fn sweep_holds(&self) -> Result<holds::SweepReport> {
        let Some(h) = &self.holds else {
            return Ok(Default::default());
        };
        let mut report = Default::default();
        self.meta.store().update(Durability::Durable, &mut |t| {
            report = holds::sweep(t, &h.session, &|ino| self.open.has_handles(ino))?;
            Ok(())
        })?;
        if report != Default::default() {
            tracing::info!(
                "dropped {} open-file holds of dead sessions, deleted {} orphans nobody holds",
                report.dead_holds,
                report.orphans_freed
            );
        }
        Ok(report)
    }

    /// Whether this mount may run the volume-wide background work now: always on an exclusive
    /// volume; on a shared one, when it holds the background lease (taken here if free).
    pub fn background_lease(&self) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        let mut seen = lease.seen.lock();
        if let Some((at, held)) = *seen
            && at.elapsed() < LEASE_LOOK_INTERVAL
        {
            return held;
        }
        let held = match self.look_at_lease(lease) {
            Ok(held) => held,
            Err(err) => {
                crate::warn_limited!("cannot read the background lease: {err}");
                false
            }
        };
        *seen = Some((std::time::Instant::now(), held));
        held
    }

    /// One look at the lease: a read, and a transaction taking it only when it is free.
    fn look_at_lease(&self, lease: &BackgroundLease) -> Result<bool> {
        use crate::session::lease::{BACKGROUND, Holder};
        let now = crate::session::now_s();
        let store = self.meta.store();
        let mut seen = Holder::Free(None);
        store.view(&mut |r| {
            seen = crate::session::lease::holder(r, BACKGROUND, &lease.session, now)?;
            Ok(())
        })?;
        if let Holder::Free(_) = seen {
            store.update(Durability::Durable, &mut |t| {
                seen =
                    crate::session::lease::take(t, BACKGROUND, &lease.session, lease.ttl_s, now)?;
                Ok(())
            })?;
            if seen == Holder::Me {
                tracing::info!(
                    "took the volume's background lease (dead-slice deletes, compaction, the sweep of orphans)"
                );
            }
        }
        Ok(seen == Holder::Me)
    }

    /// Refuses (EBUSY) work that runs under the background lease while another mount holds it.
    fn require_background_lease(&self, what: &str) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if self.background_lease() {
            return Ok(());
        }
        let now = crate::session::now_s();
        let holder = self.view(|r| {
            crate::session::lease::holder(r, crate::session::lease::BACKGROUND, &lease.session, now)
        })?;
        let who = match holder {
            crate::session::lease::Holder::Other(_, Some(s)) => crate::session::describe(&s),
            crate::session::lease::Holder::Other(rec, None) => format!("session {}", rec.holder),
            _ => "another mount".to_string(),
        };
        Err(FsError::new(
            libc::EBUSY,
            format!(
                "{what} runs on the mount holding the volume's background lease, now {who}: run \
                 it there"
            ),
        ))
    }

    /// Files this mount holds open in the shared metadata (0 on an exclusive volume).
    pub fn held_files(&self) -> usize {
        self.holds.as_ref().map_or(0, |h| h.recorded_count())
    }

    /// The file lock table of this mount.
    pub fn locks(&self) -> &Arc<crate::locks::LockTable> {
        &self.locks
    }

    /// Uploads or stages everything buffered, waits (up to `drain_on_shutdown`) for staged
    /// data to reach the object store, stops the background threads and makes the metadata
    /// durable (unmount). Objects of dead slices still to be deleted are not waited for: they
    /// stay recorded and the next mount deletes them. Runs once: a concurrent caller waits for
    /// the first, a later one returns at once.
    pub fn shutdown(&self) -> Result<()> {
        let mut done = self.shut_down.lock();
        if *done {
            return Ok(());
        }
        let result = self.shutdown_once();
        *done = true;
        result
    }

    fn shutdown_once(&self) -> Result<()> {
        // Reads are over: nothing more is fetched ahead.
        self.reader.stop_fetches();
        let mut first_err = None;
        // Other mounts may be waiting for them.
        if let Err(e) = self.locks.release_all() {
            tracing::warn!("cannot release this mount's file locks: {e}");
        }
        for ino in self.open.inodes() {
            if let Err(e) = self.flush_inode(ino) {
                tracing::error!("writing inode {ino} at shutdown failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        if self.holds.is_some() {
            self.write_pending_atimes();
            self.drop_holds(true);
        }
        if let Some(lease) = &self.lease {
            // Another mount takes the background work over at once.
            let given_up = self.meta.store().update(Durability::Durable, &mut |t| {
                crate::session::lease::release_all(t, &lease.session)
            });
            if let Err(e) = given_up {
                tracing::warn!("cannot give up the background lease: {e}");
            }
        }
        // Dead objects are not waited for: their `G` records stay in the metadata and the next
        // mount (or `spoolfs gc`) deletes them. Only staged data needs the object store.
        if let Some(timeout) = self.config.drain_on_shutdown {
            let left = self.drain_uploads(Some(timeout));
            if left > 0 {
                tracing::warn!(
                    "{left} bytes are still staged and not in the object store; \
                     they are uploaded at the next mount with the same --cache-dir"
                );
            }
        }
        self.stop.raise_now();
        self.stop.raise();
        if let Some(wb) = self.writeback.as_ref() {
            wb.stop();
        }
        let threads: Vec<_> = std::mem::take(&mut *self.background.lock());
        join_background(threads, SHUTDOWN_JOIN_GRACE);
        // From here on nothing may be staged: the logs are about to be declared empty.
        self.meta.close();
        if first_err.is_none() {
            crate::writeback::mark_staging_clean(&self.meta, self.writeback.as_deref())?;
        }
        self.persist_meta()?;
        if let Some(wb) = self.writeback.as_ref() {
            wb.free_checkpointed();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How long shutdown waits for the background threads once they are told to stop. An upload
/// thread blocked in a PUT to a stalled store can take minutes to notice: shutdown must not
/// outlive `--shutdown-timeout` by that much.
const SHUTDOWN_JOIN_GRACE: Duration = Duration::from_secs(5);

/// Joins the background threads that end within `grace`; the others are left behind (the
/// process exits without them). Nothing is lost with them: the metadata is closed to changes
/// before the checkpoint, so a late upload cannot commit, and what it was uploading stays
/// staged for the next mount with the same cache directory.
/// `attr` with the buffered writes of the file (size and times) laid over it.
fn overlaid(mut attr: Attr, state: &FileState) -> Attr {
    if let Some(ov) = state.overlay() {
        attr.size = ov.size;
        attr.blocks = ov.size.div_ceil(512);
        attr.mtime = schema::from_ns(ov.mtime_ns);
        attr.ctime = schema::from_ns(ov.ctime_ns);
    }
    attr
}

fn join_background(threads: Vec<std::thread::JoinHandle<()>>, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    let mut busy = Vec::new();
    for h in threads {
        if h.thread().id() == std::thread::current().id() {
            continue;
        }
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            busy.push(h.thread().name().unwrap_or("unnamed").to_string());
        }
    }
    if !busy.is_empty() {
        tracing::warn!(
            "shutdown: {} thread(s) still busy after {grace:?} ({}), left behind; what they \
             were uploading stays staged for the next mount",
            busy.len(),
            busy.join(", ")
        );
    }
}

/// Makes namespace changes durable every interval, deletes dead objects, and gives memory
/// back once the mount has been idle for [`EngineConfig::release_memory_after`].
fn background_loop(engine: std::sync::Weak<Engine>, stop: Arc<StopSignal>) {
    let mut idle = IdleWatch::default();
    loop {
        let Some(interval) = engine.upgrade().map(|e| e.config.meta_flush_interval) else {
            return;
        };
        if stop.wait(interval) {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        if let Some(after) = e.config.release_memory_after
            && idle.quiet_for(e.activity()) >= after
        {
            idle.released();
            e.release_idle_memory();
        }
        if let Some(wb) = e.writeback.as_ref() {
            // One sample a second keeps the upload rate's window current.
            wb.upload_rate();
        }
        if e.meta.is_dirty()
            && let Err(err) = e.persist_meta()
        {
            tracing::error!("making metadata durable failed: {err}");
        }
        if let Some(wb) = e.writeback.as_ref() {
            wb.free_checkpointed();
        }
        // Batches until none is left, for at most about one interval, so the checkpoint
        // above keeps its pace behind a large backlog.
        let started = std::time::Instant::now();
        // Without the background lease, only the dead slices staged here: the holder deletes
        // the others' objects.
        let everything = e.background_lease();
        loop {
            let collected = if everything {
                e.collect_garbage(DEAD_BATCH)
            } else {
                e.reclaim.collect_own_staged(DEAD_BATCH)
            };
            match collected {
                Ok(n) if n == DEAD_BATCH && started.elapsed() < interval && !e.stopping() => {}
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!("deleting dead objects: {err}");
                    break;
                }
            }
        }
    }
}

/// This process's resident memory (`/proc/self/statm`), when it can be read.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// How long the mount has been quiet, from samples of [`Engine::activity`]: zero until the
/// activity changes after a release (nothing to give back before), then the time since it
/// last changed.
#[derive(Default)]
struct IdleWatch {
    last: Option<[u64; 4]>,
    quiet_since: Option<std::time::Instant>,
}

impl IdleWatch {
    fn quiet_for(&mut self, activity: [u64; 4]) -> Duration {
        if self.last != Some(activity) {
            // The first sample too: a mount's start-up (replay, the first listing) counts.
            self.last = Some(activity);
            self.quiet_since = Some(std::time::Instant::now());
        }
        self.quiet_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn released(&mut self) {
        self.quiet_since = None;
    }
}

/// The session timeout of session `id` in `meta` (the default if it has no record).
fn session_timeout_s(meta: &dyn KvStore, id: &str) -> Result<u64> {
    let mut timeout = crate::session::DEFAULT_TIMEOUT.as_secs();
    meta.view(&mut |r| {
        if let Some(v) = r.get(&crate::session::session_key(id))?
            && let Ok(rec) = serde_json::from_slice::<crate::session::SessionRec>(&v)
        {
            timeout = rec.timeout_s;
        }
        Ok(())
    })?;
    Ok(timeout)
}

/// How often queued holds are dropped (see [`crate::holds`]).
const HOLD_DROP_INTERVAL: Duration = Duration::from_millis(100);
/// How often the holds of dead sessions and the orphans nobody holds are swept.
const HOLD_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Drops the holds of files closed here, and sweeps dead sessions' holds and their orphans.
fn holds_loop(engine: std::sync::Weak<Engine>, stop: Arc<StopSignal>) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        if stop.wait(HOLD_DROP_INTERVAL) {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        e.write_pending_atimes();
        e.drop_holds(false);
        if last_sweep.elapsed() >= HOLD_SWEEP_INTERVAL && e.background_lease() {
            last_sweep = std::time::Instant::now();
            if let Err(err) = e.sweep_holds() {
                crate::warn_limited!("sweeping open-file holds: {err}");
            }
        }
    }
}

/// Runs the background compactor every interval.
fn compactor_loop(engine: std::sync::Weak<Engine>, stop: Arc<StopSignal>) {
    loop {
        let Some(settings) = engine.upgrade().and_then(|e| e.config.compaction.clone()) else {
            return;
        };
        if stop.wait(settings.interval) {
            return;
        }
        let Some(e) = engine.upgrade() else { return };
        if e.background_lease() {
            e.reclaim.background_compact(&settings);
        }
    }
}

/// `dir` as the transaction has just written it (read back from its own writes), when `keep`:
/// for [`Engine::own_dir_attrs`].
fn dir_as_written(t: &dyn KvRead, dir: Ino, keep: bool) -> Result<Option<InodeRec>, MetaError> {
    if keep {
        schema::must_inode(t, dir).map(Some)
    } else {
        Ok(None)
    }
}
