//! `mount.spoolfs`: the helper mount(8) runs for `mount -t spoolfs` and for `/etc/fstab`
//! entries of type `spoolfs` (or `fuse.spoolfs`, as `mount.fuse.spoolfs`).
//!
//! mount(8) runs `/sbin/mount.spoolfs SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`. The
//! `spoolfs` binary acts as that helper when it is started under one of those names (a symlink
//! made by `spoolfs install-helper`). It runs `spoolfs mount` (as a daemon: it returns once the
//! mount is ready) with:
//!
//! - SPEC: the volume. `default` (or `spoolfs`, `none`): the default volume; a URL
//!   (`redb:///var/lib/spoolfs/vol1.redb`): `--meta URL`; an absolute path: `--meta redb://PATH`.
//! - each option `key=value`: `--key=value`; `key`: `--key` (underscores count as dashes, so
//!   `allow_other` is `--allow-other`); `ro`: `--read-only`; `relatime`, `strictatime`,
//!   `noatime`: `--atime=…` (the last one given wins); `acl`, `noacl`: `--acl`,
//!   `--acl=false`; `noexec`, `suid`, `dev` (and their opposites, the last one given wins):
//!   `--noexec`, `--suid`, `--dev` (mount(8) leaves out the flags that are off, see
//!   [`KernelFlags::from_mount8`]). The generic options mount(8) and systemd pass (`rw`,
//!   `defaults`, `auto`, `noauto`, `user`, `nofail`, `_netdev`, `x-*`, ...) are ignored. Any
//!   other option is an error, unless mount was given `-s` (sloppy).
//!
//! Like every mount helper it prints nothing on success; errors go to stderr with a non-zero
//! status. `-o remount,…` changes the kernel mount's flags in place (`ro`/`rw`, `noexec`,
//! `nosuid`, `nodev`); the volume's own settings need a full unmount and mount to change.

use crate::config::{OptValue, find_flag, flag_args, flag_names, mount_command};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The names under which the binary is the mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.spoolfs", "mount.fuse.spoolfs"];

/// Options that mount(8), libmount or systemd hand every helper and that mean nothing (or
/// nothing more) to spoolfs.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "netdev",
    // `atime` and `norelatime` only undo `noatime` and `relatime`: the default rule stays.
    "atime",
    "diratime",
    "nodiratime",
    "norelatime",
    "lazytime",
    "nolazytime",
    "async",
    "loud",
    "silent",
];

fn ignored(key: &str) -> bool {
    IGNORED.contains(&key)
        || key.starts_with("x-")
        || key.starts_with("comment=")
        || key == "comment"
}

/// The helper's own command line, as mount(8) passes it.
#[derive(Debug, Default, PartialEq)]
pub struct HelperArgs {
    pub spec: String,
    pub dir: PathBuf,
    pub options: Vec<String>,
    /// -f: do everything but the mount.
    pub fake: bool,
    /// -v: say what is run.
    pub verbose: bool,
    /// -s: ignore unknown options (with a warning) instead of failing.
    pub sloppy: bool,
}

/// Parses `SPEC DIR [-sfnv] [-o OPTIONS] [-t TYPE] [-N NS]` (flags may come anywhere).
pub fn parse_helper_args(args: &[String]) -> Result<HelperArgs> {
    let mut h = HelperArgs::default();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) {
            let mut chars = flags.chars();
            while let Some(c) = chars.next() {
                match c {
                    's' => h.sloppy = true,
                    'f' => h.fake = true,
                    'n' => {}
                    'v' => h.verbose = true,
                    'o' | 't' | 'N' => {
                        let rest: String = chars.by_ref().collect();
                        let value = if rest.is_empty() {
                            it.next()
                                .cloned()
                                .with_context(|| format!("-{c} needs a value"))?
                        } else {
                            rest
                        };
                        match c {
                            'o' => h.options.extend(split_options(&value)?),
                            'N' => bail!(
                                "-N (mount in another namespace) is not supported by \
                                 mount.spoolfs"
                            ),
                            _ => {} // -t spoolfs / fuse.spoolfs
                        }
                    }
                    other => bail!("unknown mount helper flag -{other}"),
                }
            }
        } else {
            positional.push(a.clone());
        }
    }
    match <[String; 2]>::try_from(positional) {
        Ok([spec, dir]) => {
            h.spec = spec;
            h.dir = PathBuf::from(dir);
            Ok(h)
        }
        Err(p) => bail!(
            "expected SPEC and DIR (mount.spoolfs SPEC DIR [-sfnv] [-o OPTIONS]), got {} \
             argument(s)",
            p.len()
        ),
    }
}

