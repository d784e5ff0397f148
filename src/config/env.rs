//! The environment layer of the configuration: every key of the TOML file can also be set as
//! `CORECAST_<KEY>`, the key upper-cased (`CORECAST_OUTBOX_FRAMES_MAX=4096`), and the file
//! itself named by `CORECAST_CONFIG`. A flag wins over the environment, the environment over
//! the file, the file over the default.
//!
//! This module owns the variables' names, derived from [`Config::keys`] (serde's own list of the
//! fields, so a key added to `Config` has its variable without anyone writing it down), the
//! reading of them into TOML values that `cli.rs` lays over the file, and naming the variable
//! when a value it set is refused. It never reads the process environment itself: the caller
//! hands the variables in, so tests set none. How a value is spelled:
//! - A key that has a flag takes what the flag takes, read by the flag's own clap parser:
//!   numbers, addresses, `text`/`json`, `true`/`false` (`CORECAST_PERMESSAGE_DEFLATE=true`),
//!   a CPU list (`CORECAST_CORES=0,2,4-7`), and a choice as the flag spells it
//!   (`CORECAST_SLOW_CONSUMER=drop-oldest`, where the file writes `drop_oldest`). A flag that repeats (`client_publish`,
//!   `allowed_origins`) takes a comma-separated list (a comma is valid in neither a pattern nor
//!   an origin); an empty value is the empty list.
//! - A key of the file only (`namespaces`, `api_keys`) takes a TOML value, as the file would
//!   write it after `key =`: `CORECAST_API_KEYS='[{ key = "...", tenant = "acme" }]'`.
//!
//! A `CORECAST_` variable that names no key is ignored with a warning that names the settings
//! near it, so a typo in a unit file is seen in the log. It is not refused (as the file refuses
//! an unknown key) because the prefix is shared with the tools around the server, whose
//! variables reach it through the environment they start it in: the Python client's tests pass
//! the binary as `CORECAST_BIN`, the bench's peer its port as `CORECAST_TEST_RELAY_PORT`.
//! This is not clap's `env` support, for three reasons: clap reports a bad value from a
//! variable as if the flag had been given (clap-rs/clap#5202), it has no place for the keys
//! that have no flag, and it reads the process environment while the command is built.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, FromArgMatches};

use super::{Config, ConfigError};

/// What every variable of this layer starts with.
pub const PREFIX: &str = "CORECAST_";

/// The variable that names the TOML file when `--config` does not.
pub const CONFIG_FILE_VAR: &str = "CORECAST_CONFIG";

/// Keys whose values an error never repeats: they hold keys, secrets or a password.
const SECRET_KEYS: &[&str] = &["jwt_secret", "api_keys", "redis_url"];

/// Near names an unknown variable's error suggests, at most.
const SUGGESTIONS_MAX: usize = 3;

/// The variable of `key`: `CORECAST_` and the key upper-cased.
pub fn var_name(key: &str) -> String {
    format!("{PREFIX}{}", key.to_ascii_uppercase())
}

/// One key the environment set.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The TOML key, one of [`Config::keys`].
    pub key: &'static str,
    /// The variable that set it.
    pub var: String,
    /// The variable's text, as given.
    pub text: String,
    /// The text read as the file would hold it.
    pub value: toml::Value,
}

impl Setting {
    /// `VAR="text"`, the text left out for a secret.
    fn shown(&self) -> String {
        if SECRET_KEYS.contains(&self.key) {
            format!("{} (its value not shown: it holds a secret)", self.var)
        } else {
            format!("{}={:?}", self.var, self.text)
        }
    }
}

/// What the environment sets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Layer {
    /// `CORECAST_CONFIG`: the TOML file to read when `--config` names none.
    pub config_file: Option<PathBuf>,
    /// One entry per key set, in the order of [`Config::keys`].
    pub settings: Vec<Setting>,
    /// One line per `CORECAST_` variable that names no key, for the caller to print.
    pub warnings: Vec<String>,
}

