//! Fuzz target `request_target`: every input goes through `invariants::request_target::check`, which the corpus
//! replay test (`tests/fuzz_corpus.rs`) also runs on stable.
#![no_main]

#[path = "../invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::request_target::check(data));
