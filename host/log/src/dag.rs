//! DAG queries over witnessed intentions: ancestry, lowest common ancestor and paths.
//!
//! Every witnessed intention has a *generation* (1 + the largest generation of its parents)
//! and an *author seq* (its position in the author's chain). Walks go from newer to older
//! intentions and stop at the generation of the target, so they cost the part of the DAG
//! between the two intentions, not the history below them. Each author's chain is linear,
//! so meeting any intention of the target's author answers an ancestry question at once.
//! Every [`CHECKPOINT_EVERY`](crate::tables::CHECKPOINT_EVERY)-th intention of an author
//! also stores a reachability checkpoint (per author, the highest author seq reachable), which
//! answers the question for everything below it without walking further.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use lattice_model::{Hash, PubKey};

use crate::error::{Error, QueryError};
use crate::tables::DagEntry;

/// Read access to the DAG index, from a read or a write transaction.
pub(crate) trait DagRead {
    fn entry(&self, hash: &Hash) -> Result<Option<DagEntry>, Error>;
    fn checkpoint(&self, hash: &Hash) -> Result<Option<Vec<(PubKey, u64)>>, Error>;
}

fn need<D: DagRead>(dag: &D, hash: &Hash) -> Result<DagEntry, QueryError> {
    dag.entry(hash)?.ok_or(QueryError::Unknown(*hash))
}

