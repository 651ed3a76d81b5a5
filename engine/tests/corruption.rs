//! Corruption in the staging logs is reported, never silently turned into holes, and costs
//! only the damaged record's data: replay keeps every other record whose checks pass.

use spoolfs_engine::staging::{LogRecord, scan_dir};
use spoolfs_engine::writeback::StagingSettings;
use spoolfs_engine::*;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{Volume as Fixture, create_file, read_all};
use spoolfs_testkit::random_bytes;

/// Staging settings with no uploader (everything stays staged) in the fixture's cache dir.
fn settings(f: &Fixture) -> StagingSettings {
    StagingSettings {
        upload_threads: 0,
        ..StagingSettings::for_tests(f.dir.path().join("cache"))
    }
}

/// A writeback engine whose metadata store is never checkpointed on its own: a drop without
/// shutdown leaves every change only in the logs, as a SIGKILL does.
fn engine(f: &Fixture) -> Arc<Engine> {
    let config = EngineConfig {
        meta_flush_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    f.start_engine(Some(&settings(f)), config)
}

fn data_log_dir(f: &Fixture) -> std::path::PathBuf {
    f.dir
        .path()
        .join("cache")
        .join(f.record().uuid)
        .join("data")
}

fn uuid_bytes(f: &Fixture) -> [u8; 16] {
    *uuid::Uuid::parse_str(&f.record().uuid).unwrap().as_bytes()
}

/// Flips one byte of the segment file at `path`, offset `at`.
fn flip_byte(path: &std::path::Path, at: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    file.write_all_at(&b, at).unwrap();
    file.sync_all().unwrap();
}

/// Creates `n` files of `size` bytes, each closed (acknowledged), and returns them.
/// The record of file `ino` in the staging log of `f`.
fn staged_record(f: &Fixture, ino: Ino) -> LogRecord {
    scan_dir(&data_log_dir(f), uuid_bytes(f))
        .unwrap()
        .records
        .into_iter()
        .find(|r| r.record.header.ino == ino)
        .expect("the file's record is in the log")
}

fn write_files(e: &Engine, n: usize, size: usize) -> Vec<(String, Ino, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let data = random_bytes(100 + i as u64, size);
            let name = format!("f{i:02}");
            let ino = create_file(e, &name, &data);
            (name, ino, data)
        })
        .collect()
}

/// The confirmed scenario of a user: twenty 64 KiB files closed and still staged, a crash,
/// one byte changed in the middle of one file's staged data. That file loses its damaged
/// range (reported); the other nineteen, and every namespace change after the damaged record,
/// come back byte for byte.
#[test]
fn one_bad_byte_in_staged_data_costs_only_that_record() {
    let f = Fixture::new();
    let e = engine(&f);
    let files = write_files(&e, 20, 64 << 10);
    drop(e); // a crash: nothing checkpointed, nothing uploaded

    let victim = 6;
    let rec = staged_record(&f, files[victim].1);
    assert!(
        rec.record.header.meta_len > 0,
        "the close carried its namespace change"
    );
    flip_byte(&rec.path, rec.data_offset + 32 * 1024);

    let e = engine(&f);
    for (i, (name, ino, data)) in files.iter().enumerate() {
        let found = e.lookup(ROOT_INO, name.as_bytes());
        assert!(found.is_ok(), "{name} is gone after replay: {found:?}");
        assert_eq!(found.unwrap().ino, *ino);
        if i == victim {
            continue;
        }
        let got = read_all(&e, *ino);
        assert!(
            crc32c::crc32c(&got) == crc32c::crc32c(data) && got == *data,
            "{name} reads back different bytes"
        );
    }
    // The victim's damaged range reads as a hole and is reported.
    let got = read_all(&e, files[victim].1);
    assert_eq!(got.len(), 64 << 10, "the victim keeps its size");
    assert!(
        got.iter().all(|&b| b == 0),
        "the damaged range reads as zeros"
    );
    let losses = e.data_losses().unwrap();
    assert_eq!(losses.len(), 1, "one reported loss: {losses:?}");
    let loss = &losses[0];
    assert_eq!(loss.ino, files[victim].1);
    assert_eq!((loss.offset, loss.bytes), (0, 64 << 10));
    assert_eq!(loss.path.as_deref(), Some("/f06"));
    assert!(loss.cause.contains("checksum"), "{}", loss.cause);
    // fsck reports it as DATA LOSS (an error) until told to forget it.
    e.fsyncdir(ROOT_INO).unwrap(); // a checkpoint: the store alone holds everything
    drop(e);
    let report = fsck_report(&f, false);
    let found = report.of_kind("data-loss");
    assert_eq!(found.len(), 1, "{:?}", report.findings);
    assert_eq!(found[0].ino, Some(files[victim].1));
    assert!(
        found[0].message.contains("DATA LOSS"),
        "{}",
        found[0].message
    );
    assert!(report.unrepaired_errors() > 0);
    assert_eq!(report.stats.recorded_lost_bytes, 64 << 10);
    let forgotten = fsck_report(&f, true);
    assert_eq!(forgotten.stats.losses_forgotten, 1);
    assert!(fsck_report(&f, false).of_kind("data-loss").is_empty());
}

