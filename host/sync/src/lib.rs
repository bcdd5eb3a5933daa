//! Lattice replication as message state machines, with no network code: each protocol is a
//! pair of ends that turn incoming messages into outgoing ones, so two ends can be wired
//! together in memory (tests) or over a transport (`lattice-net`, later).
//!
//! **Owns:** set reconciliation of *witnessed* intentions with Negentropy (protocol v1; items
//! are `(HLC wall ms, intention hash)`), over the log's persisted sync index
//! ([`lattice_log::SyncSnapshot`]) so no round reads the whole log; the session protocol
//! ([`Msg`]): fetch of wanted intentions and of missing causal chains, bootstrap from witness
//! records, pushes, and the two-sided done exchange; snapshot fetches (an opaque encoded
//! snapshot in parts, [`fetch_snapshot`]); gossip messages ([`GossipMsg`]).
//!
//! **Does not touch:** sockets, tokio, iroh. Sessions run over any [`Frames`] carrier and
//! write to the log only through its validated ingest path.
//!
//! **Blocking:** the state machines are synchronous; sessions are `async` but read the log
//! (redb) inline, which blocks briefly on disk I/O.
//!
//! **Errors:** [`SyncError`].
//!
//! **Features:** none.
//!
//! ```no_run
//! # fn demo(a: &lattice_log::LogReader, b: &lattice_log::LogReader) -> Result<(), lattice_sync::SyncError> {
//! use lattice_sync::{Initiator, Responder, FRAME_LIMIT};
//!
//! let (mut client, mut msg) = Initiator::start(a.sync_snapshot()?, FRAME_LIMIT)?;
//! let mut server = Responder::new(b.sync_snapshot()?, FRAME_LIMIT)?;
//! loop {
//!     let reply = server.respond(&msg)?;
//!     let step = client.step(&reply)?;
//!     // step.have: hashes only the client has; step.need: hashes only the server has
//!     match step.next {
//!         Some(next) => msg = next,
//!         None => break,
//!     }
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod reconcile;
mod session;
mod snapshot;
mod wire;

pub use reconcile::{FRAME_LIMIT, Initiator, ItemSet, Responder, Step, SyncError, VecSet};
pub use session::{
    Frames, LinkError, Opening, PRUNED_RECORDS, SessionError, SessionOptions, SessionReport,
    UNLISTED, accept, bootstrap, fetch_chain, reconcile, refuse, request_join, serve,
    serve_unlisted, welcome,
};
pub use snapshot::{fetch_snapshot, no_snapshot, send_snapshot};
pub use wire::{
    BATCH_BYTES, FrameError, GossipMsg, MAX_BLOB_RANGES, MAX_FRAME, MAX_GOSSIP, MAX_HASHES,
    MAX_JOIN_CHILDREN, Msg, SESSION_VERSION, SNAPSHOT_PART,
};
