//! Support library for the spoolfs integration tests.
//!
//! * [`spoolfs_bin`] finds the `spoolfs` binary (`$SPOOLFS_BIN` or `target/debug/spoolfs`); the
//!   tests never build it themselves (`tests/run.sh` does).
//! * [`S3Server`] runs `s3s-fs` on a free loopback port with a private root directory.
//! * [`Volume`] formats a volume (file store or S3 store) in a private temporary directory.
//! * [`Mount`] mounts a volume (a `--foreground` child process, or the daemon) and always tears
//!   the mount down on drop, also when the test panics.
//!
//! * [`S3Server::start_proxy`] puts a [`spoolfs_s3proxy::Proxy`] (delays, request counts, fault
//!   injection) in front of a server; [`Volume::set_mount_s3_endpoint`] makes a volume's mounts
//!   use it.
//!
//! Every child process gets an explicit environment: no CA bundle variables (they break plain
//! http on loopback), no proxies, no AWS profile, and the fixed test keys.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const TEST_ACCESS_KEY: &str = "spoolfs-test-access";
pub const TEST_SECRET_KEY: &str = "spoolfs-test-secret-0123456789";
pub const TEST_BUCKET: &str = "spoolfs-test";
pub const TEST_REGION: &str = "us-east-1";

/// Environment variables never passed on to child processes.
const SCRUBBED_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NIX_SSL_CERT_FILE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "PIP_CERT",
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "RUST_LOG",
];

// ---------------------------------------------------------------------------------------------
// Environment and binaries
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `spoolfs` binary: `$SPOOLFS_BIN`, else `$CARGO_TARGET_DIR/debug/spoolfs`, else
/// `target/debug/spoolfs` in the workspace. Panics with a hint when it is missing.
pub fn spoolfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPOOLFS_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SPOOLFS_BIN={} does not exist", p.display());
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("debug").join("spoolfs");
    assert!(
        p.is_file(),
        "spoolfs binary not found at {} (set SPOOLFS_BIN, or run `bash tests/run.sh`, which \
         builds it with `cargo build -p spoolfs-tools`)",
        p.display()
    );
    p
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `s3s-fs` binary: `$S3S_FS_BIN`, `PATH`, or `$CARGO_HOME/bin` / `~/.cargo/bin`.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = find_on_path("s3s-fs") {
        return p;
    }
    let mut candidates = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(h).join("bin/s3s-fs"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found: install it with `cargo install s3s-fs --version 0.14.1 \
             --features binary --locked` (tests/run.sh does) or set S3S_FS_BIN"
            )
        })
}

/// True when this process can mount FUSE file systems (root and `/dev/fuse`).
pub fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/fuse").exists()
}

/// Returns from the calling test (after a loud note on stderr) when FUSE cannot be used.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !$crate::fuse_available() {
            eprintln!(
                "SKIPPED: needs root and /dev/fuse ({} line {})",
                module_path!(),
                line!()
            );
            return;
        }
    };
}

/// Scrubs the environment of `cmd` (CA bundles, proxies, AWS settings) and sets the test keys.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        let lower = name.to_ascii_lowercase();
        if name.starts_with("AWS_")
            || SCRUBBED_VARS.contains(&name.as_ref())
            || lower.ends_with("_proxy")
            || lower.contains("ca_bundle")
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("RUST_BACKTRACE", "1")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "spoolfs test")
        .env("GIT_AUTHOR_EMAIL", "test@spoolfs.invalid")
        .env("GIT_COMMITTER_NAME", "spoolfs test")
        .env("GIT_COMMITTER_EMAIL", "test@spoolfs.invalid")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INDEX", "1")
}

/// A command with a clean environment (see [`clean_env`]).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd
}

