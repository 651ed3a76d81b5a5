//! End-to-end checks of the engine without FUSE: a file store, a redb store, a remount.

use spoolfs_engine::*;
use std::sync::Arc;

mod common;
use common::{Volume as Fixture, count_files, create_file, files_under, read_all};
use spoolfs_testkit::random_bytes;

impl Fixture {
    fn engine(&self) -> Arc<Engine> {
        self.start_engine(None, EngineConfig::default())
    }
}

const ME: Caller = Caller::ROOT;

#[test]
fn write_read_truncate_remount() {
    let f = Fixture::new();
    let data = random_bytes(1, 300_000);
    let ino;
    {
        let e = f.engine();
        let dir = e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
        let (attr, fh) = e.create(&ME, dir.ino, b"f", 0o644, libc::O_RDWR).unwrap();
        ino = attr.ino;
        e.write(&ME, ino, fh, 0, &data).unwrap();
        // Overwrite in the middle, then read through pending and stored data.
        e.write(&ME, ino, fh, 1000, b"hello").unwrap();
        assert_eq!(
            &e.read(ino, fh, 998, 9).unwrap(),
            &[
                data[998], data[999], b'h', b'e', b'l', b'l', b'o', data[1005], data[1006]
            ]
        );
        e.flush(ino, fh).unwrap();
        assert_eq!(e.getattr(ino).unwrap().size, 300_000);
        let back = e.read(ino, fh, 0, 400_000).unwrap();
        assert_eq!(back.len(), 300_000);
        assert_eq!(&back[1000..1005], b"hello");
        assert_eq!(&back[..1000], &data[..1000]);
        assert_eq!(&back[1005..], &data[1005..]);
        // Truncate down then up: the cut bytes read as zeros.
        e.setattr(
            &ME,
            ino,
            &SetAttr {
                size: Some(100),
                ..Default::default()
            },
        )
        .unwrap();
        e.setattr(
            &ME,
            ino,
            &SetAttr {
                size: Some(200),
                ..Default::default()
            },
        )
        .unwrap();
        let back = e.read(ino, fh, 0, 1000).unwrap();
        assert_eq!(&back[..100], &data[..100]);
        assert!(back[100..].iter().all(|b| *b == 0));
        e.release(ino, fh).unwrap();
        e.symlink(&ME, ROOT_INO, b"l", b"d/f").unwrap();
        e.setxattr(&ME, ino, b"user.k", b"v", XattrSet::Create)
            .unwrap();
        e.shutdown().unwrap();
    }
    let e = f.engine();
    let d = e.lookup(ROOT_INO, b"d").unwrap();
    let a = e.lookup(d.ino, b"f").unwrap();
    assert_eq!(a.ino, ino);
    assert_eq!(a.size, 200);
    let fh = e.open(&ME, ino, libc::O_RDONLY).unwrap();
    let back = e.read(ino, fh, 0, 1000).unwrap();
    assert_eq!(&back[..100], &data[..100]);
    assert_eq!(
        e.readlink(e.lookup(ROOT_INO, b"l").unwrap().ino).unwrap(),
        b"d/f"
    );
    assert_eq!(e.getxattr(ino, b"user.k").unwrap(), b"v");
    let names: Vec<_> = e
        .readdir(ROOT_INO, e.opendir(ROOT_INO).unwrap(), 0)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        names,
        vec![b".".to_vec(), b"..".to_vec(), b"d".to_vec(), b"l".to_vec()]
    );
    e.release(ino, fh).unwrap();
    e.shutdown().unwrap();
}

#[test]
fn unlink_while_open_and_dead_objects_are_deleted() {
    let f = Fixture::new();
    let e = f.engine();
    let (attr, fh) = e.create(&ME, ROOT_INO, b"x", 0o644, libc::O_RDWR).unwrap();
    e.write(&ME, attr.ino, fh, 0, &random_bytes(2, 200_000))
        .unwrap();
    e.flush(attr.ino, fh).unwrap();
    e.unlink(&ME, ROOT_INO, b"x").unwrap();
    assert_eq!(e.lookup(ROOT_INO, b"x").unwrap_err().errno(), libc::ENOENT);
    assert_eq!(e.read(attr.ino, fh, 0, 10).unwrap(), random_bytes(2, 10));
    e.release(attr.ino, fh).unwrap();
    assert_eq!(e.getattr(attr.ino).unwrap_err().errno(), libc::ENOENT);
    e.collect_garbage(usize::MAX).unwrap();
    let objects = f.dir.path().join("objects/chunks");
    let count = count_files(&objects);
    assert_eq!(count, 0, "objects of a deleted file remain");
    e.shutdown().unwrap();
}