/// Computes the reachability frontier of `hash` (whose entry is `entry`): for each author, the
/// highest author seq among the intention and its ancestors.
pub(crate) fn frontier<D: DagRead>(
    dag: &D,
    hash: &Hash,
    entry: &DagEntry,
    cap: usize,
) -> Result<Vec<(PubKey, u64)>, Error> {
    let mut best: HashMap<PubKey, u64> = HashMap::new();
    best.insert(entry.author, entry.author_seq);
    let mut seen: HashSet<Hash> = HashSet::from([*hash]);
    let mut queue: VecDeque<Hash> = entry.parents.iter().copied().collect();
    while let Some(h) = queue.pop_front() {
        if !seen.insert(h) {
            continue;
        }
        if seen.len() > cap {
            return Err(Error::Internal {
                what: "checkpoint walk exceeded the visit cap",
            });
        }
        if let Some(cp) = dag.checkpoint(&h)? {
            for (author, seq) in cp {
                let slot = best.entry(author).or_insert(0);
                *slot = (*slot).max(seq);
            }
            continue;
        }
        let Some(e) = dag.entry(&h)? else {
            return Err(Error::Internal {
                what: "a witnessed intention has an unwitnessed parent",
            });
        };
        let slot = best.entry(e.author).or_insert(0);
        *slot = (*slot).max(e.author_seq);
        queue.extend(e.parents.iter().copied());
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
    let a = need(dag, ancestor)?;
    if ancestor == descendant {
        return Ok(true);
    }
    let d = need(dag, descendant)?;
    if a.generation >= d.generation {
        return Ok(false);
    }
    let mut seen: HashSet<Hash> = HashSet::new();
    let mut queue = VecDeque::from([(*descendant, d)]);
    while let Some((h, e)) = queue.pop_front() {
        if h == *ancestor {
            return Ok(true);
        }
        if e.author == a.author {
            // One author's chain is linear: a later entry of the same author descends from `a`.
            if e.author_seq >= a.author_seq {
                return Ok(true);
            }
            continue;
        }
        if e.generation <= a.generation {
            continue;
        }
        if let Some(cp) = dag.checkpoint(&h)? {
            let reach = cp
                .iter()
                .find(|(author, _)| *author == a.author)
                .map_or(0, |(_, s)| *s);
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
                queue.push_back((*p, need(dag, p)?));
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
    heap: BinaryHeap<(u64, u64, Hash)>,
    paint: HashMap<Hash, u8>,
    entries: HashMap<Hash, DagEntry>,
    cap: usize,
}

impl<'d, D: DagRead> Painter<'d, D> {
    fn new(dag: &'d D, cap: usize) -> Self {
        Painter {
            dag,
            heap: BinaryHeap::new(),
            paint: HashMap::new(),
            entries: HashMap::new(),
            cap,
        }
    }

    /// Adds `color` to `hash`; returns the color before (0 when first seen).
    fn add(&mut self, hash: Hash, color: u8) -> Result<u8, QueryError> {
        if let Some(c) = self.paint.get_mut(&hash) {
            let before = *c;
            *c |= color;
            return Ok(before);
        }
        if self.paint.len() >= self.cap {
            return Err(QueryError::TooLarge(self.cap));
        }
        let e = need(self.dag, &hash)?;
        self.heap.push((e.generation, e.seq, hash));
        self.entries.insert(hash, e);
        self.paint.insert(hash, color);
        Ok(0)
    }

    fn pop(&mut self) -> Option<(Hash, u8, Vec<Hash>)> {
        let (_, _, h) = self.heap.pop()?;
        let color = self.paint.get(&h).copied().unwrap_or(0);
        let parents = self
            .entries
            .get(&h)
            .map(|e| e.parents.clone())
            .unwrap_or_default();
        Some((h, color, parents))
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
    painter.add(*a, FROM_A)?;
    painter.add(*b, FROM_B)?;
    while let Some((h, color, parents)) = painter.pop() {
        if color == BOTH {
            return Ok(Some(h));
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
    painter.add(*from, FROM_A)?;
    painter.add(*to, FROM_B)?;
    // Number of heap entries painted only B: while any remain, the walk must go on.
    let mut pending_b = usize::from(painter.paint.get(to) == Some(&FROM_B));
    let mut out = Vec::new();
    while pending_b > 0 {
        let Some((h, color, parents)) = painter.pop() else {
            break;
        };
        if color == FROM_B {
            pending_b -= 1;
            out.push(h);
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
    out.sort_by_key(|h| {
        painter
            .entries
            .get(h)
            .map_or((0, 0), |e| (e.generation, e.seq))
    });
    Ok(out)
}

/// A reachability frontier: per author, the highest author seq reachable (sorted by author).
pub(crate) type Frontier = Arc<Vec<(PubKey, u64)>>;

/// Frontiers of recently witnessed intentions, so the frontier of a new intention is a merge
/// of its parents' instead of a walk. Bounded; evicts in insertion order. Frontiers depend only
/// on an intention's ancestry, so an entry can never be stale.
#[derive(Debug, Default)]
pub(crate) struct FrontierCache {
    map: HashMap<Hash, Frontier>,
    order: VecDeque<Hash>,
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

    fn insert(&mut self, hash: Hash, frontier: Frontier) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(hash, frontier).is_none() {
            self.order.push_back(hash);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn of<D: DagRead>(&mut self, dag: &D, hash: &Hash, cap: usize) -> Result<Frontier, Error> {
        if let Some(f) = self.map.get(hash) {
            return Ok(f.clone());
        }
        let f: Frontier = match dag.checkpoint(hash)? {
            Some(cp) => Arc::new(cp),
            None => {
                let entry = dag.entry(hash)?.ok_or(Error::Internal {
                    what: "a witnessed intention has an unwitnessed parent",
                })?;
                Arc::new(frontier(dag, hash, &entry, cap)?)
            }
        };
        self.insert(*hash, f.clone());
        Ok(f)
    }

    /// Computes (and caches) the frontier of a newly witnessed intention.
    pub(crate) fn compute<D: DagRead>(
        &mut self,
        dag: &D,
        hash: &Hash,
        entry: &DagEntry,
        cap: usize,
    ) -> Result<Frontier, Error> {
        let mut merged: Vec<(PubKey, u64)> = vec![(entry.author, entry.author_seq)];
        for p in &entry.parents {
            let f = self.of(dag, p, cap)?;
            merged = merge(&merged, &f);
        }
        let f = Arc::new(merged);
        self.insert(*hash, f.clone());
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