/// Output of a finished command, with helpers for assertions.
#[derive(Debug)]
pub struct CmdOutput {
    pub description: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (showing everything) unless the command succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "command failed: {self}");
        self
    }

    /// Asserts a clean failure: non-zero exit, something on stderr, no panic, and stderr
    /// (lower-cased) contains at least one of `phrases`.
    pub fn assert_clean_failure(&self, phrases: &[&str]) -> &Self {
        assert!(
            !self.status.success(),
            "command unexpectedly succeeded: {self}"
        );
        assert!(
            self.status.code().is_some(),
            "command died from a signal instead of exiting: {self}"
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "command panicked: {self}"
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "command failed without a message on stderr: {self}"
        );
        let lower = self.stderr.to_lowercase();
        assert!(
            phrases.iter().any(|p| lower.contains(&p.to_lowercase())),
            "stderr does not contain any of {phrases:?}: {self}"
        );
        eprintln!(
            "    failed as expected: `{}`\n      {}",
            self.description,
            self.stderr.trim().replace('\n', "\n      ")
        );
        self
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.description,
            self.status,
            self.elapsed,
            tail(&self.stdout, 6000),
            tail(&self.stderr, 6000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, killing it (and failing the test) after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    match try_run(cmd, timeout) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` to completion; after `timeout` kills it and returns an error (never panics, so
/// it is safe in `Drop`).
pub fn try_run(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput, String> {
    let description = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{description}`: {e}"))?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                // A grandchild may hold the pipes open: do not wait for the readers.
                return Err(format!("`{description}` did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{description}`: {e}")),
        }
    };
    let stdout = String::from_utf8_lossy(&out_thread.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput {
        description,
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    })
}

/// Runs a shell-free command line with a clean environment in `dir` and asserts success.
pub fn run_ok(dir: &Path, program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    let out = run(command(program).args(args).current_dir(dir), timeout);
    out.assert_success();
    if out.elapsed > Duration::from_secs(2) {
        eprintln!("    slow: `{}` took {:?}", out.description, out.elapsed);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A private temporary directory (unique per call, also across parallel tests).
pub fn temp_dir(tag: &str) -> TempDir {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    tempfile::Builder::new()
        .prefix(&format!("spoolfs-{tag}-{}-{n}-", std::process::id()))
        .tempdir()
        .expect("create temporary directory")
}

// ---------------------------------------------------------------------------------------------
// S3 server
// ---------------------------------------------------------------------------------------------

/// Ports this process has handed out: never handed out twice, so two servers (or a server and
/// an "unreachable" endpoint) of parallel tests cannot end up on the same port.
static PORTS_USED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free loopback TCP port (bound then released; callers retry if somebody else takes it).
pub fn free_port() -> u16 {
    let mut used = PORTS_USED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a loopback port");
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// A loopback port on which nothing listens (for "unreachable endpoint" tests).
pub fn closed_port() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], p).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return p;
        }
    }
    panic!("no closed loopback port found")
}

/// `s3s-fs` serving a private root directory on a loopback port; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl S3Server {
    /// Starts the server with the test keys and creates [`TEST_BUCKET`].
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let dir = temp_dir("s3");
        let root = dir.path().join("root");
        fs::create_dir_all(&root).expect("create s3 root");
        let log = dir.path().join("s3s-fs.log");
        let mut last_err = String::new();
        for _attempt in 0..8 {
            let port = free_port();
            let log_file = fs::File::create(&log).expect("create s3s-fs log");
            let mut cmd = command(&bin);
            cmd.arg("--host")
                .arg("127.0.0.1")
                .arg("--port")
                .arg(port.to_string())
                .arg("--access-key")
                .arg(TEST_ACCESS_KEY)
                .arg("--secret-key")
                .arg(TEST_SECRET_KEY)
                .arg(&root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log"))
                .stderr(log_file);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(20);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "s3s-fs exited with {status}: {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // A server that lost the race for the port exits at once: make sure the
                    // answer came from ours.
                    std::thread::sleep(Duration::from_millis(50));
                    if let Ok(Some(status)) = child.try_wait() {
                        last_err = format!(
                            "s3s-fs exited with {status}: {}",
                            fs::read_to_string(&log).unwrap_or_default()
                        );
                        break;
                    }
                    let server = S3Server {
                        child: Some(child),
                        port,
                        root,
                        log,
                        _dir: dir,
                    };
                    server.create_bucket(TEST_BUCKET);
                    return server;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "s3s-fs did not answer on port {port} within 20 s: {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("could not start s3s-fs: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A fault-and-delay proxy in front of this server (no delay, no faults yet); point a
    /// volume's mounts at it with [`Volume::set_mount_s3_endpoint`]`(Some(&proxy.endpoint()))`.
    pub fn start_proxy(&self) -> spoolfs_s3proxy::Proxy {
        spoolfs_s3proxy::Proxy::start(spoolfs_s3proxy::ProxyConfig::new(self.addr()))
            .expect("start the S3 proxy")
    }

    /// The directory s3s-fs serves: one sub-directory per bucket, one file per object.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// s3s-fs makes a bucket of every directory in its root.
    pub fn create_bucket(&self, bucket: &str) {
        fs::create_dir_all(self.bucket_dir(bucket)).expect("create bucket directory");
    }

    pub fn delete_bucket(&self, bucket: &str) {
        let _ = fs::remove_dir_all(self.bucket_dir(bucket));
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server now (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A raw HTTP request line to the server; returns the status line (for smoke tests).
    pub fn http_status(&self, method: &str, path: &str) -> String {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------------------------

/// Where a test volume keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `file:///…/objects`
    File,
    /// `s3://spoolfs-test/vol` on a private s3s-fs.
    S3,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::File, Backend::S3];
}

thread_local! {
    /// Extra `spoolfs mount` arguments of the running test (its mode).
    static MODE_ARGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs a backend test with every mount in standard mode (`--writeback=false`: close and fsync
/// wait for the object store) instead of the default writeback mode.
pub fn run_backend_test_standard(name: &str, backend: Backend, test: fn(Backend)) {
    MODE_ARGS.with(|m| *m.borrow_mut() = vec!["--writeback=false".to_string()]);
    eprintln!("=== {name} [{backend:?}, standard mode]");
    let start = Instant::now();
    test(backend);
    eprintln!(
        "=== {name} [{backend:?}, standard mode] done in {:?}",
        start.elapsed()
    );
}

/// Runs `test` for one backend, with a banner on stderr (so logs say which backend failed).
pub fn run_backend_test(name: &str, backend: Backend, test: fn(Backend)) {
    eprintln!("=== {name} [{backend:?}]");
    let start = Instant::now();
    test(backend);
    eprintln!("=== {name} [{backend:?}] done in {:?}", start.elapsed());
}

/// Declares `#[test] fn file()`, `fn file_standard_mode()` and `fn s3()` in a module named after each given
/// function `fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn file() {
                    $crate::run_backend_test(
                        stringify!($name),
                        $crate::Backend::File,
                        super::$name,
                    );
                }
                #[test]
                fn file_standard_mode() {
                    $crate::run_backend_test_standard(
                        stringify!($name),
                        $crate::Backend::File,
                        super::$name,
                    );
                }
                #[test]
                fn s3() {
                    $crate::run_backend_test(
                        stringify!($name),
                        $crate::Backend::S3,
                        super::$name,
                    );
                }
            }
        )*
    };
}