/// Splits `a,b=c,d="x,y"` on the commas outside double quotes (the quotes are removed).
pub fn split_options(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("unbalanced quote in mount options {s:?}");
    }
    out.push(cur);
    Ok(out.into_iter().filter(|o| !o.is_empty()).collect())
}

/// The `spoolfs mount …` arguments (without the program name) for SPEC, DIR and the `-o`
/// options. Unknown options are errors, or warnings (returned second) when `sloppy`.
pub fn translate(
    spec: &str,
    dir: &Path,
    options: &[String],
    sloppy: bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let cmd = mount_command();
    let mut out = vec!["mount".to_string()];
    let mut warnings = Vec::new();
    let mut meta_option = false;
    let mut flags = Vec::new();
    let mut kernel = KernelFlags::from_mount8(options);
    let mut atime = None;
    for opt in options {
        let (raw_key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, OptValue::Text(v.to_string())),
            None => (opt.as_str(), OptValue::Bare),
        };
        if ignored(raw_key) || ignored(opt) || kernel.take(opt) {
            continue;
        }
        if raw_key == "ro" && value == OptValue::Bare {
            flags.push("--read-only".to_string());
            continue;
        }
        if raw_key == "noacl" && value == OptValue::Bare {
            flags.push("--acl=false".to_string());
            continue;
        }
        if matches!(raw_key, "relatime" | "strictatime" | "noatime") && value == OptValue::Bare {
            atime = Some(format!("--atime={raw_key}"));
            continue;
        }
        let key = raw_key.replace('_', "-");
        let Some(arg) = find_flag(&cmd, &key).filter(|_| key != "foreground") else {
            let msg = format!(
                "unknown mount option {raw_key:?}; spoolfs takes the long flags of `spoolfs \
                 mount` as options ({}) and ignores the generic ones (rw, defaults, auto, \
                 noauto, user, nofail, _netdev, x-*)",
                flag_names(&cmd)
                    .into_iter()
                    .filter(|f| f != "foreground")
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if sloppy {
                warnings.push(msg);
                continue;
            }
            bail!(msg);
        };
        meta_option |= key == "meta";
        flags.extend(
            flag_args(arg, &key, &value).with_context(|| format!("mount option {raw_key:?}"))?,
        );
    }
    let spec_meta = match spec {
        "" | "default" | "spoolfs" | "none" => None,
        s if s.contains("://") => Some(s.to_string()),
        s if s.starts_with('/') => Some(format!("redb://{s}")),
        s => bail!(
            "unknown volume {s:?}: give a metadata URL (redb:///var/lib/spoolfs/vol1.redb), \
             the absolute path of a .redb metadata file, or \"default\""
        ),
    };
    if let Some(meta) = spec_meta {
        if meta_option {
            bail!("the volume is given twice: as {spec:?} and as the meta= option");
        }
        out.push(format!("--meta={meta}"));
    }
    out.push(dir.to_string_lossy().into_owned());
    out.extend(flags);
    out.extend(atime);
    for (on, flag) in [
        (kernel.noexec, "--noexec"),
        (kernel.suid, "--suid"),
        (kernel.dev, "--dev"),
    ] {
        if on == Some(true) {
            out.push(flag.to_string());
        }
    }
    // Mount helpers are silent on success: scripts compare mount(8)'s output.
    out.push("--quiet".to_string());
    Ok((out, warnings))
}

/// The per-mount flags of the kernel among the options; the last of a pair wins. `None`: not
/// given (nosuid, nodev and exec are the defaults of a spoolfs mount).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct KernelFlags {
    pub noexec: Option<bool>,
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    /// `ro` (true) or `rw` (false); only remount reads it, the mount takes `ro` as a flag.
    pub read_only: Option<bool>,
}

