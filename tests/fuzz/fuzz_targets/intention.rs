//! Signed intentions from peers: decoding never panics, and what decodes is canonical (its
//! bytes are exactly what was read, and re-encoding the intention gives the same body).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::intention(data));
