//! Sessions: each mount of a volume on a shared metadata store (PostgreSQL) registers a
//! record (id, host, pid, mount point, cache directory, peer address, heartbeat) and renews its
//! heartbeat while it runs. `spoolfs status --meta URL` lists them; a session whose heartbeat
//! is older than the session timeout is dead, and the next mount removes it.
//!
//! Sessions are written straight to the shared store, never through the mount's memtable or
//! namespace log, so other nodes see them at once.
//!
//! Many mounts of a volume may be live at once; what one of them may do only while it is the
//! volume's only live mount (purge the files unlinked while open, at start) asks [`live_in`].

pub mod lease;

use crate::error::{FsError, Result};
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{Durability, KvRead, KvStore, MetaError, prefix_end};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const SESSION_PREFIX: &[u8] = b"H";

/// The default of `spoolfs mount --session-timeout`; what offline tools assume.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses (EBUSY) an offline tool's work on a shared store while a mount of the volume is
/// live: the mount's memtable may hold changes the store does not have yet. `advice` ends the
/// message.
pub fn refuse_if_mounted(meta: &dyn KvStore, advice: &str) -> Result<()> {
    if !meta.is_shared() {
        return Ok(());
    }
    if let Some(s) = live(meta)?.first() {
        return Err(FsError::new(
            libc::EBUSY,
            format!("the volume is mounted ({}); {advice}", describe(s)),
        ));
    }
    Ok(())
}

pub fn session_key(id: &str) -> Vec<u8> {
    let mut k = SESSION_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// One mount of the volume, as other nodes see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionRec {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub mount_point: String,
    /// Where this mount stages data (on its host).
    pub cache_dir: String,
    /// Where this mount serves its staged slices to the volume's other mounts.
    #[serde(default)]
    pub peer_addr: Option<String>,
    /// The node id its `T` records carry as their owner (stable across remounts with the same
    /// cache directory).
    #[serde(default)]
    pub node_id: Option<u64>,
    /// Seconds since the epoch, by the mount's clock.
    pub started_s: u64,
    pub heartbeat_s: u64,
    /// The session is dead once its heartbeat is this old (the mount's --session-timeout).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// What the mount had staged (not yet in the object store) at its last heartbeat: the data
    /// only its cache directory holds.
    #[serde(default)]
    pub staged: StagedReport,
}

/// A mount's staged data, as its heartbeat reports it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StagedReport {
    pub bytes: u64,
    pub slices: u64,
    /// Age of the oldest staged byte, in seconds.
    pub oldest_age_s: f64,
}

/// Called at each heartbeat for what the mount has staged (`None`: unknown, keep the last).
pub type StagedReporter = Box<dyn Fn() -> Option<StagedReport> + Send>;

fn default_timeout_s() -> u64 {
    DEFAULT_TIMEOUT.as_secs()
}

impl SessionRec {
    /// Seconds since the last heartbeat, by this host's clock (0 for one in the future).
    pub fn age_s(&self, now_s: u64) -> u64 {
        now_s.saturating_sub(self.heartbeat_s)
    }

