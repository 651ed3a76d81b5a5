//! The namespace write-ahead log: makes every metadata transaction survive a crash of spoolfs
//! or of the kernel once `update` returns, at the cost of one O_DIRECT append to the staging
//! device instead of an fsync of the metadata store.
//!
//! [`WalStore`] wraps a [`KvStore`]. Each write transaction runs on the inner store with a
//! non-durable commit; inside it the wrapper records the transaction's write set and gives it
//! the next sequence number (inside the transaction, so sequence order is commit order), and
//! stores that number under [`APPLIED_SEQ_KEY`]. After the commit it appends the write set to
//! the log and returns once every record up to its own is on the device. A `Durable` update
//! additionally flushes the device cache. A deferred update ([`WalStore::update_deferred`], a
//! file's create) submits its record and returns without waiting for it: the record is
//! settled by the first call that waits for a later number (the log is ordered, so every
//! waiter waits for the records before its own), by [`WalStore::wait_logged`] or by the next
//! checkpoint. A held update ([`WalStore::update_held`], an attribute change) does not even
//! submit its record: it goes with the next record submitted, in one batch. A write set that
//! rides with a [`Carrier`]'s data is
//! submitted just before the commit instead, so the device write and the commit overlap; if
//! the commit then fails, an empty record with the same number is logged, and replay prefers
//! it to the carried copy.
//!
//! Recovery: the inner store comes back at its last durable commit, which says (under
//! [`APPLIED_SEQ_KEY`]) the last sequence it contains. The log's records after it are applied
//! in order, stopping at the first missing number (a record whose append never finished belongs
//! to a transaction nobody was told about, and no later record was acknowledged before it).
//! Then the store is made durable and the log can be recycled.

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{
    Durability, Entries, KvRead, KvStore, KvTxn, MetaError, Result, UpdateFn, ViewFn,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The key under which the inner store records the last logged sequence it contains.
pub const APPLIED_SEQ_KEY: &[u8] = b"Wseq";
/// The key of the log epoch: bumped by every recovery, so records that a recovery decided not
/// to apply (after a gap) can never be mistaken for new ones with the same sequence number.
pub const EPOCH_KEY: &[u8] = b"Wepoch";

/// Records in the inner store where in the log its state stands: the log epoch and the last
/// sequence applied.
pub fn put_position(t: &mut dyn KvTxn, epoch: u64, applied_seq: u64) -> Result<()> {
    t.put(APPLIED_SEQ_KEY, &applied_seq.to_be_bytes())?;
    t.put(EPOCH_KEY, &epoch.to_be_bytes())
}

/// Another log that can take a transaction's record along with its own data in one append
/// (the data staging log, carrying a slice and the metadata change that links it): one device
/// write instead of two. See [`WalStore::update_carried`].
pub trait Carrier {
    /// Starts appending `record` (the transaction numbered `seq`) with the carrier's own data
    /// and returns without waiting. Called inside the transaction just before it commits, so
    /// the device write overlaps the commit. `durable`: through the device cache, with a
    /// flush that also covers every write completed before it. An error means nothing was
    /// submitted.
    fn submit(&mut self, seq: u64, record: &[u8], durable: bool) -> std::io::Result<()>;
    /// Waits for the submitted append. Once it succeeded the carrier must keep the record
    /// until [`WalStore::persisted_through`] reaches its `seq`.
    fn finish(&mut self) -> std::io::Result<()>;
    /// The transaction did not commit: wait for the submitted append and give its space back.
    fn discard(&mut self);
    /// Flushes the device cache for everything the carrier appended.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A record handed to a [`RecordLog`], not yet known to be on the device.
pub enum PendingRecord {
    /// Already appended: its handle.
    Done(u64),
    /// On its way to the staging log.
    Staged(crate::staging::PendingAppend),
}

impl PendingRecord {
    /// Whether waiting for it would not block (it is on the device, or failed).
    fn is_done(&self) -> bool {
        match self {
            PendingRecord::Done(_) => true,
            PendingRecord::Staged(p) => p.is_done(),
        }
    }
}

/// What the write-ahead log needs from a log device.
pub trait RecordLog: Send + Sync {
    /// Starts appending one record (not necessarily flushed) and returns without waiting.
    fn submit(&self, record: &[u8]) -> std::io::Result<PendingRecord>;
    /// [`Self::submit`] of several records at once (a log may write them as one batch).
    fn submit_many(&self, records: &[&[u8]]) -> Vec<std::io::Result<PendingRecord>> {
        records.iter().map(|r| self.submit(r)).collect()
    }
    /// Waits for a submitted record; returns a handle for `free`.
    fn finish(&self, pending: PendingRecord) -> std::io::Result<u64>;
    /// Appends one record and waits for it.
    fn append(&self, record: &[u8]) -> std::io::Result<u64> {
        self.finish(self.submit(record)?)
    }
    /// Flushes every completed append to stable storage.
    fn sync(&self) -> std::io::Result<()>;
    /// The record is no longer needed.
    fn free(&self, handle: u64);
}

/// How a transaction's record left before its commit (see [`WalStore::update_carried`]).
enum Early {
    Nothing,
    /// With the carrier's data.
    Carried,
    /// To the namespace log.
    Logged(PendingRecord),
    /// Held back ([`WalStore::update_held`]): written with the next record submitted.
    Held,
}

/// Whether an update waits for its record, and when that record leaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Defer {
    /// The update waits for its record.
    No,
    /// Submitted at once, not waited for ([`WalStore::update_deferred`]).
    Submit,
    /// Held back, not waited for ([`WalStore::update_held`]).
    Hold,
}

#[derive(Serialize, Deserialize)]
struct WalRecord {
    epoch: u64,
    seq: u64,
    /// `(key, Some(value))` is a put, `(key, None)` a delete.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A write set: `(key, Some(value))` is a put, `(key, None)` a delete.
type Writes = [(Vec<u8>, Option<Vec<u8>>)];

/// A [`WalRecord`] followed by the number through which the log was known flushed (every
/// transaction up to it through the device cache) when the record was written. A reader
/// that knows only [`WalRecord`] ignores the trailing field; a record written before it
/// existed decodes as a [`WalRecord`] (with nothing known flushed).
#[derive(Deserialize)]
struct WalRecordFlushed {
    epoch: u64,
    seq: u64,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    flushed_through: u64,
}

/// [`WalRecordFlushed`] borrowing its writes (serialises to the same bytes).
#[derive(Serialize)]
struct WalRecordRef<'a> {
    epoch: u64,
    seq: u64,
    writes: &'a Writes,
    flushed_through: u64,
}

pub fn encode_record(epoch: u64, seq: u64, writes: &Writes) -> Vec<u8> {
    encode_record_flushed(epoch, seq, writes, 0)
}

fn encode_record_flushed(epoch: u64, seq: u64, writes: &Writes, flushed_through: u64) -> Vec<u8> {
    bincode::serialize(&WalRecordRef {
        epoch,
        seq,
        writes,
        flushed_through,
    })
    .expect("records serialise")
}

/// A record and the number it says was flushed (0 for a record without one).
fn decode_record(bytes: &[u8]) -> bincode::Result<(WalRecord, u64)> {
    match bincode::deserialize::<WalRecordFlushed>(bytes) {
        Ok(r) => Ok((
            WalRecord {
                epoch: r.epoch,
                seq: r.seq,
                writes: r.writes,
            },
            r.flushed_through,
        )),
        Err(_) => bincode::deserialize::<WalRecord>(bytes).map(|r| (r, 0)),
    }
}

/// The `(epoch, seq)` of an encoded record, without decoding its writes (`fsck` compares them
/// with the store's [`EPOCH_KEY`] and [`APPLIED_SEQ_KEY`]).
pub fn record_position(bytes: &[u8]) -> Option<(u64, u64)> {
    #[derive(Deserialize)]
    struct Position {
        epoch: u64,
        seq: u64,
    }
    let p: Position = bincode::deserialize(bytes).ok()?;
    Some((p.epoch, p.seq))
}

struct Recorder<'a> {
    inner: &'a mut dyn KvTxn,
    writes: &'a mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl KvRead for Recorder<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.inner.scan(start, end, limit)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.inner.scan_back(start, end, limit)
    }
}

