//! The layout of a node's data directory.

use std::path::{Path, PathBuf};

use lattice_model::{NodeKey, StoreId};

use crate::identity::{self, IdentityError};

/// A node's data directory. Everything the node keeps lives under it:
///
/// ```text
/// <root>/identity.key             node key (32-byte seed, mode 0600)
/// <root>/stores/<store id>/log.db the store's log
/// <root>/stores/<store id>/state.db the store's projected state
/// <root>/modules/<hash>.wasm      installed store types (cache/ holds compiled code)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Names a data directory (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the identity key file.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// Directory holding every store.
    pub fn stores_dir(&self) -> PathBuf {
        self.root.join("stores")
    }

    /// Directory of one store.
    pub fn store_dir(&self, store: &StoreId) -> PathBuf {
        self.stores_dir().join(store.to_string())
    }

    /// Where a store's files wait while it catches up through a snapshot
    /// ([`crate::Node::rebase_on_snapshot`]); not a store directory.
    pub fn behind_dir(&self, store: &StoreId) -> PathBuf {
        self.stores_dir().join(format!("{store}.behind"))
    }

    /// The node's blob store (`lattice-cas`).
    pub fn cas_dir(&self) -> PathBuf {
        self.root.join("cas")
    }

    /// Path of one store's `log.db`.
    pub fn log_path(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("log.db")
    }

    /// Path of one store's `state.db`.
    pub fn state_path(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("state.db")
    }

    /// Path of one store's `system.db` (its projected system partition).
    pub fn system_path(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("system.db")
    }

    /// Path of one store's `epoch-state.db`: its data partition at the newest epoch.
    pub fn epoch_state_path(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("epoch-state.db")
    }

    /// Path of one store's `epoch-system.db`: its system partition at the newest epoch.
    pub fn epoch_system_path(&self, store: &StoreId) -> PathBuf {
        self.store_dir(store).join("epoch-system.db")
    }

    /// Path of the node inventory `meta.db`.
    pub fn meta_path(&self) -> PathBuf {
        self.root.join("meta.db")
    }

    /// Directory of installed modules (and their compiled cache).
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// Loads the node key, creating the directory and a fresh key on first use.
    ///
    /// # Errors
    /// [`IdentityError`] when the file cannot be read or written, is malformed, or is readable
    /// by other users.
    pub fn load_or_create_identity(&self) -> Result<NodeKey, IdentityError> {
        identity::load_or_create(&self.identity_path())
    }

    /// Creates the node key from `seed` rather than the system's randomness (simulated
    /// nodes: the same keys on every run of a seed).
    ///
    /// # Errors
    /// [`IdentityError`] when the key file exists already or cannot be written.
    pub fn create_identity(&self, seed: [u8; 32]) -> Result<NodeKey, IdentityError> {
        identity::create(&self.identity_path(), seed)
    }
}
