//! Error types of the runtime crate.

use std::sync::Arc;

/// A storage failure of `state.db` or the module directory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("runtime storage failed")]
pub struct StorageError(#[source] pub Arc<redb::Error>);

pub(crate) fn storage<E: Into<redb::Error>>(err: E) -> StorageError {
    StorageError(Arc::new(err.into()))
}

/// Installing or loading a module failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The bytes are not WebAssembly (neither a component nor a core module).
    #[error("not a WebAssembly module or component: {0}")]
    Malformed(String),
    /// A core module without wit-bindgen's component-type section cannot be made a component.
    #[error("core module cannot be made a component (build it with wit-bindgen against wit/): {0}")]
    NotComponentizable(String),
    /// The module is larger than [`crate::MAX_MODULE_BYTES`].
    #[error("module is {len} bytes; the most a module may be is {max} bytes (64 MiB)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The component does not compile or validate.
    #[error("component does not validate: {0}")]
    Invalid(String),
    /// The component does not target the `lattice:store` world of a compatible version.
    #[error("component does not target the lattice:store@0.1 `store` world: {0}")]
    WrongWorld(String),
    /// No module with this hash is installed.
    #[error("module {0} is not installed; install it with `lattice module install <file>`")]
    NotInstalled(String),
    /// Reading or writing the module directory failed.
    #[error("module store {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A guest call failed. For `apply` every variant is deterministic and rejects the intention.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The guest returned an expected error.
    #[error("{0}")]
    Guest(GuestError),
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access…).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest ran out of fuel (instruction budget).
    #[error("guest ran out of fuel")]
    FuelExhausted,
    /// The guest exceeded a host limit (memory, key or value size, result size, writes).
    #[error("guest exceeded a limit: {0}")]
    LimitExceeded(String),
    /// The guest called a host function it may not call here (e.g. a write from `query`).
    #[error("guest broke the host contract: {0}")]
    Forbidden(String),
    /// The host failed (storage); not the guest's fault and not deterministic.
    #[error("host failure during a guest call: {0}")]
    Host(String),
}

/// The `store-error` a guest returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The method does not exist.
    #[error("unknown method `{0}`")]
    UnknownMethod(String),
    /// An argument is missing, of the wrong type or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The op is not valid for this store type.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A bug in the guest.
    #[error("guest internal error: {0}")]
    Internal(String),
}

/// A store's runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `state.db` failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A module problem.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// A guest call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The log failed while projecting.
    #[error(transparent)]
    Log(#[from] lattice_log::Error),
    /// A DAG query failed while checking a host intention.
    #[error(transparent)]
    Query(#[from] lattice_log::QueryError),
    /// `state.db` (or `system.db`) did not open: damaged, already open, or unreadable.
    #[error(transparent)]
    File(#[from] lattice_log::file::FileError),
    /// `state.db` belongs to another store or is malformed.
    #[error("state.db is inconsistent: {0}")]
    Corrupt(String),
    /// The store's module is not installed, so it cannot be queried or projected yet.
    #[error("store is waiting for module {0}; install it with `lattice module install`")]
    Headless(String),
    /// Arguments do not match the method's schema.
    #[error("{0}")]
    BadArguments(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(err: $t) -> Error {
                Error::Storage(storage(err))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);
