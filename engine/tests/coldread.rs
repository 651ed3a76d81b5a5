//! Cold reads of small files: after a remount with an empty local data cache, reading many
//! small files costs about one object GET per pack they were packed in, not one per file; a
//! listing fetches the packs its files point at ahead of the reads; the fetches are bounded and
//! end with the mount. GETs are counted by the object store itself (a wrapper around the
//! local-directory store), not by the engine.

use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectStore};
use spoolfs_engine::diskcache::DiskCacheConfig;
use spoolfs_engine::packfetch::PackFetchConfig;
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use spoolfs_testkit::{Rng, checksum, random_bytes};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::Volume as Fixture;
use common::store::Intercept;

const ME: Caller = Caller::ROOT;
/// Small files written (each a slice of 200 to 4,000 bytes).
const FILES: usize = 400;
/// Pack objects of about this size: the files land in about 15 of them.
const PACK_SIZE: usize = 64 << 10;

/// GETs of data objects (packs and blocks) as the store sees them.
#[derive(Debug, Default)]
struct Counts {
    gets: AtomicU64,
    running: AtomicU64,
    peak: AtomicU64,
}

/// A store that counts the GETs of data objects and makes each take `delay`, and a GET of a
/// whole pack `whole_pack_delay` more.
#[derive(Debug)]
struct Counting {
    counts: Arc<Counts>,
    delay: Duration,
    whole_pack_delay: Duration,
}

#[async_trait::async_trait]
impl Intercept for Counting {
    const NAME: &'static str = "counting";

