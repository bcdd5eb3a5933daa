//! DAG queries over witnessed intentions: ancestry, lowest common ancestor and paths.
//!
//! Walks run over witness seqs: each DAG entry lists its parents by seq, so a walk needs no
//! hash lookups. Every witnessed intention has a *generation* (1 + the largest generation of
//! its parents) and an *author seq* (its position in the author's chain). Walks go from newer
//! to older intentions and stop at the generation of the target, so they cost the part of the
//! DAG between the two intentions, not the history below them. Each author's chain is linear,
//! so meeting any intention of the target's author answers an ancestry question at once.
//! Every [`CHECKPOINT_EVERY`](crate::tables::CHECKPOINT_EVERY)-th intention of an author
//! also stores a reachability checkpoint (per author, the highest author seq reachable), which
//! answers the question for everything below it without walking further.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use lattice_model::{Hash, PubKey, WitnessRecord};
use redb::ReadableTable;

use crate::error::{CorruptError, Error, QueryError};
use crate::tables::{DagEntry, decode_checkpoint};

/// Read access to the DAG index, from a read or a write transaction.
pub(crate) trait DagRead {
    /// The witness seq of a witnessed intention.
    fn seq_of(&self, hash: &Hash) -> Result<Option<u64>, Error>;
    /// The intention hash witnessed at `seq`.
    fn hash_at(&self, seq: u64) -> Result<Option<Hash>, Error>;
    fn entry(&self, seq: u64) -> Result<Option<DagEntry>, Error>;
    fn checkpoint(&self, seq: u64) -> Result<Option<Vec<(PubKey, u64)>>, Error>;
    /// The prune floor as a frontier, when pruning deleted anything: a parent with no DAG
    /// entry was pruned, and counts as reaching this (every pruned intention is below it, and
    /// everything below it is final, so over-counting what a walk reaches there changes no
    /// answer a caller acts on).
    fn pruned_floor(&self) -> Option<&[(PubKey, u64)]>;
}

/// The four tables DAG queries read, opened in a read or a write transaction.
pub(crate) struct DagTables<W, D, I, C> {
    /// `seq → witness record`.
    pub(crate) witness: W,
    /// `seq → DagEntry`.
    pub(crate) dag: D,
    /// `intention hash → seq`.
    pub(crate) index: I,
    /// `seq → checkpoint`.
    pub(crate) checkpoints: C,
    /// The prune floor as a frontier; empty while nothing was pruned.
    pub(crate) floor: Floor,
}

/// The prune floor as DAG walks need it: known when the tables were opened (the writer), or
/// read from `meta` the first time a walk meets a pruned parent (readers walk often and
/// rarely meet one). A floor that cannot be read counts as empty, so the walk reports the
/// missing entry.
pub(crate) enum Floor {
    /// Read already.
    Known(Arc<Vec<(PubKey, u64)>>),
    /// Read on first need, in the read transaction the other tables came from.
    Lazy(
        redb::ReadTransaction,
        std::cell::OnceCell<Vec<(PubKey, u64)>>,
    ),
}

impl Floor {
    fn get(&self) -> &[(PubKey, u64)] {
        match self {
            Floor::Known(floor) => floor,
            Floor::Lazy(txn, cell) => cell.get_or_init(|| {
                txn.open_table(crate::tables::META)
                    .map_err(Error::from)
                    .and_then(|meta| crate::tables::read_floor(&meta))
                    .map(|f| f.frontier())
                    .unwrap_or_default()
            }),
        }
    }
}

impl<W, D, I, C> DagRead for DagTables<W, D, I, C>
where
    W: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<u64, &'static [u8]>,
    I: ReadableTable<&'static [u8; 32], u64>,
    C: ReadableTable<u64, &'static [u8]>,
{
    fn seq_of(&self, hash: &Hash) -> Result<Option<u64>, Error> {
        Ok(self.index.get(hash.as_bytes())?.map(|v| v.value()))
    }
    fn hash_at(&self, seq: u64) -> Result<Option<Hash>, Error> {
        match self.witness.get(seq)? {
            Some(v) => Ok(Some(decode_record(v.value())?.intention)),
            None => Ok(None),
        }
    }
    fn entry(&self, seq: u64) -> Result<Option<DagEntry>, Error> {
        match self.dag.get(seq)? {
            Some(v) => Ok(Some(DagEntry::decode(v.value())?)),
            None => Ok(None),
        }
    }
    fn checkpoint(&self, seq: u64) -> Result<Option<Vec<(PubKey, u64)>>, Error> {
        match self.checkpoints.get(seq)? {
            Some(v) => Ok(Some(decode_checkpoint(v.value())?)),
            None => Ok(None),
        }
    }
    fn pruned_floor(&self) -> Option<&[(PubKey, u64)]> {
        let floor = self.floor.get();
        (!floor.is_empty()).then_some(floor)
    }
}

