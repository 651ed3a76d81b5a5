//! Segment files and the state every engine thread shares: which segments are free, how many
//! live records each holds, counters.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use super::buf::AlignedBuf;
use super::format::{SegmentHeader, segment_header_block};
use super::io::SegmentFiles;
use super::{StagingDurability, StagingError};

/// Makes durable whatever freed a segment's records; an error leaves the segment alone.
pub type RecycleBarrier = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Set in [`SegState::state`] once the owning thread has moved on to another segment.
pub(crate) const SEALED: u64 = 1 << 63;
/// Memory alignment of every I/O buffer (at least any `stx_dio_mem_align` seen in practice).
pub(crate) const BUF_ALIGN: usize = 4096;

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Most segments a log may have: the largest segment index plus one. The log keeps state for
/// every index up to the largest it finds, so a stray file name must not size that.
pub const MAX_SEGMENTS: usize = 1 << 20;

pub(crate) fn segment_name(index: u32) -> String {
    format!("seg-{index:06}.log")
}

pub(crate) fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(segment_name(index))
}

/// The index of a segment file's name, if it is exactly the name [`segment_path`] gives that
/// index (`seg-000007.log`, not `seg-7.log` or `seg-+7.log`, which would name another file).
pub(crate) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    (segment_name(index) == name).then_some(index)
}

#[derive(Default)]
pub(crate) struct SegState {
    /// Generation written in the segment header; records must carry the same.
    pub generation: AtomicU64,
    /// Live (appended, not freed) records, plus [`SEALED`].
    pub state: AtomicU64,
    /// Append time of the oldest record in this generation (0: none). An upper bound on the
    /// age of the oldest live record in it.
    pub oldest_us: AtomicU64,
    /// Record alignment of this generation.
    pub align: AtomicU32,
    /// The file was created preallocated only, not zero-filled (a bulk segment, see
    /// [`Shared::create_segment_filled`]): small durable records avoid it.
    pub unfilled: AtomicBool,
    /// Bytes from the start of the file known to be written and flushed, not unwritten
    /// (preallocated) extents. A record that reaches beyond it is not safe from a kernel
    /// crash once written: its extents become written only with a file-system journal commit,
    /// and until then the record reads back as zeros. The engine thread flushes after such a
    /// write, before acknowledging it, even when it was not asked to.
    pub converted: AtomicU64,
}

