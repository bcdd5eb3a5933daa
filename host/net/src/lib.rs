//! Lattice networking: how replicas reach each other.
//!
//! **Owns:** the [`Transport`] (authenticated connections carrying many framed
//! bidirectional streams) and [`Gossip`] (one topic per store) abstractions; two
//! implementations — [`IrohNet`] (QUIC via iroh and iroh-gossip, relays, discovery and port
//! mapping off, peers reached by direct addresses) and [`SimNetwork`] (in memory,
//! deterministic faults from a seed); and the [`Replicator`], which runs `lattice-sync`
//! sessions over them: serving, gossip with gap filling, anti-entropy, bootstrap, and
//! rate-limiting and banning of peers that send invalid data.
//!
//! **Does not touch:** store state, Wasm, who is allowed in a store (the node decides which
//! peers a store has).
//!
//! **Blocking:** async (tokio). Sessions read the log inline (short redb reads).
//!
//! **Errors:** [`NetError`], [`ReplicaError`].
//!
//! **Features:** none.
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod iroh;
mod mesh;
mod replicator;
mod sim;
mod transport;

pub use iroh::{ALPN, CONNECT_TIMEOUT, IrohNet};
pub use mesh::{Events, Mesh, MeshError, MeshNode, MeshTransport, sim_transport};
pub use replicator::{
    Access, FetchedBlob, JoinRequest, ReplicaError, ReplicaEvent, ReplicaStats, Replicator,
    ReplicatorConfig, SnapshotRequest, topic_of,
};
pub use sim::{SimConfig, SimNetwork, SimNode, SimStats, TraceDigest};
pub use transport::{
    BoxFuture, Connection, Gossip, GossipEvent, IDLE_TIMEOUT, NetError, PeerAddr, RecvHalf,
    SendHalf, Stream, Topic, Transport,
};
