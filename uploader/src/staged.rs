//! What the uploader knows about a staged slice, and the set of them.

use serde::{Deserialize, Serialize};
use spoolfs_staging::StagedLoc;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a staged slice's data is: a record in this node's staging log (the value of a `T`
/// record in the metadata).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedRec {
    pub ino: u64,
    pub chunk: u32,
    pub size: u32,
    pub segment: u32,
    pub offset: u64,
    /// When it was staged (ns since the epoch): the age of the oldest staged byte.
    pub staged_ns: i64,
    /// The node whose staging log holds it (a stable id of its cache directory; 0 in records
    /// written before nodes were told apart, and on exclusive stores). On a shared store the
    /// other mounts read it from that node.
    pub owner: u64,
}

/// A `T` record as written before [`StagedRec::owner`] existed (36 bytes).
#[derive(Deserialize)]
struct StagedRecV1 {
    ino: u64,
    chunk: u32,
    size: u32,
    segment: u32,
    offset: u64,
    staged_ns: i64,
}

impl StagedRec {
    /// Decodes a `T` record value, of either length.
    pub fn decode(bytes: &[u8]) -> Result<StagedRec, bincode::Error> {
        match bincode::deserialize::<StagedRec>(bytes) {
            Ok(rec) => Ok(rec),
            Err(e) => match bincode::deserialize::<StagedRecV1>(bytes) {
                Ok(v1) if bytes.len() == 36 => Ok(StagedRec {
                    ino: v1.ino,
                    chunk: v1.chunk,
                    size: v1.size,
                    segment: v1.segment,
                    offset: v1.offset,
                    staged_ns: v1.staged_ns,
                    owner: 0,
                }),
                _ => Err(e),
            },
        }
    }
}

/// A staged slice as the engine tracks it in memory: its `T` record, where its record is in
/// the log (the `T` record's own location fields are not authoritative: a slice staged
/// together with its metadata change cannot know its place before the change is written), and
/// the namespace transaction its record carries (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    pub rec: StagedRec,
    pub loc: StagedLoc,
    pub wal_seq: u64,
}

/// What a `T` record says about the location of a slice staged together with its metadata
/// change (unknown when the record was written; replay finds the slice by its id).
pub const UNKNOWN_SEGMENT: u32 = u32::MAX;

impl Staged {
    /// A slice about to be staged with its metadata change: no place yet.
    pub fn pending(rec: StagedRec) -> Staged {
        let loc = StagedLoc {
            segment: UNKNOWN_SEGMENT,
            offset: 0,
            len: 0,
        };
        Staged {
            rec,
            loc,
            wal_seq: 0,
        }
    }

    /// A slice staged at `loc`.
    pub fn at(rec: StagedRec, loc: StagedLoc) -> Staged {
        let rec = StagedRec {
            segment: loc.segment,
            offset: loc.offset,
            ..rec
        };
        Staged {
            rec,
            loc,
            wal_seq: 0,
        }
    }

    /// Its record also carries namespace transaction `seq`.
    pub fn carrying(self, seq: u64) -> Staged {
        Staged {
            wal_seq: seq,
            ..self
        }
    }

    /// Where it is staged, if it is.
    pub fn placed(&self) -> Option<StagedLoc> {
        (self.loc.segment != UNKNOWN_SEGMENT).then_some(self.loc)
    }
}

/// The longest a staged slice waits for a burst of writes to end (see
/// [`StagedSet::burst_wait`]): a writer that never pauses still has its data uploaded.
pub const BURST_MAX_WAIT: Duration = Duration::from_secs(10);

