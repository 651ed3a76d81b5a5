//! Buffers aligned for O_DIRECT: zeroed heap buffers, and per-engine-thread pools of
//! buffers carved from one anonymous mapping (registered with the thread's io_uring).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};
use memmap2::{Advice, MmapMut};

use super::segments::BUF_ALIGN;

/// A zero-initialised byte buffer whose address and length are multiples of `align`.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it between threads is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes at an address aligned to `align` (a power of two); the allocation is
    /// rounded up to a multiple of `align`.
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let cap = len.max(1).next_multiple_of(align);
        let layout = Layout::from_size_align(cap, align).expect("aligned layout");
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes allocated: the most [`AlignedBuf::set_len`] accepts.
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Uses the first `len` bytes of the allocation (its contents are kept: zeros only if
    /// nothing was written there since [`AlignedBuf::new`]).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "{len} bytes in a buffer of {}",
            self.capacity()
        );
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A pool of equal, page-aligned buffers carved out of one anonymous mapping, owned by one
/// engine thread (its uring engine registers them with its ring, so that records in them are
/// written with `WRITE_FIXED` and read with `READ_FIXED`: no page pinning per I/O). Callers
/// on any thread take a free buffer without locking ([`IoBuf::new`]) and the buffer goes
/// back to the pool when its [`PoolBuf`] is dropped.
///
/// The mapping is `MADV_DONTFORK` (a child process does not inherit it: pinned pages would
/// otherwise be copied at every `fork`).
pub(crate) struct BufPool {
    map: MmapMut,
    /// Start of the mapping; buffer `i` is `[base + i * buf_size, base + (i + 1) * buf_size)`.
    base: *mut u8,
    buf_size: usize,
    count: usize,
    free_tx: Sender<u16>,
    free_rx: Receiver<u16>,
    /// Writes and reads the uring engine submitted as `WRITE_FIXED` / `READ_FIXED`.
    pub fixed_writes: AtomicU64,
    pub fixed_reads: AtomicU64,
    /// Buffers asked for that did not come from the pool (too large, or none free).
    pub misses: AtomicU64,
    /// Record buffers larger than `buf_size`, written and given back, kept for the next
    /// large record (at most [`LARGE_KEEP_BYTES`] in all).
    large: parking_lot::Mutex<Vec<AlignedBuf>>,
    /// Large record buffers that came from `large` instead of a fresh allocation.
    pub large_reused: AtomicU64,
}

// SAFETY: `base` points into `map`, which the pool owns; each buffer is handed out to one
// `PoolBuf` at a time (its index is in the free list or owned by that `PoolBuf`, never both).
unsafe impl Send for BufPool {}
// SAFETY: as above; shared state is atomics and a channel.
unsafe impl Sync for BufPool {}

/// Most buffers a pool holds (buffer indexes are `u16`, as io_uring's `buf_index`).
pub(crate) const MAX_POOL_BUFFERS: usize = 1 << 16;

/// Bytes of record buffers too large for the pool that each pool keeps for reuse once their
/// record is written (a large sequential write stages a 16 MiB record after another; a fresh
/// buffer for each costs a page fault and a page zeroing per 4 KiB, about as much CPU as
/// copying the data in).
pub(crate) const LARGE_KEEP_BYTES: usize = 64 << 20;

impl BufPool {
    /// `count` buffers of `buf_size` bytes (a positive multiple of [`BUF_ALIGN`]).
    pub fn new(count: usize, buf_size: usize) -> std::io::Result<BufPool> {
        assert!(count > 0 && count <= MAX_POOL_BUFFERS);
        assert!(buf_size > 0 && buf_size.is_multiple_of(BUF_ALIGN));
        let total = count
            .checked_mul(buf_size)
            .ok_or_else(|| std::io::Error::other("buffer pool size overflows"))?;
        let mut map = MmapMut::map_anon(total)?;
        // Not essential: a failure only costs the fork copy / huge pages.
        let _ = map.advise(Advice::DontFork);
        let _ = map.advise(Advice::HugePage);
        let base = map.as_mut_ptr();
        let (free_tx, free_rx) = bounded(count);
        for i in 0..count {
            free_tx
                .send(i as u16)
                .expect("free list has room for every buffer");
        }
        Ok(BufPool {
            map,
            base,
            buf_size,
            count,
            free_tx,
            free_rx,
            fixed_writes: AtomicU64::new(0),
            fixed_reads: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            large: parking_lot::Mutex::new(Vec::new()),
            large_reused: AtomicU64::new(0),
        })
    }

    /// Bytes of the large record buffers kept for reuse.
    pub fn kept_large_bytes(&self) -> u64 {
        self.large.lock().iter().map(|b| b.capacity() as u64).sum()
    }

    /// Frees the large record buffers kept for reuse; returns their bytes.
    pub fn release_large(&self) -> u64 {
        let freed = std::mem::take(&mut *self.large.lock());
        freed.iter().map(|b| b.capacity() as u64).sum()
    }

