//! fsck finds each kind of planted inconsistency, reports nothing on a clean volume, and its
//! repair leaves a volume that checks clean with every undamaged file intact. No FUSE: volumes
//! are built with the engine on a redb store and a `file://` object store, and damage is
//! planted directly in the metadata store or the object directory.

use spoolfs_engine::fsck::{FsckOptions, FsckReport, Severity, check_offline, fsck};
use spoolfs_engine::schema::{self, DentryRec, PackRec, SliceRec, StagedRec};
use spoolfs_engine::staging::IoEngineKind;
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use spoolfs_metadata::{Durability, KvTxn, MetaError};
use spoolfs_objects::ObjectStorage;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{Volume, count_files, files_under, read_all};
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;
const BS: usize = common::BLOCK_SIZE;

/// A volume (see [`Volume`]; its block size is [`BS`]) and the files a test wrote to it.
struct Fixture {
    vol: Volume,
    /// path → expected contents of the files written
    files: Vec<(String, Vec<u8>)>,
}

impl std::ops::Deref for Fixture {
    type Target = Volume;
    fn deref(&self) -> &Volume {
        &self.vol
    }
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            vol: Volume::new(),
            files: Vec::new(),
        }
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn settings(&self, uploaders: usize) -> StagingSettings {
        self.settings_with_delay(uploaders, Duration::ZERO)
    }
    fn settings_with_delay(&self, uploaders: usize, delay: Duration) -> StagingSettings {
        StagingSettings {
            engine_threads: 1,
            io_engine: IoEngineKind::Psync,
            upload_threads: uploaders,
            upload_delay: delay,
            ..StagingSettings::for_tests(self.cache())
        }
    }
    /// A writeback engine (what a mount runs); `drain`: wait for uploads at shutdown.
    fn engine(&self, uploaders: usize, drain: bool) -> Arc<Engine> {
        self.engine_with(self.settings(uploaders), drain)
    }
    fn engine_with(&self, settings: StagingSettings, drain: bool) -> Arc<Engine> {
        let config = EngineConfig {
            drain_on_shutdown: drain.then_some(Duration::from_secs(30)),
            ..Default::default()
        };
        self.start_engine(Some(&settings), config)
    }

    fn write(&mut self, e: &Engine, path: &str, data: Vec<u8>) {
        let (parent, name) = path.rsplit_once('/').unwrap();
        let parent = lookup(e, parent);
        let (a, fh) = e
            .create(&ME, parent, name.as_bytes(), 0o644, libc::O_RDWR)
            .unwrap();
        e.write(&ME, a.ino, fh, 0, &data).unwrap();
        e.release(a.ino, fh).unwrap();
        self.files.push((path.to_string(), data));
    }

    /// A volume with a directory, a hard link, a symlink, a large file in block objects and
    /// small files packed together, everything uploaded and cleanly unmounted.
    fn populated() -> Self {
        let mut f = Fixture::new();
        // Small files wait to share one pack; the sync below does not wait.
        let e = f.engine_with(f.settings_with_delay(2, Duration::from_secs(60)), true);
        let d = e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
        e.mkdir(&ME, d.ino, b"sub", 0o755).unwrap();
        f.write(&e, "/d/big", random_bytes(1, 1_200_000));
        for i in 0..4 {
            f.write(
                &e,
                &format!("/small{i}"),
                random_bytes(10 + i, 1000 + 3000 * i as usize),
            );
        }
        let big = e.lookup(d.ino, b"big").unwrap();
        e.link(&ME, big.ino, ROOT_INO, b"big-link").unwrap();
        e.symlink(&ME, ROOT_INO, b"sym", b"d/big").unwrap();
        e.sync_to_object_store(Some(Duration::from_secs(30)), &mut |_, _| {})
            .unwrap();
        e.shutdown().unwrap();
        drop(e);
        assert_eq!(
            count_files(&f.objects().join("packs")),
            1,
            "small files packed together"
        );
        assert!(
            count_files(&f.objects().join("chunks")) >= 19,
            "large file in blocks"
        );
        f
    }

    fn fsck_with(&self, opts: &FsckOptions) -> FsckReport {
        let meta = self.meta();
        let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
        check_offline(meta.as_ref(), &record, Some(&self.cache())).unwrap();
        let storage = ObjectStorage::open(&self.storage_config()).unwrap();
        fsck(meta.as_ref(), &storage, &record, opts, &mut |_, _, _| {}).unwrap()
    }

    fn check(&self) -> FsckReport {
        self.fsck_with(&self.opts(false))
    }

    fn opts(&self, repair: bool) -> FsckOptions {
        let uuid = self.record().uuid;
        FsckOptions {
            repair,
            verify_data: true,
            staging_dir: Some(self.cache().join(uuid)),
            orphan_grace: Duration::ZERO,
            forget_losses: false,
        }
    }

    /// Repairs, then checks again: the second run must be clean.
    fn repair_and_recheck(&self) -> FsckReport {
        let r = self.fsck_with(&self.opts(true));
        assert_eq!(r.unrepaired_errors(), 0, "{}", describe(&r));
        let again = self.check();
        assert!(again.is_clean(), "after repair: {}", describe(&again));
        r
    }

    fn plant(&self, f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<(), MetaError>) {
        self.meta().update(Durability::Durable, f).unwrap();
    }

    fn ino_of(&self, path: &str) -> Ino {
        let e = self.engine(0, true);
        let ino = lookup(&e, path);
        e.shutdown().unwrap();
        ino
    }

    /// Every file read back; `damaged` files may differ (their sizes may not).
    fn assert_files(&self, damaged: &[&str]) {
        let e = self.engine(2, true);
        for (path, data) in &self.files {
            let got = read_all(&e, lookup(&e, path));
            assert_eq!(got.len(), data.len(), "{path}: size");
            if !damaged.contains(&path.as_str()) {
                assert!(got == *data, "{path} changed");
            }
        }
        if let Ok(link) = e.lookup(ROOT_INO, b"big-link") {
            assert!(read_all(&e, link.ino) == read_all(&e, lookup(&e, "/d/big")));
        }
        e.shutdown().unwrap();
    }
}