impl KvTxn for Recorder<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(key, value)?;
        self.writes.push((key.to_vec(), Some(value.to_vec())));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.inner.delete(key)?;
        self.writes.push((key.to_vec(), None));
        Ok(())
    }
}

/// What [`WalStore::recover_past_damage`] did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records applied.
    pub replayed: usize,
    /// Sequence numbers replay went past without finding them (only when told of damage).
    pub missing: Vec<u64>,
    /// Sequence numbers after the first gap that a power cut may explain (after a restart,
    /// above what any record says was flushed), not applied: never acknowledged as
    /// power-safe.
    pub cut_short: usize,
    /// The epoch the replayed records belonged to.
    pub epoch: u64,
}

/// Which sequence numbers are on the device: everything up to `prefix`, plus `done` above it.
struct Progress {
    prefix: u64,
    done: BTreeSet<u64>,
    /// Records appended and not yet covered by a durable commit of the inner store.
    handles: Vec<(u64, u64)>,
    /// Committed transactions whose callers returned without waiting for their record
    /// ([`WalStore::update_deferred`]), by number: settled by the first caller that waits for
    /// a number at or above theirs.
    deferred: BTreeMap<u64, DeferredRecord>,
    /// Of `deferred`, the records held back, not yet handed to the log.
    held: usize,
}

/// A record submitted to the namespace log that its caller did not wait for.
struct DeferredRecord {
    /// `None`: held back, not yet handed to the log (see [`WalStore::submit_held`]).
    pending: Option<PendingRecord>,
    /// The encoded record, logged again if its append fails.
    record: Vec<u8>,
}

/// How often callers of the write-ahead log waited for the device, and how often they did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Calls that returned only after waiting for the device: an update waiting for its own
    /// record (and the ones before it), a `sync`, or a [`WalStore::wait_logged`] that found
    /// a record up to its number not yet written (collecting records already on the device
    /// does not count).
    pub device_waits: u64,
    /// Updates that returned without waiting for their record ([`WalStore::update_deferred`]).
    pub deferred: u64,
}

/// Deferred records held back before they are written without anyone waiting.
const MAX_HELD: usize = 64;

pub struct WalStore {
    inner: Arc<dyn KvStore>,
    log: Arc<dyn RecordLog>,
    epoch: u64,
    next_seq: AtomicU64,
    /// Every transaction numbered up to this is durable in the inner store.
    persisted: AtomicU64,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    /// A failed transaction could not be marked failed in the log: no more changes.
    broken: AtomicBool,
    /// The lowest number given up without a log record or a durable commit (`u64::MAX`:
    /// none): replay stops there, so no later change is crash-safe.
    given_up: AtomicU64,
    /// Every transaction numbered up to this is through the device cache (in the log or in
    /// the inner store); written into each record (see [`WalRecordFlushed`]).
    flushed_through: AtomicU64,
    /// See [`WalStats::device_waits`].
    device_waits: AtomicU64,
    /// See [`WalStats::deferred`].
    deferred: AtomicU64,
}

impl WalStore {
    /// Replays `records` (every record the log holds, any order) onto `inner`, makes it
    /// durable, frees the replayed records, and returns the store.
    pub fn recover(
        inner: Arc<dyn KvStore>,
        log: Arc<dyn RecordLog>,
        records: Vec<(u64, Vec<u8>)>,
    ) -> Result<(WalStore, usize)> {
        let (wal, recovery) = WalStore::recover_past_damage(inner, log, records, false, false)?;
        Ok((wal, recovery.replayed))
    }

