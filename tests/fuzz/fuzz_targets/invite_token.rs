//! Invite tokens pasted by users: decoding never panics, and a decoded token encodes to a
//! token that decodes to the same thing.
#![no_main]

use lattice_node::InviteToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = InviteToken::decode(text) {
        assert_eq!(InviteToken::decode(&token.encode()), Ok(token));
    }
});
