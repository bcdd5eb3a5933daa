//! Rooting a fresh log at a pruned peer's floor: the log of a node that joins a pruned store
//! starts from what a member still holds, not from the store's first intention.
//!
//! A pruned member holds the genesis, the system partition, each author's boundary, the
//! intentions its state names and everything above its floor; the parents of some of those
//! are gone. The joiner installs the member's floor (per author: boundary position and HLC)
//! and witnesses the held intentions in the member's witness order (a topological order).
//! A parent that is not here was pruned there: it is recorded as the *pruned parent* (a seq
//! no intention has, which DAG walks count as reaching the floor, as on the member itself).
//! An intention whose predecessor was pruned takes the chain position the member states,
//! which must lie at or below the author's boundary and above the author's tip here; every
//! other position follows from the chain as usual. Signatures, stores and dating are checked
//! as for any ingest. The state below the floor comes from a snapshot the members signed
//! (checked by the node), so positions are trusted only as far as that snapshot is.

use lattice_model::{Hash, Hlc, Intention, PubKey, SignedIntention};

use crate::dag::DagRead as _;
use crate::error::{Error, IngestError};
use crate::ingest::{Ingested, Verified};
use crate::tables::{DagEntry, META_PRUNE_FLOOR, PruneFloor};
use crate::writer::Batch;

/// The seq recorded for a parent that was pruned: no intention is witnessed at 0, so a walk
/// finds no entry there and counts the parent as reaching the prune floor.
pub(crate) const PRUNED_PARENT: u64 = 0;

/// One intention a pruned peer holds, for [`crate::Log::root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootedItem {
    /// The encoded [`SignedIntention`].
    pub bytes: Vec<u8>,
    /// Its position in its author's chain on the sending peer.
    pub position: u64,
}

/// What pruning deleted below, per author: the boundary's chain position and HLC (see
/// [`crate::LogReader::prune_floor`]).
pub type FloorMarks = Vec<(PubKey, u64, Hlc)>;

fn unrooted(hash: Hash, reason: &'static str) -> IngestError {
    IngestError::Unrooted {
        hash: hash.short(),
        reason,
    }
}

impl Batch<'_, '_> {
    /// Installs `floor` as this log's prune floor when it has none; true when the log's floor
    /// is (now) `floor`.
    pub(crate) fn install_floor(&mut self, floor: &PruneFloor) -> Result<bool, Error> {
        if !self.tables.floor.0.is_empty() {
            return Ok(self.tables.floor == *floor);
        }
        self.tables
            .meta
            .insert(META_PRUNE_FLOOR, floor.encode().as_slice())?;
        self.tables.floor = floor.clone();
        self.tables.chain.floor = crate::dag::Floor::Known(std::sync::Arc::new(floor.frontier()));
        self.frontiers.clear();
        Ok(true)
    }

    /// Witnesses one held intention of a pruned peer (see the module docs).
    pub(crate) fn root(
        &mut self,
        item: Verified,
        position: u64,
    ) -> Result<Result<Ingested, IngestError>, Error> {
        let signed: SignedIntention = item.0;
        let hash = signed.hash();
        if self.is_known(&hash)? {
            return Ok(Ok(Ingested::Duplicate));
        }
        match self.classify_rooted(signed.intention(), hash, position)? {
            Ok(entry) => {
                let seq = self.witness(&signed, entry)?;
                Ok(Ok(Ingested::Witnessed { seq }))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    fn classify_rooted(
        &self,
        intention: &Intention,
        hash: Hash,
        position: u64,
    ) -> Result<Result<DagEntry, IngestError>, Error> {
        let author = intention.author();
        let tip = self.tip(&author)?;
        let prev = intention.prev();
        let mut generation = 0u64;
        let mut max_parent_hlc = Hlc::ZERO;
        let mut parents = Vec::with_capacity(1 + intention.deps().len());
        let author_seq;
        if prev.is_zero() {
            if tip.is_some() || position != 1 {
                return Ok(Err(unrooted(
                    hash,
                    "a second first intention of its author",
                )));
            }
            author_seq = 1;
        } else {
            match self.lookup(&prev)? {
                Some((seq, p)) => {
                    if p.author != author || tip.map(|(_, h)| h) != Some(prev) {
                        return Ok(Err(unrooted(
                            hash,
                            "its predecessor is not its author's tip",
                        )));
                    }
                    if position != p.author_seq + 1 {
                        return Ok(Err(unrooted(hash, "its stated chain position is wrong")));
                    }
                    generation = p.generation;
                    max_parent_hlc = p.hlc;
                    author_seq = position;
                    parents.push(seq);
                }
                None => {
                    let Some((boundary, _)) = self.tables.floor.boundary(&author) else {
                        return Ok(Err(unrooted(
                            hash,
                            "its predecessor is missing above the floor",
                        )));
                    };
                    if position > boundary {
                        return Ok(Err(unrooted(
                            hash,
                            "its predecessor is missing above the floor",
                        )));
                    }
                    if let Some((tip_seq, _)) = tip {
                        let t = self.tables.chain.entry(tip_seq)?.ok_or(Error::Internal {
                            what: "an author's tip has no dag entry",
                        })?;
                        if position <= t.author_seq || intention.hlc() <= t.hlc {
                            return Ok(Err(unrooted(hash, "it does not follow its author's tip")));
                        }
                    }
                    author_seq = position;
                    parents.push(PRUNED_PARENT);
                }
            }
        }
        for dep in intention.deps() {
            match self.lookup(dep)? {
                Some((seq, d)) => {
                    generation = generation.max(d.generation);
                    max_parent_hlc = max_parent_hlc.max(d.hlc);
                    parents.push(seq);
                }
                None => parents.push(PRUNED_PARENT),
            }
        }
        if intention.hlc() <= max_parent_hlc {
            return Ok(Err(IngestError::NotAfterParents { hash: hash.short() }));
        }
        Ok(Ok(DagEntry {
            generation: generation + 1,
            author_seq,
            author,
            hlc: intention.hlc(),
            parents,
            raises: None,
        }))
    }
}
