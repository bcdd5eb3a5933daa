//! [`Log`]: opening `log.db`, checking it, and the handle to its ingest actor.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lattice_model::{
    Hash, HlcClock, Intention, IntentionFlags, NodeKey, PubKey, SignedIntention, StoreId,
    WitnessAttestation, WitnessRecord, verify_batch,
};
use redb::{Database, ReadableDatabase as _, ReadableTable};
use tracing::{info, warn};

use crate::chain::{Built, ChainBuilder};
use crate::config::LogConfig;
use crate::dag::FrontierCache;
use crate::file::{CleanMark, contain, open_checked};

/// Frontiers kept in memory for recently witnessed intentions.
const FRONTIER_CACHE: usize = 4096;
use crate::error::{
    AuthorError, CorruptError, Error, IngestError, OpenError, QueryError, StorageError, storage,
};
use crate::ingest::{
    Authored, BuiltOutcome, BuiltReply, Command, Draft, Incoming, IngestActor, IngestResults,
    Pending, Slot, Verified,
};
use crate::prune::{PruneStep, PruneTarget};
use crate::reader::LogReader;
use crate::rooted::{FloorMarks, RootedItem};
use crate::tables::{
    FORMAT_VERSION, FloatingCounters, META, META_CLOCK, META_COMPACT_DUE, META_FLOATING,
    META_FORMAT, META_STORE, META_WITNESS_KEY, PruneFloor, decode_hlc,
};
use crate::writer::{LogState, Tables, stranded_floating};

/// One store's log: a handle to its ingest actor plus a [`LogReader`].
///
/// Dropping the handle stops the actor and waits for it; [`Log::close`] does the same and
/// reports a panic of the actor thread.
#[derive(Debug)]
pub struct Log {
    inbox: Option<SyncSender<Command>>,
    reader: LogReader,
    store_id: StoreId,
    key: NodeKey,
    config: LogConfig,
    thread: Option<JoinHandle<()>>,
    /// The actor itself when it runs on the callers' thread ([`LogConfig::inline`]).
    inline: Option<Mutex<IngestActor>>,
    final_frontier: crate::ingest::FinalFrontier,
    /// Last: written once the database above has closed.
    _clean: CleanMark,
}