impl Layer {
    /// Reads the `CORECAST_` variables among `vars` (the process's: `std::env::vars_os()`),
    /// ignoring the others. A value that is not UTF-8, or one its key's parser refuses, is an
    /// error naming the variable and the value; a `CORECAST_` name that is no key's, a warning.
    pub fn read(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Layer, ConfigError> {
        let mut ours = std::collections::BTreeMap::new();
        for (name, text) in vars {
            let Some(name) = name.to_str().filter(|name| name.starts_with(PREFIX)) else {
                continue;
            };
            ours.insert(name.to_owned(), text);
        }
        let mut layer = Layer {
            config_file: ours.remove(CONFIG_FILE_VAR).map(PathBuf::from),
            settings: Vec::new(),
            warnings: Vec::new(),
        };
        let flags = Config::augment_args(clap::Command::new("serve").no_binary_name(true));
        for &key in Config::keys() {
            let var = var_name(key);
            let Some(text) = ours.remove(&var) else {
                continue;
            };
            let text = text.into_string().map_err(|text| {
                ConfigError(format!(
                    "{var}={text:?} is not UTF-8: corecast reads text only"
                ))
            })?;
            let value = match flags.get_arguments().find(|arg| arg.get_id() == key) {
                Some(arg) => flag_value(&flags, arg, key, &var, &text)?,
                None => toml_value(key, &var, &text)?,
            };
            let mut table = toml::Table::new();
            table.insert(key.to_owned(), value.clone());
            Config::from_table(table).map_err(|err| {
                let setting = Setting {
                    key,
                    var: var.clone(),
                    text: text.clone(),
                    value: value.clone(),
                };
                ConfigError(format!("{} is invalid: {err}", setting.shown()))
            })?;
            layer.settings.push(Setting {
                key,
                var,
                text,
                value,
            });
        }
        layer.warnings = ours.keys().map(|name| unknown_var(name)).collect();
        Ok(layer)
    }

    /// The TOML file's table with this layer's settings laid over it.
    pub fn lay_over(&self, table: &mut toml::Table) {
        for setting in &self.settings {
            table.insert(setting.key.to_owned(), setting.value.clone());
        }
    }

    /// Forgets the setting of `key`: a flag on the command line replaced it.
    pub fn overridden(&mut self, key: &str) {
        self.settings.retain(|setting| setting.key != key);
    }

    /// `err` with the variable (and value) that set each key it names: what a refusal of
    /// [`Config::validate`] needs to point at the environment rather than at a file or a flag.
    pub fn explain(&self, err: ConfigError) -> ConfigError {
        let named: Vec<String> = self
            .settings
            .iter()
            .filter(|setting| names_key(&err.0, setting.key))
            .map(Setting::shown)
            .collect();
        if named.is_empty() {
            return err;
        }
        ConfigError(format!(
            "{} (from the environment: {})",
            err.0,
            named.join(", ")
        ))
    }
}

/// The value of a key that has a flag, read as the flag would be (a repeated flag's list split
/// at commas), and turned into TOML through `Config`'s own serialization.
fn flag_value(
    flags: &clap::Command,
    arg: &clap::Arg,
    key: &str,
    var: &str,
    text: &str,
) -> Result<toml::Value, ConfigError> {
    let long = arg
        .get_long()
        .expect("every setting's flag has a long name");
    let items: Vec<&str> = if matches!(arg.get_action(), ArgAction::Append) {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .collect()
    } else {
        vec![text]
    };
    let argv = items.iter().map(|item| format!("--{long}={item}"));
    let refused = |why: String| ConfigError(format!("{var}={text:?} is invalid: {why}"));
    let matches = flags
        .clone()
        .try_get_matches_from(argv)
        .map_err(|err| refused(clap_reason(&err)))?;
    let config = Config::from_arg_matches(&matches).map_err(|err| refused(clap_reason(&err)))?;
    let mut table = toml::Table::try_from(&config).expect("a Config always serializes");
    Ok(table.remove(key).expect("a flag given serializes its key"))
}

/// The value of a key the file alone has, read as TOML after `key =`.
fn toml_value(key: &'static str, var: &str, text: &str) -> Result<toml::Value, ConfigError> {
    let refused = |why: String| {
        let setting = Setting {
            key,
            var: var.to_owned(),
            text: text.to_owned(),
            value: toml::Value::Boolean(false),
        };
        ConfigError(format!(
            "{} is invalid: {why}; write a TOML value, as the file would after `{key} =`, e.g. {}",
            setting.shown(),
            toml_example(key)
        ))
    };
    let mut table: toml::Table = format!("{key} = {text}")
        .parse()
        .map_err(|err: toml::de::Error| refused(err.message().to_owned()))?;
    match (table.remove(key), table.is_empty()) {
        (Some(value), true) => Ok(value),
        _ => Err(refused("it is not one TOML value".into())),
    }
}

/// An example value of a key the file alone has, for its error.
fn toml_example(key: &str) -> &'static str {
    match key {
        "api_keys" => r#"'[{ key = "...", tenant = "acme" }]'"#,
        "namespaces" => r#"'[{ pattern = "prices.>", history_messages_max = 50 }]'"#,
        _ => r#"'[{ ... }]'"#,
    }
}

