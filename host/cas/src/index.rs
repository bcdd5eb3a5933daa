//! `cas.db`: which blobs exist on disk and which stores hold them.
//!
//! - `blobs`: blob hash → size u64 ‖ holders u32 (how many stores hold it; the files go with
//!   the last).
//! - `entries`: store id ‖ blob hash → pins u32 ‖ refs u32 ‖ added ms u64. A store reaches
//!   a blob only through its own entry.
//! - `inline`: blob hash → bytes, for blobs of at most 16 KiB (no files).

use lattice_model::{Hash, StoreId};
use redb::{ReadableDatabase, TableDefinition};

use crate::error::CasError;

pub(crate) const BLOBS: TableDefinition<&[u8; 32], &[u8; 12]> = TableDefinition::new("blobs");
pub(crate) const ENTRIES: TableDefinition<&[u8; 64], &[u8; 16]> = TableDefinition::new("entries");
/// References a store's state declares to blobs it does not hold yet: (store ‖ hash) →
/// count. Moved onto the entry when the store comes to hold the blob.
pub(crate) const WANTED: TableDefinition<&[u8; 64], u32> = TableDefinition::new("wanted");
/// Blobs of at most [`INLINE_MAX`] bytes live here (hash → bytes), not in files: one commit
/// holds a small blob whole.
pub(crate) const INLINE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("inline");

/// Largest blob kept inline in the index (one 16 KiB hash-tree group: it needs no tree).
pub(crate) const INLINE_MAX: u64 = 16 * 1024;

/// One blob on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRow {
    pub(crate) size: u64,
    pub(crate) holders: u32,
}

impl BlobRow {
    pub(crate) fn encode(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.size.to_le_bytes());
        out[8..].copy_from_slice(&self.holders.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8; 12]) -> BlobRow {
        let mut size = [0u8; 8];
        let mut holders = [0u8; 4];
        size.copy_from_slice(&bytes[..8]);
        holders.copy_from_slice(&bytes[8..]);
        BlobRow {
            size: u64::from_le_bytes(size),
            holders: u32::from_le_bytes(holders),
        }
    }
}

/// One store's hold on a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRow {
    pub(crate) pins: u32,
    pub(crate) refs: u32,
    pub(crate) added_ms: u64,
}

impl EntryRow {
    pub(crate) fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.pins.to_le_bytes());
        out[4..8].copy_from_slice(&self.refs.to_le_bytes());
        out[8..].copy_from_slice(&self.added_ms.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8; 16]) -> EntryRow {
        let mut pins = [0u8; 4];
        let mut refs = [0u8; 4];
        let mut added = [0u8; 8];
        pins.copy_from_slice(&bytes[..4]);
        refs.copy_from_slice(&bytes[4..8]);
        added.copy_from_slice(&bytes[8..]);
        EntryRow {
            pins: u32::from_le_bytes(pins),
            refs: u32::from_le_bytes(refs),
            added_ms: u64::from_le_bytes(added),
        }
    }

    /// Nothing keeps it: no pin, no reference.
    pub(crate) fn is_loose(self) -> bool {
        self.pins == 0 && self.refs == 0
    }
}

/// The `entries` key of `store`'s hold on `hash`.
pub(crate) fn entry_key(store: &StoreId, hash: &Hash) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(store.as_bytes());
    key[32..].copy_from_slice(hash.as_bytes());
    key
}

/// The store and blob of an `entries` key.
pub(crate) fn split_entry_key(key: &[u8; 64]) -> (StoreId, Hash) {
    let mut store = [0u8; 32];
    let mut hash = [0u8; 32];
    store.copy_from_slice(&key[..32]);
    hash.copy_from_slice(&key[32..]);
    (StoreId(store), Hash(hash))
}

/// `store`'s entry for `hash`, and the blob's row.
pub(crate) fn lookup(
    db: &redb::Database,
    store: &StoreId,
    hash: &Hash,
) -> Result<Option<(EntryRow, BlobRow)>, CasError> {
    let txn = db.begin_read()?;
    let entries = txn.open_table(ENTRIES)?;
    let Some(entry) = entries.get(&entry_key(store, hash))? else {
        return Ok(None);
    };
    let entry = EntryRow::decode(entry.value());
    let blobs = txn.open_table(BLOBS)?;
    let blob = blobs
        .get(hash.as_bytes())?
        .map(|v| BlobRow::decode(v.value()));
    Ok(blob.map(|blob| (entry, blob)))
}