    async fn get_opts(
        &self,
        inner: &dyn ObjectStore,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let data =
            location.as_ref().starts_with("packs/") || location.as_ref().starts_with("chunks/");
        if !data {
            return inner.get_opts(location, options).await;
        }
        self.counts.gets.fetch_add(1, Ordering::SeqCst);
        let now = self.counts.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.peak.fetch_max(now, Ordering::SeqCst);
        let whole_pack = location.as_ref().starts_with("packs/") && options.range.is_none();
        tokio::time::sleep(if whole_pack {
            self.delay + self.whole_pack_delay
        } else {
            self.delay
        })
        .await;
        let r = inner.get_opts(location, options).await;
        self.counts.running.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

struct Mount {
    e: Arc<Engine>,
    counts: Arc<Counts>,
}

/// A writeback mount of `f` whose local data cache is `<dir>/<cache>` (a new name: a cold
/// cache), its GETs taking `delay`.
fn mount(f: &Fixture, cache: &str, delay: Duration, pack_fetch: PackFetchConfig) -> Mount {
    mount_slow_packs(f, cache, delay, Duration::ZERO, pack_fetch)
}

/// [`mount`], a GET of a whole pack taking `whole_pack_delay` more than other GETs.
fn mount_slow_packs(
    f: &Fixture,
    cache: &str,
    delay: Duration,
    whole_pack_delay: Duration,
    pack_fetch: PackFetchConfig,
) -> Mount {
    let meta = f.meta();
    let record = volume::read_record(meta.as_ref()).unwrap().unwrap();
    let settings = StagingSettings {
        pack_size: PACK_SIZE,
        // Slices written within this time share packs.
        upload_delay: Duration::from_secs(2),
        upload_threads: 2,
        ..StagingSettings::for_tests(f.dir.path().join("staging"))
    };
    let (meta, staging) = writeback::open_staging(meta, &record, &settings).unwrap();
    let counts = Arc::new(Counts::default());
    let storage = f.intercepted_storage(Counting {
        counts: counts.clone(),
        delay,
        whole_pack_delay,
    });
    let config = EngineConfig {
        staging: Some(staging),
        disk_cache: Some(DiskCacheConfig {
            dir: f.dir.path().join(cache),
            max_bytes: 1 << 30,
            free_ratio: 0.0,
            keep_large_uploads: false,
        }),
        pack_fetch,
        compaction: None,
        ..Default::default()
    };
    Mount {
        e: Engine::start(meta, storage, record, config).unwrap(),
        counts,
    }
}

/// A volume holding directory `d` with [`FILES`] small files (their names and contents) and
/// directory `big` with two 3 MiB files (block objects); all uploaded. Also the number of
/// pack objects and the size of the largest.
struct Written {
    f: Fixture,
    files: Vec<(String, Vec<u8>)>,
    packs: u64,
    pack_bytes: u64,
    largest_pack: u64,
}

fn written() -> Written {
    let f = Fixture::new();
    let m = mount(
        &f,
        "cache-writer",
        Duration::ZERO,
        PackFetchConfig::default(),
    );
    let e = &m.e;
    let d = e.mkdir(&ME, ROOT_INO, b"d", 0o755).unwrap();
    let mut files = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i:04}");
        let data = random_bytes(i as u64, 200 + (i * 997) % 3800);
        let (a, fh) = e
            .create(&ME, d.ino, name.as_bytes(), 0o644, libc::O_RDWR)
            .unwrap();
        e.write(&ME, a.ino, fh, 0, &data).unwrap();
        e.release(a.ino, fh).unwrap();
        files.push((name, data));
    }
    let big = e.mkdir(&ME, ROOT_INO, b"big", 0o755).unwrap();
    for i in 0..2u64 {
        let (a, fh) = e
            .create(
                &ME,
                big.ino,
                format!("b{i}").as_bytes(),
                0o644,
                libc::O_RDWR,
            )
            .unwrap();
        e.write(&ME, a.ino, fh, 0, &random_bytes(1000 + i, 3 << 20))
            .unwrap();
        e.release(a.ino, fh).unwrap();
    }
    assert_eq!(e.drain_uploads(Some(Duration::from_secs(60))), 0);
    m.e.shutdown().unwrap();
    drop(m);
    let packs: Vec<u64> = common::files_under(&f.objects().join("packs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert!(
        packs.len() >= 4 && packs.len() < FILES / 10,
        "{} packs for {FILES} files",
        packs.len()
    );
    Written {
        files,
        packs: packs.len() as u64,
        pack_bytes: packs.iter().sum(),
        largest_pack: *packs.iter().max().unwrap(),
        f,
    }
}

/// Reads every file of `d` (in `order`) and checks each byte.
fn read_files(e: &Engine, files: &[(String, Vec<u8>)], order: &[usize]) {
    let d = e.lookup(ROOT_INO, b"d").unwrap().ino;
    for &i in order {
        let (name, data) = &files[i];
        let ino = e.lookup(d, name.as_bytes()).unwrap().ino;
        let got = common::read_all(e, ino);
        assert_eq!(got.len(), data.len(), "size of {name}");
        assert_eq!(checksum(&got), checksum(data), "contents of {name}");
    }
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// Lists directory `dir` of the root.
fn lists(e: &Engine, dir: &[u8]) {
    lists_ino(e, e.lookup(ROOT_INO, dir).unwrap().ino);
}

fn lists_ino(e: &Engine, ino: u64) {
    let fh = e.opendir(ino).unwrap();
    assert!(e.readdir(ino, fh, 0).unwrap().len() > 2);
    e.releasedir(ino, fh).unwrap();
}

/// Reads the files in `order` on a new mount whose data cache `cache` is cold and whose GETs
/// take 2 ms (a reader weighs waiting for a pack on its way against a GET of its own by
/// their times: with GETs that take no time, which one wins is the scheduler's choice); the
/// GETs of data objects that took, and the pack fetches (none when they are off).
fn read_cold(
    w: &Written,
    cache: &str,
    pack_fetch: PackFetchConfig,
    order: &[usize],
) -> (u64, Option<PackFetchStats>) {
    let m = mount(&w.f, cache, Duration::from_millis(2), pack_fetch);
    read_files(&m.e, &w.files, order);
    let gets = m.counts.gets.load(Ordering::SeqCst);
    let st = m.e.status().pack_fetch;
    m.e.shutdown().unwrap();
    (gets, st)
}

/// Entries in the local data cache (files written).
fn cache_entries(e: &Engine) -> u64 {
    e.status().data_cache.map_or(0, |c| c.entries)
}

fn pack_stats(e: &Engine) -> PackFetchStats {
    e.status()
        .pack_fetch
        .expect("a data cache, so pack fetches")
}

/// Waits until `done` holds (or 30 s pass).
fn wait_until(done: impl FnMut() -> bool) -> bool {
    common::wait_until(Duration::from_secs(30), done)
}

#[test]
fn cold_reads_of_small_files_cost_about_one_get_per_pack() {
    let w = written();
    // Newest first: the order the read path before whole-pack fetches served worst (a GET
    // fetches a slice and the slices stored after it, none of which is read later).
    let order: Vec<usize> = (0..FILES).rev().collect();
    // Without whole-pack fetches (the read path before them): a GET per file.
    let off = PackFetchConfig {
        max_bytes: 0,
        ..Default::default()
    };
    let (gets_off, _) = read_cold(&w, "cache-off", off, &order);
    // Cold reads alone (no listing prefetch), each taking its own slice only: a read of a
    // cold slice has its pack fetched whole; the reads of its neighbours are served by it
    // (once it lands: a read meanwhile takes its own slice).
    let reads_only = PackFetchConfig {
        dir_budget_bytes: 0,
        dir_depth: 0,
        nearby_bytes: 0,
        ..Default::default()
    };
    let (gets_reads, st) = read_cold(&w, "cache-reads", reads_only, &order);
    let st = st.expect("a data cache, so pack fetches");
    // The defaults: files looked up in a row in one directory also plan the directory.
    let m = mount(
        &w.f,
        "cache-default",
        Duration::ZERO,
        PackFetchConfig::default(),
    );
    read_files(&m.e, &w.files, &order);
    let gets_default = m.counts.gets.load(Ordering::SeqCst);
    // Read again: all local.
    read_files(&m.e, &w.files, &order);
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), gets_default);
    m.e.shutdown().unwrap();
    println!(
        "{FILES} files in {} packs: {gets_off} GETs without pack fetches, {gets_reads} with \
         them, {gets_default} with the directory prefetch",
        w.packs
    );
    assert!(
        gets_off >= FILES as u64 - w.packs,
        "the old path is one GET per file in this order: {gets_off}"
    );
    // At most the first read of each pack fetches its own slice besides the pack.
    assert!(
        gets_reads <= 2 * w.packs,
        "{gets_reads} GETs for {} packs",
        w.packs
    );
    assert!(
        gets_default <= 2 * w.packs,
        "{gets_default} GETs for {} packs",
        w.packs
    );
    assert!(st.started <= w.packs && st.started >= w.packs / 2, "{st:?}");
    assert!(
        st.hits >= FILES as u64 - 2 * w.packs,
        "reads served by fetched packs: {st:?}"
    );
}