/// clap's message without its `error:` label and its advice to try `--help`.
fn clap_reason(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.split("\n\n").next().unwrap_or(&text);
    let first = first.trim().trim_start_matches("error: ");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `message` names `key` as a word of its own (not within `namespaces[0].key`).
fn names_key(message: &str, key: &str) -> bool {
    message.match_indices(key).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let after = message[at + key.len()..].chars().next();
        let free_before = before.is_none_or(|c| c.is_whitespace() || matches!(c, '(' | '`'));
        let free_after = after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        free_before && free_after
    })
}

/// The warning for a `CORECAST_` variable that names no key, with the names nearest it.
fn unknown_var(name: &str) -> String {
    let mut known: Vec<String> = Config::keys().iter().map(|key| var_name(key)).collect();
    known.push(CONFIG_FILE_VAR.to_owned());
    // Near: a quarter of the name's own letters (after the prefix) changed at most, or one
    // beginning the other (`CORECAST_API_KEY`, `CORECAST_API_KEYS`).
    let typed = name.trim_start_matches(PREFIX);
    let changes_max = (typed.len() / 4).max(1);
    let mut near: Vec<(usize, String)> = known
        .into_iter()
        .map(|known| (edit_distance(name, &known), known))
        .filter(|(distance, known)| {
            let key = known.trim_start_matches(PREFIX);
            *distance <= changes_max || key.starts_with(typed) || typed.starts_with(key)
        })
        .collect();
    near.sort();
    let near: Vec<String> = near
        .into_iter()
        .take(SUGGESTIONS_MAX)
        .map(|(_, known)| known)
        .collect();
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    };
    format!(
        "environment variable {name} is no setting of corecast serve, ignored{hint}: each \
         setting is CORECAST_ and its key upper-cased, listed by `corecast serve --help`"
    )
}

/// Levenshtein distance between two ASCII names, for the near names of a typo.
fn edit_distance(source: &str, target: &str) -> usize {
    let target = target.as_bytes();
    let mut row: Vec<usize> = (0..=target.len()).collect();
    for (i, s) in source.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &t) in target.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(s != t));
            diagonal = above;
        }
    }
    row[target.len()]
}