/// The in-memory mirror of the `T` records, and the upload queue (oldest first).
#[derive(Default)]
pub struct StagedSet {
    pub map: HashMap<u64, Staged>,
    pub queue: VecDeque<u64>,
    pub bytes: u64,
    /// When a slice was last added ([`now_ns`]): writes still arriving hold uploads back
    /// (see [`StagedSet::burst_wait`]).
    pub last_added_ns: i64,
    /// Slices an uploader is working on.
    pub busy: usize,
    pub upload_errors: u64,
    /// Data of staged slices still in memory (up to `upload_buffer` bytes): the uploader takes
    /// it from here instead of reading the staging device.
    pub resident: HashMap<u64, Vec<u8>>,
    pub resident_bytes: u64,
    /// Queued slices another mount asked for: uploaded without the upload delay.
    pub urgent: HashSet<u64>,
    /// Slices of a batch whose upload failed, perhaps after its commit took effect (a store
    /// can report an error for a transaction it committed): at the retry, one whose `T`
    /// record is gone may be one this uploader committed, so its objects are not deleted.
    pub uncertain: HashSet<u64>,
}

impl StagedSet {
    /// Removes slice `id`'s in-memory data, if it is kept.
    pub(crate) fn take_resident(&mut self, id: u64) -> Option<Vec<u8>> {
        let data = self.resident.remove(&id)?;
        self.resident_bytes -= data.len() as u64;
        Some(data)
    }

    /// Moves queued slice `id` to the front of the queue and marks it urgent. False if it is
    /// not queued (being uploaded, or no longer staged).
    pub(crate) fn prioritise(&mut self, id: u64) -> bool {
        if self.queue.front() != Some(&id) {
            let Some(at) = self.queue.iter().position(|q| *q == id) else {
                return false;
            };
            self.queue.remove(at);
            self.queue.push_front(id);
        }
        self.urgent.insert(id)
    }

    /// How long until the queue is worth uploading: `None` now. It is when its oldest slice
    /// has waited `delay`, or is urgent, or a pack's worth of small data is queued.
    pub(crate) fn wait_needed(&self, delay: Duration, pack_size: usize) -> Option<Duration> {
        let head_id = self.queue.front()?;
        if self.urgent.contains(head_id) {
            return None;
        }
        let head = self.map.get(head_id)?;
        let age_ns = (now_ns() - head.rec.staged_ns).max(0) as u128;
        if age_ns >= delay.as_nanos() {
            return None;
        }
        let mut queued = 0usize;
        for r in self.queue.iter().filter_map(|id| self.map.get(id)) {
            queued += r.rec.size as usize;
            if queued >= pack_size {
                return None;
            }
        }
        Some(Duration::from_nanos((delay.as_nanos() - age_ns) as u64))
    }

    /// How long uploads wait for a burst of writes to end: `None` now. While slices keep
    /// arriving (the last one added less than `delay` ago) and fewer than `hold` bytes are
    /// staged, the writes get the staging disk and the CPUs to themselves; a slice another
    /// mount asked for ends the wait. `hold` 0 or `delay` zero: no wait.
    pub(crate) fn burst_wait(&self, delay: Duration, hold: u64) -> Option<Duration> {
        if hold == 0 || delay.is_zero() || self.bytes >= hold || !self.urgent.is_empty() {
            return None;
        }
        let now = now_ns();
        let head = self.map.get(self.queue.front()?)?;
        let head_age = (now - head.rec.staged_ns).max(0) as u128;
        if head_age >= BURST_MAX_WAIT.as_nanos() {
            return None;
        }
        let since = (now - self.last_added_ns).max(0) as u128;
        (since < delay.as_nanos()).then(|| {
            let left = (delay.as_nanos() - since).min(BURST_MAX_WAIT.as_nanos() - head_age);
            Duration::from_nanos(left as u64)
        })
    }

    /// Whether the oldest queued slice is younger than `max_age`.
    pub(crate) fn oldest_within(&self, max_age: Duration) -> bool {
        self.queue
            .front()
            .and_then(|id| self.map.get(id))
            .is_none_or(|r| now_ns() - r.rec.staged_ns <= max_age.as_nanos() as i64)
    }

