//! The write side of one group-commit batch: validation against the log, witnessing,
//! floating intentions and their resolution. Everything here runs on the ingest actor's
//! thread inside one redb write transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use lattice_model::{
    Hash, Hlc, Intention, NodeKey, PubKey, SignedIntention, StoreId, WitnessAttestation,
    WitnessRecord,
};
use redb::{MultimapTable, ReadableMultimapTable as _, ReadableTable, Table, WriteTransaction};
use tracing::{debug, warn};

use crate::config::LogConfig;
use crate::dag::{DagRead, DagTables, Floor, FrontierCache, decode_record};
use crate::error::{AuthorError, CorruptError, Error, IngestError, bug};
use crate::ingest::{Authored, Draft, Ingested, Verified};
use crate::sync_index;
use crate::tables::{
    ARRIVALS, ATTESTATIONS, CHECKPOINT_EVERY, CHECKPOINTS, DAG, DagEntry, FLOATING,
    FloatingCounters, FloatingEntry, INDEX, INTENTIONS, META, META_CLOCK, META_FLOATING,
    PRUNE_PENDING, PruneFloor, TIPS, WAITS, WITNESS, decode_tip, encode_checkpoint, encode_tip,
    read_floor,
};

/// In-memory summary of the log that the actor keeps between batches. A batch works on a copy
/// and the copy replaces the original only after the commit succeeded.
#[derive(Debug, Clone)]
pub(crate) struct LogState {
    pub(crate) head_seq: u64,
    pub(crate) head_hash: Hash,
    pub(crate) clock: lattice_model::HlcClock,
    pub(crate) floating: FloatingCounters,
}

/// The DAG query tables, open for writing.
pub(crate) type WriteDag<'t> = DagTables<
    Table<'t, u64, &'static [u8]>,
    Table<'t, u64, &'static [u8]>,
    Table<'t, &'static [u8; 32], u64>,
    Table<'t, u64, &'static [u8]>,
>;

/// All tables of `log.db`, open for writing in one transaction.
pub(crate) struct Tables<'t> {
    pub(crate) meta: Table<'t, &'static str, &'static [u8]>,
    /// `witness`, `dag`, `hash_index` and `checkpoints`: what DAG queries read.
    pub(crate) chain: WriteDag<'t>,
    pub(crate) intentions: Table<'t, u64, &'static [u8]>,
    pub(crate) attestations: Table<'t, u64, &'static [u8; 64]>,
    pub(crate) tips: Table<'t, &'static [u8; 32], &'static [u8; 40]>,
    pub(crate) floating: Table<'t, &'static [u8; 32], &'static [u8]>,
    pub(crate) waits: MultimapTable<'t, &'static [u8; 32], &'static [u8; 32]>,
    pub(crate) arrivals: Table<'t, u64, &'static [u8; 32]>,
    pub(crate) sync_items: Table<'t, &'static [u8; 40], ()>,
    pub(crate) sync_buckets: Table<'t, &'static [u8; 40], &'static [u8; 40]>,
    pub(crate) prune_pending: Table<'t, u64, ()>,
    /// What pruning deleted below (read when the transaction began).
    pub(crate) floor: PruneFloor,
}

impl<'t> Tables<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, Error> {
        let meta = txn.open_table(META)?;
        let floor = read_floor(&meta)?;
        Ok(Tables {
            meta,
            chain: DagTables {
                witness: txn.open_table(WITNESS)?,
                dag: txn.open_table(DAG)?,
                index: txn.open_table(INDEX)?,
                checkpoints: txn.open_table(CHECKPOINTS)?,
                floor: Floor::Known(Arc::new(floor.frontier())),
            },
            intentions: txn.open_table(INTENTIONS)?,
            attestations: txn.open_table(ATTESTATIONS)?,
            tips: txn.open_table(TIPS)?,
            floating: txn.open_table(FLOATING)?,
            waits: txn.open_multimap_table(WAITS)?,
            arrivals: txn.open_table(ARRIVALS)?,
            sync_items: txn.open_table(sync_index::SYNC_ITEMS)?,
            sync_buckets: txn.open_table(sync_index::SYNC_BUCKETS)?,
            prune_pending: txn.open_table(PRUNE_PENDING)?,
            floor,
        })
    }
}