/// A volume in a private temporary directory: metadata in `meta.redb`, data in `objects/`
/// (file store) or in the bucket of a private s3s-fs (S3 store).
pub struct Volume {
    pub backend: Backend,
    pub name: String,
    pub meta_url: String,
    pub storage_url: String,
    /// Extra arguments for `spoolfs format` (S3 endpoint and style).
    pub storage_args: Vec<String>,
    s3: Option<S3Server>,
    dir: TempDir,
    mounts: AtomicU64,
    /// `--s3-endpoint` for mounts, overriding the endpoint recorded by `spoolfs format`.
    mount_s3_endpoint: std::sync::Mutex<Option<String>>,
}

/// The S3 key prefix test volumes use inside [`TEST_BUCKET`].
pub const S3_PREFIX: &str = "vol";

impl Volume {
    /// A formatted volume; panics if `spoolfs format` fails.
    pub fn new(backend: Backend) -> Volume {
        let v = Volume::unformatted(backend);
        v.format().assert_success();
        v
    }

    /// A volume directory (and S3 server) but no `spoolfs format` yet.
    pub fn unformatted(backend: Backend) -> Volume {
        let dir = temp_dir(match backend {
            Backend::File => "vol-file",
            Backend::S3 => "vol-s3",
        });
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let name = format!("test{n}");
        let meta_url = format!("redb://{}", dir.path().join("meta.redb").display());
        fs::create_dir_all(dir.path().join("xdg")).expect("xdg dir");
        let (storage_url, storage_args, s3) = match backend {
            Backend::File => {
                let objects = dir.path().join("objects");
                fs::create_dir_all(&objects).expect("objects dir");
                (format!("file://{}", objects.display()), Vec::new(), None)
            }
            Backend::S3 => {
                let s3 = S3Server::start();
                (
                    format!("s3://{TEST_BUCKET}/{S3_PREFIX}"),
                    s3_args(&s3.endpoint()),
                    Some(s3),
                )
            }
        };
        Volume {
            backend,
            name,
            meta_url,
            storage_url,
            storage_args,
            s3,
            dir,
            mounts: AtomicU64::new(0),
            mount_s3_endpoint: std::sync::Mutex::new(None),
        }
    }

    /// Makes every later mount of this volume talk to `endpoint` (e.g. an S3 proxy's) instead of
    /// the endpoint recorded at format time (`None`: the recorded one again). Formatting is not
    /// affected.
    pub fn set_mount_s3_endpoint(&self, endpoint: Option<&str>) {
        *self
            .mount_s3_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = endpoint.map(str::to_string);
    }

