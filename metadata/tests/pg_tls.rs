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

/// A certificate `NAME.crt` (key `NAME.key`) signed by CA `ca`: for the IP address 127.0.0.1
/// only (not the name `localhost`) when `server`, else a client's for user `NAME`.
fn make_cert(dir: &Path, ca: &str, name: &str, server: bool) {
    let subject = if server {
        "/CN=127.0.0.1".to_string()
    } else {
        format!("/CN={name}")
    };
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
            &subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let extensions = if server {
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "{extensions}basicConstraints=critical,CA:FALSE
"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// What the server says of the store's sessions in database `db`: (how many, all over TLS,
/// the client certificates' names, `-` for none).
fn sessions_of(server: &spoolfs_testkit::pg::PgServer, db: &str) -> (u32, bool, String) {
    let row = server.psql(
        "postgres",
        &format!(
            "SELECT count(*), bool_and(s.ssl), \
             string_agg(DISTINCT coalesce(s.client_dn, '-'), ',') \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}'"
        ),
    );
    let fields: Vec<&str> = row.trim().split('|').collect();
    assert_eq!(fields.len(), 3, "{row}");
    (
        fields[0].parse().unwrap(),
        fields[1] == "t",
        fields[2].to_string(),
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
    make_cert(dir.path(), "ca", "server", true);
    make_cert(dir.path(), "ca", "spoolfs-node", false);
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    server.enable_tls(&read("server.crt"), &read("server.key"), &read("ca.crt"));

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
    // The store keeps its pooled connection open: ask the server about it. (The connection
    // that checked the schema may still be closing: at least one.)
    let (count, all_tls, client_names) = sessions_of(server, &db);
    assert!(
        count >= 1 && all_tls,
        "sessions of the store: {count}, TLS: {all_tls}"
    );
    assert_eq!(client_names, "-", "no client certificate was given");
    drop(store);

    // A client certificate: refused while others may read its key, then sent.
    let key = dir.path().join("spoolfs-node.key");
    let identity = format!(
        "{verified}&sslcert={}&sslkey={}",
        dir.path().join("spoolfs-node.crt").display(),
        key.display()
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = error_of(open_store(&with_params(&url, &identity)));
    assert!(err.to_string().contains("others may read the key"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = open_store(&with_params(&url, &identity)).unwrap();
    store.view(&mut |r| r.get(b"tls").map(drop)).unwrap();
    let (_, all_tls, client_names) = sessions_of(server, &db);
    assert!(all_tls);
    // (A session of the store before may still be closing.)
    assert!(
        client_names.contains("/CN=spoolfs-node"),
        "client certificates: {client_names}"
    );
    drop(store);

    // `prefer` takes the TLS the server now offers, checking no certificate.
    let store = open_store(&with_params(&url, "sslmode=prefer")).unwrap();
    assert!(
        store
            .describe()
            .contains("TLS, sslmode=prefer: certificate not checked"),
        "{}",
        store.describe()
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
