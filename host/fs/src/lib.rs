//! A filesystem store (`--type fs`, `guests/fs`) mounted as a folder with FUSE (Linux).
//!
//! The mount translates kernel requests into the store's methods through the node's
//! [`StoreManager`](lattice_node::StoreManager): lookups, attributes and listings are queries of the guest's state;
//! reads of large files read ranges of the store's blobs (fetched from the store's peers on
//! demand); writes are buffered per open file in a spool file and committed as one write of
//! the store when the file is flushed (each `close`) or synced — a file over 64 KiB goes into
//! the blob store first and the write names it. Renames, removals, directories and links are
//! one store write each. See docs/fs.md.
//!
//! [`Mounts`] keeps the mounts of a node, records them in a file so mounts a crash left
//! behind are cleaned when the node starts again, and unmounts them all on stop.

mod error;
mod inodes;
mod mount;
mod mounts;

pub use error::MountError;
pub use mount::{FsMount, MountInfo};
pub use mounts::Mounts;
