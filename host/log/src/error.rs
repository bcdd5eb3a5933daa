//! Error types of the log crate.

use std::sync::Arc;

use lattice_model::{ChainError, DecodeError, Hash, Hlc, IntentionError, SignError};

/// A storage-level failure: redb or the file system. Nothing of the failed batch was kept.
///
/// The cause is shared so every caller of a failed group commit receives it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("log storage failed")]
pub struct StorageError(#[source] pub Arc<redb::Error>);

pub(crate) fn storage<E: Into<redb::Error>>(err: E) -> StorageError {
    StorageError(Arc::new(err.into()))
}

/// Opening a `log.db` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process or handle has the file open.
    #[error("log {path} is already open (another node or command is using it)")]
    AlreadyOpen {
        /// The file path.
        path: String,
    },
    /// The file belongs to another store.
    #[error("log belongs to store {found}, not {expected}")]
    WrongStore {
        /// Short id of the store asked for.
        expected: String,
        /// Short id of the store in the file.
        found: String,
    },
    /// The file was witnessed by another node key.
    #[error("log was witnessed by node {found}, not by this node ({expected})")]
    WrongWitnessKey {
        /// Short id of this node's key.
        expected: String,
        /// Short id of the key in the file.
        found: String,
    },
    /// The file's bytes are damaged (redb's checks fail, or reading it panicked).
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file path.
        path: String,
        /// What was found.
        reason: String,
    },
    /// The file uses a format version this build does not read.
    #[error("log format version {0} is not supported by this build")]
    UnsupportedFormat(u32),
    /// The witness chain tail or another invariant checked on open is broken.
    #[error("log is corrupt: {0}")]
    Corrupt(#[from] CorruptError),
    /// redb or the file system failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The actor thread could not be started.
    #[error("could not start the ingest thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// On-disk data contradicts itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptError {
    /// A stored value has the wrong length or layout.
    #[error("{table} entry is malformed")]
    Malformed {
        /// The table holding it.
        table: &'static str,
    },
    /// A stored intention or record does not decode.
    #[error("{what} does not decode: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why.
        source: DecodeError,
    },
    /// The witness chain breaks a rule.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The newest record has no valid attestation.
    #[error("witness record {seq} is not attested by a valid node signature")]
    Unattested {
        /// The record's sequence number.
        seq: u64,
    },
    /// A witnessed intention is missing or differs from its record.
    #[error("witness record {seq} names intention {hash}, which is missing or altered")]
    MissingIntention {
        /// The record's sequence number.
        seq: u64,
        /// Short id of the intention.
        hash: String,
    },
    /// A witnessed intention's signature does not verify.
    #[error("intention {hash} has an invalid signature")]
    BadSignature {
        /// Short id of the intention.
        hash: String,
    },
}

