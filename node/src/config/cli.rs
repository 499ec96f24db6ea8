//! The command line: which command was asked for (`cairn`, `cairn config show`, `cairn bench`,
//! `cairn version`, `cairn help`) and the flag layer, parsed by clap with etcd's flag names.
//! etcd uses Go's `flag` package, which also accepts `-name x` and `-name=x`; those are
//! rewritten to `--name` before clap sees them. This module never reads the environment.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction};

use super::keys::{self, Effect, Kind, HIDDEN, KEYS};
use super::layers::Layer;
use super::{ConfigError, Origin, Unknown};

/// What the words after the program name asked for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// `cairn [flags]`: serve.
    Serve(Vec<OsString>),
    /// `cairn config show [flags]`.
    ConfigShow(Vec<OsString>),
    /// `cairn bench ...`: everything after `bench`, for the bench module to parse.
    Bench(Vec<OsString>),
    /// `cairn snapshot ...`: everything after `snapshot`, for `snapshot_cmd` to parse.
    Snapshot(Vec<OsString>),
    /// `cairn plugin ...`: everything after `plugin`, for `plugins::check` to parse.
    Plugin(Vec<OsString>),
    /// `cairn backup ...`: everything after `backup`, for `backup::cli` to parse.
    Backup(Vec<OsString>),
    /// `cairn version`.
    Version,
}

/// Splits off the sub-command word. Flags come after it (`cairn config show --name x`), so
/// only the first word is inspected; anything else is a flag list for serving.
pub(crate) fn split(args: Vec<OsString>) -> Result<Invocation, ConfigError> {
    let first = args.first().and_then(|a| a.to_str()).map(str::to_owned);
    let rest = || args.iter().skip(1).cloned().collect::<Vec<_>>();
    Ok(match first.as_deref() {
        Some("bench") => Invocation::Bench(rest()),
        Some("snapshot") => Invocation::Snapshot(rest()),
        Some("plugin") => Invocation::Plugin(rest()),
        Some("backup") => Invocation::Backup(rest()),
        Some("version") => Invocation::Version,
        Some("help") => Invocation::Serve(vec!["--help".into()]),
        Some("config") => match args.get(1).and_then(|a| a.to_str()) {
            Some("show") => Invocation::ConfigShow(args.iter().skip(2).cloned().collect()),
            other => {
                return Err(ConfigError::Usage(format!(
                    "unknown config command {:?}; expected `cairn config show [flags]`",
                    other.unwrap_or("")
                )))
            }
        },
        _ => Invocation::Serve(args),
    })
}

/// The flags clap parsed.
#[derive(Debug)]
pub(crate) struct Flags {
    /// `--version` was given.
    pub version: bool,
    pub layer: Layer,
}

/// Parses `args` (no program name) as etcd flags. Every unknown flag is named in one error,
/// each with the nearest known flag.
pub(crate) fn parse(args: Vec<OsString>) -> Result<Flags, ConfigError> {
    let (args, unknown) = normalize(args);
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownKeys(unknown));
    }
    let argv = std::iter::once(OsString::from("cairn")).chain(args);
    let matches = command()
        .try_get_matches_from(argv)
        .map_err(ConfigError::Cli)?;
    let mut values = BTreeMap::new();
    for key in KEYS {
        if matches.value_source(key.name) == Some(ValueSource::CommandLine) {
            if let Some(value) = matches.get_one::<String>(key.name) {
                values.insert(key.name.to_owned(), value.clone());
            }
        }
    }
    Ok(Flags {
        version: matches.get_flag("version"),
        layer: Layer::flags(values),
    })
}

const USAGE: &str = "cairn [flags]\n       \
                     cairn config show [flags]\n       \
                     cairn bench [bench flags]\n       \
                     cairn snapshot restore <file> --data-dir <dir> [--unseal <plugin.wasm> --unseal-config <file>]\n       \
                     cairn backup [--endpoint <url>]\n       \
                     cairn version";