    /// The endpoint set with [`Volume::set_mount_s3_endpoint`].
    pub fn mount_s3_endpoint(&self) -> Option<String> {
        self.mount_s3_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The volume's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn s3(&self) -> Option<&S3Server> {
        self.s3.as_ref()
    }

    pub fn s3_mut(&mut self) -> Option<&mut S3Server> {
        self.s3.as_mut()
    }

    /// The default cache directory of this volume's mounts.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A `spoolfs` command with a clean environment whose default volume lives in this
    /// volume's directory (`XDG_DATA_HOME`).
    pub fn spoolfs(&self) -> Command {
        let mut cmd = command(spoolfs_bin());
        cmd.env("XDG_DATA_HOME", self.dir.path().join("xdg"));
        cmd
    }

    /// Runs `spoolfs ARGS` (60 s timeout).
    pub fn spoolfs_run<I, S>(&self, args: I) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.spoolfs().args(args), Duration::from_secs(60))
    }

    /// `spoolfs status MOUNTPOINT --json`: the status of the mount (its first entry).
    pub fn status_json(&self, mountpoint: &Path) -> serde_json::Value {
        let out = self.spoolfs_run([
            OsStr::new("status"),
            mountpoint.as_os_str(),
            OsStr::new("--json"),
        ]);
        out.assert_success();
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out:?}"));
        if v.is_array() { v[0].clone() } else { v }
    }

    /// Arguments of `spoolfs format` for this volume.
    pub fn format_args(&self) -> Vec<String> {
        let mut a = vec![
            "format".to_string(),
            "--meta".into(),
            self.meta_url.clone(),
            "--storage".into(),
            self.storage_url.clone(),
        ];
        a.extend(self.storage_args.iter().cloned());
        a.push(self.name.clone());
        a
    }

    pub fn format(&self) -> CmdOutput {
        self.spoolfs_run(self.format_args())
    }

    /// The directory that holds this volume's objects on the local disk (the file store's
    /// directory, or the prefix's directory inside the s3s-fs root).
    pub fn objects_dir(&self) -> PathBuf {
        match &self.s3 {
            None => self.dir.path().join("objects"),
            Some(s3) => s3.bucket_dir(TEST_BUCKET).join(S3_PREFIX),
        }
    }

    /// Every data object (a block object below `chunks/` or a pack object below `packs/`) of
    /// this volume, sorted.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_files(&self.objects_dir(), &mut out);
        out.retain(|p| {
            p.components()
                .any(|c| c.as_os_str() == "chunks" || c.as_os_str() == "packs")
        });
        out.sort();
        out
    }

    /// A fresh, empty directory inside this volume's directory (e.g. a mount point).
    pub fn new_subdir(&self, tag: &str) -> PathBuf {
        let n = self.mounts.fetch_add(1, Ordering::Relaxed);
        let p = self.dir.path().join(format!("{tag}{n}"));
        fs::create_dir_all(&p).expect("create subdir");
        p
    }

    /// Mounts with `--foreground` as a child process and waits until the mount is ready.
    pub fn mount(&self) -> Mount<'_> {
        self.mount_with(MountOptions::default())
    }

    /// Mounts (`--foreground`) at an existing empty directory, e.g. where an earlier mount was.
    pub fn mount_at(&self, mountpoint: &Path) -> Mount<'_> {
        self.mount_with(MountOptions {
            mountpoint: Some(mountpoint.to_path_buf()),
            ..Default::default()
        })
    }

    /// Mounts in daemon mode (`spoolfs mount` returns once the mount is ready).
    pub fn mount_daemon(&self) -> Mount<'_> {
        self.mount_with(MountOptions {
            daemon: true,
            ..Default::default()
        })
    }

    pub fn mount_with(&self, opts: MountOptions) -> Mount<'_> {
        match self.try_mount_with(opts) {
            Ok(m) => m,
            Err(e) => panic!("mount failed: {e}"),
        }
    }

    /// The arguments of `spoolfs mount` for `mountpoint`.
    pub fn mount_args(&self, mountpoint: &Path, opts: &MountOptions) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "mount".into(),
            "--meta".into(),
            self.meta_url.clone().into(),
            mountpoint.into(),
            "--cache-dir".into(),
            opts.cache_dir
                .clone()
                .unwrap_or_else(|| self.cache_dir())
                .into(),
        ];
        if !opts.daemon {
            a.push("--foreground".into());
        }
        if let Some(endpoint) = self.mount_s3_endpoint() {
            a.extend(["--s3-endpoint".into(), endpoint.into()]);
        }
        MODE_ARGS.with(|m| a.extend(m.borrow().iter().map(OsString::from)));
        a.extend(opts.extra_args.iter().map(OsString::from));
        a
    }

    /// Runs `spoolfs mount` in daemon mode at `mountpoint` with `extra` arguments and returns
    /// its output; a mount that unexpectedly succeeds is torn down again first (tests then
    /// assert on the output).
    pub fn mount_output(&self, mountpoint: &Path, extra: &[&str]) -> CmdOutput {
        self.mount_output_env(mountpoint, extra, &[])
    }

    /// [`Volume::mount_output`] with extra environment variables (e.g. a wrong secret key).
    pub fn mount_output_env(
        &self,
        mountpoint: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> CmdOutput {
        let opts = MountOptions {
            daemon: true,
            mountpoint: Some(mountpoint.to_path_buf()),
            cache_dir: Some(self.new_subdir("cache-probe")),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        let args = self.mount_args(mountpoint, &opts);
        self.run_mount_command(mountpoint, &args, env)
    }

    /// Runs `spoolfs ARGS` (a mount command for `mountpoint`), tearing down whatever it
    /// mounted; returns its output.
    pub fn run_mount_command(
        &self,
        mountpoint: &Path,
        args: &[OsString],
        env: &[(&str, &str)],
    ) -> CmdOutput {
        let already = is_mounted(mountpoint);
        let mut cmd = self.spoolfs();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd, Duration::from_secs(120));
        if !already && is_mounted(mountpoint) {
            let mut m = Mount {
                volume: self,
                mountpoint: mountpoint.to_path_buf(),
                child: None,
                log: self.dir.path().join("unexpected-mount.log"),
                daemon: true,
                cache_dir: self.cache_dir(),
                torn_down: false,
            };
            m.teardown();
        }
        out
    }

    /// Mounts; on failure returns a description with the mount process' output.
    pub fn try_mount_with(&self, opts: MountOptions) -> Result<Mount<'_>, String> {
        let mountpoint = match &opts.mountpoint {
            Some(p) => p.clone(),
            None => self.new_subdir("mnt"),
        };
        let n = self.mounts.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("mount{n}.log"));
        let args = self.mount_args(&mountpoint, &opts);
        let mut mount = Mount {
            volume: self,
            mountpoint: mountpoint.clone(),
            child: None,
            log: log.clone(),
            daemon: opts.daemon,
            cache_dir: opts.cache_dir.clone().unwrap_or_else(|| self.cache_dir()),
            torn_down: false,
        };
        if opts.daemon {
            let out = run(self.spoolfs().args(&args), Duration::from_secs(120));
            if let Err(e) = fs::write(&log, format!("{out}")) {
                eprintln!("cannot write {}: {e}", log.display());
            }
            if !out.success() {
                mount.torn_down = !is_mounted(&mountpoint);
                return Err(format!("{out}"));
            }
            if !is_mounted(&mountpoint) {
                return Err(format!(
                    "spoolfs mount returned 0 but nothing is mounted: {out}"
                ));
            }
            return Ok(mount);
        }
        let log_file = fs::File::create(&log).expect("create mount log");
        let mut cmd = self.spoolfs();
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        let description = describe(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{description}`: {e}"))?;
        mount.child = Some(child);
        let start = Instant::now();
        loop {
            if is_mounted(&mountpoint) {
                // The kernel mount exists; make sure the file system answers.
                if fs::metadata(&mountpoint).is_ok() {
                    return Ok(mount);
                }
            }
            let child = mount.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                mount.child = None;
                mount.torn_down = !is_mounted(&mountpoint);
                return Err(format!(
                    "`{description}` exited with {status} before the mount was ready:\n{}",
                    mount.log_text()
                ));
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "`{description}` not mounted after 60 s:\n{}",
                    mount.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn s3_args(endpoint: &str) -> Vec<String> {
    vec![
        "--s3-endpoint".into(),
        endpoint.into(),
        "--s3-region".into(),
        TEST_REGION.into(),
        "--s3-path-style".into(),
    ]
}

/// Every regular file below `dir` (not following symlinks).
pub fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

/// How to mount a [`Volume`].
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Daemon mode instead of a `--foreground` child.
    pub daemon: bool,
    /// Mount here instead of a fresh directory.
    pub mountpoint: Option<PathBuf>,
    /// Cache directory instead of the volume's default one.
    pub cache_dir: Option<PathBuf>,
    pub extra_args: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// The mount points of this process' mount namespace with their FUSE connection ids.
fn mount_table() -> Vec<(PathBuf, String, u64)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dev = fields.get(2)?;
            let mp = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?.to_string();
            let (maj, min) = dev.split_once(':')?;
            let id = (maj.parse::<u64>().ok()? << 20) | min.parse::<u64>().ok()?;
            Some((PathBuf::from(unescape_mountinfo(mp)), fstype, id))
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when something is mounted exactly at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_table().iter().any(|(mp, _, _)| *mp == path)
}

/// Detaches whatever is mounted at `path`, aborting a hung FUSE connection if needed.
pub fn force_unmount(path: &Path) {
    let canon = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for (mp, fstype, id) in mount_table() {
        if mp == canon && fstype.starts_with("fuse") {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
        }
    }
    if let Ok(c) = CString::new(canon.as_os_str().as_bytes()) {
        // SAFETY: c is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Pids of processes whose command line has `arg` as one argument.
pub fn pids_with_arg(arg: &OsStr) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline"))
            && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

fn pid_alive(pid: u32) -> bool {
    // Alive while any of its threads runs: a zombie main thread can have others winding down
    // that still hold the process's files (the metadata store's lock).
    let running = |stat: &str| {
        !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false)
    };
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks
            .flatten()
            .any(|t| fs::read_to_string(t.path().join("stat")).is_ok_and(|s| running(&s))),
        Err(_) => false,
    }
}

/// A mounted volume. Dropping it unmounts (`spoolfs umount`, falling back to a lazy unmount
/// and aborting the FUSE connection) and reaps the mount process.
pub struct Mount<'v> {
    volume: &'v Volume,
    mountpoint: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    daemon: bool,
    cache_dir: PathBuf,
    torn_down: bool,
}

impl<'v> Mount<'v> {
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `mountpoint/rel`
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    pub fn volume(&self) -> &'v Volume {
        self.volume
    }

    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// The pid of the process serving this mount.
    pub fn pid(&self) -> Option<u32> {
        if let Some(c) = &self.child {
            return Some(c.id());
        }
        // `spoolfs status --json` reports the daemon's pid.
        let out = try_run(
            self.volume.spoolfs().args([
                OsStr::new("status"),
                self.mountpoint.as_os_str(),
                OsStr::new("--json"),
            ]),
            Duration::from_secs(30),
        );
        if let Ok(out) = out
            && out.success()
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout)
        {
            let obj = if v.is_array() {
                v.get(0).cloned()
            } else {
                Some(v)
            };
            if let Some(pid) = obj.and_then(|o| o.get("pid").and_then(|p| p.as_u64())) {
                return Some(pid as u32);
            }
        }
        let canon = fs::canonicalize(&self.mountpoint).unwrap_or(self.mountpoint.clone());
        let mut pids = pids_with_arg(canon.as_os_str());
        pids.extend(pids_with_arg(self.mountpoint.as_os_str()));
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter().find(|p| *p != std::process::id())
    }

    /// What the mount process wrote (foreground mode), or `spoolfs mount`'s output and the
    /// daemon's log file (daemon mode).
    pub fn log_text(&self) -> String {
        let mut s = fs::read_to_string(&self.log).unwrap_or_default();
        if self.daemon
            && let Ok(d) = fs::read_to_string(self.cache_dir.join("spoolfs.log"))
        {
            s.push_str("\n--- daemon log ---\n");
            s.push_str(&d);
        }
        s
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// SIGKILLs the mount process, then detaches the dead mount.
    pub fn kill9(mut self) {
        let pid = self.pid();
        if let Some(pid) = pid {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        } else if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        force_unmount(&self.mountpoint);
        self.torn_down = true;
    }

    /// Unmounts with `spoolfs umount` and asserts that it worked: exit 0, nothing mounted
    /// any more, and (foreground mode) the mount process exited with status 0. Returns the
    /// mount point (to mount there again with [`Volume::mount_at`]).
    pub fn unmount(mut self) -> PathBuf {
        let out = self
            .volume
            .spoolfs_run([OsStr::new("umount"), self.mountpoint.as_os_str()]);
        let ok = out.success();
        let still = is_mounted(&self.mountpoint);
        let mut child_status = None;
        if let Some(c) = self.child.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(s)) = c.try_wait() {
                    child_status = Some(s);
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if child_status.is_some() {
                self.child = None;
            }
        }
        let log = self.log_text();
        let pid_left = self.child.is_some();
        // Leave a clean system whatever happened, then judge.
        self.teardown();
        assert!(
            ok,
            "spoolfs umount failed: {out}\nmount log:\n{}",
            tail(&log, 6000)
        );
        assert!(!still, "still mounted after spoolfs umount: {out}");
        assert!(
            !pid_left,
            "foreground mount process did not exit within 60 s of spoolfs umount; log:\n{}",
            tail(&log, 6000)
        );
        if let Some(s) = child_status {
            assert!(
                s.success(),
                "mount process exited with {s} after unmount; log:\n{}",
                tail(&log, 6000)
            );
            assert!(
                !log.contains("panicked"),
                "mount process panicked:\n{}",
                tail(&log, 6000)
            );
        }
        self.mountpoint.clone()
    }

    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let daemon_pid = if self.child.is_none() {
            self.pid()
        } else {
            None
        };
        if is_mounted(&self.mountpoint) {
            let mut cmd = self.volume.spoolfs();
            cmd.arg("umount")
                .arg(&self.mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut c) = cmd.spawn() {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        if is_mounted(&self.mountpoint) {
            eprintln!(
                "spoolfs umount did not unmount {}; forcing",
                self.mountpoint.display()
            );
            force_unmount(&self.mountpoint);
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("mount process {} did not exit; killing it", c.id());
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if let Some(pid) = daemon_pid {
            let deadline = Instant::now() + Duration::from_secs(30);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                eprintln!("spoolfs daemon {pid} did not exit; killing it");
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if is_mounted(&self.mountpoint) {
            force_unmount(&self.mountpoint);
        }
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        self.teardown();
    }
}

// ---------------------------------------------------------------------------------------------
// Data and file-tree helpers
// ---------------------------------------------------------------------------------------------

/// Deterministic pseudo-random generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Pseudo-random bytes determined by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// A 64-bit content checksum (FNV-1a over 8-byte words, then the length).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    for b in chunks.remainder() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^ (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Asserts two byte strings are equal, reporting the first differing offset (not the data).
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: contents differ (len {} vs expected {}), first difference at offset {first}: \
         got {:02x?}, expected {:02x?}",
        actual.len(),
        expected.len(),
        &actual[first..(first + 16).min(actual.len())],
        &expected[first..(first + 16).min(expected.len())],
    );
}

/// The errno of an I/O error (panics if the operation succeeded).
#[track_caller]
pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("error without errno: {e}")),
    }
}

/// Asserts that `r` failed with exactly `expected`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: std::io::Result<T>, expected: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {} ({expected}), got Ok({v:?})",
            errno_name(expected)
        ),
        Err(e) => {
            let got = e.raw_os_error();
            assert_eq!(
                got,
                Some(expected),
                "{what}: expected {} ({expected}), got {e} ({})",
                errno_name(expected),
                got.map(errno_name).unwrap_or("?")
            );
        }
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENODATA => "ENODATA",
        libc::EIO => "EIO",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EXDEV => "EXDEV",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOTCONN => "ENOTCONN",
        _ => "errno",
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn last_err<T>(rc: libc::c_int, ok: T) -> std::io::Result<T> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ok)
    }
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`
pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    last_err(rc, ())
}