/// Where an intention stands against the current log.
enum Readiness {
    /// Everything it needs is witnessed; these are its DAG facts.
    Ready(DagEntry),
    /// It waits for this hash.
    Missing(Hash),
    /// It can never be witnessed here.
    Invalid(IngestError),
}

/// One batch in progress.
pub(crate) struct Batch<'a, 't> {
    pub(crate) tables: Tables<'t>,
    pub(crate) state: LogState,
    pub(crate) config: &'a LogConfig,
    pub(crate) store_id: StoreId,
    /// Floating intentions whose awaited hash was witnessed, to re-check.
    pub(crate) queue: &'a mut VecDeque<Hash>,
    pub(crate) frontiers: &'a mut FrontierCache,
    pub(crate) now_ms: u64,
    start_seq: u64,
    /// Sync index keys of the intentions witnessed in this batch, added in `finish`.
    sync_keys: Vec<[u8; 40]>,
    /// Sync index keys of the intentions pruned in this batch, removed in `finish`.
    pub(crate) sync_pruned: Vec<[u8; 40]>,
    /// Per author, the newest chain position a finalized epoch reaches (see
    /// [`crate::Log::set_final_frontier`]).
    pub(crate) final_frontier: Arc<HashMap<PubKey, u64>>,
}

impl<'a, 't> Batch<'a, 't> {
    pub(crate) fn new(
        tables: Tables<'t>,
        state: LogState,
        config: &'a LogConfig,
        store_id: StoreId,
        queue: &'a mut VecDeque<Hash>,
        frontiers: &'a mut FrontierCache,
        now_ms: u64,
    ) -> Batch<'a, 't> {
        let start_seq = state.head_seq;
        Batch {
            tables,
            state,
            config,
            store_id,
            queue,
            frontiers,
            now_ms,
            start_seq,
            sync_keys: Vec::new(),
            sync_pruned: Vec::new(),
            final_frontier: Arc::default(),
        }
    }

    /// The error for an intention that forks `author`'s chain at `position`: below a
    /// finalized epoch it changes signed history, above it is an ordinary fork.
    fn fork(&self, hash: Hash, author: PubKey, prev: Hash, position: u64) -> IngestError {
        if self
            .tables
            .floor
            .boundary(&author)
            .is_some_and(|(floor, _)| position <= floor)
        {
            return IngestError::Pruned {
                hash: hash.short(),
                author: author.short(),
            };
        }
        if self
            .final_frontier
            .get(&author)
            .is_some_and(|f| position <= *f)
        {
            IngestError::BelowFinal {
                hash: hash.short(),
                author: author.short(),
                position,
            }
        } else {
            IngestError::ForkedChain {
                hash: hash.short(),
                author: author.short(),
                prev: prev.short(),
            }
        }
    }

    pub(crate) fn tip(&self, author: &PubKey) -> Result<Option<(u64, Hash)>, Error> {
        Ok(self
            .tables
            .tips
            .get(author.as_bytes())?
            .map(|v| decode_tip(v.value())))
    }

    /// The seq and DAG entry of a witnessed hash.
    pub(crate) fn lookup(&self, hash: &Hash) -> Result<Option<(u64, DagEntry)>, Error> {
        let Some(seq) = self.tables.chain.seq_of(hash)? else {
            return Ok(None);
        };
        let entry = self
            .tables
            .chain
            .entry(seq)?
            .ok_or_else(|| bug!("indexed intention has no dag entry"))?;
        Ok(Some((seq, entry)))
    }

