//! Space reclamation: dead slices ([`dead`]), the orphan sweep and pack compaction
//! (`spoolfs gc`, and a background compactor in every mount).
//!
//! - **Compaction** rewrites pack objects whose live fraction (`live_bytes / size` of their `P`
//!   record) is below a threshold: the live slices (the `L` records that point into the pack)
//!   are read with ranged GETs, written into a new pack object, and then one durable metadata
//!   transaction re-points every `L` record that still points at the old pack, creates the new
//!   `P` record with exact counts and deletes the old one. Only after that commit is the old
//!   object deleted. A slice that died meanwhile has no `L` record any more and is skipped; a
//!   pack whose counts disagree with its `L` records is left alone. No inode locks are needed:
//!   like an upload commit, the transaction re-checks everything it relies on, and the garbage
//!   collector's transaction decrements whichever pack an `L` record names when it runs.
//! - **The orphan sweep** lists the volume's `chunks/` and `packs/` objects and deletes those
//!   no metadata refers to and that are older than a grace period (`min_age`), so an upload
//!   whose commit has not happened yet is never touched.

use crate::error::{FsError, Result};
use crate::ids::IdAllocator;
use crate::meta::Meta;
use crate::reader::{Counters, ObjectReader};
use crate::schema::{self, PackRec, PackedRec, SliceRec};
use crate::stop::StopSignal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use spoolfs_metadata::KvTxn;
use spoolfs_metadata::{Durability, KvRead, MetaError, prefix_end};
use spoolfs_objects::ObjectStorage;
use spoolfs_objects::{ObjectKey, PackEntry, StorageError};
use spoolfs_uploader::Uploader;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// Default live fraction below which a pack is rewritten.
pub const DEFAULT_COMPACT_THRESHOLD: f64 = 0.5;
/// Default age below which an unreferenced object is left alone (an upload may be in flight).
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);
/// Bytes of a pack's index entry and of its footer (see `objects/src/pack.rs`).
const PACK_ENTRY_LEN: u64 = 24;
const PACK_FOOTER_LEN: u64 = 24;

/// What one `spoolfs gc` run does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcOptions {
    /// Delete objects no metadata refers to.
    pub sweep: bool,
    /// Rewrite packs whose live fraction is below `threshold`.
    pub compact: bool,
    pub threshold: f64,
    /// Unreferenced objects younger than this are left alone.
    pub min_age: Duration,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            sweep: true,
            compact: false,
            threshold: DEFAULT_COMPACT_THRESHOLD,
            min_age: DEFAULT_MIN_AGE,
            dry_run: false,
        }
    }
}

/// What a garbage collection run found and did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Dead slices whose objects were deleted first (the `G` records).
    pub dead_slices_collected: u64,
    /// Bytes of the objects deleted for them (block objects, packs left with no live slice).
    #[serde(default)]
    pub dead_object_bytes: u64,
    /// Objects below `chunks/` and `packs/`.
    pub objects_listed: u64,
    /// Objects no metadata refers to, older than the grace period.
    pub orphans_found: u64,
    pub orphan_bytes: u64,
    pub orphans_deleted: u64,
    pub orphan_bytes_deleted: u64,
    /// Unreferenced objects left alone because they are younger than the grace period.
    pub young_unreferenced: u64,
    /// Objects whose key is not one spoolfs writes (left alone).
    pub unknown_objects: u64,
    /// Pack records before compaction, their bytes, and the bytes of dead slices in them.
    pub packs: u64,
    pub pack_bytes: u64,
    pub pack_dead_bytes: u64,
    /// Packs below the threshold.
    pub packs_to_compact: u64,
    /// Packs rewritten (their old objects are gone) and new packs written.
    pub packs_compacted: u64,
    pub packs_written: u64,
    pub slices_moved: u64,
    pub bytes_moved: u64,
    /// Object bytes freed: the objects of dead slices, old packs minus new packs, plus orphans
    /// deleted (estimated in a dry run, which counts no dead-slice objects).
    pub bytes_reclaimed: u64,
    /// Problems that did not stop the run (a pack left alone, an object that could not be
    /// deleted).
    pub errors: Vec<String>,
}