pub fn mkfifo(p: &Path, mode: libc::mode_t) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    last_err(unsafe { libc::mkfifo(c.as_ptr(), mode) }, ())
}

/// `lchown`
pub fn lchown(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    last_err(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, ())
}

/// `utimensat(AT_FDCWD, p, [atime, mtime], AT_SYMLINK_NOFOLLOW?)`; times as (sec, nsec).
pub fn set_times(
    p: &Path,
    atime: (i64, i64),
    mtime: (i64, i64),
    follow: bool,
) -> std::io::Result<()> {
    let c = cstr(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid path and a two-element timespec array.
    last_err(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) },
        (),
    )
}

pub fn statvfs(p: &Path) -> std::io::Result<libc::statvfs> {
    let c = cstr(p);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    last_err(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, ())?;
    Ok(s)
}

pub fn statfs_type(p: &Path) -> std::io::Result<i64> {
    let c = cstr(p);
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    last_err(unsafe { libc::statfs(c.as_ptr(), &mut s) }, ())?;
    Ok(s.f_type as i64)
}

/// `lsetxattr` with flags (0, `XATTR_CREATE`, `XATTR_REPLACE`).
pub fn set_xattr(p: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: valid path, name and value buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    last_err(rc, ())
}

/// `lgetxattr`
pub fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: size query with a null buffer.
    let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 64];
    // SAFETY: buffer of buf.len() bytes.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// `llistxattr`, sorted.
