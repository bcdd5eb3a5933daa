//! A log.db damaged in any bytes: opening it (and, if it opens, verifying it) is a typed error
//! or a working log, never a panic that escapes or an abort. The input is a list of
//! (offset, xor) edits applied to a small real log.
#![no_main]

use std::sync::Once;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Contained panics are the expected outcome for some damage: keep libFuzzer's hook from
    // turning a caught panic into an abort.
    static QUIET: Once = Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    lattice_tests::fuzz::damaged_log(data);
});
