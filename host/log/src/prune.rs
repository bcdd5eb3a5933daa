//! Pruning: deleting witnessed intentions that lie below a final epoch and that nothing
//! needs any more, in bounded steps on the ingest actor (each step one transaction between
//! write batches, so writes never wait for more than one step).
//!
//! An intention below the epoch (its chain position at most what the epoch reaches for its
//! author) is deleted — body, witness record, attestation, DAG entry, hash index entry,
//! checkpoint and sync-index item, the sync sums adjusted by subtraction — unless it is
//! - the genesis or an intention of the system partition (few, and replays of membership
//!   need them),
//! - its author's *boundary*, the newest of its intentions the epoch reaches (the author's
//!   next intention names it as `prev`), or
//! - one the caller keeps: the node keeps every intention its projected state still names
//!   (a key's current heads), since honest new writes cite those as deps.
//!
//! Kept intentions of the data partition and intentions not below the epoch (written
//! concurrently with it) are listed in `prune_pending` and looked at again by the next pass,
//! so what stays is what the state needs, not what history left. The pass's floor (per
//! author, the boundary's position and HLC) is recorded before anything under it goes: DAG
//! walks count a pruned parent as reaching the floor, and an arriving intention dated at or
//! before its author's boundary is refused as [`IngestError::Pruned`](crate::IngestError).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use lattice_model::{Hash, Hlc, PubKey, SignedIntention};
use redb::ReadableTable;

use crate::dag::DagRead;
use crate::error::{CorruptError, Error, QueryError};
use crate::sync_index;
use crate::tables::{
    DagEntry, META_COMPACT_DUE, META_PRUNE_FLOOR, META_PRUNE_PROGRESS, PruneFloor, PruneProgress,
};
use crate::writer::Batch;

/// True for an intention below the epoch that must stay (the caller's projected state still
/// names it).
pub type KeepFn = Arc<dyn Fn(&Hash) -> bool + Send + Sync>;

/// One prune request: [`crate::Log::prune`].
#[derive(Clone)]
pub struct PruneTarget {
    /// The epoch to prune below: a witnessed intention; what it reaches is below it. The
    /// caller checks it is final (every member acknowledged it and holds its state).
    pub epoch: Hash,
    /// Which intentions below the epoch stay besides the ones pruning always keeps.
    pub keep: KeepFn,
    /// At most this many intentions are looked at in one step (one transaction).
    pub step: usize,
}

impl std::fmt::Debug for PruneTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PruneTarget")
            .field("epoch", &self.epoch)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// What one prune step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Intentions looked at.
    pub scanned: u64,
    /// Intentions deleted.
    pub deleted: u64,
    /// Bytes of signed intentions deleted.
    pub bytes: u64,
    /// True when the pass is complete: nothing more below this epoch can go now.
    pub done: bool,
}

/// Entries looked for when finding the authors' boundaries below an epoch, besides a few per
/// author (an honest epoch cites every author's boundary, or a frontier intention does).
const BOUNDARY_WALK: usize = 1024;

impl Batch<'_, '_> {
    /// Runs one step of pruning below `target.epoch`.
    pub(crate) fn prune(&mut self, target: &PruneTarget) -> Result<PruneStep, QueryError> {
        let epoch_seq = self
            .tables
            .chain
            .seq_of(&target.epoch)?
            .ok_or(QueryError::Unknown(target.epoch))?;
        Ok(self.prune_below(epoch_seq, target)?)
    }

