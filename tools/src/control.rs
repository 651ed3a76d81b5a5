//! The control socket of a mount daemon: a Unix socket (mode 0600). A client sends one request
//! line: `status` (one JSON line describing the mount), `writeout` (what is still to be
//! written out, without asking the object store), `sync SECS` (the object-store
//! barrier, with progress lines), `gc {OPTIONS}` (garbage collection, with progress lines) or
//! `warmup {"path":P,"jobs":N}` (fetch the data under a path into the local data cache, with
//! progress lines).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use spoolfs_engine::gc::{GcOptions, GcReport};
use spoolfs_engine::packfetch::WarmReport;
use spoolfs_engine::{Engine, EngineStatus};
use spoolfs_fuse::panic_message;
use spoolfs_objects::ObjectStorage;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What the control socket answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct MountStatus {
    pub pid: u32,
    pub mount_point: PathBuf,
    pub read_only: bool,
    pub log_file: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// This socket (owner-only, mode 0600).
    #[serde(default)]
    pub control_socket: PathBuf,
    /// How FUSE requests travel: "uring" (io_uring) or "dev" (/dev/fuse).
    #[serde(default)]
    pub fuse_transport: String,
    /// Whether the object store answered a listing just now.
    pub storage_reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// The engine's own report; absent when the engine could not produce one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
    /// Data losses replay recorded (corruption found in the staging or namespace log), until
    /// `spoolfs fsck --forget-losses` clears them.
    #[serde(default)]
    pub data_losses: Vec<spoolfs_engine::losses::DataLoss>,
}

/// What a daemon still has to write out (the `writeout` request).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WriteOut {
    /// Staged and not yet in the object store.
    pub staged_bytes: u64,
    pub staged_slices: u64,
    /// Written to open files and not yet staged.
    pub dirty_bytes: u64,
    /// Dead slices whose objects are still to be deleted (left for the next mount).
    pub pending_deletes: u64,
}

/// A `warmup` request: a path inside the mount (relative to its root) and the fetches to run
/// at once.
#[derive(Debug, Serialize, Deserialize)]
pub struct WarmupRequest {
    pub path: String,
    pub jobs: usize,
}

pub struct ControlServer {
    pub engine: Arc<Engine>,
    pub storage: Arc<ObjectStorage>,
    pub mount_point: PathBuf,
    pub read_only: bool,
    pub log_file: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub control_socket: PathBuf,
    pub fuse_transport: String,
}