const AFTER_HELP: &str = "Every flag can also be set in the YAML file given by --config-file \
(same key names, e.g. `data-dir: /var/lib/cairn`) or in the environment as ETCD_ + the flag \
name upper-cased with - turned into _ (e.g. ETCD_INITIAL_CLUSTER_STATE). Flags override the \
environment, which overrides the file, which overrides etcd's defaults. Unlike etcd, giving \
--config-file does not make cairn ignore flags and environment variables. \
Settings that have no effect in cairn are accepted and named in one warning at start-up; \
`cairn config show` prints the effective value of every key, where it came from, and \
whether it has an effect.";

/// The clap command: one argument per key, grouped into etcd's help sections.
pub(crate) fn command() -> clap::Command {
    let command = clap::Command::new("cairn")
        .about("An etcd-compatible, Raft-replicated key-value node")
        .override_usage(USAGE)
        .after_help(AFTER_HELP)
        .disable_version_flag(true)
        // Go's flag package lets the last occurrence of a flag win.
        .args_override_self(true);
    KEYS.iter().fold(command, |cmd, key| cmd.arg(arg(key))).arg(
        Arg::new("version")
            .long("version")
            .action(ArgAction::SetTrue)
            .help("Print the version and exit.")
            .help_heading("Member"),
    )
}

fn arg(key: &'static keys::Key) -> Arg {
    let default = match key.default {
        "" => String::new(),
        default => format!(" [default: {default}]"),
    };
    let effect = match key.effect {
        Effect::Honoured => String::new(),
        Effect::Ignored(why) => format!(" [no effect in cairn: {why}]"),
        Effect::DefaultOnly(what) => format!(" [only the default is accepted: {what}]"),
    };
    let help = format!("{}{default}{effect}", key.help);
    let arg = Arg::new(key.name)
        .long(key.name)
        .help(help)
        .help_heading(key.section)
        .hide(key.section == HIDDEN)
        .action(ArgAction::Set);
    match key.kind {
        // Go booleans: `--flag` alone means true and a value must be attached with `=`,
        // so `--flag false` is a stray argument, as in etcd. etcd's ignored legacy flags
        // are boolean flags to Go's parser too.
        Kind::Bool | Kind::Legacy => arg
            .value_name("BOOL")
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
        // Go takes the next argument as the value even when it starts with `-`.
        Kind::Text | Kind::List | Kind::Uint | Kind::Int | Kind::Duration => arg
            .value_name(value_name(key))
            .num_args(1)
            .allow_hyphen_values(true),
    }
}

fn value_name(key: &keys::Key) -> &'static str {
    match key.name {
        _ if matches!(key.kind, Kind::Uint | Kind::Int) => "N",
        _ if key.kind == Kind::Duration => "DURATION",
        name if name.ends_with("-urls") => "URLS",
        name if name.ends_with("-file") || name.ends_with("-dir") => "PATH",
        _ => "VALUE",
    }
}