/// The pack accounting of a volume: the `P` records, and what their `L` records say.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PackUsage {
    pub packs: u64,
    /// Sum of the pack objects' sizes.
    pub pack_bytes: u64,
    /// Sums of the `P` records' counts.
    pub live_slices: u64,
    pub live_bytes: u64,
    /// What the `L` records add up to.
    pub packed_slices: u64,
    pub packed_bytes: u64,
    /// Bytes a rewrite of every pack would free (dead slices and their index entries).
    pub dead_bytes: u64,
    /// Disagreements: a `P` record whose counts differ from its `L` records, an `L` record
    /// whose pack has no `P` record.
    pub mismatches: Vec<String>,
}

/// When the background compactor runs.
#[derive(Clone, Debug)]
pub struct CompactionSettings {
    /// Rewrite packs whose live fraction is below this.
    pub threshold: f64,
    /// Run only when the packs hold at least this many dead bytes.
    pub min_dead_bytes: u64,
    /// How often to look (at most one run per interval).
    pub interval: Duration,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        CompactionSettings {
            threshold: DEFAULT_COMPACT_THRESHOLD,
            min_dead_bytes: 64 << 20,
            interval: Duration::from_secs(60),
        }
    }
}

/// Bytes a rewrite of this pack would free.
fn reclaimable(p: &PackRec) -> u64 {
    let needed = if p.live_slices == 0 {
        0
    } else {
        p.live_bytes + p.live_slices as u64 * PACK_ENTRY_LEN + PACK_FOOTER_LEN
    };
    p.size.saturating_sub(needed)
}

fn is_candidate(p: &PackRec, threshold: f64) -> bool {
    reclaimable(p) > 0 && (p.live_bytes as f64) < threshold * p.size as f64
}

/// Slices and their `L` records.
type Located = Vec<(u64, PackedRec)>;

/// The `P` records and, per pack, the `L` records pointing into it: one consistent view.
struct PackSnapshot {
    packs: BTreeMap<u64, PackRec>,
    slices: HashMap<u64, Located>,
}

fn read_packs(r: &dyn KvRead) -> Result<PackSnapshot, MetaError> {
    let mut packs = BTreeMap::new();
    for (k, v) in r.scan(b"P", &prefix_end(b"P"), usize::MAX)? {
        let id = schema::key_id("pack", &k)?;
        packs.insert(id, schema::decode::<PackRec>("pack", &v)?);
    }
    let mut slices: HashMap<u64, Located> = HashMap::new();
    for (k, v) in r.scan(b"L", &prefix_end(b"L"), usize::MAX)? {
        let id = schema::key_id("packed slice", &k)?;
        let p: PackedRec = schema::decode("packed slice", &v)?;
        slices.entry(p.pack).or_default().push((id, p));
    }
    for list in slices.values_mut() {
        list.sort_by_key(|(_, p)| p.offset);
    }
    Ok(PackSnapshot { packs, slices })
}

/// `read_packs` as it will be once the garbage collector has processed the dead slices
/// waiting in `G` records (what a dry run reports, since it does not collect them).
fn read_packs_after_pending_deaths(r: &dyn KvRead) -> Result<PackSnapshot, MetaError> {
    let mut snap = read_packs(r)?;
    let mut dead = HashSet::new();
    for (k, _) in r.scan(
        schema::DEAD_PREFIX,
        &prefix_end(schema::DEAD_PREFIX),
        usize::MAX,
    )? {
        dead.insert(schema::key_id("dead slice", &k)?);
    }
    if dead.is_empty() {
        return Ok(snap);
    }
    for (pack, list) in snap.slices.iter_mut() {
        let mut gone = (0u32, 0u64);
        list.retain(|(id, l)| {
            let keep = !dead.contains(id);
            if !keep {
                gone.0 += 1;
                gone.1 += l.len as u64;
            }
            keep
        });
        if let Some(p) = snap.packs.get_mut(pack) {
            p.live_slices = p.live_slices.saturating_sub(gone.0);
            p.live_bytes = p.live_bytes.saturating_sub(gone.1);
            if p.live_slices == 0 {
                // The collector deletes it whole.
                snap.packs.remove(pack);
            }
        }
    }
    snap.slices.retain(|_, l| !l.is_empty());
    Ok(snap)
}