impl KernelFlags {
    /// The starting point for `options`. mount(8) passes the kernel flags it computed, `rw` or
    /// `ro` first, and leaves out the ones that are off (`-o suid` arrives as no `nosuid`):
    /// then an absent flag is off, as for every file system mount(8) mounts (a user mount
    /// gets nosuid,nodev from mount(8) itself). Given by hand, absent flags keep spoolfs's
    /// defaults (nosuid, nodev, exec).
    fn from_mount8(options: &[String]) -> KernelFlags {
        if matches!(options.first().map(String::as_str), Some("ro" | "rw")) {
            KernelFlags {
                noexec: Some(false),
                suid: Some(true),
                dev: Some(true),
                read_only: None,
            }
        } else {
            KernelFlags::default()
        }
    }

    /// Records `opt` if it is one of the flags (not ro/rw); false otherwise.
    fn take(&mut self, opt: &str) -> bool {
        match opt {
            "noexec" => self.noexec = Some(true),
            "exec" => self.noexec = Some(false),
            "suid" => self.suid = Some(true),
            "nosuid" => self.suid = Some(false),
            "dev" => self.dev = Some(true),
            "nodev" => self.dev = Some(false),
            _ => return false,
        }
        true
    }
}

/// `mount -o remount,…`: changes the read-only, noexec, nosuid and nodev flags of the spoolfs
/// mount at `dir` in place. mount(8) passes the complete resulting set of flags, `ro` or `rw`
/// first (`ro,nosuid,nodev,relatime,remount,…`): then a flag that is absent is off, as for
/// mount(2). Given by hand (`-o remount,ro`), only the flags named change. Other options
/// (mount(8) also passes the fstab entry's) cannot change without a new mount and are left
/// alone; so are the access-time flags, which the kernel keeps on a remount naming none.
pub fn remount(dir: &Path, options: &[String]) -> Result<()> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    let entry = spoolfs_fuse::read_mountinfo()
        .context("cannot read /proc/self/mountinfo")?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == canonical);
    match entry {
        Some(m) if m.fs_type == "fuse.spoolfs" => {}
        Some(m) => bail!(
            "{} is a {} mount, not a spoolfs one",
            canonical.display(),
            m.fs_type
        ),
        None => bail!("{} is not mounted", canonical.display()),
    }
    let mut flags = KernelFlags::from_mount8(options);
    for opt in options {
        match opt.as_str() {
            "ro" => flags.read_only = Some(true),
            "rw" => flags.read_only = Some(false),
            o => {
                flags.take(o);
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    if (flags.suid == Some(true) || flags.dev == Some(true)) && unsafe { libc::geteuid() } != 0 {
        bail!("suid and dev are only honoured for root");
    }
    let path = std::ffi::CString::new(canonical.as_os_str().as_encoded_bytes())
        .context("mount point contains a NUL byte")?;
    // SAFETY: an all-zero statvfs is a valid out buffer; `path` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat {}", canonical.display()));
    }
    let current = |bit: libc::c_ulong| st.f_flag & bit != 0;
    let mut ms = libc::MS_REMOUNT | libc::MS_BIND;
    if flags.read_only.unwrap_or(current(libc::ST_RDONLY)) {
        ms |= libc::MS_RDONLY;
    }
    if flags.noexec.unwrap_or(current(libc::ST_NOEXEC)) {
        ms |= libc::MS_NOEXEC;
    }
    if !flags.suid.unwrap_or(!current(libc::ST_NOSUID)) {
        ms |= libc::MS_NOSUID;
    }
    if !flags.dev.unwrap_or(!current(libc::ST_NODEV)) {
        ms |= libc::MS_NODEV;
    }
    // SAFETY: valid NUL-terminated target; null source, type and data are allowed for a
    // bind remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            ms,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot remount {}", canonical.display()));
    }
    Ok(())
}

