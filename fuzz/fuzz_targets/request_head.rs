//! Fuzz target `request_head`: every input goes through `invariants::request_head::check`, which the corpus
//! replay test (`tests/fuzz_corpus.rs`) also runs on stable.
#![no_main]

#[path = "../invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::request_head::check(data));