fn lookup(e: &Engine, path: &str) -> Ino {
    path.split('/')
        .filter(|c| !c.is_empty())
        .fold(ROOT_INO, |dir, name| {
            e.lookup(dir, name.as_bytes()).unwrap().ino
        })
}

fn describe(r: &FsckReport) -> String {
    r.findings
        .iter()
        .map(|f| {
            format!(
                "\n  {:?} {} {} {}",
                f.severity,
                f.kind,
                f.path.as_deref().unwrap_or("-"),
                f.message
            )
        })
        .collect()
}

/// The only errors and warnings are of `kind`; returns them.
fn only(r: &FsckReport, kind: &str) -> Vec<spoolfs_engine::fsck::Finding> {
    let found: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Note)
        .cloned()
        .collect();
    assert!(!found.is_empty(), "nothing found: {}", describe(r));
    assert!(
        found.iter().all(|f| f.kind == kind),
        "expected only {kind}: {}",
        describe(r)
    );
    found
}

/// The block objects of the large file, in key order.
fn big_blocks(f: &Fixture) -> Vec<PathBuf> {
    let mut blocks = files_under(&f.objects().join("chunks"));
    // Keys end in _{index}_{len}: order by index.
    blocks.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.split('_').nth(1).unwrap().parse::<u32>().unwrap()
    });
    blocks
}

#[test]
fn clean_volume_has_no_findings() {
    let f = Fixture::populated();
    let r = f.check();
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.errors() + r.warnings(), 0);
    assert_eq!(r.stats.inodes, 9);
    assert!(r.stats.packs >= 1 && r.stats.packed_slices == 4);
    assert!(r.stats.objects_verified >= 23);
    assert_eq!(r.stats.orphan_objects, 0);
    // A repair of a clean volume changes nothing.
    let r = f.fsck_with(&f.opts(true));
    assert!(r.is_clean(), "{}", describe(&r));
    f.assert_files(&[]);
}

#[test]
fn dangling_dentry() {
    let f = Fixture::populated();
    let d = f.ino_of("/d");
    f.plant(&mut |t| {
        let ghost = DentryRec {
            ino: 999_999,
            kind: FileKind::File,
        };
        t.put(&schema::dentry_key(d, b"ghost"), &schema::encode(&ghost))
    });
    let r = f.check();
    let found = only(&r, "dangling-dentry");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0].message.contains("/d/ghost"), "{}", describe(&r));
    assert!(found[0].message.contains("999999"));
    let r = f.repair_and_recheck();
    assert!(r.findings[0].repaired);
    f.assert_files(&[]);
}

