//! A volume whose metadata lives in PostgreSQL (a private server started for the run, see
//! `spoolfs_testkit::pg`), its data in a file store: bad input is refused with a clear error
//! and nothing written; format, mount, real file work, status, fsck and gc work. Two mounts of
//! one volume (separate processes and cache directories, as two nodes) see each other's
//! changes within the cache lifetime (renames, unlinks, chmods, new files), and a create race
//! on one name has exactly one winner. A lost node leaves everything it synced readable.

use spoolfs_testkit::pg::{PASSWORD, PgServer};
use spoolfs_tests::*;
use std::fs;
use std::io::Write;
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

    // Offline fsck and gc are refused while the volume is mounted.
    let cache_b = vol.new_subdir("cache-b");
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

/// Longer than the kernel's attribute and entry cache lifetime (1 s by default).
const CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_millis(1300);

#[test]
fn two_mounts_of_one_postgres_volume_see_each_other() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    // Two mounts: separate processes with separate cache directories, as two nodes.
    let a = vol.mount_node("a", &[]);
    let b = vol.mount_node("b", &[]);
    let list = sessions(&vol);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    // A file written and closed on A, synced to the object store, reads byte-exact on B.
    let big = random_bytes(1, (3 << 20) + 123);
    let small = random_bytes(2, 777);
    fs::create_dir(a.join("dir")).unwrap();
    fs::write(a.join("dir/big"), &big).unwrap();
    fs::write(a.join("dir/small"), &small).unwrap();
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    assert_bytes_eq(&fs::read(b.join("dir/big")).unwrap(), &big, "big on B");
    assert_bytes_eq(
        &fs::read(b.join("dir/small")).unwrap(),
        &small,
        "small on B",
    );

    // Changes on A reach B within the cache lifetime: B has just looked at every name.
    assert!(!b.join("dir/new").exists());
    fs::rename(a.join("dir/small"), a.join("dir/moved")).unwrap();
    fs::remove_file(a.join("dir/big")).unwrap();
    fs::write(a.join("dir/new"), b"made on A").unwrap();
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    std::thread::sleep(CACHE_LIFETIME);
    assert!(!b.join("dir/small").exists(), "a rename on A not seen on B");
    assert!(!b.join("dir/big").exists(), "an unlink on A not seen on B");
    assert_bytes_eq(
        &fs::read(b.join("dir/moved")).unwrap(),
        &small,
        "moved on B",
    );
    assert_eq!(fs::read(b.join("dir/new")).unwrap(), b"made on A");
    let mut names: Vec<String> = fs::read_dir(b.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["moved", "new"]);
    // A chmod on A: B, which has the file's attributes cached, sees the new mode within the
    // cache lifetime.
    use std::os::unix::fs::PermissionsExt;
    let mode_on_b = || {
        fs::metadata(b.join("dir/moved"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_ne!(mode_on_b(), 0o640);
    fs::set_permissions(a.join("dir/moved"), fs::Permissions::from_mode(0o640)).unwrap();
    std::thread::sleep(CACHE_LIFETIME);
    assert_eq!(mode_on_b(), 0o640, "a chmod on A not seen on B");

    // Close-to-open: B has the old contents in its page cache; A rewrites the file (same
    // size); B's next open reads the new contents.
    let v1 = random_bytes(3, 64 << 10);
    let v2 = random_bytes(4, 64 << 10);
    fs::write(a.join("dir/rewritten"), &v1).unwrap();
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    assert_bytes_eq(&fs::read(b.join("dir/rewritten")).unwrap(), &v1, "v1 on B");
    fs::write(a.join("dir/rewritten"), &v2).unwrap();
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    std::thread::sleep(CACHE_LIFETIME);
    assert_bytes_eq(&fs::read(b.join("dir/rewritten")).unwrap(), &v2, "v2 on B");

    // Creates of the same names in one directory from both mounts at once: exactly one wins
    // each name, the other gets EEXIST. Distinct names from both: none is lost.
    fs::create_dir(a.join("race")).unwrap();
    std::thread::sleep(CACHE_LIFETIME);
    let names = 30;
    let barrier = std::sync::Barrier::new(2);
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let racers: Vec<_> = [("a", &a), ("b", &b)]
            .into_iter()
            .map(|(node, m)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let mut won = Vec::new();
                    for i in 0..names {
                        let r = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(m.join(format!("race/same{i}")));
                        match r {
                            Ok(mut f) => {
                                use std::io::Write;
                                f.write_all(node.as_bytes()).unwrap();
                                won.push(true);
                            }
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => won.push(false),
                            Err(e) => panic!("create race/same{i} on {node}: {e}"),
                        }
                        fs::write(m.join(format!("race/{node}{i}")), node).unwrap();
                    }
                    won
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    std::thread::sleep(CACHE_LIFETIME);
    for (i, (&won_a, &won_b)) in wins[0].iter().zip(&wins[1]).enumerate() {
        assert!(won_a ^ won_b, "same{i}: A won {won_a}, B won {won_b}");
        let winner = if won_a { "a" } else { "b" };
        for m in [&a, &b] {
            assert_eq!(
                fs::read_to_string(m.join(format!("race/same{i}"))).unwrap(),
                winner
            );
        }
    }
    for m in [&a, &b] {
        let entries = fs::read_dir(m.join("race")).unwrap().count();
        assert_eq!(
            entries,
            3 * names,
            "entries of race/ on {}",
            m.path().display()
        );
    }
    // The inode count statfs reports (one counter row per mount on a shared volume) adds up
    // to what is there, seen from either mount.
    let mut inodes = 1; // the root
    let mut dirs = vec![a.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            inodes += 1;
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    for m in [&a, &b] {
        let st = statvfs(m.path()).unwrap();
        assert_eq!(
            st.f_files - st.f_ffree,
            inodes,
            "statfs inodes on {}",
            m.path().display()
        );
    }
    eprintln!(
        "same-name races won by A: {}, by B: {}",
        wins[0].iter().filter(|w| **w).count(),
        wins[1].iter().filter(|w| **w).count()
    );

    a.unmount();
    b.unmount();
    assert_eq!(sessions(&vol).as_array().map(Vec::len), Some(0));
    let out = vol.spoolfs_run(["fsck", "--meta", &vol.meta_url]);
    out.assert_success();
}

/// The session of `mount` in `status --meta --json`.
fn session_of(vol: &Volume, mount_point: &Path) -> serde_json::Value {
    let list = sessions(vol);
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["mount_point"] == mount_point.display().to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no session at {}: {list}", mount_point.display()))
}

#[test]
fn a_killed_mount_with_staged_data_is_listed_dead_until_its_cache_dir_mounts_again() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    let cache_a = vol.new_subdir("cache-a");
    // Heartbeats every second; uploads held back so that the data stays staged.
    let opts = |cache: &Path, extra: &[&str]| MountOptions {
        cache_dir: Some(cache.to_path_buf()),
        extra_args: ["--session-timeout", "3"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let a = vol.mount_with(opts(&cache_a, &["--upload-delay", "600"]));
    let b = vol.mount_node("b", &[]);
    let data = random_bytes(7, 300_000);
    fs::write(a.join("staged"), &data).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let a_path = a.path().to_path_buf();
    let live = loop {
        let s = session_of(&vol, &a_path);
        if s["staged"]["bytes"].as_u64() == Some(data.len() as u64) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no staged bytes reported: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(live["live"], true);

    // A dies with the data staged: once its heartbeat is older than its timeout, its session
    // is listed dead with what it held, also after another mount starts.
    a.kill9();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let dead = session_of(&vol, &a_path);
    assert_eq!(dead["live"], false, "{dead}");
    assert_eq!(dead["staged"]["bytes"].as_u64(), Some(data.len() as u64));
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url]);
    out.assert_success();
    assert!(out.stdout.contains("DEAD"), "{out}");
    let c = vol.mount_node("c", &[]);
    assert_eq!(session_of(&vol, &a_path)["live"], false);

    // A's cache directory mounted again replays and uploads the data: every mount reads it,
    // and the dead session is gone.
    let a2 = vol.mount_with(opts(&cache_a, &[]));
    vol.spoolfs_run(["sync".as_ref(), a2.path().as_os_str()])
        .assert_success();
    for m in [&a2, &b, &c] {
        assert_bytes_eq(&fs::read(m.join("staged")).unwrap(), &data, "after replay");
    }
    let list = sessions(&vol);
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    for m in [a2, b, c] {
        m.unmount();
    }
    assert_eq!(sessions(&vol).as_array().map(Vec::len), Some(0));
}

/// A lost node: after `spoolfs sync` on A, A is killed and its cache directory deleted. B reads
/// everything written before the sync, byte-exact, and `status` says what A still held (a
/// file written after the sync, staged only on A).
#[test]
fn a_lost_node_leaves_what_it_synced_readable_and_status_says_what_it_held() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    let cache_a = vol.new_subdir("cache-a");
    let a = vol.mount_with(MountOptions {
        cache_dir: Some(cache_a.clone()),
        // Uploads held back: only `spoolfs sync` sends A's data to the object store.
        extra_args: ["--session-timeout", "3", "--upload-delay", "600"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    });
    let b = vol.mount_node("b", &[]);
    let files = tree();
    for (rel, data) in &files {
        let path = a.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    let late = random_bytes(31, 200_000);
    fs::write(a.join("after-sync"), &late).unwrap();
    let a_path = a.path().to_path_buf();
    // The heartbeat reports what is staged: wait until it covers the late file.
    wait_for(
        "A's session reporting the late file staged",
        std::time::Duration::from_secs(10),
        || session_of(&vol, &a_path)["staged"]["bytes"].as_u64() == Some(late.len() as u64),
    );
    a.kill9();
    fs::remove_dir_all(&cache_a).unwrap();

    check_tree(b.path(), &files);
    // Once A's heartbeat is older than its timeout, its session is listed dead with the bytes
    // only it had.
    wait_for(
        "A's session listed dead",
        std::time::Duration::from_secs(15),
        || session_of(&vol, &a_path)["live"] == false,
    );
    let dead = session_of(&vol, &a_path);
    assert_eq!(
        dead["staged"]["bytes"].as_u64(),
        Some(late.len() as u64),
        "{dead}"
    );
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url]);
    out.assert_success();
    assert!(out.stdout.contains("DEAD"), "{out}");
    b.unmount();
}

/// Rows of `spoolfs_kv` in the volume's database whose key starts with `tag`.
fn records_tagged(pg: &PgServer, vol: &Volume, tag: u8) -> u64 {
    let db = vol.meta_url.rsplit('/').next().expect("a database name");
    pg.psql(
        db,
        &format!("SELECT count(*) FROM spoolfs_kv WHERE get_byte(k, 0) = {tag}"),
    )
    .trim()
    .parse()
    .expect("a count")
}

fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_file_unlinked_on_one_mount_stays_readable_where_it_is_open() {
    require_fuse!();
    let pg = spoolfs_testkit::require_postgres!();
    let vol = Volume::on_postgres(pg);
    let (holds, orphans) = (b'U', b'O');
    let a = vol.mount_node("a", &["--session-timeout", "3"]);
    let b = vol.mount_node("b", &["--session-timeout", "3"]);
    // Two files in the object store: one B closes, one B holds when it is killed.
    let closed = random_bytes(21, (2 << 20) + 5);
    let killed = random_bytes(22, (3 << 20) + 7);
    fs::write(a.join("closed"), &closed).unwrap();
    fs::write(a.join("killed"), &killed).unwrap();
    vol.spoolfs_run(["sync".as_ref(), a.path().as_os_str()])
        .assert_success();
    let objects_of_both = vol.chunk_files().len();
    assert!(objects_of_both >= 2, "{objects_of_both} objects");
    // A's own holds of the files it wrote go in its holds thread's next batch.
    wait_for(
        "A's holds dropped",
        std::time::Duration::from_secs(10),
        || records_tagged(pg, &vol, holds) == 0,
    );

    let mut on_b = fs::File::open(b.join("closed")).unwrap();
    let held_by_killed = fs::File::open(b.join("killed")).unwrap();
    assert_eq!(records_tagged(pg, &vol, holds), 2, "B's holds");
    fs::remove_file(a.join("closed")).unwrap();
    fs::remove_file(a.join("killed")).unwrap();
    // A's caches are past and its background deletes have had their turns: the files are
    // orphans, their objects still there.
    std::thread::sleep(CACHE_LIFETIME + std::time::Duration::from_secs(2));
    assert!(!a.join("closed").exists());
    assert!(!b.join("closed").exists(), "the unlink is seen on B");
    assert_eq!(records_tagged(pg, &vol, orphans), 2);
    assert_eq!(vol.chunk_files().len(), objects_of_both);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut on_b, &mut got).unwrap();
    assert_bytes_eq(&got, &closed, "the unlinked file read on B");

    // B's close drops its hold: the orphan goes, and its objects.
    drop(on_b);
    wait_for(
        "the closed orphan and its objects to go",
        std::time::Duration::from_secs(15),
        || {
            records_tagged(pg, &vol, orphans) == 1
                && vol.chunk_files().len() < objects_of_both
                && !vol.chunk_files().is_empty()
        },
    );

    // B is killed holding the other: once its session is dead (3 s), A's sweep drops the
    // hold and deletes the orphan, and A's collector its objects.
    b.kill9();
    drop(held_by_killed);
    assert_eq!(records_tagged(pg, &vol, holds), 1, "the dead mount's hold");
    wait_for(
        "the dead mount's orphan and its objects to go",
        std::time::Duration::from_secs(20),
        || {
            records_tagged(pg, &vol, orphans) == 0
                && records_tagged(pg, &vol, holds) == 0
                && vol.chunk_files().is_empty()
        },
    );
    a.unmount();
}

/// The volume's background lease in `status --meta --json`.
fn background_lease(vol: &Volume) -> serde_json::Value {
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url, "--json"]);
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    v["background_lease"].clone()
}

