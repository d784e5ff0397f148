//! Pins down the server crate's layer rule (`src/lib.rs`, "# Layers"): every `crate::` path in
//! a module of `src/` names a module of a lower layer, or its own module, so the top-level
//! modules form no import cycle and lower stages never reach into higher ones. It reads the
//! source as text, so a violation fails `cargo test` naming the file, the line and the rule it
//! breaks; every top-level module that `src/lib.rs` declares must have a layer here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, bottom to top. A module may import modules of lower layers only: never one of
/// its own layer (so `ingest` and `shard` never meet but through the layers beneath them).
const LAYERS: &[(&str, &[&str])] = &[
    ("protocol types (corecast-proto, re-exported)", &["channel"]),
    (
        "shared pieces",
        &["clock", "json", "notify", "rate", "web", "queue"],
    ),
    ("shared pieces over shared pieces", &["latency", "registry"]),
    ("the cross-core vocabulary", &["msg"]),
    ("configuration", &["config"]),
    ("pure stages", &["ws", "cluster", "tune"]),
    ("pure stages over codecs", &["net"]),
    ("the two cores' halves", &["ingest", "shard"]),
    ("wiring", &["runtime"]),
];

/// Source folders of other workspace members: cargo keeps their dependencies one-way.
const OTHER_CRATES: &[&str] = &["proto", "client"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of the server crate with their top-level module (`src/ws/frame.rs` -> `ws`).
fn server_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![src()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            let relative = path.strip_prefix(src()).expect("under src/").to_owned();
            let top = relative
                .components()
                .next()
                .expect("a path under src/")
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if OTHER_CRATES.contains(&top.as_str()) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs")
                && !["lib", "main", "cli"].contains(&top.as_str())
            {
                files.push((path, top));
            }
        }
    }
    files.sort();
    files
}

/// The top-level modules a line's `crate::` paths name: `crate::a::b` gives `a`, and
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::` or `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// Code of a line, without a `//` comment (doc links to higher layers are not imports).
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

#[test]
fn every_crate_path_points_down_the_layers() {
    let mut violations = Vec::new();
    for (path, module) in server_files() {
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                path.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("a source file is readable");
        for (number, line) in text.lines().enumerate() {
            for target in crate_paths(code_of(line)) {
                if target == module {
                    continue;
                }
                let rule = match layer_of(&target) {
                    None => format!("`{target}` has no layer"),
                    Some(theirs) if theirs > own => format!(
                        "`{module}` ({}) imports `{target}` ({}), a higher layer",
                        LAYERS[own].0, LAYERS[theirs].0
                    ),
                    Some(theirs) if theirs == own => format!(
                        "`{module}` imports `{target}`, of its own layer ({})",
                        LAYERS[own].0
                    ),
                    Some(_) => continue,
                };
                let shown = path.strip_prefix(src().parent().unwrap()).unwrap();
                violations.push(format!(
                    "{}:{}: {rule}: {}",
                    shown.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} imports break the layer rule of src/lib.rs:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn every_module_of_lib_rs_has_a_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs is readable");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let name = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
                .or_else(|| {
                    line.strip_prefix("pub use corecast_proto::")
                        .and_then(|path| path.split("::").next())
                })?;
            Some(name.trim_end_matches(';').to_owned())
        })
        .collect();
    assert!(
        !declared.is_empty(),
        "expected modules declared in src/lib.rs"
    );
    let missing: Vec<&String> = declared
        .iter()
        .filter(|module| layer_of(module).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules of src/lib.rs with no layer in tests/layers.rs: {missing:?}"
    );
    let listed: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().map(|module| module.to_string()))
        .collect();
    let stale: Vec<&String> = listed.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "tests/layers.rs names modules src/lib.rs does not declare: {stale:?}"
    );
}

#[test]
fn the_path_reader_finds_plain_grouped_and_nested_paths() {
    assert_eq!(crate_paths("use crate::ws::frame::Frame;"), ["ws"]);
    assert_eq!(
        crate_paths("use crate::{config::Config, queue};"),
        ["config", "queue"]
    );
    assert_eq!(
        crate_paths("let x = crate::clock::unix_ms() + crate::rate::f();"),
        ["clock", "rate"]
    );
    assert!(crate_paths("$crate::x and my_crate::y").is_empty());
    assert_eq!(code_of("use a; // see crate::ingest"), "use a; ");
}
