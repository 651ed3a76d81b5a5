//! `spoolfs`: the command line of the spoolfs file system.
//!
//! - `spoolfs format`: create a volume (metadata store + object store).
//! - `spoolfs mount`: mount a volume (as a daemon unless `--foreground`).
//! - `spoolfs umount`: unmount and wait for the daemon to finish writing.
//! - `spoolfs status`: what a mount is doing, from its control socket.
//! - `spoolfs fsck`: check (and repair) an unmounted volume against its object store.
//! - `spoolfs gc`: delete orphan objects and (`--compact`) rewrite sparse pack objects.
//! - `spoolfs bench`: a small fio-style benchmark of any directory.
//! - `spoolfs completions`, `spoolfs install-helper`: shell completions, and the `mount.spoolfs`
//!   helper of mount(8) (the same binary started under that name; see `mount_helper`).

mod bench;
mod config;
mod control;
mod format;
mod fsck;
mod gc;
mod metrics;
mod mount;
mod mount_helper;
mod paths;
mod size;
mod staging_args;
mod status;
mod sync;
mod umount;
mod warmup;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "spoolfs",
    version,
    about = "A writeback file system over object storage"
)]
pub struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// "spoolfs_engine=debug"). Defaults to $SPOOLFS_LOG, else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Create a volume: its record and root directory in the metadata store.
    Format(format::FormatArgs),
    /// Mount a volume (as a background daemon unless --foreground).
    Mount(Box<mount::MountArgs>),
    /// Unmount a spoolfs mount and wait until its data is written out.
    #[command(alias = "unmount")]
    Umount(umount::UmountArgs),
    /// Show the state of one spoolfs mount, or of all of them.
    Status(status::StatusArgs),
    /// Wait until everything written under PATH is in the object store.
    Sync(sync::SyncArgs),
    /// Read every file under PATH so its data is in the mount's local data cache.
    Warmup(warmup::WarmupArgs),
    /// Check an unmounted volume: metadata against the object store and the staging log
    /// (exit status 0: no errors, 1: errors not repaired, 2: the check could not run).
    Fsck(fsck::FsckArgs),
    /// Reclaim object-store space: delete objects nothing refers to, and with --compact
    /// rewrite pack objects that are mostly dead (safe while the volume is mounted).
    Gc(gc::GcArgs),
    /// Measure a directory (spoolfs or any other): write/read latency percentiles, sequential
    /// throughput, small-file, stat and readdir rates.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (e.g. `spoolfs completions bash >
    /// /etc/bash_completion.d/spoolfs`).
    Completions(CompletionsArgs),
    /// Install the mount(8) helper (`mount -t spoolfs`, /etc/fstab): symlinks
    /// DIR/mount.spoolfs and DIR/mount.fuse.spoolfs to this executable.
    InstallHelper(mount_helper::InstallHelperArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Object store options shared by `format` and `mount`. Credentials come only from the
/// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint URL, for S3-compatible stores (e.g. http://127.0.0.1:9000).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, value_name = "R")]
    s3_region: Option<String>,
    /// Always use path-style requests (ENDPOINT/BUCKET/KEY). Without this flag or
    /// --s3-virtual-hosted: path style when the endpoint's host is an IP address or
    /// localhost, else virtual-hosted.
    #[arg(long, conflicts_with = "s3_virtual_hosted")]
    s3_path_style: bool,
    /// Always use virtual-hosted requests (BUCKET.ENDPOINT/KEY), as AWS does.
    #[arg(long)]
    s3_virtual_hosted: bool,
    /// Send unsigned requests (public buckets).
    #[arg(long)]
    s3_anonymous: bool,
}

impl S3Args {
    /// Applies these options on top of `config` (options given win).
    pub fn apply(&self, config: &mut spoolfs_engine::StorageConfig) {
        if let Some(e) = &self.s3_endpoint {
            config.s3_endpoint = Some(e.clone());
        }
        if let Some(r) = &self.s3_region {
            config.s3_region = Some(r.clone());
        }
        // A flag given now wins over the style recorded at format time.
        if self.s3_path_style {
            config.s3_path_style = true;
            config.s3_virtual_hosted = false;
        }
        if self.s3_virtual_hosted {
            config.s3_path_style = false;
            config.s3_virtual_hosted = true;
        }
        config.s3_anonymous |= self.s3_anonymous;
    }

    /// Opens the object store of volume `record` with these options on top, and checks that
    /// it answers.
    pub fn open_storage(
        &self,
        record: &spoolfs_engine::VolumeRecord,
    ) -> anyhow::Result<spoolfs_objects::ObjectStorage> {
        use anyhow::Context;
        let mut config = record.storage_config();
        self.apply(&mut config);
        let storage = spoolfs_objects::ObjectStorage::open(&config)
            .with_context(|| format!("cannot open the object store of volume {:?}", record.name))?;
        storage.check().with_context(|| {
            format!("the object store of volume {:?} is not usable", record.name)
        })?;
        Ok(storage)
    }

