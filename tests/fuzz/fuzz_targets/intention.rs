//! Signed intentions from peers: decoding never panics, and what decodes is canonical (its
//! bytes are exactly what was read, and re-encoding the intention gives the same body).
#![no_main]

use lattice_model::SignedIntention;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedIntention::decode(data) {
        assert_eq!(signed.as_bytes(), data);
        let body = signed.intention().encode();
        assert_eq!(&data[..body.len()], body.as_slice());
        assert_eq!(signed.hash(), signed.intention().hash());
        // Verifying a forged signature is an error, never a panic.
        let _ = signed.verify();
    }
});
