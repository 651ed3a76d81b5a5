//! File locks: `flock` and POSIX byte-range locks (`fcntl` `F_SETLK`/`F_SETLKW`/`F_GETLK`,
//! and open-file-description locks, which reach a FUSE file system the same way).
//!
//! The lock table is a set of metadata records, one per locked inode (`R` ino), each a list of
//! [`LockRec`]s owned by (session, lock owner). On a shared store (PostgreSQL) the records are
//! written straight to it, so every mount of the volume sees them; a lock whose session is dead
//! (see [`crate::session`]) is dropped by the first mount that finds it in its way, and a mount
//! sweeps the dead sessions' locks when it starts. On an exclusive volume the table lives in an
//! in-memory store private to the mount: locks never outlive the mount that took them.
//!
//! The range rules are POSIX's: read locks share, a write lock excludes every other owner's
//! lock over an overlapping range; an owner's new lock replaces its own locks over the range
//! (splitting them at its edges), an unlock of a sub-range splits, and an owner's touching or
//! overlapping locks of one kind merge.

use crate::error::{FsError, Result};
use crate::session;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{Durability, KvRead, KvStore, MemStore, prefix_end};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Key prefix of the lock records: `R` ino(u64 BE).
pub const LOCK_PREFIX: &[u8] = b"R";

/// The session name locks of an exclusive mount carry (no session record exists).
const LOCAL_SESSION: &str = "local";

/// The first pause of a blocked `F_SETLKW` before it looks again.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

pub fn lock_key(ino: u64) -> Vec<u8> {
    let mut k = LOCK_PREFIX.to_vec();
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    #[serde(rename = "r")]
    Read,
    #[serde(rename = "w")]
    Write,
}

impl LockKind {
    /// `F_RDLCK`/`F_WRLCK`; `None` for `F_UNLCK`; an error for anything else.
    pub fn from_fcntl(typ: i32) -> Result<Option<LockKind>> {
        match typ {
            libc::F_RDLCK => Ok(Some(LockKind::Read)),
            libc::F_WRLCK => Ok(Some(LockKind::Write)),
            libc::F_UNLCK => Ok(None),
            other => Err(FsError::new(
                libc::EINVAL,
                format!("unknown lock type {other}"),
            )),
        }
    }

    pub fn to_fcntl(self) -> i32 {
        match self {
            LockKind::Read => libc::F_RDLCK,
            LockKind::Write => libc::F_WRLCK,
        }
    }
}

/// One lock: a byte range `start..=end` of an inode (`end` u64::MAX or i64::MAX: to the end
/// of the file, however long it grows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRec {
    /// The session (mount) that holds it.
    pub session: String,
    /// The kernel's lock owner: a process's file table for POSIX locks, an open file
    /// description for `flock` and OFD locks.
    pub owner: u64,
    /// The open file (handle) it was taken through; released with it.
    pub fh: u64,
    /// The process that took it, as `F_GETLK` reports it.
    pub pid: u32,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl LockRec {
    fn same_owner(&self, session: &str, owner: u64) -> bool {
        self.session == session && self.owner == owner
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// What a caller asks for: a lock of `kind` (or an unlock: `None`) over `start..=end`.
#[derive(Clone, Debug)]
pub struct LockRequest {
    pub owner: u64,
    pub fh: u64,
    pub pid: u32,
    pub kind: Option<LockKind>,
    pub start: u64,
    pub end: u64,
}

/// The first lock of another owner that keeps `kind` over `start..=end` from being granted.
pub fn find_conflict<'a>(
    locks: &'a [LockRec],
    session: &str,
    owner: u64,
    kind: LockKind,
    start: u64,
    end: u64,
) -> Option<&'a LockRec> {
    locks.iter().find(|l| {
        !l.same_owner(session, owner)
            && l.overlaps(start, end)
            && (kind == LockKind::Write || l.kind == LockKind::Write)
    })
}

