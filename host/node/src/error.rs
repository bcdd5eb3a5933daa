//! Error types of the node crate.

use lattice_model::StoreId;

use crate::identity::IdentityError;

/// A node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The identity key could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The log failed to open.
    #[error(transparent)]
    LogOpen(#[from] lattice_log::OpenError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] lattice_log::Error),
    /// Authoring failed.
    #[error(transparent)]
    Author(#[from] lattice_log::AuthorError),
    /// A module could not be installed or loaded.
    #[error(transparent)]
    Module(#[from] lattice_runtime::ModuleError),
    /// The store's runtime failed.
    #[error(transparent)]
    Runtime(#[from] lattice_runtime::Error),
    /// No such store in this data directory.
    #[error("no store {0} here; `lattice store list` shows the stores")]
    UnknownStore(String),
    /// A store id prefix matches several stores.
    #[error("{0} matches several stores; give more characters")]
    Ambiguous(String),
    /// The store's genesis is missing or not a Lattice store genesis.
    #[error("store {0} has no valid genesis intention")]
    BadGenesis(StoreId),
    /// The `--type` argument names nothing usable.
    #[error(
        "unknown store type `{0}`: give a .wasm file, a built-in type (kvstore, counter) or an installed module hash"
    )]
    UnknownType(String),
    /// `meta.db` failed.
    #[error("node inventory (meta.db): {0}")]
    Meta(String),
    /// Another process has this data directory open.
    #[error(
        "the data directory {0} is in use by another Lattice process (a running `lattice daemon`?); stop it, or pass a different --data-dir"
    )]
    Locked(String),
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
