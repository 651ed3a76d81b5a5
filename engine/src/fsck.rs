//! `fsck`: checks an unmounted volume's metadata against its object store and its staging log,
//! and repairs what is safe to repair.
//!
//! The checks read the whole metadata store once and list the bucket once:
//! - **namespace**: every directory entry points at an existing inode of its kind, from an
//!   existing directory; link counts match the entries (a directory: 2 + its subdirectories);
//!   every directory has one name and its `parent` is the directory holding it; every inode
//!   is reachable from the root or is an orphan (`O`); the inode counter.
//! - **data**: every chunk segment lies inside its chunk and its slice, segments do not
//!   overlap, and each slice's bytes are where the metadata says: in the staging log (`T`,
//!   checked when the log is given), in a pack (`L`: its `P` record and the pack object exist,
//!   and with `verify_data` the slice's range has the recorded CRC), or in block objects (each
//!   block a segment uses is listed with the right size; with `verify_data` fetched and its
//!   trailer checked). A live slice must not be queued for deletion (`G`).
//! - **accounting**: each `P` record's live slices and bytes equal what the `L` records
//!   pointing at it add up to; the used-bytes counter equals the live slices' sizes.
//! - **orphans**: objects no metadata references (what garbage collection would never
//!   delete), `T` records of slices no file uses, staging-log records no `T` record points at.
//!
//! Repairs (with `repair`) never delete data that metadata references: dangling entries are
//! removed, link counts, parents, pack counts and counters are recomputed, unreachable inodes
//! are linked into `/lost+found`, ranges whose data is missing or corrupt become holes
//! (reported as data loss), and unreferenced objects older than the grace period are deleted.
//!
//! Finding kinds (severity; repair):
//! - `dangling-dentry` (error; entry removed), `dentry-kind` (warning; entry's type fixed),
//!   `wrong-nlink` (error; recomputed), `bad-parent` (error; fixed), `directory-links`
//!   (error; none), `linked-orphan` (error; orphan mark removed), `stale-orphan` (warning;
//!   removed), `unreachable-inode` (error; linked into `/lost+found` as `#INO`),
//!   `missing-root` (error; none), `inode-count` (warning; recomputed), `undecodable` (error;
//!   none).
//! - `bad-segment` (error; segment removed), `beyond-size` (warning; none), `shared-slice`
//!   (error; none), `segments-without-inode` (warning; slices queued for deletion),
//!   `dead-but-live` (error; unqueued), `missing-object` / `corrupt-object` (error; the
//!   block's range becomes a hole), `missing-pack` / `corrupt-pack` / `bad-packed-record`
//!   (error; the slice becomes a hole), `staged-missing` (error; hole, `T` record dropped),
//!   `staged-mismatch` (warning; none), `staged-unreferenced` (warning; `T` record dropped).
//! - `pack-counts` / `missing-pack-record` (error; recomputed), `pack-size` (warning;
//!   recomputed), `packed-unreferenced` (warning; slice queued for deletion), `used-bytes`
//!   (warning; recomputed).
//! - `data-loss` (error; none: a loss a mount's replay recorded, listed until
//!   `forget_losses`), `staging-damage` (error; none: damage in the middle of the staging
//!   log, which the next mount records as a loss).
//! - `orphan-object` (warning; deleted once older than the grace period), `unknown-object`
//!   (note; left alone), `staging-leak` (note; the next mount frees it), `unclean-unmount`
//!   (note).

use crate::data;
use crate::error::{FsError, Result};
use crate::schema::{
    self, DeadSlice, DentryRec, InodeRec, PackRec, PackedRec, SliceRec, StagedRec,
};
use crate::staging::{self, LogRecord};
use crate::types::{FileKind, Ino, ROOT_INO};
use crate::volume::{BUCKET_RECORD_KEY, VolumeRecord};
use crate::writeback::{OWNER_KEY, StagingOwner};
use serde::Serialize;
use spoolfs_metadata::{Durability, KvRead, KvStore, KvTxn, MetaError, prefix_end};
use spoolfs_objects::keys::{self, ObjectKey, slice_blocks};
use spoolfs_objects::{ObjectInfo, ObjectStorage, StorageError, decode_block, verify_packed};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How serious a finding is. Errors are damage (lost or unreachable data, counts that would
/// make the garbage collector delete live data); warnings are leaks and stale counters;
/// notes are worth knowing and need nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

/// One problem found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What kind of problem, e.g. `missing-object` (the kinds are listed in the module docs).
    pub kind: &'static str,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<Ino>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
    /// A repair fixed it.
    pub repaired: bool,
}

/// Counts of what was looked at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckStats {
    pub inodes: u64,
    pub directories: u64,
    pub entries: u64,
    pub segments: u64,
    pub live_slices: u64,
    pub live_bytes: u64,
    pub staged_slices: u64,
    /// Staged slices whose data could not be checked (no staging log given).
    pub staged_unchecked: u64,
    pub packed_slices: u64,
    pub packs: u64,
    pub objects: u64,
    pub object_bytes: u64,
    /// Objects fetched and verified (`verify_data`).
    pub objects_verified: u64,
    pub orphan_objects: u64,
    pub orphan_bytes: u64,
    pub orphan_objects_deleted: u64,
    pub orphan_bytes_deleted: u64,
    pub staging_records: u64,
    pub leaked_staging_records: u64,
    pub leaked_staging_bytes: u64,
    /// Bytes of file data turned into holes by the repair (their data was gone).
    pub data_lost_bytes: u64,
    /// Losses a mount's replay recorded (corruption of the staging or namespace log).
    pub recorded_losses: u64,
    /// File bytes those losses turned into zeros.
    pub recorded_lost_bytes: u64,
    /// Recorded losses deleted (`forget_losses`).
    pub losses_forgotten: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FsckReport {
    pub volume: String,
    pub uuid: String,
    pub repair: bool,
    pub verify_data: bool,
    pub staging_checked: bool,
    pub stats: FsckStats,
    pub findings: Vec<Finding>,
}

impl FsckReport {
    fn count(&self, s: Severity, repaired: Option<bool>) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == s && repaired.is_none_or(|r| f.repaired == r))
            .count()
    }
    pub fn errors(&self) -> usize {
        self.count(Severity::Error, None)
    }
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning, None)
    }
    /// Errors a repair did not fix: the volume is still damaged.
    pub fn unrepaired_errors(&self) -> usize {
        self.count(Severity::Error, Some(false))
    }
    pub fn repaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired).count()
    }
    /// No errors or warnings.
    pub fn is_clean(&self) -> bool {
        self.errors() == 0 && self.warnings() == 0
    }
    /// The findings of one kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }
}

#[derive(Clone, Debug)]
pub struct FsckOptions {
    pub repair: bool,
    /// Fetch every referenced block and packed slice and check its CRC.
    pub verify_data: bool,
    /// The volume's staging-log directory (`<cache dir>/<uuid>`), to check `T` records.
    pub staging_dir: Option<PathBuf>,
    /// Unreferenced objects younger than this are reported but not deleted.
    pub orphan_grace: Duration,
    /// After reporting them, delete the data losses recorded by replay (`Q` records): the
    /// operator has dealt with them.
    pub forget_losses: bool,
}

impl Default for FsckOptions {
    fn default() -> Self {
        FsckOptions {
            repair: false,
            verify_data: false,
            staging_dir: None,
            orphan_grace: Duration::from_secs(3600),
            forget_losses: false,
        }
    }
}

fn refuse(msg: String) -> FsError {
    FsError::new(libc::EBUSY, msg)
}

