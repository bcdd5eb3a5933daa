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

/// First bytes of an encoded snapshot, then the format version.
const MAGIC: &[u8; 4] = b"LSNP";
const VERSION: u8 = 1;

impl Snapshot {
    /// Encodes the snapshot: `"LSNP" | version 1 | store [32] | epoch [32] | n u32 |
    /// (author [32] | position u64 | hlc [12])·n | m u64 | (key len u32 | key | value len u32
    /// | value)·m | l u64 | (line len u32 | line)·l | h u64 | (position u64 | len u32 |
    /// signed intention)·h`, integers little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size() + 1024);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.store.as_bytes());
        out.extend_from_slice(self.epoch.as_bytes());
        out.extend_from_slice(&(self.floor.len() as u32).to_le_bytes());
        for (author, position, hlc) in &self.floor {
            out.extend_from_slice(author.as_bytes());
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&hlc.to_bytes());
        }
        out.extend_from_slice(&(self.state.data.len() as u64).to_le_bytes());
        for (k, v) in &self.state.data {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out.extend_from_slice(&(self.state.log.len() as u64).to_le_bytes());
        for line in &self.state.log {
            put_bytes(&mut out, line);
        }
        out.extend_from_slice(&(self.held.len() as u64).to_le_bytes());
        for item in &self.held {
            out.extend_from_slice(&item.position.to_le_bytes());
            put_bytes(&mut out, &item.bytes);
        }
        out
    }

    /// Decodes what [`Snapshot::encode`] wrote. Every count and length is checked against
    /// the bytes left, so damaged input is an error, never a huge allocation.
    ///
    /// # Errors
    /// [`SnapshotDecodeError`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotDecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(SnapshotDecodeError("not a snapshot"));
        }
        if r.take(1)? != [VERSION] {
            return Err(SnapshotDecodeError("an unknown snapshot version"));
        }
        let store = StoreId(r.array()?);
        let epoch = Hash(r.array()?);
        let n = u64::from(r.u32()?);
        let n = r.count(n, 52)?;
        let mut floor = Vec::with_capacity(n);
        for _ in 0..n {
            floor.push((
                PubKey(r.array()?),
                r.u64()?,
                lattice_model::Hlc::from_bytes(r.array()?),
            ));
        }
        let m = r.u64()?;
        let m = r.count(m, 8)?;
        let mut state = StateRows::default();
        for _ in 0..m {
            state.data.push((r.bytes()?, r.bytes()?));
        }
        let l = r.u64()?;
        let l = r.count(l, 4)?;
        for _ in 0..l {
            state.log.push(r.bytes()?);
        }
        let h = r.u64()?;
        let h = r.count(h, 12)?;
        let mut held = Vec::with_capacity(h);
        for _ in 0..h {
            let position = r.u64()?;
            held.push(RootedItem {
                bytes: r.bytes()?,
                position,
            });
        }
        if r.at != bytes.len() {
            return Err(SnapshotDecodeError("bytes after the end"));
        }
        Ok(Snapshot {
            store,
            epoch,
            floor,
            state,
            held,
        })
    }
}

/// A damaged or foreign encoded snapshot ([`Snapshot::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the snapshot is damaged: {0}")]
pub struct SnapshotDecodeError(&'static str);

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // rows and intentions are far below 4 GiB (redb values, intention size limit)
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], SnapshotDecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(SnapshotDecodeError("it ends early"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotDecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, SnapshotDecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotDecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&self, n: u64, min: usize) -> Result<usize, SnapshotDecodeError> {
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min as u64) > left {
            return Err(SnapshotDecodeError("a count larger than the bytes left"));
        }
        usize::try_from(n).map_err(|_| SnapshotDecodeError("a count larger than the bytes left"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SnapshotDecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
}

/// The error for a snapshot of `store` that is not taken, and why.
pub(crate) fn refused(store: StoreId, why: impl Into<String>) -> NodeError {
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
        each_held(reader, u64::MAX, |_, signed, position| {
            held.push(RootedItem {
                bytes: signed.as_bytes().to_vec(),
                position,
            });
        })?;
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

/// Calls `visit` with every intention `reader` holds up to seq `until`, in witness order,
/// with its seq and chain position, reading a batch at a time.
fn each_held(
    reader: &lattice_log::LogReader,
    until: u64,
    mut visit: impl FnMut(u64, &lattice_model::SignedIntention, u64),
) -> Result<(), NodeError> {
    let mut from = 1;
    while from <= until {
        let batch = reader.witnessed(from, BATCH)?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        for (seq, signed) in batch.iter().filter(|(seq, _)| *seq <= until) {
            let position = reader
                .dag_info(&signed.hash())?
                .ok_or(NodeError::Log(lattice_log::Error::Internal {
                    what: "a held intention has no chain position",
                }))?
                .author_seq;
            visit(*seq, signed, position);
        }
        from = last + 1;
    }
    Ok(())
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
    each_held(reader, epoch.seq, |seq, signed, position| {
        let author = signed.intention().author();
        if reach.get(&author).is_none_or(|r| position > *r) {
            pending.push(seq);
        }
    })?;
    let mut at = StoreRuntime::open(runtime, epoch_state_path, store, module)?;
    if at.is_headless() {
        return Err(refused(store, "its store type is not installed here"));
    }
    epoch_state::load(&mut at, &snapshot.state, snapshot.epoch, epoch.seq, pending)?;
    at.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            store: StoreId([7; 32]),
            epoch: Hash([8; 32]),
            floor: vec![(PubKey([1; 32]), 40, lattice_model::Hlc::new(5, 2))],
            state: StateRows {
                data: vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![])],
                log: vec![b"line".to_vec()],
            },
            held: vec![RootedItem {
                bytes: vec![9; 100],
                position: 3,
            }],
        }
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_an_error() -> Result<(), SnapshotDecodeError> {
        let snapshot = sample();
        let bytes = snapshot.encode();
        assert_eq!(Snapshot::decode(&bytes)?, snapshot);
        // Every truncation, and a trailing byte, is refused.
        for end in 0..bytes.len() {
            assert!(Snapshot::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Snapshot::decode(&longer).is_err());
        // A count far beyond the bytes left allocates nothing and fails.
        let mut huge = bytes.clone();
        let rows_at = 4 + 1 + 32 + 32 + 4 + 52;
        huge[rows_at..rows_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Snapshot::decode(&huge).is_err());
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert!(Snapshot::decode(&foreign).is_err());
        Ok(())
    }
}
