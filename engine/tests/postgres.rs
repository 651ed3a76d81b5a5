//! The engine on a PostgreSQL metadata store (a private server, `spoolfs_testkit::pg`), as a
//! mount of a shared volume runs it: every metadata change commits in the database before the
//! call returns, with a session (so opens record holds). Counts the database round trips of a
//! create, a close and an open.

use spoolfs_engine::writeback::{StagingSettings, open_staging};
use spoolfs_engine::{Caller, Engine, EngineConfig, FormatOptions, ROOT_INO, StorageConfig};
use std::sync::Arc;
use std::time::Duration;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn round_trips_of_a_create_and_a_close_on_postgres() {
    let pg = spoolfs_testkit::require_postgres!();
    let url = pg.url(&pg.new_database());
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        url: format!("file://{}", dir.path().join("objects").display()),
        ..Default::default()
    };
    std::fs::create_dir_all(dir.path().join("objects")).unwrap();
    let meta = spoolfs_metadata::format_store(&url).unwrap();
    let record = spoolfs_engine::format_volume(
        &meta,
        &FormatOptions {
            name: "pg".into(),
            storage: storage.clone(),
            block_size: 64 << 10,
            force: false,
        },
    )
    .unwrap();
    let settings = StagingSettings {
        // Nothing uploads while the round trips are counted (uploads commit too).
        upload_delay: Duration::from_secs(3600),
        ..StagingSettings::for_tests(dir.path().join("cache"))
    };
    let (engine_meta, staging) = open_staging(meta.clone(), &record, &settings).unwrap();
    // Shared mode: the engine commits straight to the database (no memtable in front).
    assert_eq!(engine_meta.describe(), meta.describe());
    assert!(engine_meta.is_shared());
    let objects = Arc::new(spoolfs_objects::ObjectStorage::open(&storage).unwrap());
    let session = spoolfs_engine::session::Session::register(
        meta.clone(),
        "/mnt",
        &dir.path().join("cache").display().to_string(),
        Duration::from_secs(30),
    )
    .unwrap();
    let engine = Engine::start(
        engine_meta,
        objects,
        record,
        EngineConfig {
            staging: Some(staging),
            shared_locks: Some(spoolfs_engine::locks::SharedLocks {
                store: meta.clone(),
                session_id: session.rec.id.clone(),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let caller = Caller::ROOT;
    let (mut creates, mut closes, mut opens) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..40u64 {
        let data = spoolfs_testkit::random_bytes(i, 1000 + i as usize);
        let rt = || meta.stats().round_trips;
        let before = rt();
        let (attr, fh) = engine
            .create(
                &caller,
                ROOT_INO,
                format!("f{i}").as_bytes(),
                0o644,
                libc::O_WRONLY,
            )
            .unwrap();
        creates.push(rt() - before);
        engine.write(&caller, attr.ino, fh, 0, &data).unwrap();
        let before = rt();
        engine.flush(attr.ino, fh).unwrap();
        engine.release(attr.ino, fh).unwrap();
        closes.push(rt() - before);
        // Read back through a fresh lookup: what another node would see.
        let got = engine.lookup(ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        assert_eq!(got.size, data.len() as u64);
    }
    // Opens of files whose holds were dropped (the holds go a moment after the close).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(engine.held_files(), 0);
    for i in 0..40u64 {
        let ino = engine
            .lookup(ROOT_INO, format!("f{i}").as_bytes())
            .unwrap()
            .ino;
        let before = meta.stats().round_trips;
        let fh = engine.open(&caller, ino, libc::O_RDONLY).unwrap();
        opens.push(meta.stats().round_trips - before);
        engine.release(ino, fh).unwrap();
    }
    let stats = meta.stats();
    eprintln!(
        "round trips per create: median {} (all {creates:?}); per close: median {} (all \
         {closes:?}); per open: median {} (all {opens:?}); retries {}",
        median(creates.clone()),
        median(closes.clone()),
        median(opens.clone()),
        stats.retries
    );
    // The counters statfs reads (kept per mount on a shared store) add up: root + 40 files.
    let st = engine.statfs().unwrap();
    assert_eq!(st.files - st.ffree, 41, "{st:?}");
    assert!(
        median(creates) <= 2,
        "a create costs more than two round trips"
    );
    assert!(
        median(closes) <= 2,
        "a close costs more than two round trips"
    );
    assert!(
        median(opens) <= 2,
        "an open (inode read and hold) costs more than two round trips"
    );
    engine.shutdown().unwrap();
}
