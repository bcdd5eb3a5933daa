//! Inputs the fuzzers (`tests/fuzz`) found, kept as regression tests: each must be refused
//! with a typed error, never a panic.

use lattice_runtime::{Limits, ModuleError, Runtime};

#[test]
fn a_core_module_whose_metadata_makes_wit_component_panic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(dir.path(), Limits::default()).unwrap();
    let bytes = include_bytes!("fuzz-regressions/module-wit-component-panic.bin");
    match runtime.install(bytes) {
        Err(ModuleError::NotComponentizable(_) | ModuleError::Malformed(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}
