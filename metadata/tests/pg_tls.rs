//! TLS to PostgreSQL: libpq's `sslmode` against a private server, first without TLS, then
//! with `ssl = on` and a certificate from a CA made for the test (`openssl` command line).
//! One server for every case: this file is its own test process.

use spoolfs_metadata::{KvStore, MetaError, format_store, open_store};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl ARGS` in `dir`, panicking with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.crt`, `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    dir.join(format!("{name}.crt"))
}

/// A server certificate for the IP address 127.0.0.1 only (not the name `localhost`), signed
/// by CA `ca`: (certificate PEM, key PEM).
fn make_server_cert(dir: &Path, ca: &str) -> (Vec<u8>, Vec<u8>) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
         basicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    (
        std::fs::read(dir.join("server.crt")).unwrap(),
        std::fs::read(dir.join("server.key")).unwrap(),
    )
}

fn with_params(url: &str, params: &str) -> String {
    format!("{url}?{params}")
}

fn error_of(result: spoolfs_metadata::Result<std::sync::Arc<dyn KvStore>>) -> MetaError {
    match result {
        Ok(store) => panic!("connected: {}", store.describe()),
        Err(e) => e,
    }
}

#[test]
fn tls_modes_against_a_private_server() {
    let server = spoolfs_testkit::require_postgres!();
    if Command::new("openssl").arg("version").output().is_err() {
        spoolfs_testkit::skip(module_path!(), "needs the openssl command line");
        return;
    }
    let db = server.new_database();
    let url = server.url(&db);
    let secret = spoolfs_testkit::pg::PASSWORD;

    // A bad sslmode is refused before any connection, naming the parameter and the choices.
    let err = error_of(open_store(&with_params(&url, "sslmode=always")));
    assert!(matches!(err, MetaError::BadUrl { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("sslmode=\"always\""), "{text}");
    assert!(text.contains("verify-full"), "{text}");
    assert!(!text.contains(secret), "{text}");

    // TLS off on the server: a loopback host defaults to no TLS; `require` refuses to go on.
    let plain = format_store(&url).unwrap();
    assert!(plain.describe().contains("no TLS"), "{}", plain.describe());
    drop(plain);
    let err = error_of(open_store(&with_params(&url, "sslmode=require")));
    let text = err.to_string();
    assert!(text.contains("server does not support TLS"), "{text}");
    assert!(text.contains("sslmode=require"), "{text}");
    assert!(!text.contains('\n') && !text.contains(secret), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "ca");
    let wrong_ca = make_ca(dir.path(), "wrong-ca");
    let (cert, key) = make_server_cert(dir.path(), "ca");
    server.enable_tls(&cert, &key);

    // verify-full with the right CA: the server sees the session as TLS.
    let verified = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let store = open_store(&with_params(&url, &verified)).unwrap();
    assert!(
        store
            .describe()
            .contains("certificate and host name checked"),
        "{}",
        store.describe()
    );
    store
        .update(spoolfs_metadata::Durability::Durable, &mut |t| {
            t.put(b"tls", b"yes")
        })
        .unwrap();
    // The store keeps its pooled connection open: ask the server about it.
    let sessions = server.psql(
        "postgres",
        &format!(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}'"
        ),
    );
    // (The connection that checked the schema may still be closing: count at least one.)
    let (count, all_tls) = sessions.trim().split_once('|').expect("count|bool");
    assert!(
        count.parse::<u32>().unwrap() >= 1,
        "sessions of the store: {sessions}"
    );
    assert_eq!(
        all_tls, "t",
        "a session of the store without TLS: {sessions}"
    );
    drop(store);

    // The wrong CA: one clear line, and a format writes nothing.
    let fresh = server.new_database();
    let untrusted = format!("sslmode=verify-full&sslrootcert={}", wrong_ca.display());
    let err = error_of(format_store(&with_params(&server.url(&fresh), &untrusted)));
    let text = err.to_string();
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    assert!(!text.contains('\n') && !text.contains(secret), "{text}");
    let tables = server.psql(
        &fresh,
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'spoolfs%'",
    );
    assert_eq!(tables.trim(), "0", "a refused format created tables");

    // The certificate names 127.0.0.1, not `localhost`: verify-full refuses the name,
    // verify-ca (the chain only) accepts it.
    let by_name = url.replace("127.0.0.1", "localhost");
    let err = error_of(open_store(&with_params(&by_name, &verified)));
    assert!(err.to_string().contains("does not name the host"), "{err}");
    let chain_only = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    let store = open_store(&with_params(&by_name, &chain_only)).unwrap();
    store
        .view(&mut |r| {
            assert_eq!(r.get(b"tls")?.as_deref(), Some(&b"yes"[..]));
            Ok(())
        })
        .unwrap();
}
