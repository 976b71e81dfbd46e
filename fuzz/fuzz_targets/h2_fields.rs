//! Fuzz target `h2_fields`: every input goes through `invariants::h2_fields::check`, which the corpus
//! replay test (`tests/fuzz_corpus.rs`) also runs on stable.
#![no_main]

#[path = "../invariants/mod.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::h2_fields::check(data));
