//! The write path: buffered writes per open inode (pending runs, the size and times they
//! imply), and the flush that turns them into slices, in its phases: slice ids, staging (or
//! a direct upload of what the staging log refuses), one metadata commit, and the hand-off
//! to the uploader.
//!
//! [`WritePath`] owns what writing needs (the metadata store, the uploader, slice ids, the
//! sync-upload marks); the per-inode [`FileState`] lives in the open-file table
//! (`open.rs`), whose lock the caller holds, and the read path lays its pending runs over
//! what is stored.

use crate::data;
use crate::error::{FsError, Result};
use crate::ids::IdAllocator;
use crate::meta::Meta;
use crate::namespace;
use crate::reader::Counters;
use crate::schema::{self, SliceRec, StagedRec};
use crate::staging::{RecordHeader, StagedLoc};
use crate::stop::StopSignal;
use crate::types::*;
use crate::wal::WalStore;
use crate::writeback::SliceCarrier;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use spoolfs_metadata::{Durability, KvTxn, MetaError};
use spoolfs_objects::{ObjectStorage, encode_block, split_blocks};
use spoolfs_uploader::{Staged, Uploader};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Pending runs per file before a flush.
pub(crate) const MAX_PENDING_RUNS: usize = 256;
/// Largest slice (also at most a quarter of a staging segment, so every slice can be staged).
pub(crate) const MAX_SLICE_BYTES: usize = 16 << 20;
/// Smallest largest slice, whatever the staging segment size.
pub(crate) const MIN_SLICE_LIMIT: usize = 64 << 10;

/// Data written through open handles and not yet uploaded: one contiguous run of bytes inside
/// one chunk. Later entries shadow earlier ones.
struct Pending {
    chunk: u32,
    pos: u32,
    /// Shared with the staging log's builder thread while a staged copy is being made
    /// (see [`EarlyStage::Submitted`]); only a run that is not frozen is written to, and no
    /// one else holds it then.
    data: Arc<Vec<u8>>,
    /// A full run is handed to the staging log while the file is still being written, so a
    /// large sequential write keeps copying while the device writes; the flush then only
    /// waits for it. Such a run is frozen: later writes over it start a new run.
    early: EarlyStage,
}

/// A flush's slices as its phases hand them on (see [`WritePath::flush_locked`]).
struct FlushPlan {
    /// One per pending run, in order.
    ids: Vec<u64>,
    slices: Vec<SliceRec>,
    /// The chunk of each slice.
    chunks: Vec<u32>,
    /// Slices in the staging log (or to ride with the commit), with their `T` records.
    staged: Vec<(u64, Staged)>,
    /// Block objects of the slices the staging log refused, PUT before the commit.
    objects: Vec<(String, Bytes)>,
    /// The last slice, to be staged in one record with the metadata change.
    carried: Option<(u64, RecordHeader)>,
    /// The commit need not wait for its namespace-log record (see [`WritePath::flush_as`]).
    defer: bool,
}

#[derive(Default)]
enum EarlyStage {
    #[default]
    NotYet,
    /// Submitted under this slice id; the flush waits for it.
    Submitted {
        id: u64,
        append: crate::staging::PendingAppend,
    },
    /// The staging log had no room in time: the flush uploads it directly, without waiting
    /// for room a second time.
    Bypassed,
}

impl Pending {
    fn frozen(&self) -> bool {
        !matches!(self.early, EarlyStage::NotYet)
    }
}

/// In-memory state of an inode while it is open or being changed.
#[derive(Default)]
pub(crate) struct FileState {
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// Size and times that include the pending writes; `None` when nothing is pending.
    overlay: Option<Overlay>,
    /// Set-id bits that the first write since the flush (by root) left and that a write by
    /// an unprivileged caller must still clear.
    setid_left: bool,
    /// The inode as this mount just made it (a create), for the first write to start from
    /// without reading it again. Forgotten at the first write, a flush (but for a close with
    /// nothing buffered), and any change of the inode's attributes or extended attributes here.
    known: Option<KnownInode>,
    /// The number in the namespace log of this inode's latest change made here that returned
    /// without waiting for its record ([`WalStore::update_deferred`]: its create, or an
    /// attribute change): the next flush waits for it, by committing a change of its own
    /// (numbered after it) or by waiting for it alone.
    unlogged: Option<u64>,
    /// Runs handed to the staging log at the last `max_dirty_per_file` mark of a writeback
    /// file, to be committed at the next mark (or by any flush before it), so that a large
    /// writer keeps writing while they reach the device: at most twice `max_dirty_per_file`
    /// bytes are buffered.
    sealed: Option<Sealed>,
}

/// The first `runs` pending runs of a file, staged and not yet committed (see
/// [`FileState::sealed`]).
struct Sealed {
    runs: usize,
    /// `pending_bytes` when they were sealed.
    bytes: u64,
    /// Size and times after the last write they hold.
    overlay: Overlay,
}

/// What the first write since a flush needs of its inode: the size and permission bits, and
/// whether it has capabilities to drop.
#[derive(Clone, Copy)]
pub(crate) struct KnownInode {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub perm: u16,
    pub has_caps: bool,
}

