//! Sync session frames and gossip messages from peers: decoding never panics, and what
//! decodes encodes back to the same message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::sync_frame(data));
