//! `spoolfs mount --config FILE.toml`, and the translation of option names shared with the
//! `mount.spoolfs` helper.
//!
//! The keys of the file are the long flags of `spoolfs mount` (kebab-case, without `--`):
//!
//! ```toml
//! meta = "redb:///var/lib/spoolfs/vol1.redb"
//! cache-dir = "/nvme/spoolfs"
//! max-staging = "4G"
//! allow-other = true
//! writeback = true
//! ```
//!
//! Nothing here knows the flags: each key is looked up among the arguments of the `mount`
//! subcommand as clap built it, so a flag added to `spoolfs mount` is a valid key at once. The
//! file's values become command-line arguments (`--max-staging=4G`) for every flag not given
//! on the command line, and the command line is parsed again: flags given there win.

use anyhow::{Context, Result, bail};
use clap::{Arg, Command};
use std::path::Path;

/// The value of one option, from a config file or a `-o` mount option.
#[derive(Debug, Clone, PartialEq)]
pub enum OptValue {
    /// `key` alone (mount option) .
    Bare,
    /// `key = true` / `key = false` (config file).
    Bool(bool),
    /// Any other value, as text.
    Text(String),
}

/// The built `mount` subcommand (built: global flags such as --log-level are included).
pub fn mount_command() -> Command {
    let mut cmd = <crate::Cli as clap::CommandFactory>::command();
    cmd.build();
    cmd.find_subcommand("mount")
        .expect("the CLI has a mount subcommand")
        .clone()
}

/// Flags that are never settings.
const NOT_KEYS: [&str; 2] = ["help", "version"];

/// The user-visible long flag `key` of `cmd`, if there is one.
pub fn find_flag<'c>(cmd: &'c Command, key: &str) -> Option<&'c Arg> {
    if NOT_KEYS.contains(&key) {
        return None;
    }
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key) && !a.is_hide_set())
}

/// The flag names `cmd` accepts, for error messages.
pub fn flag_names(cmd: &Command) -> Vec<String> {
    let mut v: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_KEYS.contains(l))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn is_true(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The command-line arguments that set flag `arg` (named `key`) to `value`.
pub fn flag_args(arg: &Arg, key: &str, value: &OptValue) -> Result<Vec<String>> {
    let takes_value = arg.get_action().takes_values();
    let flag = format!("--{key}");
    if !takes_value {
        // A switch (--allow-other): on or off.
        let on = match value {
            OptValue::Bare => true,
            OptValue::Bool(b) => *b,
            OptValue::Text(t) => is_true(t).with_context(|| {
                format!("{key} is a switch: its value must be true or false, not {t:?}")
            })?,
        };
        return Ok(if on { vec![flag] } else { Vec::new() });
    }
    match value {
        OptValue::Bare => {
            let optional = arg.get_num_args().is_some_and(|r| r.min_values() == 0);
            if !optional {
                bail!(
                    "{key} needs a value ({key}={})",
                    arg.get_value_names()
                        .and_then(|n| n.first())
                        .map(|n| n.as_str())
                        .unwrap_or("VALUE")
                );
            }
            Ok(vec![flag])
        }
        OptValue::Bool(b) => Ok(vec![format!("{flag}={b}")]),
        OptValue::Text(t) if takes_bool(arg) => {
            let on = is_true(t)
                .with_context(|| format!("{key} takes true or false as its value, not {t:?}"))?;
            Ok(vec![format!("{flag}={on}")])
        }
        OptValue::Text(t) => Ok(vec![format!("{flag}={t}")]),
    }
}

/// Whether `arg` takes a boolean value (`--allow-other=false`).
fn takes_bool(arg: &Arg) -> bool {
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_string())
        .collect();
    values == ["true", "false"]
}

fn toml_scalar(key: &str, v: &toml::Value) -> Result<OptValue> {
    Ok(match v {
        toml::Value::String(s) => OptValue::Text(s.clone()),
        toml::Value::Integer(i) => OptValue::Text(i.to_string()),
        toml::Value::Float(f) => OptValue::Text(f.to_string()),
        toml::Value::Boolean(b) => OptValue::Bool(*b),
        other => bail!(
            "key {key:?}: expected a string, number or boolean, not {}",
            other.type_str()
        ),
    })
}

/// The arguments a config file adds: one per key whose flag `given_on_command_line` says was
/// not given there. Unknown keys, and values of the wrong shape, are errors naming the key.
pub fn file_args(
    path: &Path,
    cmd: &Command,
    given_on_command_line: impl Fn(&Arg) -> bool,
) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.to_string().trim_end()))
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    table_args(&table, cmd, given_on_command_line)
        .with_context(|| format!("in config file {}", path.display()))
}

