//! Replays every file of the fuzz seed corpus (`tests/fuzz/corpus/<target>/`) through the
//! checking function its fuzz target runs, on stable Rust and without libFuzzer, so each input
//! that once found a bug or new coverage keeps proving the parsers' invariants in CI.

use std::path::Path;

// The fuzz crate's library is the checking code itself; including it here shares it without a
// copy (the fuzz crate depends on corecast, so corecast cannot depend on it).
#[path = "fuzz/src/lib.rs"]
mod checks;

/// Stack for the replay thread: what a shard's thread gets under the default
/// `json_depth_max`, since no command parses deeper than that (`json::check` refuses it
/// first). Unoptimized builds spend far more stack per level than the server's release build
/// (about 55 KiB against 257 bytes), which `json::thread_stack_bytes` sizes for; the fuzz
/// build is optimized, as the server is, and runs on libFuzzer's 8 MiB main-thread stack.
fn replay_stack_bytes() -> usize {
    corecast::json::thread_stack_bytes(corecast::config::defaults::json_depth_max())
}

#[test]
fn every_corpus_file_keeps_its_target_invariants() {
    std::thread::Builder::new()
        .name("corpus-replay".into())
        .stack_size(replay_stack_bytes())
        .spawn(replay_corpus)
        .expect("a replay thread")
        .join()
        .expect("every corpus file keeps its invariants");
}

fn replay_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    for (target, check) in checks::TARGETS {
        let folder = corpus.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", folder.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 10,
            "{} holds {} files; the seed corpus has more",
            folder.display(),
            files.len()
        );
        for file in files {
            let input = std::fs::read(&file).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(
                outcome.is_ok(),
                "{target}: {} broke an invariant",
                file.display()
            );
        }
    }
}