    fn classify(&self, intention: &Intention, hash: Hash) -> Result<Readiness, Error> {
        let author = intention.author();
        let tip = self.tip(&author)?;
        let prev = intention.prev();
        let mut generation = 0u64;
        let mut max_parent_hlc = Hlc::ZERO;
        let mut parents = Vec::with_capacity(1 + intention.deps().len());
        let author_seq;
        if prev.is_zero() {
            if tip.is_some() {
                return Ok(Readiness::Invalid(self.fork(hash, author, prev, 1)));
            }
            author_seq = 1;
        } else {
            match self.lookup(&prev)? {
                // Dated at or before the author's pruned boundary: at or below it (chains are
                // dated in increasing order), so deleted here or a fork there.
                None if self
                    .tables
                    .floor
                    .boundary(&author)
                    .is_some_and(|(_, hlc)| intention.hlc() <= hlc) =>
                {
                    return Ok(Readiness::Invalid(IngestError::Pruned {
                        hash: hash.short(),
                        author: author.short(),
                    }));
                }
                None => return Ok(Readiness::Missing(prev)),
                Some((_, p)) if p.author != author => {
                    return Ok(Readiness::Invalid(IngestError::ForeignPredecessor {
                        hash: hash.short(),
                        prev: prev.short(),
                    }));
                }
                Some((seq, p)) => {
                    if tip.map(|(_, h)| h) != Some(prev) {
                        return Ok(Readiness::Invalid(self.fork(
                            hash,
                            author,
                            prev,
                            p.author_seq + 1,
                        )));
                    }
                    generation = p.generation;
                    max_parent_hlc = p.hlc;
                    author_seq = p.author_seq + 1;
                    parents.push(seq);
                }
            }
        }
        for dep in intention.deps() {
            match self.lookup(dep)? {
                None => return Ok(Readiness::Missing(*dep)),
                Some((seq, d)) => {
                    generation = generation.max(d.generation);
                    max_parent_hlc = max_parent_hlc.max(d.hlc);
                    parents.push(seq);
                }
            }
        }
        if !parents.is_empty() && intention.hlc() <= max_parent_hlc {
            return Ok(Readiness::Invalid(IngestError::NotAfterParents {
                hash: hash.short(),
            }));
        }
        Ok(Readiness::Ready(DagEntry {
            generation: generation + 1,
            author_seq,
            author,
            hlc: intention.hlc(),
            parents,
            raises: None,
        }))
    }

    pub(crate) fn is_known(&self, hash: &Hash) -> Result<bool, Error> {
        Ok(self.tables.chain.index.get(hash.as_bytes())?.is_some()
            || self.tables.floating.get(hash.as_bytes())?.is_some())
    }

    /// Appends a ready intention to the witness log and every index.
    pub(crate) fn witness(
        &mut self,
        signed: &SignedIntention,
        mut entry: DagEntry,
    ) -> Result<u64, Error> {
        let hash = signed.hash();
        let seq = self.state.head_seq + 1;
        let frontier = self.frontiers.compute(
            &self.tables.chain,
            seq,
            &mut entry,
            self.config.query_visit_cap,
        )?;
        let record = WitnessRecord {
            store_id: self.store_id,
            seq,
            intention: hash,
            prev: self.state.head_hash,
            wall_ms: self.now_ms,
        };
        self.tables
            .chain
            .witness
            .insert(seq, record.encode().as_slice())?;
        self.tables.intentions.insert(seq, signed.as_bytes())?;
        self.tables
            .chain
            .dag
            .insert(seq, entry.encode().as_slice())?;
        self.tables.chain.index.insert(hash.as_bytes(), seq)?;
        self.tables
            .tips
            .insert(entry.author.as_bytes(), &encode_tip(seq, &hash))?;
        self.sync_keys
            .push(sync_index::item_key(entry.hlc.wall_ms, hash.as_bytes()));
        if entry.author_seq.is_multiple_of(CHECKPOINT_EVERY) {
            self.tables
                .chain
                .checkpoints
                .insert(seq, encode_checkpoint(&frontier).as_slice())?;
        }
        self.state.head_seq = seq;
        self.state.head_hash = record.hash();
        self.state.clock.observe(entry.hlc);
        // Rows stay until the waiting intention is re-checked, so a crash before that leaves
        // them for `stranded_floating` to find.
        for waiting in self.tables.waits.get(hash.as_bytes())? {
            self.queue.push_back(Hash(*waiting?.value()));
        }
        debug!(intention = %hash.short(), seq, "witnessed");
        Ok(seq)
    }

