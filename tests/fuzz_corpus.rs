//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the invariant
//! checks the fuzz targets run (`fuzz/invariants/`), on stable, as part of `cargo test`.

#[path = "../fuzz/invariants/mod.rs"]
mod invariants;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run one target's corpus; every file that breaks an invariant is named in the failure.
fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus_files(target);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/{target} has {} files; run scripts/fuzz {target}",
        files.len()
    );
    let mut broken = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            broken.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} {target} corpus files break an invariant:\n{}",
        broken.len(),
        files.len(),
        broken.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in invariants::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        assert!(dir.is_dir(), "missing {}", dir.display());
        let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(bin.is_file(), "missing {}", bin.display());
    }
}

#[test]
fn request_head_corpus() {
    replay("request_head", invariants::request_head::check);
}

#[test]
fn request_target_corpus() {
    replay("request_target", invariants::request_target::check);
}

#[test]
fn chunked_body_corpus() {
    replay("chunked_body", invariants::chunked_body::check);
}

#[test]
fn h2_fields_corpus() {
    replay("h2_fields", invariants::h2_fields::check);
}

#[test]
fn cache_key_corpus() {
    replay("cache_key", invariants::cache_key::check);
}

#[test]
fn cache_policy_corpus() {
    replay("cache_policy", invariants::cache_policy::check);
}

#[test]
fn config_corpus() {
    replay("config", invariants::config::check);
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", invariants::snapshot::check);
}