    fn prune_below(&mut self, epoch_seq: u64, target: &PruneTarget) -> Result<PruneStep, Error> {
        let mut progress = match self.tables.meta.get(META_PRUNE_PROGRESS)? {
            Some(v) => PruneProgress::decode(v.value())?,
            None => PruneProgress::default(),
        };
        if epoch_seq < progress.epoch_seq {
            // A newer epoch was pruned below already.
            return Ok(PruneStep {
                done: true,
                ..PruneStep::default()
            });
        }
        if epoch_seq != progress.epoch_seq {
            let floor = self.boundaries(epoch_seq)?;
            self.tables
                .meta
                .insert(META_PRUNE_FLOOR, floor.encode().as_slice())?;
            self.tables.chain.floor = crate::dag::Floor::Known(Arc::new(floor.frontier()));
            self.tables.floor = floor;
            progress = PruneProgress {
                epoch_seq,
                next_seq: progress.next_seq.max(1),
                pending_next: 0,
                pending_end: progress.next_seq.max(1),
            };
        }
        let positions: HashMap<PubKey, u64> = self
            .tables
            .floor
            .0
            .iter()
            .map(|(a, p, _)| (*a, *p))
            .collect();
        let mut step = PruneStep::default();
        let budget = target.step.max(1) as u64;
        // First what earlier passes kept, then what was witnessed since.
        while step.scanned < budget {
            let seqs: Vec<u64> = self
                .tables
                .prune_pending
                .range(progress.pending_next..progress.pending_end)?
                .take((budget - step.scanned) as usize)
                .map(|row| row.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            let Some(last) = seqs.last().copied() else {
                progress.pending_next = progress.pending_end;
                break;
            };
            for seq in seqs {
                step.scanned += 1;
                self.prune_one(seq, &positions, target, &mut step)?;
            }
            progress.pending_next = last + 1;
        }
        while step.scanned < budget && progress.next_seq < epoch_seq {
            let end = epoch_seq.min(progress.next_seq + (budget - step.scanned));
            for seq in progress.next_seq..end {
                step.scanned += 1;
                self.prune_one(seq, &positions, target, &mut step)?;
            }
            progress.next_seq = end;
        }
        step.done = progress.pending_next >= progress.pending_end && progress.next_seq >= epoch_seq;
        if step.deleted > 0 {
            self.tables
                .meta
                .insert(META_COMPACT_DUE, [1u8].as_slice())?;
        }
        self.tables
            .meta
            .insert(META_PRUNE_PROGRESS, progress.encode().as_slice())?;
        Ok(step)
    }

    /// The floor below the epoch at `epoch_seq`: per author, the newest position it reaches
    /// and that intention's HLC, found by a short walk down from the epoch (it cites every
    /// author's newest intention, directly or through frontier intentions). An author whose
    /// boundary the walk does not meet gets no floor, so nothing of it is pruned.
    fn boundaries(&mut self, epoch_seq: u64) -> Result<PruneFloor, Error> {
        let epoch = self.tables.chain.entry(epoch_seq)?.ok_or(Error::Internal {
            what: "a witnessed epoch has no dag entry",
        })?;
        let reach: HashMap<PubKey, u64> = self
            .frontiers
            .of(&self.tables.chain, epoch_seq, self.config.query_visit_cap)?
            .iter()
            .copied()
            .collect();
        let mut found: HashMap<PubKey, Hlc> = HashMap::new();
        // An author that did not move keeps the boundary it had.
        for (author, position, hlc) in &self.tables.floor.0 {
            if reach.get(author) == Some(position) {
                found.insert(*author, *hlc);
            }
        }
        let cap = BOUNDARY_WALK + 4 * reach.len();
        let mut seen = HashSet::from([epoch_seq]);
        let mut queue = VecDeque::from([(epoch_seq, epoch)]);
        while let Some((_, entry)) = queue.pop_front() {
            if found.len() == reach.len() {
                break;
            }
            if reach.get(&entry.author) == Some(&entry.author_seq) {
                found.entry(entry.author).or_insert(entry.hlc);
            }
            for p in entry.parents {
                if seen.len() >= cap {
                    break;
                }
                if seen.insert(p)
                    && let Some(e) = self.tables.chain.entry(p)?
                {
                    queue.push_back((p, e));
                }
            }
        }
        let mut floor: Vec<(PubKey, u64, Hlc)> = found
            .into_iter()
            .filter_map(|(author, hlc)| reach.get(&author).map(|p| (author, *p, hlc)))
            .collect();
        floor.sort_unstable_by_key(|(a, _, _)| *a);
        Ok(PruneFloor(floor))
    }

    /// Looks at the intention at `seq`: deletes it, keeps it for the next pass, or leaves it.
    fn prune_one(
        &mut self,
        seq: u64,
        positions: &HashMap<PubKey, u64>,
        target: &PruneTarget,
        step: &mut PruneStep,
    ) -> Result<(), Error> {
        let Some(entry) = self.tables.chain.entry(seq)? else {
            self.tables.prune_pending.remove(seq)?;
            return Ok(());
        };
        let Some(raw) = self.tables.intentions.get(seq)? else {
            return Ok(());
        };
        let signed = SignedIntention::decode(raw.value()).map_err(|source| {
            Error::from(CorruptError::Decode {
                what: "intention",
                source,
            })
        })?;
        drop(raw);
        let intention = signed.intention();
        if intention.flags().system || intention.is_genesis() {
            return Ok(());
        }
        let floor = positions.get(&entry.author).copied().unwrap_or(0);
        let hash = signed.hash();
        if entry.author_seq >= floor || (target.keep)(&hash) {
            self.tables.prune_pending.insert(seq, ())?;
            return Ok(());
        }
        self.tables.prune_pending.remove(seq)?;
        self.delete(seq, &hash, &entry)?;
        step.deleted += 1;
        step.bytes += signed.as_bytes().len() as u64;
        Ok(())
    }

    /// Deletes every row of the intention at `seq`.
    fn delete(&mut self, seq: u64, hash: &Hash, entry: &DagEntry) -> Result<(), Error> {
        self.tables.intentions.remove(seq)?;
        self.tables.chain.witness.remove(seq)?;
        self.tables.attestations.remove(seq)?;
        self.tables.chain.dag.remove(seq)?;
        self.tables.chain.index.remove(hash.as_bytes())?;
        self.tables.chain.checkpoints.remove(seq)?;
        self.sync_pruned
            .push(sync_index::item_key(entry.hlc.wall_ms, hash.as_bytes()));
        Ok(())
    }
}