    fn float(&mut self, signed: &SignedIntention, missing: Hash) -> Result<(), Error> {
        let len = signed.as_bytes().len() as u64;
        while self.state.floating.count > 0
            && (self.state.floating.count + 1 > self.config.floating_max_count
                || self.state.floating.bytes + len > self.config.floating_max_bytes)
        {
            self.evict_oldest()?;
        }
        let arrival = self.state.floating.next_arrival;
        let entry = FloatingEntry {
            arrival,
            received_ms: self.now_ms,
            waiting_for: missing,
            bytes: signed.as_bytes().to_vec(),
        };
        let hash = signed.hash();
        self.tables
            .floating
            .insert(hash.as_bytes(), entry.encode().as_slice())?;
        self.tables.arrivals.insert(arrival, hash.as_bytes())?;
        self.tables
            .waits
            .insert(missing.as_bytes(), hash.as_bytes())?;
        self.state.floating.count += 1;
        self.state.floating.bytes += len;
        self.state.floating.next_arrival += 1;
        debug!(intention = %hash.short(), missing = %missing.short(), "floating");
        Ok(())
    }

    /// Removes a floating intention and its index rows; returns its entry.
    fn unfloat(&mut self, hash: &Hash) -> Result<Option<FloatingEntry>, Error> {
        let Some(raw) = self.tables.floating.remove(hash.as_bytes())? else {
            return Ok(None);
        };
        let entry = FloatingEntry::decode(raw.value())?;
        drop(raw);
        self.tables.arrivals.remove(entry.arrival)?;
        self.tables
            .waits
            .remove(entry.waiting_for.as_bytes(), hash.as_bytes())?;
        self.state.floating.count = self.state.floating.count.saturating_sub(1);
        self.state.floating.bytes = self
            .state
            .floating
            .bytes
            .saturating_sub(entry.bytes.len() as u64);
        Ok(Some(entry))
    }

    fn evict_oldest(&mut self) -> Result<(), Error> {
        let oldest = self.tables.arrivals.first()?.map(|(_, h)| Hash(*h.value()));
        match oldest {
            Some(hash) => {
                warn!(intention = %hash.short(), "floating set full: evicting the oldest arrival");
                self.unfloat(&hash)?;
                Ok(())
            }
            None => {
                // Counters say there is something but the arrival index is empty: repair.
                self.state.floating = FloatingCounters {
                    next_arrival: self.state.floating.next_arrival,
                    ..FloatingCounters::default()
                };
                Err(bug!("floating counters disagree with the arrival index"))
            }
        }
    }

    /// Ingests one verified foreign intention.
    pub(crate) fn ingest(
        &mut self,
        item: Verified,
    ) -> Result<Result<Ingested, IngestError>, Error> {
        let signed = item.0;
        let hash = signed.hash();
        if self.is_known(&hash)? {
            return Ok(Ok(Ingested::Duplicate));
        }
        match self.classify(signed.intention(), hash)? {
            Readiness::Ready(entry) => {
                let seq = self.witness(&signed, entry)?;
                Ok(Ok(Ingested::Witnessed { seq }))
            }
            Readiness::Missing(missing) => {
                self.float(&signed, missing)?;
                Ok(Ok(Ingested::Floating { missing }))
            }
            Readiness::Invalid(err) => Ok(Err(err)),
        }
    }

