//! The Lattice log: one `log.db` (redb) per store holding signed intentions, the node's
//! witness log, floating intentions and the DAG index, written by one ingest actor with
//! group commit.
//!
//! **Owns:** `log.db` and its tables (listed in `docs/architecture.md`); the ingest actor
//! thread; validation of incoming intentions against the log (author chain, deps, HLC order,
//! duplicates); the floating set and its eviction; witnessing and attestation; DAG queries.
//!
//! **Does not touch:** `state.db`, guests, the network, other stores' logs.
//!
//! **Blocking:** [`Log::open`] and everything on [`LogReader`] block on disk I/O. Writes go
//! through the actor: [`Log::ingest`] and [`Log::author`] block until durable, while
//! [`Log::submit_ingest`] and [`Log::submit_author`] return a [`Pending`] that can be waited
//! on or `.await`ed from async code. No call holds a transaction across an `.await`.
//!
//! **Errors:** [`OpenError`] (opening), [`IngestError`] (one refused intention, nothing
//! stored), [`AuthorError`] (local writes), [`QueryError`] (DAG queries), [`Error`] (the
//! umbrella: storage, corruption, closed), [`CorruptError`] (what a check found).
//!
//! **Features:** none.
//!
//! ```no_run
//! use lattice_log::{Draft, Incoming, Log, LogConfig, build_genesis, system_now_ms};
//! use lattice_model::{NodeKey, StoreId};
//!
//! let key = NodeKey::from_seed([1; 32]);
//! let genesis = build_genesis(&key, b"kv".to_vec(), system_now_ms())?;
//! let store = StoreId::from(genesis.hash());
//! let log = Log::open("log.db".as_ref(), store, key, LogConfig::default())?;
//! log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
//! let written = log.author(Draft { ops: b"put a 1".to_vec(), ..Draft::default() })?;
//! assert!(log.reader().is_ancestor(&genesis.hash(), &written.hash)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod chain;
mod config;
mod dag;
mod error;
pub mod file;
mod ingest;
mod log;
mod prune;
mod reader;
mod rooted;
mod sync_index;
mod synth;
mod tables;
mod writer;

pub use chain::{Built, ChainBuilder};
pub use config::{Clock, LogConfig, system_now_ms};
pub use error::{
    AuthorError, CorruptError, Error, IngestError, OpenError, QueryError, StorageError,
};
pub use ingest::{Authored, BuiltOutcome, Draft, Incoming, IngestResults, Ingested, Pending};
pub use log::{Log, build_genesis};
pub use prune::{KeepFn, PruneStep, PruneTarget};
pub use reader::{DagInfo, LogReader, LogStatus, SeqBytes, VerifyReport};
pub use rooted::{FloorMarks, RootedItem};
pub use sync_index::{SyncItem, SyncSnapshot};
pub use synth::{SplitMix64, SyntheticDag};