#[derive(Clone, Copy)]
pub(crate) struct Overlay {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileState {
    /// Size and times including the pending writes; `None` when nothing is pending.
    pub(crate) fn overlay(&self) -> Option<Overlay> {
        self.overlay
    }

    /// Records the inode as this mount has just made it (see [`FileState::known`]).
    pub(crate) fn set_known(&mut self, known: KnownInode) {
        self.known = Some(known);
    }

    /// A change of the inode returned before its namespace-log record was on the device (see
    /// [`FileState::unlogged`]; 0: it changed nothing).
    pub(crate) fn note_unlogged(&mut self, seq: u64) {
        if seq != 0 {
            self.unlogged = Some(self.unlogged.map_or(seq, |s| s.max(seq)));
        }
    }

    /// An attribute change committed while writes are buffered: the flush that commits them
    /// writes the overlay's times, so they take the change's (mtime only if it set one; ctime
    /// never goes back).
    pub(crate) fn take_attr_change(&mut self, set_mtime: bool, mtime_ns: i64, ctime_ns: i64) {
        if let Some(ov) = self.overlay.as_mut() {
            if set_mtime {
                ov.mtime_ns = mtime_ns;
            }
            ov.ctime_ns = ov.ctime_ns.max(ctime_ns);
        }
    }

    /// The inode changed here: the next write reads it.
    pub(crate) fn forget_known(&mut self) {
        self.known = None;
    }

    /// Whether this mount knows the inode has no capabilities without asking the store:
    /// writes are buffered (the first of them dropped any), or it has just made the inode.
    /// (Another node setting them meanwhile is seen at the next open, as any change is.)
    pub(crate) fn surely_without_caps(&self) -> bool {
        self.overlay.is_some() || self.known.is_some_and(|k| !k.has_caps)
    }

    /// The pending runs of `chunk`, oldest first, as (position in the chunk, bytes): newer
    /// than anything stored, so a reader lays them over what it read.
    pub(crate) fn pending_in(&self, chunk: u32) -> impl Iterator<Item = (u32, &[u8])> {
        self.pending
            .iter()
            .filter(move |p| p.chunk == chunk)
            .map(|p| (p.pos, p.data.as_slice()))
    }
}

/// The write path's own state and what it writes through.
pub(crate) struct WritePath {
    pub(crate) meta: Arc<Meta>,
    pub(crate) storage: Arc<ObjectStorage>,
    /// The upload pipeline and its staging log (`None`: no staging log at all).
    pub(crate) uploader: Option<Arc<Uploader>>,
    pub(crate) slice_ids: Arc<IdAllocator>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stop: Arc<StopSignal>,
    pub(crate) block_size: usize,
    pub(crate) chunk_size: u64,
    /// Bytes an open file buffers before a flush (`EngineConfig::max_dirty_per_file`).
    pub(crate) max_dirty_per_file: u64,
    /// Concurrent PUTs of a direct upload (`EngineConfig::max_uploads`).
    pub(crate) max_uploads: usize,
    /// The namespace log, which a flush's last slice can carry its commit through.
    pub(crate) namespace_log: Option<Weak<WalStore>>,
    /// Inodes marked with [`schema::SYNC_UPLOAD_XATTR`] (mirror of the `Y` keys).
    pub(crate) sync_marks: RwLock<HashSet<Ino>>,
    /// Buffers of whole runs that flushes are done with (not kept for the uploaders), for
    /// the next runs of large writes: at most [`RUN_BUFFERS_KEPT`].
    pub(crate) run_buffers: Mutex<Vec<Vec<u8>>>,
}

/// Run buffers kept for reuse. Writing into a fresh buffer faults in and zeroes every page
/// of it, which cost more than the copy itself (a 1 MiB write took 0.5-1 ms).
const RUN_BUFFERS_KEPT: usize = 4;

impl WritePath {
    /// Largest slice: 16 MiB, and at most a quarter of a staging segment so every slice can
    /// be staged.
    fn max_run_bytes(&self) -> usize {
        let mut max = MAX_SLICE_BYTES;
        if let Some(wb) = self.uploader.as_ref() {
            max = max.min((wb.opts.segment_size / 4) as usize);
        }
        max.max(MIN_SLICE_LIMIT)
    }

    /// Keeps the buffer of a run a flush is done with for a later run, if it has room for a
    /// whole run and fewer than [`RUN_BUFFERS_KEPT`] are kept.
    fn recycle_run(&self, mut data: Vec<u8>) {
        if data.capacity() < self.max_run_bytes() {
            return;
        }
        let mut kept = self.run_buffers.lock();
        if kept.len() < RUN_BUFFERS_KEPT {
            data.clear();
            kept.push(data);
        }
    }

    /// Bytes of the buffers kept for the next runs of large writes, here and in the staging
    /// log (see [`spoolfs_staging::StagingLog::kept_buffer_bytes`]).
    pub(crate) fn kept_buffer_bytes(&self) -> u64 {
        let runs = spoolfs_staging::capacity_bytes(&self.run_buffers.lock());
        runs + self.staging_log().map_or(0, |log| log.kept_buffer_bytes())
    }