/// The offset of the first unwritten (preallocated, never written) extent of `file`, or
/// `size` if it has none; `size` too when the file system cannot say (`FIEMAP` unsupported:
/// such file systems have no unwritten extents either, e.g. tmpfs).
pub(crate) fn first_unwritten(file: &File, size: u64) -> u64 {
    // struct fiemap and struct fiemap_extent of <linux/fiemap.h>.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; 32],
    }
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const EXTENT_LAST: u32 = 0x1;
    const EXTENT_UNWRITTEN: u32 = 0x800;
    let mut start = 0u64;
    while start < size {
        let mut m = Fiemap {
            start,
            length: size - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: 32,
            reserved: 0,
            extents: [Extent::default(); 32],
        };
        // SAFETY: FS_IOC_FIEMAP fills at most `extent_count` extents of the struct we own.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m as *mut Fiemap) };
        if r != 0 || m.mapped_extents == 0 {
            return size;
        }
        for e in &m.extents[..m.mapped_extents as usize] {
            if e.flags & EXTENT_UNWRITTEN != 0 {
                return e.logical.max(start).min(size);
            }
            if e.flags & EXTENT_LAST != 0 {
                return size;
            }
            start = e.logical + e.length;
        }
    }
    size
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segment_size: u64,
    /// Record alignment used for new generations.
    pub align: u64,
    pub volume_uuid: [u8; 16],
    pub durability: StagingDurability,
    pub io_engine: &'static str,
    /// Every segment-file operation goes through here (the real file system, or a
    /// simulated device).
    pub fs: std::sync::Arc<dyn SegmentFiles>,
    pub files: Vec<OnceLock<File>>,
    pub segs: Vec<SegState>,
    /// Segments ready to be taken: their header already carries a fresh generation, or the
    /// file does not exist yet.
    pub free: Mutex<VecDeque<u32>>,
    /// Signalled when a segment is taken from `free` (the spare maker may have work) and at
    /// shutdown.
    pub free_cv: Condvar,
    /// A segment was taken since the spare maker last had enough ready (under `free`'s lock:
    /// set by engine threads, cleared by the spare maker). Spares are made on demand, not at
    /// mount, where zero-filling them would compete with the first requests for the disk.
    pub spare_demand: AtomicBool,
    /// The segment the spare maker is zero-filling now (`u32::MAX`: none), set under
    /// `free`'s lock: a bulk record does not wait for that fill.
    pub making_spare: AtomicU32,
    /// The log is shutting down: the spare maker exits.
    pub stopping: AtomicBool,
    pub create_lock: Mutex<()>,
    pub next_seq: AtomicU64,
    /// Per engine thread: the lowest sequence number it placed since its last completed
    /// flush (`u64::MAX`: none), a lower bound stored before the number is taken. See
    /// [`Shared::flushed_through`].
    pub unflushed_from: Vec<AtomicU64>,
    pub next_gen: AtomicU64,
    pub flushes: AtomicU64,
    /// Of `flushes`: `fdatasync`s, and writes made with `RWF_DSYNC`.
    pub datasyncs: AtomicU64,
    pub dsync_writes: AtomicU64,
    pub reads: AtomicU64,
    pub appends: AtomicU64,
    pub live_records: AtomicU64,
    pub live_bytes: AtomicU64,
    /// Segments that could not be recycled (header write failed); never reused.
    pub broken: AtomicU64,
    /// Called before a segment is given a new header (see
    /// [`super::StagingLog::set_recycle_barrier`]).
    pub recycle_barrier: OnceLock<RecycleBarrier>,
    /// Debug builds: the records handed out (appended and acknowledged, or replayed) and not
    /// freed yet, by (segment, offset). Whoever deletes a slice's `T` record frees its record,
    /// exactly once: a second free, or a free of a record never handed out, panics here.
    #[cfg(debug_assertions)]
    pub live_set: Mutex<std::collections::HashSet<(u32, u64)>>,
}

