//! Invite tokens pasted by users: decoding never panics, and a decoded token encodes to a
//! token that decodes to the same thing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_tests::fuzz::invite_token(data));