    /// Frees the buffers [`Self::kept_buffer_bytes`] counts; returns their bytes.
    pub(crate) fn release_kept_buffers(&self) -> u64 {
        let runs = spoolfs_staging::capacity_bytes(&std::mem::take(&mut *self.run_buffers.lock()));
        runs + self
            .staging_log()
            .map_or(0, |log| log.release_kept_buffers())
    }

    fn staging_log(&self) -> Option<&crate::staging::StagingLog> {
        self.uploader.as_ref().map(|wb| wb.opts.log.as_ref())
    }

    /// The namespace log, while the metadata store it writes ahead of is open.
    fn namespace_log(&self) -> Option<Arc<WalStore>> {
        self.namespace_log.as_ref()?.upgrade()
    }

    /// The namespace log in writeback mode: a file's create there returns without waiting for
    /// its record (the file's close does). `None` in standard mode and on a shared volume.
    pub(crate) fn deferring_log(&self) -> Option<Arc<WalStore>> {
        self.namespace_log().filter(|_| self.is_writeback())
    }

    /// Waits until the inode's changes made here are in the namespace log, if one of them did
    /// not wait and no change since did (a close promises the file's create and attribute
    /// changes too; a change that commits waits for its own record, numbered after theirs, so
    /// it needs no call of this).
    pub(crate) fn wait_changes_logged(&self, state: &mut FileState) -> Result<()> {
        let Some(seq) = state.unlogged else {
            return Ok(());
        };
        let Some(wal) = self.namespace_log() else {
            return Err(FsError::NamespaceLogClosed);
        };
        wal.wait_logged(seq)?;
        state.unlogged = None;
        Ok(())
    }

    /// Whether new writes are acknowledged from the staging log.
    pub fn is_writeback(&self) -> bool {
        self.uploader.as_ref().is_some_and(|w| w.opts.writeback)
    }

    /// What Linux does when a file's data changes (write, fallocate of any mode): drops its
    /// capabilities, and its set-user-id bit (set-group-id with group execute) when the
    /// caller is not root. Returns the inode as it was before; refuses anything but a regular
    /// file.
    pub(crate) fn drop_privileges(&self, caller: &Caller, ino: Ino) -> Result<KnownInode> {
        let caps_key = schema::xattr_key(ino, schema::CAPS_XATTR);
        let inode_key = schema::inode_key(ino);
        let (rec, has_caps) = self.meta.view(|r| {
            // Both in one round trip on a networked store.
            r.prefetch(&[&inode_key, &caps_key], &[])?;
            Ok((schema::must_inode(r, ino)?, r.get(&caps_key)?.is_some()))
        })?;
        if rec.kind != FileKind::File {
            return Err(FsError::new(libc::EINVAL, "not a regular file"));
        }
        self.drop_known_privileges(
            caller,
            ino,
            KnownInode {
                size: rec.size,
                mtime_ns: rec.mtime_ns,
                ctime_ns: rec.ctime_ns,
                perm: rec.perm,
                has_caps,
            },
        )
    }

    /// [`Self::drop_privileges`] of an inode known to be as `known` says: a transaction only
    /// when there is something to drop.
    fn drop_known_privileges(
        &self,
        caller: &Caller,
        ino: Ino,
        known: KnownInode,
    ) -> Result<KnownInode> {
        let kill_setid = caller.uid != 0 && namespace::setid_to_clear(known.perm);
        if kill_setid || known.has_caps {
            self.meta
                .update(|t| namespace::drop_privileges(t, ino, kill_setid))?;
        }
        Ok(known)
    }

    /// Buffers a write of `data` at `offset` in the inode's pending runs (the caller holds its
    /// state lock and has checked the size limit); flushes when the file's buffer is full.
    pub(crate) fn write(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        data: &[u8],
        state: &mut FileState,
    ) -> Result<u32> {
        if state.overlay.is_none() {
            // The first write since the last flush: capabilities are dropped here, once (a
            // setxattr of capabilities or a chmod flushes, so the next write comes back here).
            let rec = match state.known.take() {
                Some(known) => self.drop_known_privileges(caller, ino, known)?,
                None => self.drop_privileges(caller, ino)?,
            };
            state.setid_left = caller.uid == 0 && namespace::setid_to_clear(rec.perm);
            state.overlay = Some(Overlay {
                size: rec.size,
                mtime_ns: rec.mtime_ns,
                ctime_ns: rec.ctime_ns,
            });
        } else if state.setid_left && caller.uid != 0 {
            // Root wrote first and kept the set-id bits; this writer is not root.
            self.meta
                .update(|t| namespace::drop_privileges(t, ino, true))?;
            state.setid_left = false;
        }
        let cs = self.chunk_size;
        let spares = RunSpares {
            recycled: &self.run_buffers,
            log: self.staging_log(),
        };
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let chunk = (pos / cs) as u32;
            let in_chunk = (pos % cs) as u32;
            let n = ((cs - in_chunk as u64) as usize).min(data.len() - done);
            add_pending(
                &mut state.pending,
                chunk,
                in_chunk,
                &data[done..done + n],
                self.max_run_bytes(),
                Some(&spares),
            );
            done += n;
        }
        let now = schema::now_ns();
        let ov = state.overlay.as_mut().expect("set above");
        ov.size = ov.size.max(offset + data.len() as u64);
        ov.mtime_ns = now;
        ov.ctime_ns = now;
        state.pending_bytes += data.len() as u64;
        self.counters
            .dirty_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let sealed_bytes = state.sealed.as_ref().map_or(0, |s| s.bytes);
        // Many small runs make a large transaction: flush by count too, so a random writer
        // never stalls for seconds on one huge flush.
        if state.pending.len() >= MAX_PENDING_RUNS {
            self.flush_locked(ino, state, false)?;
        } else if state.pending_bytes - sealed_bytes >= self.max_dirty_per_file {
            if self.is_writeback() {
                self.commit_sealed(ino, state)?;
                self.seal(ino, state)?;
            } else {
                self.flush_locked(ino, state, false)?;
            }
        } else {
            self.stage_full_runs(ino, state);
        }
        Ok(data.len() as u32)
    }