pub fn list_xattr(p: &Path) -> std::io::Result<Vec<String>> {
    let c = cstr(p);
    // SAFETY: size query with a null buffer.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len as usize + 256];
    // SAFETY: buffer of buf.len() bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    let mut names: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `lremovexattr`
pub fn remove_xattr(p: &Path, name: &str) -> std::io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).expect("name"));
    // SAFETY: valid path and name.
    last_err(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }, ())
}

/// What a snapshot records about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySnap {
    pub kind: char,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds); `None` when not compared.
    pub mtime: Option<(i64, i64)>,
    /// Size (not for directories, whose size is file-system specific).
    pub size: Option<u64>,
    /// Link count (not for directories).
    pub nlink: Option<u64>,
    /// Content checksum for regular files.
    pub content: Option<u64>,
    pub symlink_target: Option<PathBuf>,
    /// user.* extended attributes (name → value).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Which fields [`snapshot_tree`] records.
#[derive(Clone, Copy, Debug)]
pub struct SnapOptions {
    /// Compare mtimes at all.
    pub mtime: bool,
    /// Compare nanoseconds of mtimes (tar keeps only seconds).
    pub mtime_nsec: bool,
    /// Compare mtimes of directories (tar and cp set them, but not all tools do).
    pub dir_mtime: bool,
    /// Compare mtimes of symbolic links.
    pub symlink_mtime: bool,
    pub nlink: bool,
    pub xattrs: bool,
}