#[test]
fn wrong_nlink() {
    let f = Fixture::populated();
    let big = f.ino_of("/d/big");
    let d = f.ino_of("/d");
    f.plant(&mut |t| {
        for (ino, n) in [(big, 1), (d, 7)] {
            let mut rec = schema::must_inode(t, ino)?;
            rec.nlink = n;
            schema::put_inode(t, ino, &rec)?;
        }
        Ok(())
    });
    let r = f.check();
    let found = only(&r, "wrong-nlink");
    assert_eq!(found.len(), 2, "{}", describe(&r));
    let big_f = found.iter().find(|x| x.ino == Some(big)).unwrap();
    assert!(
        big_f.message.contains("link count 1") && big_f.message.contains("make it 2"),
        "{}",
        describe(&r)
    );
    let d_f = found.iter().find(|x| x.ino == Some(d)).unwrap();
    assert_eq!(d_f.path.as_deref(), Some("/d"));
    assert!(d_f.message.contains("make it 3"), "{}", d_f.message);
    f.repair_and_recheck();
    let e = f.engine(0, true);
    assert_eq!(e.getattr(big).unwrap().nlink, 2);
    assert_eq!(e.getattr(d).unwrap().nlink, 3);
    e.shutdown().unwrap();
    drop(e);
    f.assert_files(&[]);
}

#[test]
fn missing_block_object() {
    let f = Fixture::populated();
    let blocks = big_blocks(&f);
    std::fs::remove_file(&blocks[2]).unwrap();
    // Found by the listing alone, without fetching data.
    let mut opts = f.opts(false);
    opts.verify_data = false;
    let r = f.fsck_with(&opts);
    let found = only(&r, "missing-object");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].path.as_deref() == Some("/d/big") || found[0].path.as_deref() == Some("/big-link")
    );
    let name = blocks[2]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(found[0].message.contains(&name), "{}", describe(&r));
    let r = f.repair_and_recheck();
    assert_eq!(r.stats.data_lost_bytes, BS as u64);
    // The lost block reads as zeros; the rest of the file is intact.
    f.assert_files(&["/d/big"]);
    let e = f.engine(0, true);
    let got = read_all(&e, lookup(&e, "/d/big"));
    let want = &f.files.iter().find(|x| x.0 == "/d/big").unwrap().1;
    assert!(got[2 * BS..3 * BS].iter().all(|&b| b == 0));
    assert!(got[..2 * BS] == want[..2 * BS] && got[3 * BS..] == want[3 * BS..]);
    e.shutdown().unwrap();
}

#[test]
fn corrupted_block_object() {
    let f = Fixture::populated();
    let blocks = big_blocks(&f);
    let mut bytes = std::fs::read(&blocks[1]).unwrap();
    bytes[100] ^= 0x20;
    std::fs::write(&blocks[1], &bytes).unwrap();
    // Same size: invisible to a listing, found when the data is verified.
    let mut opts = f.opts(false);
    opts.verify_data = false;
    let r = f.fsck_with(&opts);
    assert!(r.is_clean(), "{}", describe(&r));
    let r = f.check();
    let found = only(&r, "corrupt-object");
    assert_eq!(found.len(), 1);
    assert!(found[0].message.contains("crc32c"), "{}", describe(&r));
    let r = f.repair_and_recheck();
    assert_eq!(r.stats.data_lost_bytes, BS as u64);
    f.assert_files(&["/d/big"]);
}

#[test]
fn missing_pack_object() {
    let f = Fixture::populated();
    let packs = files_under(&f.objects().join("packs"));
    assert_eq!(packs.len(), 1);
    std::fs::remove_file(&packs[0]).unwrap();
    let r = f.check();
    let found = only(&r, "missing-pack");
    let mut paths: Vec<_> = found.iter().filter_map(|x| x.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/small0", "/small1", "/small2", "/small3"]);
    let r = f.repair_and_recheck();
    assert_eq!(
        r.stats.data_lost_bytes,
        (0..4).map(|i| 1000 + 3000 * i).sum::<u64>()
    );
    f.assert_files(&["/small0", "/small1", "/small2", "/small3"]);
    let e = f.engine(0, true);
    assert!(read_all(&e, lookup(&e, "/small2")).iter().all(|&b| b == 0));
    e.shutdown().unwrap();
}

#[test]
fn wrong_pack_counts() {
    let f = Fixture::populated();
    f.plant(&mut |t| {
        let (k, v) = t.scan(b"P", b"Q", 1)?.pop().unwrap();
        let mut p: PackRec = schema::decode("pack", &v)?;
        p.live_slices += 3;
        p.live_bytes -= 10;
        t.put(&k, &schema::encode(&p))
    });
    let r = f.check();
    let found = only(&r, "pack-counts");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].message.contains("7 live slice(s)"),
        "{}",
        describe(&r)
    );
    f.repair_and_recheck();
    f.assert_files(&[]);
}