    pub fn is_live(&self, now_s: u64) -> bool {
        self.age_s(now_s) < self.timeout_s.max(1)
    }
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This host's name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates (the last byte stays 0).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Every session record of the volume in `meta`.
pub fn list(meta: &dyn KvStore) -> Result<Vec<SessionRec>> {
    let mut rows = Vec::new();
    meta.view(&mut |r| {
        rows = r.scan(SESSION_PREFIX, &prefix_end(SESSION_PREFIX), usize::MAX)?;
        Ok(())
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// The live sessions of `meta`.
pub fn live(meta: &dyn KvStore) -> Result<Vec<SessionRec>> {
    let now = now_s();
    Ok(list(meta)?.into_iter().filter(|s| s.is_live(now)).collect())
}

/// The live sessions, read inside a transaction.
pub fn live_in(r: &dyn KvRead) -> std::result::Result<Vec<SessionRec>, MetaError> {
    let now = now_s();
    Ok(
        r.scan(SESSION_PREFIX, &prefix_end(SESSION_PREFIX), usize::MAX)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<SessionRec>(&v).ok())
            .filter(|s| s.is_live(now))
            .collect(),
    )
}

/// One line naming a session, for messages.
pub fn describe(s: &SessionRec) -> String {
    format!(
        "session {} on host {} (pid {}, mounted at {})",
        s.id, s.host, s.pid, s.mount_point
    )
}

/// A registered session; its heartbeat runs until [`Session::end`] (or the drop).
pub struct Session {
    pub rec: SessionRec,
    /// What the heartbeat writes (the record, with what [`Session::advertise`] added).
    beat: Arc<parking_lot::Mutex<SessionRec>>,
    meta: Arc<dyn KvStore>,
    reporter: Arc<parking_lot::Mutex<Option<StagedReporter>>>,
    stop: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    ended: AtomicBool,
}

impl Session {
    /// Registers a session for a mount at `mount_point` staging in `cache_dir`, renewed every
    /// third of `timeout`. Dead sessions are removed, except those that left staged data (their
    /// data is only in their cache directory): they stay listed until a mount with that cache
    /// directory on that host starts, which replays and uploads it.
    pub fn register(
        meta: Arc<dyn KvStore>,
        mount_point: &str,
        cache_dir: &str,
        timeout: Duration,
    ) -> Result<Session> {
        let now = now_s();
        let rec = SessionRec {
            id: uuid::Uuid::new_v4().to_string(),
            host: host_name(),
            pid: std::process::id(),
            mount_point: mount_point.to_string(),
            cache_dir: cache_dir.to_string(),
            peer_addr: None,
            node_id: None,
            started_s: now,
            heartbeat_s: now,
            timeout_s: timeout.as_secs().max(1),
            staged: StagedReport::default(),
        };
        let value = serde_json::to_vec(&rec).expect("session serialises");
        let timeout_s = rec.timeout_s;
        meta.update(Durability::Durable, &mut |t| {
            let rows = t.scan(SESSION_PREFIX, &prefix_end(SESSION_PREFIX), usize::MAX)?;
            for (k, v) in rows {
                match serde_json::from_slice::<SessionRec>(&v) {
                    Ok(other) if other.is_live(now) => {}
                    Ok(other)
                        if other.staged.bytes > 0
                            && !(other.host == rec.host && other.cache_dir == rec.cache_dir) => {}
                    Ok(other) => {
                        tracing::warn!(
                            "{} is dead (no heartbeat for {} s): removed",
                            describe(&other),
                            other.age_s(now)
                        );
                        t.delete(&k)?;
                    }
                    Err(_) => t.delete(&k)?,
                }
            }
            t.put(&session_key(&rec.id), &value)
        })?;
        let stop = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let reporter: Arc<parking_lot::Mutex<Option<StagedReporter>>> = Arc::default();
        let beat = Arc::new(parking_lot::Mutex::new(rec.clone()));
        let thread = {
            let (meta, stop, key, beat, reporter, id) = (
                meta.clone(),
                stop.clone(),
                session_key(&rec.id),
                beat.clone(),
                reporter.clone(),
                rec.id.clone(),
            );
            // A third of the timeout, to the millisecond: a 3 s timeout keeps a live session's
            // recorded heartbeat (whole seconds) at most 2 s old.
            let every = Duration::from_millis((timeout_s * 1000 / 3).max(200));
            std::thread::Builder::new()
                .name("spoolfs-session".into())
                .spawn(move || {
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, every);
                            }
                            if *stopped {
                                return;
                            }
                        }
                        let report = reporter.lock().as_ref().and_then(|f| f());
                        let value = {
                            let mut rec = beat.lock();
                            rec.heartbeat_s = now_s();
                            if let Some(report) = report {
                                rec.staged = report;
                            }
                            serde_json::to_vec(&*rec).expect("session serialises")
                        };
                        // The leases this session holds run on with it.
                        let renewed = meta.update(Durability::Durable, &mut |t| {
                            t.put(&key, &value)?;
                            lease::renew_all(t, &id, timeout_s, now_s())
                        });
                        if let Err(e) = renewed {
                            crate::warn_limited!("session heartbeat failed: {e}");
                        }
                    }
                })
                .map_err(|e| FsError::new(libc::EIO, format!("cannot start heartbeat: {e}")))?
        };
        Ok(Session {
            rec,
            beat,
            meta,
            reporter,
            stop,
            thread: Some(thread),
            ended: AtomicBool::new(false),
        })
    }

    /// Records where this mount serves its staged slices, and the node id its `T` records
    /// carry, so that other mounts can read them from it.
    pub fn advertise(&mut self, node_id: u64, peer_addr: std::net::SocketAddr) -> Result<()> {
        self.rec.node_id = Some(node_id);
        self.rec.peer_addr = Some(peer_addr.to_string());
        let value = {
            let mut beat = self.beat.lock();
            beat.node_id = self.rec.node_id;
            beat.peer_addr = self.rec.peer_addr.clone();
            beat.heartbeat_s = now_s();
            serde_json::to_vec(&*beat).expect("session serialises")
        };
        let key = session_key(&self.rec.id);
        self.meta
            .update(Durability::Durable, &mut |t| t.put(&key, &value))?;
        Ok(())
    }

    /// From now on each heartbeat records what `report` says the mount has staged.
    pub fn report_with(&self, report: StagedReporter) {
        *self.reporter.lock() = Some(report);
    }

    /// Stops the heartbeat. With nothing left staged (`left`), removes the session record;
    /// otherwise keeps it, marked dead, with what is left, so that other mounts' `status`
    /// shows where that data is.
    pub fn end_with(&mut self, left: StagedReport) -> Result<()> {
        if self.ended.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let key = session_key(&self.rec.id);
        let id = self.rec.id.clone();
        if left.bytes == 0 {
            self.meta.update(Durability::Durable, &mut |t| {
                t.delete(&key)?;
                lease::release_all(t, &id)
            })?;
        } else {
            let mut rec = self.rec.clone();
            rec.staged = left;
            rec.heartbeat_s = 0;
            let value = serde_json::to_vec(&rec).expect("session serialises");
            self.meta.update(Durability::Durable, &mut |t| {
                t.put(&key, &value)?;
                lease::release_all(t, &id)
            })?;
        }
        Ok(())
    }

    /// [`Session::end_with`] nothing left staged (a clean unmount).
    pub fn end(&mut self) -> Result<()> {
        self.end_with(StagedReport::default())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!("cannot remove session {}: {e}", self.rec.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoolfs_metadata::MemStore;

    #[test]
    fn live_sessions_coexist_and_a_dead_one_is_removed() {
        let meta: Arc<dyn KvStore> = Arc::new(MemStore::default());
        let mut a = Session::register(meta.clone(), "/a", "/c", Duration::from_secs(30)).unwrap();
        assert_eq!(list(meta.as_ref()).unwrap(), vec![a.rec.clone()]);
        let c = Session::register(meta.clone(), "/c", "/c2", Duration::from_secs(30)).unwrap();
        assert_eq!(live(meta.as_ref()).unwrap().len(), 2);
        drop(c);
        // A session whose heartbeat is older than its timeout is dead: the next mount removes
        // it, and it no longer counts as live.
        let mut old = a.rec.clone();
        old.id = "dead".into();
        old.heartbeat_s -= 31;
        a.end().unwrap();
        meta.update(Durability::Durable, &mut |t| {
            t.put(&session_key("dead"), &serde_json::to_vec(&old).unwrap())
        })
        .unwrap();
        assert!(live(meta.as_ref()).unwrap().is_empty());
        let mut b = Session::register(meta.clone(), "/b", "/c", Duration::from_secs(30)).unwrap();
        let ids: Vec<String> = list(meta.as_ref())
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec![b.rec.id.clone()]);
        // A mount that ends with data staged stays listed, dead, with what it holds; a new
        // mount elsewhere keeps it; one with its cache directory on its host removes it.
        let left = StagedReport {
            bytes: 4096,
            slices: 1,
            oldest_age_s: 2.0,
        };
        b.end_with(left).unwrap();
        let after = list(meta.as_ref()).unwrap();
        assert_eq!(after.len(), 1);
        assert!(!after[0].is_live(now_s()));
        assert_eq!(after[0].staged, left);
        drop(Session::register(meta.clone(), "/e", "/elsewhere", Duration::from_secs(30)).unwrap());
        assert_eq!(
            list(meta.as_ref()).unwrap().len(),
            1,
            "kept: it holds staged data"
        );
        drop(Session::register(meta.clone(), "/b", "/c", Duration::from_secs(30)).unwrap());
        assert!(list(meta.as_ref()).unwrap().is_empty());
    }
}