    /// Slices among `ids` still staged, and their bytes.
    pub(crate) fn still_staged<'a>(&self, ids: impl Iterator<Item = &'a u64>) -> (u64, u64) {
        ids.filter_map(|id| self.map.get(id))
            .fold((0u64, 0u64), |(n, b), r| (n + 1, b + r.rec.size as u64))
    }
}

/// Nanoseconds since the epoch, the clock of [`StagedRec::staged_ns`].
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_records_of_both_versions_decode() {
        let rec = StagedRec {
            ino: 7,
            chunk: 2,
            size: 4096,
            segment: 3,
            offset: 1 << 20,
            staged_ns: 123,
            owner: 0xfeed_beef_0000_0001,
        };
        let bytes = bincode::serialize(&rec).unwrap();
        assert_eq!(bytes.len(), 44);
        assert_eq!(StagedRec::decode(&bytes).unwrap(), rec);
        // A record written before the owner existed: the first 36 bytes, owner unknown (0).
        assert_eq!(
            StagedRec::decode(&bytes[..36]).unwrap(),
            StagedRec { owner: 0, ..rec }
        );
        // Any other length is refused.
        assert!(StagedRec::decode(&bytes[..35]).is_err());
        assert!(StagedRec::decode(&bytes[..40]).is_err());
    }

    fn staged(size: u32) -> Staged {
        Staged::pending(StagedRec {
            ino: 1,
            chunk: 0,
            size,
            segment: 0,
            offset: 0,
            staged_ns: now_ns(),
            owner: 0,
        })
    }

    #[test]
    fn a_prioritised_slice_goes_first_without_the_upload_delay() {
        let mut set = StagedSet::default();
        for id in 1..=3 {
            set.map.insert(id, staged(100));
            set.queue.push_back(id);
        }
        let delay = Duration::from_secs(60);
        assert!(
            set.wait_needed(delay, 1 << 20).is_some(),
            "young small slices wait"
        );
        assert!(set.prioritise(3));
        assert_eq!(set.queue, [3, 1, 2]);
        assert_eq!(
            set.wait_needed(delay, 1 << 20),
            None,
            "an urgent head goes now"
        );
        assert!(!set.prioritise(3), "already urgent: nothing to do");
        assert_eq!(set.queue, [3, 1, 2]);
        assert!(!set.prioritise(9), "not queued");
        assert_eq!(set.queue, [3, 1, 2]);
    }

    #[test]
    fn uploads_wait_for_a_burst_of_writes_to_end_or_fill_the_hold() {
        let mut set = StagedSet::default();
        let delay = Duration::from_secs(60);
        let hold = 64 << 20;
        for id in 1..=3 {
            set.map.insert(id, staged(16 << 20));
            set.queue.push_back(id);
            set.bytes += 16 << 20;
        }
        set.last_added_ns = now_ns();
        let wait = set
            .burst_wait(delay, hold)
            .expect("writes still arriving: wait");
        assert!(wait <= delay, "{wait:?}");
        assert_eq!(
            set.burst_wait(Duration::ZERO, hold),
            None,
            "no delay, no wait"
        );
        assert_eq!(set.burst_wait(delay, 0), None, "no hold, no wait");
        assert_eq!(
            set.burst_wait(delay, 48 << 20),
            None,
            "the hold is full: upload while the writes go on"
        );
        set.last_added_ns = now_ns() - 61_000_000_000;
        assert_eq!(
            set.burst_wait(delay, hold),
            None,
            "the writes ended: upload"
        );
        set.last_added_ns = now_ns();
        set.map.get_mut(&1).unwrap().rec.staged_ns -= BURST_MAX_WAIT.as_nanos() as i64;
        assert_eq!(
            set.burst_wait(delay, hold),
            None,
            "the oldest slice waited long enough: upload while the writes go on"
        );
        set.map.get_mut(&1).unwrap().rec.staged_ns = now_ns();
        assert!(set.prioritise(2));
        assert_eq!(
            set.burst_wait(delay, hold),
            None,
            "a slice another mount waits for goes now"
        );
    }
}