/// Makes sure the volume can be checked offline from `meta` alone: refuses when the last
/// mount did not end cleanly and its cache directory still holds staged data or namespace
/// changes, unless that cache directory is given (`cache_dir`, the `--cache-dir` of the mount)
/// and the metadata store already contains every logged namespace change. Returns notes.
pub fn check_offline(
    meta: &dyn KvStore,
    volume: &VolumeRecord,
    cache_dir: Option<&Path>,
) -> Result<Vec<Finding>> {
    let mut owner: Option<StagingOwner> = None;
    let (mut applied, mut epoch, mut staged) = (0, 0, 0usize);
    meta.view(&mut |r| {
        owner = r
            .get(OWNER_KEY)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        applied = schema::get_u64(r, crate::wal::APPLIED_SEQ_KEY)?;
        epoch = schema::get_u64(r, crate::wal::EPOCH_KEY)?;
        staged = r
            .scan(
                schema::STAGED_PREFIX,
                &prefix_end(schema::STAGED_PREFIX),
                usize::MAX,
            )?
            .len();
        Ok(())
    })?;
    let uuid = uuid_bytes(volume)?;
    let mut notes = Vec::new();
    let given = cache_dir.map(|d| d.join(&volume.uuid));
    if let Some(o) = owner.as_ref().filter(|o| !o.clean) {
        let owner_dir = PathBuf::from(&o.cache_dir);
        let data = staging::scan_dir(&owner_dir.join("data"), uuid).map_err(staging_err)?;
        let ns = staging::scan_dir(&owner_dir.join("namespace"), uuid).map_err(staging_err)?;
        let holds = !data.records.is_empty() || !ns.records.is_empty();
        let parent = owner_dir
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if holds && given.as_deref() != Some(owner_dir.as_path()) {
            return Err(refuse(format!(
                "volume {:?} was not unmounted cleanly and its cache directory {} holds staged \
                 data ({} staged slice(s) in the metadata, {} log record(s)): mount it once \
                 with --cache-dir {parent} so replay runs, or run fsck with --cache-dir {parent} \
                 to check the staging log too",
                volume.name,
                owner_dir.display(),
                staged,
                data.records.len() + ns.records.len()
            )));
        }
        if !holds {
            notes.push(Finding {
                kind: "unclean-unmount",
                severity: Severity::Note,
                ino: None,
                path: None,
                message: format!(
                    "the last mount did not end cleanly, and its cache directory {} holds no \
                     staged data",
                    owner_dir.display()
                ),
                repaired: false,
            });
        }
    }
    if let Some(dir) = &given {
        // Namespace changes in the logs that the store does not contain yet: only a mount's
        // replay may apply them; checking without them would report false damage.
        let mut behind = 0;
        for (sub, carried) in [("namespace", false), ("data", true)] {
            let scan = staging::scan_dir(&dir.join(sub), uuid).map_err(staging_err)?;
            for rec in &scan.records {
                let at = if carried {
                    if rec.record.header.meta_len == 0 {
                        continue;
                    }
                    rec.data_offset + u64::from(rec.record.header.len - rec.record.header.meta_len)
                } else {
                    rec.data_offset
                };
                let mut head = [0u8; 16];
                let n = (rec.record.header.len as usize).min(16);
                let ok = std::fs::File::open(&rec.path)
                    .and_then(|f| f.read_exact_at(&mut head[..n], at))
                    .is_ok();
                if let Some((e, seq)) = ok.then(|| crate::wal::record_position(&head)).flatten()
                    && e == epoch
                    && seq > applied
                {
                    behind += 1;
                }
            }
        }
        if behind > 0 {
            return Err(refuse(format!(
                "the metadata store of volume {:?} is behind its namespace log by {behind} \
                 change(s): mount the volume once (with --cache-dir {}) so replay applies \
                 them, then run fsck",
                volume.name,
                cache_dir
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )));
        }
    }
    Ok(notes)
}

fn uuid_bytes(volume: &VolumeRecord) -> Result<[u8; 16]> {
    Ok(*uuid::Uuid::parse_str(&volume.uuid)
        .map_err(|source| FsError::VolumeUuid {
            uuid: volume.uuid.clone(),
            source,
        })?
        .as_bytes())
}

fn staging_err(e: staging::StagingError) -> FsError {
    FsError::StagingScan(e)
}

/// Everything the metadata store holds, decoded.
#[derive(Default)]
struct Snapshot {
    inodes: BTreeMap<Ino, InodeRec>,
    dentries: Vec<(Ino, Vec<u8>, DentryRec)>,
    /// (ino, chunk, position in the key, segment)
    segs: Vec<(Ino, u32, u32, SliceRec)>,
    orphans: BTreeSet<Ino>,
    dead: BTreeMap<u64, DeadSlice>,
    staged: BTreeMap<u64, StagedRec>,
    packed: BTreeMap<u64, PackedRec>,
    packs: BTreeMap<u64, PackRec>,
    used: u64,
    inode_count: u64,
    undecodable: Vec<String>,
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The metadata records `fsck` could not decode, each with its key.
#[derive(Default)]
struct Undecodable(Vec<String>);

impl Undecodable {
    /// The records of `rows` whose key length `key_ok` accepts, decoded as `T`; a bad key or
    /// record is listed as a `what` instead.
    fn decode<T: for<'a> serde::Deserialize<'a>>(
        &mut self,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        key_ok: impl Fn(usize) -> bool,
        (decode_as, what): (&str, &str),
    ) -> Vec<(Vec<u8>, T)> {
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let problem = match key_ok(k.len()).then(|| schema::decode::<T>(decode_as, &v)) {
                Some(Ok(rec)) => {
                    out.push((k, rec));
                    continue;
                }
                Some(Err(e)) => e.to_string(),
                None => "bad key length".into(),
            };
            self.0.push(format!("{what} key {k:02x?}: {problem}"));
        }
        out
    }
}

/// Records keyed by a tag byte and a big-endian id, by id.
fn keyed_by_id<T>(rows: Vec<(Vec<u8>, T)>) -> BTreeMap<u64, T> {
    rows.into_iter()
        .map(|(k, rec)| (be64(&k[1..]), rec))
        .collect()
}

fn load(r: &dyn KvRead) -> Result<Snapshot, MetaError> {
    let mut s = Snapshot::default();
    let scan = |p: &[u8]| r.scan(p, &prefix_end(p), usize::MAX);
    let id = |k: &[u8]| be64(&k[1..]);
    let by_id = |len: usize| len == 9;
    let mut bad = Undecodable::default();
    s.inodes = keyed_by_id(bad.decode(scan(b"I")?, by_id, ("inode", "inode")));
    for (k, d) in bad.decode(scan(b"D")?, |len| len > 9, ("entry", "entry")) {
        s.dentries.push((id(&k), k[9..].to_vec(), d));
    }
    for (k, seg) in bad.decode(scan(b"C")?, |len| len == 17, ("segment", "segment")) {
        s.segs.push((id(&k), be32(&k[9..]), be32(&k[13..]), seg));
    }
    for (k, _) in scan(b"O")? {
        if k.len() == 9 {
            s.orphans.insert(id(&k));
        }
    }
    s.dead = keyed_by_id(bad.decode(scan(b"G")?, by_id, ("dead slice", "dead slice")));
    // Records of the first version (no owner) are read as the current one.
    let staged_rows = scan(b"T")?
        .into_iter()
        .map(|(k, v)| match schema::decode_staged(&v) {
            Ok(rec) => (k, schema::encode(&rec)),
            Err(_) => (k, v),
        })
        .collect();
    s.staged = keyed_by_id(bad.decode(staged_rows, by_id, ("staged", "staged slice")));
    s.packed = keyed_by_id(bad.decode(scan(b"L")?, by_id, ("packed", "packed slice")));
    s.packs = keyed_by_id(bad.decode(scan(b"P")?, by_id, ("pack", "pack")));
    s.used = schema::get_u64(r, schema::USED_BYTES_KEY)?;
    s.inode_count = schema::get_u64(r, schema::INODE_COUNT_KEY)?;
    s.undecodable = bad.0;
    Ok(s)
}

