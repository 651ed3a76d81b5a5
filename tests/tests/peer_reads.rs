//! Reads of data staged on another node: two mounts of one PostgreSQL volume (separate
//! processes and cache directories, as two nodes). A file closed on A and still staged there
//! reads byte-exact on B at once, from A; while A is down, B's read waits for the upload up to
//! --peer-timeout and fails with EIO; once A is back and has uploaded, B reads it. A's peer
//! server answers only holders of the volume's secret.

use spoolfs_peer::{PeerClient, PeerClientConfig, PeerError};
use spoolfs_testkit::pg::PgServer;
use spoolfs_tests::*;
use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn sessions(vol: &Volume) -> Vec<serde_json::Value> {
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url, "--json"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    v["sessions"].as_array().cloned().unwrap_or_default()
}

/// The volume's peer secret, as stored in its metadata (key `A`).
fn volume_secret(pg: &PgServer, vol: &Volume) -> Vec<u8> {
    let db = vol.meta_url.rsplit('/').next().expect("database name");
    let hex = pg.psql(
        db,
        "SELECT encode(v, 'hex') FROM spoolfs_kv WHERE k = '\\x41'::bytea",
    );
    let hex = hex.trim();
    assert_eq!(hex.len(), 64, "a 32-byte peer secret at format: {hex:?}");
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

const NO_UPLOAD: &[&str] = &["--upload-delay", "3600"];

#[test]
fn a_file_staged_on_another_node_reads_from_it_and_only_with_the_volume_secret() {
    require_fuse!();
    let pg = spoolfs_testkit::require_postgres!();
    let vol = Volume::on_postgres(pg);
    let a = vol.mount_node("a", NO_UPLOAD);
    let b = vol.mount_node("b", &[]);

    let big = random_bytes(11, (3 << 20) + 123);
    let small = random_bytes(12, 777);
    fs::write(a.join("big"), &big).unwrap();
    fs::write(a.join("small"), &small).unwrap();
    // Closed on A, staged there: nothing is in the object store yet.
    assert!(
        vol.chunk_files().is_empty(),
        "objects before any upload: {:?}",
        vol.chunk_files()
    );
    let got_big = fs::read(b.join("big")).unwrap();
    let got_small = fs::read(b.join("small")).unwrap();
    assert_eq!(checksum(&got_big), checksum(&big), "CRC-32C of big on B");
    assert_bytes_eq(&got_big, &big, "big on B");
    assert_bytes_eq(&got_small, &small, "small on B");

    // A was asked to upload what B read, ahead of its hour-long upload delay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while vol.chunk_files().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !vol.chunk_files().is_empty(),
        "A did not upload the slices B read"
    );

    // A's peer server: the volume's secret gets past authentication (the slice asked for
    // is simply not staged); any other secret is refused.
    let list = sessions(&vol);
    let secret = volume_secret(pg, &vol);
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let status = vol.spoolfs_run(["status", "--meta", &vol.meta_url, "--json"]);
    assert!(
        !status.stdout.contains(&secret_hex),
        "status shows the secret"
    );
    let a_cache = a.cache_dir().display().to_string();
    let a_session = list
        .iter()
        .find(|s| {
            s["cache_dir"]
                .as_str()
                .is_some_and(|d| d.starts_with(&a_cache))
        })
        .unwrap_or_else(|| panic!("A's session in {list:?}"));
    let addr: SocketAddr = a_session["peer_addr"]
        .as_str()
        .expect("A advertises a peer address")
        .parse()
        .unwrap();
    let record = vol.spoolfs_run(["status", "--meta", &vol.meta_url, "--json"]);
    let v: serde_json::Value = serde_json::from_str(record.stdout.trim()).unwrap();
    let uuid = v["volume_uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("volume uuid in {v}"))
        .to_string();
    let uuid: Vec<u8> = uuid
        .replace('-', "")
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
    let volume_id: [u8; 16] = uuid.try_into().unwrap();
    let config = PeerClientConfig {
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let right = PeerClient::new(volume_id, &secret, config.clone()).unwrap();
    match right.read(addr, u64::MAX - 1, 0, 10) {
        Err(PeerError::NotStaged { .. }) => {}
        other => panic!("with the volume's secret: {other:?}"),
    }
    let mut wrong_secret = secret.clone();
    wrong_secret[0] ^= 1;
    let wrong = PeerClient::new(volume_id, &wrong_secret, config).unwrap();
    match wrong.read(addr, u64::MAX - 1, 0, 10) {
        Err(e @ PeerError::Refused { .. }) => eprintln!("another secret: {e}"),
        other => panic!("with another secret: {other:?}"),
    }

    a.unmount();
    b.unmount();
}

#[test]
fn a_read_of_data_staged_on_a_killed_node_fails_after_the_peer_timeout_then_reads_back() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    let a = vol.mount_node("a", NO_UPLOAD);
    let b = vol.mount_node("b", &["--peer-timeout", "3"]);
    let data = random_bytes(21, (1 << 20) + 5);
    fs::write(a.join("f"), &data).unwrap();
    let a_cache = a.cache_dir().to_path_buf();
    a.kill9();
    assert!(vol.chunk_files().is_empty(), "A uploaded before it died");

    let started = Instant::now();
    let err = fs::read(b.join("f")).expect_err("a read of data only A had");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(20),
        "EIO after {took:?} with --peer-timeout 3"
    );
    let log = b.log_text();
    assert!(
        log.contains("is staged on session") && log.contains("not uploaded"),
        "B's log names A's session: {log}"
    );

    // A mounts again with its cache directory and uploads; B reads the data.
    let a = vol.mount_with(MountOptions {
        cache_dir: Some(a_cache),
        ..Default::default()
    });
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    assert!(!vol.chunk_files().is_empty(), "nothing uploaded after sync");
    let got = fs::read(b.join("f")).unwrap();
    assert_eq!(checksum(&got), checksum(&data));
    assert_bytes_eq(&got, &data, "f on B after A's upload");
    a.unmount();
    b.unmount();
}