impl Shared {
    /// Every record numbered up to the value returned has been through a completed flush
    /// of its segment (or its number was given to nothing that reached the device). Each
    /// thread stores a lower bound of the next number into its `unflushed_from` before it
    /// takes one, and clears it after a flush covering all it wrote; the counter is read
    /// first, so a number taken before that read is seen in `unflushed_from`.
    pub fn flushed_through(&self) -> u64 {
        let next = self.next_seq.load(Ordering::SeqCst);
        let lowest = self
            .unflushed_from
            .iter()
            .map(|u| u.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        next.min(lowest).saturating_sub(1)
    }

    /// A record is handed out to the caller (debug builds check it is freed exactly once).
    pub fn note_live(&self, segment: u32, offset: u64) {
        #[cfg(debug_assertions)]
        {
            let fresh = self.live_set.lock().insert((segment, offset));
            debug_assert!(fresh, "staging record {segment}:{offset} handed out twice");
        }
        let _ = (segment, offset);
    }

    /// A record handed out is freed.
    pub fn note_freed(&self, segment: u32, offset: u64) {
        #[cfg(debug_assertions)]
        {
            let was_live = self.live_set.lock().remove(&(segment, offset));
            debug_assert!(
                was_live,
                "staging record {segment}:{offset} freed twice, or never handed out"
            );
        }
        let _ = (segment, offset);
    }

    /// Whether segment `seg`'s file has been created.
    pub fn exists(&self, seg: u32) -> bool {
        self.files[seg as usize].get().is_some()
    }

    /// Whether segment `seg`'s file exists and was zero-filled (fit for small durable records).
    pub fn zero_filled(&self, seg: u32) -> bool {
        self.exists(seg) && !self.segs[seg as usize].unfilled.load(Ordering::SeqCst)
    }

    pub fn fd(&self, seg: u32) -> Option<i32> {
        self.files
            .get(seg as usize)?
            .get()
            .map(|f: &File| f.as_raw_fd())
    }

    /// Creates segment `index`: a temporary file, preallocated and really zero-filled,
    /// its header written, synced, renamed into place, directory synced.
    pub fn create_segment(&self, index: u32) -> Result<u64, StagingError> {
        self.create_segment_filled(index, true)
    }

    /// As [`Shared::create_segment`]; without `zero_fill` the file is only preallocated.
    /// Writing into preallocated (unwritten) space makes the file system convert extents,
    /// a metadata change every `fdatasync` after it must persist (a journal commit on most
    /// file systems): fine for large records, which are few per flush, too slow for small
    /// durable ones. A full 64 MiB zero fill, on the other hand, doubles the disk writes of a
    /// large sequential write on a volume whose segments do not exist yet.
    pub fn create_segment_filled(&self, index: u32, zero_fill: bool) -> Result<u64, StagingError> {
        let _guard = self.create_lock.lock();
        if self.exists(index) {
            return Ok(self.segs[index as usize].generation.load(Ordering::SeqCst));
        }
        let generation = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let path = segment_path(&self.dir, index);
        let tmp = self.dir.join(format!("seg-{index:06}.tmp"));
        let fs = self.fs.as_ref();
        let io = |what: &str, e: std::io::Error| {
            // A partly written segment (no room on the disk) must not keep the space.
            let _ = fs.remove(&tmp);
            StagingError::io(format!("{what} {tmp:?}"), e)
        };
        {
            let f = fs.create(&tmp).map_err(|e| io("create", e))?;
            // Failure (no fallocate) is harmless when the zero fill below allocates anyway.
            if let Err(e) = fs.preallocate(&f, self.segment_size)
                && !zero_fill
            {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    return Err(io("fallocate", e));
                }
                // No fallocate here: a sparse file of the full size (holes read as zeros).
                fs.set_len(&f, self.segment_size)
                    .map_err(|e| io("set size of", e))?;
            }
            let mut block = vec![0u8; segment_header_block(self.align) as usize];
            self.header(index, generation).encode(&mut block);
            fs.write_at(&f, 0, &block).map_err(|e| io("write", e))?;
            if zero_fill {
                let from = block.len() as u64;
                fs.zero_fill(&f, from, self.segment_size - from)
                    .map_err(|e| io("write", e))?;
            }
            fs.sync(&f).map_err(|e| io("fsync", e))?;
        }
        fs.rename(&tmp, &path).map_err(|e| io("rename", e))?;
        self.sync_dir()?;
        let file = fs
            .open(&path)
            .map_err(|e| StagingError::io(format!("open {path:?}"), e))?;
        let st = &self.segs[index as usize];
        st.generation.store(generation, Ordering::SeqCst);
        st.align.store(self.align as u32, Ordering::SeqCst);
        st.unfilled.store(!zero_fill, Ordering::SeqCst);
        let header_block = segment_header_block(self.align);
        st.converted.store(
            if zero_fill {
                self.segment_size
            } else {
                first_unwritten(&file, self.segment_size).max(header_block)
            },
            Ordering::SeqCst,
        );
        let _ = self.files[index as usize].set(file);
        Ok(generation)
    }