impl Log {
    /// Opens (or creates) the log of `store_id` at `path`, witnessed with `key`.
    ///
    /// Checks the format, the store id, the witness key and the tail of the witness chain
    /// (the last record's link and attestation) without reading the whole log, then starts
    /// the ingest actor and resumes floating intentions whose wait is over.
    ///
    /// # Errors
    /// [`OpenError`] naming what is wrong: already open, another store or node key, an
    /// unsupported format, a corrupt tail, or a storage failure.
    pub fn open(
        path: &Path,
        store_id: StoreId,
        key: NodeKey,
        config: LogConfig,
    ) -> Result<Log, OpenError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(config.cache_bytes);
        let mut db = open_checked(path, &builder)?;
        contain(path, || compact_if_due(&mut db))?;
        let db = Arc::new(db);
        let (state, queue) = contain(path, || prepare(&db, store_id, &key))?;
        info!(store = %store_id.short(), head = state.head_seq, floating = state.floating.count, "log opened");
        let (tx, rx) = sync_channel(config.inbox.max(1));
        let final_frontier = crate::ingest::FinalFrontier::default();
        let actor = IngestActor {
            final_frontier: final_frontier.clone(),
            undurable: false,
            db: db.clone(),
            key: key.clone(),
            store_id,
            config: config.clone(),
            state,
            queue,
            inbox: rx,
            settling: Vec::new(),
            frontiers: FrontierCache::new(FRONTIER_CACHE),
        };
        let (thread, inline) = if config.inline {
            let mut actor = actor;
            // Floating intentions resumed at open are re-checked before the first call.
            actor.pump();
            (None, Some(Mutex::new(actor)))
        } else {
            let thread = std::thread::Builder::new()
                .name(format!("log-{}", store_id.short()))
                .spawn(move || actor.run())
                .map_err(OpenError::Thread)?;
            (Some(thread), None)
        };
        Ok(Log {
            inbox: Some(tx),
            reader: LogReader::new(db, store_id, config.query_visit_cap),
            store_id,
            key,
            config,
            thread,
            inline,
            final_frontier,
            _clean: CleanMark::new(path),
        })
    }

    /// Sets, per author, the newest chain position a finalized epoch reaches: from the next
    /// group commit on, an intention forking a chain at or below it is refused as
    /// [`IngestError::BelowFinal`](crate::IngestError::BelowFinal). Kept in memory; the node
    /// sets it again as it opens the store and projects its epochs.
    pub fn set_final_frontier(&self, frontier: impl IntoIterator<Item = (PubKey, u64)>) {
        let frontier = Arc::new(frontier.into_iter().collect());
        match self.final_frontier.lock() {
            Ok(mut f) => *f = frontier,
            Err(p) => *p.into_inner() = frontier,
        }
    }

    /// The store this log belongs to.
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// Read access (cheap to clone, usable from any thread).
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.inbox
            .as_ref()
            .ok_or(Error::Closed)?
            .send(cmd)
            .map_err(|_| Error::Closed)?;
        // Inline, the command is handled now. A command sent while the actor is busy (from
        // a reply it is giving) is handled by that same pump, which runs until the inbox is
        // empty.
        if let Some(actor) = &self.inline {
            match actor.try_lock() {
                Ok(mut actor) => actor.pump(),
                // The actor panicked on an earlier command (something in the file): as when
                // its thread dies, what is queued is dropped and its callers hear `Closed`.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().drop_queued(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        Ok(())
    }

    /// Checks incoming intentions on this thread (size, decoding, claimed hash, store, clock
    /// drift, signatures with batch verification) and queues the rest for the actor.
    pub fn submit_ingest(&self, items: Vec<Incoming>) -> Pending<Result<IngestResults, Error>> {
        let slots = precheck(items, self.store_id, self.config.clock.now_ms());
        let (tx, rx) = oneshot::channel();
        if let Err(err) = self.send(Command::Ingest { slots, reply: tx }) {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(err));
            return Pending(rx);
        }
        Pending(rx)
    }

    /// Ingests intentions and waits until the accepted ones are durable.
    ///
    /// Returns one result per item, in order. A refused item changed nothing on disk.
    ///
    /// # Errors
    /// [`Error`] when the log failed (nothing of the batch was kept) or is closed.
    pub fn ingest(&self, items: Vec<Incoming>) -> Result<IngestResults, Error> {
        self.submit_ingest(items).wait()?
    }

    /// Roots this log at a pruned peer's floor: installs `floor` (when the log has none) and
    /// witnesses `items`, the intentions that peer holds in its witness order, counting every
    /// parent not witnessed here as pruned there (see the `rooted` module docs). Send the
    /// held intentions in several calls as they arrive; each is durable when it returns.
    ///
    /// Returns one result per item, in order: [`IngestError::Unrooted`] for one that cannot
    /// stand on the floor (or when this log is rooted at another floor).
    ///
    /// # Errors
    /// [`Error`] when the log failed (nothing of the call was kept) or is closed.
    pub fn root(&self, floor: &FloorMarks, items: Vec<RootedItem>) -> Result<IngestResults, Error> {
        let mut floor = PruneFloor(floor.clone());
        floor.0.sort_by_key(|a| a.0);
        floor.0.dedup_by(|a, b| a.0 == b.0);
        let positions: Vec<u64> = items.iter().map(|i| i.position).collect();
        let incoming = items.into_iter().map(|i| Incoming::new(i.bytes)).collect();
        let slots = precheck(incoming, self.store_id, self.config.clock.now_ms());
        let (tx, rx) = oneshot::channel();
        self.send(Command::Root {
            floor,
            items: slots.into_iter().zip(positions).collect(),
            reply: tx,
        })?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Queues a local intention for authoring; the reply arrives once it is durable.
    pub fn submit_author(&self, draft: Draft) -> Pending<Result<Authored, AuthorError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(err) = self.send(Command::Author { draft, reply: tx }) {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(AuthorError::Log(err)));
            return Pending(rx);
        }
        Pending(rx)
    }

    /// Starts building this node's next intentions from its witnessed tip (see
    /// [`ChainBuilder`]).
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn chain_builder(&self) -> Result<ChainBuilder, Error> {
        ChainBuilder::start(self.key.clone(), &self.reader, self.config.clock.clone())
    }

    /// Queues a run of intentions built by a [`ChainBuilder`] for witnessing in one group
    /// commit; the reply (one result per intention, in order) arrives once they are durable.
    pub fn submit_built(&self, run: Vec<Built>) -> Pending<BuiltOutcome> {
        let (tx, rx) = oneshot::channel();
        self.submit_built_then(run, move |outcome| {
            let _ = tx.send(outcome);
        });
        Pending(rx)
    }

    /// As [`Log::submit_built`], but calls `done` with the outcome instead of returning a
    /// handle to wait on: on the ingest actor's thread right after the group commit, or at
    /// once on this thread when the actor is gone. `done` is called exactly once; keep it
    /// short (hand the outcome to a channel).
    pub fn submit_built_then(
        &self,
        run: Vec<Built>,
        done: impl FnOnce(BuiltOutcome) + Send + 'static,
    ) {
        // A command the actor never takes is dropped, and the reply with it: `done` then
        // hears `Error::Closed`.
        let reply = BuiltReply::new(done);
        let _ = self.send(Command::WitnessBuilt { run, reply });
    }

    /// Authors a local intention (next in this node's chain, HLC after its deps), witnesses it
    /// and waits until it is durable.
    ///
    /// # Errors
    /// [`AuthorError`] when a dep is not witnessed, a limit is exceeded or the log failed.
    pub fn author(&self, draft: Draft) -> Result<Authored, AuthorError> {
        self.submit_author(draft).wait().map_err(AuthorError::Log)?
    }

    /// Queues one step of pruning below an epoch (see [`PruneTarget`]): at most
    /// `target.step` intentions are looked at, in one transaction between write batches.
    /// Call again until [`PruneStep::done`].
    pub fn submit_prune(&self, target: PruneTarget) -> Pending<Result<PruneStep, QueryError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.send(Command::Prune { target, reply: tx }) {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(QueryError::Log(e)));
            return Pending(rx);
        }
        Pending(rx)
    }

    /// Prunes below an epoch, step after step, until done; returns the totals.
    ///
    /// # Errors
    /// [`QueryError::Unknown`] when the epoch is not witnessed here; storage failures.
    pub fn prune(&self, target: PruneTarget) -> Result<PruneStep, QueryError> {
        let mut total = PruneStep::default();
        loop {
            let step = self.submit_prune(target.clone()).wait()??;
            total.scanned += step.scanned;
            total.deleted += step.deleted;
            total.bytes += step.bytes;
            if step.done {
                total.done = true;
                return Ok(total);
            }
        }
    }

    /// Waits until every floating intention whose wait is over has been re-checked (the
    /// actor re-checks a bounded number per commit, so a long cascade spans several).
    ///
    /// # Errors
    /// [`Error::Closed`] when the actor stopped.
    pub fn settle(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Settle { reply: tx })?;
        rx.recv().map_err(|_| Error::Closed)
    }

    /// Like [`Log::settle`], but returns at once; await (or wait on) the reply.
    pub fn submit_settle(&self) -> Pending<()> {
        let (tx, rx) = oneshot::channel();
        // When the actor is gone the sender drops and the reply is `Error::Closed`.
        let _ = self.send(Command::Settle { reply: tx });
        Pending(rx)
    }

    /// Stops the actor and waits for it.
    ///
    /// # Errors
    /// [`Error::Internal`] when the actor thread panicked.
    pub fn close(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        self.inbox.take();
        if let Some(actor) = self.inline.take() {
            let mut actor = actor.into_inner().unwrap_or_else(|p| p.into_inner());
            actor.pump();
            actor.finish();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            // The actor died on something in the file: the next open checks it.
            self._clean.disarm();
            return Err(Error::Internal {
                what: "the ingest actor panicked",
            });
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            warn!(%err, "log shutdown");
        }
    }
}

