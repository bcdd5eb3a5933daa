//! Host ops (epochs, acks, frontiers: the ops of host intentions any member may send):
//! decoding never panics, and what decodes is canonical — it encodes back to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::host_op(data));