    /// Hands every run not yet staged to the staging log, full or not, and remembers them,
    /// with the size and times they imply, as the next commit ([`FileState::sealed`]): the
    /// file's next `max_dirty_per_file` bytes go to new runs meanwhile, and
    /// [`Self::commit_sealed`] finds these appends done instead of waiting for them. If a
    /// slice id cannot be had, everything is flushed now instead.
    fn seal(&self, ino: Ino, state: &mut FileState) -> Result<()> {
        let Some(wb) = self.uploader.as_ref().filter(|wb| wb.opts.writeback) else {
            return self.flush_locked(ino, state, false);
        };
        for p in state.pending.iter_mut().filter(|p| !p.frozen()) {
            let Ok(id) = self.slice_ids.next(self.meta.store()) else {
                return self.flush_locked(ino, state, false);
            };
            p.early = match wb.submit_stage(ino, p.chunk, p.pos, id, &p.data) {
                Some(append) => EarlyStage::Submitted { id, append },
                None => EarlyStage::Bypassed,
            };
        }
        state.sealed = Some(Sealed {
            runs: state.pending.len(),
            bytes: state.pending_bytes,
            overlay: state
                .overlay
                .expect("a file with pending runs has an overlay"),
        });
        Ok(())
    }

    /// Commits the runs [`Self::seal`] set aside, as a flush of those alone: the file as it
    /// was when they were sealed (every write before that moment, none after), so a crash
    /// leaves a state the file really had. The runs written since stay pending.
    fn commit_sealed(&self, ino: Ino, state: &mut FileState) -> Result<()> {
        let Some(sealed) = state.sealed.take() else {
            return Ok(());
        };
        let current = state.overlay;
        let newer = state.pending.split_off(sealed.runs);
        let newer_bytes = state.pending_bytes - sealed.bytes;
        state.pending_bytes = sealed.bytes;
        state.overlay = Some(sealed.overlay);
        let result = self.flush_as(ino, state, false, true);
        // A failed flush leaves the sealed runs pending (the next flush stages them again).
        state.pending.extend(newer);
        state.pending_bytes += newer_bytes;
        state.overlay = current;
        result
    }

    /// Hands every full run that is not yet staged to the staging log (see
    /// [`Pending::early`]). The flush that follows waits for them; until then their data is
    /// still read from memory.
    fn stage_full_runs(&self, ino: Ino, state: &mut FileState) {
        let Some(wb) = self.uploader.as_ref().filter(|wb| wb.opts.writeback) else {
            return;
        };
        let max_run = self.max_run_bytes();
        for p in state.pending.iter_mut() {
            if p.frozen() || p.data.len() < max_run {
                continue;
            }
            // An id that cannot be had now is asked for again by the flush (which reports
            // the error).
            let Ok(id) = self.slice_ids.next(self.meta.store()) else {
                return;
            };
            p.early = match wb.submit_stage(ino, p.chunk, p.pos, id, &p.data) {
                Some(append) => EarlyStage::Submitted { id, append },
                None => EarlyStage::Bypassed,
            };
        }
    }

    /// The flush of a `close(2)`: as [`Self::flush_locked`], except that a close with nothing
    /// buffered changes nothing and keeps what the mount knows of the inode (`known`). A shell
    /// redirection closes its first descriptor of a new file before writing through the
    /// duplicate; forgetting there would cost the write a read of the inode and the kernel's
    /// capability check a read of the xattr (two round trips per file on a shared volume).
    pub(crate) fn flush_for_close(&self, ino: Ino, state: &mut FileState) -> Result<()> {
        if state.overlay.is_none() {
            return Ok(());
        }
        self.flush_locked(ino, state, false)
    }