/// The accounting of a snapshot.
fn usage_of(snap: &PackSnapshot) -> PackUsage {
    let mut u = PackUsage::default();
    for (id, p) in &snap.packs {
        u.packs += 1;
        u.pack_bytes += p.size;
        u.live_slices += p.live_slices as u64;
        u.live_bytes += p.live_bytes;
        u.dead_bytes += reclaimable(p);
        let list = snap.slices.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let bytes: u64 = list.iter().map(|(_, l)| l.len as u64).sum();
        if list.len() as u64 != p.live_slices as u64 || bytes != p.live_bytes {
            u.mismatches.push(format!(
                "pack {id}: record says {} slices, {} bytes; slice records say {}, {bytes}",
                p.live_slices,
                p.live_bytes,
                list.len()
            ));
        }
    }
    for (pack, list) in &snap.slices {
        u.packed_slices += list.len() as u64;
        u.packed_bytes += list.iter().map(|(_, l)| l.len as u64).sum::<u64>();
        if !snap.packs.contains_key(pack) {
            u.mismatches.push(format!(
                "pack {pack}: {} slice record(s) point at it but it has no record",
                list.len()
            ));
        }
    }
    u
}

/// Everything the metadata refers to, for the sweep.
struct References {
    /// Slices that must keep their block objects: in a chunk map, staged, packed, or dead and
    /// waiting for the garbage collector (which deletes them itself).
    slices: HashSet<u64>,
    /// Packs with a `P` record or an `L` record.
    packs: HashSet<u64>,
}

fn read_references(r: &dyn KvRead) -> Result<References, MetaError> {
    let mut slices = HashSet::new();
    let mut packs = HashSet::new();
    for (_, v) in r.scan(b"C", &prefix_end(b"C"), usize::MAX)? {
        let seg: SliceRec = schema::decode("segment", &v)?;
        if seg.id != 0 {
            slices.insert(seg.id);
        }
    }
    for prefix in [schema::STAGED_PREFIX, schema::DEAD_PREFIX] {
        for (k, _) in r.scan(prefix, &prefix_end(prefix), usize::MAX)? {
            slices.insert(schema::key_id("slice", &k)?);
        }
    }
    for (k, v) in r.scan(b"L", &prefix_end(b"L"), usize::MAX)? {
        slices.insert(schema::key_id("packed slice", &k)?);
        let p: PackedRec = schema::decode("packed slice", &v)?;
        packs.insert(p.pack);
    }
    for (k, _) in r.scan(b"P", &prefix_end(b"P"), usize::MAX)? {
        packs.insert(schema::key_id("pack", &k)?);
    }
    Ok(References { slices, packs })
}

/// `progress(phase, done, total)`.
pub type GcProgress<'a> = &'a mut dyn FnMut(&str, u64, u64);

mod dead;

pub(crate) use dead::{DEAD_BATCH, count_dead};

/// Reclaims space: owns nothing of the engine but handles to the stores, caches and the
/// uploader it cleans up after.
pub(crate) struct Reclaimer {
    pub meta: Arc<Meta>,
    pub storage: Arc<ObjectStorage>,
    /// Its caches forget dead slices and deleted packs.
    pub reader: Arc<ObjectReader>,
    /// Staged dead slices free their log space through it.
    pub uploader: Option<Arc<Uploader>>,
    pub counters: Arc<Counters>,
    /// Compaction takes new pack ids from the slice id space.
    pub slice_ids: Arc<IdAllocator>,
    pub block_size: u64,
    pub stop: Arc<StopSignal>,
    /// Garbage collection runs (`spoolfs gc`, the background compactor) take turns.
    pub gc_lock: Mutex<()>,
    /// Dead-slice collection runs one at a time (the background loop, `spoolfs gc`): two
    /// would read the same `G` records and delete the same objects twice.
    pub collecting: Mutex<()>,
    /// Concurrent bulk delete requests (each of up to `DELETE_BATCH_KEYS` objects).
    pub max_deletes: usize,
}