/// Rewrites Go-style single-dash long flags (`-name x`, `-name=x`) to `--name`, and collects
/// the flags cairn does not know; a value following a non-boolean flag is left alone even if
/// it starts with `-`.
fn normalize(args: Vec<OsString>) -> (Vec<OsString>, Vec<Unknown>) {
    let mut unknown = Vec::new();
    let mut out = Vec::with_capacity(args.len());
    let mut verbatim = false;
    let mut value_next = false;
    for arg in args {
        let text = arg.to_str().map(str::to_owned);
        let Some(text) = text.filter(|_| !verbatim && !value_next) else {
            value_next = false;
            out.push(arg);
            continue;
        };
        if text == "--" {
            verbatim = true;
            out.push(arg);
            continue;
        }
        let (single, body) = match (text.strip_prefix("--"), text.strip_prefix('-')) {
            (Some(body), _) => (false, body),
            (None, Some(body)) => (true, body),
            (None, None) => {
                out.push(arg);
                continue;
            }
        };
        let (name, has_value) = match body.split_once('=') {
            Some((name, _)) => (name, true),
            None => (body, false),
        };
        let key = keys::find(name);
        let known = key.is_some() || matches!(name, "version" | "help" | "h");
        if !known {
            unknown.push(Unknown {
                key: format!("--{name}"),
                origin: Origin::Flag(format!("--{name}")),
                suggestion: keys::suggest(name).map(|s| format!("--{s}")),
            });
        }
        value_next =
            !has_value && key.is_some_and(|k| !matches!(k.kind, Kind::Bool | Kind::Legacy));
        // `-h` is clap's own short flag and stays as it is.
        out.push(if single && known && name != "h" {
            format!("-{text}").into()
        } else {
            arg
        });
    }
    (out, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn clap_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn normalize_rewrites_known_single_dash_flags_only() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["-name", "x"], &["--name", "x"]),
            (&["-name=x"], &["--name=x"]),
            (&["--name", "-name"], &["--name", "-name"]),
            (
                &["-force-new-cluster", "-name", "y"],
                &["--force-new-cluster", "--name", "y"],
            ),
            (&["-h"], &["-h"]),
            (&["-version"], &["--version"]),
            (&["--", "-name"], &["--", "-name"]),
        ];
        for (input, want) in cases {
            let (args, unknown) = normalize(os(input));
            assert_eq!(args, os(want), "{input:?}");
            assert!(unknown.is_empty(), "{input:?}: {unknown:?}");
        }
    }

    #[test]
    fn every_unknown_flag_is_named_with_a_suggestion() {
        match parse(os(&[
            "-nmae",
            "x",
            "--snapshot-cuont=5",
            "--bogus-thing",
            "--name",
            "-y",
        ])) {
            Err(ConfigError::UnknownKeys(unknown)) => {
                let got: Vec<_> = unknown
                    .iter()
                    .map(|u| (u.key.as_str(), u.suggestion.as_deref()))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("--nmae", Some("--name")),
                        ("--snapshot-cuont", Some("--snapshot-count")),
                        ("--bogus-thing", None),
                    ]
                );
            }
            other => panic!("expected unknown flags, got {other:?}"),
        }
    }

    #[test]
    fn split_finds_the_command_word() {
        assert!(matches!(split(os(&["--name", "x"])), Ok(Invocation::Serve(a)) if a.len() == 2));
        assert!(
            matches!(split(os(&["config", "show", "--name", "x"])), Ok(Invocation::ConfigShow(a)) if a == os(&["--name", "x"]))
        );
        assert!(
            matches!(split(os(&["bench", "put", "--total", "5"])), Ok(Invocation::Bench(a)) if a == os(&["put", "--total", "5"]))
        );
        assert!(matches!(split(os(&["version"])), Ok(Invocation::Version)));
        assert!(
            matches!(split(os(&["plugin", "check", "a.wasm"])), Ok(Invocation::Plugin(a)) if a == os(&["check", "a.wasm"]))
        );
        assert!(matches!(split(os(&["config"])), Err(ConfigError::Usage(_))));
    }

    #[test]
    fn bool_flags_follow_go() {
        let flags =
            parse(os(&["--force-new-cluster", "--client-cert-auth=false"])).expect("parses");
        assert_eq!(flags.layer.get("force-new-cluster"), Some("true"));
        assert_eq!(flags.layer.get("client-cert-auth"), Some("false"));
        assert!(parse(os(&["--force-new-cluster", "false"])).is_err());
    }

    #[test]
    fn last_flag_wins_and_unset_flags_are_absent() {
        let flags = parse(os(&["--name", "a", "--name=b"])).expect("parses");
        assert_eq!(flags.layer.get("name"), Some("b"));
        assert_eq!(flags.layer.get("data-dir"), None);
        assert!(!flags.version);
    }

    #[test]
    fn help_is_a_cli_error_with_sections() {
        match parse(os(&["--help"])) {
            Err(ConfigError::Cli(e)) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
                let text = e.to_string();
                for section in ["Member:", "Clustering:", "Security:", "Logging:"] {
                    assert!(text.contains(section), "missing {section} in help");
                }
                assert!(text.contains("--initial-cluster-state"));
            }
            other => panic!("expected help, got {other:?}"),
        }
    }
}
