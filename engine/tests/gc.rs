//! Space reclamation without FUSE: pack compaction, the orphan sweep, and both running while
//! writers create, overwrite and delete files.

use spoolfs_engine::gc::{CompactionSettings, GcOptions, GcReport};
use spoolfs_engine::schema::{self, PackRec, PackedRec};
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

mod common;
use common::{Volume as Fixture, files_under, read_all};
use spoolfs_testkit::random_bytes;

const ME: Caller = Caller::ROOT;
/// Small packs, so a few hundred small files make many of them.
const PACK_SIZE: usize = 64 << 10;

impl Fixture {
    /// A writeback engine with `uploaders` uploader threads and small packs; no background
    /// compactor (the tests run compaction themselves).
    fn engine(&self, uploaders: usize) -> Arc<Engine> {
        self.engine_with(uploaders, None)
    }

    fn engine_with(&self, uploaders: usize, compaction: Option<CompactionSettings>) -> Arc<Engine> {
        let settings = StagingSettings {
            engine_threads: 1,
            segment_size: 4 << 20,
            upload_threads: uploaders,
            pack_size: PACK_SIZE,
            ..StagingSettings::for_tests(self.dir.path().join("cache"))
        };
        let config = EngineConfig {
            compaction,
            ..Default::default()
        };
        self.start_engine(Some(&settings), config)
    }

    /// Pack object files: id → size.
    fn pack_files(&self) -> BTreeMap<u64, u64> {
        files_under(&self.objects().join("packs"))
            .into_iter()
            .map(|p| {
                let id = p
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .strip_suffix(".pack")
                    .unwrap()
                    .parse()
                    .unwrap();
                (id, std::fs::metadata(&p).unwrap().len())
            })
            .collect()
    }

    /// With the engine stopped: every `L` record belongs to a slice some file still uses (or
    /// one waiting for the collector) and points at a pack that has a `P` record and an
    /// object, and every `P` record's counts are exactly what its `L` records add up to.
    /// Returns the number of live packed slices.
    fn check_pack_records(&self) -> usize {
        let meta = self.meta();
        let mut packs: BTreeMap<u64, PackRec> = BTreeMap::new();
        let mut slices: Vec<(u64, PackedRec)> = Vec::new();
        let mut live: BTreeSet<u64> = BTreeSet::new();
        meta.view(&mut |r| {
            for (_, v) in r.scan(b"C", b"D", usize::MAX)? {
                live.insert(schema::decode::<schema::SliceRec>("segment", &v)?.id);
            }
            for (k, _) in r.scan(b"G", b"H", usize::MAX)? {
                live.insert(u64::from_be_bytes(k[1..9].try_into().unwrap()));
            }
            for (k, v) in r.scan(b"P", b"Q", usize::MAX)? {
                let id = u64::from_be_bytes(k[1..9].try_into().unwrap());
                packs.insert(id, schema::decode("pack", &v)?);
            }
            for (k, v) in r.scan(b"L", b"M", usize::MAX)? {
                let id = u64::from_be_bytes(k[1..9].try_into().unwrap());
                slices.push((id, schema::decode("packed", &v)?));
            }
            Ok(())
        })
        .unwrap();
        let files = self.pack_files();
        let mut sums: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
        for (slice, l) in &slices {
            assert!(
                live.contains(slice),
                "slice {slice} is in no file but still has a pack location"
            );
            assert!(
                packs.contains_key(&l.pack),
                "slice {slice} points at pack {} which has no record",
                l.pack
            );
            assert!(
                files.contains_key(&l.pack),
                "slice {slice} points at pack {} whose object is gone",
                l.pack
            );
            let s = sums.entry(l.pack).or_default();
            s.0 += 1;
            s.1 += l.len as u64;
        }
        for (id, p) in &packs {
            assert_eq!(
                sums.get(id).copied().unwrap_or_default(),
                (p.live_slices, p.live_bytes),
                "counts of pack {id}"
            );
            assert_eq!(files.get(id), Some(&p.size), "object of pack {id}");
        }
        slices.len()
    }
}