/// A repair, applied in one metadata transaction after the checks.
#[derive(Clone, Debug)]
enum Fix {
    DeleteDentry(Ino, Vec<u8>),
    SetDentryKind(Ino, Vec<u8>, DentryRec),
    SetNlink(Ino, u32),
    SetParent(Ino, Ino),
    DeleteOrphanKey(Ino),
    /// Turn bytes `[lo, hi)` of a slice (`None`: all of it) into holes wherever the file
    /// shows them: its data is gone.
    Hole {
        ino: Ino,
        chunk: u32,
        slice: u64,
        range: Option<(u32, u32)>,
    },
    /// Give an unreachable inode with no name a name in `/lost+found`.
    LostFound(Ino),
    /// Reachable again once this inode is in `/lost+found`.
    ViaLostFound(Ino),
    /// Remove one malformed segment.
    DeleteSegment(Ino, u32, u32),
    /// Segments of an inode that does not exist: their slices are dead.
    DropSegmentsOf(Ino),
    /// A live slice queued for deletion: unqueue it.
    UndeadSlice(u64),
    /// A `T` record of a slice no file uses.
    DeleteStaged(u64),
    /// An `L` record of a slice no file uses: queue the slice for deletion.
    KillPacked(u64, u32),
    /// Recompute pack counters from the `L` records (pack size from the listing if needed).
    RecountPacks,
    SetUsed,
    SetInodeCount,
    DeleteObject(String),
}

struct Checker<'a> {
    storage: &'a ObjectStorage,
    volume: &'a VolumeRecord,
    opts: &'a FsckOptions,
    progress: &'a mut dyn FnMut(&str, u64, u64),
    findings: Vec<Finding>,
    /// Fix for each finding (by index), if one applies.
    fixes: Vec<(usize, Fix)>,
    stats: FsckStats,
    paths: HashMap<Ino, String>,
}