    /// One `iovec` per buffer, in index order (for `io_uring_register_buffers`).
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                // SAFETY: i * buf_size < the mapping's length.
                iov_base: unsafe { self.base.add(i * self.buf_size) } as *mut libc::c_void,
                iov_len: self.buf_size,
            })
            .collect()
    }

    /// The index of the buffer holding all of `[ptr, ptr + len)`, if one does.
    pub fn index_of(&self, ptr: *const u8, len: usize) -> Option<u16> {
        let off = (ptr as usize).checked_sub(self.base as usize)?;
        if off >= self.map.len() {
            return None;
        }
        let i = off / self.buf_size;
        (off + len <= (i + 1) * self.buf_size).then_some(i as u16)
    }
}

/// A buffer taken from a [`BufPool`]; given back when dropped. Its bytes are whatever the
/// previous user left (never uninitialised: the mapping starts zeroed).
pub(crate) struct PoolBuf {
    pool: Arc<BufPool>,
    index: u16,
    len: usize,
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        // Never full: the free list has room for every buffer and this one is not in it.
        let _ = self.pool.free_tx.try_send(self.index);
    }
}

impl PoolBuf {
    fn ptr(&self) -> *mut u8 {
        // SAFETY: index < count, so the offset is inside the mapping.
        unsafe {
            self.pool
                .base
                .add(usize::from(self.index) * self.pool.buf_size)
        }
    }
}

/// A record buffer too large for its pool's buffers, given back to the pool's list of
/// large buffers when dropped (if the list has room).
pub(crate) struct LargeBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<BufPool>,
}

impl Drop for LargeBuf {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let mut kept = self.pool.large.lock();
        let bytes: usize = kept.iter().map(AlignedBuf::capacity).sum();
        if bytes + buf.capacity() <= LARGE_KEEP_BYTES {
            kept.push(buf);
        }
    }
}

impl LargeBuf {
    fn get(&self) -> &AlignedBuf {
        self.buf.as_ref().expect("taken only when dropped")
    }

    fn get_mut(&mut self) -> &mut AlignedBuf {
        self.buf.as_mut().expect("taken only when dropped")
    }
}

/// An aligned I/O buffer: from the engine thread's pool when the request fits and a buffer
/// is free, else a fresh heap allocation (or, for a record, a large buffer used before).
pub(crate) enum IoBuf {
    Heap(AlignedBuf),
    Pool(PoolBuf),
    Large(LargeBuf),
}

impl IoBuf {
    /// `len` bytes aligned to [`BUF_ALIGN`]. A pool buffer's contents are NOT zeroed (a heap
    /// buffer's are): the caller must write every byte it will use.
    pub fn new(pool: Option<&Arc<BufPool>>, len: usize) -> IoBuf {
        if let Some(pool) = pool {
            if len <= pool.buf_size
                && let Ok(index) = pool.free_rx.try_recv()
            {
                return IoBuf::Pool(PoolBuf {
                    pool: pool.clone(),
                    index,
                    len,
                });
            }
            pool.misses.fetch_add(1, Ordering::Relaxed);
        }
        IoBuf::Heap(AlignedBuf::new(len, BUF_ALIGN))
    }

    /// A buffer for a record of `len` bytes, which the caller writes whole: as
    /// [`IoBuf::new`], but a record too large for the pool takes a large buffer given back
    /// by an earlier record when one is big enough, and goes back to the pool's list when
    /// dropped. Its contents are NOT zeroed.
    pub fn for_record(pool: Option<&Arc<BufPool>>, len: usize) -> IoBuf {
        let Some(pool) = pool.filter(|p| len > p.buf_size) else {
            return IoBuf::new(pool, len);
        };
        let reused = {
            let mut kept = pool.large.lock();
            // The smallest that fits, so that a larger one stays for a larger record.
            let best = (0..kept.len())
                .filter(|&i| kept[i].capacity() >= len)
                .min_by_key(|&i| kept[i].capacity());
            best.map(|i| kept.swap_remove(i))
        };
        let buf = match reused {
            Some(mut b) => {
                pool.large_reused.fetch_add(1, Ordering::Relaxed);
                b.set_len(len);
                b
            }
            None => {
                pool.misses.fetch_add(1, Ordering::Relaxed);
                AlignedBuf::new(len, BUF_ALIGN)
            }
        };
        IoBuf::Large(LargeBuf {
            buf: Some(buf),
            pool: pool.clone(),
        })
    }

    pub fn len(&self) -> usize {
        match self {
            IoBuf::Heap(b) => b.len(),
            IoBuf::Pool(p) => p.len,
            IoBuf::Large(l) => l.get().len(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Heap(b) => b.as_slice(),
            // SAFETY: the buffer is len <= buf_size initialised bytes inside the mapping,
            // owned by this PoolBuf until it is dropped.
            IoBuf::Pool(p) => unsafe { std::slice::from_raw_parts(p.ptr(), p.len) },
            IoBuf::Large(l) => l.get().as_slice(),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Heap(b) => b.as_mut_slice(),
            // SAFETY: as above, and &mut self makes the access exclusive.
            IoBuf::Pool(p) => unsafe { std::slice::from_raw_parts_mut(p.ptr(), p.len) },
            IoBuf::Large(l) => l.get_mut().as_mut_slice(),
        }
    }
}
