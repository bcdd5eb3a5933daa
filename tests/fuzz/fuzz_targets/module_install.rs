//! Module bytes from operators (and, later, from peers): installing any bytes is a typed
//! error or a working module, never a panic.
#![no_main]

use std::sync::OnceLock;

use lattice_runtime::{Limits, Runtime};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<(tempfile::TempDir, Runtime)> = OnceLock::new();
    &RUNTIME
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let runtime = Runtime::new(dir.path(), Limits::default()).expect("a runtime");
            (dir, runtime)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let _ = runtime().install(data);
});