    /// Turns the inode's pending writes into slices and commits them. Writeback: each slice
    /// goes to the staging log (O_DIRECT) and the commit goes through the namespace log, so
    /// this survives a crash of spoolfs or the kernel; `durable` adds a device flush (power
    /// cut). Standard mode, or when staging has no room: the blocks are PUT first and the
    /// metadata commit is durable.
    pub(crate) fn flush_locked(
        &self,
        ino: Ino,
        state: &mut FileState,
        durable: bool,
    ) -> Result<()> {
        self.flush_as(ino, state, durable, false)
    }

    /// [`Self::flush_locked`]; `defer`: when the commit goes to the namespace log alone, it
    /// returns without waiting for its record (nothing is promised by the flush of a
    /// `max_dirty_per_file` mark), like a create: the file's next flush waits for it
    /// ([`FileState::unlogged`]).
    fn flush_as(&self, ino: Ino, state: &mut FileState, durable: bool, defer: bool) -> Result<()> {
        // Whatever follows a flush (an attribute change, more writes) reads the inode anew:
        // callers that change the inode after flushing (truncate, chmod) rely on it.
        state.known = None;
        // This flush commits the sealed runs with the rest (if it fails, they are pending
        // runs like the others).
        state.sealed = None;
        let Some(overlay) = state.overlay else {
            return Ok(());
        };
        let wb = self.uploader.as_ref().filter(|wb| wb.opts.writeback);
        // Ids first (the only step that can fail), so that every append submitted below is
        // also waited for.
        let ids = self.flush_ids(state)?;
        let mut plan = self.flush_stage(ino, state, wb, ids);
        // What the staging log refused goes to the object store before the commit.
        let uploaded_directly = !plan.objects.is_empty();
        if uploaded_directly && let Err(e) = self.put_objects(std::mem::take(&mut plan.objects)) {
            // The flush fails before its commit: the records it staged are nobody's (the
            // next flush stages the runs again).
            free_staged(wb, &plan.staged);
            return Err(e);
        }
        // Standard mode: close(2) promises the data is in the object store and the metadata
        // that points at it survives a crash. Writeback: the namespace log makes the commit
        // crash-safe; `durable` (fsync) adds a device flush.
        let durability = if durable || (uploaded_directly && !self.is_writeback()) {
            Durability::Durable
        } else {
            Durability::Visible
        };
        plan.defer = defer;
        let deferred = self.flush_commit(ino, state, wb, overlay, durability, &mut plan)?;
        if deferred == 0 {
            // The commit waited for its own record, numbered after the create's (and any
            // other change of the file that did not wait).
            state.unlogged = None;
        } else {
            state.note_unlogged(deferred);
        }
        self.flush_hand_off(ino, state, wb, plan)
    }

    /// Flush phase 1: a slice id per pending run (runs staged early already have theirs).
    fn flush_ids(&self, state: &FileState) -> Result<Vec<u64>> {
        state
            .pending
            .iter()
            .map(|p| match p.early {
                EarlyStage::Submitted { id, .. } => Ok(id),
                _ => self.slice_ids.next(self.meta.store()),
            })
            .collect()
    }

    /// Flush phase 2: stages every run but the last (the last rides with the commit when
    /// it can), waits for the appends, and plans the direct upload of what the log refused.
    fn flush_stage(
        &self,
        ino: Ino,
        state: &mut FileState,
        wb: Option<&Arc<Uploader>>,
        ids: Vec<u64>,
    ) -> FlushPlan {
        let bs = self.block_size;
        let now = schema::now_ns();
        let last = state.pending.len().saturating_sub(1);
        let mut plan = FlushPlan {
            slices: Vec::with_capacity(state.pending.len()),
            chunks: state.pending.iter().map(|p| p.chunk).collect(),
            staged: Vec::new(),
            objects: Vec::new(),
            carried: None,
            defer: false,
            ids,
        };
        // All slices but the last go to the engine thread at once, written as one batch. A
        // run staged early is waited for like them; if this flush fails, the next one stages
        // the run again (the records of a failed flush are freed by the commit phase).
        let mut submitted = Vec::with_capacity(state.pending.len());
        for (i, (p, &id)) in state.pending.iter_mut().zip(&plan.ids).enumerate() {
            let size = p.data.len() as u32;
            let (carry, pending) = match std::mem::take(&mut p.early) {
                EarlyStage::Submitted { append, .. } => (false, Some(append)),
                EarlyStage::Bypassed => (false, None),
                EarlyStage::NotYet => {
                    let carry = i == last
                        && wb.is_some_and(|wb| {
                            self.namespace_log().is_some() && wb.wait_for_room(size as u64)
                        });
                    let pending = if carry {
                        None
                    } else {
                        wb.and_then(|wb| wb.submit_stage(ino, p.chunk, p.pos, id, &p.data))
                    };
                    (carry, pending)
                }
            };
            submitted.push((carry, pending));
        }
        for ((p, &id), (carry, pending)) in state.pending.iter().zip(&plan.ids).zip(submitted) {
            let size = p.data.len() as u32;
            let rec = StagedRec {
                ino,
                chunk: p.chunk,
                size,
                segment: spoolfs_uploader::UNKNOWN_SEGMENT,
                offset: 0,
                staged_ns: now,
                owner: wb.map_or(0, |wb| wb.opts.node_id),
            };
            let loc = match (wb, pending) {
                (Some(wb), Some(pending)) => wb.finish_stage(id, pending),
                _ => None,
            };
            if carry {
                let header = RecordHeader {
                    ino,
                    chunk: p.chunk,
                    pos: p.pos,
                    slice_id: id,
                    len: size,
                    meta_len: 0,
                };
                plan.carried = Some((id, header));
                plan.staged.push((id, Staged::pending(rec)));
            } else if let Some(loc) = loc {
                plan.staged.push((id, Staged::at(rec, loc)));
            } else {
                for (_, key, block) in split_blocks(id, &p.data, bs) {
                    plan.objects.push((key, encode_block(block)));
                }
            }
            plan.slices.push(SliceRec {
                id,
                size,
                off: 0,
                len: size,
                pos: p.pos,
            });
        }
        plan
    }