#[test]
fn background_work_runs_on_the_lease_holder_and_moves_when_it_dies() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    // A 9 s session: the holder's lease and session outlive its death by 5 s at least
    // (renewed every 3 s; heartbeats are whole seconds).
    let first = vol.mount_node("first", &["--session-timeout", "9"]);
    let second = vol.mount_node("second", &["--session-timeout", "9"]);
    let mut lease = serde_json::Value::Null;
    wait_for(
        "a mount to take the lease",
        std::time::Duration::from_secs(10),
        || {
            lease = background_lease(&vol);
            lease["in_force"] == true
        },
    );
    let (holder, other) = if lease["mount_point"] == first.path().display().to_string() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(lease["mount_point"], holder.path().display().to_string());
    let out = vol.spoolfs_run(["status", "--meta", &vol.meta_url]);
    assert!(
        out.stdout.contains("background lease")
            && out.stdout.contains(&*holder.path().to_string_lossy()),
        "{out}"
    );
    let here = |m: &Mount| {
        let out = vol.spoolfs_run(["status".as_ref(), m.path().as_os_str()]);
        out.assert_success();
        out.stdout.contains("background work: here")
    };
    assert!(here(&holder) && !here(&other));
    // Explicit collection on the other mount is refused, naming the holder.
    let out = vol.spoolfs_run(["gc".as_ref(), other.path().as_os_str()]);
    assert!(
        !out.status.success(),
        "gc on the mount without the lease: {out}"
    );
    assert!(out.stderr.contains("background lease"), "{out}");

    // Data unlinked on the other mount is deleted by the holder.
    let data = random_bytes(31, (2 << 20) + 3);
    fs::write(other.join("gone"), &data).unwrap();
    vol.spoolfs_run(["sync".as_ref(), other.path().as_os_str()])
        .assert_success();
    assert!(!vol.chunk_files().is_empty());
    fs::remove_file(other.join("gone")).unwrap();
    wait_for(
        "the holder to delete the objects",
        std::time::Duration::from_secs(15),
        || vol.chunk_files().is_empty(),
    );
    assert_eq!(
        background_lease(&vol)["mount_point"],
        holder.path().display().to_string()
    );

    // The holder dies; data unlinked on the other mount stays until the lease lapses, then
    // the other mount takes the lease over and deletes it.
    fs::write(other.join("pending"), &data).unwrap();
    vol.spoolfs_run(["sync".as_ref(), other.path().as_os_str()])
        .assert_success();
    let objects = vol.chunk_files().len();
    assert!(objects > 0);
    holder.kill9();
    let killed_at = std::time::Instant::now();
    fs::remove_file(other.join("pending")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        killed_at.elapsed() < std::time::Duration::from_secs(4),
        "too slow to check"
    );
    assert_eq!(
        vol.chunk_files().len(),
        objects,
        "the mount without the lease deleted objects while the holder's lease ran"
    );
    wait_for(
        "the other mount to take the lease and finish the deletes",
        std::time::Duration::from_secs(30),
        || vol.chunk_files().is_empty(),
    );
    let lease = background_lease(&vol);
    assert_eq!(
        lease["mount_point"],
        other.path().display().to_string(),
        "{lease}"
    );
    assert_eq!(lease["in_force"], true);
    other.unmount();
    // A clean unmount gives the lease up.
    assert!(background_lease(&vol).is_null());
}