/// One step of a walk down the DAG at a seq.
enum Step {
    /// The seq's entry.
    Entry(DagEntry),
    /// What the seq reaches is known without walking further (a checkpoint, or the prune
    /// floor for a pruned parent).
    Reach(Vec<(PubKey, u64)>),
}

/// Reads the entry at `seq`, or what it reaches when it has a checkpoint or was pruned.
fn step<D: DagRead>(dag: &D, seq: u64) -> Result<Step, Error> {
    if let Some(cp) = dag.checkpoint(seq)? {
        return Ok(Step::Reach(cp));
    }
    match dag.entry(seq)? {
        Some(e) => Ok(Step::Entry(e)),
        None => match dag.pruned_floor() {
            Some(floor) => Ok(Step::Reach(floor.to_vec())),
            None => Err(no_entry()),
        },
    }
}

/// Decodes a stored witness record.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<WitnessRecord, CorruptError> {
    WitnessRecord::decode(bytes).map_err(|source| CorruptError::Decode {
        what: "witness record",
        source,
    })
}

fn seq_of<D: DagRead>(dag: &D, hash: &Hash) -> Result<u64, QueryError> {
    dag.seq_of(hash)?.ok_or(QueryError::Unknown(*hash))
}

fn no_entry() -> Error {
    Error::Internal {
        what: "a witnessed intention has no dag entry",
    }
}

fn need<D: DagRead>(dag: &D, seq: u64) -> Result<DagEntry, Error> {
    dag.entry(seq)?.ok_or_else(no_entry)
}

fn hash_at<D: DagRead>(dag: &D, seq: u64) -> Result<Hash, Error> {
    dag.hash_at(seq)?.ok_or(Error::Internal {
        what: "a dag entry has no witness record",
    })
}

/// The reach of `entry` read down its own chain: the raises recorded on each intention
/// merged into the nearest checkpoint (or frontier `known` already holds, or the prune floor)
/// below it — at most [`CHECKPOINT_EVERY`](crate::tables::CHECKPOINT_EVERY) entries, however
/// far its dependencies point. `None` when an entry on the way predates recorded raises.
fn chain_reach<D: DagRead>(
    dag: &D,
    entry: &DagEntry,
    known: impl Fn(u64) -> Option<Frontier>,
) -> Result<Option<Vec<(PubKey, u64)>>, Error> {
    let Some(raises) = &entry.raises else {
        return Ok(None);
    };
    let mut acc = merge(&[(entry.author, entry.author_seq)], raises);
    let mut below = prev_seq(entry);
    while let Some(s) = below {
        if let Some(f) = known(s) {
            return Ok(Some(merge(&acc, &f)));
        }
        let e = match step(dag, s)? {
            Step::Reach(cp) => return Ok(Some(merge(&acc, &cp))),
            Step::Entry(e) => e,
        };
        let Some(raises) = &e.raises else {
            return Ok(None);
        };
        acc = merge(&acc, raises);
        below = prev_seq(&e);
    }
    Ok(Some(acc))
}

/// The witness seq of the author's previous intention (the first parent), if any.
fn prev_seq(entry: &DagEntry) -> Option<u64> {
    if entry.author_seq > 1 {
        entry.parents.first().copied()
    } else {
        None
    }
}

/// Computes the reachability frontier of the intention at `seq`: for each author, the
/// highest author seq among it and its ancestors. Read down its chain (see [`chain_reach`]);
/// entries written before raises were recorded are walked down to checkpoints instead.
pub(crate) fn frontier<D: DagRead>(
    dag: &D,
    seq: u64,
    entry: &DagEntry,
    cap: usize,
) -> Result<Vec<(PubKey, u64)>, Error> {
    if let Some(reach) = chain_reach(dag, entry, |_| None)? {
        return Ok(reach);
    }
    let mut best: HashMap<PubKey, u64> = HashMap::new();
    best.insert(entry.author, entry.author_seq);
    let mut seen: HashSet<u64> = HashSet::from([seq]);
    let mut queue: VecDeque<u64> = entry.parents.iter().copied().collect();
    while let Some(s) = queue.pop_front() {
        if !seen.insert(s) {
            continue;
        }
        if seen.len() > cap {
            return Err(Error::Internal {
                what: "frontier walk exceeded the visit cap",
            });
        }
        let reach = match step(dag, s)? {
            Step::Reach(cp) => cp,
            Step::Entry(e) => match chain_reach(dag, &e, |_| None)? {
                Some(reach) => reach,
                None => {
                    queue.extend(e.parents.iter().copied());
                    vec![(e.author, e.author_seq)]
                }
            },
        };
        for (author, aseq) in reach {
            let slot = best.entry(author).or_insert(0);
            *slot = (*slot).max(aseq);
        }
    }
    let mut out: Vec<_> = best.into_iter().collect();
    out.sort_unstable();
    Ok(out)
}