impl ControlServer {
    fn status(&self) -> MountStatus {
        let (engine, engine_error) = match catch_unwind(AssertUnwindSafe(|| self.engine.status())) {
            Ok(s) => (Some(s), None),
            Err(p) => (None, Some(panic_message(p))),
        };
        let (storage_reachable, storage_error) = match self.storage.check() {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        MountStatus {
            pid: std::process::id(),
            mount_point: self.mount_point.clone(),
            read_only: self.read_only,
            log_file: self.log_file.clone(),
            cache_dir: self.cache_dir.clone(),
            control_socket: self.control_socket.clone(),
            fuse_transport: self.fuse_transport.clone(),
            storage_reachable,
            storage_error,
            engine,
            engine_error,
            data_losses: self.engine.data_losses().unwrap_or_default(),
        }
    }

    /// Answers one client. Requests are one line: `status` (also assumed when the client sends
    /// nothing), or `sync SECS` / `sync none`, answered by progress lines
    /// `{"sync_slices":N,"sync_bytes":B}` and a last line `{"sync":"done"}` or
    /// `{"sync":"error","message":...}`; or `gc {JSON GcOptions}`, answered by progress lines
    /// `{"gc_phase":P,"done":N,"total":M}` and a last line `{"gc":"done","report":{...}}` or
    /// `{"gc":"error","message":...}`.
    fn serve_client(&self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut request = String::new();
        let _ = BufReader::new(&stream).read_line(&mut request);
        let mut out = &stream;
        let mut send = |v: serde_json::Value| {
            let mut line = serde_json::to_vec(&v).unwrap_or_default();
            line.push(b'\n');
            out.write_all(&line)
        };
        let request = request.trim();
        if let Some(arg) = request.strip_prefix("sync") {
            let timeout = arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| *t > 0.0 && t.is_finite());
            let mut last = Instant::now() - Duration::from_secs(1);
            let mut gone = false;
            let result = catch_unwind(AssertUnwindSafe(|| {
                self.engine.sync_to_object_store(
                    timeout.map(Duration::from_secs_f64),
                    &mut |slices, bytes| {
                        if !gone && (last.elapsed() >= Duration::from_millis(200) || slices == 0) {
                            last = Instant::now();
                            gone = send(
                                serde_json::json!({"sync_slices": slices, "sync_bytes": bytes}),
                            )
                            .is_err();
                        }
                    },
                )
            }));
            let _ = send(outcome_line("sync", result));
            return;
        }
        if let Some(arg) = request.strip_prefix("gc ") {
            let last_line = match serde_json::from_str::<GcOptions>(arg.trim()) {
                Err(e) => {
                    serde_json::json!({"gc": "error", "message": format!("bad gc request: {e}")})
                }
                Ok(opts) if self.read_only && !opts.dry_run => serde_json::json!({
                    "gc": "error",
                    "message": "the volume is mounted read-only; only --dry-run is possible",
                }),
                Ok(opts) => {
                    let mut last = Instant::now() - Duration::from_secs(1);
                    let mut gone = false;
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        self.engine.run_gc(&opts, &mut |phase, done, total| {
                            if !gone
                                && (last.elapsed() >= Duration::from_millis(200) || done == total)
                            {
                                last = Instant::now();
                                gone = send(serde_json::json!({
                                    "gc_phase": phase, "done": done, "total": total,
                                }))
                                .is_err();
                            }
                        })
                    }));
                    outcome_line("gc", result)
                }
            };
            let _ = send(last_line);
            return;
        }
        if let Some(arg) = request.strip_prefix("warmup ") {
            let last_line = match serde_json::from_str::<WarmupRequest>(arg.trim()) {
                Err(e) => serde_json::json!({
                    "warmup": "error", "message": format!("bad warmup request: {e}"),
                }),
                Ok(req) => {
                    let mut last = Instant::now();
                    let mut gone = false;
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        self.engine
                            .warm(req.path.as_bytes(), req.jobs, &mut |report| {
                                if !gone && last.elapsed() >= Duration::from_millis(200) {
                                    last = Instant::now();
                                    gone = send(serde_json::json!({ "warmup_progress": report }))
                                        .is_err();
                                }
                            })
                    }));
                    outcome_line("warmup", result)
                }
            };
            let _ = send(last_line);
            return;
        }
        if request == "writeout" {
            // Cheap (no object-store request): `spoolfs umount` polls it while the daemon
            // writes out its data.
            let m = self.engine.metrics();
            let _ = send(
                serde_json::to_value(WriteOut {
                    staged_bytes: m.staged_bytes,
                    staged_slices: m.staged_slices,
                    dirty_bytes: m.dirty_bytes,
                    pending_deletes: self.engine.pending_deletes().unwrap_or(0),
                })
                .unwrap_or_default(),
            );
            return;
        }
        let status = self.status();
        if let Err(e) = send(serde_json::to_value(&status).unwrap_or_default()) {
            debug!("control socket client went away: {e}");
        }
    }

    /// Binds the socket (replacing a stale one) and serves it on a background thread.
    pub fn start(self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        // Bound under a temporary name, made owner-only, then renamed into place (replacing a
        // socket left by a dead daemon: the mount point was checked to be free), so the
        // socket is never reachable under its name with the umask's mode.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)
            .with_context(|| format!("cannot create control socket {}", tmp.display()))?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, path).with_context(|| {
                    format!(
                        "cannot move the control socket into place at {}",
                        path.display()
                    )
                })
            });
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::thread::Builder::new()
            .name("spoolfs-control".into())
            .spawn(move || {
                let server = std::sync::Arc::new(self);
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            // One thread per client: a `sync` may take long, and `status`
                            // must still answer meanwhile.
                            let server = server.clone();
                            let spawned = std::thread::Builder::new()
                                .name("spoolfs-control-client".into())
                                .spawn(move || server.serve_client(stream));
                            if let Err(e) = spawned {
                                warn!("control socket: cannot start a client thread: {e}");
                            }
                        }
                        Err(e) => {
                            warn!("control socket: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .context("cannot start the control socket thread")?;
        Ok(())
    }
}

/// The last line of a `sync`, `gc` or `warmup` request: `{OP: "done"}` with the operation's
/// `report` (when it has one: `sync` has none), or `{OP: "error", "message": …}`, also when
/// the operation panicked.
fn outcome_line<T: Serialize, E: std::fmt::Display>(
    op: &str,
    result: std::thread::Result<std::result::Result<T, E>>,
) -> serde_json::Value {
    let message = match result {
        Ok(Ok(report)) => {
            let mut line = serde_json::json!({ op: "done" });
            let report = serde_json::to_value(report).unwrap_or_default();
            if !report.is_null() {
                line["report"] = report;
            }
            return line;
        }
        Ok(Err(e)) => e.to_string(),
        Err(p) => panic_message(p),
    };
    serde_json::json!({ op: "error", "message": message })
}

fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the control socket {} (is the spoolfs daemon running?)",
            socket.display()
        )
    })
}

fn send(stream: &UnixStream, socket: &Path, request: &str) -> Result<()> {
    (&*stream)
        .write_all(request.as_bytes())
        .with_context(|| format!("cannot write to the control socket {}", socket.display()))
}