impl SnapOptions {
    /// Everything, for the same tree before and after a remount.
    pub const EXACT: SnapOptions = SnapOptions {
        mtime: true,
        mtime_nsec: true,
        dir_mtime: true,
        symlink_mtime: true,
        nlink: true,
        xattrs: true,
    };
}

/// Records every entry below `root` (paths relative to it; the root itself is "").
pub fn snapshot_tree(root: &Path, opts: SnapOptions) -> BTreeMap<PathBuf, EntrySnap> {
    let mut out = BTreeMap::new();
    snap_rec(root, Path::new(""), opts, &mut out);
    out
}

fn snap_rec(root: &Path, rel: &Path, opts: SnapOptions, out: &mut BTreeMap<PathBuf, EntrySnap>) {
    let full = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let md =
        fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_block_device() {
        'b'
    } else {
        'c'
    };
    let mtime =
        if opts.mtime && (kind != 'd' || opts.dir_mtime) && (kind != 'l' || opts.symlink_mtime) {
            Some((
                md.mtime(),
                if opts.mtime_nsec { md.mtime_nsec() } else { 0 },
            ))
        } else {
            None
        };
    let content = if kind == 'f' {
        let data = fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
        assert_eq!(
            data.len() as u64,
            md.len(),
            "{}: read length differs from st_size",
            full.display()
        );
        Some(checksum(&data))
    } else {
        None
    };
    let symlink_target = if kind == 'l' {
        Some(fs::read_link(&full).unwrap_or_else(|e| panic!("readlink {}: {e}", full.display())))
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    if opts.xattrs {
        let names =
            list_xattr(&full).unwrap_or_else(|e| panic!("listxattr {}: {e}", full.display()));
        for n in names.into_iter().filter(|n| n.starts_with("user.")) {
            let v = get_xattr(&full, &n)
                .unwrap_or_else(|e| panic!("getxattr {} {n}: {e}", full.display()));
            xattrs.insert(n, v);
        }
    }
    out.insert(
        rel.to_path_buf(),
        EntrySnap {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime,
            size: (kind != 'd').then_some(md.len()),
            nlink: (opts.nlink && kind != 'd').then(|| md.nlink()),
            content,
            symlink_target,
            xattrs,
        },
    );
    if kind == 'd' {
        let mut names: Vec<OsString> = fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()))
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for n in names {
            snap_rec(root, &rel.join(n), opts, out);
        }
    }
}

/// Asserts two snapshots are equal, listing every difference.
#[track_caller]
pub fn assert_snapshots_eq(
    actual: &BTreeMap<PathBuf, EntrySnap>,
    expected: &BTreeMap<PathBuf, EntrySnap>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(a) if a != e => diffs.push(format!(
                "{}:\n    got      {a:?}\n    expected {e:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) {
            diffs.push(format!("unexpected {}", p.display()));
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(40);
        panic!("{what}: {n} differences:\n{}", diffs.join("\n"));
    }
}
