//! Open-file holds on a shared volume: while a mount has a file open, a `U` ino session record
//! says so in the shared metadata. The last unlink of a held inode (on any mount) leaves it as
//! an orphan (nlink 0, an `O` record) instead of deleting it, so a file unlinked on one node
//! stays readable on the nodes that have it open. The holder's last close drops its hold and
//! deletes the orphan if nobody else holds it; holds of dead sessions are dropped by the sweep,
//! which also deletes the orphans they leave unheld.
//!
//! The hold is written in the open's own transaction (with the read of the inode), and by the
//! create's. Dropping it is not on the close path: the last close here queues the inode and the
//! holds thread drops queued holds in batches, a moment later. A file opened again here before
//! that keeps its hold without writing anything. Exclusive volumes have no holds: the mount's
//! table of open files is the whole truth there (see `OpenFiles::keep_unlinked`).

use crate::namespace;
use crate::schema;
use crate::session;
use crate::types::{FileKind, Ino};
use parking_lot::{Condvar, Mutex};
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};
use std::collections::{BTreeSet, HashSet};

/// Key prefix of the hold records: `U` ino(u64 BE) session-id.
pub const HOLD_PREFIX: &[u8] = b"U";
/// Key prefix of the orphans (see [`schema::orphan_key`]).
const ORPHAN_PREFIX: &[u8] = b"O";