#[test]
fn a_listing_prefetches_its_files_packs() {
    let w = written();
    let m = mount(
        &w.f,
        "cache-list",
        Duration::ZERO,
        PackFetchConfig::default(),
    );
    lists(&m.e, b"d");
    assert!(
        wait_until(|| pack_stats(&m.e).bytes == w.pack_bytes),
        "every pack fetched after the listing: {:?}, {} bytes of packs",
        pack_stats(&m.e),
        w.pack_bytes
    );
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        w.packs,
        "one GET per pack"
    );
    // Listed again: planned once, nothing fetched twice.
    lists(&m.e, b"d");
    read_files(&m.e, &w.files, &shuffled(FILES, 42));
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        w.packs,
        "every read served from the local data cache"
    );
    let st = pack_stats(&m.e);
    assert_eq!(st.hits, FILES as u64, "{st:?}");
    assert_eq!(st.started, w.packs);
    // A directory of files stored as blocks, none larger than `dir_file_max_bytes`: their
    // blocks are fetched ahead too (shared libraries next to the modules that load them),
    // and then read locally.
    let blocks = 2 * ((3u64 << 20) / common::BLOCK_SIZE as u64);
    lists(&m.e, b"big");
    assert!(
        wait_until(|| m.counts.gets.load(Ordering::SeqCst) == w.packs + blocks),
        "{} GETs, {} packs and {blocks} blocks",
        m.counts.gets.load(Ordering::SeqCst),
        w.packs
    );
    read_big_files(&m.e);
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), w.packs + blocks);
    m.e.shutdown().unwrap();
    drop(m);
    // Files larger than that are not fetched ahead (readahead follows their readers).
    let small_files_only = PackFetchConfig {
        dir_file_max_bytes: 2 << 20,
        ..Default::default()
    };
    let m = mount(&w.f, "cache-large", Duration::ZERO, small_files_only);
    lists(&m.e, b"big");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), 0);
    m.e.shutdown().unwrap();
    drop(m);
    // A listing fetches at most its budget of packs.
    let small = PackFetchConfig {
        dir_budget_bytes: w.largest_pack * 2,
        dir_depth: 0,
        ..Default::default()
    };
    let m = mount(&w.f, "cache-budget", Duration::ZERO, small);
    lists(&m.e, b"d");
    wait_until(|| pack_stats(&m.e).started >= 2);
    std::thread::sleep(Duration::from_millis(300));
    let st = pack_stats(&m.e);
    assert!(
        st.started >= 2 && st.started < w.packs && st.bytes <= w.largest_pack * 2,
        "a budget of two packs' bytes: {st:?}"
    );
    m.e.shutdown().unwrap();
}

