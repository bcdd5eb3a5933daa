//! The Lattice node: its data directory and identity. (The store manager, peers and the
//! hierarchy of stores arrive with later milestones.)
//!
//! **Owns:** the layout of a node's data directory ([`DataDir`]) and the identity key file
//! `identity.key` (32-byte Ed25519 seed, mode 0600).
//!
//! **Does not touch:** wire encodings, guest internals, log internals.
//!
//! **Blocking:** file I/O only; all calls are synchronous.
//!
//! **Errors:** [`IdentityError`].
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

mod data_dir;
mod identity;

pub use data_dir::DataDir;
pub use identity::IdentityError;
