//! One engine thread: owns an I/O backend (its own io_uring) and an active segment, drains
//! its request queue in batches, writes a batch at once and flushes once for all the durable
//! requests in it (group commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::buf::IoBuf;
use super::format::seal_record_header;
use super::io::{IoBackend, WriteOp};
use super::queue::Receiver;
use super::segments::{SEALED, Shared, now_us};
use super::{FlushMode, StagedLoc, StagingError};

/// Most requests one batch takes from the queue.
const MAX_BATCH: usize = 256;
/// Records with this much data (a run of a large write) go to the thread's bulk segment;
/// with small segments, a quarter of a segment (the largest run a file stages) already does.
pub(crate) const BULK_RECORD: u64 = 1 << 20;

pub(crate) fn bulk_threshold(segment_size: u64) -> u64 {
    BULK_RECORD.min(segment_size / 4)
}

pub(crate) type Reply<T> = super::oneshot::Sender<Result<T, StagingError>>;

pub(crate) enum Request {
    Append {
        /// The whole record: header (without generation, sequence, crc) and data, padded;
        /// in a buffer of this thread's pool when it fits.
        buf: IoBuf,
        len: u32,
        durable: bool,
        reply: Reply<StagedLoc>,
    },
    Read {
        segment: u32,
        /// (file offset, buffer to fill).
        ranges: Vec<(u64, IoBuf)>,
        reply: Reply<Vec<IoBuf>>,
    },
    Sync {
        reply: Reply<()>,
    },
    /// Every record of the segment was freed: give it a new generation and free it.
    Recycle {
        segment: u32,
    },
    Shutdown,
}

#[derive(Clone)]
struct Active {
    segment: u32,
    generation: u64,
    cursor: u64,
}

#[derive(Debug)]
enum Status {
    Pending,
    Written,
    Failed(StagingError),
}

struct Placed {
    buf: IoBuf,
    seq: u64,
    segment: u32,
    offset: u64,
    len: u32,
    durable: bool,
    status: Status,
    reply: Reply<StagedLoc>,
}

pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    /// This thread's slot in [`Shared::unflushed_from`].
    pub index: usize,
    pub backend: Box<dyn IoBackend>,
    pub rx: Receiver<Request>,
    pub flush_mode: FlushMode,
    /// The segments being appended to, indexed by `bulk as usize`: `[0]` for most records,
    /// `[1]` for records of at least [`bulk_threshold`] bytes, a segment that may be only
    /// preallocated, not zero-filled (see [`Shared::create_segment_filled`]).
    active: [Option<Active>; 2],
    /// Segments written since this thread's last flush.
    dirty: Vec<u32>,
    /// Segments whose records are all freed but whose recycle barrier failed: tried again
    /// after the next batch.
    deferred: Vec<u32>,
    /// Failed writes whose bytes may be on the device (a torn write) and not yet durably
    /// overwritten: (segment, end offset, sequence number). The records placed over them
    /// are appended from the failed one's offset; until a flush covers them past its end, a
    /// power cut may lose them and bring the failed record back, so the log's
    /// flushed-through number must stay below its number.
    holes: Vec<(u32, u64, u64)>,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        index: usize,
        backend: Box<dyn IoBackend>,
        rx: Receiver<Request>,
        flush_mode: FlushMode,
    ) -> Worker {
        Worker {
            shared,
            index,
            backend,
            rx,
            flush_mode,
            active: [None, None],
            dirty: Vec::new(),
            deferred: Vec::new(),
            holes: Vec::new(),
        }
    }

    pub fn run(mut self) {
        loop {
            let first = if self.deferred.is_empty() {
                match self.rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                match self.rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(r) => r,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        for segment in std::mem::take(&mut self.deferred) {
                            self.recycle(segment);
                        }
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if self.process(batch) {
                break;
            }
        }
        for i in 0..self.active.len() {
            if let Some(a) = self.active[i].take() {
                self.seal(a.segment);
            }
        }
    }

    /// Returns true on shutdown.
    fn process(&mut self, batch: Vec<Request>) -> bool {
        // Writes of earlier batches not yet pushed through the device cache. `RWF_DSYNC` does
        // not cover them: on a device with FUA it makes only its own write durable.
        let unflushed_before = !self.dirty.is_empty();
        let mut shutdown = false;
        let mut placed = Vec::new();
        let mut syncs = Vec::new();
        let mut reads = Vec::new();
        for req in batch {
            match req {
                Request::Append {
                    buf,
                    len,
                    durable,
                    reply,
                } => self.place(buf, len, durable, reply, &mut placed),
                Request::Read {
                    segment,
                    ranges,
                    reply,
                } => reads.push((segment, ranges, reply)),
                Request::Sync { reply } => syncs.push(reply),
                Request::Recycle { segment } => self.recycle(segment),
                Request::Shutdown => shutdown = true,
            }
        }

        // `RWF_DSYNC` only where it covers every write a flush would: nothing unflushed from
        // earlier batches, no plain write in this one, no explicit sync.
        let all_durable = placed.iter().all(|p| p.durable);
        let dsync_covers = !unflushed_before && all_durable && syncs.is_empty();
        let use_dsync = match self.flush_mode {
            FlushMode::Dsync => dsync_covers && !placed.is_empty(),
            FlushMode::Fdatasync => false,
            FlushMode::Auto => dsync_covers && placed.len() == 1,
        };
        self.write_placed(&mut placed, use_dsync);

        let written_durable = placed
            .iter()
            .any(|p| p.durable && matches!(p.status, Status::Written));
        // Records written into never-written (preallocated) space: see `SegState::converted`.
        let converting: Vec<bool> = placed
            .iter()
            .map(|p| {
                matches!(p.status, Status::Written)
                    && p.offset + p.buf.len() as u64
                        > self.shared.segs[p.segment as usize]
                            .converted
                            .load(Ordering::SeqCst)
            })
            .collect();
        let any_converting = converting.iter().any(|&c| c);
        let mut flush_err = None;
        if !syncs.is_empty() || (written_durable && !use_dsync) || any_converting {
            if let Err(e) = self.flush() {
                flush_err = Some(e);
            } else {
                for p in placed
                    .iter()
                    .filter(|p| matches!(p.status, Status::Written))
                {
                    self.shared.segs[p.segment as usize]
                        .converted
                        .fetch_max(p.offset + p.buf.len() as u64, Ordering::SeqCst);
                }
            }
        } else if use_dsync {
            let n = placed
                .iter()
                .filter(|p| matches!(p.status, Status::Written))
                .count();
            self.shared.flushes.fetch_add(n as u64, Ordering::Relaxed);
            self.shared
                .dsync_writes
                .fetch_add(n as u64, Ordering::Relaxed);
            // Every write of the batch went through the cache on its own and nothing was
            // pending before (a failed write left nothing behind that a flush would cover).
            self.dirty.clear();
            self.all_flushed();
        }

        for (p, converting) in placed.into_iter().zip(converting) {
            let result = match p.status {
                Status::Written => match (&flush_err, (p.durable && !use_dsync) || converting) {
                    (Some(e), true) => Err(e.clone()),
                    _ => {
                        self.shared.appends.fetch_add(1, Ordering::Relaxed);
                        Ok(StagedLoc {
                            segment: p.segment,
                            offset: p.offset,
                            len: p.len,
                        })
                    }
                },
                Status::Failed(e) => Err(e),
                Status::Pending => unreachable!("every placed write ends written or failed"),
            };
            let ok = result.is_ok();
            let size = p.buf.len() as u64;
            // The buffer goes back to its pool before the caller hears of it, so that the
            // caller's next record finds it free.
            drop(p.buf);
            if ok {
                self.shared.note_live(p.segment, p.offset);
                self.shared.live_bytes.fetch_add(size, Ordering::Relaxed);
                self.shared.live_records.fetch_add(1, Ordering::Relaxed);
            }
            // A caller that gave up waiting (the device was too slow) stored its data
            // elsewhere: the record is not needed.
            if p.reply.send(result).is_err() || !ok {
                if ok {
                    self.shared.note_freed(p.segment, p.offset);
                    self.shared.live_bytes.fetch_sub(size, Ordering::Relaxed);
                    self.shared.live_records.fetch_sub(1, Ordering::Relaxed);
                }
                self.unref(p.segment);
            }
        }
        for reply in syncs {
            let _ = reply.send(match &flush_err {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            });
        }
        for (segment, ranges, reply) in reads {
            let _ = reply.send(self.read(segment, ranges));
        }
        for segment in std::mem::take(&mut self.deferred) {
            self.recycle(segment);
        }
        shutdown
    }

    /// Gives the record a place (taking a new segment when the active one is full), its
    /// generation and sequence number.
    fn place(
        &mut self,
        mut buf: IoBuf,
        len: u32,
        durable: bool,
        reply: Reply<StagedLoc>,
        placed: &mut Vec<Placed>,
    ) {
        let size = buf.len() as u64;
        let first = super::format::segment_header_block(self.shared.align);
        if size > self.shared.segment_size - first {
            let _ = reply.send(Err(StagingError::TooLarge { len }));
            return;
        }
        let bulk = u64::from(len) >= bulk_threshold(self.shared.segment_size);
        let fits = self.active[usize::from(bulk)]
            .as_ref()
            .is_some_and(|a| a.cursor + size <= self.shared.segment_size);
        if !fits {
            match self.take(bulk) {
                Ok(Some(next)) => {
                    if let Some(old) = self.active[usize::from(bulk)].replace(next) {
                        self.seal(old.segment);
                    }
                }
                Ok(None) => {
                    let _ = reply.send(Err(StagingError::Full));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let a = self.active[usize::from(bulk)]
            .as_mut()
            .expect("active segment");
        let flushed_through = self.shared.flushed_through();
        let unflushed = &self.shared.unflushed_from[self.index];
        if unflushed.load(Ordering::SeqCst) == u64::MAX {
            unflushed.store(
                self.shared.next_seq.load(Ordering::SeqCst),
                Ordering::SeqCst,
            );
        }
        let seq = self.shared.next_seq.fetch_add(1, Ordering::SeqCst);
        seal_record_header(buf.as_mut_slice(), a.generation, seq, flushed_through);
        let st = &self.shared.segs[a.segment as usize];
        st.state.fetch_add(1, Ordering::SeqCst);
        let _ = st
            .oldest_us
            .compare_exchange(0, now_us(), Ordering::SeqCst, Ordering::SeqCst);
        if !self.dirty.contains(&a.segment) {
            self.dirty.push(a.segment);
        }
        placed.push(Placed {
            buf,
            seq,
            segment: a.segment,
            offset: a.cursor,
            len,
            durable,
            status: Status::Pending,
            reply,
        });
        a.cursor += size;
    }

    /// Takes a free segment, one whose file exists if there is one (creating its file on
    /// first use). A recycled segment costs nothing to reuse, while a new one is zero-filled:
    /// 64 MiB of extra disk writes competing with the appends.
    ///
    /// Bulk records prefer a segment that is only preallocated, then a new one (also only
    /// preallocated), then a zero-filled one; the others prefer zero-filled segments, then a
    /// new (zero-filled) one, and take an unfilled one only when nothing else is free.
    fn take(&mut self, bulk: bool) -> Result<Option<Active>, StagingError> {
        let shared = &self.shared;
        let created = |s: u32| shared.exists(s);
        let filled = |s: u32| shared.zero_filled(s);
        let taken = {
            let mut free = shared.free.lock();
            // Bulk: keep the zero-filled spares for small records, and create a new
            // segment (cheap: preallocated only) before taking one of them.
            let making = shared.making_spare.load(Ordering::SeqCst);
            let pick = if bulk {
                free.iter()
                    .position(|&s| created(s) && !filled(s))
                    .or_else(|| free.iter().position(|&s| !created(s) && s != making))
                    .or_else(|| free.iter().position(|&s| filled(s)))
            } else {
                free.iter()
                    .position(|&s| filled(s))
                    .or_else(|| free.iter().position(|&s| !created(s)))
            };
            free.remove(pick.unwrap_or(0))
        };
        let Some(segment) = taken else {
            return Ok(None);
        };
        if !bulk {
            self.shared.spare_demand.store(true, Ordering::SeqCst);
            self.shared.free_cv.notify_all();
        }
        let generation = if !self.shared.exists(segment) {
            match self.shared.create_segment_filled(segment, !bulk) {
                Ok(g) => g,
                Err(e) => {
                    self.shared.free.lock().push_back(segment);
                    return Err(e);
                }
            }
        } else {
            self.shared.segs[segment as usize]
                .generation
                .load(Ordering::SeqCst)
        };
        let st = &self.shared.segs[segment as usize];
        st.state.store(0, Ordering::SeqCst);
        st.oldest_us.store(0, Ordering::SeqCst);
        st.align.store(self.shared.align as u32, Ordering::SeqCst);
        Ok(Some(Active {
            segment,
            generation,
            cursor: super::format::segment_header_block(self.shared.align),
        }))
    }

    fn seal(&mut self, segment: u32) {
        let prev = self.shared.segs[segment as usize]
            .state
            .fetch_or(SEALED, Ordering::SeqCst);
        if prev == 0 {
            self.recycle(segment);
        }
    }

    /// Drops the reference a failed append held.
    fn unref(&mut self, segment: u32) {
        let prev = self.shared.segs[segment as usize]
            .state
            .fetch_sub(1, Ordering::SeqCst);
        if prev == SEALED | 1 {
            self.recycle(segment);
        }
    }

    /// Writes a new generation into the segment header, makes it durable, frees the segment.
    /// The flush here means a later durable record never depends on an unflushed header.
    fn recycle(&mut self, segment: u32) {
        if let Some(barrier) = self.shared.recycle_barrier.get()
            && let Err(e) = barrier()
        {
            tracing::warn!(
                segment,
                error = %e,
                "staging: what freed the segment's records is not durable yet; it keeps them"
            );
            if !self.deferred.contains(&segment) {
                self.deferred.push(segment);
            }
            return;
        }
        let generation = self.shared.next_gen.fetch_add(1, Ordering::SeqCst);
        let block = self.shared.header_block(segment, generation);
        let Some(fd) = self.shared.fd(segment) else {
            return;
        };
        let op = WriteOp {
            fd,
            offset: 0,
            ptr: block.as_slice().as_ptr(),
            len: block.len(),
            dsync: false,
        };
        let r = self
            .backend
            .write_batch(&[op])
            .pop()
            .unwrap()
            .and_then(|_| self.backend.datasync(&[fd]));
        match r {
            Ok(()) => {
                self.shared.flushes.fetch_add(1, Ordering::Relaxed);
                let st = &self.shared.segs[segment as usize];
                st.generation.store(generation, Ordering::SeqCst);
                st.state.store(0, Ordering::SeqCst);
                st.oldest_us.store(0, Ordering::SeqCst);
                self.dirty.retain(|&s| s != segment);
                self.shared.free.lock().push_back(segment);
            }
            Err(e) => {
                tracing::error!(segment, error = %e, "staging: cannot recycle segment; it stays out of use");
                self.shared.broken.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes every pending record. When a write fails, the records placed after it in the
    /// same segment would sit behind a hole (replay stops at the first invalid record), so
    /// they are moved down over the failed one and written again.
    fn write_placed(&mut self, placed: &mut [Placed], dsync: bool) {
        loop {
            let idx: Vec<usize> = (0..placed.len())
                .filter(|&i| matches!(placed[i].status, Status::Pending))
                .collect();
            if idx.is_empty() {
                return;
            }
            let ops: Vec<WriteOp> = idx
                .iter()
                .map(|&i| {
                    let p = &placed[i];
                    WriteOp {
                        fd: self.shared.fd(p.segment).expect("open segment"),
                        offset: p.offset,
                        ptr: p.buf.as_slice().as_ptr(),
                        len: p.buf.len(),
                        dsync: dsync && p.durable,
                    }
                })
                .collect();
            let results = self.backend.write_batch(&ops);
            let mut failed: Vec<(u32, u64)> = Vec::new();
            for (&i, r) in idx.iter().zip(results) {
                placed[i].status = match r {
                    Ok(()) => Status::Written,
                    Err(e) => {
                        failed.push((placed[i].segment, placed[i].offset));
                        self.holes.push((
                            placed[i].segment,
                            placed[i].offset + placed[i].buf.len() as u64,
                            placed[i].seq,
                        ));
                        Status::Failed(StagingError::io("staging write", e))
                    }
                };
            }
            if failed.is_empty() {
                return;
            }
            failed.sort_unstable();
            failed.dedup_by_key(|f| f.0);
            for (segment, hole) in failed {
                let mut cursor = hole;
                let mut after: Vec<usize> = (0..placed.len())
                    .filter(|&i| placed[i].segment == segment && placed[i].offset > hole)
                    .collect();
                after.sort_by_key(|&i| placed[i].offset);
                for i in after {
                    if matches!(placed[i].status, Status::Written) {
                        placed[i].offset = cursor;
                        placed[i].status = Status::Pending;
                        cursor += placed[i].buf.len() as u64;
                    }
                }
                for a in self.active.iter_mut().flatten() {
                    if a.segment == segment {
                        a.cursor = cursor;
                    }
                }
            }
        }
    }

    /// Everything this thread wrote is through the device cache: only failed writes not
    /// yet overwritten past their end (by records now flushed) stay below the log's
    /// flushed-through number. One in a segment no longer appended to is a torn tail.
    fn all_flushed(&mut self) {
        let active = self.active.clone();
        self.holes.retain(|&(segment, end, _)| {
            active
                .iter()
                .flatten()
                .any(|a| a.segment == segment && a.cursor < end)
        });
        let floor = self.holes.iter().map(|h| h.2).min().unwrap_or(u64::MAX);
        self.shared.unflushed_from[self.index].store(floor, Ordering::SeqCst);
    }

    fn flush(&mut self) -> Result<(), StagingError> {
        if self.dirty.is_empty() {
            // What was placed since the last flush failed to write, or its segment was
            // recycled (with a flush) since.
            self.all_flushed();
            return Ok(());
        }
        let fds: Vec<i32> = self
            .dirty
            .iter()
            .filter_map(|&s| self.shared.fd(s))
            .collect();
        self.shared
            .flushes
            .fetch_add(fds.len() as u64, Ordering::Relaxed);
        self.shared
            .datasyncs
            .fetch_add(fds.len() as u64, Ordering::Relaxed);
        self.backend
            .datasync(&fds)
            .map_err(|e| StagingError::io("staging flush", e))?;
        self.dirty.clear();
        self.all_flushed();
        Ok(())
    }

    fn read(
        &mut self,
        segment: u32,
        mut ranges: Vec<(u64, IoBuf)>,
    ) -> Result<Vec<IoBuf>, StagingError> {
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        let fd = self
            .shared
            .fd(segment)
            .ok_or_else(|| StagingError::Invalid(format!("segment {segment} does not exist")))?;
        for (off, buf) in ranges.iter_mut() {
            self.backend
                .read(fd, *off, buf.as_mut_slice())
                .map_err(|e| StagingError::io("staging read", e))?;
        }
        Ok(ranges.into_iter().map(|(_, b)| b).collect())
    }
}