    /// [`WalStore::recover`], told whether the logs held damage (records that fail their
    /// checks with valid records after them). A missing number is then not necessarily a
    /// transaction the crash cut short (never acknowledged, and nothing acknowledged after
    /// it): it may be an acknowledged one whose record was damaged, and the records after it
    /// were acknowledged too. So with `damaged` replay goes on past a gap, applying every
    /// later record, and returns the numbers it could not find in [`Recovery::missing`].
    /// `restarted`: the machine restarted since the logs were written, so a record that no
    /// flush covered may be missing because of a power cut: replay goes past a missing
    /// number only at or below the highest number a record says was flushed.
    pub fn recover_past_damage(
        inner: Arc<dyn KvStore>,
        log: Arc<dyn RecordLog>,
        records: Vec<(u64, Vec<u8>)>,
        damaged: bool,
        restarted: bool,
    ) -> Result<(WalStore, Recovery)> {
        let mut missing = Vec::new();
        let mut applied = 0;
        let mut epoch = 0;
        inner.view(&mut |r| {
            applied = crate::schema::get_u64(r, APPLIED_SEQ_KEY)?;
            epoch = crate::schema::get_u64(r, EPOCH_KEY)?;
            Ok(())
        })?;
        let mut decoded: Vec<(WalRecord, u64)> = Vec::new();
        let mut flushed_through = 0u64;
        for (handle, bytes) in records {
            match decode_record(&bytes) {
                Ok((rec, flushed)) if rec.epoch == epoch => {
                    flushed_through = flushed_through.max(flushed);
                    decoded.push((rec, handle))
                }
                Ok(_) => log.free(handle),
                Err(e) => tracing::warn!("skipping an undecodable namespace log record: {e}"),
            }
        }
        // An empty copy of a number first: it says the transaction failed to commit, and
        // wins over a copy that a carrier wrote before the commit was attempted.
        decoded.sort_by_key(|(r, _)| (r.seq, !r.writes.is_empty()));
        let mut expected = applied + 1;
        let mut replayed = 0;
        let mut cut_short = 0;
        for (rec, _) in decoded.iter().filter(|(r, _)| r.seq > applied) {
            if rec.seq < expected {
                // A second copy: identical (a carried append reported failed but reached the
                // device, and the record was logged again on its own), or the carried copy
                // of a transaction whose commit failed after it was written.
                continue;
            }
            if rec.seq != expected && damaged && restarted && expected > flushed_through {
                // No record says the missing one was flushed: a power cut explains it (and
                // nothing after it was acknowledged as power-safe).
                cut_short = decoded.iter().filter(|(r, _)| r.seq >= expected).count();
                tracing::warn!(
                    "namespace log: sequence {expected} missing after a restart and never \
                     flushed (a power cut); ignoring {cut_short} later record(s), none of \
                     them acknowledged as power-safe"
                );
                break;
            }
            if rec.seq != expected && damaged {
                tracing::error!(
                    "namespace log: sequence(s) {}..={} missing and the logs hold damaged \
                     records: applying the {} later record(s); the missing change(s) are lost",
                    expected,
                    rec.seq - 1,
                    decoded.iter().filter(|(r, _)| r.seq > expected).count()
                );
                missing.extend(expected..rec.seq);
                expected = rec.seq;
            }
            if rec.seq != expected {
                tracing::warn!(
                    "namespace log: sequence {} missing, ignoring {} later record(s) \
                     (none of them was acknowledged)",
                    expected,
                    decoded.iter().filter(|(r, _)| r.seq >= expected).count()
                );
                break;
            }
            inner.update(Durability::Visible, &mut |t| {
                for (k, v) in &rec.writes {
                    match v {
                        Some(v) => t.put(k, v)?,
                        None => t.delete(k)?,
                    }
                }
                t.put(APPLIED_SEQ_KEY, &rec.seq.to_be_bytes())
            })?;
            expected += 1;
            replayed += 1;
        }
        let last = expected - 1;
        // Make the replayed state durable before the records that produced it are freed.
        inner.update(Durability::Durable, &mut |t| {
            put_position(t, epoch + 1, last)
        })?;
        for (_, handle) in &decoded {
            log.free(*handle);
        }
        Ok((
            WalStore {
                inner,
                log,
                epoch: epoch + 1,
                next_seq: AtomicU64::new(last + 1),
                persisted: AtomicU64::new(last),
                progress: Mutex::new(Progress {
                    prefix: last,
                    done: BTreeSet::new(),
                    handles: Vec::new(),
                    deferred: BTreeMap::new(),
                    held: 0,
                }),
                progress_cv: Condvar::new(),
                broken: AtomicBool::new(false),
                given_up: AtomicU64::new(u64::MAX),
                // Replay made everything up to `last` durable in the inner store.
                flushed_through: AtomicU64::new(last),
                device_waits: AtomicU64::new(0),
                deferred: AtomicU64::new(0),
            },
            Recovery {
                replayed,
                missing,
                cut_short,
                epoch,
            },
        ))
    }

    /// The highest transaction number whose changes are durable in the inner store: log
    /// records up to it are no longer needed for replay.
    pub fn persisted_through(&self) -> u64 {
        self.persisted.load(Ordering::SeqCst)
    }

    fn mark_done(&self, seq: u64, handle: Option<u64>) {
        let mut p = self.progress.lock();
        p.done.insert(seq);
        if let Some(h) = handle {
            p.handles.push((seq, h));
        }
        loop {
            let next = p.prefix + 1;
            if !p.done.remove(&next) {
                break;
            }
            p.prefix = next;
        }
        self.progress_cv.notify_all();
    }

    /// Waits until every record numbered up to `seq` is on the device (or its transaction
    /// was given up), settling on the way the deferred records its callers left. Returns
    /// whether it had to wait for the device (a record not yet written), not only collect
    /// records already written.
    fn wait_prefix(&self, seq: u64) -> bool {
        let mut blocked = false;
        let mut p = self.progress.lock();
        if p.prefix < seq {
            self.submit_held(&mut p, None);
        }
        while p.prefix < seq {
            let later = p.deferred.split_off(&(seq + 1));
            let due = std::mem::replace(&mut p.deferred, later);
            p.held -= due.values().filter(|d| d.pending.is_none()).count();
            if due.is_empty() {
                // A record still on its way, or a deferred one about to be handed over (its
                // caller notifies when it is).
                blocked = true;
                self.progress_cv.wait(&mut p);
                continue;
            }
            blocked |= due
                .values()
                .any(|d| d.pending.as_ref().is_none_or(|p| !p.is_done()));
            parking_lot::MutexGuard::unlocked(&mut p, || {
                for (n, d) in due {
                    self.settle_deferred(n, d);
                }
            });
        }
        blocked
    }

    /// Keeps a deferred update's record (`pending`: `None` when held back) until someone
    /// settles it.
    fn park_deferred(&self, seq: u64, pending: Option<PendingRecord>, record: Vec<u8>) {
        {
            let mut p = self.progress.lock();
            if pending.is_none() {
                p.held += 1;
            }
            p.deferred.insert(seq, DeferredRecord { pending, record });
            if p.held >= MAX_HELD {
                self.submit_held(&mut p, None);
            }
        }
        // A caller already waiting for a later number settles it.
        self.progress_cv.notify_all();
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands every held-back deferred record to the log, back to back, so that its engine
    /// thread writes them in one batch; `own`, a record numbered after them, goes last in the
    /// same batch, and its answer is returned.
    fn submit_held(
        &self,
        p: &mut Progress,
        own: Option<&[u8]>,
    ) -> Option<std::io::Result<PendingRecord>> {
        let held: Vec<&mut DeferredRecord> = if p.held == 0 {
            Vec::new()
        } else {
            p.deferred
                .values_mut()
                .filter(|d| d.pending.is_none())
                .collect()
        };
        let mut records: Vec<&[u8]> = held.iter().map(|d| d.record.as_slice()).collect();
        records.extend(own);
        if records.is_empty() {
            return None;
        }
        let mut answers = self.log.submit_many(&records).into_iter();
        let mut still_held = 0;
        // A record the log refused stays held: whoever settles it logs it again.
        for (d, answer) in held.into_iter().zip(answers.by_ref()) {
            d.pending = answer.ok();
            still_held += usize::from(d.pending.is_none());
        }
        p.held = still_held;
        answers.next()
    }

    /// Settles every deferred record (the checkpoint does, so that no record waits longer
    /// than a checkpoint interval for someone to collect it).
    fn settle_all_deferred(&self) {
        let due = {
            let mut p = self.progress.lock();
            self.submit_held(&mut p, None);
            p.held = 0;
            std::mem::take(&mut p.deferred)
        };
        for (n, d) in due {
            self.settle_deferred(n, d);
        }
    }

    /// Waits for a deferred record's append; if it failed, logs it again, or makes the inner
    /// store durable instead (see [`WalStore::settle`]).
    fn settle_deferred(&self, seq: u64, d: DeferredRecord) {
        let pending = match d.pending {
            Some(p) => Ok(p),
            None => self.log.submit(&d.record),
        };
        let appended = match pending.and_then(|p| self.log.finish(p)) {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                tracing::debug!("namespace log append of {seq} failed ({e}); logging it again");
                self.log.append(&d.record).map(Some)
            }
        };
        // A failure is seen by every waiter for this number or a later one (`given_up`).
        let _ = self.settle(seq, true, false, appended);
    }

