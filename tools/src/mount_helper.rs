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
//!   `--acl=false`. The generic options mount(8) and
//!   systemd pass (`rw`, `defaults`, `auto`, `noauto`, `user`, `nofail`, `_netdev`, `x-*`, ...)
//!   are ignored. Any other option is an error, unless mount was given `-s` (sloppy).

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
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
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
    let mut atime = None;
    for opt in options {
        let (raw_key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, OptValue::Text(v.to_string())),
            None => (opt.as_str(), OptValue::Bare),
        };
        if ignored(raw_key) || ignored(opt) {
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
    Ok((out, warnings))
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
            ])
        );
        // The parsed result is a valid `spoolfs mount` command line.
        let mut full = vec!["spoolfs".to_string()];
        full.extend(args);
        <crate::Cli as clap::Parser>::try_parse_from(full).unwrap();

        let (args, _) = translate("default", Path::new("/m"), &[], false).unwrap();
        assert_eq!(args, s(&["mount", "/m"]));
        let (args, _) = translate("/var/lib/v.redb", Path::new("/m"), &[], false).unwrap();
        assert_eq!(args, s(&["mount", "--meta=redb:///var/lib/v.redb", "/m"]));
        let (args, _) = translate("none", Path::new("/m"), &s(&["meta=memory://"]), false).unwrap();
        assert_eq!(args, s(&["mount", "/m", "--meta=memory://"]));
    }

    #[test]
    fn atime_and_acl_options() {
        let atime = |opts: &[&str]| {
            let (args, warnings) = translate("default", Path::new("/m"), &s(opts), false).unwrap();
            assert!(warnings.is_empty());
            let mut full = vec!["spoolfs".to_string()];
            full.extend(args.clone());
            <crate::Cli as clap::Parser>::try_parse_from(full).unwrap();
            args[2..].to_vec()
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
        assert_eq!(args, s(&["mount", "/m", "--read-only"]));
        assert_eq!(warnings.len(), 1);
    }
}
