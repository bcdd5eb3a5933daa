//! Errors of mounting and unmounting.

use std::path::PathBuf;

/// What went wrong mounting or unmounting a store.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The folder cannot be mounted on (missing, not a directory, not empty, or FUSE refused).
    #[error("cannot mount on {path}: {reason}")]
    Mount {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Nothing of this node is mounted there.
    #[error("no store of this node is mounted on {0}")]
    NotMounted(PathBuf),
    /// Something is mounted there already.
    #[error("{0} is already a mount of this node")]
    AlreadyMounted(PathBuf),
    /// The store is not a filesystem store.
    #[error("store {store} is a {kind} store, not a filesystem store (`--type fs`)")]
    NotFs {
        /// The store.
        store: String,
        /// What it is.
        kind: String,
    },
    /// The node failed.
    #[error(transparent)]
    Node(#[from] lattice_node::NodeError),
    /// The record of mounts could not be read or written.
    #[error("the record of mounts {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