fn write_file(e: &Engine, name: &str, data: &[u8]) -> Ino {
    let (ino, fh) = match e.lookup(ROOT_INO, name.as_bytes()) {
        Ok(a) => {
            let fh = e.open(&ME, a.ino, libc::O_RDWR).unwrap();
            e.setattr(
                &ME,
                a.ino,
                &SetAttr {
                    size: Some(0),
                    fh: Some(fh),
                    ..Default::default()
                },
            )
            .unwrap();
            (a.ino, fh)
        }
        Err(_) => {
            let (a, fh) = e
                .create(&ME, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
                .unwrap();
            (a.ino, fh)
        }
    };
    e.write(&ME, ino, fh, 0, data).unwrap();
    e.flush(ino, fh).unwrap();
    e.release(ino, fh).unwrap();
    ino
}

/// Writes files `f0`, `f1`, … (`n` of them, file `i` of `len(i)` bytes); returns name →
/// contents.
fn write_files(e: &Engine, n: u64, len: impl Fn(u64) -> usize) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            let data = random_bytes(i, len(i));
            let name = format!("f{i}");
            write_file(e, &name, &data);
            (name, data)
        })
        .collect()
}

/// [`write_files`] on an engine with no uploader, stopped afterwards: everything is staged,
/// and the next engine uploads it in one go (full packs).
fn stage_files(f: &Fixture, n: u64, len: impl Fn(u64) -> usize) -> BTreeMap<String, Vec<u8>> {
    let e = f.engine(0);
    let model = write_files(&e, n, len);
    drop(e);
    model
}

fn read_file(e: &Engine, name: &str) -> Vec<u8> {
    read_all(e, e.lookup(ROOT_INO, name.as_bytes()).unwrap().ino)
}

fn gc(e: &Engine, opts: GcOptions) -> GcReport {
    e.run_gc(&opts, &mut |_, _, _| {}).unwrap()
}

fn compact_only(threshold: f64) -> GcOptions {
    GcOptions {
        sweep: false,
        compact: true,
        threshold,
        ..Default::default()
    }
}

