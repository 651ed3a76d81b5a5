//! Checks of the test support library itself (no spoolfs needed): the S3 server helper, the
//! data generators and the snapshot helpers.

use spoolfs_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[test]
fn s3_server_starts_answers_and_stops() {
    let mut a = S3Server::start();
    let b = S3Server::start();
    assert_ne!(a.port(), b.port(), "two servers share a port");
    assert!(
        a.bucket_dir(TEST_BUCKET).is_dir(),
        "bucket directory missing"
    );
    // Without a signature the server must answer with an HTTP error, not hang or close.
    let status = a.http_status("GET", &format!("/{TEST_BUCKET}/"));
    assert!(status.starts_with("HTTP/1.1 "), "bad answer: {status:?}");
    assert!(a.is_running(), "s3s-fs exited: {}", a.log());
    let port = a.port();
    a.stop();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "port {port} still open after stop"
    );
}

#[test]
fn rng_and_checksum_are_deterministic() {
    assert_eq!(random_bytes(7, 1000), random_bytes(7, 1000));
    assert_ne!(random_bytes(7, 1000), random_bytes(8, 1000));
    let a = random_bytes(1, 4097);
    let mut b = a.clone();
    assert_eq!(checksum(&a), checksum(&b));
    b[4096] ^= 1;
    assert_ne!(checksum(&a), checksum(&b));
    assert_ne!(checksum(&[]), checksum(&[0]));
    assert_ne!(checksum(&[0; 8]), checksum(&[0; 16]));
}

#[test]
fn snapshot_sees_local_tree() {
    let d = temp_dir("snap");
    std::fs::create_dir(d.path().join("x")).unwrap();
    std::fs::write(d.path().join("x/f"), b"abc").unwrap();
    std::os::unix::fs::symlink("f", d.path().join("x/l")).unwrap();
    let s = snapshot_tree(d.path(), SnapOptions::EXACT);
    assert_eq!(s.len(), 4);
    let f = &s[std::path::Path::new("x/f")];
    assert_eq!(f.kind, 'f');
    assert_eq!(f.size, Some(3));
    assert_eq!(f.content, Some(checksum(b"abc")));
    let l = &s[std::path::Path::new("x/l")];
    assert_eq!(l.symlink_target.as_deref(), Some(std::path::Path::new("f")));
    assert_snapshots_eq(
        &snapshot_tree(d.path(), SnapOptions::EXACT),
        &s,
        "same tree",
    );
}

#[test]
fn command_environment_is_scrubbed() {
    let out = run(&mut command("env"), Duration::from_secs(10));
    out.assert_success();
    for bad in [
        "AWS_CA_BUNDLE=",
        "REQUESTS_CA_BUNDLE=",
        "CURL_CA_BUNDLE=",
        "SSL_CERT_DIR=",
        "SSL_CERT_FILE=",
        "AWS_PROFILE=",
    ] {
        assert!(
            !out.stdout.lines().any(|l| l.starts_with(bad)),
            "{bad} leaked into the child environment"
        );
    }
    assert!(
        out.stdout
            .lines()
            .any(|l| l == format!("AWS_SECRET_ACCESS_KEY={TEST_SECRET_KEY}"))
    );
}

/// The report on a process that makes no progress names each of its threads with its state,
/// and says when the process is gone.
#[test]
fn process_snapshot_names_the_threads_of_a_waiting_process() {
    let mut child = command("sleep").arg("30").spawn().expect("start sleep");
    std::thread::sleep(Duration::from_millis(200));
    let snapshot = process_snapshot(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("{snapshot}");
    assert!(
        snapshot.contains(&format!("thread {} sleep state S", child.id())),
        "{snapshot}"
    );
    assert!(process_snapshot(child.id()).contains("(gone)"));
}
