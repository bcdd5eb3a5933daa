//! Host bindings generated from `wit/` (world `store`).
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::too_many_arguments,
    reason = "generated code"
)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "store",
    imports: { default: trappable },
});
