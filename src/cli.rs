//! The command line: `corecast serve`, `corecast bench`, `corecast tune`, `corecast subscribe`
//! and `corecast publish`, parsed with clap.
//!
//! `serve` takes every [`Config`] field as a flag, as a `CORECAST_<KEY>` environment variable
//! ([`env`](mod@env)) and from an optional TOML file; a flag given on the command line wins over
//! the environment, the environment over the file, and the file over the defaults. This module
//! only turns arguments into a validated `Config` (or a bench run) and reports errors; it holds
//! no server logic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use corecast::config::{env, Config, ConfigError, LogFormat};

/// A thread-per-core WebSocket fan-out server on io_uring.
#[derive(Debug, Parser)]
#[command(name = "corecast", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: WebSocket clients on --listen, the publish API on --api.
    Serve(Box<ServeArgs>),
    /// Measure fan-out latency: of a running server, of the kernel floors (--baseline), or of
    /// corecast, the floors and peers side by side (--compare); see `corecast bench --help`.
    Bench(Box<corecast_bench::BenchArgs>),
    /// Audit the host against tuning/'s recommendations (`corecast tune check`).
    Tune {
        #[command(subcommand)]
        command: corecast::tune::TuneCommand,
    },
    /// Subscribe with the Rust client and print every event as a JSON line (reconnects and
    /// resumes on its own).
    Subscribe(Box<corecast_client::cli::SubscribeArgs>),
    /// Publish one event through the control-plane API and print the reply.
    Publish(Box<corecast_client::cli::PublishArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file with any of the settings below (the environment and flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration, every default included, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: Config,
}

/// The command line, `serve`'s help naming each setting's environment variable.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("serve", env::document)
}