#[test]
fn a_pack_fetched_whole_serves_its_files_from_memory() {
    let w = written();
    let m = mount(
        &w.f,
        "cache-memory",
        Duration::ZERO,
        PackFetchConfig::default(),
    );
    lists(&m.e, b"d");
    // Fetched, and their files written (a fetch ends before its file is written).
    assert!(
        wait_until(|| pack_stats(&m.e).bytes == w.pack_bytes && cache_entries(&m.e) >= w.packs),
        "every pack fetched after the listing and kept on disk: {:?}, {} entries",
        pack_stats(&m.e),
        cache_entries(&m.e)
    );
    // The local data cache's files taken away: the reads that follow are served by the
    // packs kept in memory, with no GET.
    let removed = common::files_under(&w.f.dir.path().join("cache-memory"))
        .into_iter()
        .map(|p| std::fs::remove_file(p).unwrap())
        .count();
    assert!(removed as u64 >= w.packs, "{removed} cache files");
    read_files(&m.e, &w.files, &shuffled(FILES, 11));
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        w.packs,
        "every read served from memory"
    );
    assert_eq!(pack_stats(&m.e).hits, FILES as u64);
    m.e.shutdown().unwrap();
}

#[test]
fn a_listing_fetches_ahead_for_the_files_of_its_subdirectories() {
    let w = written();
    let gets = |m: &Mount| m.counts.gets.load(Ordering::SeqCst);
    // The root holds directories only: planned alone, its listing fetches nothing.
    let flat = PackFetchConfig {
        dir_depth: 0,
        ..Default::default()
    };
    let m = mount(&w.f, "cache-flat", Duration::ZERO, flat);
    lists_ino(&m.e, ROOT_INO);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gets(&m),
        0,
        "nothing fetched for a listing of directories only"
    );
    m.e.shutdown().unwrap();
    drop(m);
    // Planned with its subdirectories (the default), it fetches the packs of `d`'s files and
    // the blocks of `big`'s before either is listed or read.
    let blocks = 2 * ((3u64 << 20) / common::BLOCK_SIZE as u64);
    let m = mount(
        &w.f,
        "cache-tree",
        Duration::ZERO,
        PackFetchConfig::default(),
    );
    lists_ino(&m.e, ROOT_INO);
    assert!(
        wait_until(|| gets(&m) == w.packs + blocks),
        "{} GETs, {} packs and {blocks} blocks",
        gets(&m),
        w.packs
    );
    read_files(&m.e, &w.files, &shuffled(FILES, 11));
    read_big_files(&m.e);
    assert_eq!(gets(&m), w.packs + blocks, "every read served locally");
    assert_eq!(
        pack_stats(&m.e).dirs_planned,
        3,
        "the root, d and big, once each"
    );
    m.e.shutdown().unwrap();
}

