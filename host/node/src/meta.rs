//! `meta.db`: the node's inventory — every store this node keeps (root or child, its parent,
//! module, and whether it is open, archived or left) and the node's name.
//!
//! Tables (redb): `stores` (store id [32] → record), `settings` (text → text), `addrs` (peer
//! key [32] → its last known direct addresses, `PeerAddr` text).
//! Record layout: `1u8 | state u8 (0 active, 1 archived, 2 left) | has_parent u8 |
//! parent [32] | module [32] | name (UTF-8, the rest)`.

use std::path::Path;

use lattice_model::StoreId;
use lattice_runtime::ModuleHash;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::error::NodeError;

const STORES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("stores");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const ADDRS: TableDefinition<&[u8; 32], &str> = TableDefinition::new("addrs");

/// Whether a store is in use on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// Open and replicated while the node runs.
    Active,
    /// Archived by its parent: closed here, data kept.
    Archived,
    /// This node left it: closed, data kept for a re-join.
    Left,
}

impl StoreState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Active => "active",
            StoreState::Archived => "archived",
            StoreState::Left => "left",
        }
    }
}

/// One store in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRecord {
    /// The store.
    pub id: StoreId,
    /// Its parent (`None`: a root store).
    pub parent: Option<StoreId>,
    /// Its module.
    pub module: ModuleHash,
    /// Its name when last seen.
    pub name: String,
    /// Open, archived or left.
    pub state: StoreState,
}

impl StoreRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            1,
            match self.state {
                StoreState::Active => 0,
                StoreState::Archived => 1,
                StoreState::Left => 2,
            },
            u8::from(self.parent.is_some()),
        ];
        out.extend_from_slice(&self.parent.map_or([0; 32], |p| p.0));
        out.extend_from_slice(&self.module.0);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    fn decode(id: StoreId, bytes: &[u8]) -> Option<StoreRecord> {
        let (&[1, state, has_parent], rest) = bytes.split_first_chunk::<3>()? else {
            return None;
        };
        let (parent, rest) = rest.split_first_chunk::<32>()?;
        let (module, name) = rest.split_first_chunk::<32>()?;
        Some(StoreRecord {
            id,
            parent: (has_parent == 1).then_some(StoreId(*parent)),
            module: ModuleHash(*module),
            name: String::from_utf8(name.to_vec()).ok()?,
            state: match state {
                0 => StoreState::Active,
                1 => StoreState::Archived,
                2 => StoreState::Left,
                _ => return None,
            },
        })
    }
}

/// The opened `meta.db`.
#[derive(Debug)]
pub struct MetaDb {
    db: Database,
    /// Last: written once the database above has closed.
    _clean: lattice_log::file::CleanMark,
}

fn storage(e: impl Into<redb::Error>) -> NodeError {
    NodeError::Meta(e.into().to_string())
}

impl MetaDb {
    /// Opens (creating) `meta.db` at `path`.
    ///
    /// # Errors
    /// [`NodeError::Meta`] when it cannot be opened, e.g. because another process has it open.
    pub fn open(path: &Path) -> Result<MetaDb, NodeError> {
        use lattice_log::file::{FileError, contain, open_checked};
        let db = open_checked(path, &redb::Builder::new()).map_err(|e| match e {
            FileError::AlreadyOpen { .. } => {
                NodeError::Locked(path.parent().unwrap_or(path).display().to_string())
            }
            FileError::Io { path, source } => NodeError::Io { path, source },
            damaged => NodeError::from(damaged),
        })?;
        contain(path, || create_tables(&db))?;
        Ok(MetaDb {
            db,
            _clean: lattice_log::file::CleanMark::new(path),
        })
    }
}

/// Creates the inventory's tables.
fn create_tables(db: &Database) -> Result<(), NodeError> {
    let mut txn = db.begin_write().map_err(storage)?;
    // Creating the tables needs no fsync: lost in a crash, they are created again, and the
    // next durable commit persists them with it.
    txn.set_durability(redb::Durability::None)
        .map_err(storage)?;
    txn.open_table(STORES).map_err(storage)?;
    txn.open_table(SETTINGS).map_err(storage)?;
    txn.open_table(ADDRS).map_err(storage)?;
    txn.commit().map_err(storage)
}

impl MetaDb {
    /// Adds or replaces a store's record.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn put(&self, record: &StoreRecord) -> Result<(), NodeError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(STORES)
            .map_err(storage)?
            .insert(&record.id.0, record.encode().as_slice())
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// A store's record.
    ///
    /// # Errors
    /// [`NodeError::Meta`], also for a malformed record.
    pub fn get(&self, id: &StoreId) -> Result<Option<StoreRecord>, NodeError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(STORES).map_err(storage)?;
        let Some(v) = table.get(&id.0).map_err(storage)? else {
            return Ok(None);
        };
        StoreRecord::decode(*id, v.value())
            .map(Some)
            .ok_or_else(|| NodeError::Meta(format!("record of store {} is malformed", id.short())))
    }

    /// Every store record, by id.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn list(&self) -> Result<Vec<StoreRecord>, NodeError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(STORES).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let id = StoreId(*k.value());
            out.push(StoreRecord::decode(id, v.value()).ok_or_else(|| {
                NodeError::Meta(format!("record of store {} is malformed", id.short()))
            })?);
        }
        Ok(out)
    }

    /// Removes a store's record.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn remove(&self, id: &StoreId) -> Result<(), NodeError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(STORES)
            .map_err(storage)?
            .remove(&id.0)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// A setting.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn setting(&self, key: &str) -> Result<Option<String>, NodeError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SETTINGS).map_err(storage)?;
        Ok(table
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_string()))
    }

    /// Sets a setting.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), NodeError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(SETTINGS)
            .map_err(storage)?
            .insert(key, value)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }
}

impl MetaDb {
    /// Remembers how to reach a peer (`PeerAddr` text).
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn set_addr(&self, peer: &lattice_model::PubKey, addr: &str) -> Result<(), NodeError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(ADDRS)
            .map_err(storage)?
            .insert(&peer.0, addr)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Every remembered peer address (`PeerAddr` text).
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn addrs(&self) -> Result<Vec<String>, NodeError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(ADDRS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            out.push(row.map_err(storage)?.1.value().to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaDb::open(&dir.path().join("meta.db")).unwrap();
        let rec = StoreRecord {
            id: StoreId([1; 32]),
            parent: Some(StoreId([2; 32])),
            module: ModuleHash([3; 32]),
            name: "notes".into(),
            state: StoreState::Archived,
        };
        meta.put(&rec).unwrap();
        assert_eq!(meta.get(&rec.id).unwrap(), Some(rec.clone()));
        assert_eq!(meta.list().unwrap(), vec![rec]);
        meta.set_setting("name", "laptop").unwrap();
        assert_eq!(meta.setting("name").unwrap().as_deref(), Some("laptop"));
        assert!(matches!(
            MetaDb::open(&dir.path().join("meta.db")),
            Err(NodeError::Locked(_))
        ));
    }
}
