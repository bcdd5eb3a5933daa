//! The Lattice blob store: content-addressed (BLAKE3) blobs on disk, each reachable only by
//! the stores that hold it, with pins, declared references and verified range reads.
//!
//! **Owns:** one directory per node: `cas.db` (redb index: blobs and each store's hold on
//! them with pins, references and when it began), `blobs/<shard>/<hash>.data` and `.obao`
//! (the bytes and their BLAKE3 hash tree, a bao-tree pre-order outboard at 16 KiB
//! granularity), `tmp/` for puts under way.
//!
//! **Does not touch:** logs, state, guests, the network. Which blobs a store references and
//! how blobs travel between nodes are decided above (the node and the replicator).
//!
//! **Blocking:** every call blocks on disk I/O; run it on a blocking thread. Puts stream
//! (64 KiB at a time) and reads verify and write 1 MiB at a time: memory does not grow with
//! a blob's size.
//!
//! **Errors:** [`CasError`].
//!
//! **Features:** none. Verified streaming is `bao-tree` (the BLAKE3 tree encoding iroh-blobs
//! is built on), used directly: its synchronous outboard and range encoding fit a blocking
//! store without pulling in iroh-blobs' own store and protocol (docs/architecture.md).
//!
//! ```no_run
//! use lattice_cas::Cas;
//! use lattice_model::StoreId;
//!
//! let cas = Cas::open("cas".as_ref())?;
//! let store = StoreId([1; 32]);
//! let blob = cas.put(&store, &b"hello blobs"[..])?;
//! let mut out = Vec::new();
//! cas.read(&store, &blob.hash, 6..11, &mut out)?;
//! assert_eq!(out, b"blobs");
//! # Ok::<(), lattice_cas::CasError>(())
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cas;
mod error;
mod index;
mod transfer;
mod verify;

pub use bao_tree::{ChunkNum, ChunkRanges};
pub use cas::{BlobInfo, BlobWriter, Cas, CollectReport};
pub use error::CasError;
pub use transfer::{BadPart, Finished, IncomingBlob, SmallBlob};
