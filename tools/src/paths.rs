//! Where things live: the cache directory, the runtime directory with each mount's control
//! socket and pid file, and the canonical form of a mount point.

use anyhow::{Context, Result};
use std::path::{Component, Path, PathBuf};

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_CACHE_HOME/spoolfs`, else `~/.cache/spoolfs`, else `/var/cache/spoolfs`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("spoolfs")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The directory of control sockets and pid files: `/run/spoolfs` for root, else
/// `$XDG_RUNTIME_DIR/spoolfs`, else `<cache dir>/run`.
pub fn runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/spoolfs");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("spoolfs"))
        .unwrap_or_else(|| default_cache_dir().join("run"))
}

/// Makes every file and directory this process creates private to its user (files 0600,
/// directories 0700), whatever umask it was started with: staged data, cache files, the
/// metadata store and the log hold every user's file data and names.
pub fn private_umask() {
    // SAFETY: umask has no preconditions; called before any thread that creates files.
    unsafe { libc::umask(0o077) };
}

/// Creates `dir` (and missing parents) private to this user; an existing `dir` of ours that
/// others can read is made private (0700) too.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make directory {} private", dir.display()))?;
    }
    Ok(())
}

/// Makes the file `path` of this user readable by this user only, if others can read it (a
/// file created before spoolfs made its files private).
pub fn make_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o077 != 0 {
        let mode = meta.mode() & 0o700;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    Ok(())
}

/// Opens (creating, 0600) a log file for appending; an existing one is made private too. A
/// symbolic link is refused, not followed: the log of a root daemon must not be redirected
/// onto another file.
pub fn open_log_file(path: &Path) -> Result<std::fs::File> {
    let file = open_log_file_as_is(path)?;
    make_private(path)?;
    Ok(file)
}

fn open_log_file_as_is(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "log file {} is a symbolic link; give the real path with --log-file",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("cannot open log file {}", path.display()))
            }
        })
}

/// FNV-1a, 64 bits: a stable short name for a mount point.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The control socket and pid file of the mount at the canonical `mount_point`.
pub struct RuntimeFiles {
    pub socket: PathBuf,
    pub pid: PathBuf,
    /// Written by the daemon as it exits: `clean`, or how much is still staged.
    pub exit: PathBuf,
}

pub fn runtime_files(mount_point: &Path) -> RuntimeFiles {
    use std::os::unix::ffi::OsStrExt;
    let dir = runtime_dir();
    let stem = format!("{:016x}", fnv1a(mount_point.as_os_str().as_bytes()));
    RuntimeFiles {
        socket: dir.join(format!("{stem}.sock")),
        pid: dir.join(format!("{stem}.pid")),
        exit: dir.join(format!("{stem}.exit")),
    }
}

/// The absolute, symlink-free path of a mount point, without touching the mount point itself
/// (stat on a hung FUSE mount would block): the parent is canonicalised, the last component
/// kept.
pub fn canonical_mount_point(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    // Resolve "." and ".." lexically first so the last component is a real name.
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = parent
                .canonicalize()
                .with_context(|| format!("{}", parent.display()))?;
            let joined = parent.join(name);
            // The last component may itself be a symlink (not to a mount point of ours, but
            // resolve it the way mount did).
            match std::fs::symlink_metadata(&joined) {
                Ok(m) if m.file_type().is_symlink() => joined
                    .canonicalize()
                    .with_context(|| format!("{}", joined.display())),
                _ => Ok(joined),
            }
        }
        _ => Ok(clean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_file_names_are_stable_and_distinct() {
        let a = runtime_files(Path::new("/mnt/a"));
        let b = runtime_files(Path::new("/mnt/b"));
        assert_ne!(a.socket, b.socket);
        assert_eq!(a.socket, runtime_files(Path::new("/mnt/a")).socket);
        assert!(a.socket.to_string_lossy().ends_with(".sock"));
        assert!(a.pid.to_string_lossy().ends_with(".pid"));
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
    }

    #[test]
    fn log_file_is_private_and_never_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("spoolfs.log");
        drop(open_log_file(&log).unwrap());
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !0o600, 0, "{mode:o}");
        // A log written before, readable by others, is made private.
        let old = dir.path().join("old.log");
        std::fs::write(&old, b"earlier\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_log_file(&old).unwrap());
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = format!("{:#}", open_log_file(&link).unwrap_err());
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn canonical_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("m")).unwrap();
        assert_eq!(
            canonical_mount_point(&real.join("x/../m")).unwrap(),
            real.join("m")
        );
        assert_eq!(
            canonical_mount_point(&real.join("m/.")).unwrap(),
            real.join("m")
        );
        std::os::unix::fs::symlink(real.join("m"), real.join("link")).unwrap();
        assert_eq!(
            canonical_mount_point(&real.join("link")).unwrap(),
            real.join("m")
        );
        assert_eq!(
            canonical_mount_point(Path::new("/")).unwrap(),
            Path::new("/")
        );
    }
}
