//! The Lattice Wasm runtime: every store type is a WebAssembly component guest targeting the
//! `lattice:store` world (`wit/`), run by wasmtime with a deterministic configuration.
//!
//! **Owns:** the wasmtime engine and host linker ([`Runtime`]); the module directory (components
//! by BLAKE3 hash, compiled code cached on disk and keyed by engine version); each store's
//! `state.db` and guest instance ([`StoreRuntime`]); projection of witnessed intentions onto
//! state, exactly once.
//!
//! **Does not touch:** writes to `log.db` (it only reads the log), peers, the network.
//!
//! **Blocking:** everything is synchronous: guest calls run on the caller's thread, bounded by
//! fuel; `state.db` and module files block on disk I/O.
//!
//! **Errors:** [`ModuleError`] (install and load), [`CallError`] (one guest call: trap, fuel,
//! limit, forbidden host call, guest error), [`Error`] (a store's runtime).
//!
//! **Determinism:** no WASI (no clocks, randomness or I/O), NaN canonicalisation, fuel per
//! call and a memory cap per instance. A trap, fuel exhaustion or limit hit in `apply` rejects
//! that intention the same way on every peer; it never takes the node down.
//!
//! **Features:** none.
//!
//! ```no_run
//! use lattice_runtime::{Limits, Runtime};
//!
//! let runtime = Runtime::new("modules".as_ref(), Limits::default())?;
//! let module = runtime.install(&std::fs::read("kvstore.wasm")?)?;
//! println!("installed {}", module.hash());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bindings;
mod error;
mod guest;
mod host;
mod modules;
mod schema;
mod store;

pub use error::{CallError, Error, GuestError, ModuleError, StorageError};
pub use host::{
    BLOB_REF_PREFIX, HOST_KEY_PREFIX, MAX_BLOB_CHUNK, MAX_EVENT_BYTES, MAX_KEY_BYTES,
    MAX_OPEN_WRITERS, MAX_SCAN, MAX_VALUE_BYTES,
};
pub use modules::{Limits, LoadedModule, MAX_MODULE_BYTES, ModuleHash, Runtime};
pub use schema::{MethodInfo, MethodKind, ParamInfo, ParamKind, StoreDescriptor};
pub use store::{
    AuthorFilter, HostRecord, Partition, PreparedWrite, ProjectReport, Refusal, StateRows,
    StoreRuntime, WatchEvent,
};

/// The built-in store types, embedded in the binary: `(type name, component bytes)`.
///
/// Rebuilt with `cargo xtask guests`; `guests/dist/TOOLCHAIN` records the compiler.
pub const BUILTIN_MODULES: &[(&str, &[u8])] = &[
    (
        "kvstore",
        include_bytes!("../../../guests/dist/kvstore.wasm"),
    ),
    (
        "counter",
        include_bytes!("../../../guests/dist/counter.wasm"),
    ),
    ("system", include_bytes!("../../../guests/dist/system.wasm")),
    (
        "rootstore",
        include_bytes!("../../../guests/dist/rootstore.wasm"),
    ),
    ("fs", include_bytes!("../../../guests/dist/fs.wasm")),
    // Earlier releases of built-in types stay, so stores whose genesis names them keep
    // running them (and a guest built for `lattice:store@0.1.0` runs beside 0.1.1 ones).
    (
        "kvstore-0.1.0",
        include_bytes!("../../../guests/legacy/kvstore-0.1.0.wasm"),
    ),
];