/// A counter of the mount's metrics endpoint at `addr` (`GET /metrics`).
fn metric(addr: &str, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{text}")) as u64
}

/// Through the kernel: what `stat` of a missing name and `echo x > f` cost in database round
/// trips and transactions on a shared volume (the mount's own metrics, background work
/// included), and that a loop of small files on one node does not fight its own uploader.
#[test]
fn round_trips_of_small_files_through_fuse_on_postgres() {
    require_fuse!();
    let vol = Volume::on_postgres(spoolfs_testkit::require_postgres!());
    let addr = format!("127.0.0.1:{}", free_port());
    let a = vol.mount_node("a", &["--metrics", &addr]);
    fs::create_dir(a.join("d")).unwrap();
    let rts = || metric(&addr, "spoolfs_metadata_round_trips_total");
    let txns = || metric(&addr, "spoolfs_metadata_transactions_total");
    let retries = || metric(&addr, "spoolfs_metadata_retries_total");

    // A missing name looked up three times: one round trip, then the kernel's negative entry.
    let before = rts();
    for _ in 0..3 {
        assert!(fs::metadata(a.join("d/missing")).is_err());
    }
    let missing = rts() - before;
    assert!(
        missing <= 3,
        "three stats of a missing name cost {missing} round trips"
    );

    let files = 100u64;
    let (rt0, tx0, re0) = (rts(), txns(), retries());
    for i in 0..files {
        fs::write(a.join(format!("d/f{i}")), format!("{i}\n")).unwrap();
    }
    let (rt, tx, re) = (rts() - rt0, txns() - tx0, retries() - re0);
    let misses = metric(&addr, "spoolfs_metadata_optimistic_misses_total");
    eprintln!(
        "{files} small files through FUSE: {rt} round trips, {tx} transactions, {re} retries, \
         {misses} optimistic misses (stat of a missing name 3x: {missing})"
    );
    // Per file, the kernel sends LOOKUP (a miss: 1), CREATE (1: what it reads, the lookup
    // and earlier commits of this mount told it, checked in its commit; the umask against the
    // directory's default ACL decided in it), GETXATTR and WRITE (0), FLUSH (1, likewise),
    // RELEASE (0) and GETATTR of the directory, whose attributes the create made stale (0:
    // the create's own result answers): 3 round trips in 3 transactions, plus the
    // background's hold drops and upload commits. Measured 3.2 per file.
    assert!(rt <= files * 4, "{rt} round trips for {files} files");
    assert!(tx <= files * 4, "{tx} transactions for {files} files");
    assert!(
        misses <= files / 10,
        "{misses} optimistic misses for {files} files on one node"
    );
    assert!(
        re <= files / 5,
        "{re} serialization retries for {files} files"
    );
    for i in 0..files {
        assert_eq!(
            fs::read(a.join(format!("d/f{i}"))).unwrap(),
            format!("{i}\n").as_bytes()
        );
    }

    // A shell redirection (`echo $i > f$i`): the new descriptor is duplicated and the original
    // closed before the write, so the kernel sends a FLUSH with nothing written first. That
    // flush commits nothing and must not make the write and the kernel's capability check
    // read the inode again (it did: 5 round trips per file instead of 3).
    let rt0 = rts();
    for i in 0..files {
        let original = fs::File::create(a.join(format!("d/s{i}"))).unwrap();
        let mut dup = original.try_clone().unwrap();
        drop(original);
        dup.write_all(format!("{i}\n").as_bytes()).unwrap();
    }
    let rt = rts() - rt0;
    eprintln!("{files} small files written through a duplicated descriptor: {rt} round trips");
    assert!(
        rt <= files * 4,
        "{rt} round trips for {files} files written through a duplicated descriptor"
    );
    for i in 0..files {
        assert_eq!(
            fs::read(a.join(format!("d/s{i}"))).unwrap(),
            format!("{i}\n").as_bytes()
        );
    }
}