/// When started as `mount.spoolfs`: does the helper's work and returns its exit code.
pub fn dispatch(argv: &[OsString]) -> Option<ExitCode> {
    let name = Path::new(argv.first()?).file_name()?.to_str()?;
    if !HELPER_NAMES.contains(&name) {
        return None;
    }
    let args: Vec<String> = match argv[1..]
        .iter()
        .map(|a| a.clone().into_string())
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(a) => {
            eprintln!("{name}: argument {a:?} is not valid UTF-8");
            return Some(ExitCode::from(1));
        }
    };
    // mount(8)'s exit codes: 1 incorrect invocation, 32 mount failure.
    let h = match parse_helper_args(&args) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return Some(ExitCode::from(1));
        }
    };
    if h.options.iter().any(|o| o == "remount") {
        if h.verbose || h.fake {
            eprintln!(
                "{name}: remounting {} with {}",
                h.dir.display(),
                h.options.join(",")
            );
        }
        if h.fake {
            return Some(ExitCode::SUCCESS);
        }
        return Some(match remount(&h.dir, &h.options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e:#}");
                ExitCode::from(32)
            }
        });
    }
    let (mount_args, warnings) = match translate(&h.spec, &h.dir, &h.options, h.sloppy) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return Some(ExitCode::from(1));
        }
    };
    for w in warnings {
        eprintln!("{name}: ignoring {w}");
    }
    let mut full: Vec<OsString> = vec![OsString::from("spoolfs")];
    full.extend(mount_args.iter().map(OsString::from));
    if h.verbose || h.fake {
        let shown: Vec<String> = full.iter().map(|a| a.to_string_lossy().into()).collect();
        eprintln!("{name}: running {}", shown.join(" "));
    }
    if h.fake {
        return Some(ExitCode::SUCCESS);
    }
    let code = crate::run_cli(full);
    Some(if code == ExitCode::SUCCESS {
        code
    } else {
        ExitCode::from(32)
    })
}

#[derive(Args, Debug)]
pub struct InstallHelperArgs {
    /// Where mount(8) looks for helpers.
    #[arg(long, value_name = "DIR", default_value = "/sbin")]
    pub dir: PathBuf,
    /// Replace existing files of those names.
    #[arg(long)]
    pub force: bool,
}

