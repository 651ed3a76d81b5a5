//! Mounting a test volume (a `--foreground` child or the daemon), the mount table, and the
//! [`Mount`] guard that always tears a mount down.

use super::*;

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
    /// Extra environment variables of the mount process (e.g. fault injection).
    pub env: Vec<(String, String)>,
    /// Where the mount process' output goes, instead of a fresh file in the volume directory.
    pub log: Option<PathBuf>,
}

impl MountOptions {
    /// A foreground mount at `mountpoint` with `cache_dir`, `extra` arguments and `env`,
    /// its output in `log`.
    pub fn foreground_at(
        mountpoint: &Path,
        cache_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> MountOptions {
        MountOptions {
            daemon: false,
            mountpoint: Some(mountpoint.to_path_buf()),
            cache_dir: Some(cache_dir.to_path_buf()),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: Some(log),
        }
    }
}

/// Waits up to `within` for `child` to exit; its status, or `None` if it still runs.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Err(_) => return None,
            Ok(None) if Instant::now() > deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits up to `within` for `child` to exit, then kills and reaps it.
fn reap_child(mut child: Child, within: Duration) {
    if wait_child(&mut child, within).is_none() {
        eprintln!(
            "process {} did not exit within {within:?}; killing it. {}",
            child.id(),
            process_snapshot(child.id())
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

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

/// The volume a [`Mount`] serves: the test's own, or one the mount owns
/// ([`Mount::of_new_volume`]) and drops after its teardown.
enum Served<'v> {
    Borrowed(&'v Volume),
    Owned(Box<Volume>),
}

impl std::ops::Deref for Served<'_> {
    type Target = Volume;

    fn deref(&self) -> &Volume {
        match self {
            Served::Borrowed(v) => v,
            Served::Owned(v) => v,
        }
    }
}

/// A mounted volume. Dropping it unmounts (`spoolfs umount`, falling back to a lazy unmount
/// and aborting the FUSE connection) and reaps the mount process.
pub struct Mount<'v> {
    volume: Served<'v>,
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

    pub fn volume(&self) -> &Volume {
        &self.volume
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

    /// `spoolfs status MOUNTPOINT --json`: the status of this mount.
    pub fn status(&self) -> serde_json::Value {
        self.volume.status_json(&self.mountpoint)
    }

    /// Runs `spoolfs umount --no-wait MOUNTPOINT` (detach now, let the daemon finish its
    /// uploads in the background) and returns its output.
    pub fn unmount_no_wait(&self) -> CmdOutput {
        self.volume.spoolfs_run([
            OsStr::new("umount"),
            self.mountpoint.as_os_str(),
            OsStr::new("--no-wait"),
        ])
    }

    /// The bytes staged and not yet uploaded, from [`Mount::status`].
    pub fn staged_bytes(&self) -> u64 {
        let v = self.status();
        v["engine"]["staged_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no engine.staged_bytes in {v}"))
    }

    /// SIGKILLs the mount process and nothing else: the dead mount stays attached (reads
    /// fail with ENOTCONN) until [`Mount::reap_and_detach`].
    pub fn sigkill(&mut self) {
        let pid = self.pid().expect("the pid of the mount process");
        // SAFETY: sending a signal has no memory-safety preconditions; a foreground child is
        // not reaped yet, so its pid is still ours.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }

    /// Reaps a killed mount process and detaches its dead mount (`umount -l`); asserts that
    /// nothing is mounted any more.
    pub fn reap_and_detach(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mountpoint);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.mountpoint) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !is_mounted(&self.mountpoint),
            "{} still mounted",
            self.mountpoint.display()
        );
        self.torn_down = true;
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
        // `spoolfs umount` waits for the uploads of everything staged.
        let out = run(
            self.volume
                .spoolfs()
                .args([OsStr::new("umount"), self.mountpoint.as_os_str()]),
            Duration::from_secs(180),
        );
        let ok = out.success();
        let still = is_mounted(&self.mountpoint);
        let mut child_status = None;
        if let Some(c) = self.child.as_mut() {
            child_status = wait_child(c, Duration::from_secs(60));
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
        // A foreground process that died (killed) serves nothing: detach its mount below.
        let child_exited = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
        if is_mounted(&self.mountpoint) && !child_exited {
            let mut cmd = self.volume.spoolfs();
            cmd.arg("umount")
                .arg(&self.mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(c) = cmd.spawn() {
                reap_child(c, Duration::from_secs(60));
            }
        }
        if is_mounted(&self.mountpoint) {
            eprintln!(
                "spoolfs umount did not unmount {}; forcing",
                self.mountpoint.display()
            );
            force_unmount(&self.mountpoint);
        }
        if let Some(c) = self.child.take() {
            reap_child(c, Duration::from_secs(30));
        }
        if let Some(pid) = daemon_pid {
            let deadline = Instant::now() + Duration::from_secs(30);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                eprintln!(
                    "spoolfs daemon {pid} did not exit; killing it. {}",
                    process_snapshot(pid)
                );
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                // Gone before the caller goes on: a next mount of the volume must not find
                // the metadata store still held by it.
                let deadline = Instant::now() + Duration::from_secs(10);
                while pid_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if is_mounted(&self.mountpoint) {
            force_unmount(&self.mountpoint);
        }
    }
}

impl Mount<'static> {
    /// A foreground mount of a new formatted volume that only this mount uses: the volume
    /// goes with the mount (after its teardown). For a test that mounts a volume once and
    /// needs nothing of it beyond the mount.
    pub fn of_new_volume(backend: Backend) -> Mount<'static> {
        let volume = Served::Owned(Box::new(Volume::new(backend)));
        match Mount::start(volume, MountOptions::default()) {
            Ok(m) => m,
            Err(e) => panic!("mount failed: {e}"),
        }
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Uploads wait 30 s for company, so everything written is still staged when the mount is
/// told to stop soon after.
pub const SLOW_UPLOADS: &[&str] = &["--upload-delay", "30"];

impl Volume {
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

    /// Mounts in daemon mode with [`SLOW_UPLOADS`]: what is written stays staged, so a stop
    /// must upload it.
    pub fn mount_daemon_slow_uploads(&self) -> Mount<'_> {
        self.mount_with(MountOptions {
            daemon: true,
            extra_args: SLOW_UPLOADS.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    /// Mounts with a cache directory of its own, named after `node`, as a separate node of a
    /// shared volume would; `extra` are more mount arguments.
    pub fn mount_node(&self, node: &str, extra: &[&str]) -> Mount<'_> {
        self.mount_with(MountOptions {
            cache_dir: Some(self.new_subdir(&format!("cache-{node}"))),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
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
        let own_transport = opts.extra_args.iter().any(|x| x == "--fuse-transport");
        if !own_transport && let Some(transport) = test_fuse_transport() {
            a.extend(["--fuse-transport".into(), transport.into()]);
        }
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
            ..Default::default()
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
                volume: Served::Borrowed(self),
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
        Mount::start(Served::Borrowed(self), opts)
    }
}

impl<'v> Mount<'v> {
    /// Mounts `volume`; on failure returns a description with the mount process' output.
    fn start(volume: Served<'v>, opts: MountOptions) -> Result<Mount<'v>, String> {
        let mountpoint = match &opts.mountpoint {
            Some(p) => p.clone(),
            None => volume.new_subdir("mnt"),
        };
        let log = opts.log.clone().unwrap_or_else(|| {
            let n = volume.mounts.fetch_add(1, Ordering::Relaxed);
            volume.dir.path().join(format!("mount{n}.log"))
        });
        let args = volume.mount_args(&mountpoint, &opts);
        let cache_dir = opts.cache_dir.clone().unwrap_or_else(|| volume.cache_dir());
        let mut mount = Mount {
            volume,
            mountpoint: mountpoint.clone(),
            child: None,
            log: log.clone(),
            daemon: opts.daemon,
            cache_dir,
            torn_down: false,
        };
        if opts.daemon {
            let out = run(
                mount
                    .volume
                    .spoolfs()
                    .args(&args)
                    .envs(opts.env.iter().cloned()),
                Duration::from_secs(120),
            );
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
        let mut cmd = mount.volume.spoolfs();
        cmd.args(&args)
            .envs(opts.env.iter().cloned())
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
            // Generous: in one CI run a debug daemon, started while parallel tests kept the
            // disk saturated (I/O pressure 84 %), was serving just after a 60 s limit; its
            // log's first line came only 3 s before that, and the snapshot showed it in a
            // page fault.
            if start.elapsed() > MOUNT_READY_LIMIT {
                let snapshot = process_snapshot(child.id());
                return Err(format!(
                    "`{description}` not mounted after {} s (it was spawned at {} UTC; compare \
                     the log's first line):\n{}\n{snapshot}",
                    MOUNT_READY_LIMIT.as_secs(),
                    utc_clock(std::time::SystemTime::now() - start.elapsed()),
                    mount.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// How long a test mount may take to be ready before the test fails.
const MOUNT_READY_LIMIT: Duration = Duration::from_secs(120);

/// `HH:MM:SS.mmm` of `t`, UTC (the daemon's log lines carry UTC times).
fn utc_clock(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// The environment variable that picks the FUSE transport of every test mount: `uring`,
/// `dev` or `auto` (unset: spoolfs's default, auto).
pub const FUSE_TRANSPORT_ENV: &str = "SPOOLFS_TEST_FUSE_TRANSPORT";

/// The transport [`FUSE_TRANSPORT_ENV`] asks for. For `uring`, the fuse module's
/// `enable_uring` switch is turned on when it is off (root only; `tests/run.sh` puts it back
/// after its io_uring pass), so that a mount fails only when the kernel cannot do it.
pub fn test_fuse_transport() -> Option<String> {
    let transport = std::env::var(FUSE_TRANSPORT_ENV).ok()?;
    match transport.as_str() {
        "uring" => {
            let param = "/sys/module/fuse/parameters/enable_uring";
            if fs::read_to_string(param).is_ok_and(|v| v.trim() == "N")
                && let Err(e) = fs::write(param, "Y")
            {
                eprintln!("cannot turn {param} on: {e}");
            }
        }
        "dev" | "auto" => {}
        other => panic!("{FUSE_TRANSPORT_ENV}={other:?}: expected uring, dev or auto"),
    }
    Some(transport)
}

/// The lines of a mount's log that are warnings or errors, or that contain one of `needles`
/// (empty needles match nothing).
pub fn log_lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || needles.iter().any(|n| !n.is_empty() && l.contains(n))
        })
        .collect()
}
