//! Host ops (epochs, acks, frontiers: the ops of host intentions any member may send):
//! decoding never panics, and what decodes is canonical — it encodes back to the same bytes.
#![no_main]

use lattice_model::HostOp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = HostOp::decode(data) {
        assert_eq!(op.encode().as_slice(), data);
    }
});