/// `serve`'s command with each setting's variable in its help, and the rules in the epilogue.
pub fn document(serve: clap::Command) -> clap::Command {
    let toml_only: Vec<String> = Config::keys()
        .iter()
        .filter(|key| !serve.get_arguments().any(|arg| arg.get_id() == **key))
        .map(|key| var_name(key))
        .collect();
    let epilogue = format!(
        "Environment: every setting above can also be set as CORECAST_ and its key upper-cased \
         (CORECAST_OUTBOX_FRAMES_MAX=4096), and the file named by {CONFIG_FILE_VAR}. A flag wins \
         over the environment, the environment over the file, the file over the default. A \
         repeated flag's variable takes a comma-separated list; the TOML file's own tables take \
         a TOML value ({}, e.g. CORECAST_API_KEYS='[{{ key = \"...\" }}]'). An unknown \
         CORECAST_ variable is ignored with a warning.",
        toml_only.join(", ")
    );
    serve
        .mut_args(|arg| {
            let id = arg.get_id().as_str();
            let var = if id == "config" {
                CONFIG_FILE_VAR.to_owned()
            } else if Config::keys().contains(&id) {
                var_name(id)
            } else {
                return arg;
            };
            let help = arg.get_help().map(|help| format!("{help} [env: {var}]"));
            let long_help = arg
                .get_long_help()
                .map(|help| format!("{help}\n[env: {var}]"));
            let arg = match help {
                Some(help) => arg.help(help),
                None => arg.help(format!("[env: {var}]")),
            };
            match long_help {
                Some(long_help) => arg.long_help(long_help),
                None => arg,
            }
        })
        .after_help(epilogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Layer, ConfigError> {
        Layer::read(
            vars.iter()
                .map(|(name, text)| (OsString::from(name), OsString::from(text))),
        )
    }

    fn config_of(vars: &[(&str, &str)]) -> Config {
        let mut table = toml::Table::new();
        read(vars).unwrap().lay_over(&mut table);
        Config::from_table(table).unwrap()
    }

    /// A value for every key's variable, as an operator would write it. A key added to
    /// `Config` fails `every_key_has_a_variable_that_sets_it` until it has one here.
    fn sample(key: &str) -> Option<&'static str> {
        Some(match key {
            "listen" => "127.0.0.1:9000",
            "api" => "127.0.0.1:9001",
            "cores" => "0,2-3",
            "log_format" => "json",
            "slow_consumer" => "drop-oldest",
            "auth" => "jwt",
            "permessage_deflate" => "true",
            "client_publish" => "chat.>, echo.*",
            "allowed_origins" => "https://a.example.com,https://*.example.org",
            "conflate_key" | "jwt_secret" => "symbol",
            "redis_url" => "redis://127.0.0.1:6379/0",
            "echo_path" => "/echo",
            "jwt_public_key_file"
            | "jwks_file"
            | "tls_cert_file"
            | "tls_key_file"
            | "api_tls_cert_file"
            | "api_tls_key_file"
            | "redis_ca_file"
            | "redis_cert_file"
            | "redis_key_file" => "/etc/corecast/file.pem",
            "redis_cluster" => "true",
            "redis_sentinels" => "redis://10.0.0.1:26379,redis://10.0.0.2:26379",
            "redis_sentinel_master" => "corecast",
            "namespaces" => r#"[{ pattern = "prices.>", history_messages_max = 5 }]"#,
            "api_keys" => r#"[{ key = "0123456789abcdef0123", tenant = "acme" }]"#,
            "tenant_publishes_per_s" | "shards" | "ingest_core" => "3",
            key if key.ends_with("_max")
                || key.ends_with("_s")
                || key.ends_with("_ms")
                || key.ends_with("_us")
                || key.ends_with("_bytes")
                || key.ends_with("_burst") =>
            {
                "3"
            }
            _ => return None,
        })
    }

    #[test]
    fn every_key_has_a_variable_that_sets_it() {
        let keys = Config::keys();
        assert!(keys.contains(&"outbox_frames_max") && keys.contains(&"api_keys"));
        for key in toml::Table::try_from(Config::default()).unwrap().keys() {
            assert!(
                keys.contains(&key.as_str()),
                "{key} is printed but not a key"
            );
        }
        let flags = Config::augment_args(clap::Command::new("serve"));
        for arg in flags.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(keys.contains(&id), "--{id} has no key of the same name");
        }
        let default = Config::default();
        for &key in keys {
            let var = var_name(key);
            assert_eq!(var, format!("CORECAST_{}", key.to_uppercase()));
            let text = sample(key)
                .unwrap_or_else(|| panic!("no sample value for key {key}: add one to sample()"));
            let layer = read(&[(&var, text)]).unwrap_or_else(|err| panic!("{var}: {err}"));
            assert_eq!(layer.settings.len(), 1, "{var}");
            assert_eq!(layer.settings[0].key, key);
            let config = config_of(&[(&var, text)]);
            assert_ne!(config, default, "{var}={text} changes {key}");
        }
    }

    #[test]
    fn values_are_spelled_as_the_flags_take_them() {
        let config = config_of(&[
            ("CORECAST_SHARDS", "4"),
            ("CORECAST_CORES", "0,2-3"),
            ("CORECAST_PERMESSAGE_DEFLATE", "true"),
            ("CORECAST_CLIENT_PUBLISH", "chat.>, echo.*"),
            ("CORECAST_ALLOWED_ORIGINS", ""),
            ("CORECAST_REDIS_URL", "redis://r:6379/0"),
            ("CORECAST_API_KEYS", r#"[{ key = "0123456789abcdef0123" }]"#),
        ]);
        assert_eq!(config.shards, Some(4));
        assert_eq!(config.cores, Some(vec![0, 2, 3]));
        assert!(config.permessage_deflate);
        assert_eq!(config.client_publish, ["chat.>", "echo.*"]);
        assert!(config.allowed_origins.is_empty());
        assert_eq!(config.redis_url.as_deref(), Some("redis://r:6379/0"));
        assert_eq!(config.api_keys[0].key, "0123456789abcdef0123");
        let other = read(&[("HOME", "/root"), ("CORECAST_CONFIG", "/etc/c.toml")]).unwrap();
        assert_eq!(other.config_file, Some(PathBuf::from("/etc/c.toml")));
        assert!(other.settings.is_empty());
    }

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_why() {
        let err = read(&[("CORECAST_SHARDS", "four")]).unwrap_err().0;
        assert_eq!(
            err,
            "CORECAST_SHARDS=\"four\" is invalid: invalid value 'four' for '--shards <SHARDS>': \
             invalid digit found in string"
        );
        let err = read(&[("CORECAST_LOG_FORMAT", "xml")]).unwrap_err().0;
        assert!(
            err.starts_with("CORECAST_LOG_FORMAT=\"xml\" is invalid: invalid value 'xml'")
                && err.contains("[possible values: text, json]"),
            "{err}"
        );
        let err = read(&[("CORECAST_PERMESSAGE_DEFLATE", "yes")])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("CORECAST_PERMESSAGE_DEFLATE=\"yes\" is invalid"),
            "{err}"
        );
        let err = read(&[("CORECAST_NAMESPACES", "[{ pattern = \"p.>\", depth = 1 }]")])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("CORECAST_NAMESPACES=") && err.contains("depth"),
            "{err}"
        );
        let err = read(&[("CORECAST_API_KEYS", "[{ key = \"s3cret-s3cret-s3cret\" ")])
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("CORECAST_API_KEYS (its value not shown") && !err.contains("s3cret"),
            "{err}"
        );
        let err = read(&[("CORECAST_NAMESPACES", "[]\nshards = 2")])
            .unwrap_err()
            .0;
        assert!(err.contains("it is not one TOML value"), "{err}");
    }

    #[test]
    fn a_refusal_of_validate_names_the_variable_that_set_the_value() {
        let layer = read(&[("CORECAST_SHARDS", "0"), ("CORECAST_HEARTBEAT_S", "9")]).unwrap();
        let mut table = toml::Table::new();
        layer.lay_over(&mut table);
        let err = Config::from_table(table).unwrap().validate().unwrap_err();
        assert_eq!(
            layer.explain(err).0,
            "shards = 0 is out of range: allowed 1 to 1024 (from the environment: \
             CORECAST_SHARDS=\"0\")"
        );
        let err = ConfigError("namespaces[0].history_age_s = 0 is out of range".into());
        let layer = read(&[("CORECAST_HISTORY_AGE_S", "0")]).unwrap();
        assert_eq!(
            layer.explain(err.clone()),
            err,
            "a namespace's key is not the top one"
        );
        let mut layer = read(&[("CORECAST_SHARDS", "0")]).unwrap();
        layer.overridden("shards");
        let err = ConfigError("shards = 0 is out of range: allowed 1 to 1024".into());
        assert_eq!(layer.explain(err.clone()), err, "a flag replaced it");
    }

    #[test]
    fn an_unknown_variable_is_ignored_with_a_warning_naming_the_names_near_it() {
        let layer = read(&[("CORECAST_OUTBOX_FRAME_MAX", "4"), ("CORECAST_SHARDS", "2")]).unwrap();
        assert_eq!(layer.settings.len(), 1, "CORECAST_SHARDS is read");
        assert_eq!(
            layer.warnings,
            [
                "environment variable CORECAST_OUTBOX_FRAME_MAX is no setting of corecast serve, \
              ignored (did you mean CORECAST_OUTBOX_FRAMES_MAX?): each setting is CORECAST_ and \
              its key upper-cased, listed by `corecast serve --help`"
            ]
        );
        let layer = read(&[("CORECAST_BIN", "/usr/bin/corecast")]).unwrap();
        assert!(layer.settings.is_empty());
        assert_eq!(layer.warnings.len(), 1);
        let layer = read(&[("CORECAST_ZZZZZZZZZZZZZZZZ", "1")]).unwrap();
        assert!(
            layer.warnings[0].contains("is no setting of corecast serve, ignored: each"),
            "{:?}",
            layer.warnings
        );
    }

    #[test]
    fn help_shows_every_flag_variable() {
        let serve = document(Config::augment_args(clap::Command::new("serve")));
        let help = serve.clone().render_long_help().to_string();
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if Config::keys().contains(&id) {
                assert!(help.contains(&format!("[env: {}]", var_name(id))), "{id}");
            }
        }
        assert!(
            help.contains("CORECAST_NAMESPACES, CORECAST_API_KEYS"),
            "{help}"
        );
        assert!(help.contains("A flag wins over the environment"), "{help}");
    }
}