/// Applies a granted request of `session` to `locks`: the owner's locks over the range are cut
/// away (split at the range's edges), the new lock (if any) is added and merged with the
/// owner's touching or overlapping locks of the same kind. Conflicts are the caller's check.
pub fn apply(locks: &mut Vec<LockRec>, session: &str, req: &LockRequest) {
    let (start, end) = (req.start, req.end);
    let mut kept = Vec::with_capacity(locks.len() + 1);
    for l in locks.drain(..) {
        if !l.same_owner(session, req.owner) || !l.overlaps(start, end) {
            kept.push(l);
            continue;
        }
        if l.start < start {
            kept.push(LockRec {
                end: start - 1,
                ..l.clone()
            });
        }
        if l.end > end {
            kept.push(LockRec {
                start: end + 1,
                ..l.clone()
            });
        }
    }
    if let Some(kind) = req.kind {
        let mut new = LockRec {
            session: session.to_string(),
            owner: req.owner,
            fh: req.fh,
            pid: req.pid,
            kind,
            start,
            end,
        };
        // Merge with the owner's locks of the same kind that touch it (none overlap any more).
        kept.retain(|l| {
            let touches = l.same_owner(session, req.owner)
                && l.kind == kind
                && (l.end.checked_add(1) == Some(new.start)
                    || new.end.checked_add(1) == Some(l.start));
            if touches {
                new.start = new.start.min(l.start);
                new.end = new.end.max(l.end);
            }
            !touches
        });
        kept.push(new);
    }
    kept.sort_by(|a, b| (a.start, &a.session, a.owner).cmp(&(b.start, &b.session, b.owner)));
    *locks = kept;
}

/// Where the lock table of a mount lives, and under which session.
#[derive(Clone)]
pub struct SharedLocks {
    /// The volume's shared metadata store (not a mount-local buffer of it).
    pub store: Arc<dyn KvStore>,
    /// This mount's session id.
    pub session_id: String,
}

/// A mount's view of the volume's lock table.
pub struct LockTable {
    store: Arc<dyn KvStore>,
    session: String,
    /// Locks of other sessions are only possible on a shared store.
    shared: bool,
    /// What this mount holds, by inode: (owner, fh) pairs, so that a close touches the store
    /// only when it has locks to release.
    held: Mutex<HashMap<u64, HashSet<(u64, u64)>>>,
    /// Bumped and notified by every local unlock, to wake local waiters at once.
    released: (Mutex<u64>, Condvar),
    /// The longest pause of a blocked `F_SETLKW` between two looks at the table.
    max_backoff: Duration,
}

impl LockTable {
    /// The table of an exclusive volume: private to this mount, in memory.
    pub fn local(max_backoff: Duration) -> LockTable {
        LockTable::new(
            Arc::new(MemStore::default()),
            LOCAL_SESSION.into(),
            false,
            max_backoff,
        )
    }

    /// The table of a shared volume, as session `cfg.session_id` sees it. Locks that dead
    /// sessions left behind are dropped first.
    pub fn shared(cfg: SharedLocks, max_backoff: Duration) -> Result<LockTable> {
        let table = LockTable::new(cfg.store, cfg.session_id, true, max_backoff);
        let dropped = table.sweep_dead()?;
        if dropped > 0 {
            tracing::info!("dropped {dropped} locks held by dead sessions");
        }
        Ok(table)
    }