/// Builds and signs the genesis intention of a new store. The store id is its hash.
///
/// # Errors
/// [`AuthorError`] when `ops` exceeds the payload limit.
pub fn build_genesis(
    key: &NodeKey,
    ops: Vec<u8>,
    now_ms: u64,
) -> Result<SignedIntention, AuthorError> {
    let hlc = HlcClock::default().tick(now_ms, lattice_model::Hlc::ZERO);
    let intention = Intention::new(
        StoreId::GENESIS,
        key.public(),
        hlc,
        Hash::ZERO,
        vec![],
        ops,
        IntentionFlags::default(),
    )?;
    Ok(SignedIntention::sign(intention, key)?)
}

fn precheck(items: Vec<Incoming>, store_id: StoreId, now_ms: u64) -> Vec<Slot> {
    let mut slots: Vec<Slot> = items
        .into_iter()
        .map(|item| {
            let signed = SignedIntention::decode(&item.bytes)?;
            let hash = signed.hash();
            if let Some(claimed) = item.claimed
                && claimed != hash
            {
                return Err(IngestError::HashMismatch {
                    claimed: claimed.short(),
                    actual: hash.short(),
                });
            }
            let intention = signed.intention();
            let own_genesis = intention.is_genesis() && StoreId::from(hash) == store_id;
            if intention.store_id() != store_id && !own_genesis {
                return Err(IngestError::WrongStore {
                    hash: hash.short(),
                    expected: store_id.short(),
                    found: intention.store_id().short(),
                });
            }
            if intention.hlc().is_too_far_ahead(now_ms) {
                return Err(IngestError::TooFarInFuture {
                    hash: hash.short(),
                    hlc: intention.hlc(),
                    now_ms,
                });
            }
            Ok(Verified(signed))
        })
        .collect();
    let batch: Vec<_> = slots
        .iter()
        .filter_map(|s| s.as_ref().ok())
        .map(|v| (v.0.intention().author(), v.0.hash(), v.0.signature()))
        .collect();
    if verify_batch(&batch).is_err() {
        for slot in &mut slots {
            if let Ok(v) = slot
                && v.0.verify().is_err()
            {
                *slot = Err(IngestError::BadSignature {
                    hash: v.0.hash().short(),
                });
            }
        }
    }
    slots
}

