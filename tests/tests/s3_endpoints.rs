//! S3 endpoints: path-style requests chosen by themselves for a loopback endpoint, the flags
//! that force either style, and one-line errors that name the cause and the fix when the
//! store refuses a volume's settings at format or mount.

use spoolfs_tests::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// `spoolfs format --meta … --storage URL EXTRA… vol` with the test keys (and `env` on top).
fn format(dir: &Path, url: &str, extra: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let meta = format!("redb://{}", dir.join("meta.redb").display());
    let mut cmd = command(spoolfs_bin());
    cmd.args(["format", "--meta", &meta, "--storage", url])
        .args(extra)
        .arg("vol");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, T)
}

/// A clean failure whose message is one line and names `cause` and `fix`.
fn assert_one_line_failure(out: &CmdOutput, cause: &str, fix: &str) {
    out.assert_clean_failure(&[cause]);
    let message = out.stderr.trim();
    assert_eq!(message.lines().count(), 1, "not one line: {out}");
    assert!(
        message.contains(fix),
        "does not name the fix {fix:?}: {out}"
    );
}

#[test]
fn format_on_a_loopback_endpoint_needs_no_style_flag() {
    let s3 = S3Server::start();
    let dir = temp_dir("s3-style");
    let url = format!("s3://{TEST_BUCKET}/plain");
    let out = format(dir.path(), &url, &["--s3-endpoint", &s3.endpoint()], &[]);
    out.assert_success();
    assert!(
        out.stdout
            .contains("path-style (the endpoint is an IP address)"),
        "{out}"
    );
    // The record went to the bucket under the prefix: path style reached the right bucket.
    assert!(
        s3.bucket_dir(TEST_BUCKET)
            .join("plain/spoolfs.volume.json")
            .is_file(),
        "{out}"
    );

    // Forcing virtual-hosted requests puts the bucket into the host name, which a loopback
    // address cannot carry: a clear error that names --s3-path-style.
    let dir = temp_dir("s3-style");
    let out = format(
        dir.path(),
        &format!("s3://{TEST_BUCKET}/virt"),
        &[
            "--s3-endpoint",
            &format!("http://localhost:{}", s3.port()),
            "--s3-virtual-hosted",
        ],
        &[],
    );
    assert_one_line_failure(&out, "virtual-hosted", "--s3-path-style");
    let out = format(
        dir.path(),
        &format!("s3://{TEST_BUCKET}/virt"),
        &["--s3-path-style", "--s3-virtual-hosted"],
        &[],
    );
    out.assert_clean_failure(&["cannot be used with"]);
}

#[test]
fn status_says_which_style_is_in_use() {
    require_fuse!();
    let mut v = Volume::unformatted(Backend::S3);
    let endpoint = v.s3().unwrap().endpoint();
    // Only the endpoint: no region, no style flag.
    v.storage_args = vec!["--s3-endpoint".into(), endpoint];
    v.format().assert_success();
    let m = v.mount();
    std::fs::write(m.join("f"), b"data").unwrap();
    let status = v.status_json(m.path());
    let storage = status["engine"]["storage"].as_str().unwrap_or_default();
    assert!(
        storage.contains("path-style: the endpoint is an IP address"),
        "{status}"
    );
    let out = v.spoolfs_run([std::ffi::OsStr::new("status"), m.path().as_os_str()]);
    out.assert_success();
    assert!(out.stdout.contains("path-style"), "{out}");
    drop(m);

    // --s3-path-style at mount is shown as the reason.
    let m = v.mount_with(MountOptions {
        extra_args: vec!["--s3-path-style".into()],
        ..Default::default()
    });
    let status = v.status_json(m.path());
    assert!(
        status["engine"]["storage"]
            .as_str()
            .unwrap_or_default()
            .contains("path-style: --s3-path-style"),
        "{status}"
    );
}

/// `format` against an S3 store it cannot use fails with one line that names the cause and
/// what to change: a missing bucket, a name S3 refuses, TLS to a plain-HTTP server.
#[test]
fn unusable_store_fails_in_one_line() {
    let s3 = S3Server::start();
    let dir = temp_dir("s3-err");
    let plain = s3.endpoint();
    let plain = plain.as_str();
    let tls = format!("https://127.0.0.1:{}", s3.port());
    let tls = tls.as_str();
    let vol = format!("s3://{TEST_BUCKET}/vol");
    let cases = [
        (
            "s3://no-such-bucket/vol",
            plain,
            "does not exist",
            "--storage s3://BUCKET/PREFIX",
        ),
        (
            "s3://Not_A_Bucket/vol",
            plain,
            "refused bucket name",
            "--storage s3://BUCKET/PREFIX",
        ),
        // A real TLS failure: an https:// endpoint on a server that speaks plain HTTP.
        (vol.as_str(), tls, "TLS", "http://"),
    ];
    for (url, endpoint, cause, hint) in cases {
        let out = format(dir.path(), url, &["--s3-endpoint", endpoint], &[]);
        assert_one_line_failure(&out, cause, hint);
    }
}

#[test]
fn bad_credentials() {
    let s3 = S3Server::start();
    let dir = temp_dir("s3-err");
    let url = format!("s3://{TEST_BUCKET}/vol");
    let ep = ["--s3-endpoint", s3.endpoint().leak()];
    // A wrong secret, then an unknown key id; each message names the variable to fix.
    for (var, value, s3_code) in [
        (
            "AWS_SECRET_ACCESS_KEY",
            "not-the-secret",
            Some("SignatureDoesNotMatch"),
        ),
        ("AWS_ACCESS_KEY_ID", "no-such-key", None),
    ] {
        let out = format(dir.path(), &url, &ep, &[(var, value)]);
        assert_one_line_failure(&out, "refused the credentials", var);
        if let Some(code) = s3_code {
            assert!(out.stderr.contains(code), "{out}");
        }
    }
}

/// Answers every request as AWS answers a request signed for the wrong region.
fn wrong_region_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
                <Code>AuthorizationHeaderMalformed</Code><Message>The authorization header \
                is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-3'</Message>\
                <Region>eu-west-3</Region><RequestId>0</RequestId></Error>";
            let _ = write!(
                s,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n\
                 x-amz-bucket-region: eu-west-3\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn wrong_region() {
    // Simulated: s3s-fs accepts any region, so a stand-in server gives AWS's answer to a
    // request signed for the wrong region (400 AuthorizationHeaderMalformed).
    let port = wrong_region_server();
    let dir = temp_dir("s3-err");
    let out = format(
        dir.path(),
        "s3://bucket-elsewhere/vol",
        &["--s3-endpoint", &format!("http://127.0.0.1:{port}")],
        &[],
    );
    assert_one_line_failure(&out, "region", "--s3-region eu-west-3");
}

#[test]
fn refusal_at_mount_is_one_line_too() {
    require_fuse!();
    let v = Volume::new(Backend::S3);
    // The bucket disappears after the format: the mount names the cause.
    v.s3().unwrap().delete_bucket(TEST_BUCKET);
    let mnt = v.new_subdir("mnt");
    let out = v.mount_output(&mnt, &[]);
    assert_one_line_failure(&out, "does not exist", "--storage s3://BUCKET/PREFIX");
    assert!(!is_mounted(&mnt));
}