/// Why one incoming intention was refused. A refused intention changes nothing on disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The bytes are not a valid signed intention (includes limits: deps, payload size).
    #[error("malformed intention: {0}")]
    Decode(#[from] DecodeError),
    /// The bytes hash to something other than what the sender claimed.
    #[error("intention hashes to {actual}, but was sent as {claimed}")]
    HashMismatch {
        /// Short id of the claimed hash.
        claimed: String,
        /// Short id of the actual hash.
        actual: String,
    },
    /// The author's signature does not verify (or the author key is unusable).
    #[error("intention {hash} has a bad signature")]
    BadSignature {
        /// Short id of the intention.
        hash: String,
    },
    /// The intention belongs to another store.
    #[error("intention {hash} belongs to store {found}, not {expected}")]
    WrongStore {
        /// Short id of the intention.
        hash: String,
        /// Short id of this store.
        expected: String,
        /// Short id of the store it names.
        found: String,
    },
    /// The HLC is further ahead of the local clock than allowed; retry later.
    #[error(
        "intention {hash} is dated {hlc}, more than the allowed drift ahead of now ({now_ms} ms)"
    )]
    TooFarInFuture {
        /// Short id of the intention.
        hash: String,
        /// Its timestamp.
        hlc: Hlc,
        /// The local wall clock.
        now_ms: u64,
    },
    /// The author already has a different intention after the same predecessor (a fork).
    #[error("intention {hash} forks author {author}'s chain after {prev}")]
    ForkedChain {
        /// Short id of the intention.
        hash: String,
        /// Short id of the author.
        author: String,
        /// Short id of the predecessor (or zero).
        prev: String,
    },
    /// The intention would fork an author's chain at a position a finalized epoch reaches:
    /// it would change history every member signed off.
    #[error(
        "intention {hash} would change author {author}'s chain at position {position}, below a finalized epoch"
    )]
    BelowFinal {
        /// Short id of the intention.
        hash: String,
        /// Short id of the author.
        author: String,
        /// The chain position it claims.
        position: u64,
    },
    /// The intention lies at or below what this log pruned (a final epoch reaches it and it
    /// was deleted here, or it forks the chain there): it is not needed, and never stored again.
    #[error("intention {hash} of author {author} lies below what this log pruned")]
    Pruned {
        /// Short id of the intention.
        hash: String,
        /// Short id of the author.
        author: String,
    },
    /// An intention a pruned peer sent to root this log ([`crate::Log::root`]) that cannot
    /// stand on its floor: a parent is missing where the floor says nothing was pruned, its
    /// stated chain position contradicts the chain, or the log is rooted at another floor.
    #[error("intention {hash} cannot be rooted here: {reason}")]
    Unrooted {
        /// Short id of the intention.
        hash: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The predecessor named in `prev` was written by another author.
    #[error("intention {hash} names {prev}, an intention of another author, as its predecessor")]
    ForeignPredecessor {
        /// Short id of the intention.
        hash: String,
        /// Short id of the predecessor.
        prev: String,
    },
    /// The HLC is not greater than the HLC of its predecessor or of every cited dep.
    #[error("intention {hash} is not dated after its predecessor and deps")]
    NotAfterParents {
        /// Short id of the intention.
        hash: String,
    },
}

impl IngestError {
    /// Returns true when the same bytes may be accepted later (clock drift), false when they
    /// are invalid for good.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IngestError::TooFarInFuture { .. })
    }
}

/// Authoring a local intention failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorError {
    /// A cited dep is not witnessed in this log.
    #[error("cannot cite {0}: it is not witnessed here")]
    UnknownDep(Hash),
    /// The intention breaks a structural rule (limits).
    #[error(transparent)]
    Intention(#[from] IntentionError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A built intention no longer continues this node's chain (another local write was
    /// witnessed first), or follows one that did not.
    #[error("intention {0} was built on a stale chain tip")]
    Stale(Hash),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] Error),
}

/// A DAG query could not be answered.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The intention is not witnessed in this log.
    #[error("intention {0} is not witnessed here")]
    Unknown(Hash),
    /// The query would visit more intentions than the configured cap.
    #[error("query visited more than {0} intentions")]
    TooLarge(usize),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] Error),
}

/// The crate's umbrella error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// redb or the file system failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// On-disk data contradicts itself.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// The ingest actor has stopped (the log was closed or its thread died).
    #[error("the log is closed")]
    Closed,
    /// An internal invariant broke; the operation was abandoned.
    #[error("internal error: {what}")]
    Internal {
        /// What broke.
        what: &'static str,
    },
}

impl From<redb::Error> for Error {
    fn from(err: redb::Error) -> Error {
        Error::Storage(storage(err))
    }
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
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

macro_rules! bug {
    ($what:expr) => {{
        debug_assert!(false, "{}", $what);
        $crate::error::Error::Internal { what: $what }
    }};
}
pub(crate) use bug;

impl From<crate::file::FileError> for OpenError {
    fn from(err: crate::file::FileError) -> OpenError {
        use crate::file::FileError;
        match err {
            FileError::AlreadyOpen { path } => OpenError::AlreadyOpen { path },
            FileError::Damaged { path, reason } => OpenError::Damaged { path, reason },
            FileError::Io { source, .. } => OpenError::Storage(storage(redb::Error::Io(source))),
        }
    }
}