    /// What [`WalStore::update_deferred`] returned (`seq`) is on the device: the change
    /// survives a crash of spoolfs or of the kernel (and every change numbered before it).
    pub fn wait_logged(&self, seq: u64) -> Result<()> {
        if seq == 0 {
            return Ok(());
        }
        if self.wait_prefix(seq) {
            self.device_waits.fetch_add(1, Ordering::Relaxed);
        }
        if self.given_up.load(Ordering::SeqCst) <= seq {
            return Err(MetaError::Io(format!(
                "transaction {seq} is committed but could not be made crash-safe; remount to \
                 recover"
            )));
        }
        Ok(())
    }

    /// How often callers waited for the device.
    pub fn stats(&self) -> WalStats {
        WalStats {
            device_waits: self.device_waits.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }

    /// [`KvStore::update`] (not durable) that returns once the transaction is committed and
    /// its record submitted to the namespace log, without waiting for the device. Returns the
    /// transaction's number (0: it changed nothing), for [`WalStore::wait_logged`]; any later
    /// update, `sync` or checkpoint also waits for it. Until then a crash may lose the change
    /// (and nothing acknowledged after it: replay stops at the first missing number).
    pub fn update_deferred(&self, f: UpdateFn<'_>) -> Result<u64> {
        self.update_inner(Durability::Visible, f, None, Defer::Submit)
            .map(|(_, seq)| seq)
    }

    /// [`Self::update_deferred`] whose record is held back instead of submitted: it goes to
    /// the device with the next record submitted (a create's, a change that waits, a close's),
    /// in one batch, or once [`MAX_HELD`] records are held, or at the next checkpoint. For
    /// attribute changes, which come in runs (`chmod` and `utime` after each file `pip`
    /// writes): one device write for the run instead of one each.
    pub fn update_held(&self, f: UpdateFn<'_>) -> Result<u64> {
        self.update_inner(Durability::Visible, f, None, Defer::Hold)
            .map(|(_, seq)| seq)
    }

    /// [`KvStore::update`] whose log record rides with `carrier`'s data (one device write for
    /// both) when the transaction commits. Returns whether the carrier took it; if not (the
    /// carrier failed), the record went to the namespace log and the carrier's data is not on
    /// the device, so the caller must put it elsewhere.
    pub fn update_carried(
        &self,
        durability: Durability,
        f: UpdateFn<'_>,
        carrier: &mut dyn Carrier,
    ) -> Result<bool> {
        self.update_inner(durability, f, Some(carrier), Defer::No)
            .map(|(carried, _)| carried)
    }

    /// Runs one transaction and logs it; returns whether the carrier took its record, and its
    /// number (0: it wrote nothing). `defer`: whether to return without waiting for a record
    /// that goes to the namespace log (see [`WalStore::update_deferred`]).
    fn update_inner(
        &self,
        durability: Durability,
        f: UpdateFn<'_>,
        mut carrier: Option<&mut dyn Carrier>,
        defer: Defer,
    ) -> Result<(bool, u64)> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(MetaError::Io(
                "the namespace log lost the outcome of an earlier transaction; \
                 remount to recover"
                    .into(),
            ));
        }
        let durable = durability == Durability::Durable;
        if durable && carrier.is_some() {
            // A durable carried append covers the records before it only if they are on the
            // device when it is written (see below): collect the deferred ones (a create
            // followed by fsync) first, or a second flush would follow.
            self.settle_all_deferred();
        }
        let mut writes = Vec::new();
        let mut seq = 0;
        let mut early = Early::Nothing;
        let mut prefix_before = 0;
        // The encoded record of a deferred update, kept to log it again if its append fails.
        let mut deferred_record = Vec::new();
        let result = self.inner.update(Durability::Visible, &mut |t| {
            if !matches!(early, Early::Nothing) {
                // Our record is already on its way to the device under the number taken.
                return Err(MetaError::Io(
                    "a transaction whose log record was submitted cannot be retried".into(),
                ));
            }
            writes.clear();
            seq = 0;
            let mut rec = Recorder {
                inner: t,
                writes: &mut writes,
            };
            f(&mut rec)?;
            if writes.is_empty() {
                return Ok(());
            }
            seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            t.put(APPLIED_SEQ_KEY, &seq.to_be_bytes())?;
            // The record's device write runs while the inner store commits: with the
            // carrier's data, or else on its own in the namespace log.
            prefix_before = self.progress.lock().prefix;
            let record = encode_record_flushed(
                self.epoch,
                seq,
                &writes,
                self.flushed_through.load(Ordering::SeqCst),
            );
            if defer == Defer::Hold {
                deferred_record = record;
                early = Early::Held;
                return Ok(());
            }
            if let Some(c) = carrier.as_deref_mut() {
                // The held records go to the namespace log meanwhile.
                self.submit_held(&mut self.progress.lock(), None);
                match c.submit(seq, &record, durable) {
                    Ok(()) => early = Early::Carried,
                    Err(e) => tracing::debug!(
                        "the carrier refused transaction {seq} ({e}); logging it on its own"
                    ),
                }
            }
            if matches!(early, Early::Nothing) {
                // In one batch with the held records (numbered before it).
                match self.submit_held(&mut self.progress.lock(), Some(&record)) {
                    Some(Ok(p)) => early = Early::Logged(p),
                    Some(Err(e)) => {
                        tracing::debug!("namespace log submit of {seq} failed ({e})")
                    }
                    None => unreachable!("an own record has an answer"),
                }
            }
            if defer == Defer::Submit {
                deferred_record = record;
            }
            Ok(())
        });
        if seq == 0 {
            return result.map(|_| (false, 0));
        }
        // A deferred update that committed returns here, its record held or on its way.
        let early = match (defer, &result, early) {
            (Defer::Hold, Ok(()), Early::Held) => {
                self.park_deferred(seq, None, std::mem::take(&mut deferred_record));
                return Ok((false, seq));
            }
            (Defer::Submit, Ok(()), Early::Logged(p)) => {
                self.park_deferred(seq, Some(p), std::mem::take(&mut deferred_record));
                return Ok((false, seq));
            }
            (_, _, early) => early,
        };
        self.device_waits.fetch_add(1, Ordering::Relaxed);
        // Where the record went, now that the commit's outcome is known.
        let mut carried = None;
        let mut logged = None;
        let mut on_device = false;
        match early {
            Early::Carried => {
                let c = carrier.as_deref_mut().expect("a carrier took it");
                on_device = true;
                if result.is_ok() {
                    match c.finish() {
                        Ok(()) => carried = Some(durable),
                        Err(e) => tracing::debug!(
                            "the carrier failed transaction {seq} ({e}); logging it on its own"
                        ),
                    }
                } else {
                    c.discard();
                }
            }
            Early::Logged(p) => match self.log.finish(p) {
                Ok(h) => {
                    on_device = true;
                    logged = Some(h);
                }
                Err(e) => tracing::debug!("namespace log append of {seq} failed ({e})"),
            },
            Early::Nothing | Early::Held => {}
        }
        // The number is taken: log something for it even if the commit failed, so that replay
        // does not stop at a gap in front of later, acknowledged records. A failed commit
        // logs an empty write set, which replay prefers to any other copy of the record
        // (one written before the commit was attempted).
        let appended = match (&result, carried, logged) {
            (Ok(()), Some(_), _) => Ok(None),
            (Ok(()), None, Some(h)) => Ok(Some(h)),
            (Ok(()), None, None) => self
                .log
                .append(&encode_record_flushed(
                    self.epoch,
                    seq,
                    &writes,
                    self.flushed_through.load(Ordering::SeqCst),
                ))
                .map(Some),
            // An empty record is kept until the next recovery: once freed, a checkpoint
            // could leave the full copy as the only one with its number.
            (Err(_), _, _) => self
                .log
                .append(&encode_record_flushed(
                    self.epoch,
                    seq,
                    &[],
                    self.flushed_through.load(Ordering::SeqCst),
                ))
                .map(|_| None),
        };
        self.settle(seq, result.is_ok(), on_device, appended)?;
        result?;
        self.wait_prefix(seq);
        if self.given_up.load(Ordering::SeqCst) < seq {
            // An earlier number was given up (see above): replay would stop there, so this
            // change, though logged, is not crash-safe either.
            return Err(MetaError::Io(format!(
                "transaction {seq} is committed but an earlier one could not be made \
                 crash-safe; remount to recover"
            )));
        }
        if durable {
            // A durable carried append flushed after its own write; that covers the records
            // before it only if they were all on the device before it was written.
            let covered = carried == Some(true) && prefix_before + 1 >= seq;
            if !covered {
                self.log.sync().map_err(io_err)?;
                if let Some(c) = carrier
                    && carried.is_some()
                {
                    c.sync().map_err(io_err)?;
                }
            }
            // Every number up to ours was on the device (the prefix reached it) before the
            // flush that covered ours.
            self.flushed_through.fetch_max(seq, Ordering::SeqCst);
        }
        Ok((carried.is_some(), seq))
    }

    /// Marks transaction `seq` settled once its record's fate is known: `appended` is the
    /// handle of its record in the namespace log (`None`: carried, or an empty record kept
    /// until the next recovery), or the error that left it without one. Without one, the
    /// inner store is made durable instead; if that fails too, the number is given up and
    /// every later change refused.
    fn settle(
        &self,
        seq: u64,
        committed: bool,
        on_device: bool,
        appended: std::io::Result<Option<u64>>,
    ) -> Result<()> {
        match appended {
            Ok(handle) => self.mark_done(seq, handle),
            Err(e) if !committed && on_device => {
                // A full copy of the record may be on the device, and nothing says the
                // transaction failed: later transactions, which do not contain it, must not
                // be logged.
                tracing::error!(
                    "namespace log append failed ({e}) after transaction {seq} failed to \
                     commit; refusing further changes until a remount"
                );
                self.broken.store(true, Ordering::SeqCst);
                self.mark_done(seq, None);
            }
            Err(e) => {
                // Nothing later can be acknowledged past this gap until it is filled; the
                // inner store holds the change (it is only not crash-safe), so make it durable
                // there instead and close the gap.
                crate::error_limited!("namespace log append failed ({e}); falling back to fsync");
                if let Err(pe) = self.inner.persist() {
                    // The change is committed (visible) but neither logged nor durable: a
                    // crash would lose it, and replay would stop at its number, losing every
                    // later change too. Refuse later changes, and wake those waiting behind
                    // this number (they fail: see `wait_prefix`), instead of leaving them
                    // blocked forever.
                    tracing::error!(
                        "namespace log append failed ({e}) and the metadata store cannot be \
                         made durable ({pe}): transaction {seq} is committed but not \
                         crash-safe; refusing further changes until a remount"
                    );
                    self.broken.store(true, Ordering::SeqCst);
                    self.given_up.fetch_min(seq, Ordering::SeqCst);
                    self.mark_done(seq, None);
                    return Err(MetaError::Io(format!(
                        "transaction {seq} is committed but could not be made crash-safe: \
                         namespace log: {e}; metadata store: {pe}"
                    )));
                }
                self.mark_done(seq, None);
            }
        }
        Ok(())
    }
}

