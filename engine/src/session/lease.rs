//! Leases: on a shared volume, work that must run on one mount at a time (dead-slice deletes,
//! compaction, the sweep of dead sessions' holds and orphans) runs on the mount holding the
//! volume's background lease, an `E` record naming the holder's session and an expiry.
//!
//! A mount takes the lease when nobody holds it, when it has expired, or when its holder's
//! session is no longer live; the holder's session heartbeat renews it (see
//! [`crate::session::Session`]), and a clean unmount gives it up. The lease is a courtesy to
//! the object store, not what keeps the metadata right: every step of that work checks and
//! commits in its own serializable transaction, so a holder that overruns its expiry while
//! another mount takes over does no harm.

use crate::session::{self, SessionRec};
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{KvRead, KvTxn, MetaError};

/// Key prefix of the leases: `E` name.
pub const LEASE_PREFIX: &[u8] = b"E";
/// The lease of the volume-wide background work.
pub const BACKGROUND: &str = "background";

pub fn lease_key(name: &str) -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// A lease as stored (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRec {
    /// The holder's session id (its `H` record).
    pub holder: String,
    /// Seconds since the epoch (the holder's clock) when the holder took it.
    pub acquired_s: u64,
    /// Seconds since the epoch after which any mount may take it.
    pub expires_s: u64,
}

impl LeaseRec {
    pub fn expired(&self, now_s: u64) -> bool {
        now_s >= self.expires_s
    }
}

/// The lease `name`, if anyone took it.
pub fn read(r: &dyn KvRead, name: &str) -> Result<Option<LeaseRec>, MetaError> {
    match r.get(&lease_key(name))? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| MetaError::Corrupt(format!("cannot decode lease {name:?}: {e}"))),
        None => Ok(None),
    }
}

fn write(t: &mut dyn KvTxn, name: &str, rec: &LeaseRec) -> Result<(), MetaError> {
    t.put(
        &lease_key(name),
        &serde_json::to_vec(rec).expect("lease serialises"),
    )
}

/// Who holds a lease, as a mount deciding whether to take it sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Holder {
    /// This session holds it, and it has not expired.
    Me,
    /// Another live session holds it and it has not expired.
    Other(LeaseRec, Option<SessionRec>),
    /// Nobody does, or the holder's lease expired, or its session is dead: it may be taken.
    Free(Option<LeaseRec>),
}

/// Who holds lease `name`, as session `me` sees it at `now_s`.
pub fn holder(r: &dyn KvRead, name: &str, me: &str, now_s: u64) -> Result<Holder, MetaError> {
    let key = lease_key(name);
    let sessions = session::SESSION_PREFIX;
    r.prefetch(
        &[&key],
        &[(sessions, &spoolfs_metadata::prefix_end(sessions))],
    )?;
    let Some(rec) = read(r, name)? else {
        return Ok(Holder::Free(None));
    };
    if rec.expired(now_s) {
        return Ok(Holder::Free(Some(rec)));
    }
    if rec.holder == me {
        return Ok(Holder::Me);
    }
    let owner = match r.get(&session::session_key(&rec.holder))? {
        Some(v) => serde_json::from_slice::<SessionRec>(&v).ok(),
        None => None,
    };
    match owner {
        Some(s) if s.is_live(now_s) => Ok(Holder::Other(rec, Some(s))),
        _ => Ok(Holder::Free(Some(rec))),
    }
}

/// Takes lease `name` for session `me` for `ttl_s` seconds if it is free (or already `me`'s);
/// returns who holds it afterwards. A lease taken over from a dead or expired holder is logged.
pub fn take(
    t: &mut dyn KvTxn,
    name: &str,
    me: &str,
    ttl_s: u64,
    now_s: u64,
) -> Result<Holder, MetaError> {
    match holder(t, name, me, now_s)? {
        Holder::Other(rec, s) => Ok(Holder::Other(rec, s)),
        Holder::Me => Ok(Holder::Me),
        Holder::Free(previous) => {
            if let Some(p) = previous.as_ref().filter(|p| p.holder != me) {
                tracing::info!(
                    "taking the {name} lease over from session {} (expired, or its session \
                     is dead)",
                    p.holder
                );
            }
            write(
                t,
                name,
                &LeaseRec {
                    holder: me.to_string(),
                    acquired_s: now_s,
                    expires_s: now_s + ttl_s.max(1),
                },
            )?;
            Ok(Holder::Me)
        }
    }
}