/// Writes, truncation and chown drop file capabilities in the engine itself: the FUSE front
/// end tells the kernel so (FUSE_HANDLE_KILLPRIV_V2), and then the kernel may skip its own
/// check. Every write counts, including one after a setxattr on a file with buffered writes.
#[test]
fn writes_truncation_and_chown_drop_file_capabilities() {
    let f = Fixture::new();
    let e = f.engine();
    let caps = b"security.capability";
    let (a, fh) = e
        .create(&ME, ROOT_INO, b"bin", 0o755, libc::O_RDWR)
        .unwrap();
    let set = || {
        e.setxattr(&ME, a.ino, caps, b"capability bits", XattrSet::Any)
            .unwrap()
    };
    let gone = |what: &str| {
        assert_eq!(
            e.getxattr(a.ino, caps).unwrap_err().errno(),
            libc::ENODATA,
            "capabilities after {what}"
        )
    };
    set();
    e.write(&ME, a.ino, fh, 0, b"one").unwrap();
    gone("a write");
    set();
    e.write(&ME, a.ino, fh, 3, b"two").unwrap();
    gone("a second write before any flush");
    e.flush(a.ino, fh).unwrap();
    set();
    e.setattr(
        &ME,
        a.ino,
        &SetAttr {
            size: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    gone("a truncation");
    set();
    e.setattr(
        &ME,
        a.ino,
        &SetAttr {
            uid: Some(7),
            ..Default::default()
        },
    )
    .unwrap();
    gone("a chown");
    e.release(a.ino, fh).unwrap();
}

#[test]
fn namespace_errors() {
    let f = Fixture::new();
    let e = f.engine();
    e.mkdir(&ME, ROOT_INO, b"a", 0o755).unwrap();
    let a = e.lookup(ROOT_INO, b"a").unwrap();
    e.mkdir(&ME, a.ino, b"b", 0o755).unwrap();
    assert_eq!(
        e.mkdir(&ME, ROOT_INO, b"a", 0o755).unwrap_err().errno(),
        libc::EEXIST
    );
    assert_eq!(
        e.rmdir(&ME, ROOT_INO, b"a").unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        e.unlink(&ME, ROOT_INO, b"a").unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        e.lookup(ROOT_INO, &[b'n'; 256]).unwrap_err().errno(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        e.mkdir(&ME, ROOT_INO, &[b'n'; 256], 0o755)
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        e.rename(&ME, ROOT_INO, b"a", a.ino, b"x", RenameFlags::default())
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(e.getattr(ROOT_INO).unwrap().nlink, 3);
    e.rename(&ME, a.ino, b"b", ROOT_INO, b"b", RenameFlags::default())
        .unwrap();
    assert_eq!(e.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(e.getattr(a.ino).unwrap().nlink, 2);
    e.rmdir(&ME, ROOT_INO, b"b").unwrap();
    e.rmdir(&ME, ROOT_INO, b"a").unwrap();
    assert_eq!(e.getattr(ROOT_INO).unwrap().nlink, 2);
    e.shutdown().unwrap();
}

/// On an exclusive volume `keep_cache` at every open (every change went through this
/// mount's kernel), except when the next read must move the access time (that read must reach
/// the engine). The shared-volume rule (unchanged since the previous open here, opened for
/// reading) is tested across two mounts in `tests/tests/postgres.rs` (close-to-open: a rewrite
/// on one mount is read on the other, whose page cache held the old contents).
#[test]
fn open_keeps_the_kernel_cache_unless_the_access_time_is_due() {
    let f = Fixture::new();
    let e = f.engine();
    let (a, fh) = e.create(&ME, ROOT_INO, b"k", 0o644, libc::O_RDWR).unwrap();
    e.write(&ME, a.ino, fh, 0, b"one").unwrap();
    e.release(a.ino, fh).unwrap();
    // Each open reads the file, as a reader would (the first read after a change moves atime;
    // until it has, no open keeps the cache, so that the read reaches the engine).
    let open = |flags| {
        let (fh, keep) = e.open_file(&ME, a.ino, flags).unwrap();
        e.read(a.ino, fh, 0, 1).unwrap();
        e.release(a.ino, fh).unwrap();
        keep
    };
    assert!(!open(libc::O_RDONLY), "first open: nothing to keep");
    assert!(open(libc::O_RDONLY), "unchanged since the last open");
    assert!(open(libc::O_RDWR), "also when opened for writing");
    let fh = e.open(&ME, a.ino, libc::O_WRONLY).unwrap();
    e.write(&ME, a.ino, fh, 0, b"two!").unwrap();
    e.release(a.ino, fh).unwrap();
    assert!(!open(libc::O_RDONLY), "changed since the last open");
    assert!(open(libc::O_RDONLY));
    // A change of attributes alone (chmod): atime is due again, so the next open drops the
    // cache for the read to come here; once read, the cache is kept again.
    let set = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    e.setattr(&ME, a.ino, &set).unwrap();
    assert!(!open(libc::O_RDONLY), "atime due");
    assert!(open(libc::O_RDONLY));
    e.shutdown().unwrap();
}

/// A sequential reader gets the next blocks fetched before it asks; a random one does not.
#[test]
fn sequential_reads_fetch_ahead() {
    let f = Fixture::new();
    let e = f.engine();
    let bs = 64 << 10;
    let data = random_bytes(3, 12 * bs);
    let (a, fh) = e
        .create(&ME, ROOT_INO, b"seq", 0o644, libc::O_RDWR)
        .unwrap();
    e.write(&ME, a.ino, fh, 0, &data).unwrap();
    e.release(a.ino, fh).unwrap();
    e.shutdown().unwrap();
    drop(e);
    let config = EngineConfig {
        readahead_bytes: 4 * bs as u64,
        ..Default::default()
    };
    let e = f.start_engine(None, config);
    let fh = e.open(&ME, a.ino, libc::O_RDONLY).unwrap();
    // Random reads: only what is asked for is fetched.
    e.read(a.ino, fh, 5 * bs as u64, 100).unwrap();
    e.read(a.ino, fh, 9 * bs as u64, 100).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(e.status().objects_got, 2);
    // Two reads in a row from the start: the next four blocks come in the background.
    e.read(a.ino, fh, 0, 32 << 10).unwrap();
    e.read(a.ino, fh, 32 << 10, 32 << 10).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while e.status().objects_got < 2 + 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        e.status().objects_got >= 2 + 5,
        "{}",
        e.status().objects_got
    );
    // Everything reads right, front to back.
    let mut got = Vec::new();
    let mut off = 0u64;
    while off < data.len() as u64 {
        let part = e.read(a.ino, fh, off, 48 << 10).unwrap();
        off += part.len() as u64;
        got.extend(part);
    }
    assert!(got == data);
    // Each block was fetched once.
    assert_eq!(e.status().objects_got, 12);
    e.release(a.ino, fh).unwrap();
    e.shutdown().unwrap();
}

mod writeback {
    use super::*;
    use spoolfs_engine::staging::StagingDurability;
    use spoolfs_engine::writeback::StagingSettings;
    use std::time::Duration;

    fn settings(f: &Fixture, uploaders: usize) -> StagingSettings {
        StagingSettings {
            durability: StagingDurability::Flush,
            upload_threads: uploaders,
            ..StagingSettings::for_tests(f.dir.path().join("cache"))
        }
    }

    fn engine(f: &Fixture, uploaders: usize) -> Arc<Engine> {
        engine_with(f, settings(f, uploaders))
    }

    fn engine_with(f: &Fixture, settings: StagingSettings) -> Arc<Engine> {
        engine_configured(f, settings, EngineConfig::default())
    }

    /// A writeback engine with `settings`, the rest of its configuration from `config`.
    fn engine_configured(
        f: &Fixture,
        settings: StagingSettings,
        config: EngineConfig,
    ) -> Arc<Engine> {
        f.start_engine(Some(&settings), config)
    }

    fn write_files(e: &Engine, n: usize) -> Vec<(Ino, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let data = random_bytes(i as u64, 100 + i * 997);
                let name = format!("f{i}");
                (create_file(e, &name, &data), data)
            })
            .collect()
    }

    /// A writeback engine (one uploader) whose staging log injects the faults of `spec` (see
    /// `FaultConfig::from_spec`), its other settings changed by `tweak`; and the fault switches.
    fn faulty_engine(
        f: &Fixture,
        spec: &str,
        tweak: impl FnOnce(&mut StagingSettings),
    ) -> (Arc<Engine>, Arc<spoolfs_engine::staging::FaultConfig>) {
        let faults = spoolfs_engine::staging::FaultConfig::from_spec(spec).unwrap();
        let mut s = settings(f, 1);
        s.faults = Some(faults.clone());
        tweak(&mut s);
        (engine_with(f, s), faults)
    }

    /// Starts a new engine (no faults) and asserts that every one of `files` reads back.
    fn check_after_remount(f: &Fixture, files: &[(Ino, Vec<u8>)]) {
        let e = engine(f, 1);
        assert_files(&e, files);
        e.shutdown().unwrap();
    }

    /// Asserts that every one of `files` reads back as written.
    fn assert_files(e: &Engine, files: &[(Ino, Vec<u8>)]) {
        for (ino, data) in files {
            assert_eq!(&read_all(e, *ino), data, "contents of inode {ino}");
        }
    }

    /// A large write hands each full run to the staging log before the flush (the flush
    /// only waits for them), later writes over a run already handed off still win, and
    /// the uploaders take the data from memory rather than reading the log back, unless the
    /// upload buffer is 0.
    #[test]
    fn full_runs_are_staged_early_and_uploaded_from_memory() {
        for upload_buffer in [256u64 << 20, 0] {
            let f = Fixture::new();
            // Runs of at most 2 MiB (a quarter of a segment).
            let staging = StagingSettings {
                segment_size: 8 << 20,
                upload_buffer,
                ..settings(&f, 1)
            };
            let e = engine_with(&f, staging.clone());
            let mut expect = random_bytes(21, 7 << 20);
            let (a, fh) = e
                .create(&ME, ROOT_INO, b"big", 0o644, libc::O_RDWR)
                .unwrap();
            for (i, part) in expect.chunks(256 << 10).enumerate() {
                e.write(&ME, a.ino, fh, (i as u64) << 18, part).unwrap();
            }
            // The appends complete in the background.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while e.status().staging_log_bytes < 6 << 20 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                e.status().staging_log_bytes >= 6 << 20,
                "three full runs staged before any flush: {} bytes",
                e.status().staging_log_bytes
            );
            // Over the first run, already staged.
            let patch = random_bytes(22, 8192);
            e.write(&ME, a.ino, fh, 4096, &patch).unwrap();
            expect[4096..4096 + patch.len()].copy_from_slice(&patch);
            assert!(e.read(a.ino, fh, 0, expect.len() as u32).unwrap() == expect);
            e.fsync(a.ino, fh, false).unwrap();
            e.release(a.ino, fh).unwrap();
            // Until now every read was served from memory: the log is read only by uploads.
            assert_eq!(e.drain_uploads(Some(Duration::from_secs(30))), 0);
            let upload_reads = e.status().staging_reads;
            if upload_buffer > 0 {
                assert_eq!(upload_reads, 0, "uploads read the staging log back");
            } else {
                assert!(upload_reads >= 5, "{upload_reads} reads for 5 slices");
            }
            assert_eq!(e.status().staging_bypassed_slices, 0);
            assert!(read_all(&e, a.ino) == expect);
            e.shutdown().unwrap();
            drop(e);
            // From the object store, after a remount.
            let e = engine_with(&f, staging);
            assert!(read_all(&e, a.ino) == expect);
            e.shutdown().unwrap();
        }
    }

    #[test]
    fn staged_then_uploaded() {
        let f = Fixture::new();
        let e = engine(&f, 0);
        assert!(e.is_writeback());
        let files = write_files(&e, 20);
        // Nothing uploads (no uploader threads): data is served from the staging log.
        assert_eq!(count_files(&f.dir.path().join("objects/chunks")), 0);
        let st = e.status();
        assert_eq!(st.staged_slices, 20);
        assert_files(&e, &files);
        // A file deleted while staged is never uploaded.
        e.unlink(&ME, ROOT_INO, b"f0").unwrap();
        e.collect_garbage(usize::MAX).unwrap();
        assert_eq!(e.status().staged_slices, 19);
        drop(e);
        // Remount with uploaders: replay queues the 19 staged slices and they go up.
        let e = engine(&f, 2);
        assert_eq!(e.drain_uploads(Some(Duration::from_secs(30))), 0);
        // 19 small files went up packed together: one PUT, not 19.
        assert_eq!(count_files(&f.dir.path().join("objects/packs")), 1);
        assert_eq!(count_files(&f.dir.path().join("objects/chunks")), 0);
        assert_files(&e, &files[1..]);
        e.shutdown().unwrap();
        drop(e);
        // Cold: files written together are read back with one ranged GET of their pack, not
        // one per file.
        let e = engine(&f, 1);
        assert_files(&e, &files[1..]);
        assert_eq!(e.status().objects_got, 1);
        e.shutdown().unwrap();
    }

    /// Metadata changes wait in memory for the checkpoint (they are in the namespace log),
    /// and the status says how many.
    #[test]
    fn status_counts_metadata_changes_until_the_checkpoint() {
        let f = Fixture::new();
        let config = EngineConfig {
            meta_flush_interval: std::time::Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        let e = engine_configured(&f, settings(&f, 0), config);
        let (a, fh) = e.create(&ME, ROOT_INO, b"f", 0o644, libc::O_RDWR).unwrap();
        e.write(&ME, a.ino, fh, 0, b"hello").unwrap();
        e.release(a.ino, fh).unwrap();
        let before = e.status().metadata_unapplied_changes;
        assert!(before > 0, "a create and a close left no change in memory");
        e.fsyncdir(ROOT_INO).unwrap();
        assert_eq!(e.status().metadata_unapplied_changes, 0);
        // No uploaders: a shutdown would wait for the staged file forever.
        drop(e);
    }

    /// A `T` record whose slice is not in the staging log can only come from a flush cut
    /// short by a crash (its record was never acknowledged): replay turns its range into a
    /// hole instead of leaving a file that fails with EIO.
    #[test]
    fn replay_turns_a_staged_slice_missing_from_the_log_into_a_hole() {
        use spoolfs_engine::schema::{self, SliceRec, StagedRec};
        let f = Fixture::new();
        let e = engine(&f, 0);
        let data = random_bytes(7, 3 * 4096);
        let (a, fh) = e.create(&ME, ROOT_INO, b"f", 0o644, libc::O_RDWR).unwrap();
        e.write(&ME, a.ino, fh, 0, &data).unwrap();
        e.release(a.ino, fh).unwrap();
        // A checkpoint, so that the store holds the file's segment to plant over (changes
        // since the last checkpoint are only in memory and in the logs).
        e.fsyncdir(ROOT_INO).unwrap();
        let (ino, size) = (a.ino, data.len());
        let files = [(ino, data)];
        drop(e);
        // Plant a slice laid over the first 4 KiB whose data never reached the log.
        let lost = 1 << 40;
        let meta = f.meta();
        meta.update(spoolfs_metadata::Durability::Durable, &mut |t| {
            let key = schema::seg_key(ino, 0, 0);
            let real: SliceRec = schema::decode("segment", &t.get(&key)?.unwrap())?;
            let tail = SliceRec {
                off: 4096,
                len: real.len - 4096,
                pos: 4096,
                ..real
            };
            t.put(&schema::seg_key(ino, 0, 4096), &schema::encode(&tail))?;
            let seg = SliceRec {
                id: lost,
                size: 4096,
                off: 0,
                len: 4096,
                pos: 0,
            };
            t.put(&key, &schema::encode(&seg))?;
            let rec = StagedRec {
                ino,
                chunk: 0,
                size: 4096,
                segment: u32::MAX,
                offset: 0,
                staged_ns: 1,
                owner: 0,
            };
            t.put(&schema::staged_key(lost), &schema::encode(&rec))
        })
        .unwrap();
        drop(meta);
        let e = engine(&f, 0);
        let got = read_all(&e, ino);
        assert_eq!(got.len(), size);
        assert!(
            got[..4096].iter().all(|&b| b == 0),
            "the lost range is a hole"
        );
        assert_eq!(&got[4096..], &files[0].1[4096..]);
        assert_eq!(e.status().staged_slices, 1, "only the real slice is staged");
        // No uploaders: nothing to drain.
        drop(e);
    }

    /// `--durable-close`: closing a descriptor that wrote flushes the device cache, as fsync
    /// does; without it close does not; a read-only descriptor's close never does.
    #[test]
    fn durable_close_flushes_the_device_only_when_asked() {
        for durable_close in [false, true] {
            let f = Fixture::new();
            let config = EngineConfig {
                durable_close,
                ..Default::default()
            };
            let e = engine_configured(&f, settings(&f, 1), config);
            let flushes = || e.metrics().staging.map(|s| s.device_flushes).unwrap();
            let (a, fh) = e.create(&ME, ROOT_INO, b"c", 0o644, libc::O_RDWR).unwrap();
            e.write(&ME, a.ino, fh, 0, b"checkpoint").unwrap();
            let before = flushes();
            e.flush(a.ino, fh).unwrap();
            let closed = flushes();
            if durable_close {
                assert!(
                    closed > before,
                    "close flushed nothing ({before} -> {closed})"
                );
            } else {
                assert_eq!(closed, before, "close flushed without --durable-close");
            }
            e.release(a.ino, fh).unwrap();
            let rfh = e.open(&ME, a.ino, libc::O_RDONLY).unwrap();
            let before = flushes();
            e.flush(a.ino, rfh).unwrap();
            e.release(a.ino, rfh).unwrap();
            assert_eq!(flushes(), before, "a read-only close flushed the device");
            e.shutdown().unwrap();
        }
    }

    #[test]
    fn overwrite_while_staged_reads_newest() {
        let f = Fixture::new();
        let e = engine(&f, 1);
        let (a, fh) = e.create(&ME, ROOT_INO, b"x", 0o644, libc::O_RDWR).unwrap();
        for round in 0..20u64 {
            let data = random_bytes(round, 5000);
            e.write(&ME, a.ino, fh, 0, &data).unwrap();
            e.fsync(a.ino, fh, false).unwrap();
            assert_eq!(e.read(a.ino, fh, 0, 6000).unwrap(), data);
        }
        e.release(a.ino, fh).unwrap();
        e.shutdown().unwrap();
        drop(e);
        // Packs whose slices were all overwritten are gone; the ones left are all recorded.
        let packs = count_files(&f.dir.path().join("objects/packs"));
        let meta = f.meta();
        let mut recorded = 0;
        meta.view(&mut |r| {
            recorded = r.scan(b"P", b"Q", usize::MAX)?.len();
            Ok(())
        })
        .unwrap();
        assert!(
            packs >= 1 && packs == recorded,
            "{packs} pack objects, {recorded} recorded"
        );
    }

    #[test]
    fn failing_and_torn_staging_writes_lose_nothing() {
        let f = Fixture::new();
        let (e, faults) = faulty_engine(&f, "fail_every=3,tear_every=5", |_| {});
        // Every write is acknowledged: a failed staging write falls back to a direct upload.
        let files = write_files(&e, 40);
        assert_files(&e, &files);
        assert!(faults.writes() >= 40);
        drop(e);
        // Remount without faults: torn records in the log are skipped by replay, every
        // acknowledged file is intact.
        check_after_remount(&f, &files);
    }

    /// A staging device that does not answer in time: every close is acknowledged anyway, its
    /// data uploaded directly, and the late records are freed when they complete.
    #[test]
    fn too_slow_staging_device_falls_back_to_direct_upload() {
        let f = Fixture::new();
        let (e, _) = faulty_engine(&f, "delay_us=400000", |s| {
            s.staging_timeout = Duration::from_millis(50)
        });
        let t = std::time::Instant::now();
        let files = write_files(&e, 4);
        // Each close gave up on the device after 50 ms, not 400 ms.
        assert!(
            t.elapsed() < Duration::from_millis(4 * 350),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(e.status().staged_slices, 0);
        assert_eq!(count_files(&f.dir.path().join("objects/chunks")), 4);
        assert_files(&e, &files);
        // The writes the callers gave up on complete later; their records are freed then.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while e.status().staging_log_bytes > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(e.status().staging_log_bytes, 0);
        e.shutdown().unwrap();
        drop(e);
        check_after_remount(&f, &files);
    }

    /// Files under a directory marked with user.spoolfs.sync_upload are in the object store
    /// when close returns; others stay staged (the upload delay here is long).
    #[test]
    fn sync_upload_mark_makes_close_wait_for_the_object_store() {
        let f = Fixture::new();
        let mut s = settings(&f, 1);
        s.upload_delay = Duration::from_secs(30);
        let e = engine_with(&f, s.clone());
        let write = |e: &Engine, dir: Ino, name: &str| {
            let (a, fh) = e
                .create(&ME, dir, name.as_bytes(), 0o644, libc::O_RDWR)
                .unwrap();
            e.write(&ME, a.ino, fh, 0, name.as_bytes()).unwrap();
            e.flush(a.ino, fh).unwrap();
            e.release(a.ino, fh).unwrap();
        };
        let top = e.mkdir(&ME, ROOT_INO, b"ckpt", 0o755).unwrap().ino;
        let sub = e.mkdir(&ME, top, b"day1", 0o755).unwrap().ino;
        e.setxattr(&ME, top, b"user.spoolfs.sync_upload", b"1", XattrSet::Any)
            .unwrap();
        write(&e, sub, "model.bin");
        // The marked file went up at close (with anything staged before it: oldest first).
        assert_eq!(e.status().staged_slices, 0);
        assert_eq!(count_files(&f.dir.path().join("objects/packs")), 1);
        // An unmarked file stays staged.
        write(&e, ROOT_INO, "plain");
        assert_eq!(e.status().staged_slices, 1);
        drop(e);
        // The mark survives a remount.
        let e = engine_with(&f, s.clone());
        assert_eq!(e.status().staged_slices, 1, "the plain file, replayed");
        write(&e, sub, "model2.bin");
        assert_eq!(e.status().staged_slices, 0);
        e.removexattr(&ME, top, b"user.spoolfs.sync_upload")
            .unwrap();
        write(&e, sub, "model3.bin");
        assert_eq!(e.status().staged_slices, 1);
        e.shutdown().unwrap();
    }

    fn engine_cached(f: &Fixture, max_bytes: u64) -> Arc<Engine> {
        engine_cached_with(f, max_bytes, true, settings(f, 2))
    }

    fn engine_cached_with(
        f: &Fixture,
        max_bytes: u64,
        keep_large_uploads: bool,
        staging: StagingSettings,
    ) -> Arc<Engine> {
        let config = EngineConfig {
            disk_cache: Some(spoolfs_engine::diskcache::DiskCacheConfig {
                dir: f.dir.path().join("cache/blocks"),
                max_bytes,
                free_ratio: 0.0,
                keep_large_uploads,
            }),
            ..Default::default()
        };
        engine_configured(f, staging, config)
    }

    /// Large uploaded slices (block objects) are kept in the data cache only when asked;
    /// small ones always are, as their pack.
    #[test]
    fn large_uploads_are_cached_only_when_asked() {
        for keep in [false, true] {
            let f = Fixture::new();
            // Segments large enough to stage a slice over the 1 MiB packing limit.
            let staging = StagingSettings {
                segment_size: 8 << 20,
                ..settings(&f, 2)
            };
            let e = engine_cached_with(&f, 256 << 20, keep, staging);
            let small = write_files(&e, 3);
            let big = random_bytes(7, 3 << 19);
            let (a, fh) = e
                .create(&ME, ROOT_INO, b"big", 0o644, libc::O_RDWR)
                .unwrap();
            e.write(&ME, a.ino, fh, 0, &big).unwrap();
            e.release(a.ino, fh).unwrap();
            assert_eq!(e.drain_uploads(Some(Duration::from_secs(30))), 0);
            assert_eq!(
                e.status().staging_bypassed_slices,
                0,
                "everything was staged"
            );
            let small_bytes: usize = small.iter().map(|(_, d)| d.len()).sum();
            let cached = cache_stats(&e).bytes;
            assert!(cached >= small_bytes as u64, "keep {keep}: {cached}");
            if keep {
                assert!(cached >= (small_bytes + big.len()) as u64, "{cached}");
            } else {
                assert!(cached < big.len() as u64, "{cached}");
            }
            assert_eq!(read_all(&e, a.ino), big);
            e.shutdown().unwrap();
        }
    }

    fn cache_stats(e: &Engine) -> spoolfs_engine::diskcache::DiskCacheStats {
        e.status().data_cache.expect("a data cache")
    }

    /// The local data cache: uploaded and fetched data is read back without the object store,
    /// across a remount; a damaged cache file is detected and fetched again, never served;
    /// overwrite, truncate, rename and delete of cached files read correctly; eviction keeps
    /// the cache under its size.
    #[test]
    fn local_data_cache_serves_reads_without_the_object_store() {
        let f = Fixture::new();
        let e = engine_cached(&f, 64 << 20);
        let mut files = write_files(&e, 6);
        // One file of several 64 KiB blocks (stored as blocks, not packed).
        let big = random_bytes(99, 5 * 65536 + 123);
        let (a, fh) = e
            .create(&ME, ROOT_INO, b"big", 0o644, libc::O_RDWR)
            .unwrap();
        e.write(&ME, a.ino, fh, 0, &big).unwrap();
        e.release(a.ino, fh).unwrap();
        files.push((a.ino, big.clone()));
        assert_eq!(e.drain_uploads(Some(Duration::from_secs(30))), 0);
        // Uploading kept a copy of everything (small slices as the packs they went up in).
        let total: usize = files.iter().map(|(_, d)| d.len()).sum();
        assert!(
            cache_stats(&e).bytes >= total as u64,
            "{:?}",
            cache_stats(&e)
        );
        e.shutdown().unwrap();
        drop(e);

        // Warm restart with the object store gone: every read comes from the disk cache.
        let objects = f.dir.path().join("objects");
        let hidden = f.dir.path().join("objects.hidden");
        std::fs::rename(&objects, &hidden).unwrap();
        std::fs::create_dir(&objects).unwrap();
        let e = engine_cached(&f, 64 << 20);
        assert_files(&e, &files);
        assert!(cache_stats(&e).hits >= 7);
        drop(e);
        std::fs::remove_dir_all(&objects).unwrap();
        std::fs::rename(&hidden, &objects).unwrap();

        // A damaged cache file is never served: it is dropped and the data fetched again.
        let mut damaged = 0;
        let fans = std::fs::read_dir(f.dir.path().join("cache/blocks")).unwrap();
        for entry in fans.flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap()) {
            let path = entry.unwrap().path();
            let mut b = std::fs::read(&path).unwrap();
            b[0] ^= 0xff;
            std::fs::write(&path, b).unwrap();
            damaged += 1;
        }
        let e = engine_cached(&f, 64 << 20);
        assert_files(&e, &files);
        assert_eq!(cache_stats(&e).corrupt, damaged);

        // Changes to cached files read back right (slices never change: new data is new
        // slices, and what they hide is never read again).
        let big_ino = a.ino;
        let fh = e.open(&ME, big_ino, libc::O_RDWR).unwrap();
        let patch = random_bytes(5, 70_000);
        e.write(&ME, big_ino, fh, 100_000, &patch).unwrap();
        e.fsync(big_ino, fh, false).unwrap();
        let mut expect = big.clone();
        expect[100_000..170_000].copy_from_slice(&patch);
        assert_eq!(read_all(&e, big_ino), expect);
        let set = SetAttr {
            size: Some(150_000),
            ..Default::default()
        };
        e.setattr(&ME, big_ino, &set).unwrap();
        expect.truncate(150_000);
        assert_eq!(read_all(&e, big_ino), expect);
        e.release(big_ino, fh).unwrap();
        e.rename(
            &ME,
            ROOT_INO,
            b"big",
            ROOT_INO,
            b"big2",
            RenameFlags::default(),
        )
        .unwrap();
        assert_eq!(read_all(&e, big_ino), expect);
        e.unlink(&ME, ROOT_INO, b"f0").unwrap();
        assert_eq!(e.drain_uploads(Some(Duration::from_secs(30))), 0);
        e.collect_garbage(usize::MAX).unwrap();
        assert_eq!(read_all(&e, big_ino), expect);
        e.shutdown().unwrap();
        drop(e);

        // Under pressure the cache stays within its size, least recently used out first.
        let e = engine_cached(&f, 150 << 10);
        assert!(cache_stats(&e).bytes <= 150 << 10, "{:?}", cache_stats(&e));
        assert_eq!(read_all(&e, big_ino), expect);
        assert_files(&e, &files[1..files.len() - 1]);
        let st = cache_stats(&e);
        assert!(st.bytes <= 150 << 10 && st.evictions > 0, "{st:?}");
        e.shutdown().unwrap();
    }

    #[test]
    fn many_writers_one_file_and_many_files() {
        let f = Fixture::new();
        let e = engine(&f, 2);
        let (a, fh) = e
            .create(&ME, ROOT_INO, b"shared", 0o644, libc::O_RDWR)
            .unwrap();
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let e = e.clone();
                scope.spawn(move || {
                    // Each thread owns a disjoint 64 KiB region of the shared file, and its
                    // own files.
                    for round in 0..10u64 {
                        let data = random_bytes(t * 100 + round, 65536);
                        e.write(&ME, a.ino, fh, t * 65536, &data).unwrap();
                        if round % 3 == 0 {
                            e.fsync(a.ino, fh, false).unwrap();
                        }
                    }
                    for i in 0..10 {
                        let name = format!("t{t}-{i}");
                        let (b, bfh) = e
                            .create(&ME, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
                            .unwrap();
                        e.write(&ME, b.ino, bfh, 0, name.as_bytes()).unwrap();
                        e.release(b.ino, bfh).unwrap();
                    }
                });
            }
        });
        e.flush(a.ino, fh).unwrap();
        for t in 0..8u64 {
            let got = e.read(a.ino, fh, t * 65536, 65536).unwrap();
            assert_eq!(
                got,
                random_bytes(t * 100 + 9, 65536),
                "region of thread {t}"
            );
        }
        e.release(a.ino, fh).unwrap();
        for t in 0..8 {
            for i in 0..10 {
                let name = format!("t{t}-{i}");
                let ino = e.lookup(ROOT_INO, name.as_bytes()).unwrap().ino;
                assert_eq!(read_all(&e, ino), name.as_bytes());
            }
        }
        e.shutdown().unwrap();
    }

    #[test]
    fn small_files_are_packed_into_few_objects_and_collected() {
        let f = Fixture::new();
        // No uploader while writing: everything is staged, then one drain packs it.
        let e = engine(&f, 0);
        let files = write_files(&e, 300);
        drop(e);
        let e = engine(&f, 1);
        assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
        let objects = count_files(&f.dir.path().join("objects/packs"));
        let total: usize = files.iter().map(|(_, d)| d.len()).sum();
        // 300 files, ~45 MB in all, in packs of about 8 MiB: a handful of PUTs, not 300.
        assert!(
            objects >= 1 && objects <= total / (8 << 20) + 4,
            "{objects} pack objects"
        );
        assert_eq!(count_files(&f.dir.path().join("objects/chunks")), 0);
        assert!(e.status().objects_put <= objects as u64);
        assert_files(&e, &files);
        e.shutdown().unwrap();
        drop(e);
        // Remount: packed slices read back with ranged GETs; a corrupted pack byte is EIO.
        let e = engine(&f, 1);
        assert_files(&e, &files);
        // Delete every file: the packs go once their last slice does.
        for i in 0..files.len() {
            e.unlink(&ME, ROOT_INO, format!("f{i}").as_bytes()).unwrap();
        }
        e.collect_garbage(usize::MAX).unwrap();
        assert_eq!(
            count_files(&f.dir.path().join("objects/packs")),
            0,
            "packs of deleted files remain"
        );
        e.shutdown().unwrap();
    }

    #[test]
    fn corrupted_pack_reads_as_eio() {
        let f = Fixture::new();
        let e = engine(&f, 1);
        let files = write_files(&e, 5);
        e.shutdown().unwrap();
        drop(e);
        let packs = files_under(&f.dir.path().join("objects/packs"));
        assert!(!packs.is_empty(), "no pack objects to corrupt");
        for p in &packs {
            let mut bytes = std::fs::read(p).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(p, bytes).unwrap();
        }
        let e = engine(&f, 1);
        let (ino, _) = &files[0];
        let fh = e.open(&ME, *ino, libc::O_RDONLY).unwrap();
        let err = e.read(*ino, fh, 0, 100).unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{err}");
        e.release(*ino, fh).unwrap();
        e.shutdown().unwrap();
    }
}