    /// Re-checks floating intentions whose awaited hash arrived, up to `limit` of them.
    pub(crate) fn resolve(&mut self, limit: usize) -> Result<usize, Error> {
        let mut done = 0;
        while done < limit {
            let Some(hash) = self.queue.pop_front() else {
                break;
            };
            done += 1;
            let Some(raw) = self.tables.floating.get(hash.as_bytes())? else {
                continue; // evicted or already handled
            };
            let mut entry = FloatingEntry::decode(raw.value())?;
            drop(raw);
            let signed =
                SignedIntention::decode(&entry.bytes).map_err(|source| CorruptError::Decode {
                    what: "floating intention",
                    source,
                })?;
            match self.classify(signed.intention(), hash)? {
                Readiness::Ready(entry) => {
                    self.unfloat(&hash)?;
                    self.witness(&signed, entry)?;
                }
                Readiness::Missing(missing) => {
                    self.tables
                        .waits
                        .remove(entry.waiting_for.as_bytes(), hash.as_bytes())?;
                    entry.waiting_for = missing;
                    self.tables
                        .floating
                        .insert(hash.as_bytes(), entry.encode().as_slice())?;
                    self.tables
                        .waits
                        .insert(missing.as_bytes(), hash.as_bytes())?;
                }
                Readiness::Invalid(err) => {
                    warn!(intention = %hash.short(), %err, "dropping floating intention");
                    self.unfloat(&hash)?;
                }
            }
        }
        Ok(done)
    }

    /// Builds, signs and witnesses consecutive local intentions, in order. Building is
    /// sequential (each continues the previous one's chain); signing runs on two threads when
    /// the run is long enough to pay for it.
    pub(crate) fn author_run(
        &mut self,
        key: &NodeKey,
        drafts: Vec<Draft>,
    ) -> Result<Vec<Result<Authored, AuthorError>>, Error> {
        let me = key.public();
        let (mut prev, mut prev_hlc) = match self.tip(&me)? {
            Some((seq, hash)) => {
                let entry = self
                    .tables
                    .chain
                    .entry(seq)?
                    .ok_or_else(|| bug!("author tip is not in the dag"))?;
                (hash, entry.hlc)
            }
            None => (Hash::ZERO, Hlc::ZERO),
        };
        let mut built: Vec<Result<Intention, AuthorError>> = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let mut after = prev_hlc;
            let mut unknown = None;
            for dep in &draft.deps {
                match self.lookup(dep)? {
                    Some((_, entry)) => after = after.max(entry.hlc),
                    None => {
                        unknown = Some(*dep);
                        break;
                    }
                }
            }
            if let Some(dep) = unknown {
                built.push(Err(AuthorError::UnknownDep(dep)));
                continue;
            }
            let hlc = self.state.clock.tick(self.now_ms, after);
            match Intention::new(
                self.store_id,
                me,
                hlc,
                prev,
                draft.deps,
                draft.ops,
                draft.flags,
            ) {
                Ok(intention) => {
                    prev = intention.hash();
                    prev_hlc = hlc;
                    built.push(Ok(intention));
                }
                Err(e) => built.push(Err(e.into())),
            }
        }
        let signed = sign_all(key, built)?;
        let mut out = Vec::with_capacity(signed.len());
        for item in signed {
            let signed = match item {
                Ok(s) => s,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            match self.witness_local(signed)? {
                Some(authored) => out.push(Ok(authored)),
                None => return Err(bug!("a locally built intention was not ready")),
            }
        }
        Ok(out)
    }

    /// Witnesses one of this node's intentions when it continues the chain and cites only
    /// witnessed deps; `None` (nothing written) when it does not.
    fn witness_local(&mut self, signed: SignedIntention) -> Result<Option<Authored>, Error> {
        let Readiness::Ready(entry) = self.classify(signed.intention(), signed.hash())? else {
            return Ok(None);
        };
        self.state.clock.observe(signed.intention().hlc());
        let seq = self.witness(&signed, entry)?;
        Ok(Some(Authored {
            hash: signed.hash(),
            seq,
            hlc: signed.intention().hlc(),
            intention: signed,
        }))
    }

