//! An idle mount gives back the memory of its last burst of writes: the run and record
//! buffers kept for the next large write are freed, and the data written stays readable.

use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{Volume as Fixture, wait_until};
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;

/// A writeback engine whose runs are full size (16 MiB), the background thread waking every
/// 50 ms, memory released after `release_after` of quiet (`None`: never).
fn engine(f: &Fixture, release_after: Option<Duration>) -> Arc<Engine> {
    let settings = StagingSettings {
        segment_size: 64 << 20,
        max_staging_bytes: 1 << 30,
        ..StagingSettings::for_tests(f.dir.path().join("cache"))
    };
    f.start_engine(
        Some(&settings),
        EngineConfig {
            meta_flush_interval: Duration::from_millis(50),
            release_memory_after: release_after,
            compaction: None,
            ..Default::default()
        },
    )
}

/// Writes `data` into a new file `name` in 1 MiB writes (a checkpoint's) and closes it.
fn write_large(e: &Engine, name: &str, data: &[u8]) -> Ino {
    let (a, fh) = e
        .create(&ME, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
        .unwrap();
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        e.write(&ME, a.ino, fh, (i as u64) << 20, piece).unwrap();
    }
    e.flush(a.ino, fh).unwrap();
    e.release(a.ino, fh).unwrap();
    a.ino
}

#[test]
fn released_buffers_are_made_again_by_the_next_large_write() {
    let f = Fixture::new();
    let e = engine(&f, None);
    let first = random_bytes(1, 48 << 20);
    let a = write_large(&e, "a", &first);
    // The engine and builder threads give their buffers back just after the appends.
    assert!(
        wait_until(Duration::from_secs(5), || e.kept_buffer_bytes() > 0),
        "a large write keeps buffers for the next one"
    );
    // Never released by the background thread when the setting is off.
    std::thread::sleep(Duration::from_millis(500));
    let kept = e.kept_buffer_bytes();
    assert!(kept > 0, "kept buffers freed although release is off");

    let freed = e.release_idle_memory();
    assert!(freed >= kept, "freed {freed} bytes of {kept} kept");
    assert_eq!(e.kept_buffer_bytes(), 0);
    assert_eq!(e.status().kept_buffer_bytes, 0);

    let second = random_bytes(2, 40 << 20);
    let b = write_large(&e, "b", &second);
    assert!(
        wait_until(Duration::from_secs(5), || e.kept_buffer_bytes() > 0),
        "the next large write keeps buffers again"
    );
    assert!(common::read_all(&e, a) == first, "file a changed");
    assert!(common::read_all(&e, b) == second, "file b changed");
    e.shutdown().unwrap();
}

#[test]
fn an_idle_mount_frees_the_buffers_of_its_last_large_write() {
    let f = Fixture::new();
    let e = engine(&f, Some(Duration::from_secs(1)));
    let data = random_bytes(3, 48 << 20);
    let a = write_large(&e, "a", &data);
    // Well within the second of quiet that frees them.
    assert!(
        wait_until(Duration::from_millis(500), || e.kept_buffer_bytes() > 0),
        "no buffers kept to free"
    );
    assert!(
        wait_until(Duration::from_secs(30), || e.kept_buffer_bytes() == 0),
        "{} bytes of buffers still kept",
        e.kept_buffer_bytes()
    );
    assert!(common::read_all(&e, a) == data, "file a changed");
    // Its uploads are not disturbed either.
    assert!(
        wait_until(Duration::from_secs(30), || e.status().staged_bytes == 0),
        "{} bytes still staged",
        e.status().staged_bytes
    );
    assert!(
        common::read_all(&e, a) == data,
        "file a changed after its upload"
    );
    e.shutdown().unwrap();
}
