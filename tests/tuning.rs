//! The tuning kit works as documented: every config profile in `tuning/profiles/` is accepted by
//! `corecast serve --config` and changes the keys it sets away from the defaults in the
//! direction its name promises; `corecast tune check` prints one row per check, writes the same
//! rows as JSON and exits as `--strict` says, and `tuning/README.md` documents and shows every
//! check; `tuning/apply.sh` prints its usage and, without `--apply`, lists every setting and
//! changes nothing on the host. All by running the real binary and the real script.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every check `corecast tune check` reports, in table order.
const CHECKS: [&str; 8] = [
    "nofile",
    "memlock",
    "io_uring",
    "somaxconn",
    "port_range",
    "tcp_mem",
    "cpu_governor",
    "irq_affinity",
];

const STATUSES: [&str; 4] = ["pass", "warn", "fail", "n/a"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn corecast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(args)
        .output()
        .expect("corecast runs")
}

fn print_config(extra: &[&str]) -> toml::Table {
    let mut args = vec!["serve", "--print-config"];
    args.extend_from_slice(extra);
    let output = corecast(&args);
    assert!(
        output.status.success(),
        "serve {extra:?} --print-config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .parse()
        .expect("--print-config prints TOML")
}

fn int(table: &toml::Table, key: &str) -> i64 {
    table
        .get(key)
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("{key} is an integer in {table:?}"))
}

#[test]
fn profiles_are_accepted_and_move_their_keys_away_from_the_defaults() {
    let defaults = print_config(&[]);
    let mut effective = Vec::new();
    for name in ["latency", "throughput", "small-host"] {
        let path = repo(&format!("tuning/profiles/{name}.toml"));
        let file: toml::Table = std::fs::read_to_string(&path)
            .expect("profile readable")
            .parse()
            .expect("profile is TOML");
        assert!(file.len() >= 5, "{name} sets only {} keys", file.len());
        let printed = print_config(&["--config", path.to_str().unwrap()]);
        for (key, value) in &file {
            assert_eq!(printed.get(key), Some(value), "{name}: {key} took effect");
            assert_ne!(defaults.get(key), Some(value), "{name}: {key} is a default");
        }
        effective.push(printed);
    }
    let [latency, throughput, small] = &effective[..] else {
        unreachable!("three profiles")
    };
    let default = |key| int(&defaults, key);
    // latency: smaller batches and outboxes, faster dead-peer detection.
    assert!(int(latency, "queue_batch_max") < default("queue_batch_max"));
    assert!(int(latency, "outbox_frames_max") < default("outbox_frames_max"));
    assert!(int(latency, "heartbeat_s") < default("heartbeat_s"));
    // throughput: bigger batches, queues and outboxes.
    assert!(int(throughput, "queue_batch_max") > default("queue_batch_max"));
    assert!(int(throughput, "queue_items_max") > default("queue_items_max"));
    assert!(int(throughput, "outbox_bytes_max") > default("outbox_bytes_max"));
    assert!(int(throughput, "publish_batch_max") > default("publish_batch_max"));
    // small host: one shard and every memory bound lowered.
    assert_eq!(int(small, "shards"), 1);
    for key in [
        "connections_per_shard_max",
        "outbox_bytes_max",
        "queue_items_max",
        "channels_max",
        "io_memory_bytes",
    ] {
        assert!(int(small, key) < default(key), "small-host lowers {key}");
    }
}

#[test]
fn tune_check_prints_a_row_per_check_and_exits_by_strict() {
    let json = std::env::temp_dir().join(format!("corecast-tune-{}.json", std::process::id()));
    let output = corecast(&["tune", "check", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert_eq!(output.status.code(), Some(0), "without --strict: {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("check "), "header: {}", lines[0]);
    let mut flagged = false;
    for (line, check) in lines[1..].iter().zip(CHECKS) {
        assert!(
            line.starts_with(&format!("{check} ")),
            "row {check}: {line}"
        );
        let status = STATUSES
            .iter()
            .find(|status| line.contains(&format!("  {status}  ")))
            .unwrap_or_else(|| panic!("a status column in {line}"));
        flagged |= matches!(*status, "warn" | "fail");
    }
    assert!(
        lines[CHECKS.len() + 1].starts_with("8 checks: "),
        "summary: {stdout}"
    );

    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json written")).unwrap();
    std::fs::remove_file(&json).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| row["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, CHECKS);

    let readme = std::fs::read_to_string(repo("tuning/README.md")).unwrap();
    for check in CHECKS {
        assert!(
            readme
                .lines()
                .any(|line| line.starts_with(&format!("| `{check}` |"))),
            "tuning/README.md explains {check}"
        );
        assert!(
            readme
                .lines()
                .any(|line| line.starts_with(&format!("{check} "))),
            "tuning/README.md's pasted table has a {check} row"
        );
    }

    let strict = corecast(&["tune", "check", "--strict"]);
    assert_eq!(
        strict.status.code(),
        Some(i32::from(flagged)),
        "--strict exits 1 exactly when a row is warn or fail"
    );
}

#[test]
fn recommended_limits_agree_across_the_kit() {
    let output = corecast(&["tune", "check"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let nofile = stdout
        .lines()
        .find(|line| line.starts_with("nofile "))
        .unwrap();
    assert!(nofile.contains("hard >= 1048576"), "{nofile}");
    let unit = std::fs::read_to_string(repo("tuning/corecast.service")).unwrap();
    assert!(unit.lines().any(|line| line == "LimitNOFILE=1048576"));
    assert!(unit.lines().any(|line| line == "LimitMEMLOCK=64M"));
    let limits = std::fs::read_to_string(repo("tuning/limits.conf")).unwrap();
    let value = |item: &str, kind: &str| {
        limits
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields.len() == 4 && fields[..3] == ["*", kind, item])
            .map(|fields| fields[3].to_owned())
    };
    assert_eq!(value("nofile", "hard").as_deref(), Some("1048576"));
    assert_eq!(value("memlock", "hard").as_deref(), Some("65536"));
}

#[test]
fn apply_sh_prints_usage_and_its_dry_run_changes_nothing() {
    let script = repo("tuning/apply.sh");
    let help = Command::new("bash")
        .arg(&script)
        .arg("-h")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("Usage: tuning/apply.sh"));

    let config = std::fs::read_to_string(repo("tuning/sysctl.conf")).unwrap();
    let keys: Vec<&str> = config
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('='))
        .map(|line| line.split('=').next().unwrap().trim())
        .collect();
    assert!(keys.contains(&"net.core.somaxconn"), "{keys:?}");
    let read =
        |key: &str| std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/"))).ok();
    let before: Vec<Option<String>> = keys.iter().map(|key| read(key)).collect();
    let installed = |path: &str| Path::new(path).exists();
    let targets = [
        "/etc/sysctl.d/90-corecast.conf",
        "/etc/security/limits.d/90-corecast.conf",
    ];
    let installed_before = targets.map(installed);

    let dry = Command::new("bash").arg(&script).output().unwrap();
    let stdout = String::from_utf8(dry.stdout).unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(stdout.starts_with("corecast tuning: dry run"), "{stdout}");
    for key in &keys {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{key}: "))),
            "dry run lists {key}: {stdout}"
        );
    }
    let after: Vec<Option<String>> = keys.iter().map(|key| read(key)).collect();
    assert_eq!(before, after, "the dry run changed a sysctl");
    assert_eq!(
        targets.map(installed),
        installed_before,
        "the dry run installed a file"
    );
}