/// Returns true when `ancestor` equals `descendant` or is reachable from it through parents.
pub(crate) fn is_ancestor<D: DagRead>(
    dag: &D,
    ancestor: &Hash,
    descendant: &Hash,
    cap: usize,
) -> Result<bool, QueryError> {
    let a_seq = seq_of(dag, ancestor)?;
    let d_seq = seq_of(dag, descendant)?;
    if a_seq == d_seq {
        return Ok(true);
    }
    if a_seq > d_seq {
        // Parents are always witnessed before their children.
        return Ok(false);
    }
    let a = need(dag, a_seq)?;
    let d = need(dag, d_seq)?;
    if a.generation >= d.generation {
        return Ok(false);
    }
    let mut seen: HashSet<u64> = HashSet::new();
    let mut queue = VecDeque::from([(d_seq, d)]);
    while let Some((s, e)) = queue.pop_front() {
        if s == a_seq {
            return Ok(true);
        }
        if e.author == a.author {
            // One author's chain is linear: a later entry of the same author descends from `a`.
            if e.author_seq >= a.author_seq {
                return Ok(true);
            }
            continue;
        }
        if e.generation <= a.generation || s < a_seq {
            continue;
        }
        if let Some(cp) = dag.checkpoint(s)? {
            let reach = cp
                .iter()
                .find(|(author, _)| *author == a.author)
                .map_or(0, |(_, aseq)| *aseq);
            if reach >= a.author_seq {
                return Ok(true);
            }
            continue;
        }
        for p in &e.parents {
            if seen.insert(*p) {
                if seen.len() > cap {
                    return Err(QueryError::TooLarge(cap));
                }
                match dag.entry(*p)? {
                    Some(pe) => queue.push_back((*p, pe)),
                    // A pruned parent reaches the prune floor.
                    None => match dag.pruned_floor() {
                        Some(floor)
                            if floor
                                .iter()
                                .any(|(au, s)| *au == a.author && *s >= a.author_seq) =>
                        {
                            return Ok(true);
                        }
                        Some(_) => {}
                        None => return Err(no_entry().into()),
                    },
                }
            }
        }
    }
    Ok(false)
}

const FROM_A: u8 = 1;
const FROM_B: u8 = 2;
const BOTH: u8 = FROM_A | FROM_B;

/// Walks down from two intentions in descending generation order, painting what each reaches.
struct Painter<'d, D> {
    dag: &'d D,
    heap: BinaryHeap<(u64, u64)>,
    paint: HashMap<u64, u8>,
    parents: HashMap<u64, (u64, Vec<u64>)>,
    cap: usize,
}

impl<'d, D: DagRead> Painter<'d, D> {
    fn new(dag: &'d D, cap: usize) -> Self {
        Painter {
            dag,
            heap: BinaryHeap::new(),
            paint: HashMap::new(),
            parents: HashMap::new(),
            cap,
        }
    }

    /// Adds `color` to `seq`; returns the color before (0 when first seen).
    fn add(&mut self, seq: u64, color: u8) -> Result<u8, QueryError> {
        if let Some(c) = self.paint.get_mut(&seq) {
            let before = *c;
            *c |= color;
            return Ok(before);
        }
        if self.paint.len() >= self.cap {
            return Err(QueryError::TooLarge(self.cap));
        }
        let e = match self.dag.entry(seq)? {
            Some(e) => e,
            // A pruned parent: nothing to walk; painted as reached by both so it never
            // counts as pending.
            None if self.dag.pruned_floor().is_some() => {
                self.paint.insert(seq, BOTH);
                return Ok(BOTH);
            }
            None => return Err(no_entry().into()),
        };
        self.heap.push((e.generation, seq));
        self.parents.insert(seq, (e.generation, e.parents));
        self.paint.insert(seq, color);
        Ok(0)
    }

    fn pop(&mut self) -> Option<(u64, u8, Vec<u64>)> {
        let (_, s) = self.heap.pop()?;
        let color = self.paint.get(&s).copied().unwrap_or(0);
        let parents = self
            .parents
            .get(&s)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        Some((s, color, parents))
    }
}

/// Returns a lowest common ancestor of `a` and `b` (the common ancestor with the largest
/// generation; ties broken by the higher witness seq), or `None` when they share none.
pub(crate) fn lca<D: DagRead>(
    dag: &D,
    a: &Hash,
    b: &Hash,
    cap: usize,
) -> Result<Option<Hash>, QueryError> {
    let mut painter = Painter::new(dag, cap);
    painter.add(seq_of(dag, a)?, FROM_A)?;
    painter.add(seq_of(dag, b)?, FROM_B)?;
    while let Some((s, color, parents)) = painter.pop() {
        if color == BOTH {
            return Ok(Some(hash_at(dag, s)?));
        }
        for p in parents {
            painter.add(p, color)?;
        }
    }
    Ok(None)
}