    /// The same options as command-line arguments (to pass them to the daemon).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.s3_endpoint {
            out.extend(["--s3-endpoint".to_string(), e.clone()]);
        }
        if let Some(r) = &self.s3_region {
            out.extend(["--s3-region".to_string(), r.clone()]);
        }
        if self.s3_path_style {
            out.push("--s3-path-style".into());
        }
        if self.s3_virtual_hosted {
            out.push("--s3-virtual-hosted".into());
        }
        if self.s3_anonymous {
            out.push("--s3-anonymous".into());
        }
        out
    }
}

/// Sets up logging to stderr (or `file`), at `level`, else $SPOOLFS_LOG, else `default`.
pub fn init_logging(level: Option<&str>, default: &str, file: Option<&PathBuf>) {
    use tracing_subscriber::EnvFilter;
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("SPOOLFS_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_string());
    // fuser warns when its own unmount-on-exit finds the file system already unmounted
    // (the usual case: `spoolfs umount` or umount(8) unmounted it); that is not news.
    let quiet = ",fuser::session=error";
    let filter = EnvFilter::try_new(format!("{filter}{quiet}")).unwrap_or_else(|e| {
        eprintln!("spoolfs: invalid log level {filter:?} ({e}); using {default}");
        EnvFilter::new(format!("{default}{quiet}"))
    });
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let opened = file.map(|p| paths::open_log_file(p));
    let _ = match opened {
        Some(Ok(f)) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        Some(Err(e)) => {
            eprintln!("spoolfs: {e:#}");
            builder.with_writer(std::io::stderr).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = mount_helper::dispatch(&argv) {
        return code;
    }
    run_cli(argv)
}

/// Parses `argv` (with `spoolfs mount --config FILE` merged in) and runs the command.
pub fn run_cli(argv: Vec<OsString>) -> ExitCode {
    let cli = match parse(argv) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("spoolfs: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let level = cli.log_level.as_deref();
    if !matches!(
        cli.command,
        Command::Mount(_) | Command::Completions(_) | Command::InstallHelper(_)
    ) {
        init_logging(level, "warn", None);
    }
    let result = match cli.command {
        Command::Format(args) => {
            paths::private_umask();
            format::run(args)
        }
        Command::Mount(args) => mount::run(*args, level),
        Command::Umount(args) => umount::run(args),
        Command::Status(args) => status::run(args),
        Command::Sync(args) => sync::run(args),
        Command::Warmup(args) => warmup::run(args),
        Command::Fsck(args) => {
            paths::private_umask();
            fsck::run(args)
        }
        Command::Gc(args) => {
            paths::private_umask();
            gc::run(args)
        }
        Command::Bench(args) => bench::run(args),
        Command::Completions(args) => {
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "spoolfs",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::InstallHelper(args) => mount_helper::install(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spoolfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line; clap's own errors (and --help) exit here. For `mount --config
/// FILE`, the file's settings are added as arguments for the flags not given on the command
/// line, and the result is parsed again.
fn parse(argv: Vec<OsString>) -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Command::Mount(m) = &cli.command else {
        return Ok(cli);
    };
    let Some(file) = &m.config else {
        return Ok(cli);
    };
    let sub = matches
        .subcommand_matches("mount")
        .expect("mount was parsed");
    let extra = config::file_args(file, &config::mount_command(), |arg| {
        sub.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
    })?;
    let merged = config::with_extra_args(&argv, &extra);
    Cli::try_parse_from(merged).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        anyhow::anyhow!(
            "in config file {}: {}",
            file.display(),
            first.trim_start_matches("error: ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "spoolfs",
            "format",
            "--meta",
            "redb:///tmp/x/meta.redb",
            "--storage",
            "file:///tmp/x/obj",
            "--block-size",
            "1MiB",
            "--force",
            "vol",
        ])
        .unwrap();
        match cli.command {
            Command::Format(f) => {
                assert_eq!(f.name, "vol");
                assert_eq!(f.block_size, Some(1 << 20));
                assert!(f.force);
            }
            other => panic!("{other:?}"),
        }

        let cli = Cli::try_parse_from([
            "spoolfs",
            "mount",
            "/mnt/x",
            "--foreground",
            "--fuse-threads",
            "4",
            "--attr-ttl",
            "0.5",
            "--entry-ttl",
            "2",
            "--allow-other",
            "--read-only",
            "--log-level",
            "debug",
            "--s3-path-style",
        ])
        .unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        match cli.command {
            Command::Mount(m) => {
                assert_eq!(m.mount_point, PathBuf::from("/mnt/x"));
                assert!(m.foreground && m.allow_other == Some(true) && m.read_only);
                assert_eq!(m.fuse_threads, 4);
                assert_eq!(
                    m.attr_ttl,
                    mount::CacheTtl::Fixed(std::time::Duration::from_millis(500))
                );
                assert_eq!(
                    m.entry_ttl,
                    mount::CacheTtl::Fixed(std::time::Duration::from_secs(2))
                );
                assert!(m.s3.s3_path_style);
            }
            other => panic!("{other:?}"),
        }

        // auto by default: an hour on an exclusive volume, 1 s on a shared one.
        let cli = Cli::try_parse_from(["spoolfs", "mount", "/m"]).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not a mount")
        };
        assert_eq!(m.attr_ttl, mount::CacheTtl::Auto);
        assert_eq!(m.entry_ttl, mount::CacheTtl::Auto);
        assert_eq!(m.selinux_xattrs, mount::SelinuxXattrs::Auto);
        assert_eq!(m.selinux_xattrs.resolve(), spoolfs_fuse::host_has_selinux());
        assert!(mount::SelinuxXattrs::On.resolve());
        assert!(!mount::SelinuxXattrs::Off.resolve());
        assert!(
            Cli::try_parse_from(["spoolfs", "mount", "/m", "--selinux-xattrs", "maybe"]).is_err()
        );
        assert_eq!(m.attr_ttl.resolve(true), std::time::Duration::from_secs(1));
        assert_eq!(
            m.attr_ttl.resolve(false),
            std::time::Duration::from_secs(3600)
        );
        let cli = Cli::try_parse_from(["spoolfs", "mount", "/m", "--entry-ttl", "auto"]).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not a mount")
        };
        assert_eq!(m.entry_ttl, mount::CacheTtl::Auto);
        assert!(Cli::try_parse_from(["spoolfs", "mount", "/m", "--attr-ttl", "often"]).is_err());
        assert!(Cli::try_parse_from(["spoolfs", "mount"]).is_err());
        assert!(Cli::try_parse_from(["spoolfs", "mount", "/m", "--attr-ttl", "-1"]).is_err());
        assert!(Cli::try_parse_from(["spoolfs", "mount", "/m", "--fuse-threads", "0"]).is_err());
        assert!(Cli::try_parse_from(["spoolfs", "format", "--block-size", "4X", "v"]).is_err());
        let cli = Cli::try_parse_from(["spoolfs", "status", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status(s) if s.json && s.mount_point.is_none()));
        let cli = Cli::try_parse_from([
            "spoolfs",
            "fsck",
            "--meta",
            "redb:///tmp/x/meta.redb",
            "--repair",
            "--verify-data",
            "--cache-dir",
            "/tmp/c",
            "--orphan-grace",
            "0",
            "--json",
        ])
        .unwrap();
        match cli.command {
            Command::Fsck(f) => {
                assert!(f.repair && f.verify_data && f.json);
                assert_eq!(f.orphan_grace, std::time::Duration::ZERO);
                assert_eq!(f.cache_dir, Some(PathBuf::from("/tmp/c")));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["spoolfs", "fsck", "--orphan-grace", "-1"]).is_err());
        let cli =
            Cli::try_parse_from(["spoolfs", "gc", "/m", "--compact", "--min-age", "10m"]).unwrap();
        assert!(matches!(cli.command, Command::Gc(g)
            if g.compact && g.min_age == std::time::Duration::from_secs(600)
                && g.threshold == 0.5 && g.mount_point.is_some()));
        assert!(Cli::try_parse_from(["spoolfs", "gc"]).is_err());
        let cli =
            Cli::try_parse_from(["spoolfs", "mount", "/m", "--no-background-compact"]).unwrap();
        assert!(matches!(cli.command, Command::Mount(m)
            if m.no_background_compact && m.compact_threshold == 0.5));
        let cli = Cli::try_parse_from([
            "spoolfs",
            "mount",
            "/m",
            "--background-compact=false",
            "--compact-threshold",
            "0.3",
            "--compact-min-dead",
            "1G",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Mount(m)
            if !m.background_compact && m.compact_threshold == 0.3
                && m.compact_min_dead == 1 << 30));
        assert!(Cli::try_parse_from(["spoolfs", "gc", "/m", "--meta", "redb:///x"]).is_err());
        assert!(Cli::try_parse_from(["spoolfs", "gc", "/m", "--threshold", "2"]).is_err());
        let cli =
            Cli::try_parse_from(["spoolfs", "gc", "--meta", "redb:///x", "--dry-run"]).unwrap();
        assert!(matches!(cli.command, Command::Gc(g) if g.dry_run && g.meta.is_some()));
        let cli = Cli::try_parse_from(["spoolfs", "umount", "/m"]).unwrap();
        assert!(matches!(cli.command, Command::Umount(_)));
    }
}