/// Creates tables, checks identity and the chain tail, and loads the actor's state.
fn prepare(
    db: &Database,
    store_id: StoreId,
    key: &NodeKey,
) -> Result<(LogState, VecDeque<Hash>), OpenError> {
    let mut txn = db.begin_write().map_err(storage)?;
    // Opening writes only what a crash may lose (tables, the store id and witness key of an
    // empty log): no fsync here; the first durable commit persists it with everything else.
    txn.set_durability(redb::Durability::None)
        .map_err(storage)?;
    let tables = Tables::open(&txn).map_err(storage_of)?;
    let mut tables = tables;
    check_identity(&mut tables, store_id, key.public())?;
    let (head_seq, head_hash) = check_tail(&tables, store_id, key.public())?;
    let clock = match tables.meta.get(META_CLOCK).map_err(storage)? {
        Some(v) => HlcClock::new(decode_hlc(v.value())?),
        None => HlcClock::default(),
    };
    let floating = match tables.meta.get(META_FLOATING).map_err(storage)? {
        Some(v) => FloatingCounters::decode(v.value())?,
        None => FloatingCounters::default(),
    };
    let queue = stranded_floating(&tables).map_err(storage_of)?;
    drop(tables);
    txn.commit().map_err(storage)?;
    Ok((
        LogState {
            head_seq,
            head_hash,
            clock,
            floating,
        },
        queue,
    ))
}

fn storage_of(err: Error) -> OpenError {
    match err {
        Error::Storage(s) => OpenError::Storage(s),
        Error::Corrupt(c) => OpenError::Corrupt(c),
        other => OpenError::Storage(StorageError(Arc::new(redb::Error::Io(
            std::io::Error::other(other.to_string()),
        )))),
    }
}

fn check_identity(
    tables: &mut Tables<'_>,
    store_id: StoreId,
    witness: PubKey,
) -> Result<(), OpenError> {
    let format = tables
        .meta
        .get(META_FORMAT)
        .map_err(storage)?
        .map(|v| v.value().to_vec());
    match format {
        None => {
            tables
                .meta
                .insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(storage)?;
            tables
                .meta
                .insert(META_STORE, store_id.as_bytes().as_slice())
                .map_err(storage)?;
            tables
                .meta
                .insert(META_WITNESS_KEY, witness.as_bytes().as_slice())
                .map_err(storage)?;
            return Ok(());
        }
        Some(raw) => {
            let version = <[u8; 4]>::try_from(raw.as_slice())
                .map(u32::from_le_bytes)
                .map_err(|_| CorruptError::Malformed { table: "meta" })?;
            if version != FORMAT_VERSION {
                return Err(OpenError::UnsupportedFormat(version));
            }
        }
    }
    let found = meta_array(tables, META_STORE)?;
    if found != *store_id.as_bytes() {
        return Err(OpenError::WrongStore {
            expected: store_id.short(),
            found: StoreId(found).short(),
        });
    }
    let found = meta_array(tables, META_WITNESS_KEY)?;
    if found != *witness.as_bytes() {
        return Err(OpenError::WrongWitnessKey {
            expected: witness.short(),
            found: PubKey(found).short(),
        });
    }
    Ok(())
}