/// Sends `request` to the daemon behind `socket` and hands each JSON line of the answer to
/// `on_answer` until it returns a result; `what` names the request if the daemon hangs up
/// first.
fn converse<T>(
    socket: &Path,
    request: &str,
    what: &str,
    mut on_answer: impl FnMut(&serde_json::Value) -> Result<Option<T>>,
) -> Result<T> {
    let stream = connect(socket)?;
    send(&stream, socket, request)?;
    for line in BufReader::new(&stream).lines() {
        let line = line.with_context(|| format!("lost the control socket {}", socket.display()))?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("bad answer on the control socket {}", socket.display()))?;
        if let Some(done) = on_answer(&v)? {
            return Ok(done);
        }
    }
    bail!("the spoolfs daemon closed the control socket before {what} finished")
}

/// The failure message of an answer, or `default`.
fn message<'a>(v: &'a serde_json::Value, default: &'a str) -> &'a str {
    v.get("message").and_then(|m| m.as_str()).unwrap_or(default)
}

/// Asks the daemon behind `socket` for its status line (raw JSON and parsed).
pub fn query(socket: &Path) -> Result<(String, MountStatus)> {
    let stream = connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    send(&stream, socket, "status\n")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("no answer on the control socket {}", socket.display()))?;
    if line.trim().is_empty() {
        bail!("empty answer on the control socket {}", socket.display());
    }
    let status: MountStatus = serde_json::from_str(line.trim())
        .with_context(|| format!("bad answer on the control socket {}", socket.display()))?;
    Ok((line.trim().to_string(), status))
}

/// What the daemon behind `socket` still has to write out; fails after `timeout`.
pub fn writeout(socket: &Path, timeout: Duration) -> Result<WriteOut> {
    let stream = connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    send(&stream, socket, "writeout\n")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("no answer on the control socket {}", socket.display()))?;
    serde_json::from_str(line.trim())
        .with_context(|| format!("bad answer on the control socket {}", socket.display()))
}

/// Runs the `sync` barrier through the daemon behind `socket`; `progress` sees
/// (slices, bytes) still to go.
pub fn sync(socket: &Path, timeout: Option<f64>, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let request = match timeout {
        Some(t) => format!("sync {t}\n"),
        None => "sync none\n".to_string(),
    };
    converse(socket, &request, "the sync", |v| {
        match v.get("sync").and_then(|s| s.as_str()) {
            Some("done") => Ok(Some(())),
            Some(_) => bail!("{}", message(v, "sync failed")),
            None => {
                progress(
                    v.get("sync_slices").and_then(|n| n.as_u64()).unwrap_or(0),
                    v.get("sync_bytes").and_then(|n| n.as_u64()).unwrap_or(0),
                );
                Ok(None)
            }
        }
    })
}

/// Has the daemon behind `socket` fetch the data under `path` (relative to the mount's root)
/// into its local data cache; `progress` sees how far it is. `Ok(None)`: the daemon is too old
/// to know the request.
pub fn warmup(
    socket: &Path,
    request: &WarmupRequest,
    progress: &mut dyn FnMut(&WarmReport),
) -> Result<Option<WarmReport>> {
    let line = format!("warmup {}\n", serde_json::to_string(request)?);
    converse(socket, &line, "the warmup", |v| {
        match v.get("warmup").and_then(|s| s.as_str()) {
            Some("done") => serde_json::from_value(v.get("report").cloned().unwrap_or_default())
                .map(|r| Some(Some(r)))
                .with_context(|| {
                    format!(
                        "bad warmup report on the control socket {}",
                        socket.display()
                    )
                }),
            Some(_) => bail!("{}", message(v, "warmup failed")),
            None => match v.get("warmup_progress") {
                Some(p) => {
                    if let Ok(r) = serde_json::from_value::<WarmReport>(p.clone()) {
                        progress(&r);
                    }
                    Ok(None)
                }
                // A daemon too old to know `warmup` answers with its status line.
                None => Ok(Some(None)),
            },
        }
    })
}

/// Runs garbage collection in the daemon behind `socket`; `progress` sees (phase, done, total).
pub fn gc(
    socket: &Path,
    opts: &GcOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<GcReport> {
    let request = format!("gc {}\n", serde_json::to_string(opts)?);
    converse(socket, &request, "gc", |v| {
        match v.get("gc").and_then(|s| s.as_str()) {
            Some("done") => serde_json::from_value(v.get("report").cloned().unwrap_or_default())
                .map(Some)
                .with_context(|| {
                    format!("bad gc report on the control socket {}", socket.display())
                }),
            Some(_) => bail!("{}", message(v, "gc failed")),
            None => match v.get("gc_phase").and_then(|p| p.as_str()) {
                Some(phase) => {
                    progress(
                        phase,
                        v.get("done").and_then(|n| n.as_u64()).unwrap_or(0),
                        v.get("total").and_then(|n| n.as_u64()).unwrap_or(0),
                    );
                    Ok(None)
                }
                // A daemon too old to know `gc` answers with its status line.
                None => bail!(
                    "the spoolfs daemon behind {} does not support gc (restart the mount with \
                     this version of spoolfs)",
                    socket.display()
                ),
            },
        }
    })
}
