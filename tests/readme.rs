//! The README's configuration reference lists every key `corecast serve --print-config` prints,
//! with the same default, so the documentation cannot drift from the code.

use std::process::Command;

#[test]
fn readme_config_table_matches_print_config() {
    let output = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(["serve", "--print-config"])
        .output()
        .expect("corecast runs");
    assert!(output.status.success(), "--print-config exits 0");
    let printed = String::from_utf8(output.stdout).expect("UTF-8 config");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let mut keys = 0;
    for line in printed.lines().filter(|line| line.contains(" = ")) {
        let (key, value) = line.split_once(" = ").expect("key = value");
        let value = value.trim_matches('"');
        let row = readme
            .lines()
            .find(|row| row.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("README's configuration table has no row for `{key}`"));
        let default = row.split('|').nth(2).expect("a default column").trim();
        let default = default.trim_matches('`');
        assert_eq!(default, value, "README default of `{key}`");
        keys += 1;
    }
    assert!(keys >= 20, "print-config printed {keys} keys");
}
