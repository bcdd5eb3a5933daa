//! Sync session frames and gossip messages from peers: decoding never panics, and what
//! decodes encodes back to the same message.
#![no_main]

use lattice_sync::{GossipMsg, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Msg::decode(data) {
        assert_eq!(Msg::decode(&msg.encode()), Ok(msg));
    }
    if let Ok(msg) = GossipMsg::decode(data) {
        assert_eq!(GossipMsg::decode(&msg.encode()), Ok(msg));
    }
});