#[test]
fn a_listing_on_a_warm_cache_reads_its_files_ahead_from_the_local_data_cache() {
    let test = "a_listing_on_a_warm_cache_reads_its_files_ahead_from_the_local_data_cache";
    let w = written();
    let blocks = 2 * ((3u64 << 20) / common::BLOCK_SIZE as u64);
    let m = mount_and_list(&w, "cache-warm");
    // Fetched, and written to the local data cache (a file is written after its GET).
    assert!(
        wait_until(|| m.counts.gets.load(Ordering::SeqCst) == w.packs + blocks
            && cache_entries(&m.e) >= w.packs + blocks),
        "the packs and blocks fetched on the cold listing and kept: {} entries",
        cache_entries(&m.e)
    );
    m.e.shutdown().unwrap();
    drop(m);
    // A new mount with the same cache, its files out of the page cache.
    let files = common::files_under(&w.f.dir.path().join("cache-warm"));
    assert!(files.len() as u64 >= w.packs + blocks, "{files:?}");
    for f in &files {
        if !spoolfs_testkit::drop_from_page_cache(f) {
            spoolfs_testkit::skip(test, "the cache's file system keeps files in memory");
            return;
        }
    }
    let m = mount_and_list(&w, "cache-warm");
    let all_in_memory = || {
        files.iter().all(|f| {
            let (resident, pages) = spoolfs_testkit::resident_pages(f);
            resident == pages
        })
    };
    assert!(
        wait_until(all_in_memory),
        "every pack and block file read ahead into the page cache"
    );
    read_files(&m.e, &w.files, &shuffled(FILES, 7));
    read_big_files(&m.e);
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), 0, "all of it local");
    // A slice served by its pack's file is a hit, not a miss of its own file as well.
    let cache = m.e.status().data_cache.expect("a local data cache");
    assert_eq!(cache.misses, 0, "{cache:?}");
    assert!(cache.hits >= FILES as u64, "{cache:?}");
    m.e.shutdown().unwrap();
}

/// A mount of `w` with the local data cache `cache` and default pack fetches, with `d` and
/// `big` listed.
fn mount_and_list(w: &Written, cache: &str) -> Mount {
    let m = mount(&w.f, cache, Duration::ZERO, PackFetchConfig::default());
    lists(&m.e, b"d");
    lists(&m.e, b"big");
    m
}

/// Reads the two large files of `big` and checks them.
fn read_big_files(e: &Engine) {
    let big = e.lookup(ROOT_INO, b"big").unwrap().ino;
    for i in 0..2u64 {
        let ino = e.lookup(big, format!("b{i}").as_bytes()).unwrap().ino;
        let got = common::read_all(e, ino);
        assert_eq!(checksum(&got), checksum(&random_bytes(1000 + i, 3 << 20)));
    }
}

/// Reads file `i` of `d` and checks it; how long that took.
fn timed_read(e: &Engine, files: &[(String, Vec<u8>)], i: usize) -> Duration {
    let began = Instant::now();
    read_files(e, files, &[i]);
    began.elapsed()
}

#[test]
fn a_cold_read_does_not_wait_behind_whole_pack_fetches() {
    let w = written();
    // One fetcher; a whole pack takes 2 s to arrive, a slice (a ranged GET) 20 ms.
    let one = PackFetchConfig {
        threads: 1,
        ..Default::default()
    };
    let m = mount_slow_packs(
        &w.f,
        "cache-busy",
        Duration::from_millis(20),
        Duration::from_secs(2),
        one,
    );
    // The listing queues every pack of `d`; the fetcher is busy with the first for 2 s.
    lists(&m.e, b"d");
    assert!(wait_until(|| m.counts.running.load(Ordering::SeqCst) == 1));
    // A file whose pack is queued behind it, or being fetched: read in a round trip or
    // two, not after the packs ahead of it and its own.
    let middle = FILES / 2;
    let took = timed_read(&m.e, &w.files, middle);
    assert!(
        took < Duration::from_secs(1),
        "a read of a slice whose pack is on its way took {took:?}"
    );
    assert!(pack_stats(&m.e).started <= 1, "{:?}", pack_stats(&m.e));
    // Its neighbours in the pack, before and after it, came with it.
    let gets = m.counts.gets.load(Ordering::SeqCst);
    for i in [middle - 1, middle + 1, middle - 3, middle + 3] {
        let took = timed_read(&m.e, &w.files, i);
        assert!(took < Duration::from_secs(1), "file {i}: {took:?}");
    }
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        gets,
        "the neighbours were read locally"
    );
    // The packs still arrive whole, and serve the rest.
    assert!(
        wait_until(|| pack_stats(&m.e).started >= 2),
        "{:?}",
        pack_stats(&m.e)
    );
    m.e.shutdown().unwrap();
}

