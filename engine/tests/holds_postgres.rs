//! Open-file holds on PostgreSQL: two engines with sessions of one volume (as two nodes). A
//! file unlinked on A while B has it open stays readable on B, as an orphan; B's close deletes
//! it and its objects; a hold whose session dies is dropped by the other mount's sweep, which
//! then deletes the orphan. Also counts the round trips of an open and a close.

mod common;

use spoolfs_engine::locks::SharedLocks;
use spoolfs_engine::session::Session;
use spoolfs_engine::writeback::{StagingSettings, open_staging};
use spoolfs_engine::{Caller, Engine, EngineConfig, ROOT_INO, StorageConfig};
use spoolfs_metadata::{KvStore, prefix_end};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct Node {
    engine: Arc<Engine>,
    session: Session,
}

fn start_node(
    meta: &Arc<dyn KvStore>,
    record: &spoolfs_engine::volume::VolumeRecord,
    storage: &StorageConfig,
    cache: &Path,
    timeout: Duration,
) -> Node {
    let session =
        Session::register(meta.clone(), "/mnt", &cache.display().to_string(), timeout).unwrap();
    let settings = StagingSettings::for_tests(cache);
    let (engine_meta, staging) = open_staging(meta.clone(), record, &settings).unwrap();
    let objects = Arc::new(spoolfs_objects::ObjectStorage::open(storage).unwrap());
    let engine = Engine::start(
        engine_meta,
        objects,
        record.clone(),
        EngineConfig {
            staging: Some(staging),
            shared_locks: Some(SharedLocks {
                store: meta.clone(),
                session_id: session.rec.id.clone(),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    Node { engine, session }
}

fn inode_exists(meta: &Arc<dyn KvStore>, ino: u64) -> bool {
    let mut found = false;
    meta.view(&mut |r| {
        found = r.get(&spoolfs_engine::schema::inode_key(ino))?.is_some();
        Ok(())
    })
    .unwrap();
    found
}

fn hold_count(meta: &Arc<dyn KvStore>, ino: u64) -> usize {
    let prefix = spoolfs_engine::holds::hold_prefix(ino);
    let mut n = 0;
    meta.view(&mut |r| {
        n = r.scan(&prefix, &prefix_end(&prefix), usize::MAX)?.len();
        Ok(())
    })
    .unwrap();
    n
}

/// Objects in the object store (files under its directory).
fn block_objects(objects: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), n);
            } else {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(objects, &mut n);
    n
}

fn wait_until(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    assert!(common::wait_until(limit, f), "timed out waiting for {what}");
}

#[test]
fn a_file_unlinked_on_one_node_stays_readable_where_it_is_open() {
    let pg = spoolfs_testkit::require_postgres!();
    let url = pg.url(&pg.new_database());
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let storage = StorageConfig {
        url: format!("file://{}", objects.display()),
        ..Default::default()
    };
    let meta = spoolfs_metadata::format_store(&url).unwrap();
    let record = common::format_test_volume(&meta, "holds", storage.clone());
    let timeout = Duration::from_secs(2);
    let a = start_node(&meta, &record, &storage, &dir.path().join("ca"), timeout);
    let b = start_node(&meta, &record, &storage, &dir.path().join("cb"), timeout);
    let caller = Caller::ROOT;
    let rt = || meta.stats().round_trips;
    let baseline = block_objects(&objects);

    // A writes two files and uploads them.
    let data: Vec<Vec<u8>> = (0..2)
        .map(|i| spoolfs_testkit::random_bytes(i, 200_000 + i as usize))
        .collect();
    let inos: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, d)| common::create_file(&a.engine, &format!("f{i}"), d))
        .collect();
    a.engine.sync_to_object_store(None, &mut |_, _| {}).unwrap();
    // A's holds go off the close path, a moment later.
    wait_until("A's holds to go", Duration::from_secs(5), || {
        inos.iter().all(|&i| hold_count(&meta, i) == 0)
    });
    let objects_before = block_objects(&objects);
    assert!(objects_before >= baseline + 2, "{objects_before} objects");

    // B opens both: one transaction each (the inode read and the hold), two round trips.
    let mut b_fhs = Vec::new();
    let mut opens = Vec::new();
    for &ino in &inos {
        let before = rt();
        b_fhs.push(b.engine.open(&caller, ino, libc::O_RDONLY).unwrap());
        opens.push(rt() - before);
        assert_eq!(hold_count(&meta, ino), 1);
    }
    // A second open of a file held already writes nothing: one round trip.
    let before = rt();
    let again = b.engine.open(&caller, inos[0], libc::O_RDONLY).unwrap();
    let reopen = rt() - before;
    let before = rt();
    b.engine.release(inos[0], again).unwrap();
    let close = rt() - before;
    eprintln!("round trips: open {opens:?}, open of a held file {reopen}, close {close}");
    assert!(opens.iter().all(|&n| n <= 2), "an open costs {opens:?}");
    assert_eq!(reopen, 1);
    assert_eq!(
        close, 0,
        "a close of a read-only handle waits for no round trip"
    );

    // A unlinks both: they stay, as orphans, while B holds them.
    for i in 0..2 {
        a.engine
            .unlink(&caller, ROOT_INO, format!("f{i}").as_bytes())
            .unwrap();
    }
    a.engine.collect_garbage(usize::MAX).unwrap();
    for (&ino, (fh, d)) in inos.iter().zip(b_fhs.iter().zip(&data)) {
        assert!(inode_exists(&meta, ino));
        assert_eq!(b.engine.getattr(ino).unwrap().nlink, 0);
        let got = b.engine.read(ino, *fh, 0, d.len() as u32 + 10).unwrap();
        assert!(got == *d, "B reads the unlinked file byte-exact");
    }
    assert_eq!(block_objects(&objects), objects_before);

    // B closes the first: it goes, and its objects with it.
    b.engine.release(inos[0], b_fhs[0]).unwrap();
    wait_until(
        "the orphan to go at its last close",
        Duration::from_secs(5),
        || !inode_exists(&meta, inos[0]),
    );
    a.engine.collect_garbage(usize::MAX).unwrap();
    let after_first = block_objects(&objects);
    assert!(
        after_first < objects_before,
        "the closed orphan's objects are deleted"
    );
    assert!(inode_exists(&meta, inos[1]));

    // B dies holding the second (its session stops without dropping its holds): once its
    // session is dead, A's sweep drops the hold and deletes the orphan.
    let Node {
        engine,
        mut session,
    } = b;
    session
        .end_with(spoolfs_engine::session::StagedReport {
            bytes: 1,
            ..Default::default()
        })
        .unwrap();
    drop(engine);
    assert_eq!(
        hold_count(&meta, inos[1]),
        1,
        "the dead session's hold is still there"
    );
    wait_until(
        "the dead session's orphan to go",
        Duration::from_secs(10),
        || !inode_exists(&meta, inos[1]),
    );
    assert_eq!(hold_count(&meta, inos[1]), 0);
    a.engine.collect_garbage(usize::MAX).unwrap();
    assert_eq!(
        block_objects(&objects),
        baseline,
        "every object of both files is deleted"
    );
    a.engine.shutdown().unwrap();
    drop(a.session);
}