impl Checker<'_> {
    /// What reading an object back with `--verify-data` found: nothing when it is there and
    /// checks out; else a `missing` or `corrupt` finding (kind, message) whose fix is `hole`.
    /// Other store errors end the check.
    fn verified<T>(
        &mut self,
        read: std::result::Result<T, StorageError>,
        ino: Ino,
        hole: Fix,
        missing: (&'static str, &dyn Fn() -> String),
        corrupt: (&'static str, &dyn Fn(&StorageError) -> String),
    ) -> Result<()> {
        match read {
            Ok(_) => {}
            Err(StorageError::NotFound { .. }) => self.find(
                missing.0,
                Severity::Error,
                Some(ino),
                missing.1(),
                Some(hole),
            ),
            Err(e @ StorageError::Checksum { .. }) => self.find(
                corrupt.0,
                Severity::Error,
                Some(ino),
                corrupt.1(&e),
                Some(hole),
            ),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn find(
        &mut self,
        kind: &'static str,
        severity: Severity,
        ino: Option<Ino>,
        message: String,
        fix: Option<Fix>,
    ) {
        let path = ino.and_then(|i| self.paths.get(&i).cloned());
        let at = self.findings.len();
        self.findings.push(Finding {
            kind,
            severity,
            ino,
            path,
            message,
            repaired: false,
        });
        if let Some(f) = fix {
            self.fixes.push((at, f));
        }
    }
}

fn name_str(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks the volume and, with `opts.repair`, repairs it. `progress` sees (phase, done, total)
/// during the long phases. The volume must not be mounted (see [`check_offline`]).
pub fn fsck(
    meta: &dyn KvStore,
    storage: &ObjectStorage,
    volume: &VolumeRecord,
    opts: &FsckOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<FsckReport> {
    let mut snap = None;
    progress("metadata", 0, 0);
    meta.view(&mut |r| {
        snap = Some(load(r)?);
        Ok(())
    })?;
    let snap = snap.expect("view ran");
    let mut c = Checker {
        storage,
        volume,
        opts,
        progress,
        findings: Vec::new(),
        fixes: Vec::new(),
        stats: FsckStats::default(),
        paths: HashMap::new(),
    };
    for u in &snap.undecodable {
        c.find(
            "undecodable",
            Severity::Error,
            None,
            format!("undecodable metadata record: {u}"),
            None,
        );
    }
    check_namespace(&mut c, &snap);
    check_recorded_losses(&mut c, meta)?;
    (c.progress)("objects", 0, 0);
    let listing = storage.list_detailed("")?;
    c.stats.objects = listing.len() as u64;
    c.stats.object_bytes = listing.iter().map(|o| o.size).sum();
    let objects: HashMap<&str, &ObjectInfo> = listing.iter().map(|o| (o.key.as_str(), o)).collect();
    let log = match &opts.staging_dir {
        Some(dir) => {
            Some(staging::scan_dir(&dir.join("data"), uuid_bytes(volume)?).map_err(staging_err)?)
        }
        None => None,
    };
    if let Some(log) = &log {
        check_log_damage(&mut c, log);
    }
    let live = check_data(&mut c, &snap, &objects, log.as_ref())?;
    check_accounting(&mut c, &snap, &objects, &live);
    check_orphans(&mut c, &snap, &listing, &live, log.as_ref());
    let mut report = FsckReport {
        volume: volume.name.clone(),
        uuid: volume.uuid.clone(),
        repair: opts.repair,
        verify_data: opts.verify_data,
        staging_checked: opts.staging_dir.is_some(),
        stats: FsckStats::default(),
        findings: Vec::new(),
    };
    if opts.repair && !c.fixes.is_empty() {
        (c.progress)("repair", 0, c.fixes.len() as u64);
        repair(&mut c, meta, &objects)?;
    }
    report.stats = c.stats;
    report.findings = c.findings;
    report
        .findings
        .sort_by_key(|f| (f.severity, f.kind, f.ino, f.path.clone()));
    Ok(report)
}

/// Losses a mount's replay recorded (see [`crate::losses`]): DATA LOSS until forgotten.
fn check_recorded_losses(c: &mut Checker, meta: &dyn KvStore) -> Result<()> {
    let mut recorded = Vec::new();
    meta.view(&mut |r| {
        recorded = crate::losses::list(r)?;
        Ok(())
    })?;
    for l in &recorded {
        c.stats.recorded_losses += 1;
        if l.ino != 0 {
            c.stats.recorded_lost_bytes += l.bytes;
        }
        let path = l.path.clone().unwrap_or_default();
        let what = if l.ino == 0 {
            String::new()
        } else {
            format!(
                "{path} bytes [{}, {}) read as zeros: ",
                l.offset,
                l.offset + l.bytes
            )
        };
        c.find(
            "data-loss",
            Severity::Error,
            (l.ino != 0).then_some(l.ino),
            format!("DATA LOSS recorded at mount: {what}{}", l.cause),
            None,
        );
    }
    if c.opts.forget_losses && !recorded.is_empty() {
        let mut n = 0;
        meta.update(Durability::Durable, &mut |t| {
            n = crate::losses::forget_all(t)?;
            Ok(())
        })?;
        c.stats.losses_forgotten = n as u64;
    }
    Ok(())
}

/// Damage in the middle of the staging log (not a torn tail): the next mount records it as
/// a loss; until then it is DATA LOSS found here.
fn check_log_damage(c: &mut Checker, log: &staging::LogScan) {
    for d in &log.damage {
        c.find(
            "staging-damage",
            Severity::Error,
            None,
            format!(
                "DATA LOSS: staging log segment {}: {} at bytes [{}, {}) fails its checksum",
                d.segment,
                d.what,
                d.offset,
                d.offset + d.len
            ),
            None,
        );
    }
    for r in log.records.iter().filter(|r| !r.record.damaged.is_empty()) {
        c.find(
            "staging-damage",
            Severity::Error,
            (r.record.header.ino != 0).then_some(r.record.header.ino),
            format!(
                "DATA LOSS: staged slice {} (segment {}, record at byte {}) fails its \
                 checksum over slice bytes {:?}",
                r.record.header.slice_id,
                r.record.loc.segment,
                r.record.loc.offset,
                r.record.damaged
            ),
            None,
        );
    }
}

fn check_namespace(c: &mut Checker, s: &Snapshot) {
    c.stats.inodes = s.inodes.len() as u64;
    c.stats.entries = s.dentries.len() as u64;
    c.stats.directories = s
        .inodes
        .values()
        .filter(|r| r.kind == FileKind::Dir)
        .count() as u64;
    // The tree as the entries describe it, dangling entries left out.
    let mut children: HashMap<Ino, Vec<(Vec<u8>, Ino)>> = HashMap::new();
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut dir_names: HashMap<Ino, Vec<Ino>> = HashMap::new();
    let mut dangling = Vec::new();
    for (parent, name, d) in &s.dentries {
        let parent_ok = s
            .inodes
            .get(parent)
            .is_some_and(|p| p.kind == FileKind::Dir);
        let Some(rec) = s.inodes.get(&d.ino).filter(|_| parent_ok) else {
            dangling.push((*parent, name.clone(), *d, parent_ok));
            continue;
        };
        if rec.kind != d.kind {
            let fixed = DentryRec {
                ino: d.ino,
                kind: rec.kind,
            };
            dangling.push((*parent, name.clone(), fixed, true));
        }
        *links.entry(d.ino).or_default() += 1;
        if rec.kind == FileKind::Dir {
            *subdirs.entry(*parent).or_default() += 1;
            dir_names.entry(d.ino).or_default().push(*parent);
        }
        children
            .entry(*parent)
            .or_default()
            .push((name.clone(), d.ino));
    }
    // Paths, breadth first from the root (the first name of a file with several).
    let mut reached = BTreeSet::new();
    if s.inodes.contains_key(&ROOT_INO) {
        c.paths.insert(ROOT_INO, "/".into());
        reached.insert(ROOT_INO);
        let mut queue = VecDeque::from([ROOT_INO]);
        while let Some(dir) = queue.pop_front() {
            let base = c.paths[&dir].clone();
            for (name, ino) in children.get(&dir).into_iter().flatten() {
                if reached.insert(*ino) {
                    let p = if base == "/" {
                        format!("/{}", name_str(name))
                    } else {
                        format!("{base}/{}", name_str(name))
                    };
                    c.paths.insert(*ino, p);
                    if s.inodes[ino].kind == FileKind::Dir {
                        queue.push_back(*ino);
                    }
                }
            }
        }
    } else {
        c.find(
            "missing-root",
            Severity::Error,
            Some(ROOT_INO),
            "the root directory (inode 1) does not exist".into(),
            None,
        );
    }
    for (parent, name, d, parent_ok) in dangling {
        let at = c
            .paths
            .get(&parent)
            .map(|p| format!("{}/{}", p.trim_end_matches('/'), name_str(&name)))
            .unwrap_or_else(|| format!("entry {:?} of inode {parent}", name_str(&name)));
        if !parent_ok {
            c.find(
                "dangling-dentry",
                Severity::Error,
                Some(d.ino),
                format!("{at}: the directory holding it (inode {parent}) does not exist"),
                Some(Fix::DeleteDentry(parent, name)),
            );
        } else if !s.inodes.contains_key(&d.ino) {
            c.find(
                "dangling-dentry",
                Severity::Error,
                Some(d.ino),
                format!("{at} points at inode {} which does not exist", d.ino),
                Some(Fix::DeleteDentry(parent, name)),
            );
        } else {
            c.find(
                "dentry-kind",
                Severity::Warning,
                Some(d.ino),
                format!(
                    "{at}: the entry's file type differs from the inode's ({:?})",
                    d.kind
                ),
                Some(Fix::SetDentryKind(parent, name, d)),
            );
        }
    }
    // Unreachable inodes with no name left are relinked into /lost+found by a repair; what
    // hangs below them becomes reachable with them.
    let mut rescued: HashMap<Ino, Ino> = HashMap::new();
    if s.inodes.contains_key(&ROOT_INO) {
        for ino in s.inodes.keys() {
            let named = links.get(ino).copied().unwrap_or(0);
            let unlinked_orphan = s.orphans.contains(ino) && named == 0;
            if reached.contains(ino) || unlinked_orphan || named > 0 {
                continue;
            }
            rescued.insert(*ino, *ino);
            let mut queue = VecDeque::from([*ino]);
            while let Some(dir) = queue.pop_front() {
                for (_, child) in children.get(&dir).into_iter().flatten() {
                    if !reached.contains(child) && !rescued.contains_key(child) {
                        rescued.insert(*child, *ino);
                        queue.push_back(*child);
                    }
                }
            }
        }
    }
    for (ino, rec) in &s.inodes {
        let ino = *ino;
        let orphan = s.orphans.contains(&ino);
        let named = links.get(&ino).copied().unwrap_or(0);
        if orphan && named > 0 {
            c.find(
                "linked-orphan",
                Severity::Error,
                Some(ino),
                format!(
                    "inode {ino} is marked unlinked-while-open (it would be deleted at the next \
                     mount) but has {named} name(s)"
                ),
                Some(Fix::DeleteOrphanKey(ino)),
            );
        }
        let expected = if rec.kind == FileKind::Dir {
            let names = dir_names.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
            if ino != ROOT_INO {
                if names.len() > 1 {
                    c.find(
                        "directory-links",
                        Severity::Error,
                        Some(ino),
                        format!(
                            "directory {ino} has {} names (in directories {names:?}); a \
                             directory has exactly one",
                            names.len()
                        ),
                        None,
                    );
                }
                if let Some(&p) = names.first()
                    && rec.parent != p
                {
                    c.find(
                        "bad-parent",
                        Severity::Error,
                        Some(ino),
                        format!(
                            "directory {ino} says its parent is {} but it is an entry of \
                             directory {p}",
                            rec.parent
                        ),
                        Some(Fix::SetParent(ino, p)),
                    );
                }
            } else {
                if !names.is_empty() {
                    c.find(
                        "directory-links",
                        Severity::Error,
                        Some(ino),
                        format!("the root directory is an entry of directories {names:?}"),
                        None,
                    );
                }
                if rec.parent != ROOT_INO {
                    c.find(
                        "bad-parent",
                        Severity::Error,
                        Some(ino),
                        format!("the root's parent is {}, not itself", rec.parent),
                        Some(Fix::SetParent(ino, ROOT_INO)),
                    );
                }
            }
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            named
        };
        let unlinked_orphan = orphan && named == 0;
        if !unlinked_orphan && rec.nlink != expected {
            c.find(
                "wrong-nlink",
                Severity::Error,
                Some(ino),
                format!(
                    "inode {ino} has link count {}, its entries make it {expected}",
                    rec.nlink
                ),
                Some(Fix::SetNlink(ino, expected)),
            );
        }
        if !reached.contains(&ino) && !unlinked_orphan && s.inodes.contains_key(&ROOT_INO) {
            c.find(
                "unreachable-inode",
                Severity::Error,
                Some(ino),
                format!(
                    "inode {ino} ({:?}, {} bytes) cannot be reached from the root{}",
                    rec.kind,
                    rec.size,
                    if named > 0 {
                        " (its directory is cut off from the tree)"
                    } else {
                        " and is not an unlinked-while-open orphan"
                    }
                ),
                match rescued.get(&ino) {
                    Some(&root) if root == ino => Some(Fix::LostFound(ino)),
                    Some(&root) => Some(Fix::ViaLostFound(root)),
                    None => None,
                },
            );
        }
    }
    for ino in &s.orphans {
        if !s.inodes.contains_key(ino) {
            c.find(
                "stale-orphan",
                Severity::Warning,
                Some(*ino),
                format!("orphan record of inode {ino}, which does not exist"),
                Some(Fix::DeleteOrphanKey(*ino)),
            );
        }
    }
    if s.inode_count != s.inodes.len() as u64 {
        c.find(
            "inode-count",
            Severity::Warning,
            None,
            format!(
                "the inode counter says {}, the store holds {} inodes",
                s.inode_count,
                s.inodes.len()
            ),
            Some(Fix::SetInodeCount),
        );
    }
}

/// A slice some file uses: its size, owner, and the segments that show it.
struct LiveSlice {
    size: u32,
    ino: Ino,
    chunk: u32,
    /// (offset in slice, length) of each segment.
    ranges: Vec<(u32, u32)>,
}

impl LiveSlice {
    /// The repair of lost bytes of this slice (`range`: a part of it; all of it if `None`).
    fn hole(&self, id: u64, range: Option<(u32, u32)>) -> Fix {
        Fix::Hole {
            ino: self.ino,
            chunk: self.chunk,
            slice: id,
            range,
        }
    }
}

fn check_data(
    c: &mut Checker,
    s: &Snapshot,
    objects: &HashMap<&str, &ObjectInfo>,
    log: Option<&staging::LogScan>,
) -> Result<BTreeMap<u64, LiveSlice>> {
    c.stats.segments = s.segs.len() as u64;
    let live = live_slices(c, s);
    c.stats.live_slices = live.len() as u64;
    c.stats.live_bytes = live.values().map(|l| l.size as u64).sum();
    let in_log: HashMap<u64, &LogRecord> = log
        .map(|l| {
            l.records
                .iter()
                .filter(|r| r.record.header.slice_id != 0)
                .map(|r| (r.record.header.slice_id, r))
                .collect()
        })
        .unwrap_or_default();
    let total = live.len() as u64;
    let mut done = 0u64;
    for (&id, l) in &live {
        done += 1;
        if done.is_multiple_of(256) || done == total {
            (c.progress)(
                if c.opts.verify_data { "verify" } else { "data" },
                done,
                total,
            );
        }
        let ino = l.ino;
        if s.dead.contains_key(&id) {
            c.find(
                "dead-but-live",
                Severity::Error,
                Some(ino),
                format!(
                    "slice {id} is queued for deletion but the file still shows it: the \
                     garbage collector would delete live data"
                ),
                Some(Fix::UndeadSlice(id)),
            );
        }
        // Where its bytes are: the staging log, a pack, or block objects.
        if let Some(t) = s.staged.get(&id) {
            check_staged_slice(c, id, l, t, log.is_some(), &in_log);
        } else if let Some(p) = s.packed.get(&id) {
            check_packed_slice(c, id, l, p, objects)?;
        } else {
            check_block_slice(c, id, l, objects)?;
        }
    }
    for (id, t) in &s.staged {
        if !live.contains_key(id) && !s.dead.contains_key(id) {
            c.find(
                "staged-unreferenced",
                Severity::Warning,
                Some(t.ino),
                format!(
                    "slice {id} ({} bytes) is staged but no file uses it (its log space is \
                     never freed)",
                    t.size
                ),
                Some(Fix::DeleteStaged(*id)),
            );
        }
    }
    Ok(live)
}

/// The slices the chunk maps show, with the ranges they show; segments that make no sense
/// (malformed, overlapping, of a missing inode or of a non-file) are findings instead.
fn live_slices(c: &mut Checker, s: &Snapshot) -> BTreeMap<u64, LiveSlice> {
    let cs = c.volume.chunk_size;
    let mut live: BTreeMap<u64, LiveSlice> = BTreeMap::new();
    let mut prev: Option<(Ino, u32, u32)> = None; // (ino, chunk, end)
    let mut missing_inodes = BTreeSet::new();
    for (ino, chunk, key_pos, seg) in &s.segs {
        let (ino, chunk) = (*ino, *chunk);
        let Some(rec) = s.inodes.get(&ino) else {
            if missing_inodes.insert(ino) {
                c.find(
                    "segments-without-inode",
                    Severity::Warning,
                    Some(ino),
                    format!("inode {ino} does not exist but has data segments (leaked data)"),
                    Some(Fix::DropSegmentsOf(ino)),
                );
            }
            continue;
        };
        let what = format!("segment at chunk {chunk} position {key_pos} of inode {ino}");
        let malformed = if *key_pos != seg.pos {
            Some(format!("{what} says it starts at {}", seg.pos))
        } else if seg.len == 0 {
            Some(format!("{what} is empty"))
        } else if seg.pos as u64 + seg.len as u64 > cs {
            Some(format!(
                "{what} ({} bytes) runs past the end of the chunk",
                seg.len
            ))
        } else if seg.id != 0 && seg.off as u64 + seg.len as u64 > seg.size as u64 {
            Some(format!(
                "{what} shows bytes {}..{} of slice {}, which has {} bytes",
                seg.off,
                seg.off as u64 + seg.len as u64,
                seg.id,
                seg.size
            ))
        } else if prev.is_some_and(|(i, ch, end)| i == ino && ch == chunk && end > seg.pos) {
            Some(format!("{what} overlaps the segment before it"))
        } else if rec.kind != FileKind::File {
            Some(format!("{what}: the inode is a {:?}, not a file", rec.kind))
        } else {
            None
        };
        if let Some(m) = malformed {
            c.find(
                "bad-segment",
                Severity::Error,
                Some(ino),
                m,
                Some(Fix::DeleteSegment(ino, chunk, *key_pos)),
            );
            continue;
        }
        prev = Some((ino, chunk, seg.pos + seg.len));
        let end = chunk as u64 * cs + seg.pos as u64 + seg.len as u64;
        if end > rec.size {
            c.find(
                "beyond-size",
                Severity::Warning,
                Some(ino),
                format!(
                    "{what} holds data up to byte {end}, past the file size {}",
                    rec.size
                ),
                None,
            );
        }
        if seg.id == 0 {
            continue;
        }
        let l = live.entry(seg.id).or_insert(LiveSlice {
            size: seg.size,
            ino,
            chunk,
            ranges: Vec::new(),
        });
        if l.ino != ino || l.chunk != chunk || l.size != seg.size {
            c.find(
                "shared-slice",
                Severity::Error,
                Some(ino),
                format!(
                    "slice {} appears in inode {ino} chunk {chunk} and in inode {} chunk {}",
                    seg.id, l.ino, l.chunk
                ),
                None,
            );
            continue;
        }
        l.ranges.push((seg.off, seg.len));
    }
    live
}

/// A staged slice: its `T` record agrees with the chunk map, and its record is in the
/// staging log (when the log was given).
fn check_staged_slice(
    c: &mut Checker,
    id: u64,
    l: &LiveSlice,
    t: &StagedRec,
    log_given: bool,
    in_log: &HashMap<u64, &LogRecord>,
) {
    let (ino, chunk) = (l.ino, l.chunk);
    c.stats.staged_slices += 1;
    if t.ino != ino || t.chunk != chunk || t.size != l.size {
        c.find(
            "staged-mismatch",
            Severity::Warning,
            Some(ino),
            format!(
                "staged record of slice {id} says inode {} chunk {} size {}, the file \
                 says inode {ino} chunk {chunk} size {}",
                t.ino, t.chunk, t.size, l.size
            ),
            None,
        );
    }
    if !log_given {
        c.stats.staged_unchecked += 1;
        return;
    }
    match in_log.get(&id) {
        Some(r) if r.record.header.len - r.record.header.meta_len >= l.size => {}
        _ => c.find(
            "staged-missing",
            Severity::Error,
            Some(ino),
            format!(
                "slice {id} ({} bytes) is staged but not in the staging log: its data \
                 is lost",
                l.size
            ),
            Some(l.hole(id, None)),
        ),
    }
}

/// A packed slice: its `L` record agrees with the chunk map and its bytes are inside the
/// pack object (and match their CRC with `--verify-data`).
fn check_packed_slice(
    c: &mut Checker,
    id: u64,
    l: &LiveSlice,
    p: &PackedRec,
    objects: &HashMap<&str, &ObjectInfo>,
) -> Result<()> {
    let ino = l.ino;
    c.stats.packed_slices += 1;
    let key = schema::pack_object_key(p.pack);
    if p.len != l.size {
        c.find(
            "bad-packed-record",
            Severity::Error,
            Some(ino),
            format!(
                "slice {id} has {} bytes but its pack record says {}",
                l.size, p.len
            ),
            Some(l.hole(id, None)),
        );
        return Ok(());
    }
    let Some(obj) = objects.get(key.as_str()) else {
        c.find(
            "missing-pack",
            Severity::Error,
            Some(ino),
            format!(
                "pack object {key} holding slice {id} ({} bytes) is missing: the data \
                 is lost",
                l.size
            ),
            Some(l.hole(id, None)),
        );
        return Ok(());
    };
    if p.offset + p.len as u64 > obj.size {
        c.find(
            "corrupt-pack",
            Severity::Error,
            Some(ino),
            format!(
                "pack object {key} is {} bytes, slice {id} is recorded at {}..{}",
                obj.size,
                p.offset,
                p.offset + p.len as u64
            ),
            Some(l.hole(id, None)),
        );
        return Ok(());
    }
    if c.opts.verify_data {
        c.stats.objects_verified += 1;
        let entry = spoolfs_objects::PackEntry {
            slice: id,
            offset: p.offset,
            len: p.len,
            crc: p.crc,
        };
        let read = c
            .storage
            .get_range(&key, p.offset, p.offset + p.len as u64)
            .and_then(|b| verify_packed(&key, &entry, b));
        c.verified(
            read,
            ino,
            l.hole(id, None),
            ("missing-pack", &|| {
                format!("pack object {key} holding slice {id} is missing")
            }),
            ("corrupt-pack", &|e| {
                format!("slice {id} in pack {key}: {e}")
            }),
        )?;
    }
    Ok(())
}

/// A slice of block objects: each block a segment shows is there, with its trailer (and its
/// checksum with `--verify-data`).
fn check_block_slice(
    c: &mut Checker,
    id: u64,
    l: &LiveSlice,
    objects: &HashMap<&str, &ObjectInfo>,
) -> Result<()> {
    let ino = l.ino;
    let bs = c.volume.block_size;
    let keys: Vec<_> = slice_blocks(id, l.size, bs).collect();
    let mut needed = BTreeSet::new();
    for (off, len) in &l.ranges {
        let first = *off as u64 / bs;
        let last = (*off as u64 + *len as u64 - 1) / bs;
        needed.extend(first..=last);
    }
    for idx in needed {
        let (_, blen, key) = &keys[idx as usize];
        let lo = (idx * bs) as u32;
        let range = Some((lo, lo + blen));
        let Some(obj) = objects.get(key.as_str()) else {
            c.find(
                "missing-object",
                Severity::Error,
                Some(ino),
                format!(
                    "block object {key} (bytes {lo}..{} of slice {id}) is missing: that \
                     data is lost",
                    lo + blen
                ),
                Some(l.hole(id, range)),
            );
            continue;
        };
        if obj.size != *blen as u64 + spoolfs_objects::BLOCK_TRAILER_LEN as u64 {
            c.find(
                "corrupt-object",
                Severity::Error,
                Some(ino),
                format!(
                    "block object {key} is {} bytes, expected {}",
                    obj.size,
                    *blen as u64 + spoolfs_objects::BLOCK_TRAILER_LEN as u64
                ),
                Some(l.hole(id, range)),
            );
            continue;
        }
        if c.opts.verify_data {
            c.stats.objects_verified += 1;
            let read = c.storage.get(key).and_then(|b| decode_block(key, b));
            c.verified(
                read,
                ino,
                l.hole(id, range),
                ("missing-object", &|| {
                    format!("block object {key} of slice {id} is missing")
                }),
                ("corrupt-object", &|e| {
                    format!("{e}: bytes {lo}..{} of slice {id} are lost", lo + blen)
                }),
            )?;
        }
    }
    Ok(())
}

fn check_accounting(
    c: &mut Checker,
    s: &Snapshot,
    objects: &HashMap<&str, &ObjectInfo>,
    live: &BTreeMap<u64, LiveSlice>,
) {
    c.stats.packs = s.packs.len() as u64;
    let mut counted: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    for (id, p) in &s.packed {
        let e = counted.entry(p.pack).or_default();
        e.0 += 1;
        e.1 += p.len as u64;
        if !live.contains_key(id) && !s.dead.contains_key(id) {
            c.find(
                "packed-unreferenced",
                Severity::Warning,
                None,
                format!(
                    "slice {id} ({} bytes in pack {}) is packed but no file uses it and it is \
                     not queued for deletion",
                    p.len, p.pack
                ),
                Some(Fix::KillPacked(*id, p.len)),
            );
        }
    }
    let packs: BTreeSet<u64> = s.packs.keys().chain(counted.keys()).copied().collect();
    for pack in packs {
        let key = schema::pack_object_key(pack);
        let (n, bytes) = counted.get(&pack).copied().unwrap_or((0, 0));
        match s.packs.get(&pack) {
            None => c.find(
                "missing-pack-record",
                Severity::Error,
                None,
                format!(
                    "{n} slice(s) are recorded in pack {pack} but the pack has no record{}",
                    if objects.contains_key(key.as_str()) {
                        ""
                    } else {
                        " and no object"
                    }
                ),
                Some(Fix::RecountPacks),
            ),
            Some(p) if p.live_slices != n || p.live_bytes != bytes => c.find(
                "pack-counts",
                Severity::Error,
                None,
                format!(
                    "pack {pack} records {} live slice(s) of {} bytes, its slices add up to \
                     {n} of {bytes} bytes{}",
                    p.live_slices,
                    p.live_bytes,
                    if n == 0 {
                        " (an empty pack the collector never deletes)"
                    } else {
                        ""
                    }
                ),
                Some(Fix::RecountPacks),
            ),
            Some(p) => {
                if let Some(o) = objects.get(key.as_str())
                    && o.size != p.size
                {
                    c.find(
                        "pack-size",
                        Severity::Warning,
                        None,
                        format!(
                            "pack {pack} is recorded as {} bytes, the object has {}",
                            p.size, o.size
                        ),
                        Some(Fix::RecountPacks),
                    );
                }
            }
        }
    }
    let used: u64 = live.values().map(|l| l.size as u64).sum();
    if used != s.used {
        c.find(
            "used-bytes",
            Severity::Warning,
            None,
            format!(
                "the used-bytes counter says {}, the live slices add up to {used}",
                s.used
            ),
            Some(Fix::SetUsed),
        );
    }
}

fn check_orphans(
    c: &mut Checker,
    s: &Snapshot,
    listing: &[ObjectInfo],
    live: &BTreeMap<u64, LiveSlice>,
    log: Option<&staging::LogScan>,
) {
    let bs = c.volume.block_size;
    // Every object some record accounts for (dead slices' objects are the collector's).
    let mut sizes: HashMap<u64, BTreeSet<u32>> = HashMap::new();
    for (id, l) in live {
        sizes.entry(*id).or_default().insert(l.size);
    }
    for (id, d) in &s.dead {
        sizes.entry(*id).or_default().insert(d.size);
    }
    for (id, t) in &s.staged {
        sizes.entry(*id).or_default().insert(t.size);
    }
    let packs: BTreeSet<u64> = s
        .packs
        .keys()
        .copied()
        .chain(s.packed.values().map(|p| p.pack))
        .collect();
    let now = SystemTime::now();
    let mut orphans = Vec::new();
    for o in listing {
        let referenced = match ObjectKey::parse(&o.key) {
            Some(ObjectKey::Block { slice, index, len }) => sizes.get(&slice).is_some_and(|set| {
                set.iter()
                    .any(|size| keys::block_len(*size, index, bs) == Some(len))
            }),
            Some(ObjectKey::Pack(id)) => packs.contains(&id),
            None => {
                if o.key != BUCKET_RECORD_KEY {
                    c.find(
                        "unknown-object",
                        Severity::Note,
                        None,
                        format!(
                            "object {} ({} bytes) is not a spoolfs object; left alone",
                            o.key, o.size
                        ),
                        None,
                    );
                }
                true
            }
        };
        if !referenced {
            orphans.push(o);
        }
    }
    c.stats.orphan_objects = orphans.len() as u64;
    c.stats.orphan_bytes = orphans.iter().map(|o| o.size).sum();
    for o in orphans {
        let age = now.duration_since(o.modified).unwrap_or_default();
        let old = age >= c.opts.orphan_grace;
        c.find(
            "orphan-object",
            Severity::Warning,
            None,
            format!(
                "object {} ({} bytes) is referenced by no metadata{}",
                o.key,
                o.size,
                if old {
                    String::new()
                } else {
                    format!(
                        " (written {}s ago, within the {}s grace period: kept)",
                        age.as_secs(),
                        c.opts.orphan_grace.as_secs()
                    )
                }
            ),
            old.then(|| Fix::DeleteObject(o.key.clone())),
        );
    }
    if let Some(log) = log {
        c.stats.staging_records = log.records.len() as u64;
        let leaked: Vec<&LogRecord> = log
            .records
            .iter()
            .filter(|r| {
                r.record.header.slice_id != 0 && !s.staged.contains_key(&r.record.header.slice_id)
            })
            .collect();
        c.stats.leaked_staging_records = leaked.len() as u64;
        c.stats.leaked_staging_bytes = leaked.iter().map(|r| r.bytes).sum();
        if !leaked.is_empty() {
            c.find(
                "staging-leak",
                Severity::Note,
                None,
                format!(
                    "{} staging-log record(s), {} bytes, belong to no staged slice (uploaded or \
                     dead); the next mount frees them",
                    leaked.len(),
                    c.stats.leaked_staging_bytes
                ),
                None,
            );
        }
    }
}

/// Holes `[lo, hi)` of slice `id` (in slice bytes) in the chunk map; returns the chunk bytes
/// cut.
fn hole_slice(
    t: &mut dyn KvTxn,
    ino: Ino,
    chunk: u32,
    id: u64,
    range: Option<(u32, u32)>,
) -> Result<u64, MetaError> {
    let mut lost = 0u64;
    for seg in data::load(t, ino, chunk, 0, u32::MAX)? {
        if seg.id != id {
            continue;
        }
        let (a, b) = range.unwrap_or((0, u32::MAX));
        let lo = a.max(seg.off);
        let hi = b.min(seg.off + seg.len);
        if lo >= hi {
            continue;
        }
        let start = seg.pos + (lo - seg.off);
        let end = seg.pos + (hi - seg.off);
        data::cut_stored(t, ino, chunk, start, end)?;
        lost += (end - start) as u64;
    }
    Ok(lost)
}

/// The name `fsck` gives relinked inodes' directory in the root.
pub const LOST_FOUND: &[u8] = b"lost+found";

/// Links each of `inos` (unreachable, with no name) into `/lost+found` as `#INO`, making the
/// directory if needed; returns those relinked (none if `lost+found` is taken by a non-directory).
fn relink_lost(t: &mut dyn KvTxn, inos: &[Ino]) -> Result<BTreeSet<Ino>, MetaError> {
    let mut done = BTreeSet::new();
    if inos.is_empty() {
        return Ok(done);
    }
    let now = schema::now_ns();
    let lf = match schema::get_dentry(t, ROOT_INO, LOST_FOUND)? {
        Some(d) if d.kind == FileKind::Dir => d.ino,
        Some(_) => return Ok(done),
        None => {
            let ino = schema::get_u64(t, schema::NEXT_INO_KEY)?.max(ROOT_INO + 1);
            t.put(schema::NEXT_INO_KEY, &(ino + 1).to_be_bytes())?;
            let rec = InodeRec::empty_dir(0o700, ROOT_INO, now);
            schema::put_inode(t, ino, &rec)?;
            t.put(
                &schema::dentry_key(ROOT_INO, LOST_FOUND),
                &schema::encode(&DentryRec {
                    ino,
                    kind: FileKind::Dir,
                }),
            )?;
            let mut root = schema::must_inode(t, ROOT_INO)?;
            root.nlink += 1;
            schema::put_inode(t, ROOT_INO, &root)?;
            ino
        }
    };
    let mut lf_rec = schema::must_inode(t, lf)?;
    for ino in inos {
        let Some(mut rec) = schema::get_inode(t, *ino)? else {
            continue;
        };
        let name = format!("#{ino}");
        t.put(
            &schema::dentry_key(lf, name.as_bytes()),
            &schema::encode(&DentryRec {
                ino: *ino,
                kind: rec.kind,
            }),
        )?;
        if rec.kind == FileKind::Dir {
            rec.parent = lf;
            lf_rec.nlink += 1;
        } else {
            rec.nlink = 1;
        }
        rec.ctime_ns = now;
        schema::put_inode(t, *ino, &rec)?;
        done.insert(*ino);
    }
    lf_rec.mtime_ns = now;
    lf_rec.ctime_ns = now;
    schema::put_inode(t, lf, &lf_rec)?;
    Ok(done)
}

fn repair(c: &mut Checker, meta: &dyn KvStore, objects: &HashMap<&str, &ObjectInfo>) -> Result<()> {
    let fixes = c.fixes.clone();
    let mut lost_bytes = 0u64;
    let mut emptied_packs: Vec<u64> = Vec::new();
    let mut applied: Vec<usize> = Vec::new();
    meta.update(Durability::Durable, &mut |t| {
        lost_bytes = 0;
        emptied_packs.clear();
        applied.clear();
        // Slices whose bytes were cut: dead if nothing shows them any more.
        let mut cut: BTreeMap<u64, (Ino, u32, u32)> = BTreeMap::new();
        for (at, fix) in &fixes {
            match fix {
                Fix::DeleteDentry(p, name) => t.delete(&schema::dentry_key(*p, name))?,
                Fix::SetDentryKind(p, name, d) => {
                    t.put(&schema::dentry_key(*p, name), &schema::encode(d))?
                }
                Fix::SetNlink(ino, n) => {
                    if let Some(mut rec) = schema::get_inode(t, *ino)? {
                        rec.nlink = *n;
                        schema::put_inode(t, *ino, &rec)?;
                    }
                }
                Fix::SetParent(ino, p) => {
                    if let Some(mut rec) = schema::get_inode(t, *ino)? {
                        rec.parent = *p;
                        schema::put_inode(t, *ino, &rec)?;
                    }
                }
                Fix::DeleteOrphanKey(ino) => t.delete(&schema::orphan_key(*ino))?,
                Fix::Hole {
                    ino,
                    chunk,
                    slice,
                    range,
                } => {
                    let size = data::load(t, *ino, *chunk, 0, u32::MAX)?
                        .iter()
                        .find(|s| s.id == *slice)
                        .map(|s| s.size);
                    lost_bytes += hole_slice(t, *ino, *chunk, *slice, *range)?;
                    if let Some(size) = size {
                        cut.insert(*slice, (*ino, *chunk, size));
                    }
                }
                Fix::DeleteSegment(ino, chunk, pos) => {
                    let key = schema::seg_key(*ino, *chunk, *pos);
                    if let Some(v) = t.get(&key)? {
                        let seg: SliceRec = schema::decode("segment", &v)?;
                        t.delete(&key)?;
                        if seg.id != 0 {
                            cut.insert(seg.id, (*ino, *chunk, seg.size));
                        }
                    }
                }
                Fix::DropSegmentsOf(ino) => {
                    let mut seen = BTreeSet::new();
                    for (chunk, seg) in data::load_all(t, *ino)? {
                        t.delete(&schema::seg_key(*ino, chunk, seg.pos))?;
                        if seg.id != 0 && seen.insert(seg.id) {
                            t.put(
                                &schema::dead_key(seg.id),
                                &schema::encode(&DeadSlice { size: seg.size }),
                            )?;
                        }
                    }
                }
                Fix::UndeadSlice(id) => t.delete(&schema::dead_key(*id))?,
                Fix::DeleteStaged(id) => t.delete(&schema::staged_key(*id))?,
                Fix::KillPacked(id, len) => t.put(
                    &schema::dead_key(*id),
                    &schema::encode(&DeadSlice { size: *len }),
                )?,
                // Below, once everything else is in place.
                Fix::LostFound(_) | Fix::ViaLostFound(_) => continue,
                Fix::RecountPacks | Fix::SetUsed | Fix::SetInodeCount | Fix::DeleteObject(_) => {}
            }
            applied.push(*at);
        }
        let lost: Vec<Ino> = fixes
            .iter()
            .filter_map(|(_, f)| match f {
                Fix::LostFound(ino) => Some(*ino),
                _ => None,
            })
            .collect();
        let relinked = relink_lost(t, &lost)?;
        for (at, fix) in &fixes {
            match fix {
                Fix::LostFound(ino) | Fix::ViaLostFound(ino) if relinked.contains(ino) => {
                    applied.push(*at)
                }
                _ => {}
            }
        }
        // Slices cut away entirely: where their bytes were decides what is left to do.
        for (id, (ino, chunk, size)) in &cut {
            let still = data::load(t, *ino, *chunk, 0, u32::MAX)?
                .iter()
                .any(|s| s.id == *id);
            if still {
                continue;
            }
            let staged = schema::staged_key(*id);
            if t.get(&staged)?.is_some() {
                // Its log space is freed by the next mount (no `T` record points at it).
                t.delete(&staged)?;
            } else if t.get(&schema::packed_key(*id))?.is_some() {
                // Counted out of its pack below.
                t.delete(&schema::packed_key(*id))?;
            } else {
                // Whatever blocks are left go with the collector.
                t.put(
                    &schema::dead_key(*id),
                    &schema::encode(&DeadSlice { size: *size }),
                )?;
            }
        }
        // Accounting, recomputed from what is now in the store.
        let mut counted: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
        for (_, v) in t.scan(b"L", b"M", usize::MAX)? {
            let p: PackedRec = schema::decode("packed slice", &v)?;
            let e = counted.entry(p.pack).or_default();
            e.0 += 1;
            e.1 += p.len as u64;
        }
        let recorded: Vec<(u64, PackRec)> = t
            .scan(b"P", b"Q", usize::MAX)?
            .into_iter()
            .map(|(k, v)| Ok((be64(&k[1..]), schema::decode::<PackRec>("pack", &v)?)))
            .collect::<Result<_, MetaError>>()?;
        let recorded: BTreeMap<u64, PackRec> = recorded.into_iter().collect();
        let all: BTreeSet<u64> = recorded.keys().chain(counted.keys()).copied().collect();
        for pack in all {
            let key = schema::pack_object_key(pack);
            let object = objects.get(key.as_str());
            let (n, bytes) = counted.get(&pack).copied().unwrap_or((0, 0));
            if n == 0 {
                if recorded.contains_key(&pack) {
                    t.delete(&schema::pack_key(pack))?;
                }
                if object.is_some() {
                    emptied_packs.push(pack);
                }
                continue;
            }
            let size = object
                .map(|o| o.size)
                .or_else(|| recorded.get(&pack).map(|p| p.size))
                .unwrap_or(0);
            let rec = PackRec {
                size,
                live_slices: n,
                live_bytes: bytes,
            };
            if recorded.get(&pack) != Some(&rec) {
                t.put(&schema::pack_key(pack), &schema::encode(&rec))?;
            }
        }
        let mut used = 0u64;
        let mut seen = BTreeSet::new();
        for (_, v) in t.scan(b"C", b"D", usize::MAX)? {
            let seg: SliceRec = schema::decode("segment", &v)?;
            if seg.id != 0 && seen.insert(seg.id) {
                used += seg.size as u64;
            }
        }
        schema::set_counter(t, schema::USED_BYTES_KEY, used)?;
        let inodes = t.scan(b"I", b"J", usize::MAX)?.len() as u64;
        schema::set_counter(t, schema::INODE_COUNT_KEY, inodes)?;
        Ok(())
    })?;
    c.stats.data_lost_bytes = lost_bytes;
    for at in applied {
        if !matches!(
            c.fixes.iter().find(|(i, _)| *i == at),
            Some((_, Fix::DeleteObject(_)))
        ) {
            c.findings[at].repaired = true;
        }
    }
    for pack in emptied_packs {
        // Unreferenced now; should this fail, the next fsck reports it as an orphan.
        let _ = c.storage.delete(&schema::pack_object_key(pack));
    }
    let deletions: Vec<(usize, String)> = c
        .fixes
        .iter()
        .filter_map(|(at, f)| match f {
            Fix::DeleteObject(k) => Some((*at, k.clone())),
            _ => None,
        })
        .collect();
    let total = deletions.len() as u64;
    for (n, (at, key)) in deletions.into_iter().enumerate() {
        if n % 256 == 0 {
            (c.progress)("delete", n as u64, total);
        }
        if let Err(e) = c.storage.delete(&key) {
            // The metadata is already repaired: report the object and go on.
            c.findings[at].message += &format!(" (cannot delete it: {e})");
            continue;
        }
        c.stats.orphan_objects_deleted += 1;
        c.stats.orphan_bytes_deleted += objects.get(key.as_str()).map_or(0, |o| o.size);
        c.findings[at].repaired = true;
    }
    Ok(())
}