    /// Flush phase 3: one metadata transaction lays the slices over the chunk maps, records
    /// the slices that died and the `T` records, and stores size and times; the last slice
    /// rides in the same staging record when it was kept for that. On failure the staged
    /// records are freed; a carried slice the log refused after the commit is uploaded
    /// directly and its `T` record unlinked.
    fn flush_commit(
        &self,
        ino: Ino,
        state: &FileState,
        wb: Option<&Arc<Uploader>>,
        overlay: Overlay,
        durability: Durability,
        plan: &mut FlushPlan,
    ) -> Result<u64> {
        let (slices, chunks, staged) = (&plan.slices, &plan.chunks, &plan.staged);
        // The chunk maps this commit changes, whole: every read below is among them.
        let mut maps: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for &chunk in chunks {
            let key = schema::chunk_key(ino, chunk);
            if maps.last().is_none_or(|(k, _)| *k != key) {
                let end = spoolfs_metadata::prefix_end(&key);
                maps.push((key, end));
            }
        }
        let map_ranges: Vec<(&[u8], &[u8])> = maps
            .iter()
            .map(|(s, e)| (s.as_slice(), e.as_slice()))
            .collect();
        let inode_key = schema::inode_key(ino);
        let mut commit = |t: &mut dyn KvTxn| {
            // Everything this transaction reads, in one round trip on a networked store.
            let used_key = schema::counter_key(t, schema::USED_BYTES_KEY);
            t.prefetch(&[&inode_key, &used_key], &map_ranges)?;
            let mut rec = schema::must_inode(t, ino)?;
            let mut used = 0i64;
            let mut i = 0;
            while i < slices.len() {
                let chunk = chunks[i];
                let end = i + chunks[i..].iter().take_while(|&&c| c == chunk).count();
                let group = &slices[i..end];
                // A slice written and shadowed within this same flush is dead at once.
                for (id, size) in data::insert_all_stored(t, ino, chunk, group)? {
                    data::record_dead(t, id, size)?;
                    used -= size as i64;
                }
                used += group.iter().map(|s| s.size as i64).sum::<i64>();
                i = end;
            }
            for (id, s) in staged {
                t.put(&schema::staged_key(*id), &schema::encode(&s.rec))?;
            }
            rec.size = overlay.size;
            rec.mtime_ns = overlay.mtime_ns;
            rec.ctime_ns = overlay.ctime_ns;
            schema::put_inode(t, ino, &rec)?;
            schema::add_u64(t, schema::USED_BYTES_KEY, used)?;
            Ok(())
        };
        let last = state.pending.len().saturating_sub(1);
        // The number of the record the commit did not wait for (0: it waited).
        let mut deferred = 0;
        let result = match (wb, plan.carried) {
            (Some(wb), Some((id, header))) => {
                let data = &state.pending[last].data;
                self.commit_carried(wb, durability, &mut commit, (id, header, data))
                    .map(|placed| (id, placed))
                    .map(Some)
            }
            _ => match self.deferring_log().filter(|_| plan.defer) {
                Some(wal) => self
                    .meta
                    .guarded(|| Ok(wal.update_deferred(&mut commit)?))
                    .map(|seq| {
                        deferred = seq;
                        None
                    }),
                None => self.meta.update_with(durability, commit).map(|()| None),
            },
        };
        match result {
            Err(e) => {
                // Nothing points at the staged records: give their space back.
                free_staged(wb, &plan.staged);
                return Err(e);
            }
            Ok(Some((id, Some((loc, seq))))) => {
                let s = plan
                    .staged
                    .iter_mut()
                    .find(|(i, _)| *i == id)
                    .expect("carried");
                s.1 = Staged::at(s.1.rec, loc).carrying(seq);
            }
            Ok(Some((id, None))) => {
                // The staging log refused the carried slice after its metadata committed: put
                // it in the object store and unlink its `T` record before acknowledging.
                let data = &state.pending[last].data;
                let bs = self.block_size;
                let objects = split_blocks(id, data, bs)
                    .map(|(_, key, block)| (key, encode_block(block)))
                    .collect();
                self.put_objects(objects)?;
                self.meta
                    .update_with(durability, |t| t.delete(&schema::staged_key(id)))?;
                plan.staged.retain(|(i, _)| *i != id);
            }
            Ok(None) => {}
        }
        Ok(deferred)
    }