/// Compacts the file when pruning freed pages since the last compaction, so disk use follows
/// what is left (redb reuses freed pages but keeps the file's high-water size otherwise).
/// Nothing else has the database open yet. Cost grows with what is left.
fn compact_if_due(db: &mut Database) -> Result<(), OpenError> {
    let due = {
        let txn = db.begin_read().map_err(storage)?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(META_COMPACT_DUE).map_err(storage)?.is_some(),
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(storage(e).into()),
        }
    };
    if !due {
        return Ok(());
    }
    let before = std::time::Instant::now();
    match db.compact() {
        Ok(_) => {}
        // Not fatal: the file stays larger; the next open tries again.
        Err(e) => {
            warn!(%e, "compacting the log after pruning failed");
            return Ok(());
        }
    }
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.remove(META_COMPACT_DUE).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    info!(
        ms = before.elapsed().as_millis() as u64,
        "log compacted after pruning"
    );
    Ok(())
}

fn meta_array(tables: &Tables<'_>, key: &str) -> Result<[u8; 32], OpenError> {
    let raw = tables
        .meta
        .get(key)
        .map_err(storage)?
        .ok_or(CorruptError::Malformed { table: "meta" })?;
    <[u8; 32]>::try_from(raw.value())
        .map_err(|_| OpenError::Corrupt(CorruptError::Malformed { table: "meta" }))
}

/// Checks the newest witness record: decodes, links to its predecessor, is attested by this
/// node, and names a stored intention. Reads a constant number of rows.
fn check_tail(
    tables: &Tables<'_>,
    store_id: StoreId,
    witness: PubKey,
) -> Result<(u64, Hash), OpenError> {
    let decode = |bytes: &[u8]| {
        WitnessRecord::decode(bytes).map_err(|source| CorruptError::Decode {
            what: "witness record",
            source,
        })
    };
    let Some((seq, raw)) = tables.chain.witness.last().map_err(storage)? else {
        return Ok((0, Hash::ZERO));
    };
    let seq = seq.value();
    let last = decode(raw.value())?;
    drop(raw);
    let mut chain = if seq > 1 {
        match tables.chain.witness.get(seq - 1).map_err(storage)? {
            Some(raw) => {
                let before = decode(raw.value())?;
                lattice_model::ChainVerifier::resume(store_id, before.seq, before.hash())
            }
            // The record before was pruned: the link to it cannot be checked any more.
            None if !tables.floor.0.is_empty() => {
                lattice_model::ChainVerifier::resume(store_id, seq - 1, last.prev)
            }
            None => {
                return Err(CorruptError::Chain(lattice_model::ChainError::SeqGap {
                    prev_seq: seq - 2,
                    expected: seq - 1,
                    found: seq,
                })
                .into());
            }
        }
    } else {
        lattice_model::ChainVerifier::new(store_id)
    };
    let head_hash = chain.push(&last).map_err(CorruptError::from)?;
    let signature = tables
        .attestations
        .get(seq)
        .map_err(storage)?
        .map(|v| *v.value())
        .ok_or(CorruptError::Unattested { seq })?;
    WitnessAttestation {
        seq,
        signature: lattice_model::Signature(signature),
    }
    .verify(&last, &witness)
    .map_err(|_| CorruptError::Unattested { seq })?;
    let indexed = tables
        .chain
        .index
        .get(last.intention.as_bytes())
        .map_err(storage)?
        .map(|v| v.value());
    if indexed != Some(seq)
        || tables.chain.dag.get(seq).map_err(storage)?.is_none()
        || tables.intentions.get(seq).map_err(storage)?.is_none()
    {
        return Err(CorruptError::MissingIntention {
            seq,
            hash: last.intention.short(),
        }
        .into());
    }
    Ok((seq, head_hash))
}