/// Returns the intentions that are ancestors-or-self of `to` but not of `from`, oldest first
/// (a topological order: by generation, then witness seq).
pub(crate) fn path<D: DagRead>(
    dag: &D,
    from: &Hash,
    to: &Hash,
    cap: usize,
) -> Result<Vec<Hash>, QueryError> {
    let mut painter = Painter::new(dag, cap);
    let to_seq = seq_of(dag, to)?;
    painter.add(seq_of(dag, from)?, FROM_A)?;
    painter.add(to_seq, FROM_B)?;
    // Heap entries painted only B: while any remain, the walk must go on.
    let mut pending_b = usize::from(painter.paint.get(&to_seq) == Some(&FROM_B));
    let mut out = Vec::new();
    while pending_b > 0 {
        let Some((s, color, parents)) = painter.pop() else {
            break;
        };
        if color == FROM_B {
            pending_b -= 1;
            out.push(s);
        }
        for p in parents {
            let before = painter.add(p, color)?;
            match (before, color) {
                (0, FROM_B) => pending_b += 1,
                (FROM_B, c) if c & FROM_A != 0 => pending_b -= 1,
                _ => {}
            }
        }
    }
    out.sort_by_key(|s| (painter.parents.get(s).map_or(0, |(g, _)| *g), *s));
    out.into_iter()
        .map(|s| hash_at(dag, s).map_err(QueryError::from))
        .collect()
}

/// A reachability frontier: per author, the highest author seq reachable (sorted by author).
pub(crate) type Frontier = Arc<Vec<(PubKey, u64)>>;

/// Frontiers of recently witnessed intentions, so the frontier of a new intention is a merge
/// of its parents' instead of a walk. Bounded; evicts in insertion order. A frontier depends
/// only on an intention's ancestry, so an entry is never stale (a rolled-back batch may leave
/// entries for seqs that are reused, so a failed commit clears the cache).
#[derive(Debug, Default)]
pub(crate) struct FrontierCache {
    map: HashMap<u64, Frontier>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl FrontierCache {
    pub(crate) fn new(capacity: usize) -> FrontierCache {
        FrontierCache {
            map: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    fn insert(&mut self, seq: u64, frontier: Frontier) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(seq, frontier).is_none() {
            self.order.push_back(seq);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    /// The frontier of the witnessed intention at `seq` (cached).
    pub(crate) fn of<D: DagRead>(
        &mut self,
        dag: &D,
        seq: u64,
        cap: usize,
    ) -> Result<Frontier, Error> {
        if let Some(f) = self.map.get(&seq) {
            return Ok(f.clone());
        }
        let f: Frontier = match step(dag, seq)? {
            Step::Reach(cp) => Arc::new(cp),
            Step::Entry(e) => match chain_reach(dag, &e, |s| self.map.get(&s).cloned())? {
                Some(reach) => Arc::new(reach),
                None => Arc::new(frontier(dag, seq, &e, cap)?),
            },
        };
        self.insert(seq, f.clone());
        Ok(f)
    }

    /// Computes (and caches) the frontier of an intention about to be witnessed at `seq`, and
    /// records in `entry` what it raises over the author's previous intention.
    pub(crate) fn compute<D: DagRead>(
        &mut self,
        dag: &D,
        seq: u64,
        entry: &mut DagEntry,
        cap: usize,
    ) -> Result<Frontier, Error> {
        let prev = prev_seq(entry);
        let base = match prev {
            Some(prev) => self.of(dag, prev, cap)?,
            None => Frontier::default(),
        };
        let mut merged = merge(&[(entry.author, entry.author_seq)], &base);
        for p in &entry.parents[usize::from(prev.is_some())..] {
            let f = self.of(dag, *p, cap)?;
            merged = merge(&merged, &f);
        }
        let held = |author: &PubKey| {
            base.binary_search_by(|(a, _)| a.cmp(author))
                .map_or(0, |i| base[i].1)
        };
        entry.raises = Some(
            merged
                .iter()
                .filter(|(author, aseq)| *author != entry.author && *aseq > held(author))
                .copied()
                .collect(),
        );
        let f = Arc::new(merged);
        self.insert(seq, f.clone());
        Ok(f)
    }
}

/// Merges two author-sorted frontiers, keeping the larger seq per author.
fn merge(a: &[(PubKey, u64)], b: &[(PubKey, u64)]) -> Vec<(PubKey, u64)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.max(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
