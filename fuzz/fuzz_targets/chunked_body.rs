//! Fuzz target `chunked_body`: every input goes through `invariants::chunked_body::check`, which the corpus
//! replay test (`tests/fuzz_corpus.rs`) also runs on stable.
#![no_main]

#[path = "../invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::chunked_body::check(data));
