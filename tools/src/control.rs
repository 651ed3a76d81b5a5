//! The control socket of a mount daemon: a Unix socket (mode 0600) that answers every
//! connection with one JSON line describing the mount, then closes.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use spoolfs_engine::{Engine, EngineStatus};
use spoolfs_uploader::ObjectStorage;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// What the control socket answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct MountStatus {
    pub pid: u32,
    pub mount_point: PathBuf,
    pub read_only: bool,
    pub log_file: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// Whether the object store answered a listing just now.
    pub storage_reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// The engine's own report; absent when the engine could not produce one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
}

pub struct ControlServer {
    pub engine: Arc<Engine>,
    pub storage: Arc<ObjectStorage>,
    pub mount_point: PathBuf,
    pub read_only: bool,
    pub log_file: Option<PathBuf>,
    pub cache_dir: PathBuf,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
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
            storage_reachable,
            storage_error,
            engine,
            engine_error,
        }
    }

    /// Binds the socket (replacing a stale one) and serves it on a background thread.
    pub fn start(self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        // The mount point was checked to be free, so a socket left here is from a dead daemon.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot create control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        std::thread::Builder::new()
            .name("spoolfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(mut stream) => {
                            let status = self.status();
                            let mut line = serde_json::to_vec(&status).unwrap_or_default();
                            line.push(b'\n');
                            if let Err(e) = stream.write_all(&line) {
                                debug!("control socket client went away: {e}");
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

/// Asks the daemon behind `socket` for its status line (raw JSON and parsed).
pub fn query(socket: &Path) -> Result<(String, MountStatus)> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the control socket {} (is the spoolfs daemon running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
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
