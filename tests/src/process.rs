//! The environment of child processes, the binaries the tests run, commands with timeouts,
//! private temporary directories.

use super::*;

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

    /// A `spoolfs sync --timeout` that ran out of time while the object store took no
    /// uploads: it fails and says the data is still not in the object store.
    pub fn assert_sync_timed_out(&self, what: &str) {
        assert!(
            !self.success(),
            "{what}: sync --timeout succeeded while the store is down: {self}"
        );
        assert!(
            self.stderr.contains("still not in the object store"),
            "{what}: unclear sync failure: {self}"
        );
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

pub(crate) fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

pub(crate) fn describe(cmd: &Command) -> String {
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

pub(crate) static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// Set to 1 to keep every test's temporary directory (volume, mount logs, daemon logs) after
/// the test, to read the logs of a failure.
pub const KEEP_DIRS_ENV: &str = "SPOOLFS_TEST_KEEP_DIRS";

/// A private temporary directory (unique per call, also across parallel tests); kept after
/// the test when [`KEEP_DIRS_ENV`] is 1.
pub fn temp_dir(tag: &str) -> TempDir {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let keep = std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
    let dir = tempfile::Builder::new()
        .prefix(&format!("spoolfs-{tag}-{}-{n}-", std::process::id()))
        .disable_cleanup(keep)
        .tempdir()
        .expect("create temporary directory");
    if keep {
        eprintln!("    keeping {}", dir.path().display());
    }
    dir
}

/// Waits for process `pid` to exit (or become a zombie); fails after 60 s, naming `what` was
/// to make it exit.
pub fn wait_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon {pid} still running 60 s after {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What process `pid` is doing, for a failure message about a process that does not make
/// progress: each thread's name, state and wait channel, its kernel stack (readable as root),
/// and the host's CPU, I/O and memory pressure. A mount that hangs before its first log line
/// is then located from the test output alone.
pub fn process_snapshot(pid: u32) -> String {
    let mut out = format!("process {pid}:\n");
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        out.push_str("  (gone)\n");
        return out;
    };
    let mut tids: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let dir = format!("/proc/{pid}/task/{tid}");
        let read = |f: &str| fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        out.push_str(&format!(
            "  thread {tid} {} state {state} wchan {}\n",
            read("comm").trim(),
            read("wchan").trim()
        ));
        for frame in read("stack").lines() {
            out.push_str(&format!("      {frame}\n"));
        }
    }
    // Where each thread waits in user space, when gdb is at hand (the kernel stack of a
    // thread waiting on a lock or a condition variable only says futex).
    if let Some(gdb) = find_on_path("gdb") {
        let mut cmd = command(gdb);
        cmd.args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 15",
        ]);
        match try_run(&mut cmd, Duration::from_secs(60)) {
            Ok(bt) => {
                for line in bt.stdout.lines().filter(|l| {
                    l.starts_with("Thread ") || (l.starts_with('#') && !l.contains(" in ?? "))
                }) {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  gdb: {e}\n")),
        }
    }
    for what in ["cpu", "io", "memory"] {
        let p = fs::read_to_string(format!("/proc/pressure/{what}")).unwrap_or_default();
        for line in p.lines() {
            out.push_str(&format!("  {what} pressure: {line}\n"));
        }
    }
    out
}