impl Reclaimer {
    fn view<T>(&self, f: impl Fn(&dyn KvRead) -> Result<T, MetaError>) -> Result<T> {
        self.meta.view(f)
    }

    fn view_long<T>(&self, f: impl Fn(&dyn KvRead) -> Result<T, MetaError>) -> Result<T> {
        self.meta.view_long(f)
    }

    fn update_with<T>(
        &self,
        durability: Durability,
        f: impl FnMut(&mut dyn KvTxn) -> Result<T, MetaError>,
    ) -> Result<T> {
        self.meta.update_with(durability, f)
    }

    fn persist_meta(&self) -> Result<()> {
        self.meta.persist()
    }

    fn next_slice_id(&self) -> Result<u64> {
        self.slice_ids.next(self.meta.store())
    }

    /// The engine is shutting down: long work stops.
    fn stopping(&self) -> bool {
        self.stop.now() || self.stop.is_raised()
    }

    /// The volume's pack accounting, checked against the `L` records.
    pub fn pack_usage(&self) -> Result<PackUsage> {
        Ok(usage_of(&self.view_long(read_packs)?))
    }

    /// One garbage collection run: dead slices first, then compaction (if asked), then the
    /// orphan sweep (if asked). Runs of this engine take turns (the background compactor too).
    pub fn run_gc(&self, opts: &GcOptions, progress: GcProgress) -> Result<GcReport> {
        if !(opts.threshold.is_finite() && (0.0..=1.0).contains(&opts.threshold)) {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "invalid compaction threshold {}: expected 0 to 1",
                    opts.threshold
                ),
            ));
        }
        let _turn = self.gc_lock.lock();
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        if !opts.dry_run {
            progress("collecting dead slices", 0, 0);
            let dead = self.collect_dead(usize::MAX)?;
            report.dead_slices_collected = dead.slices as u64;
            report.dead_object_bytes = dead.object_bytes;
            report.bytes_reclaimed += dead.object_bytes;
        }
        let usage = if opts.dry_run {
            usage_of(&self.view_long(read_packs_after_pending_deaths)?)
        } else {
            self.pack_usage()?
        };
        report.packs = usage.packs;
        report.pack_bytes = usage.pack_bytes;
        report.pack_dead_bytes = usage.dead_bytes;
        if opts.compact {
            self.compact_packs(opts, &mut report, progress)?;
        }
        if opts.sweep {
            self.sweep_orphans(opts, &mut report, progress)?;
        }
        Ok(report)
    }

    /// Target size of a pack a compaction writes.
    fn compact_pack_size(&self) -> usize {
        self.uploader
            .as_ref()
            .map(|wb| wb.opts.pack_size)
            .unwrap_or(spoolfs_uploader::DEFAULT_PACK_SIZE)
    }

    fn compact_packs(
        &self,
        opts: &GcOptions,
        report: &mut GcReport,
        progress: GcProgress,
    ) -> Result<()> {
        // A real run has just collected the dead slices; a dry run counts them as collected.
        let snap = if opts.dry_run {
            self.view_long(read_packs_after_pending_deaths)?
        } else {
            self.view_long(read_packs)?
        };
        let candidates: Vec<(u64, PackRec)> = snap
            .packs
            .iter()
            .filter(|(_, p)| is_candidate(p, opts.threshold))
            .map(|(id, p)| (*id, *p))
            .collect();
        report.packs_to_compact = candidates.len() as u64;
        if opts.dry_run {
            report.bytes_reclaimed += candidates.iter().map(|(_, p)| reclaimable(p)).sum::<u64>();
            return Ok(());
        }
        // Groups of old packs whose live data fills about one new pack.
        let target = self.compact_pack_size() as u64;
        let mut groups: Vec<Vec<(u64, PackRec)>> = Vec::new();
        let mut bytes = 0u64;
        for (id, p) in candidates {
            let live: u64 = snap
                .slices
                .get(&id)
                .map(|l| l.iter().map(|(_, r)| r.len as u64).sum())
                .unwrap_or(0);
            match groups.last_mut() {
                Some(g) if bytes + live <= target => g.push((id, p)),
                _ => {
                    groups.push(vec![(id, p)]);
                    bytes = 0;
                }
            }
            bytes += live;
        }
        let total = report.packs_to_compact;
        let mut done = 0u64;
        progress("compacting packs", 0, total);
        for group in groups {
            if self.stopping() {
                report
                    .errors
                    .push("the mount is stopping: compaction cut short".into());
                break;
            }
            if let Err(e) = self.compact_group(&group, &snap, report) {
                tracing::warn!("compacting packs {:?}: {e}", ids(&group));
                report
                    .errors
                    .push(format!("compacting packs {:?}: {e}", ids(&group)));
            }
            done += group.len() as u64;
            progress("compacting packs", done, total);
        }
        Ok(())
    }

    /// Rewrites the live slices of `group` into one new pack.
    fn compact_group(
        &self,
        group: &[(u64, PackRec)],
        snap: &PackSnapshot,
        report: &mut GcReport,
    ) -> Result<()> {
        let mut parts: Vec<(u64, bytes::Bytes)> = Vec::new();
        // Per old pack: the `L` records we copied, exactly as we read them.
        let mut expected: Vec<(u64, PackRec, Located)> = Vec::new();
        for (pack, rec) in group {
            let slices = snap.slices.get(pack).cloned().unwrap_or_default();
            if slices.is_empty() {
                report.errors.push(format!(
                    "pack {pack}: its record counts {} live slice(s) but none points at it; \
                     left alone",
                    rec.live_slices
                ));
                continue;
            }
            let key = schema::pack_object_key(*pack);
            let ranges: Vec<(u64, u64)> = slices
                .iter()
                .map(|(_, p)| (p.offset, p.offset + p.len as u64))
                .collect();
            let data = match self.storage.get_ranges(&key, &ranges) {
                Ok(d) => d,
                // Its last slice died meanwhile and the garbage collector deleted it.
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            self.counters.objects_got.fetch_add(1, Ordering::Relaxed);
            let mut verified = Vec::with_capacity(slices.len());
            let mut bad = None;
            for ((slice, p), d) in slices.iter().zip(data) {
                let entry = PackEntry {
                    slice: *slice,
                    offset: p.offset,
                    len: p.len,
                    crc: p.crc,
                };
                match spoolfs_objects::verify_packed(&key, &entry, d) {
                    Ok(d) => verified.push((*slice, d)),
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = bad {
                tracing::error!("{e}; pack {pack} is not compacted");
                report
                    .errors
                    .push(format!("{e}; pack {pack} is not compacted"));
                continue;
            }
            parts.extend(verified);
            expected.push((*pack, *rec, slices));
        }
        if parts.is_empty() {
            return Ok(());
        }
        let new_pack = self.next_slice_id()?;
        let refs: Vec<(u64, &[u8])> = parts.iter().map(|(id, d)| (*id, d.as_ref())).collect();
        let (object, entries) = spoolfs_objects::encode_pack(&refs);
        let new_size = object.len() as u64;
        let new_key = schema::pack_object_key(new_pack);
        self.storage.put(&new_key, object)?;
        self.counters.objects_put.fetch_add(1, Ordering::Relaxed);
        let placed: HashMap<u64, PackEntry> = entries.iter().map(|e| (e.slice, *e)).collect();
        // One durable transaction: the old object is deleted right after it, so the metadata
        // must never come back (after a power cut) pointing at it.
        let committed = self.update_with(Durability::Durable, |t| {
            let mut moved_from = Vec::new();
            let mut skipped = Vec::new();
            let mut rec = PackRec {
                size: new_size,
                live_slices: 0,
                live_bytes: 0,
            };
            for (old, _, slices) in &expected {
                let Some(v) = t.get(&schema::pack_key(*old))? else {
                    // Emptied meanwhile: the garbage collector deletes its object.
                    continue;
                };
                let now: PackRec = schema::decode("pack", &v)?;
                let mut still = Vec::new();
                for (slice, was) in slices {
                    if let Some(v) = t.get(&schema::packed_key(*slice))?
                        && schema::decode::<PackedRec>("packed slice", &v)? == *was
                    {
                        still.push(*slice);
                    }
                }
                let still_bytes: u64 = still.iter().map(|s| placed[s].len as u64).sum();
                if now.live_slices as usize != still.len() || now.live_bytes != still_bytes {
                    skipped.push((*old, now, still.len(), still_bytes));
                    continue;
                }
                for slice in &still {
                    let e = placed[slice];
                    let packed = PackedRec {
                        pack: new_pack,
                        offset: e.offset,
                        len: e.len,
                        crc: e.crc,
                    };
                    t.put(&schema::packed_key(*slice), &schema::encode(&packed))?;
                    rec.live_slices += 1;
                    rec.live_bytes += e.len as u64;
                }
                t.delete(&schema::pack_key(*old))?;
                moved_from.push(*old);
            }
            if rec.live_slices > 0 {
                t.put(&schema::pack_key(new_pack), &schema::encode(&rec))?;
            }
            Ok((moved_from, rec, skipped))
        });
        let (moved_from, rec, skipped) = match committed {
            Ok(c) => c,
            Err(e) => {
                // Delete the new object only if the commit certainly did not happen.
                if let Ok(false) = self.view(|r| Ok(r.get(&schema::pack_key(new_pack))?.is_some()))
                {
                    let _ = self.storage.delete(&new_key);
                }
                return Err(e);
            }
        };
        for (old, now, n, b) in skipped {
            let msg = format!(
                "pack {old}: its record says {} slices, {} bytes but {n} slice record(s) of \
                 {b} bytes point at it; left alone",
                now.live_slices, now.live_bytes
            );
            tracing::warn!("{msg}");
            report.errors.push(msg);
        }
        if rec.live_slices == 0 {
            // Every slice died meanwhile (or every pack was left alone): nobody needs it.
            if let Err(e) = self.storage.delete(&new_key) {
                report.errors.push(format!("deleting {new_key}: {e}"));
            }
        } else {
            report.packs_written += 1;
        }
        let mut freed = 0u64;
        for old in &moved_from {
            if let Some(disk) = &self.reader.disk {
                disk.remove_slice(*old);
            }
            let key = schema::pack_object_key(*old);
            match self.storage.delete(&key) {
                Ok(()) => {
                    freed += group
                        .iter()
                        .find(|(id, _)| id == old)
                        .map(|(_, p)| p.size)
                        .unwrap_or(0);
                }
                // Unreferenced now: a later sweep deletes it.
                Err(e) => report.errors.push(format!("deleting {key}: {e}")),
            }
        }
        let written = if rec.live_slices > 0 { new_size } else { 0 };
        report.packs_compacted += moved_from.len() as u64;
        report.slices_moved += rec.live_slices as u64;
        report.bytes_moved += rec.live_bytes;
        report.bytes_reclaimed += freed.saturating_sub(written);
        tracing::info!(
            "compacted packs {moved_from:?} into pack {new_pack}: {} live slice(s), {} bytes",
            rec.live_slices,
            rec.live_bytes
        );
        Ok(())
    }

    fn sweep_orphans(
        &self,
        opts: &GcOptions,
        report: &mut GcReport,
        progress: GcProgress,
    ) -> Result<()> {
        progress("listing objects", 0, 0);
        // List first, then read the metadata: an object listed here and committed later is
        // young, so the grace period protects it.
        let mut objects = self.storage.list_detailed("chunks")?;
        objects.extend(self.storage.list_detailed("packs")?);
        report.objects_listed = objects.len() as u64;
        let refs = self.view_long(read_references)?;
        let now = SystemTime::now();
        let mut orphans = Vec::new();
        for o in &objects {
            let referenced = match ObjectKey::parse(&o.key) {
                Some(ObjectKey::Block { slice, .. }) => refs.slices.contains(&slice),
                Some(ObjectKey::Pack(id)) => refs.packs.contains(&id),
                None => {
                    report.unknown_objects += 1;
                    continue;
                }
            };
            if referenced {
                continue;
            }
            let age = now.duration_since(o.modified).unwrap_or(Duration::ZERO);
            if age < opts.min_age {
                report.young_unreferenced += 1;
                continue;
            }
            report.orphans_found += 1;
            report.orphan_bytes += o.size;
            orphans.push(o);
        }
        if opts.dry_run {
            report.bytes_reclaimed += report.orphan_bytes;
            return Ok(());
        }
        if orphans.is_empty() {
            return Ok(());
        }
        // The metadata we judged by must not come back older after a crash.
        self.persist_meta()?;
        let total = orphans.len() as u64;
        for (i, o) in orphans.into_iter().enumerate() {
            if self.stopping() {
                report
                    .errors
                    .push("the mount is stopping: sweep cut short".into());
                break;
            }
            match self.storage.delete(&o.key) {
                Ok(()) => {
                    report.orphans_deleted += 1;
                    report.orphan_bytes_deleted += o.size;
                    report.bytes_reclaimed += o.size;
                    tracing::info!("deleted orphan object {} ({} bytes)", o.key, o.size);
                }
                Err(e) => report.errors.push(format!("deleting {}: {e}", o.key)),
            }
            if i % 64 == 63 {
                progress("deleting orphans", i as u64 + 1, total);
            }
        }
        progress("deleting orphans", total, total);
        Ok(())
    }

    /// One look of the background compactor: compacts when the packs hold enough dead bytes.
    /// Skips its turn while a `spoolfs gc` runs.
    pub fn background_compact(&self, settings: &CompactionSettings) {
        // Only the `P` records: far fewer than the slices, cheap to read every interval.
        let dead = self.view(|r| {
            let mut dead = 0u64;
            for (_, v) in r.scan(b"P", &prefix_end(b"P"), usize::MAX)? {
                dead += reclaimable(&schema::decode::<PackRec>("pack", &v)?);
            }
            Ok(dead)
        });
        let dead = match dead {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("background compaction: cannot read the pack records: {e}");
                return;
            }
        };
        if dead < settings.min_dead_bytes.max(1) {
            return;
        }
        let Some(_turn) = self.gc_lock.try_lock() else {
            return;
        };
        let opts = GcOptions {
            sweep: false,
            compact: true,
            threshold: settings.threshold,
            min_age: DEFAULT_MIN_AGE,
            dry_run: false,
        };
        let mut report = GcReport::default();
        match self.compact_packs(&opts, &mut report, &mut |_, _, _| {}) {
            Ok(()) if report.packs_compacted > 0 => tracing::info!(
                "background compaction: {} pack(s) rewritten into {}, {} bytes reclaimed",
                report.packs_compacted,
                report.packs_written,
                report.bytes_reclaimed
            ),
            Ok(()) => {}
            Err(e) => tracing::warn!("background compaction: {e}"),
        }
    }
}

fn ids(group: &[(u64, PackRec)]) -> Vec<u64> {
    group.iter().map(|(id, _)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_need_dead_bytes() {
        let full = PackRec {
            size: 1000 + 2 * PACK_ENTRY_LEN + PACK_FOOTER_LEN,
            live_slices: 2,
            live_bytes: 1000,
        };
        assert_eq!(reclaimable(&full), 0);
        assert!(!is_candidate(&full, 1.0));
        let half = PackRec {
            live_slices: 1,
            live_bytes: 400,
            ..full
        };
        assert!(is_candidate(&half, 0.5));
        assert!(!is_candidate(&half, 0.3));
    }
}