#[test]
fn orphan_objects() {
    let f = Fixture::populated();
    let storage = ObjectStorage::open(&f.storage_config()).unwrap();
    let block = schema::block_key(987_654, 0, 10);
    storage
        .put(&block, spoolfs_objects::encode_block(b"0123456789"))
        .unwrap();
    let pack = schema::pack_object_key(987_655);
    storage
        .put(&pack, spoolfs_objects::encode_pack(&[(5, b"x")]).0)
        .unwrap();
    drop(storage);
    let r = f.check();
    let found = only(&r, "orphan-object");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(r.stats.orphan_objects, 2);
    assert_eq!(r.stats.orphan_bytes, 26 + 1 + 24 + 24);
    // Within the grace period they are reported and kept.
    let mut opts = f.opts(true);
    opts.orphan_grace = Duration::from_secs(3600);
    let r = f.fsck_with(&opts);
    assert_eq!(r.of_kind("orphan-object").len(), 2);
    assert!(r.findings.iter().all(|x| !x.repaired));
    assert!(found[0].message.contains("referenced by no metadata"));
    let r = f.repair_and_recheck();
    assert_eq!(r.stats.orphan_objects_deleted, 2);
    assert!(!f.objects().join(&block).exists() && !f.objects().join(&pack).exists());
    f.assert_files(&[]);
}

#[test]
fn unreachable_file_goes_to_lost_found() {
    let f = Fixture::populated();
    let ino = f.ino_of("/small1");
    f.plant(&mut |t| t.delete(&schema::dentry_key(ROOT_INO, b"small1")));
    let r = f.check();
    let unreachable = r.of_kind("unreachable-inode");
    assert_eq!(unreachable.len(), 1, "{}", describe(&r));
    assert_eq!(unreachable[0].ino, Some(ino));
    assert_eq!(r.of_kind("wrong-nlink").len(), 1, "{}", describe(&r));
    assert_eq!(r.errors(), 2, "{}", describe(&r));
    f.repair_and_recheck();
    let e = f.engine(0, true);
    let found = lookup(&e, &format!("/lost+found/#{ino}"));
    assert_eq!(found, ino);
    assert_eq!(e.getattr(ino).unwrap().nlink, 1);
    assert!(read_all(&e, ino) == f.files.iter().find(|x| x.0 == "/small1").unwrap().1);
    e.shutdown().unwrap();
}

