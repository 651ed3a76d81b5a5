//! A private PostgreSQL server for a test run: `initdb` and `pg_ctl` into a temporary
//! directory, listening on 127.0.0.1 on a free port (and a Unix socket in that directory),
//! never the system's service.
//!
//! One server per test process, started by the first [`server`] call; each test takes a
//! database of its own with [`PgServer::new_database`]. As root the server runs as `nobody`
//! (PostgreSQL refuses to run as root). A watchdog process stops the server and removes its
//! directory when the test process exits, however it exits.
//!
//! Where PostgreSQL is not installed, [`server`] says so loudly and returns `None` (the test
//! returns early); under `CI=true` it panics instead, so CI cannot pass without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The superuser the fixture creates, with a password (TCP logins need it).
pub const USER: &str = "spoolfs";
pub const PASSWORD: &str = "spoolfs-test-pw";

pub struct PgServer {
    /// The temporary directory: `data/`, the log, the Unix socket.
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// Whom to run PostgreSQL's programs as (`None`: this process's user).
    run_as: Option<(u32, u32)>,
    /// Outlives this process on purpose: it stops the server once the process has gone.
    _watchdog: Option<std::process::Child>,
}

static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// The process's private server, started on first use; `None` (the test is skipped, see
/// [`crate::skip`]: under `CI=true` it fails) where PostgreSQL is not installed. Panics when
/// the server is installed but does not start.
pub fn server(test: &str) -> Option<&'static PgServer> {
    let server = SERVER.get_or_init(|| find_bin().map(PgServer::start));
    if server.is_none() {
        crate::skip(
            test,
            "needs PostgreSQL: initdb and pg_ctl were not found on PATH nor under \
             /usr/lib/postgresql/*/bin (Debian package `postgresql`; set SPOOLFS_PG_BIN to \
             their directory)",
        );
    }
    server.as_ref()
}

/// Returns from the calling test when PostgreSQL is not installed (see [`server`]).
#[macro_export]
macro_rules! require_postgres {
    () => {
        match $crate::pg::server(module_path!()) {
            Some(server) => server,
            None => return,
        }
    };
}

fn find_bin() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("SPOOLFS_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_both(&dir).then_some(dir);
    }
    // Debian puts the server's programs under /usr/lib/postgresql/VERSION/bin, not on PATH:
    // prefer those (the newest), then PATH.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has_both(d))
        .collect();
    versions.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|d| has_both(d)).map(|d| {
            // Follow a symbolic link to the real directory (psql may not be beside the link).
            std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|real| has_both(real))
                .unwrap_or(d)
        })
    })
}

/// A directory every user can reach: the temporary directory if each of its ancestors lets
/// others search it, else /tmp.
fn reachable_temp_base() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir();
    let searchable = base
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if searchable {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

impl PgServer {
    fn start(bin: PathBuf) -> PgServer {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then_some((65534, 65534)); // nobody:nogroup
        let base = reachable_temp_base();
        let dir = base.join(format!(
            "spoolfs-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL directory");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write the password file");
        if let Some((uid, gid)) = run_as {
            for p in [&dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }
        let mut server = PgServer {
            dir,
            port: 0,
            bin,
            run_as,
            _watchdog: None,
        };
        server._watchdog = Some(server.spawn_watchdog());
        server.run(
            "initdb",
            &[
                "-D",
                server.data().to_str().expect("utf-8 path"),
                "-U",
                USER,
                &format!("--pwfile={}", pwfile.display()),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // A port found free may be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c fsync=off -c max_connections=200",
                server.port,
                server.dir.display()
            );
            let log = server.dir.join("server.log");
            let out = server
                .command("pg_ctl")
                .args(["-D", server.data().to_str().expect("utf-8 path")])
                .args(["-l", log.to_str().expect("utf-8 path")])
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                eprintln!(
                    "private PostgreSQL on 127.0.0.1:{} in {}",
                    server.port,
                    server.dir.display()
                );
                return server;
            }
            last = format!(
                "{}{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("the private PostgreSQL did not start: {last}");
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of PostgreSQL's programs, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.env("HOME", &self.dir)
            .env("LC_ALL", "C")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server and removes its directory once this test process has exited.
    fn spawn_watchdog(&self) -> std::process::Child {
        let stop = match self.run_as {
            Some((uid, gid)) => format!(
                "setpriv --reuid={uid} --regid={gid} --clear-groups -- '{}' -D '{}' -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.data().display()
            ),
            None => format!(
                "'{}' -D '{}' -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.data().display()
            ),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.3; done; \
             if [ -f '{data}/postmaster.pid' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C of the test run must not kill it first.
            .process_group(0)
            .spawn()
            .expect("start the PostgreSQL watchdog")
    }

    /// Runs SQL as the superuser in database `db` with psql, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.dir.to_str().expect("utf-8 path"),
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-c",
                sql,
            ],
        )
    }

    /// Turns TLS on (`ssl = on`, reloaded: no restart) with the PEM certificate chain and key
    /// given, and the CA whose client certificates it asks for and checks (`ssl_ca_file`);
    /// connections without TLS or without a client certificate are still accepted.
    pub fn enable_tls(&self, cert_pem: &[u8], key_pem: &[u8], client_ca_pem: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem) in [
            ("server.crt", cert_pem),
            ("server.key", key_pem),
            ("client-ca.crt", client_ca_pem),
        ] {
            let path = self.data().join(name);
            std::fs::write(&path, pem).expect("write the server's TLS files");
            // PostgreSQL refuses a key that others may read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the server's TLS files");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl_ca_file = 'client-ca.crt'");
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        // The postmaster reloads asynchronously; new sessions see the new setting.
        for _ in 0..100 {
            if self.psql("postgres", "SHOW ssl").trim() == "on" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "ssl stayed off after the reload; server log:\n{}",
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// A new, empty database for one test; its name.
    pub fn new_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// The URL of database `db` over TCP, with the password in it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` over TCP without a password (it must come from elsewhere).
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }
}