#[test]
fn pack_fetches_are_bounded_and_end_with_the_mount() {
    let w = written();
    let bounded = PackFetchConfig {
        threads: 2,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let m = mount(&w.f, "cache-slow", Duration::from_millis(150), bounded);
    lists(&m.e, b"d");
    assert!(wait_until(|| pack_stats(&m.e).started >= 2));
    let st = pack_stats(&m.e);
    m.e.shutdown().unwrap();
    let at_stop = m.counts.gets.load(Ordering::SeqCst);
    assert!(
        at_stop < w.packs,
        "the shutdown cut the queue short: {at_stop} of {} packs",
        w.packs
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        at_stop,
        "nothing fetched after the shutdown"
    );
    assert_eq!(m.counts.running.load(Ordering::SeqCst), 0);
    assert!(m.counts.peak.load(Ordering::SeqCst) <= 2, "two fetchers");
    assert!(st.peak_concurrent <= 2, "{st:?}");
    assert!(
        st.peak_bytes_in_flight <= 2 * w.largest_pack,
        "at most one pack per fetcher in memory: {st:?}"
    );
}

/// A sequential read of a cold large file queues its next blocks for the readahead
/// fetchers; a shutdown waits for the fetches in flight and drops the rest: no GET and no
/// cache file after it returns.
#[test]
fn readahead_ends_with_the_mount() {
    let w = written();
    let cache = "cache-readahead";
    let m = mount(
        &w.f,
        cache,
        Duration::from_millis(100),
        PackFetchConfig::default(),
    );
    let big = m.e.lookup(ROOT_INO, b"big").unwrap().ino;
    let b0 = m.e.lookup(big, b"b0").unwrap().ino;
    let fh = m.e.open(&ME, b0, libc::O_RDONLY).unwrap();
    let block = common::BLOCK_SIZE as u64;
    let want = random_bytes(1000, 3 << 20);
    for i in 0..2 {
        // Two reads in a row make a stream: the blocks after them are queued.
        let got = m.e.read(b0, fh, i * block, block as u32).unwrap();
        assert!(got == want[(i * block) as usize..((i + 1) * block) as usize]);
    }
    m.e.release(b0, fh).unwrap();
    assert!(wait_until(|| m.counts.running.load(Ordering::SeqCst) > 0));
    m.e.shutdown().unwrap();
    let at_stop = m.counts.gets.load(Ordering::SeqCst);
    let blocks = (3 << 20) / block;
    assert!(
        at_stop < blocks,
        "the shutdown cut the readahead short: {at_stop} GETs for {blocks} blocks"
    );
    assert_eq!(
        m.counts.running.load(Ordering::SeqCst),
        0,
        "a GET still running"
    );
    let files = common::count_files(&w.f.dir.path().join(cache));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        m.counts.gets.load(Ordering::SeqCst),
        at_stop,
        "fetched after the shutdown"
    );
    assert_eq!(
        common::count_files(&w.f.dir.path().join(cache)),
        files,
        "cache files written after the shutdown"
    );
}

#[test]
fn warmup_fetches_whole_packs_and_blocks_in_parallel() {
    let w = written();
    let slow = Duration::from_millis(20);
    let m = mount(&w.f, "cache-warm", slow, PackFetchConfig::default());
    let mut seen = 0;
    let r = m.e.warm(b"/d", 4, &mut |_| seen += 1).unwrap();
    assert_eq!(r.files, FILES as u64);
    assert_eq!((r.total_bytes, r.done_bytes), (w.pack_bytes, w.pack_bytes));
    assert_eq!((r.fetched_bytes, r.errors), (w.pack_bytes, 0));
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), w.packs);
    assert!(
        m.counts.peak.load(Ordering::SeqCst) >= 2,
        "fetches in parallel"
    );
    assert!(seen >= 1, "progress reported");
    read_files(&m.e, &w.files, &shuffled(FILES, 7));
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), w.packs, "all local");
    // The whole volume: the large files' blocks too; the packs are cached already.
    let blocks = 2 * ((3u64 << 20) / common::BLOCK_SIZE as u64);
    let r = m.e.warm(b"", 4, &mut |_| {}).unwrap();
    assert_eq!(r.files, FILES as u64 + 2);
    assert_eq!(r.fetched_bytes, 2 * (3 << 20));
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), w.packs + blocks);
    let again = m.e.warm(b"", 4, &mut |_| {}).unwrap();
    assert_eq!(again.fetched_bytes, 0);
    assert_eq!(m.counts.gets.load(Ordering::SeqCst), w.packs + blocks);
    assert_eq!(
        m.e.warm(b"/nope", 4, &mut |_| {}).unwrap_err().errno(),
        libc::ENOENT
    );
    m.e.shutdown().unwrap();
}