    /// Flush phase 4: hands the staged slices (and their buffers, while the upload buffer
    /// has room) to the uploader, empties the inode's pending state, and, under a sync mark,
    /// waits for the uploads.
    fn flush_hand_off(
        &self,
        ino: Ino,
        state: &mut FileState,
        wb: Option<&Arc<Uploader>>,
        plan: FlushPlan,
    ) -> Result<()> {
        let staged = plan.staged;
        if let Some(wb) = wb
            && !staged.is_empty()
        {
            // The uploaders take the data from memory while the upload buffer has room,
            // instead of reading it back from the staging device.
            let staged_ids: HashSet<u64> = staged.iter().map(|(id, _)| *id).collect();
            for (p, id) in state.pending.iter_mut().zip(&plan.ids) {
                if staged_ids.contains(id)
                    && let Some(unkept) = wb.keep_for_upload(*id, take_run(&mut p.data))
                {
                    p.data = Arc::new(unkept);
                }
            }
            wb.add(&staged);
        }
        self.counters
            .dirty_bytes
            .fetch_sub(state.pending_bytes, Ordering::Relaxed);
        for mut p in state.pending.drain(..) {
            self.recycle_run(take_run(&mut p.data));
        }
        state.pending_bytes = 0;
        state.overlay = None;
        if let Some(wb) = wb
            && !staged.is_empty()
            && self.under_sync_mark(ino)?
        {
            // A marked tree: the data must be in the object store before close returns.
            let ids: Vec<u64> = staged.iter().map(|(id, _)| *id).collect();
            self.wait_uploaded(wb, &ids)?;
            self.meta.persist()?;
        }
        Ok(())
    }

    /// Whether `ino` or a directory above it carries [`schema::SYNC_UPLOAD_XATTR`].
    fn under_sync_mark(&self, ino: Ino) -> Result<bool> {
        let marks = self.sync_marks.read();
        if marks.is_empty() {
            return Ok(false);
        }
        self.meta.view(|r| {
            let mut cur = ino;
            // Bounded: a corrupt parent chain must not loop forever.
            for _ in 0..4096 {
                if marks.contains(&cur) {
                    return Ok(true);
                }
                let parent = schema::must_inode(r, cur)?.parent;
                if parent == cur || parent == 0 {
                    return Ok(false);
                }
                cur = parent;
            }
            Ok(false)
        })
    }

    /// PUTs objects written around the staging log (standard mode, or no room to stage).
    fn put_objects(&self, objects: Vec<(String, Bytes)>) -> Result<()> {
        let count = objects.len() as u64;
        self.storage.put_many(objects, self.max_uploads)?;
        self.counters
            .objects_put
            .fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Commits a flush's metadata change with its last slice in one staging record. Returns
    /// where the slice was staged and the number of the transaction it carries, or `None` if
    /// the staging log refused it (the change is committed and logged on its own then).
    fn commit_carried(
        &self,
        wb: &Uploader,
        durability: Durability,
        commit: &mut dyn FnMut(&mut dyn KvTxn) -> Result<(), MetaError>,
        slice: (u64, RecordHeader, &[u8]),
    ) -> Result<Option<(StagedLoc, u64)>> {
        let (_, header, data) = slice;
        self.meta.refuse_if_closed()?;
        let Some(wal) = self.namespace_log() else {
            return Err(FsError::NamespaceLogClosed);
        };
        let mut carrier = SliceCarrier::new(wb, header, data);
        let took = wal.update_carried(durability, commit, &mut carrier)?;
        self.meta.mark_dirty();
        Ok(if took { carrier.placed } else { None })
    }

    /// Waits until the staged slices `ids` are in the object store (or died). Without a time
    /// limit, like a close in standard mode; fails only if the mount is stopping.
    fn wait_uploaded(&self, wb: &Uploader, ids: &[u64]) -> Result<()> {
        if wb.wait_uploaded(ids, &|| self.stop.now()) {
            return Ok(());
        }
        Err(FsError::new(
            libc::EIO,
            "unmounting before the data reached the object store (it stays staged)",
        ))
    }
}

/// Appends a write to the pending list: it extends or overwrites the newest pending run of
/// its chunk when it touches it, else starts a new run.
/// A run grows to at most `max_run` bytes; the rest of a write starts a new (newer) run.
fn add_pending(
    pending: &mut Vec<Pending>,
    chunk: u32,
    pos: u32,
    data: &[u8],
    max_run: usize,
    spare: Option<&RunSpares>,
) {
    if let Some(last) = pending
        .iter_mut()
        .rev()
        .find(|p| p.chunk == chunk)
        .filter(|p| !p.frozen())
    {
        let last_end = last.pos + last.data.len() as u32;
        if pos >= last.pos && pos <= last_end {
            let at = (pos - last.pos) as usize;
            // Not frozen: nothing else holds the run, so this never copies it.
            let run = Arc::make_mut(&mut last.data);
            let overlap = (run.len() - at).min(data.len());
            run[at..at + overlap].copy_from_slice(&data[..overlap]);
            let room = max_run.saturating_sub(run.len());
            let grow = room.min(data.len() - overlap);
            run.extend_from_slice(&data[overlap..overlap + grow]);
            let used = overlap + grow;
            if used < data.len() {
                pending.push(Pending {
                    chunk,
                    pos: pos + used as u32,
                    data: Arc::new(run_buffer(&data[used..], max_run, spare)),
                    early: EarlyStage::NotYet,
                });
            }
            return;
        }
    }
    pending.push(Pending {
        chunk,
        pos,
        data: Arc::new(run_buffer(data, max_run, spare)),
        early: EarlyStage::NotYet,
    });
}

/// Where the new run of a large write gets a buffer that is not fresh memory (filling fresh
/// memory faults in and zeroes every page on the writer's thread): one a flush gave back,
/// else one the staging log's builder thread prepared.
struct RunSpares<'a> {
    recycled: &'a Mutex<Vec<Vec<u8>>>,
    log: Option<&'a crate::staging::StagingLog>,
}