/// `spoolfs install-helper`: symlinks DIR/mount.spoolfs and DIR/mount.fuse.spoolfs to this
/// executable.
pub fn install(args: InstallHelperArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot find the spoolfs executable")?;
    if !args.dir.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    for name in HELPER_NAMES {
        let link = args.dir.join(name);
        match std::fs::read_link(&link) {
            Ok(target) if std::fs::canonicalize(&link).ok().as_ref() == Some(&exe) => {
                println!("{} -> {} (already there)", link.display(), target.display());
                continue;
            }
            Ok(_) | Err(_) if link.symlink_metadata().is_ok() => {
                if !args.force {
                    bail!(
                        "{} exists and is not a link to {}; use --force to replace it",
                        link.display(),
                        exe.display()
                    );
                }
                std::fs::remove_file(&link)
                    .with_context(|| format!("cannot remove {}", link.display()))?;
            }
            _ => {}
        }
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        println!("{} -> {}", link.display(), exe.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn helper_command_line() {
        let h = parse_helper_args(&s(&[
            "redb:///v/meta.redb",
            "/mnt/v",
            "-sv",
            "-o",
            "rw,cache-dir=/c",
            "-oallow_other",
            "-t",
            "spoolfs",
        ]))
        .unwrap();
        assert_eq!(h.spec, "redb:///v/meta.redb");
        assert_eq!(h.dir, PathBuf::from("/mnt/v"));
        assert_eq!(h.options, s(&["rw", "cache-dir=/c", "allow_other"]));
        assert!(h.sloppy && h.verbose && !h.fake);
        assert!(parse_helper_args(&s(&["only-one"])).is_err());
        assert!(parse_helper_args(&s(&["a", "b", "c"])).is_err());
        assert!(parse_helper_args(&s(&["a", "b", "-o"])).is_err());
        assert!(parse_helper_args(&s(&["a", "b", "-N", "/proc/1/ns/mnt"])).is_err());
        assert!(parse_helper_args(&s(&["a", "b", "-q"])).is_err());
        assert_eq!(
            split_options("a,b=\"x,y\",,c").unwrap(),
            s(&["a", "b=x,y", "c"])
        );
        assert!(split_options("a=\"x").is_err());
    }

    #[test]
    fn translates_options() {
        let (args, warnings) = translate(
            "redb:///var/lib/spoolfs/vol1.redb",
            Path::new("/mnt/vol1"),
            &s(&[
                "rw",
                "defaults",
                "noauto",
                "user",
                "nofail",
                "_netdev",
                "x-systemd.automount",
                "x-systemd.requires=network-online.target",
                "cache-dir=/nvme/spoolfs",
                "max_staging=4G",
                "allow_other",
                "writeback=false",
                "upload-threads=8",
                "config=/etc/spoolfs/vol1.toml",
                "ro",
            ]),
            false,
        )
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            args,
            s(&[
                "mount",
                "--meta=redb:///var/lib/spoolfs/vol1.redb",
                "/mnt/vol1",
                "--cache-dir=/nvme/spoolfs",
                "--max-staging=4G",
                "--allow-other",
                "--writeback=false",
                "--upload-threads=8",
                "--config=/etc/spoolfs/vol1.toml",
                "--read-only",
                "--suid",
                "--dev",
                "--quiet",
            ])
        );
        // The parsed result is a valid `spoolfs mount` command line.
        let mut full = vec!["spoolfs".to_string()];
        full.extend(args);
        <crate::Cli as clap::Parser>::try_parse_from(full).unwrap();

        let (args, _) = translate("default", Path::new("/m"), &[], false).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--quiet"]));
        let (args, _) = translate("/var/lib/v.redb", Path::new("/m"), &[], false).unwrap();
        assert_eq!(
            args,
            s(&["mount", "--meta=redb:///var/lib/v.redb", "/m", "--quiet"])
        );
        let (args, _) = translate("none", Path::new("/m"), &s(&["meta=memory://"]), false).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--meta=memory://", "--quiet"]));
        // The kernel's flags reach the mount; the last of a pair wins.
        let (args, _) = translate(
            "default",
            Path::new("/m"),
            &s(&["noexec", "suid", "nodev", "exec", "noexec", "dev"]),
            false,
        )
        .unwrap();
        assert_eq!(
            args,
            s(&["mount", "/m", "--noexec", "--suid", "--dev", "--quiet"])
        );
        let (args, _) =
            translate("default", Path::new("/m"), &s(&["nosuid", "nodev"]), false).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--quiet"]));
        // From mount(8) (rw or ro first), a flag left out is off: `-o suid,dev` arrives as
        // `rw` alone.
        let (args, _) = translate("default", Path::new("/m"), &s(&["rw", "x=1"]), true).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--suid", "--dev", "--quiet"]));
        let (args, _) = translate(
            "default",
            Path::new("/m"),
            &s(&["ro", "nosuid", "nodev", "noexec"]),
            false,
        )
        .unwrap();
        assert_eq!(
            args,
            s(&["mount", "/m", "--read-only", "--noexec", "--quiet"])
        );
    }

    #[test]
    fn atime_and_acl_options() {
        let atime = |opts: &[&str]| {
            let (args, warnings) = translate("default", Path::new("/m"), &s(opts), false).unwrap();
            assert!(warnings.is_empty());
            let mut full = vec!["spoolfs".to_string()];
            full.extend(args.clone());
            <crate::Cli as clap::Parser>::try_parse_from(full).unwrap();
            // (--quiet, which every helper mount gets, is not an atime flag.)
            args[2..]
                .iter()
                .filter(|a| *a != "--quiet")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(atime(&["noatime"]), s(&["--atime=noatime"]));
        assert_eq!(atime(&["strictatime", "rw"]), s(&["--atime=strictatime"]));
        // The last one wins, as with mount(8).
        assert_eq!(atime(&["noatime", "relatime"]), s(&["--atime=relatime"]));
        assert!(atime(&["atime", "norelatime", "nodiratime"]).is_empty());
        assert_eq!(atime(&["noacl"]), s(&["--acl=false"]));
        assert_eq!(atime(&["acl"]), s(&["--acl"]));
    }

    #[test]
    fn rejects_bad_options() {
        let err = |opts: &[&str]| {
            format!(
                "{:#}",
                translate("default", Path::new("/m"), &s(opts), false).unwrap_err()
            )
        };
        assert!(err(&["frobnicate"]).contains("unknown mount option \"frobnicate\""));
        assert!(err(&["cache-dir"]).contains("needs a value"));
        assert!(err(&["allow-other=maybe"]).contains("true or false"));
        assert!(err(&["ready-fd=3"]).contains("unknown mount option"));
        assert!(err(&["foreground"]).contains("unknown mount option"));
        assert!(translate("vol1", Path::new("/m"), &[], false).is_err());
        assert!(translate("/v.redb", Path::new("/m"), &s(&["meta=redb:///x"]), false).is_err());
        let (args, warnings) =
            translate("default", Path::new("/m"), &s(&["frobnicate", "ro"]), true).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--read-only", "--quiet"]));
        assert_eq!(warnings.len(), 1);
    }
}
