//! Witness records (read back from disk and compared in verification): decoding never
//! panics and round-trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::witness_record(data));