fn io_err(e: std::io::Error) -> MetaError {
    MetaError::Io(format!("namespace log: {e}"))
}

impl KvStore for WalStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        self.inner.view(f)
    }

    fn view_long(&self, f: ViewFn<'_>) -> Result<()> {
        self.inner.view_long(f)
    }

    fn unapplied_changes(&self) -> u64 {
        self.inner.unapplied_changes()
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        self.update_inner(durability, f, None, Defer::No)
            .map(|_| ())
    }

    fn persist(&self) -> Result<()> {
        self.settle_all_deferred();
        // Every sequence below this is committed in the inner store once persist returns.
        let upto = self.next_seq.load(Ordering::SeqCst);
        self.inner.persist()?;
        self.persisted.fetch_max(upto - 1, Ordering::SeqCst);
        let freeable: Vec<u64> = {
            let mut p = self.progress.lock();
            let (free, keep): (Vec<_>, Vec<_>) =
                p.handles.drain(..).partition(|(seq, _)| *seq < upto);
            p.handles = keep;
            free.into_iter().map(|(_, h)| h).collect()
        };
        for h in freeable {
            self.log.free(h);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // Everything committed so far is logged once the prefix reaches the last number
        // handed out; one device flush then covers it (and staged data written before).
        let last = self.next_seq.load(Ordering::SeqCst) - 1;
        self.device_waits.fetch_add(1, Ordering::Relaxed);
        self.wait_prefix(last);
        self.log.sync().map_err(io_err)?;
        self.flushed_through.fetch_max(last, Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} (with namespace log)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoolfs_metadata::{FaultyStore, MemStore};

    /// A log in memory whose contents can be "crashed": after a crash of spoolfs or the
    /// kernel every record survives ([`crash_replay`]), after a power cut only the synced ones
    /// ([`power_cut_replay`]).
    #[derive(Default)]
    struct MemLog {
        records: Mutex<Vec<(u64, Vec<u8>, bool)>>,
        failing: AtomicBool,
        /// Submitted records stay off the "device" until they are waited for (a slow device:
        /// what a crash before the wait finds).
        hold: AtomicBool,
        held: Mutex<Vec<(u64, Vec<u8>)>>,
        /// This many held records' appends fail when they are waited for.
        fail_held: std::sync::atomic::AtomicUsize,
        /// The size of each [`RecordLog::submit_many`] call.
        batches: Mutex<Vec<usize>>,
    }

    impl RecordLog for MemLog {
        fn submit(&self, record: &[u8]) -> std::io::Result<PendingRecord> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let mut r = self.records.lock();
            let mut held = self.held.lock();
            let h = (r.len() + held.len()) as u64;
            if self.hold.load(Ordering::SeqCst) {
                held.push((h, record.to_vec()));
            } else {
                r.push((h, record.to_vec(), false));
            }
            Ok(PendingRecord::Done(h))
        }
        fn submit_many(&self, records: &[&[u8]]) -> Vec<std::io::Result<PendingRecord>> {
            self.batches.lock().push(records.len());
            records.iter().map(|r| self.submit(r)).collect()
        }
        fn finish(&self, pending: PendingRecord) -> std::io::Result<u64> {
            match pending {
                PendingRecord::Done(h) => {
                    let mut held = self.held.lock();
                    if let Some(i) = held.iter().position(|(x, _)| *x == h) {
                        let (h, record) = held.remove(i);
                        if self
                            .fail_held
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return Err(std::io::Error::from_raw_os_error(libc::EIO));
                        }
                        self.records.lock().push((h, record, false));
                    }
                    Ok(h)
                }
                PendingRecord::Staged(_) => unreachable!("a memory log stages nothing"),
            }
        }
        fn sync(&self) -> std::io::Result<()> {
            for r in self.records.lock().iter_mut() {
                r.2 = true;
            }
            Ok(())
        }
        fn free(&self, _handle: u64) {}
    }

    /// A crash: the inner store comes back with only the first recovery's commit (epoch 1,
    /// sequence 0), and `log`'s records (plus `extra` ones, found in another log) are
    /// replayed onto it.
    fn crash_replay(log: &Arc<MemLog>, extra: &[Vec<u8>]) -> (WalStore, usize) {
        let fresh = Arc::new(MemStore::default());
        fresh
            .update(Durability::Durable, &mut |t| put_position(t, 1, 0))
            .unwrap();
        let mut records: Vec<(u64, Vec<u8>)> = log
            .records
            .lock()
            .iter()
            .map(|(h, r, _)| (*h, r.clone()))
            .collect();
        records.extend(extra.iter().map(|r| (u64::MAX, r.clone())));
        WalStore::recover(fresh, log.clone(), records).unwrap()
    }

    /// A deferred update (a file's create) returns before its record is on the device: a
    /// crash then loses it, and with it a later record that did reach the device (a close's,
    /// never acknowledged), which replay drops. The next update that waits (the close) waits
    /// for the deferred record too, and from then on both survive.
    #[test]
    fn a_deferred_update_is_lost_only_until_a_later_update_returns() {
        let log = Arc::new(MemLog::default());
        let (wal, _) =
            WalStore::recover(Arc::new(MemStore::default()), log.clone(), vec![]).unwrap();
        log.hold.store(true, Ordering::SeqCst);
        let seq = wal.update_deferred(&mut |t| t.put(b"inode", b"1")).unwrap();
        assert_eq!(
            wal.stats(),
            WalStats {
                device_waits: 0,
                deferred: 1
            },
            "the deferred update waited for the device"
        );
        // A crash now: the create's record never reached the device.
        let (after, n) = crash_replay(&log, &[]);
        assert_eq!(n, 0);
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"inode")?, None);
                Ok(())
            })
            .unwrap();
        // The same crash with the next transaction's record on the device (a close whose
        // slice record was written while the create's was not): replay stops at the gap.
        let close = encode_record(
            wal.epoch,
            seq + 1,
            &[(b"slice".to_vec(), Some(b"2".to_vec()))],
        );
        let (after, n) = crash_replay(&log, &[close]);
        assert_eq!(n, 0, "a record behind a missing one was replayed");
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"slice")?, None);
                Ok(())
            })
            .unwrap();

        // The close: its record rides with its data, and it returns only once the create's
        // record is on the device too.
        log.hold.store(false, Ordering::SeqCst);
        let mut carrier = MemCarrier::default();
        assert!(put_carried(&wal, Durability::Visible, b"slice", b"2", &mut carrier).unwrap());
        assert!(
            log.held.lock().is_empty(),
            "the close returned before the create's record was on the device"
        );
        assert_eq!(
            wal.stats().device_waits,
            1,
            "one wait for the create and the close"
        );
        let carried = carrier.records[0].1.clone();
        let (after, n) = crash_replay(&log, &[carried]);
        assert_eq!(n, 2);
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"inode")?.as_deref(), Some(&b"1"[..]));
                assert_eq!(r.get(b"slice")?.as_deref(), Some(&b"2"[..]));
                Ok(())
            })
            .unwrap();
    }

    /// `wait_logged` settles a deferred record; one whose append failed is logged again; a
    /// checkpoint settles what nobody waited for.
    #[test]
    fn wait_logged_and_checkpoints_settle_deferred_records() {
        let log = Arc::new(MemLog::default());
        let (wal, _) =
            WalStore::recover(Arc::new(MemStore::default()), log.clone(), vec![]).unwrap();
        log.hold.store(true, Ordering::SeqCst);
        log.fail_held.store(1, Ordering::SeqCst);
        let first = wal.update_deferred(&mut |t| t.put(b"a", b"1")).unwrap();
        wal.wait_logged(first).unwrap();
        assert!(
            log.held.lock().is_empty(),
            "wait_logged left the record unsettled"
        );
        // This log answers every append at once: collecting it is not a wait for the device.
        assert_eq!(wal.stats().device_waits, 0);
        let (after, n) = crash_replay(&log, &[]);
        assert_eq!(n, 1, "the record whose append failed was not logged again");
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"a")?.as_deref(), Some(&b"1"[..]));
                Ok(())
            })
            .unwrap();
        // Nobody waits for these but the checkpoint: one submitted, one held back.
        let second = wal.update_deferred(&mut |t| t.put(b"b", b"2")).unwrap();
        assert_eq!(log.held.lock().len(), 1);
        let third = wal.update_held(&mut |t| t.put(b"c", b"3")).unwrap();
        assert_eq!(log.held.lock().len(), 1, "a held record was handed over");
        wal.persist().unwrap();
        assert!(
            log.held.lock().is_empty(),
            "the checkpoint left a record unsettled"
        );
        wal.wait_logged(third).unwrap();
        assert!(second < third);
        assert_eq!(wal.stats().device_waits, 0);
        assert_eq!(wal.stats().deferred, 3);
        let (after, n) = crash_replay(&log, &[]);
        assert_eq!(n, 3);
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"c")?.as_deref(), Some(&b"3"[..]));
                Ok(())
            })
            .unwrap();
    }

    /// Held records stay with the store until the next record goes to the device (they go
    /// with it, in one batch), or until enough of them are held.
    #[test]
    fn held_records_go_with_the_next_record_submitted() {
        let log = Arc::new(MemLog::default());
        let (wal, _) =
            WalStore::recover(Arc::new(MemStore::default()), log.clone(), vec![]).unwrap();
        for key in [b"a", b"b"] {
            wal.update_held(&mut |t| t.put(key, b"1")).unwrap();
        }
        assert!(
            log.records.lock().is_empty(),
            "a held record was written at once"
        );
        // A create: submitted at once, with the two held records, in one batch.
        wal.update_deferred(&mut |t| t.put(b"c", b"1")).unwrap();
        assert_eq!(*log.batches.lock(), vec![3]);
        assert_eq!(log.records.lock().len(), 3);
        // An attribute change, then a close: the close's record rides with its data; the
        // held one goes to the log meanwhile.
        wal.update_held(&mut |t| t.put(b"d", b"1")).unwrap();
        let mut carrier = MemCarrier::default();
        assert!(put_carried(&wal, Durability::Visible, b"slice", b"2", &mut carrier).unwrap());
        assert_eq!(*log.batches.lock(), vec![3, 1]);
        assert_eq!(log.records.lock().len(), 4);
        let carried = carrier.records[0].1.clone();
        let (after, n) = crash_replay(&log, &[carried]);
        assert_eq!(n, 5);
        after
            .view(&mut |r| {
                assert_eq!(r.get(b"c")?.as_deref(), Some(&b"1"[..]));
                assert_eq!(r.get(b"slice")?.as_deref(), Some(&b"2"[..]));
                Ok(())
            })
            .unwrap();

        // Nobody waits: the batch leaves once MAX_HELD records are held.
        for i in 0..MAX_HELD {
            let key = format!("k{i}");
            wal.update_held(&mut |t| t.put(key.as_bytes(), b"1"))
                .unwrap();
        }
        assert_eq!(*log.batches.lock(), vec![3, 1, MAX_HELD]);
        assert_eq!(log.records.lock().len(), 4 + MAX_HELD);
        assert_eq!(wal.stats().device_waits, 1);
    }

    /// A power cut: like [`crash_replay`], with only the records a `sync` covered.
    fn power_cut_replay(log: &Arc<MemLog>) -> (WalStore, usize) {
        let synced = Arc::new(MemLog::default());
        *synced.records.lock() = log.records.lock().iter().filter(|r| r.2).cloned().collect();
        crash_replay(&synced, &[])
    }

    /// A durable update and `sync` flush the log: what they cover survives a power cut, what
    /// came after them does not (and without them nothing would).
    #[test]
    fn durable_updates_and_sync_survive_a_power_cut() {
        let log = Arc::new(MemLog::default());
        let (wal, _) =
            WalStore::recover(Arc::new(MemStore::default()), log.clone(), vec![]).unwrap();
        wal.update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        wal.update(Durability::Durable, &mut |t| t.put(b"b", b"2"))
            .unwrap();
        wal.update(Durability::Visible, &mut |t| t.put(b"c", b"3"))
            .unwrap();
        let (after_cut, n) = power_cut_replay(&log);
        assert_eq!(
            n, 2,
            "the durable update covers itself and what came before"
        );
        after_cut
            .view(&mut |r| {
                assert!(r.get(b"b")?.is_some() && r.get(b"a")?.is_some());
                assert_eq!(
                    r.get(b"c")?,
                    None,
                    "an unsynced record survived a power cut"
                );
                Ok(())
            })
            .unwrap();
        KvStore::sync(&wal).unwrap();
        let (after_sync, n) = power_cut_replay(&log);
        assert_eq!(n, 3, "sync did not cover the last update");
        after_sync
            .view(&mut |r| {
                assert!(r.get(b"c")?.is_some());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn lost_commits_come_back_from_the_log() {
        let base = Arc::new(MemStore::default());
        let log = Arc::new(MemLog::default());
        let (wal, n) = WalStore::recover(base.clone(), log.clone(), vec![]).unwrap();
        assert_eq!(n, 0);
        for i in 0..10u8 {
            wal.update(Durability::Visible, &mut |t| t.put(&[b'k', i], &[i]))
                .unwrap();
        }
        wal.update(Durability::Visible, &mut |t| t.delete(&[b'k', 3]))
            .unwrap();
        // A crash loses everything the inner store had not made durable.
        let (wal2, n) = crash_replay(&log, &[]);
        assert_eq!(n, 11);
        wal2.view(&mut |r| {
            for i in 0..10u8 {
                let v = r.get(&[b'k', i])?;
                if i == 3 {
                    assert_eq!(v, None);
                } else {
                    assert_eq!(v, Some(vec![i]));
                }
            }
            Ok(())
        })
        .unwrap();
        // New transactions continue the sequence.
        wal2.update(Durability::Durable, &mut |t| t.put(b"z", b"z"))
            .unwrap();
        assert!(log.records.lock().iter().all(|r| r.2));
    }

    /// A carrier that keeps what it was given, or refuses every append.
    #[derive(Default)]
    struct MemCarrier {
        records: Vec<(u64, Vec<u8>, bool)>,
        submitted: Option<(u64, Vec<u8>, bool)>,
        refuse: bool,
        /// What was submitted for transactions that then failed to commit.
        discarded: Vec<(u64, Vec<u8>, bool)>,
    }

    impl Carrier for MemCarrier {
        fn submit(&mut self, seq: u64, record: &[u8], durable: bool) -> std::io::Result<()> {
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            self.submitted = Some((seq, record.to_vec(), durable));
            Ok(())
        }
        fn finish(&mut self) -> std::io::Result<()> {
            self.records.extend(self.submitted.take());
            Ok(())
        }
        fn discard(&mut self) {
            self.discarded.extend(self.submitted.take());
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Puts `key` = `value` in a transaction whose log record rides with `carrier`.
    fn put_carried(
        wal: &WalStore,
        durability: Durability,
        key: &[u8],
        value: &[u8],
        carrier: &mut MemCarrier,
    ) -> Result<bool> {
        wal.update_carried(durability, &mut |t| t.put(key, value), carrier)
    }

    #[test]
    fn carried_records_replay_with_the_log_and_duplicates_are_skipped() {
        let base = Arc::new(MemStore::default());
        let log = Arc::new(MemLog::default());
        let (wal, _) = WalStore::recover(base, log.clone(), vec![]).unwrap();
        let mut carrier = MemCarrier::default();
        wal.update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        let took = put_carried(&wal, Durability::Durable, b"b", b"2", &mut carrier).unwrap();
        assert!(took);
        assert_eq!(carrier.records.len(), 1);
        assert!(
            carrier.records[0].2,
            "a durable update asks the carrier to flush"
        );
        // A carrier that fails: the record goes to the namespace log instead.
        let mut refusing = MemCarrier {
            refuse: true,
            ..Default::default()
        };
        let took = put_carried(&wal, Durability::Visible, b"c", b"3", &mut refusing).unwrap();
        assert!(!took);
        wal.update(Durability::Visible, &mut |t| t.put(b"d", b"4"))
            .unwrap();
        assert!(wal.persisted_through() < carrier.records[0].0);

        // Crash: the store knows only the recovery commit. Records come from both logs, and
        // the carried one also appears twice (a failed append whose bytes reached the disk).
        let carried = carrier.records[0].1.clone();
        let (wal2, n) = crash_replay(&log, &[carried.clone(), carried]);
        assert_eq!(n, 4);
        wal2.view(&mut |r| {
            for (k, v) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")] {
                assert_eq!(r.get(k)?.as_deref(), Some(&v[..]));
            }
            Ok(())
        })
        .unwrap();
        wal2.persist().unwrap();
        assert_eq!(wal2.persisted_through(), 4);
    }

    #[test]
    fn a_carried_record_of_a_failed_commit_is_never_replayed() {
        // Its next commit fails after the transaction ran (a full or failing disk).
        let base = Arc::new(FaultyStore::default());
        let log = Arc::new(MemLog::default());
        let (wal, _) = WalStore::recover(base.clone(), log.clone(), vec![]).unwrap();
        wal.update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        // The carrier writes the record while the store commits; the commit fails.
        base.fail_next_commit.store(true, Ordering::SeqCst);
        let mut carrier = MemCarrier::default();
        let err = put_carried(&wal, Durability::Durable, b"b", b"2", &mut carrier);
        assert!(err.is_err(), "the failed commit is reported");
        assert_eq!(
            carrier.discarded.len(),
            1,
            "the carrier was told to drop it"
        );
        assert!(carrier.records.is_empty());
        // The same without a carrier: the full record went to the namespace log before the
        // commit was attempted.
        base.fail_next_commit.store(true, Ordering::SeqCst);
        assert!(
            wal.update(Durability::Visible, &mut |t| t.put(b"x", b"9"))
                .is_err()
        );
        wal.update(Durability::Visible, &mut |t| t.put(b"c", b"3"))
            .unwrap();

        // Crash after the carried copy reached the device: replay skips it (the empty record
        // logged for its number wins), skips the logged copy of the other failed transaction
        // too, and still applies the later transaction.
        let discarded: Vec<Vec<u8>> = carrier.discarded.iter().map(|d| d.1.clone()).collect();
        let (wal2, n) = crash_replay(&log, &discarded);
        assert_eq!(n, 4);
        wal2.view(&mut |r| {
            assert_eq!(r.get(b"a")?.as_deref(), Some(&b"1"[..]));
            assert_eq!(r.get(b"b")?, None, "a failed transaction never comes back");
            assert_eq!(r.get(b"x")?, None, "a failed transaction never comes back");
            assert_eq!(r.get(b"c")?.as_deref(), Some(&b"3"[..]));
            Ok(())
        })
        .unwrap();

        // If not even the empty record can be logged, the log cannot say the transaction
        // failed: every later change is refused rather than logged without it.
        base.fail_next_commit.store(true, Ordering::SeqCst);
        log.failing.store(true, Ordering::SeqCst);
        let mut carrier = MemCarrier::default();
        assert!(put_carried(&wal, Durability::Visible, b"d", b"4", &mut carrier).is_err());
        log.failing.store(false, Ordering::SeqCst);
        let refused = wal.update(Durability::Visible, &mut |t| t.put(b"e", b"5"));
        assert!(refused.unwrap_err().to_string().contains("remount"));
    }

    /// The namespace log refuses a record and the fallback (a durable commit of the store)
    /// fails too: the transaction is reported failed, and nothing after it waits forever for
    /// its number or is acknowledged past it (replay would stop there).
    #[test]
    fn a_failed_fallback_neither_hangs_later_changes_nor_acknowledges_them() {
        // Its checkpoints fail on demand (a full or failing metadata disk).
        let base = Arc::new(FaultyStore::default());
        let log = Arc::new(MemLog::default());
        let (wal, _) = WalStore::recover(base.clone(), log.clone(), vec![]).unwrap();
        let wal = Arc::new(wal);
        wal.update(Durability::Visible, &mut |t| t.put(b"a", b"1"))
            .unwrap();
        log.failing.store(true, Ordering::SeqCst);
        base.fail_persist.store(true, Ordering::SeqCst);
        assert!(
            wal.update(Durability::Visible, &mut |t| t.put(b"b", b"2"))
                .is_err()
        );
        // The disks are back; a later change must come back (refused), not block.
        log.failing.store(false, Ordering::SeqCst);
        base.fail_persist.store(false, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let w = wal.clone();
        std::thread::spawn(move || {
            let r = w.update(Durability::Visible, &mut |t| t.put(b"c", b"3"));
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a change after the failed fallback blocked");
        assert!(r.unwrap_err().contains("remount"));
    }

    /// With damage in the logs replay goes past a missing number, but after a restart only
    /// one that a later record says was flushed: one above that a power cut explains, and
    /// nothing after it was acknowledged as power-safe.
    #[test]
    fn after_a_restart_replay_goes_past_a_gap_only_below_what_was_flushed() {
        let rec = |seq: u64, flushed: u64| {
            let writes = [(vec![b'k', seq as u8], Some(b"v".to_vec()))];
            (seq, encode_record_flushed(0, seq, &writes, flushed))
        };
        // 2 was flushed (4 says so) and is missing: damage. 5 was never flushed.
        let records = vec![rec(1, 0), rec(3, 0), rec(4, 3), rec(6, 3)];
        for (restarted, applied, missing) in [
            (true, vec![1u8, 3, 4], vec![2u64]),
            (false, vec![1, 3, 4, 6], vec![2, 5]),
        ] {
            let base: Arc<dyn KvStore> = Arc::new(MemStore::default());
            let log = Arc::new(MemLog::default());
            let (wal, recovery) =
                WalStore::recover_past_damage(base, log, records.clone(), true, restarted).unwrap();
            assert_eq!(recovery.missing, missing, "restarted: {restarted}");
            assert_eq!(recovery.cut_short, usize::from(restarted));
            wal.view(&mut |r| {
                for seq in 1..=6u8 {
                    let want = applied.contains(&seq);
                    assert_eq!(r.get(&[b'k', seq])?.is_some(), want, "seq {seq}");
                }
                Ok(())
            })
            .unwrap();
        }
        // Records written before the field existed still decode (nothing known flushed).
        let old = bincode::serialize(&WalRecord {
            epoch: 0,
            seq: 9,
            writes: vec![],
        })
        .unwrap();
        assert_eq!(decode_record(&old).unwrap().1, 0);
        assert_eq!(record_position(&rec(7, 5).1), Some((0, 7)));
    }

    #[test]
    fn replay_stops_at_a_gap_and_skips_already_applied_records() {
        let base: Arc<dyn KvStore> = Arc::new(MemStore::default());
        let log = Arc::new(MemLog::default());
        let rec = |seq: u64, k: &[u8]| {
            (
                seq,
                encode_record(0, seq, &[(k.to_vec(), Some(b"v".to_vec()))]),
            )
        };
        // The store already contains seq 1; the log has 1, 2, 4 (3 never reached the device).
        base.update(Durability::Durable, &mut |t| {
            t.put(b"a", b"v")?;
            t.put(APPLIED_SEQ_KEY, &1u64.to_be_bytes())
        })
        .unwrap();
        let (wal, n) =
            WalStore::recover(base, log, vec![rec(1, b"a"), rec(2, b"b"), rec(4, b"d")]).unwrap();
        assert_eq!(n, 1);
        wal.view(&mut |r| {
            assert!(r.get(b"b")?.is_some());
            assert!(r.get(b"d")?.is_none());
            Ok(())
        })
        .unwrap();
        // The next transaction takes number 3 in a new epoch: the stale record 4 of the old
        // epoch can never be replayed after it.
        assert_eq!(wal.next_seq.load(Ordering::SeqCst), 3);
        assert_eq!(wal.epoch, 1);
    }
}
