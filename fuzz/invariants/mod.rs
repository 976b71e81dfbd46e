//! Invariant checks shared by the fuzz targets (`fuzz/fuzz_targets/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`): one `check(&[u8])` per target, which panics when an invariant
//! breaks. Both include this directory with `#[path]`, so they cannot drift apart.
// Each fuzz target uses one module of this directory; the replay test uses them all.
#![allow(dead_code)]

pub mod cache_key;
pub mod cache_policy;
pub mod chunked_body;
pub mod config;
pub mod h2_fields;
pub mod input;
pub mod request_head;
pub mod request_target;
pub mod snapshot;

/// An invariant check: panics when the input breaks an invariant.
pub type Check = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus directory.
pub const TARGETS: [(&str, Check); 8] = [
    ("request_head", request_head::check),
    ("request_target", request_target::check),
    ("cache_key", cache_key::check),
    ("cache_policy", cache_policy::check),
    ("config", config::check),
    ("snapshot", snapshot::check),
    ("chunked_body", chunked_body::check),
    ("h2_fields", h2_fields::check),
];
