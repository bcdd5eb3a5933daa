//! The Lattice node: its data directory and identity. (The store manager, peers and the
//! hierarchy of stores arrive with later milestones.)
//!
//! **Owns:** the layout of a node's data directory ([`DataDir`]), the identity key file
//! `identity.key` (32-byte Ed25519 seed, mode 0600), and the embedded-mode [`Node`]: creating
//! stores (genesis records the module), opening them, and the [`Store`] call path that joins a
//! store's log and its Wasm runtime.
//!
//! **Does not touch:** wire encodings, guest internals, log internals.
//!
//! **Blocking:** file I/O only; all calls are synchronous.
//!
//! **Errors:** [`IdentityError`], [`NodeError`].
//!
//! **Features:** none.
//!
//! ```no_run
//! use lattice_node::DataDir;
//!
//! let dir = DataDir::new("/tmp/lattice-node-a");
//! let key = dir.load_or_create_identity()?;
//! println!("node {}", key.public());
//! # Ok::<(), lattice_node::IdentityError>(())
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod actor;
mod data_dir;
mod error;
mod genesis;
mod identity;
mod invite;
mod manager;
mod meta;
mod node;
mod store;

pub use actor::FLUSH_INTERVAL;
pub use data_dir::DataDir;
pub use error::{NodeError, RejectKind};
pub use genesis::StoreGenesis;
pub use identity::IdentityError;
pub use invite::{InviteToken, MAX_ADDRS, TokenError};
pub use manager::{BLOB_GRACE, COLLECT_EVERY, Joined, NodeEvent, StoreManager, WATCH_BUFFER};
pub use meta::{MetaDb, StoreRecord, StoreState};
pub use node::{Node, RepairReport, StoreSummary};
pub use store::{
    CallReply, ChildLink, ChildStatus, EpochStatus, IntentionSummary, MAX_LAG_SHOWN, PRUNE_STEP,
    PRUNE_STEP_BUDGET, PRUNE_STEP_FIRST, PeerInfo, PeerLag, PeerStatus, PruneReport,
    RejectedIntention, RunInFlight, RunStart, Snapshot, SnapshotDecodeError, Store, StoreInfo,
    StoreStatus, Strategy, Written,
};