impl RunSpares<'_> {
    fn take(&self, room: usize) -> Option<Vec<u8>> {
        self.recycled
            .lock()
            .pop()
            .filter(|b| b.capacity() >= room)
            .or_else(|| self.log?.take_prepared_run(room))
    }
}

/// Writes at least this large start a run with room for a whole run.
const LARGE_WRITE: usize = 128 << 10;

/// A new run's buffer holding `data`. A large write is likely the first of a sequential run:
/// its buffer gets room for a whole run at once, instead of doubling its way there (each
/// doubling may copy everything written so far), and is one a flush gave back (`spare`)
/// when there is one.
fn run_buffer(data: &[u8], max_run: usize, spare: Option<&RunSpares>) -> Vec<u8> {
    if data.len() < LARGE_WRITE {
        return data.to_vec();
    }
    let room = max_run.max(data.len());
    let mut buf = spare
        .and_then(|s| s.take(room))
        .unwrap_or_else(|| Vec::with_capacity(room));
    buf.extend_from_slice(data);
    buf
}

/// The bytes of a run, taken out of it. The staging log let go of them once their append was
/// answered, which every flush waits for, so this does not copy.
fn take_run(data: &mut Arc<Vec<u8>>) -> Vec<u8> {
    let run = std::mem::take(data);
    Arc::try_unwrap(run).unwrap_or_else(|shared| shared.as_ref().clone())
}

/// Frees the staging records of a flush that failed before its commit (nothing points at
/// them).
fn free_staged(wb: Option<&Arc<Uploader>>, staged: &[(u64, Staged)]) {
    for (_, s) in staged {
        if let Some(loc) = s.placed() {
            wb.expect("staged records need a staging log")
                .opts
                .log
                .free(&loc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_write_starts_a_run_with_room_for_the_whole_run() {
        let max_run = 4 << 20;
        let mut pending = Vec::new();
        add_pending(&mut pending, 0, 0, &vec![1u8; LARGE_WRITE], max_run, None);
        assert!(pending[0].data.capacity() >= max_run);
        let before = pending[0].data.as_ptr();
        // Growing to a whole run neither moves nor splits it.
        for i in 1..(max_run / LARGE_WRITE) {
            let at = (i * LARGE_WRITE) as u32;
            add_pending(
                &mut pending,
                0,
                at,
                &vec![i as u8; LARGE_WRITE],
                max_run,
                None,
            );
        }
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].data.len(), max_run);
        assert_eq!(pending[0].data.as_ptr(), before);
        assert_eq!(pending[0].data[LARGE_WRITE], 1);
        // The next write starts a new run; a small one gets no more room than it needs.
        add_pending(&mut pending, 0, max_run as u32, b"tail", max_run, None);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[1].data.as_slice(), b"tail");
        assert!(pending[1].data.capacity() < LARGE_WRITE);
    }

    #[test]
    fn a_large_write_reuses_a_run_buffer_a_flush_gave_back() {
        let max_run = 1 << 20;
        let spare = Mutex::new(vec![Vec::with_capacity(max_run)]);
        let kept = spare.lock()[0].as_ptr();
        let spares = RunSpares {
            recycled: &spare,
            log: None,
        };
        let mut pending = Vec::new();
        add_pending(&mut pending, 0, 0, b"small", max_run, Some(&spares));
        assert_eq!(spare.lock().len(), 1, "a small write takes no run buffer");
        let data = vec![7u8; LARGE_WRITE];
        add_pending(&mut pending, 1, 0, &data, max_run, Some(&spares));
        assert!(spare.lock().is_empty());
        assert_eq!(pending[1].data.as_ptr(), kept);
        assert_eq!(*pending[1].data, data);
        // None left: the next large run gets a buffer of its own.
        add_pending(&mut pending, 2, 0, &data, max_run, Some(&spares));
        assert!(pending[2].data.capacity() >= max_run);
        assert_ne!(pending[2].data.as_ptr(), kept);
    }
}