#[test]
fn cut_off_directory_goes_to_lost_found() {
    let f = Fixture::populated();
    let d = f.ino_of("/d");
    let sub = f.ino_of("/d/sub");
    f.plant(&mut |t| t.delete(&schema::dentry_key(ROOT_INO, b"d")));
    let r = f.check();
    let mut unreachable: Vec<_> = r
        .of_kind("unreachable-inode")
        .iter()
        .map(|x| x.ino.unwrap())
        .collect();
    unreachable.sort();
    assert_eq!(unreachable, [d, sub], "{}", describe(&r));
    // The root lost a subdirectory: its link count is off by one.
    let nlink = r.of_kind("wrong-nlink");
    assert!(
        nlink.len() == 1 && nlink[0].ino == Some(ROOT_INO),
        "{}",
        describe(&r)
    );
    f.repair_and_recheck();
    let e = f.engine(0, true);
    let lf = lookup(&e, "/lost+found");
    assert_eq!(e.getattr(lf).unwrap().nlink, 3);
    assert_eq!(e.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(lookup(&e, &format!("/lost+found/#{d}/sub")), sub);
    let big = read_all(&e, lookup(&e, &format!("/lost+found/#{d}/big")));
    assert!(big == f.files.iter().find(|x| x.0 == "/d/big").unwrap().1);
    e.shutdown().unwrap();
}

/// A live slice queued for deletion (the collector would delete data a file shows) and stale
/// counters.
#[test]
fn live_slice_queued_for_deletion_and_counters() {
    let f = Fixture::populated();
    let small = f.ino_of("/small3");
    f.plant(&mut |t| {
        let seg: SliceRec =
            schema::decode("segment", &t.get(&schema::seg_key(small, 0, 0))?.unwrap())?;
        let dead = schema::DeadSlice { size: seg.size };
        t.put(&schema::dead_key(seg.id), &schema::encode(&dead))?;
        schema::add_u64(t, schema::USED_BYTES_KEY, 12345)?;
        schema::add_u64(t, schema::INODE_COUNT_KEY, 2)
    });
    let r = f.check();
    let dead = r.of_kind("dead-but-live");
    assert!(
        dead.len() == 1 && dead[0].path.as_deref() == Some("/small3"),
        "{}",
        describe(&r)
    );
    assert_eq!(dead[0].severity, Severity::Error);
    assert_eq!(r.of_kind("used-bytes").len(), 1, "{}", describe(&r));
    assert_eq!(r.of_kind("inode-count").len(), 1, "{}", describe(&r));
    assert_eq!((r.errors(), r.warnings()), (1, 2), "{}", describe(&r));
    f.repair_and_recheck();
    f.assert_files(&[]);
}

/// A `T` record whose slice is not in the staging log: its data is gone.
#[test]
fn staged_record_without_staging_data() {
    let mut f = Fixture::new();
    // No uploaders, no drain: the files stay staged and the volume is left unclean.
    let e = f.engine(0, false);
    f.write(&e, "/kept", random_bytes(3, 5000));
    f.write(&e, "/lost", random_bytes(4, 7000));
    e.shutdown().unwrap();
    drop(e);
    let record = f.record();
    let meta = f.meta();
    // Without the cache directory fsck refuses: the staged data is only there.
    let err = check_offline(meta.as_ref(), &record, None).unwrap_err();
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(err.to_string().contains("--cache-dir"), "{err}");
    drop(meta);
    let r = f.check();
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.stats.staged_slices, 2);
    // Plant: /lost's slice now has an id the staging log never saw.
    let lost = f.ino_of_staged("/lost");
    f.plant(&mut |t| {
        let key = schema::seg_key(lost, 0, 0);
        let seg: SliceRec = schema::decode("segment", &t.get(&key)?.unwrap())?;
        let tkey = schema::staged_key(seg.id);
        let staged: StagedRec = schema::decode("staged", &t.get(&tkey)?.unwrap())?;
        t.delete(&tkey)?;
        let id = seg.id + 500_000;
        t.put(&schema::staged_key(id), &schema::encode(&staged))?;
        t.put(&key, &schema::encode(&SliceRec { id, ..seg }))
    });
    let r = f.check();
    let found = only(&r, "staged-missing");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path.as_deref(), Some("/lost"));
    // The log record of the old id belongs to no staged slice now.
    assert_eq!(r.of_kind("staging-leak").len(), 1);
    // Without the staging log it cannot be checked, and is not reported.
    let mut opts = f.opts(false);
    opts.staging_dir = None;
    let r2 = f.fsck_with(&opts);
    assert!(
        r2.is_clean() && r2.stats.staged_unchecked == 2,
        "{}",
        describe(&r2)
    );
    let r = f.repair_and_recheck();
    assert_eq!(r.stats.data_lost_bytes, 7000);
    // Mounting replays and uploads the kept slice; the lost range reads as zeros.
    f.assert_files(&["/lost"]);
    let e = f.engine(0, true);
    assert!(read_all(&e, lookup(&e, "/lost")).iter().all(|&b| b == 0));
    e.shutdown().unwrap();
}

/// After a crash the metadata store may lack namespace changes only the logs hold: fsck
/// refuses (a mount's replay must apply them first), then checks clean after that mount.
#[test]
fn crashed_volume_is_refused_until_replayed() {
    let mut f = Fixture::new();
    let e = f.engine(0, false);
    f.write(&e, "/a", random_bytes(5, 3000));
    // A crash: no shutdown. The store comes back at its last checkpoint, before the last
    // logged change (the changes since are kept in memory until a checkpoint); moving its
    // log position back one more keeps it behind even if a checkpoint ran meanwhile.
    drop(e);
    f.plant(&mut |t| {
        let seq = schema::get_u64(t, spoolfs_engine::wal::APPLIED_SEQ_KEY)?;
        t.put(
            spoolfs_engine::wal::APPLIED_SEQ_KEY,
            &seq.saturating_sub(1).to_be_bytes(),
        )
    });
    let record = f.record();
    let meta = f.meta();
    let err = check_offline(meta.as_ref(), &record, Some(&f.cache())).unwrap_err();
    assert_eq!(err.errno(), libc::EBUSY);
    assert!(
        err.to_string().contains("behind its namespace log"),
        "{err}"
    );
    drop(meta);
    let e = f.engine(1, true);
    e.shutdown().unwrap();
    drop(e);
    let r = f.check();
    assert!(r.is_clean(), "{}", describe(&r));
    f.assert_files(&[]);
}

impl Fixture {
    /// `ino_of` for a volume with staged data (its engine must not upload or drain).
    fn ino_of_staged(&self, path: &str) -> Ino {
        let e = self.engine(0, false);
        let ino = lookup(&e, path);
        e.shutdown().unwrap();
        ino
    }
}