/// Bytes of every object in the store.
fn object_bytes(f: &Fixture) -> u64 {
    files_under(&f.objects())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn gc_reports_the_object_bytes_of_the_dead_slices_it_deletes() {
    let f = Fixture::new();
    let e = f.engine(1);
    // Small files share packs; a 3 MiB file is stored as block objects of its own.
    let mut model = write_files(&e, 40, |i| 700 + i as usize * 13);
    write_file(&e, "big", &random_bytes(99, 3 << 20));
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    let before = object_bytes(&f);
    // Every small file and the big one die: whole packs and the block objects can go.
    for name in model.keys() {
        e.unlink(&ME, ROOT_INO, name.as_bytes()).unwrap();
    }
    model.clear();
    e.unlink(&ME, ROOT_INO, b"big").unwrap();
    let report = gc(
        &e,
        GcOptions {
            sweep: false,
            compact: false,
            ..Default::default()
        },
    );
    let after = object_bytes(&f);
    assert!(report.dead_slices_collected >= 41, "{report:?}");
    assert!(report.dead_object_bytes > 3 << 20, "{report:?}");
    assert_eq!(before - after, report.dead_object_bytes, "{report:?}");
    assert_eq!(
        report.bytes_reclaimed, report.dead_object_bytes,
        "{report:?}"
    );
}

#[test]
fn compaction_rewrites_sparse_packs_and_every_live_file_reads_back() {
    let f = Fixture::new();
    let mut model = stage_files(&f, 300, |i| 500 + (i as usize * 131) % 4000);
    let e = f.engine(1);
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    let packs_before = f.pack_files();
    assert!(packs_before.len() >= 8, "{} packs", packs_before.len());
    // Delete four files in five and overwrite a few of the rest: their old slices die.
    for i in 0..300u64 {
        let name = format!("f{i}");
        if i % 5 != 0 {
            e.unlink(&ME, ROOT_INO, name.as_bytes()).unwrap();
            model.remove(&name);
        } else if i % 3 == 0 {
            let data = random_bytes(1000 + i, 700);
            write_file(&e, &name, &data);
            model.insert(name, data);
        }
    }
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    e.collect_garbage(usize::MAX).unwrap();
    let usage = e.pack_usage().unwrap();
    assert!(usage.mismatches.is_empty(), "{:?}", usage.mismatches);
    assert_eq!(usage.live_bytes, usage.packed_bytes);
    assert!(usage.dead_bytes > usage.live_bytes, "{usage:?}");
    let before = f.pack_files();
    let bytes_before: u64 = before.values().sum();

    // A dry run changes nothing.
    let dry = gc(
        &e,
        GcOptions {
            dry_run: true,
            ..compact_only(0.5)
        },
    );
    assert!(
        dry.packs_to_compact > 0 && dry.packs_compacted == 0,
        "{dry:?}"
    );
    assert_eq!(f.pack_files(), before);

    let report = gc(&e, compact_only(0.5));
    eprintln!("{report:#?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.packs_compacted, report.packs_to_compact);
    assert!(report.packs_compacted >= 4, "{report:?}");
    assert!(report.packs_written >= 1);
    let after = f.pack_files();
    let gone: Vec<u64> = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .copied()
        .collect();
    assert_eq!(
        gone.len() as u64,
        report.packs_compacted,
        "old pack objects gone"
    );
    let bytes_after: u64 = after.values().sum();
    assert!(
        bytes_after < bytes_before / 2,
        "{bytes_before} -> {bytes_after}"
    );
    assert_eq!(bytes_before - bytes_after, report.bytes_reclaimed);
    let usage = e.pack_usage().unwrap();
    assert!(usage.mismatches.is_empty(), "{:?}", usage.mismatches);
    assert_eq!(usage.live_bytes, usage.packed_bytes);
    assert_eq!(usage.pack_bytes, bytes_after);
    // A second run finds nothing below the threshold.
    let again = gc(&e, compact_only(0.5));
    assert_eq!(again.packs_compacted, 0, "{again:?}");

    for (name, data) in &model {
        assert_eq!(&read_file(&e, name), data, "{name}");
    }
    e.shutdown().unwrap();
    drop(e);
    assert!(f.check_pack_records() > 0);
    // Remount: everything still reads back, from the new packs.
    let e = f.engine(1);
    for (name, data) in &model {
        assert_eq!(&read_file(&e, name), data, "{name} after remount");
    }
    // Deleting the rest empties the compacted packs too.
    for name in model.keys() {
        e.unlink(&ME, ROOT_INO, name.as_bytes()).unwrap();
    }
    e.collect_garbage(usize::MAX).unwrap();
    assert!(f.pack_files().is_empty(), "{:?}", f.pack_files());
    e.shutdown().unwrap();
}

/// The background compactor rewrites sparse packs by itself once they hold enough dead bytes,
/// and leaves a volume with too few alone.
#[test]
fn background_compactor_rewrites_sparse_packs() {
    let f = Fixture::new();
    let mut model = stage_files(&f, 200, |i| 1000 + (i as usize * 37) % 3000);
    let settings = |min_dead_bytes| CompactionSettings {
        threshold: 0.5,
        min_dead_bytes,
        interval: Duration::from_millis(100),
    };
    // Too few dead bytes for this compactor: nothing happens.
    let e = f.engine_with(1, Some(settings(1 << 30)));
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    for i in 0..200u64 {
        if i % 4 != 0 {
            let name = format!("f{i}");
            e.unlink(&ME, ROOT_INO, name.as_bytes()).unwrap();
            model.remove(&name);
        }
    }
    e.collect_garbage(usize::MAX).unwrap();
    let sparse = f.pack_files();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        f.pack_files(),
        sparse,
        "compacted below its dead-bytes threshold"
    );
    let dead = e.pack_usage().unwrap().dead_bytes;
    assert!(dead > 100_000, "{dead} dead bytes");
    e.shutdown().unwrap();
    drop(e);
    // A compactor that runs at 64 KiB of dead bytes does the work within a few intervals.
    let e = f.engine_with(1, Some(settings(64 << 10)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let u = e.pack_usage().unwrap();
        if u.dead_bytes < dead / 4 {
            assert!(u.mismatches.is_empty(), "{:?}", u.mismatches);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background compactor did not run: {u:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = f.pack_files();
    assert!(
        now.len() < sparse.len(),
        "{} -> {} packs",
        sparse.len(),
        now.len()
    );
    for (name, data) in &model {
        assert_eq!(&read_file(&e, name), data, "{name}");
    }
    e.shutdown().unwrap();
    drop(e);
    f.check_pack_records();
}

fn set_age(path: &Path, age: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn orphan_sweep_deletes_old_unreferenced_objects_only() {
    let f = Fixture::new();
    let e = f.engine(1);
    let small = random_bytes(1, 3000);
    let large = random_bytes(2, 2 << 20); // larger than a packable slice: block objects
    write_file(&e, "small", &small);
    write_file(&e, "large", &large);
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    let mut referenced = files_under(&f.objects().join("chunks"));
    referenced.extend(files_under(&f.objects().join("packs")));
    assert!(referenced.len() >= 2, "{referenced:?}");
    // Referenced objects, however old, stay.
    for p in &referenced {
        set_age(p, Duration::from_secs(3 * 3600));
    }
    // Orphans: a block of a slice nobody knows and a pack nobody records, two hours old; and
    // a young block (an upload whose commit may still be on its way).
    let objects = f.objects();
    let plant = |key: &str, age: Option<Duration>| {
        let path = objects.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        if let Some(age) = age {
            set_age(&path, age);
        }
        path
    };
    let old_block = plant(
        &schema::block_key(1 << 40, 0, 1000),
        Some(Duration::from_secs(7200)),
    );
    let old_pack = plant(
        &schema::pack_object_key((1 << 40) + 1),
        Some(Duration::from_secs(7200)),
    );
    let young_block = plant(&schema::block_key((1 << 40) + 2, 0, 1000), None);
    let stranger = plant("chunks/notes.txt", Some(Duration::from_secs(7200)));

    let sweep = GcOptions::default();
    assert_eq!(sweep.min_age, Duration::from_secs(3600));
    let dry = gc(
        &e,
        GcOptions {
            dry_run: true,
            ..sweep.clone()
        },
    );
    assert_eq!(
        (
            dry.orphans_found,
            dry.orphan_bytes,
            dry.orphans_deleted,
            dry.young_unreferenced,
            dry.unknown_objects
        ),
        (2, 2000, 0, 1, 1),
        "{dry:?}"
    );
    assert!(old_block.exists() && old_pack.exists());

    let report = gc(&e, sweep);
    assert_eq!(
        (
            report.orphans_found,
            report.orphans_deleted,
            report.orphan_bytes_deleted,
            report.young_unreferenced
        ),
        (2, 2, 2000, 1),
        "{report:?}"
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!old_block.exists() && !old_pack.exists());
    assert!(young_block.exists() && stranger.exists());
    for p in &referenced {
        assert!(p.exists(), "referenced object {} deleted", p.display());
    }
    assert_eq!(read_file(&e, "small"), small);
    assert_eq!(read_file(&e, "large"), large);
    e.shutdown().unwrap();
}

/// Writers create, overwrite and delete files while compaction (with a threshold that
/// rewrites almost every pack), the orphan sweep and the dead-slice collector run over and
/// over in other threads. Every file reads back as the model says, during and after, and no
/// live slice points at a deleted pack.
#[test]
fn compaction_and_gc_under_concurrent_writes_and_deletes() {
    let f = Fixture::new();
    let e = f.engine(2);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = 3u64;
    let rounds = 250u64;
    let mut models: Vec<HashMap<String, Vec<u8>>> = Vec::new();
    let mut reports: Vec<GcReport> = Vec::new();
    std::thread::scope(|s| {
        let compactor = {
            let e = e.clone();
            let stop = stop.clone();
            s.spawn(move || {
                let mut reports = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let r = gc(
                        &e,
                        GcOptions {
                            sweep: true,
                            compact: true,
                            threshold: 0.95,
                            min_age: Duration::from_secs(2),
                            dry_run: false,
                        },
                    );
                    assert!(r.errors.is_empty(), "{:?}", r.errors);
                    reports.push(r);
                    std::thread::sleep(Duration::from_millis(20));
                }
                reports
            })
        };
        let collector = {
            let e = e.clone();
            let stop = stop.clone();
            s.spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    e.collect_garbage(usize::MAX).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let e = e.clone();
                s.spawn(move || {
                    let mut model: HashMap<String, Vec<u8>> = HashMap::new();
                    let mut x = w + 1;
                    for round in 0..rounds {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let r = x >> 33;
                        let name = format!("w{w}-{}", r % 40);
                        match r % 10 {
                            0..=5 => {
                                let len = 200 + (r as usize % 6000);
                                let data = random_bytes(w * 1_000_000 + round, len);
                                write_file(&e, &name, &data);
                                model.insert(name, data);
                            }
                            6 | 7 => {
                                if model.remove(&name).is_some() {
                                    e.unlink(&ME, ROOT_INO, name.as_bytes()).unwrap();
                                }
                            }
                            _ => {
                                if let Some(data) = model.get(&name) {
                                    assert_eq!(&read_file(&e, &name), data, "{name} mid-run");
                                }
                            }
                        }
                        if round % 50 == 49 {
                            // Let the uploaders catch up so packs exist to compact.
                            e.drain_uploads(Some(Duration::from_secs(30)));
                        }
                    }
                    model
                })
            })
            .collect();
        for h in handles {
            models.push(h.join().unwrap());
        }
        stop.store(true, Ordering::Release);
        collector.join().unwrap();
        reports = compactor.join().unwrap();
    });
    let compacted: u64 = reports.iter().map(|r| r.packs_compacted).sum();
    eprintln!(
        "{} gc runs, {compacted} packs compacted, {} slices moved",
        reports.len(),
        reports.iter().map(|r| r.slices_moved).sum::<u64>()
    );
    assert!(compacted > 0, "compaction never ran: {reports:?}");
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    let last = gc(
        &e,
        GcOptions {
            compact: true,
            threshold: 0.95,
            min_age: Duration::ZERO,
            ..Default::default()
        },
    );
    assert!(last.errors.is_empty(), "{:?}", last.errors);
    let usage = e.pack_usage().unwrap();
    assert!(usage.mismatches.is_empty(), "{:?}", usage.mismatches);
    let model: BTreeMap<String, Vec<u8>> = models.into_iter().flatten().collect();
    assert!(!model.is_empty());
    for (name, data) in &model {
        assert_eq!(&read_file(&e, name), data, "{name}");
    }
    // Nothing else is left in the root directory.
    let names: BTreeSet<String> = e
        .readdir(ROOT_INO, e.opendir(ROOT_INO).unwrap(), 0)
        .unwrap()
        .into_iter()
        .map(|d| String::from_utf8(d.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names, model.keys().cloned().collect());
    e.shutdown().unwrap();
    drop(e);
    f.check_pack_records();
    let e = f.engine(1);
    for (name, data) in &model {
        assert_eq!(&read_file(&e, name), data, "{name} after remount");
    }
    e.shutdown().unwrap();
}

/// An object store that stops the first ranged GET of a pack object until the test lets it
/// go: a reader that has read a slice's location, then finds its pack compacted away.
mod gated {
    use crate::common::store::Intercept;
    use object_store::path::Path;
    use object_store::{GetOptions, GetResult, ObjectStore, Result};
    use std::sync::{Arc, Condvar, Mutex};

    #[derive(Default, Debug)]
    pub struct GateState {
        pub armed: bool,
        pub arrived: bool,
        pub open: bool,
        /// What the stopped GET finally got: Ok, or the error's text.
        pub outcome: Option<std::result::Result<(), String>>,
    }

    #[derive(Debug)]
    pub struct Gated {
        pub state: Arc<(Mutex<GateState>, Condvar)>,
    }

    #[async_trait::async_trait]
    impl Intercept for Gated {
        const NAME: &'static str = "gated";

        async fn get_opts(
            &self,
            inner: &dyn ObjectStore,
            location: &Path,
            options: GetOptions,
        ) -> Result<GetResult> {
            let gated = {
                let (lock, cv) = &*self.state;
                let mut st = lock.lock().unwrap();
                let hit =
                    st.armed && options.range.is_some() && location.as_ref().starts_with("packs/");
                if hit {
                    st.armed = false;
                    st.arrived = true;
                    cv.notify_all();
                    while !st.open {
                        st = cv.wait(st).unwrap();
                    }
                }
                hit
            };
            let result = inner.get_opts(location, options).await;
            if gated {
                let (lock, cv) = &*self.state;
                lock.lock().unwrap().outcome = Some(match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                });
                cv.notify_all();
            }
            result
        }
    }
}

/// A reader reads a packed slice's location, then compaction moves the slice and deletes the
/// old pack before the reader's GET: the GET finds nothing, the reader reads the location
/// again and gets the bytes from the new pack (not EIO).
#[test]
fn a_reader_racing_a_compaction_follows_the_slice_to_its_new_pack() {
    let f = Fixture::new();
    let e = f.engine(0);
    for i in 0..60u64 {
        write_file(&e, &format!("f{i}"), &random_bytes(i, 2000));
    }
    drop(e);
    let e = f.engine(1);
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    for i in 1..60u64 {
        e.unlink(&ME, ROOT_INO, format!("f{i}").as_bytes()).unwrap();
    }
    e.shutdown().unwrap();
    drop(e);

    // The same volume through the gated store; nothing of f0 is cached.
    let state = Arc::new((
        std::sync::Mutex::new(gated::GateState::default()),
        std::sync::Condvar::new(),
    ));
    let storage = f.intercepted_storage(gated::Gated {
        state: state.clone(),
    });
    let meta = f.meta();
    let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
    let config = EngineConfig {
        compaction: None,
        ..Default::default()
    };
    let e = Engine::start(meta, storage, record, config).unwrap();
    let ino = e.lookup(ROOT_INO, b"f0").unwrap().ino;
    state.0.lock().unwrap().armed = true;
    let reader = {
        let e = e.clone();
        std::thread::spawn(move || {
            let fh = e.open(&ME, ino, libc::O_RDONLY).unwrap();
            let got = e.read(ino, fh, 0, 4096);
            e.release(ino, fh).unwrap();
            got
        })
    };
    {
        let (lock, cv) = &*state;
        let mut st = lock.lock().unwrap();
        while !st.arrived {
            st = cv.wait(st).unwrap();
        }
    }
    // The reader holds f0's old location and waits in its GET: compact under it.
    let report = gc(&e, compact_only(0.99));
    assert!(report.packs_compacted >= 1, "{report:?}");
    {
        let (lock, cv) = &*state;
        lock.lock().unwrap().open = true;
        cv.notify_all();
    }
    let got = reader.join().unwrap();
    let outcome = state.0.lock().unwrap().outcome.clone();
    assert!(
        matches!(&outcome, Some(Err(msg)) if msg.to_lowercase().contains("not found")),
        "the reader's GET should have found the old pack gone: {outcome:?}"
    );
    assert_eq!(got.unwrap(), random_bytes(0, 2000));
    e.shutdown().unwrap();
    drop(e);
    f.check_pack_records();
}
