//! The ops of a store's genesis intention: which module the store runs, and its name.
//!
//! Layout: magic `"LSG1"` | module hash [32] | name (UTF-8, the rest, at most 256 bytes).

use lattice_runtime::ModuleHash;

const MAGIC: &[u8; 4] = b"LSG1";

/// What a store's genesis records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreGenesis {
    /// The module (store type) every peer projects this store with.
    pub module: ModuleHash,
    /// A human name for the store.
    pub name: String,
}

impl StoreGenesis {
    /// Encodes as genesis ops.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.module.0);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Decodes genesis ops; `None` when they are not a Lattice store genesis.
    pub fn decode(ops: &[u8]) -> Option<StoreGenesis> {
        let rest = ops.strip_prefix(MAGIC.as_slice())?;
        let module = ModuleHash(rest.get(..32)?.try_into().ok()?);
        let name = std::str::from_utf8(rest.get(32..)?).ok()?.to_string();
        Some(StoreGenesis { module, name })
    }
}
