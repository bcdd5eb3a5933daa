//! Module bytes from operators (and, later, from peers): installing any bytes is a typed
//! error or a working module, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::module_install(data));