    fn new(
        store: Arc<dyn KvStore>,
        session: String,
        shared: bool,
        max_backoff: Duration,
    ) -> LockTable {
        LockTable {
            store,
            session,
            shared,
            held: Mutex::new(HashMap::new()),
            released: (Mutex::new(0), Condvar::new()),
            max_backoff: max_backoff.max(FIRST_BACKOFF),
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// `F_GETLK`: the first lock that would keep `kind` over the range from `owner`.
    pub fn test(
        &self,
        ino: u64,
        owner: u64,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> Result<Option<LockRec>> {
        let mut found = None;
        self.store.update(Durability::Visible, &mut |t| {
            found = None;
            let mut locks = read_locks(t, ino)?;
            if self.drop_dead_in_way(t, &mut locks, owner, kind, start, end)? {
                write_locks(t, ino, &locks)?;
            }
            found = find_conflict(&locks, &self.session, owner, kind, start, end).cloned();
            Ok(())
        })?;
        Ok(found)
    }

    /// `F_SETLK`: grants or releases at once; `Err(conflicting lock)` if another owner holds a
    /// conflicting lock.
    pub fn try_set(&self, ino: u64, req: &LockRequest) -> Result<std::result::Result<(), LockRec>> {
        let mut outcome = Ok(());
        let mut still_held = false;
        self.store.update(Durability::Durable, &mut |t| {
            outcome = Ok(());
            let mut locks = read_locks(t, ino)?;
            let mut changed = false;
            if let Some(kind) = req.kind {
                changed |=
                    self.drop_dead_in_way(t, &mut locks, req.owner, kind, req.start, req.end)?;
                if let Some(c) =
                    find_conflict(&locks, &self.session, req.owner, kind, req.start, req.end)
                {
                    outcome = Err(c.clone());
                    if changed {
                        write_locks(t, ino, &locks)?;
                    }
                    return Ok(());
                }
            }
            let before = locks.clone();
            apply(&mut locks, &self.session, req);
            if changed || locks != before {
                write_locks(t, ino, &locks)?;
            }
            still_held = locks
                .iter()
                .any(|l| l.same_owner(&self.session, req.owner) && l.fh == req.fh);
            Ok(())
        })?;
        if outcome.is_ok() {
            let mut held = self.held.lock();
            let set = held.entry(ino).or_default();
            if still_held {
                set.insert((req.owner, req.fh));
            } else {
                set.remove(&(req.owner, req.fh));
            }
            if set.is_empty() {
                held.remove(&ino);
            }
            drop(held);
            if req.kind != Some(LockKind::Write) {
                self.wake_waiters();
            }
        }
        Ok(outcome)
    }

    /// `F_SETLKW`: waits until the lock can be granted, looking again after a pause that
    /// doubles up to the table's longest backoff, or at once when a lock of this mount is
    /// released. `interrupted` is asked before every look: once it says yes the wait ends with
    /// EINTR and nothing is taken.
    pub fn set_wait(
        &self,
        ino: u64,
        req: &LockRequest,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<()> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if interrupted() {
                return Err(FsError::new(libc::EINTR, "lock wait interrupted"));
            }
            let seen = *self.released.0.lock();
            match self.try_set(ino, req)? {
                Ok(()) => return Ok(()),
                Err(holder) => {
                    tracing::trace!(ino, ?holder, "lock wait");
                }
            }
            let mut generation = self.released.0.lock();
            if *generation == seen {
                self.released.1.wait_for(&mut generation, backoff);
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    /// A close by `owner` (a `flush`): POSIX locks of that owner on the inode go.
    pub fn release_owner(&self, ino: u64, owner: u64) -> Result<()> {
        self.release_matching(ino, &|o, _| o == owner)
    }

    /// The last close of open file `fh` (a `release`): the locks taken through it go (`flock`
    /// and OFD locks; POSIX ones are gone already with the flush), and those of `owner`.
    pub fn release_handle(&self, ino: u64, fh: u64, owner: Option<u64>) -> Result<()> {
        self.release_matching(ino, &|o, f| f == fh || Some(o) == owner)
    }

    fn release_matching(&self, ino: u64, matches: &dyn Fn(u64, u64) -> bool) -> Result<()> {
        let victims: Vec<(u64, u64)> = match self.held.lock().get(&ino) {
            None => return Ok(()),
            Some(set) => set
                .iter()
                .copied()
                .filter(|&(o, f)| matches(o, f))
                .collect(),
        };
        if victims.is_empty() {
            return Ok(());
        }
        self.store.update(Durability::Durable, &mut |t| {
            let mut locks = read_locks(t, ino)?;
            let before = locks.len();
            locks.retain(|l| l.session != self.session || !victims.contains(&(l.owner, l.fh)));
            if locks.len() != before {
                write_locks(t, ino, &locks)?;
            }
            Ok(())
        })?;
        {
            let mut held = self.held.lock();
            if let Some(set) = held.get_mut(&ino) {
                for v in &victims {
                    set.remove(v);
                }
                if set.is_empty() {
                    held.remove(&ino);
                }
            }
        }
        self.wake_waiters();
        Ok(())
    }

    /// Releases every lock this mount holds (a clean unmount).
    pub fn release_all(&self) -> Result<()> {
        let inodes: Vec<u64> = self.held.lock().keys().copied().collect();
        for ino in inodes {
            self.release_matching(ino, &|_, _| true)?;
        }
        Ok(())
    }

    /// Drops every lock of a session that is no longer live; returns how many.
    pub fn sweep_dead(&self) -> Result<usize> {
        if !self.shared {
            return Ok(0);
        }
        let mut dropped = 0;
        self.store.update(Durability::Durable, &mut |t| {
            dropped = 0;
            let live: HashSet<String> = session::live_in(t)?.into_iter().map(|s| s.id).collect();
            let rows = t.scan(LOCK_PREFIX, &prefix_end(LOCK_PREFIX), usize::MAX)?;
            for (key, value) in rows {
                let mut locks = decode(&value);
                let before = locks.len();
                locks.retain(|l| l.session == self.session || live.contains(&l.session));
                if locks.len() != before {
                    dropped += before - locks.len();
                    if locks.is_empty() {
                        t.delete(&key)?;
                    } else {
                        t.put(&key, &encode(&locks))?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(dropped)
    }

    /// Every lock on `ino` (tests, status).
    pub fn locks_of(&self, ino: u64) -> Result<Vec<LockRec>> {
        let mut locks = Vec::new();
        self.store.view(&mut |r| {
            locks = read_locks(r, ino)?;
            Ok(())
        })?;
        Ok(locks)
    }

    /// If another session's lock stands in the way, drops the locks of sessions that are not
    /// live (their mount died). Returns whether `locks` changed.
    fn drop_dead_in_way(
        &self,
        t: &dyn KvRead,
        locks: &mut Vec<LockRec>,
        owner: u64,
        kind: LockKind,
        start: u64,
        end: u64,
    ) -> std::result::Result<bool, spoolfs_metadata::MetaError> {
        if !self.shared {
            return Ok(false);
        }
        let foreign_in_way = locks.iter().any(|l| {
            l.session != self.session
                && find_conflict(
                    std::slice::from_ref(l),
                    &self.session,
                    owner,
                    kind,
                    start,
                    end,
                )
                .is_some()
        });
        if !foreign_in_way {
            return Ok(false);
        }
        let live: HashSet<String> = session::live_in(t)?.into_iter().map(|s| s.id).collect();
        let before = locks.len();
        locks.retain(|l| l.session == self.session || live.contains(&l.session));
        if locks.len() != before {
            tracing::info!(
                "dropped {} locks held by dead sessions",
                before - locks.len()
            );
        }
        Ok(locks.len() != before)
    }

    fn wake_waiters(&self) {
        *self.released.0.lock() += 1;
        self.released.1.notify_all();
    }
}

fn decode(value: &[u8]) -> Vec<LockRec> {
    serde_json::from_slice(value).unwrap_or_else(|e| {
        crate::warn_limited!("an unreadable lock record was dropped: {e}");
        Vec::new()
    })
}

fn encode(locks: &[LockRec]) -> Vec<u8> {
    serde_json::to_vec(locks).expect("lock records serialise")
}

fn read_locks(
    r: &dyn KvRead,
    ino: u64,
) -> std::result::Result<Vec<LockRec>, spoolfs_metadata::MetaError> {
    Ok(r.get(&lock_key(ino))?
        .map(|v| decode(&v))
        .unwrap_or_default())
}

fn write_locks(
    t: &mut dyn spoolfs_metadata::KvTxn,
    ino: u64,
    locks: &[LockRec],
) -> std::result::Result<(), spoolfs_metadata::MetaError> {
    if locks.is_empty() {
        t.delete(&lock_key(ino))
    } else {
        t.put(&lock_key(ino), &encode(locks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(owner: u64, kind: Option<LockKind>, start: u64, end: u64) -> LockRequest {
        LockRequest {
            owner,
            fh: owner,
            pid: owner as u32,
            kind,
            start,
            end,
        }
    }

    fn ranges(locks: &[LockRec], owner: u64) -> Vec<(LockKind, u64, u64)> {
        locks
            .iter()
            .filter(|l| l.owner == owner)
            .map(|l| (l.kind, l.start, l.end))
            .collect()
    }

    use LockKind::{Read, Write};

    #[test]
    fn unlock_of_a_sub_range_splits_a_lock() {
        let mut locks = Vec::new();
        apply(&mut locks, "s", &req(1, Some(Write), 0, 99));
        apply(&mut locks, "s", &req(1, None, 10, 19));
        assert_eq!(ranges(&locks, 1), vec![(Write, 0, 9), (Write, 20, 99)]);
        // Unlocking to the end of the file trims.
        apply(&mut locks, "s", &req(1, None, 50, u64::MAX));
        assert_eq!(ranges(&locks, 1), vec![(Write, 0, 9), (Write, 20, 49)]);
        apply(&mut locks, "s", &req(1, None, 0, u64::MAX));
        assert!(locks.is_empty());
    }

    #[test]
    fn a_new_kind_over_part_of_a_lock_splits_it_and_same_kinds_merge() {
        let mut locks = Vec::new();
        apply(&mut locks, "s", &req(1, Some(Read), 0, 99));
        apply(&mut locks, "s", &req(1, Some(Write), 40, 59));
        assert_eq!(
            ranges(&locks, 1),
            vec![(Read, 0, 39), (Write, 40, 59), (Read, 60, 99)]
        );
        // Back to read over the middle: the three merge into one.
        apply(&mut locks, "s", &req(1, Some(Read), 40, 59));
        assert_eq!(ranges(&locks, 1), vec![(Read, 0, 99)]);
        // Touching and overlapping ranges of one kind merge; a gap does not.
        apply(&mut locks, "s", &req(1, Some(Read), 100, 149));
        apply(&mut locks, "s", &req(1, Some(Read), 200, 299));
        assert_eq!(ranges(&locks, 1), vec![(Read, 0, 149), (Read, 200, 299)]);
        apply(&mut locks, "s", &req(1, Some(Read), 140, 250));
        assert_eq!(ranges(&locks, 1), vec![(Read, 0, 299)]);
        // Another owner's touching lock never merges.
        apply(&mut locks, "s", &req(2, Some(Read), 300, 399));
        assert_eq!(ranges(&locks, 1), vec![(Read, 0, 299)]);
        assert_eq!(ranges(&locks, 2), vec![(Read, 300, 399)]);
    }

    #[test]
    fn conflicts_follow_posix() {
        let mut locks = Vec::new();
        apply(&mut locks, "a", &req(1, Some(Read), 0, 99));
        // Readers share; a writer over any overlap conflicts; disjoint ranges do not.
        assert!(find_conflict(&locks, "a", 2, Read, 50, 150).is_none());
        assert_eq!(
            find_conflict(&locks, "a", 2, Write, 99, 99).map(|l| l.owner),
            Some(1)
        );
        assert!(find_conflict(&locks, "a", 2, Write, 100, u64::MAX).is_none());
        // The owner's own locks never conflict; the same owner number in another session does.
        assert!(find_conflict(&locks, "a", 1, Write, 0, 99).is_none());
        assert!(find_conflict(&locks, "b", 1, Write, 0, 99).is_some());
        apply(&mut locks, "a", &req(3, Some(Write), 200, u64::MAX));
        assert_eq!(
            find_conflict(&locks, "a", 2, Read, 1 << 40, 1 << 41).map(|l| l.owner),
            Some(3)
        );
    }

    #[test]
    fn lock_types_from_fcntl() {
        assert_eq!(LockKind::from_fcntl(libc::F_RDLCK).unwrap(), Some(Read));
        assert_eq!(LockKind::from_fcntl(libc::F_WRLCK).unwrap(), Some(Write));
        assert_eq!(LockKind::from_fcntl(libc::F_UNLCK).unwrap(), None);
        assert_eq!(LockKind::from_fcntl(77).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn local_table_grants_refuses_and_releases_on_close() {
        let t = LockTable::local(Duration::from_millis(50));
        assert!(t.try_set(5, &req(1, Some(Write), 0, 9)).unwrap().is_ok());
        let holder = t
            .try_set(5, &req(2, Some(Read), 5, 5))
            .unwrap()
            .unwrap_err();
        assert_eq!((holder.owner, holder.pid), (1, 1));
        assert_eq!(t.test(5, 2, Read, 0, 0).unwrap().map(|l| l.owner), Some(1));
        assert!(t.test(5, 2, Read, 10, 20).unwrap().is_none());
        // Another inode is independent.
        assert!(t.try_set(6, &req(2, Some(Write), 0, 9)).unwrap().is_ok());
        // A flush by another owner releases nothing; the holder's does.
        t.release_owner(5, 2).unwrap();
        assert_eq!(t.locks_of(5).unwrap().len(), 1);
        t.release_owner(5, 1).unwrap();
        assert!(t.locks_of(5).unwrap().is_empty());
        // A release of the handle drops what was taken through it (flock, OFD locks).
        t.release_handle(6, 2, None).unwrap();
        assert!(t.locks_of(6).unwrap().is_empty());
    }

    #[test]
    fn a_waiter_wakes_on_a_local_unlock_and_an_interrupted_one_takes_nothing() {
        let t = Arc::new(LockTable::local(Duration::from_secs(10)));
        t.try_set(1, &req(1, Some(Write), 0, u64::MAX))
            .unwrap()
            .unwrap();
        // Interrupted: EINTR, and no lock of owner 2 appears.
        let e = t
            .set_wait(1, &req(2, Some(Write), 0, 0), &|| true)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINTR);
        assert!(t.locks_of(1).unwrap().iter().all(|l| l.owner == 1));
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                t.set_wait(1, &req(2, Some(Write), 0, 0), &|| false)
                    .unwrap();
                started.elapsed()
            })
        };
        // Let the waiter back off towards its 10 s ceiling, then unlock: it wakes at once.
        std::thread::sleep(Duration::from_millis(300));
        t.try_set(1, &req(1, None, 0, u64::MAX)).unwrap().unwrap();
        let waited = waiter.join().unwrap();
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        assert_eq!(ranges(&t.locks_of(1).unwrap(), 2), vec![(Write, 0, 0)]);
    }

    #[test]
    fn sessions_share_a_store_and_a_dead_sessions_locks_are_dropped() {
        let store: Arc<dyn KvStore> = Arc::new(MemStore::default());
        let timeout = Duration::from_secs(30);
        let a_session = session::Session::register(store.clone(), "/a", "/ca", timeout).unwrap();
        let b_session = session::Session::register(store.clone(), "/b", "/cb", timeout).unwrap();
        let table = |s: &session::Session| {
            LockTable::shared(
                SharedLocks {
                    store: store.clone(),
                    session_id: s.rec.id.clone(),
                },
                Duration::from_millis(20),
            )
            .unwrap()
        };
        let (a, b) = (table(&a_session), table(&b_session));
        // The same owner number on two mounts is two owners.
        a.try_set(7, &req(1, Some(Write), 0, u64::MAX))
            .unwrap()
            .unwrap();
        let holder = b
            .try_set(7, &req(1, Some(Read), 0, 0))
            .unwrap()
            .unwrap_err();
        assert_eq!(holder.session, a_session.rec.id);
        assert_eq!(
            b.test(7, 1, Write, 100, 200).unwrap().map(|l| l.session),
            Some(a_session.rec.id.clone())
        );
        // A's session ends without releasing (its mount died): its record goes, its lock is
        // still stored, and B takes the range, dropping it.
        let mut a_session = a_session;
        a_session.end().unwrap();
        assert_eq!(a.locks_of(7).unwrap().len(), 1);
        b.set_wait(7, &req(1, Some(Write), 0, 0), &|| false)
            .unwrap();
        let left = b.locks_of(7).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session, b_session.rec.id);
        // The sweep at a mount's start drops dead locks on inodes nobody touches.
        a.try_set(8, &req(1, Some(Read), 0, 0)).unwrap().unwrap();
        let c_session = session::Session::register(store.clone(), "/c", "/cc", timeout).unwrap();
        let _c = table(&c_session);
        assert!(b.locks_of(8).unwrap().is_empty());
        drop(b_session);
    }
}
