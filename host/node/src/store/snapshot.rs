//! Snapshots: the state at a final epoch together with what a member still holds of the log,
//! so a node joins a pruned store without its history (docs/epochs.md, "Snapshots").
//!
//! The member sends its prune floor, the data partition's state at its current epoch (which
//! must be final: settled, and every required member stated the same hash of that state)
//! and every intention it holds, in its witness order, with chain positions. The joiner roots
//! its log on the floor ([`lattice_log::Log::root`]), makes the snapshot its state at the
//! epoch, projects the system partition from the log (never pruned) and the tail on top of
//! the snapshot, and then checks that the hash of its state at the epoch equals the one the
//! members signed in the epoch and its acks; otherwise the store is removed again.

use std::collections::HashMap;

use lattice_log::{FloorMarks, Log, RootedItem};
use lattice_model::{Hash, PubKey, StoreId};
use lattice_runtime::{StateRows, StoreRuntime};

use super::{Store, epoch_state};
use crate::error::NodeError;

/// Held intentions read (and rooted) per batch.
const BATCH: usize = 2048;

/// The state at a final epoch and what a member holds of the log ([`Store::snapshot`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The store.
    pub store: StoreId,
    /// The final epoch the state is at.
    pub epoch: Hash,
    /// The member's prune floor (empty when it pruned nothing).
    pub floor: FloorMarks,
    /// The data partition's state at the epoch.
    pub state: StateRows,
    /// Every intention the member holds, in its witness order, with chain positions.
    pub held: Vec<RootedItem>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("store", &self.store)
            .field("epoch", &self.epoch)
            .field("floor", &self.floor.len())
            .field("rows", &self.state.data.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Bytes of state and intentions carried (what a transfer costs, roughly).
    pub fn size(&self) -> usize {
        let state: usize = self.state.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        let log: usize = self.state.log.iter().map(Vec::len).sum();
        let held: usize = self.held.iter().map(|i| i.bytes.len() + 8).sum();
        state + log + held
    }
}

fn refused(store: StoreId, why: impl Into<String>) -> NodeError {
    NodeError::SnapshotRefused {
        store: store.short(),
        why: why.into(),
    }
}

impl Store {
    /// A snapshot of this store at its current epoch, for a node joining it.
    ///
    /// # Errors
    /// [`NodeError::SnapshotRefused`] when the current epoch is not final here (or there is
    /// none) or the store runs headless; storage failures.
    pub fn snapshot(&mut self) -> Result<Snapshot, NodeError> {
        self.open_epoch_state()?;
        let status = self
            .epoch()?
            .ok_or_else(|| refused(self.id, "it has no epoch yet"))?;
        if !status.finalized {
            return Err(refused(self.id, "its current epoch is not final"));
        }
        let Some((data, _)) = self.epochs.state.as_ref() else {
            return Err(refused(self.id, "it holds no state at an epoch"));
        };
        let state = data.state_rows()?;
        let reader = self.log.reader();
        let floor = reader.prune_floor()?;
        let mut held = Vec::new();
        let mut from = 1;
        loop {
            let batch = reader.witnessed(from, BATCH)?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            for (_, signed) in batch {
                let info = reader
                    .dag_info(&signed.hash())?
                    .ok_or_else(|| refused(self.id, "a held intention has no chain position"))?;
                held.push(RootedItem {
                    bytes: signed.as_bytes().to_vec(),
                    position: info.author_seq,
                });
            }
            from = last + 1;
        }
        Ok(Snapshot {
            store: self.id,
            epoch: status.hash,
            floor,
            state,
            held,
        })
    }

    /// Checks, after the store opened on a snapshot, that the hash of its state at the
    /// snapshot's epoch is the one every required member signed (the epoch is final here).
    pub(crate) fn check_snapshot(&mut self, epoch: &Hash) -> Result<(), NodeError> {
        let status = self
            .epoch()?
            .ok_or_else(|| refused(self.id, "no epoch was projected from it"))?;
        if status.hash != *epoch {
            return Err(refused(
                self.id,
                "its epoch is not the store's current epoch",
            ));
        }
        if !status.disagreeing.is_empty() || status.state.is_none() {
            return Err(refused(
                self.id,
                "its state does not hash to what the members signed",
            ));
        }
        if !status.finalized {
            return Err(refused(self.id, "its epoch is not final"));
        }
        Ok(())
    }
}

/// Roots `log` (fresh) on `snapshot`'s floor with the intentions it holds and makes its state
/// the state at the epoch in `epoch_state_path` (projected by `module`'s runtime). The store
/// opened on the log afterwards restores its live state from there; check it with
/// `Store::check_snapshot`.
pub(crate) fn install(
    log: &Log,
    snapshot: &Snapshot,
    runtime: &lattice_runtime::Runtime,
    epoch_state_path: &std::path::Path,
    module: lattice_runtime::ModuleHash,
) -> Result<(), NodeError> {
    let store = snapshot.store;
    for chunk in snapshot.held.chunks(BATCH) {
        for result in log.root(&snapshot.floor, chunk.to_vec())? {
            result.map_err(|e| refused(store, e.to_string()))?;
        }
    }
    let reader = log.reader();
    let epoch = reader
        .dag_info(&snapshot.epoch)?
        .ok_or_else(|| refused(store, "its epoch is not among the intentions it holds"))?;
    let reach: HashMap<PubKey, u64> = reader.reach(&snapshot.epoch)?.into_iter().collect();
    let mut pending = Vec::new();
    let mut from = 1;
    while from <= epoch.seq {
        let batch = reader.witnessed(from, BATCH)?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        for (seq, signed) in batch.into_iter().filter(|(seq, _)| *seq <= epoch.seq) {
            let position = reader.dag_info(&signed.hash())?.map_or(0, |i| i.author_seq);
            let author = signed.intention().author();
            if reach.get(&author).is_none_or(|r| position > *r) {
                pending.push(seq);
            }
        }
        from = last + 1;
    }
    let mut at = StoreRuntime::open(runtime, epoch_state_path, store, module)?;
    if at.is_headless() {
        return Err(refused(store, "its store type is not installed here"));
    }
    epoch_state::load(&mut at, &snapshot.state, snapshot.epoch, epoch.seq, pending)?;
    at.flush()?;
    Ok(())
}