/// [`file_args`] for a parsed table.
pub fn table_args(
    table: &toml::Table,
    cmd: &Command,
    given_on_command_line: impl Fn(&Arg) -> bool,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (key, value) in table {
        if key == "config" {
            bail!("key \"config\": a config file cannot name another one");
        }
        let Some(arg) = find_flag(cmd, key) else {
            let hint = if key.contains('_') && find_flag(cmd, &key.replace('_', "-")).is_some() {
                format!(" (did you mean {:?}?)", key.replace('_', "-"))
            } else {
                String::new()
            };
            bail!(
                "unknown key {key:?}{hint}; the keys are the long flags of `spoolfs mount`: {}",
                flag_names(cmd)
                    .into_iter()
                    .filter(|f| f != "config")
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if given_on_command_line(arg) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => {
                if items.len() > 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
                    bail!("key {key:?} takes one value, not a list");
                }
                items
                    .iter()
                    .map(|v| toml_scalar(key, v))
                    .collect::<Result<Vec<_>>>()?
            }
            v => vec![toml_scalar(key, v)?],
        };
        for v in &values {
            out.extend(flag_args(arg, key, v).with_context(|| format!("key {key:?}"))?);
        }
    }
    Ok(out)
}

/// `argv` with `extra` inserted before a `--` (if any), else at the end.
pub fn with_extra_args(argv: &[std::ffi::OsString], extra: &[String]) -> Vec<std::ffi::OsString> {
    let at = argv
        .iter()
        .skip(1)
        .position(|a| a == "--")
        .map(|i| i + 1)
        .unwrap_or(argv.len());
    let mut out = argv[..at].to_vec();
    out.extend(extra.iter().map(std::ffi::OsString::from));
    out.extend_from_slice(&argv[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str, given: &[&str]) -> Result<Vec<String>> {
        let cmd = mount_command();
        let table: toml::Table = text.parse().unwrap();
        table_args(&table, &cmd, |a| {
            given.contains(&a.get_long().unwrap_or_default())
        })
    }

    #[test]
    fn keys_become_flags() {
        let got = args(
            r#"
            max-staging = "4G"
            allow-other = true
            read-only = false
            writeback = false
            fuse-threads = 4
            attr-ttl = 0.5
            meta = "redb:///var/lib/spoolfs/v.redb"
            log-level = "debug"
            "#,
            &[],
        )
        .unwrap();
        let mut got = got;
        got.sort();
        assert_eq!(
            got,
            [
                "--allow-other=true",
                "--attr-ttl=0.5",
                "--fuse-threads=4",
                "--log-level=debug",
                "--max-staging=4G",
                "--meta=redb:///var/lib/spoolfs/v.redb",
                "--writeback=false",
            ]
        );
    }

    #[test]
    fn allow_other_can_be_turned_off() {
        // On by default for root: the file must be able to say no.
        let got = args("allow-other = false", &[]).unwrap();
        assert_eq!(got, ["--allow-other=false"]);
        let e = format!("{:#}", args("allow-other = \"maybe\"", &[]).unwrap_err());
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn command_line_wins() {
        let got = args("max-staging = \"4G\"\nupload-threads = 2", &["max-staging"]).unwrap();
        assert_eq!(got, ["--upload-threads=2"]);
    }

    #[test]
    fn bad_keys_and_values() {
        let e = format!("{:#}", args("max-stagin = \"4G\"", &[]).unwrap_err());
        assert!(e.contains("unknown key \"max-stagin\""), "{e}");
        let e = format!("{:#}", args("max_staging = \"4G\"", &[]).unwrap_err());
        assert!(e.contains("did you mean \"max-staging\""), "{e}");
        for bad in [
            "ready-fd = 3",
            "config = \"x.toml\"",
            "help = true",
            "foreground = \"maybe\"",
            "meta = [\"a\", \"b\"]",
            "[section]\nx = 1",
        ] {
            assert!(args(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_args_go_before_double_dash() {
        let argv: Vec<std::ffi::OsString> = ["spoolfs", "mount", "--", "/m"]
            .iter()
            .map(Into::into)
            .collect();
        let out = with_extra_args(&argv, &["--x=1".into()]);
        assert_eq!(out, ["spoolfs", "mount", "--x=1", "--", "/m"]);
        let out = with_extra_args(&argv[..2], &["--x=1".into()]);
        assert_eq!(out, ["spoolfs", "mount", "--x=1"]);
    }
}