    /// Witnesses local intentions built ahead of time, in order. One that no longer continues
    /// this node's chain (or cites what is not witnessed) is refused, and so is the rest of
    /// the run after it.
    pub(crate) fn witness_built(
        &mut self,
        run: Vec<crate::chain::Built>,
    ) -> Result<Vec<Result<Authored, AuthorError>>, Error> {
        let mut out = Vec::with_capacity(run.len());
        let mut broken = false;
        for built in run {
            let hash = built.signed.hash();
            let authored = if broken {
                None
            } else {
                self.witness_local(built.signed)?
            };
            broken = authored.is_none();
            out.push(authored.ok_or(AuthorError::Stale(hash)));
        }
        Ok(out)
    }

    /// Attests the new head (when anything was witnessed) and persists counters.
    pub(crate) fn finish(mut self, key: &NodeKey) -> Result<LogState, Error> {
        sync_index::remove_many(
            &mut self.tables.sync_items,
            &mut self.tables.sync_buckets,
            std::mem::take(&mut self.sync_pruned),
        )?;
        sync_index::insert_many(
            &mut self.tables.sync_items,
            &mut self.tables.sync_buckets,
            std::mem::take(&mut self.sync_keys),
        )?;
        if self.state.head_seq != self.start_seq {
            let raw = self
                .tables
                .chain
                .witness
                .get(self.state.head_seq)?
                .ok_or_else(|| bug!("head record missing"))?;
            let record = decode_record(raw.value())?;
            drop(raw);
            let attestation = WitnessAttestation::sign(&record, key);
            self.tables
                .attestations
                .insert(record.seq, attestation.signature.as_bytes())?;
        }
        self.tables
            .meta
            .insert(META_CLOCK, self.state.clock.last().to_bytes().as_slice())?;
        self.tables
            .meta
            .insert(META_FLOATING, self.state.floating.encode().as_slice())?;
        Ok(self.state)
    }
}

/// Finds floating intentions whose awaited hash is already witnessed (after a crash or a failed
/// batch). Cost is bounded by the floating set, not by the log.
pub(crate) fn stranded_floating(tables: &Tables<'_>) -> Result<VecDeque<Hash>, Error> {
    let mut out = VecDeque::new();
    let mut seen = HashSet::new();
    for row in tables.waits.iter()? {
        let (missing, waiting) = row?;
        let missing = Hash(*missing.value());
        if tables.chain.index.get(missing.as_bytes())?.is_some() {
            for w in waiting {
                let h = Hash(*w?.value());
                if seen.insert(h) {
                    out.push_back(h);
                }
            }
        }
    }
    Ok(out)
}

/// Runs with fewer intentions than this are signed on the actor thread alone.
const PARALLEL_SIGN_MIN: usize = 64;

fn sign_all(
    key: &NodeKey,
    built: Vec<Result<Intention, AuthorError>>,
) -> Result<Vec<Result<SignedIntention, AuthorError>>, Error> {
    let sign = |item: Result<Intention, AuthorError>| {
        item.and_then(|i| SignedIntention::sign(i, key).map_err(AuthorError::from))
    };
    if built.len() < PARALLEL_SIGN_MIN {
        return Ok(built.into_iter().map(sign).collect());
    }
    let mut first = built;
    let second = first.split_off(first.len() / 2);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("log-sign".into())
            .spawn_scoped(scope, || second.into_iter().map(sign).collect::<Vec<_>>());
        let mut out: Vec<_> = first.into_iter().map(sign).collect();
        match helper {
            Ok(handle) => out.extend(
                handle
                    .join()
                    .map_err(|_| bug!("signing helper thread panicked"))?,
            ),
            Err(e) => {
                // Out of threads: fail this group commit; its callers get the error.
                warn!(%e, "could not start a signing thread");
                return Err(Error::Internal {
                    what: "could not start a signing thread",
                });
            }
        }
        Ok(out)
    })
}
