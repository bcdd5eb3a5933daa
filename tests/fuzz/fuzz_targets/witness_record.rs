//! Witness records (read back from disk and compared in verification): decoding never
//! panics and round-trips.
#![no_main]

use lattice_model::WitnessRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = WitnessRecord::decode(data) {
        assert_eq!(record.encode().as_slice(), data);
    }
});
