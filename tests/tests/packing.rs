//! The seed workload of the aggregating uploader, at reduced size, on the loopback S3 server:
//! thousands of small files written by a shell loop into one directory reach the object store
//! in a handful of PUTs (pack objects), not one per file, and read back from there.

use spoolfs_tests::*;
use std::fs;
use std::time::Duration;

const FILES: usize = 2000;

#[test]
fn small_files_reach_s3_in_a_few_puts() {
    require_fuse!();
    let vol = Volume::new(Backend::S3);
    let m = vol.mount();
    fs::create_dir(m.join("many")).unwrap();
    let script = format!(
        "cd {} && for i in $(seq 1 {FILES}); do echo \"file $i\" > f$i; done",
        m.join("many").display()
    );
    let started = std::time::Instant::now();
    let out = run(
        command("bash").args(["-c", &script]),
        Duration::from_secs(300),
    );
    assert!(out.success(), "shell loop failed: {out:?}");
    let write_secs = started.elapsed().as_secs_f64();
    let out = run(
        vol.spoolfs().arg("sync").arg(m.join("many")),
        Duration::from_secs(300),
    );
    assert!(out.success(), "spoolfs sync failed: {out:?}");
    let objects = vol.chunk_files();
    let total_bytes: usize = (1..=FILES).map(|i| format!("file {i}\n").len()).sum();
    // A pack is sealed when full (8 MiB) or when its oldest slice has waited the upload delay
    // (0.5 s by default): so at most one PUT per half second of writing, plus the full packs,
    // plus a little slack for the uploader threads, and never anything like one per file.
    let bound = (write_secs / 0.5).ceil() as usize + total_bytes / (8 << 20) + 4;
    eprintln!(
        "{FILES} files, {total_bytes} bytes written in {write_secs:.1} s: {} data objects in the \
         bucket (bound {bound})",
        objects.len()
    );
    assert!(
        !objects.is_empty() && objects.len() <= bound && objects.len() * 20 < FILES,
        "{} data objects for {FILES} files of {total_bytes} bytes",
        objects.len()
    );
    m.unmount();
    // A fresh cache directory: every byte now comes from the bucket.
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(vol.new_subdir("fresh-cache")),
        ..Default::default()
    });
    for i in 1..=FILES {
        let got = fs::read(m.join(format!("many/f{i}"))).unwrap();
        assert_eq!(got, format!("file {i}\n").into_bytes(), "many/f{i}");
    }
    m.unmount();
}