/// Parses the command line and runs the chosen command.
pub fn run() -> ExitCode {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    match cli.command {
        Command::Bench(args) => corecast_bench::main(*args),
        Command::Tune { command } => corecast::tune::main(command),
        Command::Subscribe(args) => corecast_client::cli::subscribe_main(*args),
        Command::Publish(args) => corecast_client::cli::publish_main(*args),
        Command::Serve(args) => {
            let serve_matches = matches
                .subcommand_matches("serve")
                .expect("the serve subcommand was parsed");
            let config = match env::Layer::read(std::env::vars_os()).and_then(|env| {
                // Before logging starts: the filter and format are settings themselves.
                for warning in &env.warnings {
                    eprintln!("corecast: warning: {warning}");
                }
                effective_config(&args, serve_matches, env)
            }) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("corecast: {err}");
                    return ExitCode::from(2);
                }
            };
            if args.print_config {
                print!("{}", config.to_toml());
                return ExitCode::SUCCESS;
            }
            init_logging(config.log_format);
            match corecast::runtime::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("corecast: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Lays the environment's settings over the file's, and the flags given on the command line
/// over both, then validates; a refusal names the variable of a value the environment set.
fn effective_config(
    args: &ServeArgs,
    matches: &ArgMatches,
    mut env: env::Layer,
) -> Result<Config, ConfigError> {
    let mut table = match args.config.as_ref().or(env.config_file.as_ref()) {
        Some(path) => Config::read_table(path)?,
        None => toml::Table::new(),
    };
    env.lay_over(&mut table);
    let flags = toml::Table::try_from(&args.settings).expect("a Config always serializes");
    for (key, value) in flags {
        // `namespaces` is file-only: it has no flag, so clap cannot be asked about it.
        let is_flag = matches.try_contains_id(&key).is_ok();
        let from_command_line =
            is_flag && matches.value_source(&key) == Some(ValueSource::CommandLine);
        if from_command_line {
            env.overridden(&key);
        }
        if from_command_line || !table.contains_key(&key) {
            table.insert(key, value);
        }
    }
    let config = Config::from_table(table).map_err(|err| env.explain(err))?;
    config.validate().map_err(|err| env.explain(err))?;
    Ok(config)
}

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_from(args: &[&str], file: Option<&str>) -> Result<Config, ConfigError> {
        config_with_env(args, file, &[])
    }

    /// `corecast serve ARGS` with `file` as `--config` (when given) and `vars` as the
    /// environment.
    fn config_with_env(
        args: &[&str],
        file: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("corecast-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut argv = vec!["corecast", "serve"];
        let at = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{at}.toml"));
        let path_text = path.to_string_lossy().into_owned();
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
            argv.extend(["--config", &path_text]);
        }
        argv.extend_from_slice(args);
        let matches = command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("parsed serve")
        };
        let env = env::Layer::read(vars.iter().map(|(name, text)| (name.into(), text.into())))?;
        effective_config(&serve, matches.subcommand_matches("serve").unwrap(), env)
    }

    #[test]
    fn flags_win_over_file_and_file_wins_over_defaults() {
        let file = "heartbeat_s = 7\nidle_timeout_s = 30\n";
        let config = config_from(&["--idle-timeout-s", "40"], Some(file)).unwrap();
        assert_eq!((config.heartbeat_s, config.idle_timeout_s), (7, 40));
        assert_eq!(
            config.outbox_frames_max,
            Config::default().outbox_frames_max
        );
    }

    #[test]
    fn invalid_combinations_are_refused_by_name() {
        let err = config_from(&["--heartbeat-s", "90"], None).unwrap_err();
        assert!(err.0.contains("idle_timeout_s"), "{err}");
        let err = config_from(&[], Some("nonsense_key = 1")).unwrap_err();
        assert!(err.0.contains("nonsense_key"), "{err}");
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
        let file = Some("heartbeat_s = 7\n");
        let env = [("CORECAST_HEARTBEAT_S", "8")];
        let heartbeat_s = |args: &[&str], file, vars: &[(&str, &str)]| {
            config_with_env(args, file, vars).unwrap().heartbeat_s
        };
        assert_eq!(heartbeat_s(&["--heartbeat-s", "9"], file, &env), 9);
        assert_eq!(heartbeat_s(&[], file, &env), 8);
        assert_eq!(heartbeat_s(&[], file, &[]), 7);
        assert_eq!(heartbeat_s(&[], None, &[]), Config::default().heartbeat_s);
        assert_eq!(heartbeat_s(&[], None, &env), 8);
    }

    #[test]
    fn the_environment_may_name_the_file_and_the_flag_wins_over_it() {
        let dir = std::env::temp_dir().join(format!("corecast-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("from-env.toml");
        std::fs::write(&path, "heartbeat_s = 11\n").unwrap();
        let path = path.to_string_lossy().into_owned();
        let vars = [("CORECAST_CONFIG", path.as_str())];
        assert_eq!(config_with_env(&[], None, &vars).unwrap().heartbeat_s, 11);
        let config = config_with_env(&[], Some("heartbeat_s = 12\n"), &vars).unwrap();
        assert_eq!(config.heartbeat_s, 12, "--config wins over CORECAST_CONFIG");
    }

    #[test]
    fn a_bad_value_from_the_environment_is_refused_naming_the_variable() {
        let err = config_with_env(&[], None, &[("CORECAST_SHARDS", "0")]).unwrap_err();
        assert_eq!(
            err.0,
            "shards = 0 is out of range: allowed 1 to 1024 (from the environment: \
             CORECAST_SHARDS=\"0\")"
        );
        let config = config_with_env(&["--shards", "2"], None, &[("CORECAST_SHARDS", "0")]);
        assert_eq!(
            config.unwrap().shards,
            Some(2),
            "the flag replaced the bad value"
        );
        let err = config_with_env(&[], None, &[("CORECAST_HEARTBEAT_S", "90")]).unwrap_err();
        assert_eq!(
            err.0,
            "idle_timeout_s = 60 must be greater than heartbeat_s = 90, or healthy clients are \
             closed between two pings (from the environment: CORECAST_HEARTBEAT_S=\"90\")"
        );
    }
}