pub fn hold_prefix(ino: Ino) -> Vec<u8> {
    let mut k = HOLD_PREFIX.to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

pub fn hold_key(ino: Ino, session: &str) -> Vec<u8> {
    let mut k = hold_prefix(ino);
    k.extend_from_slice(session.as_bytes());
    k
}

/// The inode and session of a hold key (`None`: not one).
pub fn parse_hold_key(key: &[u8]) -> Option<(Ino, String)> {
    if key.len() < 9 || key[0] != HOLD_PREFIX[0] {
        return None;
    }
    let ino = schema::key_id("hold", key).ok()?;
    Some((ino, String::from_utf8_lossy(&key[9..]).into_owned()))
}

/// Whether any session holds `ino` open.
pub(crate) fn is_held(r: &dyn KvRead, ino: Ino) -> Result<bool, MetaError> {
    let prefix = hold_prefix(ino);
    Ok(!r.scan(&prefix, &prefix_end(&prefix), 1)?.is_empty())
}

/// Records that `session` holds `ino` open.
pub(crate) fn put_hold(t: &mut dyn KvTxn, ino: Ino, session: &str) -> Result<(), MetaError> {
    t.put(&hold_key(ino, session), &[])
}

/// Drops `session`'s hold of `ino`; deletes the inode if it is an orphan nobody else holds.
/// Returns whether it was deleted.
pub(crate) fn drop_hold(t: &mut dyn KvTxn, ino: Ino, session: &str) -> Result<bool, MetaError> {
    let prefix = hold_prefix(ino);
    let inode_key = schema::inode_key(ino);
    // The inode and its holds, in one round trip on a networked store.
    t.prefetch(&[&inode_key], &[(&prefix, &prefix_end(&prefix))])?;
    t.delete(&hold_key(ino, session))?;
    match schema::get_inode(t, ino)? {
        Some(rec) if rec.nlink == 0 && !is_held(t, ino)? => {
            namespace::purge_inode(t, ino)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Holds of sessions that are no longer live, dropped.
    pub dead_holds: u64,
    /// Orphans nobody holds any more, deleted (their slices queued for deletion).
    pub orphans_freed: u64,
}

/// Drops the holds of sessions that are not live (except `own`) and deletes the orphans that
/// no live session holds and that are not open here (`open_here`). An orphan directory carries
/// no hold (directories are held only by the mount that has them open, in memory): it is
/// deleted only when `own` is the volume's only live session.
pub(crate) fn sweep(
    t: &mut dyn KvTxn,
    own: &str,
    open_here: &dyn Fn(Ino) -> bool,
) -> Result<SweepReport, MetaError> {
    let mut report = SweepReport::default();
    let live: HashSet<String> = session::live_in(t)?.into_iter().map(|s| s.id).collect();
    let alone = live.iter().all(|s| s == own);
    let mut held = BTreeSet::new();
    for (key, _) in t.scan(HOLD_PREFIX, &prefix_end(HOLD_PREFIX), usize::MAX)? {
        match parse_hold_key(&key) {
            Some((ino, s)) if s == own || live.contains(&s) => {
                held.insert(ino);
            }
            _ => {
                t.delete(&key)?;
                report.dead_holds += 1;
            }
        }
    }
    for (key, _) in t.scan(ORPHAN_PREFIX, &prefix_end(ORPHAN_PREFIX), usize::MAX)? {
        let Some(ino) = key
            .get(1..9)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
        else {
            continue;
        };
        if held.contains(&ino) || open_here(ino) {
            continue;
        }
        let is_dir = schema::get_inode(t, ino)?.is_some_and(|r| r.kind == FileKind::Dir);
        if is_dir && !alone {
            continue;
        }
        namespace::purge_inode(t, ino)?;
        report.orphans_freed += 1;
    }
    Ok(report)
}

/// This mount's holds: which inodes it has recorded, and which await dropping.
pub(crate) struct Holds {
    pub(crate) session: String,
    state: Mutex<HoldState>,
    /// Signalled when a batch of drops has committed.
    dropped: Condvar,
}

#[derive(Default)]
struct HoldState {
    /// Inodes whose hold by this session is in the store.
    recorded: HashSet<Ino>,
    /// Inodes whose hold is being dropped now: an open of one waits for the drop to commit,
    /// then records the hold again.
    dropping: HashSet<Ino>,
    /// Inodes closed here since the last batch: their holds go unless they are open again.
    queued: BTreeSet<Ino>,
}

/// What an open must do about its hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HoldNeed {
    /// The hold is recorded already.
    Recorded,
    /// Write the hold (in the open's transaction), then call [`Holds::recorded`].
    Write,
}

impl Holds {
    pub(crate) fn new(session: String) -> Holds {
        Holds {
            session,
            state: Mutex::new(HoldState::default()),
            dropped: Condvar::new(),
        }
    }

    /// For an open of `ino` (already pinned as an open handle, so no drop starts for it).
    pub(crate) fn need(&self, ino: Ino) -> HoldNeed {
        let mut st = self.state.lock();
        while st.dropping.contains(&ino) {
            self.dropped.wait(&mut st);
        }
        if st.recorded.contains(&ino) {
            HoldNeed::Recorded
        } else {
            HoldNeed::Write
        }
    }

    /// The hold of `ino` is committed.
    pub(crate) fn recorded(&self, ino: Ino) {
        self.state.lock().recorded.insert(ino);
    }

    /// The last handle of `ino` here was closed: its hold is dropped with the next batch.
    pub(crate) fn queue_drop(&self, ino: Ino) {
        let mut st = self.state.lock();
        if st.recorded.contains(&ino) {
            st.queued.insert(ino);
        }
    }

    /// Takes the queued inodes not open here (`open_here`) for dropping; with `all`, every
    /// recorded one (at shutdown).
    pub(crate) fn take_batch(&self, open_here: &dyn Fn(Ino) -> bool, all: bool) -> Vec<Ino> {
        let mut st = self.state.lock();
        let candidates: Vec<Ino> = if all {
            st.recorded.iter().copied().collect()
        } else {
            std::mem::take(&mut st.queued).into_iter().collect()
        };
        let mut batch = Vec::new();
        for ino in candidates {
            if open_here(ino) || !st.recorded.contains(&ino) {
                continue;
            }
            st.recorded.remove(&ino);
            st.queued.remove(&ino);
            st.dropping.insert(ino);
            batch.push(ino);
        }
        batch
    }

    /// The batch's drops committed (`ok`), or failed: then its holds count as recorded again
    /// and are queued for the next batch.
    pub(crate) fn finish_batch(&self, batch: &[Ino], ok: bool) {
        let mut st = self.state.lock();
        for ino in batch {
            st.dropping.remove(ino);
            if !ok {
                st.recorded.insert(*ino);
                st.queued.insert(*ino);
            }
        }
        self.dropped.notify_all();
    }

    /// Inodes held here now (for tests and status).
    pub(crate) fn recorded_count(&self) -> usize {
        self.state.lock().recorded.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys_round_trip() {
        let k = hold_key(42, "abc-def");
        assert_eq!(parse_hold_key(&k), Some((42, "abc-def".to_string())));
        assert!(k.starts_with(&hold_prefix(42)));
        assert!(!k.starts_with(&hold_prefix(43)));
        assert_eq!(parse_hold_key(b"U123"), None);
    }

    #[test]
    fn a_queued_hold_of_a_reopened_file_stays() {
        let h = Holds::new("s".into());
        assert_eq!(h.need(7), HoldNeed::Write);
        h.recorded(7);
        h.recorded(8);
        assert_eq!(h.need(7), HoldNeed::Recorded);
        h.queue_drop(7);
        h.queue_drop(8);
        // 7 is open here again: it keeps its hold; 8 goes.
        let batch = h.take_batch(&|ino| ino == 7, false);
        assert_eq!(batch, vec![8]);
        assert_eq!(h.need(7), HoldNeed::Recorded);
        h.finish_batch(&batch, false);
        // A failed drop is retried with the next batch.
        assert_eq!(h.take_batch(&|_| false, false), vec![8]);
        h.finish_batch(&[8], true);
        assert_eq!(h.need(8), HoldNeed::Write);
        assert_eq!(h.take_batch(&|_| false, true), vec![7]);
    }
}
