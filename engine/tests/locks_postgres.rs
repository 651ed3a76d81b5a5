//! The lock table on PostgreSQL: two sessions of one volume (as two nodes) exclude each other,
//! contend on one inode's record without losing a lock or surfacing a conflict, and a session
//! that dies without releasing (its heartbeat stops) loses its locks once it times out.

use spoolfs_engine::locks::{LockKind, LockRequest, LockTable, SharedLocks};
use spoolfs_engine::session::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn req(owner: u64, kind: Option<LockKind>, start: u64, end: u64) -> LockRequest {
    LockRequest {
        owner,
        fh: owner,
        pid: 1000 + owner as u32,
        kind,
        start,
        end,
    }
}

#[test]
fn two_sessions_exclude_each_other_and_a_dead_ones_locks_go() {
    let pg = spoolfs_testkit::require_postgres!();
    let url = pg.url(&pg.new_database());
    let meta = spoolfs_metadata::format_store(&url).unwrap();
    let session_a = Session::register(meta.clone(), "/a", "/ca", Duration::from_secs(30)).unwrap();
    let session_b = Session::register(meta.clone(), "/b", "/cb", Duration::from_secs(30)).unwrap();
    let table = |s: &Session| {
        Arc::new(
            LockTable::shared(
                SharedLocks {
                    store: meta.clone(),
                    session_id: s.rec.id.clone(),
                },
                Duration::from_millis(50),
            )
            .unwrap(),
        )
    };
    let (a, b) = (table(&session_a), table(&session_b));

    // Byte ranges: A's write lock keeps B out of the overlap only.
    a.try_set(9, &req(1, Some(LockKind::Write), 0, 99))
        .unwrap()
        .unwrap();
    let holder = b
        .try_set(9, &req(1, Some(LockKind::Read), 50, 50))
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (holder.session.as_str(), holder.start, holder.end),
        (session_a.rec.id.as_str(), 0, 99)
    );
    b.try_set(9, &req(1, Some(LockKind::Write), 100, 199))
        .unwrap()
        .unwrap();
    // A waiter on B gets the range once A unlocks part of it.
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || b.set_wait(9, &req(2, Some(LockKind::Read), 10, 19), &|| false))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished());
    a.try_set(9, &req(1, None, 0, 49)).unwrap().unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(a.locks_of(9).unwrap().len(), 3);

    // Contention on one record: both sessions take and drop disjoint ranges at once; every
    // serialization conflict is retried, none is an error, none is lost.
    std::thread::scope(|s| {
        for (t, base) in [(&a, 1000u64), (&b, 2000u64)] {
            s.spawn(move || {
                for i in 0..20 {
                    let r = req(
                        10 + i,
                        Some(LockKind::Write),
                        base + i * 10,
                        base + i * 10 + 9,
                    );
                    t.try_set(9, &r).unwrap().unwrap();
                }
            });
        }
    });
    assert_eq!(a.locks_of(9).unwrap().len(), 3 + 40);

    // While A's session is live its locks stay in B's way.
    assert!(
        b.try_set(9, &req(3, Some(LockKind::Write), 60, 60))
            .unwrap()
            .is_err()
    );
    // A's mount dies: its heartbeat stops and its record ages past its timeout (written here
    // as it would be found: the heartbeat thread stopped, the record left behind). B's request
    // then drops all of A's locks and gets the range.
    let mut session_a = session_a;
    let mut dead = session_a.rec.clone();
    session_a.end().unwrap();
    dead.heartbeat_s -= dead.timeout_s + 1;
    meta.update(spoolfs_metadata::Durability::Durable, &mut |t| {
        t.put(
            &spoolfs_engine::session::session_key(&dead.id),
            &serde_json::to_vec(&dead).unwrap(),
        )
    })
    .unwrap();
    let started = Instant::now();
    b.set_wait(9, &req(3, Some(LockKind::Write), 60, 60), &|| false)
        .unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    let left = b.locks_of(9).unwrap();
    assert!(
        left.iter().all(|l| l.session == session_b.rec.id),
        "a dead session's locks are left: {left:?}"
    );
    assert_eq!(left.len(), 1 + 1 + 20 + 1);
    drop(session_b);
}