/// The heartbeat's renewal: every lease `me` holds (even one just expired that nobody took)
/// runs for another `ttl_s` seconds.
pub fn renew_all(t: &mut dyn KvTxn, me: &str, ttl_s: u64, now_s: u64) -> Result<(), MetaError> {
    for name in [BACKGROUND] {
        if let Some(mut rec) = read(t, name)?
            && rec.holder == me
        {
            rec.expires_s = now_s + ttl_s.max(1);
            write(t, name, &rec)?;
        }
    }
    Ok(())
}

/// Gives up every lease `me` holds (a clean unmount), so that another mount takes them at once.
pub fn release_all(t: &mut dyn KvTxn, me: &str) -> Result<(), MetaError> {
    for name in [BACKGROUND] {
        if read(t, name)?.is_some_and(|rec| rec.holder == me) {
            t.delete(&lease_key(name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;
    use spoolfs_metadata::{Durability, KvStore, MemStore};
    use std::sync::Arc;
    use std::time::Duration;

    fn take_now(meta: &Arc<dyn KvStore>, me: &str, ttl: u64, now: u64) -> Holder {
        let mut out = None;
        meta.update(Durability::Durable, &mut |t| {
            out = Some(take(t, BACKGROUND, me, ttl, now)?);
            Ok(())
        })
        .unwrap();
        out.unwrap()
    }

    fn renew_all_now(meta: &Arc<dyn KvStore>, me: &str, ttl: u64, now: u64) {
        meta.update(Durability::Durable, &mut |t| renew_all(t, me, ttl, now))
            .unwrap();
    }

    #[test]
    fn one_holder_until_it_expires_dies_or_lets_go() {
        let meta: Arc<dyn KvStore> = Arc::new(MemStore::default());
        // Sessions that stay live through the test's clock (which runs ahead of the real one).
        let hour = Duration::from_secs(3600);
        let a = Session::register(meta.clone(), "/a", "/ca", hour).unwrap();
        let b = Session::register(meta.clone(), "/b", "/cb", hour).unwrap();
        let (a_id, b_id) = (a.rec.id.clone(), b.rec.id.clone());
        let now = session::now_s();
        assert_eq!(take_now(&meta, &a_id, 30, now), Holder::Me);
        assert!(
            matches!(take_now(&meta, &b_id, 30, now), Holder::Other(r, Some(_)) if r.holder == a_id)
        );
        // Renewal extends only the holder's.
        renew_all_now(&meta, &b_id, 30, now + 20);
        assert!(matches!(
            take_now(&meta, &b_id, 30, now + 29),
            Holder::Other(..)
        ));
        renew_all_now(&meta, &a_id, 30, now + 20);
        assert!(matches!(
            take_now(&meta, &b_id, 30, now + 49),
            Holder::Other(..)
        ));
        // Expired: the other takes it over.
        assert_eq!(take_now(&meta, &b_id, 30, now + 50), Holder::Me);
        assert!(matches!(
            take_now(&meta, &a_id, 30, now + 51),
            Holder::Other(..)
        ));
        // The holder's session dies (its record goes): taken over before the expiry.
        drop(b);
        assert_eq!(take_now(&meta, &a_id, 30, now + 52), Holder::Me);
        // Given up at unmount: free at once.
        meta.update(Durability::Durable, &mut |t| release_all(t, &a_id))
            .unwrap();
        let mut left = None;
        meta.view(&mut |r| {
            left = Some(read(r, BACKGROUND)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(left, Some(None));
        drop(a);
    }
}
