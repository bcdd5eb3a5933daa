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
    /// A DAG query on the log failed.
    #[error(transparent)]
    Query(#[from] lattice_log::QueryError),
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
    /// The network endpoint could not be started.
    #[error("network: {0}")]
    Net(#[from] lattice_net::NetError),
    /// Replication failed (a store could not be registered, a session failed).
    #[error(transparent)]
    Replica(#[from] lattice_net::ReplicaError),
    /// The inviter could not be reached.
    #[error("could not reach the inviter {inviter}: {source}")]
    InviterUnreachable {
        /// The inviter's short key.
        inviter: String,
        /// What failed.
        #[source]
        source: lattice_net::ReplicaError,
    },
    /// Fetching a joined store from the inviter failed.
    #[error("bootstrap failed: {0}")]
    Bootstrap(#[source] lattice_net::ReplicaError),
    /// The blob store failed, or this node has none.
    #[error("blobs: {0}")]
    Blob(#[from] lattice_cas::CasError),
    /// No peer of the store could give a blob.
    #[error("no peer of the store could give blob {hash}: {source}")]
    BlobUnavailable {
        /// Short hash of the blob.
        hash: String,
        /// What the last attempt said.
        #[source]
        source: lattice_net::ReplicaError,
    },
    /// The system has no randomness to draw an invite secret from.
    #[error("no randomness for an invite secret: {0}")]
    Randomness(String),
    /// The store is not open on this node (archived, left, or unknown).
    #[error("store {0} is not open on this node; `lattice store list` shows its state")]
    NotOpen(String),
    /// The store's files are damaged; it is not served until repaired.
    #[error(
        "store {store} is damaged and not served: {reason}; run `lattice store repair {store}`"
    )]
    Damaged {
        /// The store's short id.
        store: String,
        /// What was found.
        reason: String,
    },
    /// The store's genesis has not arrived yet (a child store being fetched).
    #[error("store {0} is still being fetched from its peers; try again shortly")]
    NotReady(String),
    /// The store inherits its peers from its parent.
    #[error(
        "this store shares its parent's peers; invite to or revoke from the parent {0} instead"
    )]
    InheritedPeers(String),
    /// An invite token could not be read.
    #[error(transparent)]
    Token(#[from] crate::invite::TokenError),
    /// The invite's expiry has passed.
    #[error("this invite has expired; ask the inviter for a new one")]
    InviteExpired,
    /// The inviter refused the join.
    #[error("the inviter refused: {0}")]
    JoinRefused(String),
    /// The store is already open here.
    #[error("this node is already a peer of store {0}")]
    AlreadyMember(String),
    /// Archiving applies to child stores only.
    #[error(
        "store {0} is a root store; only child stores are archived (leave a root store instead)"
    )]
    NotAChild(String),
    /// Deleting needs the store closed first.
    #[error("store {0} is open; archive or leave it before deleting its data")]
    StillOpen(String),
    /// The write was authored and witnessed, but it is not part of the store's state: the
    /// guest or the membership policy rejected it (every peer rejects it alike).
    #[error("rejected: {reason} (intention {hash}, not applied)")]
    Rejected {
        /// Why it was rejected.
        kind: RejectKind,
        /// The intention.
        hash: lattice_model::Hash,
        /// The reason the guest or the policy gave.
        reason: String,
    },
    /// The system table answered in a shape the node does not understand.
    #[error("the system table's `{query}` answer is malformed: {reason}")]
    SystemShape {
        /// The query.
        query: String,
        /// What was wrong.
        reason: String,
    },
    /// The peer named is not a peer of the store.
    #[error("{0} is not a peer of this store; `lattice store peers` lists them")]
    NotAPeer(String),
    /// A node cannot revoke itself.
    #[error("this node cannot revoke itself; use `lattice store leave` to leave the store")]
    RevokeSelf,
    /// History below the store's prune floor is gone here and the state at the epoch that
    /// replaces it is missing or damaged: the store must be fetched again from a peer.
    #[error(
        "store {0}: its history was pruned and the state at its epoch is missing; leave the store and join it again from a peer"
    )]
    PrunedStateMissing(String),
    /// A snapshot offered to join a store was not taken (nothing of it was kept).
    #[error("store {store}: the snapshot was refused: {why}")]
    SnapshotRefused {
        /// Short id of the store.
        store: String,
        /// Why.
        why: String,
    },
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

/// Why a write was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectKind {
    /// The store type's guest (or the system table's write policy) refused it.
    Guest,
    /// The author is not a member of the store.
    NotMember,
    /// The author was revoked.
    Revoked,
}

impl RejectKind {
    /// A stable machine-readable code (`rejected`, `not_member`, `revoked`).
    pub fn code(self) -> &'static str {
        match self {
            RejectKind::Guest => "rejected",
            RejectKind::NotMember => "not_member",
            RejectKind::Revoked => "revoked",
        }
    }
}

impl From<lattice_log::file::FileError> for NodeError {
    fn from(err: lattice_log::file::FileError) -> NodeError {
        NodeError::Runtime(lattice_runtime::Error::File(err))
    }
}