    /// `fsync` of the log directory.
    pub fn sync_dir(&self) -> Result<(), StagingError> {
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| StagingError::io(format!("fsync {:?}", self.dir), e))
    }

    pub fn header(&self, index: u32, generation: u64) -> SegmentHeader {
        SegmentHeader {
            volume_uuid: self.volume_uuid,
            generation,
            segment_size: self.segment_size,
            align: self.align as u32,
            index,
            created_us: now_us(),
        }
    }

    /// The block to write at offset 0 of a segment to give it a new generation.
    pub fn header_block(&self, index: u32, generation: u64) -> AlignedBuf {
        let mut b = AlignedBuf::new(segment_header_block(self.align) as usize, BUF_ALIGN);
        self.header(index, generation).encode(b.as_mut_slice());
        b
    }

    /// Synchronous re-stamp used at open (not through an engine thread).
    pub fn restamp_now(&self, index: u32) -> Result<(), StagingError> {
        let generation = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let b = self.header_block(index, generation);
        let f = self.files[index as usize].get().expect("open segment");
        self.fs
            .write_at(f, 0, b.as_slice())
            .and_then(|_| self.fs.sync(f))
            .map_err(|e| StagingError::io(format!("re-stamp segment {index}"), e))?;
        let st = &self.segs[index as usize];
        st.generation.store(generation, Ordering::SeqCst);
        st.align.store(self.align as u32, Ordering::SeqCst);
        st.state.store(0, Ordering::SeqCst);
        st.oldest_us.store(0, Ordering::SeqCst);
        Ok(())
    }
}

/// Direct-I/O alignment of files in `dir`: `statx` `STATX_DIOALIGN` of a probe file, at
/// least 4096 (a 4 KiB physical sector makes smaller alignment a device read-modify-write),
/// 4096 when the kernel or file system does not say.
pub(crate) fn dio_align(dir: &Path) -> u64 {
    let probe = dir.join(".align-probe");
    let reported = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .ok()?;
        // SAFETY: statx fills the struct; we pass a valid fd, empty path and AT_EMPTY_PATH.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::statx(
                f.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
            return None;
        }
        Some(u64::from(
            stx.stx_dio_offset_align.max(stx.stx_dio_mem_align),
        ))
    })();
    let _ = std::fs::remove_file(&probe);
    match reported {
        Some(a) if a.is_power_of_two() => a.clamp(4096, 65536),
        _ => 4096,
    }
}

/// The spare maker: keeps `spares` free segments created (zero-filled, synced) ahead of need,
/// so that an engine thread moving to a new segment never writes and syncs a whole segment
/// file in the middle of its appends (hundreds of milliseconds for 64 MiB on these disks, a
/// stall for every fsync behind it). The segment stays in the free list while it is created:
/// an engine thread that takes it meanwhile waits for the creation (`create_lock`) instead of
/// finding the log full. Once created it moves to the front, taken next.
pub(crate) fn make_spares(shared: &Shared, spares: usize) {
    let mut free = shared.free.lock();
    // After a failure (a full disk), wait a while before trying again.
    let mut failed_at: Option<std::time::Instant> = None;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Spares are for small durable records: only zero-filled segments count.
        let ready = free.iter().filter(|&&s| shared.zero_filled(s)).count();
        let resting = failed_at.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(30));
        if ready >= spares {
            shared.spare_demand.store(false, Ordering::SeqCst);
        }
        let wanted = shared.spare_demand.load(Ordering::SeqCst);
        let next = if ready < spares && wanted && !resting {
            free.iter().find(|&&s| !shared.exists(s)).copied()
        } else {
            None
        };
        let Some(segment) = next else {
            shared
                .free_cv
                .wait_for(&mut free, std::time::Duration::from_secs(1));
            continue;
        };
        shared.making_spare.store(segment, Ordering::SeqCst);
        let made = parking_lot::MutexGuard::unlocked(&mut free, || shared.create_segment(segment));
        shared.making_spare.store(u32::MAX, Ordering::SeqCst);
        match made {
            Ok(_) => {
                if let Some(pos) = free.iter().position(|s| *s == segment) {
                    free.remove(pos);
                    free.push_front(segment);
                }
            }
            Err(e) => {
                // An engine thread that gets to it tries again (and reports the error).
                tracing::warn!("staging log: cannot prepare segment {segment} ahead: {e}");
                failed_at = Some(std::time::Instant::now());
            }
        }
    }
}
