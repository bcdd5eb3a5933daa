//! Errors of the blob store.

use std::path::PathBuf;

/// A blob store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasError {
    /// The store holds no blob with this hash (it may exist for another store: blobs are
    /// scoped, and a store only reaches its own).
    #[error("blob {hash} is not in store {store}")]
    NotFound {
        /// Short hash of the blob.
        hash: String,
        /// Short id of the store.
        store: String,
    },
    /// A read asked for bytes past the blob's end.
    #[error("bytes {start}..{end} are past the end of blob {hash} ({size} bytes)")]
    OutOfRange {
        /// Short hash of the blob.
        hash: String,
        /// First byte asked for.
        start: u64,
        /// End (exclusive) asked for.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// The blob's bytes on disk do not hash to its name: the file is damaged. Nothing
    /// damaged was handed out.
    #[error("blob {hash} is damaged on disk: {reason}")]
    Damaged {
        /// Short hash of the blob.
        hash: String,
        /// What the check found.
        reason: String,
    },
    /// Another transfer of the blob is still under way here.
    #[error("blob {hash} is being received already; try again when that transfer ends")]
    Busy {
        /// Short hash of the blob.
        hash: String,
    },
    /// The thread doing the work stopped before it finished (the node is shutting down).
    #[error("the blob store's work was stopped (the node is shutting down)")]
    Stopped,
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the data to put failed.
    #[error("reading the blob's bytes failed: {0}")]
    Input(#[source] std::io::Error),
    /// Writing what was read to the caller failed.
    #[error("writing the blob's bytes out failed: {0}")]
    Output(#[source] std::io::Error),
    /// The index (`cas.db`) failed.
    #[error("blob index: {0}")]
    Index(#[source] redb::Error),
}

impl CasError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CasError {
        let path = path.into();
        move |source| CasError::Io { path, source }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CasError {
            fn from(e: $t) -> CasError {
                CasError::Index(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
