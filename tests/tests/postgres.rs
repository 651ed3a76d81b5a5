//! A volume whose metadata lives in PostgreSQL (a private server started for the run, see
//! `spoolfs_testkit::pg`), its data in a file store: bad input is refused with a clear error
//! and nothing written; format, mount, real file work, status, fsck and gc work; the volume is
//! mounted by one node at a time (its session refuses a second mount).

use spoolfs_testkit::pg::{PASSWORD, PgServer};
use spoolfs_tests::*;
use std::fs;
use std::path::Path;

/// spoolfs's tables in database `db`.
fn spoolfs_tables(pg: &PgServer, db: &str) -> String {
    pg.psql(
        db,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
         WHERE tablename LIKE 'spoolfs%'",
    )
    .trim()
    .to_string()
}

fn rows(pg: &PgServer, db: &str) -> u64 {
    pg.psql(db, "SELECT count(*) FROM spoolfs_kv")
        .trim()
        .parse()
        .expect("a count")
}

/// Files of assorted sizes in a small tree: (relative path, contents).
fn tree() -> Vec<(String, Vec<u8>)> {
    (0..24)
        .map(|i| {
            let size = [0usize, 1, 4095, 4096, 70_000, 1 << 20][i % 6] + i;
            (format!("d{}/f{i}", i % 3), random_bytes(i as u64, size))
        })
        .collect()
}

fn check_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let got = fs::read(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        assert_bytes_eq(&got, data, rel);
    }
}

fn sessions(vol: &Volume) -> serde_json::Value {
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url, "--json"]);
    out.assert_success();
    assert!(
        !out.stdout.contains(PASSWORD),
        "status shows the password: {out}"
    );
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    v["sessions"].clone()
}

#[test]
fn postgres_volume_bad_input_format_mount_status_fsck_gc() {
    require_fuse!();
    let pg = spoolfs_testkit::require_postgres!();
    let db = pg.new_database();
    let mut vol = Volume::unformatted(Backend::File);
    vol.meta_url = pg.url(&db);
    let mp = vol.new_subdir("mnt");

    // Before format: no schema. Mount, status and fsck say so; nothing is created.
    vol.mount_output(&mp, &[])
        .assert_clean_failure(&["no spoolfs schema"]);
    vol.spoolfs_run(["status", "--meta", &vol.meta_url])
        .assert_clean_failure(&["no spoolfs schema"]);
    vol.spoolfs_run(["fsck", "--meta", &vol.meta_url])
        .assert_clean_failure(&["no spoolfs schema"]);
    assert_eq!(spoolfs_tables(pg, &db), "");

    // A wrong password, an unreachable server, a database that does not exist: clear errors,
    // no password shown, nothing written.
    let wrong = vol.meta_url.replace(PASSWORD, "wrong-pw-1234");
    let mut args = vol.format_args();
    args[2] = wrong.clone();
    let out = vol.spoolfs_run(&args);
    out.assert_clean_failure(&["password authentication failed"]);
    assert!(!out.stderr.contains("wrong-pw-1234"), "{out}");
    args[2] = format!("postgres://spoolfs:x@127.0.0.1:{}/{db}", closed_port());
    vol.spoolfs_run(&args)
        .assert_clean_failure(&["cannot connect"]);
    args[2] = pg.url("no_such_database");
    vol.spoolfs_run(&args)
        .assert_clean_failure(&["does not exist"]);
    assert_eq!(spoolfs_tables(pg, &db), "");
    assert!(
        fs::read_dir(vol.objects_dir()).unwrap().next().is_none(),
        "a failed format wrote objects"
    );

    // Format: the schema and the volume.
    let out = vol.format();
    out.assert_success();
    assert!(
        !out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD),
        "{out}"
    );
    assert_eq!(spoolfs_tables(pg, &db), "spoolfs_kv,spoolfs_schema");
    assert!(rows(pg, &db) > 0);
    // Formatting again is refused (the volume exists).
    vol.format().assert_clean_failure(&["already holds volume"]);

    // Real file work on a mount.
    let files = tree();
    let m = vol.mount();
    for d in 0..3 {
        fs::create_dir(m.join(format!("d{d}"))).unwrap();
    }
    for (rel, data) in &files {
        fs::write(m.join(rel), data).unwrap();
    }
    fs::rename(m.join("d0/f0"), m.join("d1/renamed")).unwrap();
    fs::remove_file(m.join("d2/f2")).unwrap();
    std::os::unix::fs::symlink("d1/renamed", m.join("link")).unwrap();
    let files: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .filter(|(rel, _)| rel != "d2/f2")
        .map(|(rel, data)| {
            if rel == "d0/f0" {
                ("d1/renamed".to_string(), data)
            } else {
                (rel, data)
            }
        })
        .collect();
    check_tree(m.path(), &files);
    assert_eq!(
        fs::read_link(m.join("link")).unwrap(),
        Path::new("d1/renamed")
    );
    let out = vol.spoolfs_run(["sync".as_ref(), m.path().as_os_str()]);
    out.assert_success();

    // The mount's session is in the store; status shows it and never the password.
    let list = sessions(&vol);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["mount_point"], m.path().display().to_string());
    assert_eq!(list[0]["live"], true);
    assert_eq!(list[0]["pid"].as_u64().map(|p| p as u32), m.pid());
    let status = vol.status_json(m.path());
    assert!(!status.to_string().contains(PASSWORD), "{status}");

    // A second mount of the volume (another cache directory, as another node) is refused
    // while this one is live; so are offline fsck and gc.
    let other = vol.new_subdir("mnt-b");
    let cache_b = vol.new_subdir("cache-b");
    vol.mount_output(&other, &[])
        .assert_clean_failure(&["is mounted by session"]);
    vol.spoolfs_run(["fsck", "--meta", &vol.meta_url])
        .assert_clean_failure(&["mounted"]);
    vol.spoolfs_run(["gc", "--meta", &vol.meta_url])
        .assert_clean_failure(&["mounted"]);

    m.unmount();
    assert_eq!(sessions(&vol).as_array().map(Vec::len), Some(0));

    // Unmounted: fsck and gc work offline on the PostgreSQL volume.
    let out = vol.spoolfs_run(["fsck", "--meta", &vol.meta_url]);
    out.assert_success();
    assert!(!out.stdout.contains(PASSWORD), "{out}");
    vol.spoolfs_run(["gc", "--meta", &vol.meta_url])
        .assert_success();

    // Mounted again (now from the other cache directory, as another node would): every file
    // reads back.
    let m = vol.mount_with(MountOptions {
        cache_dir: Some(cache_b.clone()),
        ..Default::default()
    });
    check_tree(m.path(), &files);
    m.unmount();

    // A schema of another version is refused by mount and by format.
    pg.psql(&db, "UPDATE spoolfs_schema SET version = 99");
    let before = rows(pg, &db);
    vol.mount_output(&mp, &[])
        .assert_clean_failure(&["schema version 99"]);
    vol.format().assert_clean_failure(&["schema version 99"]);
    assert_eq!(rows(pg, &db), before, "a refused command changed the store");
}
