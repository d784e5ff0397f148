//! Pins down `CORECAST_<KEY>` configuration through the real binary: a flag beats the
//! environment, which beats the file, which beats the default (read back with
//! `--print-config`); a bad variable stops start-up with exit 2 and a message naming it, an
//! unknown one is a warning naming it; `corecast serve --help` names every printed key's
//! variable.

use std::process::{Command, Output};

/// `corecast serve ARGS` with exactly `vars` of the `CORECAST_` variables set.
fn serve(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corecast"));
    command.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CORECAST_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command.output().expect("corecast runs")
}

/// The value `--print-config` prints for `key`.
fn printed(output: &Output, key: &str) -> String {
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout.clone()).expect("UTF-8 config");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("--print-config printed no {key}:\n{text}"))
        .to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 stderr")
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let file = std::env::temp_dir().join(format!("corecast-env-{}.toml", std::process::id()));
    std::fs::write(&file, "heartbeat_s = 7\noutbox_frames_max = 70\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let env = [
        ("CORECAST_HEARTBEAT_S", "8"),
        ("CORECAST_OUTBOX_FRAMES_MAX", "80"),
    ];
    let with_file = ["--print-config", "--config", file.as_str()];

    let all = serve(&[&with_file[..], &["--heartbeat-s", "9"]].concat(), &env);
    assert_eq!(printed(&all, "heartbeat_s"), "9", "the flag wins");
    assert_eq!(
        printed(&all, "outbox_frames_max"),
        "80",
        "then the environment"
    );
    let no_flag = serve(&with_file, &env);
    assert_eq!(printed(&no_flag, "heartbeat_s"), "8");
    let file_only = serve(&with_file, &[]);
    assert_eq!(printed(&file_only, "heartbeat_s"), "7");
    assert_eq!(printed(&file_only, "outbox_frames_max"), "70");
    let nothing = serve(&["--print-config"], &[]);
    assert_eq!(printed(&nothing, "heartbeat_s"), "25", "the default");
    let file_by_env = serve(&["--print-config"], &[("CORECAST_CONFIG", file.as_str())]);
    assert_eq!(
        printed(&file_by_env, "heartbeat_s"),
        "7",
        "CORECAST_CONFIG names the file"
    );
}

#[test]
fn a_bad_value_stops_start_up_as_a_bad_flag_does_and_an_unknown_name_warns() {
    let flag = serve(&["--print-config", "--shards", "0"], &[]);
    assert_eq!(flag.status.code(), Some(2));
    assert_eq!(
        stderr(&flag),
        "corecast: shards = 0 is out of range: allowed 1 to 1024\n"
    );
    let env = serve(&["--print-config"], &[("CORECAST_SHARDS", "0")]);
    assert_eq!(env.status.code(), Some(2));
    assert_eq!(
        stderr(&env),
        "corecast: shards = 0 is out of range: allowed 1 to 1024 (from the environment: \
         CORECAST_SHARDS=\"0\")\n"
    );
    let unparsable = serve(&["--print-config"], &[("CORECAST_SHARDS", "four")]);
    assert_eq!(unparsable.status.code(), Some(2));
    assert_eq!(
        stderr(&unparsable),
        "corecast: CORECAST_SHARDS=\"four\" is invalid: invalid value 'four' for '--shards \
         <SHARDS>': invalid digit found in string\n"
    );
    let unknown = serve(
        &["--print-config"],
        &[("CORECAST_SHARD", "4"), ("CORECAST_BIN", "/bin/x")],
    );
    assert_eq!(printed(&unknown, "heartbeat_s"), "25", "start-up goes on");
    assert_eq!(
        stderr(&unknown),
        "corecast: warning: environment variable CORECAST_BIN is no setting of corecast \
         serve, ignored: each setting is CORECAST_ and its key upper-cased, listed by `corecast \
         serve --help`\ncorecast: warning: environment variable CORECAST_SHARD is no setting of \
         corecast serve, ignored (did you mean CORECAST_SHARDS?): each setting is CORECAST_ and \
         its key upper-cased, listed by `corecast serve --help`\n"
    );
}

#[test]
fn serve_help_names_the_variable_of_every_printed_key() {
    let help = serve(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let config = serve(&["--print-config"], &[]);
    let config = String::from_utf8(config.stdout).unwrap();
    let mut keys = 0;
    for line in config.lines().filter(|line| line.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        let var = format!("[env: CORECAST_{}]", key.to_uppercase());
        assert!(help.contains(&var), "--help does not show {var}");
        keys += 1;
    }
    assert!(keys >= 20, "print-config printed {keys} keys");
    assert!(help.contains("[env: CORECAST_CONFIG]"));
    assert!(help.contains("A flag wins over the environment, the environment over the file"));
}