/// `fsck` of the (unmounted, crashed) volume with its staging log.
fn fsck_report(f: &Fixture, forget_losses: bool) -> spoolfs_engine::fsck::FsckReport {
    use spoolfs_engine::fsck::{FsckOptions, fsck};
    let record = f.record();
    let meta = f.meta();
    let storage = spoolfs_objects::ObjectStorage::open(&f.storage_config()).unwrap();
    let opts = FsckOptions {
        staging_dir: Some(f.dir.path().join("cache").join(&record.uuid)),
        forget_losses,
        ..Default::default()
    };
    fsck(meta.as_ref(), &storage, &record, &opts, &mut |_, _, _| {}).unwrap()
}

/// A cache directory wiped (or replaced by an empty one) at the same path while the volume
/// still had staged data there (ephemeral NVMe after a reboot): the mount recognises it and
/// records what was lost, file by file, instead of starting clean.
#[test]
fn a_wiped_cache_directory_is_recognised_and_its_losses_recorded() {
    let f = Fixture::new();
    let e = engine(&f);
    let files = write_files(&e, 3, 10_000);
    // A checkpoint: the files' names and `T` records are in the metadata store itself.
    e.fsyncdir(ROOT_INO).unwrap();
    drop(e); // a crash with everything still staged
    std::fs::remove_dir_all(f.dir.path().join("cache")).unwrap();

    let e = engine(&f);
    let losses = e.data_losses().unwrap();
    for (name, ino, _) in &files {
        let loss = losses
            .iter()
            .find(|l| l.ino == *ino)
            .unwrap_or_else(|| panic!("no loss recorded for {name}: {losses:?}"));
        assert_eq!((loss.offset, loss.bytes), (0, 10_000));
        assert_eq!(loss.path.as_deref(), Some(format!("/{name}").as_str()));
        assert!(loss.cause.contains("not the one"), "{}", loss.cause);
        // The name is still there, its data reads as zeros.
        assert!(read_all(&e, *ino).iter().all(|&b| b == 0));
    }
    assert!(
        losses
            .iter()
            .any(|l| l.ino == 0 && l.cause.contains("namespace changes")),
        "the namespace changes after the checkpoint are reported: {losses:?}"
    );
    assert_eq!(e.status().staged_slices, 0);
    drop(e);
    // Nothing more is lost at the next mount: the new directory is now the volume's.
    let e = engine(&f);
    assert_eq!(e.data_losses().unwrap().len(), losses.len());
    drop(e);
}

/// A clean history: no loss is ever recorded by a crash and a remount of an intact cache.
#[test]
fn an_intact_cache_after_a_crash_records_no_loss() {
    let f = Fixture::new();
    let e = engine(&f);
    let files = write_files(&e, 5, 70_000);
    drop(e);
    let e = engine(&f);
    assert!(e.data_losses().unwrap().is_empty());
    for (_, ino, data) in &files {
        assert!(read_all(&e, *ino) == *data);
    }
    drop(e);
}

/// Where in the victim's staged record a byte is changed.
#[derive(Debug, Clone, Copy)]
enum Spot {
    /// Inside the namespace change the record carries (after the slice's data).
    CarriedChange,
    /// Inside the record header (its slice id): the record's length is unknown.
    RecordHeader,
}

/// Damage that takes the namespace change a record carried: that change is lost (recorded
/// as a loss), and replay goes on past its number, so every later file comes back.
#[test]
fn damage_to_a_carried_change_loses_only_that_change() {
    for spot in [Spot::CarriedChange, Spot::RecordHeader] {
        let f = Fixture::new();
        let e = engine(&f);
        let files = write_files(&e, 12, 64 << 10);
        drop(e);

        let victim = 4;
        let rec = staged_record(&f, files[victim].1);
        let header_at = rec.data_offset - 4096;
        assert_eq!(header_at, rec.record.loc.offset, "one 4 KiB header block");
        let at = match spot {
            Spot::CarriedChange => {
                rec.data_offset + u64::from(rec.record.header.len - rec.record.header.meta_len / 2)
            }
            Spot::RecordHeader => rec.record.loc.offset + 40,
        };
        flip_byte(&rec.path, at);

        let e = engine(&f);
        for (i, (name, ino, data)) in files.iter().enumerate() {
            if i == victim {
                continue;
            }
            let found = e.lookup(ROOT_INO, name.as_bytes());
            assert!(found.is_ok(), "{spot:?}: {name} is gone: {found:?}");
            assert!(read_all(&e, *ino) == *data, "{spot:?}: {name} differs");
        }
        let losses = e.data_losses().unwrap();
        assert!(
            losses
                .iter()
                .any(|l| l.cause.contains("namespace change") && l.cause.contains("missing")),
            "{spot:?}: the lost change is recorded: {losses:?}"
        );
        if let Spot::RecordHeader = spot {
            assert!(
                losses.iter().any(|l| l.cause.contains("record header")),
                "{spot:?}: the unreadable region is recorded: {losses:?}"
            );
        }
        drop(e);
    }
}
