//! Ingest and authoring requests, their results, and the ingest actor.
//!
//! Message flow: [`Log`](crate::Log) handles decode, size-check, store-check and batch-verify
//! signatures of incoming intentions on the *caller's* thread, then send [`Command`]s to the
//! [`IngestActor`] over a bounded channel. The actor owns all writes to `log.db`: it blocks
//! for one command, drains whatever else is queued (up to the batch limits), processes the
//! whole group in one write transaction, attests the new witness head, commits with one fsync
//! and only then answers every caller. It re-checks floating intentions whose awaited hash
//! arrived, a bounded number per commit. It stops when every handle is dropped, after
//! finishing the batch in hand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::task::{Context, Poll};

use lattice_model::{Hash, Hlc, IntentionFlags, NodeKey, SignedIntention, StoreId};
use redb::{Database, Durability};
use tracing::{debug, error, warn};

use crate::config::LogConfig;
use crate::dag::FrontierCache;
use crate::error::{AuthorError, Error, IngestError, QueryError};
use crate::writer::{Batch, LogState, Tables, stranded_floating};

/// A transaction taking this long is reported (at debug level) with how its time split.
const SLOW_TRANSACTION: std::time::Duration = std::time::Duration::from_millis(40);

/// An intention received from elsewhere, as bytes.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The encoded [`SignedIntention`].
    pub bytes: Vec<u8>,
    /// The hash the sender says it has (e.g. the hash that was requested); checked when given.
    pub claimed: Option<Hash>,
}

impl Incoming {
    /// Wraps bytes with no claimed hash.
    pub fn new(bytes: Vec<u8>) -> Incoming {
        Incoming {
            bytes,
            claimed: None,
        }
    }
}

/// What happened to one accepted incoming intention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Witnessed now, at this sequence number.
    Witnessed {
        /// Its witness sequence number.
        seq: u64,
    },
    /// Stored as floating until this hash (its predecessor or a dep) is witnessed.
    Floating {
        /// The first missing hash it waits for.
        missing: Hash,
    },
    /// Already witnessed or floating here; nothing changed.
    Duplicate,
}

/// A local write to author: the payload and what it cites.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The ops payload.
    pub ops: Vec<u8>,
    /// Causal deps (witnessed hashes); sorted and deduplicated by the log.
    pub deps: Vec<Hash>,
    /// Pruning hints.
    pub flags: IntentionFlags,
}

/// A locally authored, witnessed and durable intention.
#[derive(Debug, Clone)]
pub struct Authored {
    /// Its hash.
    pub hash: Hash,
    /// Its witness sequence number.
    pub seq: u64,
    /// Its HLC.
    pub hlc: Hlc,
    /// The signed intention (for gossip).
    pub intention: SignedIntention,
}

/// An intention whose bytes, store and signature were checked. Only this crate builds one.
#[derive(Debug, Clone)]
pub(crate) struct Verified(pub(crate) SignedIntention);

/// One slot of an ingest request: already refused, or verified and bound for the actor.
pub(crate) type Slot = Result<Verified, IngestError>;

/// Results of one ingest request, in request order.
pub type IngestResults = Vec<Result<Ingested, IngestError>>;

pub(crate) enum Command {
    Ingest {
        slots: Vec<Slot>,
        reply: oneshot::Sender<Result<IngestResults, Error>>,
    },
    Author {
        draft: Draft,
        reply: oneshot::Sender<Result<Authored, AuthorError>>,
    },
    /// Local intentions built ahead by a [`ChainBuilder`](crate::ChainBuilder).
    WitnessBuilt {
        run: Vec<crate::chain::Built>,
        reply: BuiltReply,
    },
    /// Answered once no floating intention is left to re-check.
    Settle { reply: oneshot::Sender<()> },
    /// Held intentions of a pruned peer, witnessed on its floor ([`crate::Log::root`]).
    Root {
        floor: crate::tables::PruneFloor,
        items: Vec<(Slot, u64)>,
        reply: oneshot::Sender<Result<IngestResults, Error>>,
    },
    /// One step of pruning.
    Prune {
        target: crate::prune::PruneTarget,
        reply: oneshot::Sender<Result<crate::prune::PruneStep, QueryError>>,
    },
}

impl Command {
    fn weight(&self) -> (usize, usize) {
        match self {
            Command::Ingest { slots, .. } => (
                slots.len(),
                slots
                    .iter()
                    .map(|s| s.as_ref().map_or(0, |v| v.0.as_bytes().len()))
                    .sum(),
            ),
            Command::Root { items, .. } => (
                items.len(),
                items
                    .iter()
                    .map(|(s, _)| s.as_ref().map_or(0, |v| v.0.as_bytes().len()))
                    .sum(),
            ),
            Command::Author { draft, .. } => (1, draft.ops.len()),
            Command::WitnessBuilt { run, .. } => (
                run.len(),
                run.iter().map(|b| b.signed.as_bytes().len()).sum(),
            ),
            Command::Settle { .. } | Command::Prune { .. } => (0, 0),
        }
    }
}

/// What the log says of a run of built intentions: one result per intention, in order.
pub type BuiltOutcome = Result<Vec<Result<Authored, AuthorError>>, Error>;

/// Where the outcome of a [`Command::WitnessBuilt`] goes: a function called once, on the
/// ingest actor's thread, after the group commit (or with [`Error::Closed`] when the actor
/// drops the command unanswered).
pub(crate) struct BuiltReply(Option<Box<dyn FnOnce(BuiltOutcome) + Send>>);

impl BuiltReply {
    pub(crate) fn new(done: impl FnOnce(BuiltOutcome) + Send + 'static) -> BuiltReply {
        BuiltReply(Some(Box::new(done)))
    }

    pub(crate) fn send(mut self, outcome: BuiltOutcome) {
        if let Some(done) = self.0.take() {
            done(outcome);
        }
    }
}

impl Drop for BuiltReply {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err(Error::Closed));
        }
    }
}

/// A reply that has not arrived yet: [`Pending::wait`] blocks, or `.await` it.
#[derive(Debug)]
pub struct Pending<T>(pub(crate) oneshot::Receiver<T>);

impl<T> Pending<T> {
    /// Blocks until the reply arrives.
    ///
    /// # Errors
    /// [`Error::Closed`] when the actor stopped before answering.
    pub fn wait(self) -> Result<T, Error> {
        self.0.recv().map_err(|_| Error::Closed)
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| Error::Closed))
    }
}

/// The ingest actor: sole writer of one store's `log.db`.
pub(crate) struct IngestActor {
    pub(crate) db: Arc<Database>,
    pub(crate) key: NodeKey,
    pub(crate) store_id: StoreId,
    pub(crate) config: LogConfig,
    pub(crate) state: LogState,
    pub(crate) queue: VecDeque<Hash>,
    pub(crate) inbox: Receiver<Command>,
    pub(crate) settling: Vec<oneshot::Sender<()>>,
    pub(crate) frontiers: FrontierCache,
    /// Shared with [`crate::Log::set_final_frontier`].
    pub(crate) final_frontier: FinalFrontier,
    /// Whether the last commit was not made durable (prune steps alone).
    pub(crate) undurable: bool,
}

impl std::fmt::Debug for IngestActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestActor")
            .field("store_id", &self.store_id)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// Per author, the newest chain position a finalized epoch reaches; replaced whole.
pub(crate) type FinalFrontier =
    Arc<std::sync::Mutex<Arc<std::collections::HashMap<lattice_model::PubKey, u64>>>>;

enum Reply {
    Settle(oneshot::Sender<()>),
    Ingest(oneshot::Sender<Result<IngestResults, Error>>, IngestResults),
    Author(
        oneshot::Sender<Result<Authored, AuthorError>>,
        Result<Authored, AuthorError>,
    ),
    Built(BuiltReply, Vec<Result<Authored, AuthorError>>),
    Prune(
        oneshot::Sender<Result<crate::prune::PruneStep, QueryError>>,
        Result<crate::prune::PruneStep, QueryError>,
    ),
}

impl IngestActor {
    /// The actor thread's loop: waits for commands, runs them in group commits, and keeps
    /// re-checking floating intentions while any wait.
    pub(crate) fn run(mut self) {
        let _span = tracing::info_span!("log", store = %self.store_id.short()).entered();
        loop {
            let first = if self.queue.is_empty() {
                match self.inbox.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => break,
                }
            } else {
                match self.inbox.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            self.round(first);
        }
        self.finish();
    }

    /// Runs, on the caller's thread, everything queued: commands and the floating
    /// intentions whose wait is over, until nothing is left (the actor of a log opened
    /// with [`LogConfig::inline`](crate::LogConfig::inline)).
    pub(crate) fn pump(&mut self) {
        loop {
            let first = match self.inbox.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(_) if !self.queue.is_empty() => None,
                Err(_) => return,
            };
            self.round(first);
        }
    }

    /// Drops every queued command unanswered (their callers get `Closed`).
    pub(crate) fn drop_queued(&mut self) {
        while self.inbox.try_recv().is_ok() {}
    }

    /// One group commit: `first` and whatever else is queued, within the batch limits.
    fn round(&mut self, first: Option<Command>) {
        let mut commands = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        if let Some(cmd) = first {
            let (c, b) = cmd.weight();
            count += c;
            bytes += b;
            commands.push(cmd);
        }
        while count < self.config.max_batch_intentions && bytes < self.config.max_batch_bytes {
            match self.inbox.try_recv() {
                Ok(cmd) => {
                    let (c, b) = cmd.weight();
                    count += c;
                    bytes += b;
                    commands.push(cmd);
                }
                Err(_) => break,
            }
        }
        self.run_batch(commands);
        if self.queue.is_empty() {
            for reply in self.settling.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Makes the last prune steps durable as the actor stops.
    pub(crate) fn finish(&mut self) {
        if self.undurable {
            let synced = (|| -> Result<(), Error> {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                Ok(())
            })();
            if let Err(err) = synced {
                warn!(%err, "could not make the last prune steps durable; the next pass redoes them");
            }
            self.undurable = false;
        }
        debug!("ingest actor stopped");
    }

    fn run_batch(&mut self, commands: Vec<Command>) {
        let mut replies = Vec::with_capacity(commands.len());
        match self.process(commands, &mut replies) {
            Ok(state) => {
                self.state = state;
                for reply in replies {
                    match reply {
                        Reply::Ingest(tx, results) => {
                            let _ = tx.send(Ok(results));
                        }
                        Reply::Author(tx, result) => {
                            let _ = tx.send(result);
                        }
                        Reply::Built(tx, results) => tx.send(Ok(results)),
                        Reply::Prune(tx, result) => {
                            let _ = tx.send(result);
                        }
                        Reply::Settle(_) => {}
                    }
                }
            }
            Err((err, unanswered)) => {
                error!(%err, "group commit failed; nothing of the batch was kept");
                for reply in replies.into_iter().chain(unanswered) {
                    match reply {
                        Reply::Ingest(tx, _) => {
                            let _ = tx.send(Err(err.clone()));
                        }
                        Reply::Author(tx, _) => {
                            let _ = tx.send(Err(AuthorError::Log(err.clone())));
                        }
                        Reply::Built(tx, _) => tx.send(Err(err.clone())),
                        Reply::Prune(tx, _) => {
                            let _ = tx.send(Err(QueryError::Log(err.clone())));
                        }
                        Reply::Settle(tx) => self.settling.push(tx),
                    }
                }
                self.frontiers.clear();
                self.recover_queue();
            }
        }
    }

    fn recover_queue(&mut self) {
        let found = (|| -> Result<VecDeque<Hash>, Error> {
            let txn = self.db.begin_write()?;
            let tables = Tables::open(&txn)?;
            let out = stranded_floating(&tables)?;
            drop(tables);
            txn.abort()?;
            Ok(out)
        })();
        match found {
            Ok(queue) => self.queue = queue,
            Err(err) => error!(%err, "could not rebuild the floating queue"),
        }
    }

    /// Runs the batch; on failure returns the error and the replies not yet produced.
    fn process(
        &mut self,
        commands: Vec<Command>,
        replies: &mut Vec<Reply>,
    ) -> Result<LogState, (Error, Vec<Reply>)> {
        let now_ms = self.config.clock.now_ms();
        // A batch of prune steps alone need not reach the disk now (an fsync per step made
        // some steps take 100 ms in a large log): a step lost in a crash is done again by the
        // next pass, and redb keeps commits atomic and in order, so the floor recorded before
        // a step never lags what it deleted. The next durable commit, or the actor's exit,
        // makes them durable.
        let lazy = commands.iter().all(|c| matches!(c, Command::Prune { .. }));
        let count = commands.len();
        let mut commands: VecDeque<Command> = commands.into();
        let began = std::time::Instant::now();
        let result = (|| -> Result<LogState, Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if lazy {
                Durability::None
            } else {
                Durability::Immediate
            })?;
            let tables = Tables::open(&txn)?;
            let mut batch = Batch::new(
                tables,
                self.state.clone(),
                &self.config,
                self.store_id,
                &mut self.queue,
                &mut self.frontiers,
                now_ms,
            );
            batch.final_frontier = self
                .final_frontier
                .lock()
                .map_or_else(|p| p.into_inner().clone(), |f| f.clone());
            while let Some(cmd) = commands.pop_front() {
                match cmd {
                    Command::Ingest { slots, reply } => {
                        let mut results = Vec::with_capacity(slots.len());
                        for slot in slots {
                            results.push(match slot {
                                Ok(verified) => match batch.ingest(verified) {
                                    Ok(r) => r,
                                    Err(e) => {
                                        replies.push(Reply::Ingest(reply, Vec::new()));
                                        return Err(e);
                                    }
                                },
                                Err(refused) => Err(refused),
                            });
                        }
                        replies.push(Reply::Ingest(reply, results));
                    }
                    Command::Root {
                        floor,
                        items,
                        reply,
                    } => {
                        let rooted = match batch.install_floor(&floor) {
                            Ok(rooted) => rooted,
                            Err(e) => {
                                replies.push(Reply::Ingest(reply, Vec::new()));
                                return Err(e);
                            }
                        };
                        let mut results = Vec::with_capacity(items.len());
                        for (slot, position) in items {
                            results.push(match slot {
                                Ok(verified) if !rooted => Err(IngestError::Unrooted {
                                    hash: verified.0.hash().short(),
                                    reason: "this log is rooted at another floor",
                                }),
                                Ok(verified) => match batch.root(verified, position) {
                                    Ok(r) => r,
                                    Err(e) => {
                                        replies.push(Reply::Ingest(reply, Vec::new()));
                                        return Err(e);
                                    }
                                },
                                Err(refused) => Err(refused),
                            });
                        }
                        replies.push(Reply::Ingest(reply, results));
                    }
                    Command::Settle { reply } => self.settling.push(reply),
                    Command::Prune { target, reply } => match batch.prune(&target) {
                        Err(QueryError::Log(e)) => {
                            replies.push(Reply::Prune(reply, Ok(Default::default())));
                            return Err(e);
                        }
                        result => replies.push(Reply::Prune(reply, result)),
                    },
                    Command::WitnessBuilt { run, reply } => match batch.witness_built(run) {
                        Ok(results) => replies.push(Reply::Built(reply, results)),
                        Err(e) => {
                            replies.push(Reply::Built(reply, Vec::new()));
                            return Err(e);
                        }
                    },
                    Command::Author { draft, reply } => {
                        // Consecutive local writes are built together so they can be signed
                        // in parallel.
                        let mut drafts = vec![draft];
                        let mut txs = vec![reply];
                        while matches!(commands.front(), Some(Command::Author { .. })) {
                            if let Some(Command::Author { draft, reply }) = commands.pop_front() {
                                drafts.push(draft);
                                txs.push(reply);
                            }
                        }
                        match batch.author_run(&self.key, drafts) {
                            Ok(results) => {
                                for (tx, result) in txs.into_iter().zip(results) {
                                    replies.push(Reply::Author(tx, result));
                                }
                            }
                            Err(e) => {
                                for tx in txs {
                                    replies
                                        .push(Reply::Author(tx, Err(AuthorError::Log(e.clone()))));
                                }
                                return Err(e);
                            }
                        }
                    }
                }
            }
            batch.resolve(self.config.max_resolve_per_batch)?;
            let commands_took = began.elapsed();
            let state = batch.finish(&self.key)?;
            let body = began.elapsed();
            txn.commit()?;
            let took = began.elapsed();
            if took >= SLOW_TRANSACTION {
                debug!(
                    commands = count,
                    lazy,
                    commands_ms = commands_took.as_millis() as u64,
                    finish_ms = (body - commands_took).as_millis() as u64,
                    commit_ms = (took - body).as_millis() as u64,
                    "slow log transaction"
                );
            }
            Ok(state)
        })();
        if result.is_ok() {
            self.undurable = lazy;
        }
        result.map_err(|e| {
            let rest = commands
                .into_iter()
                .map(|cmd| match cmd {
                    Command::Ingest { reply, .. } | Command::Root { reply, .. } => {
                        Reply::Ingest(reply, Vec::new())
                    }
                    Command::Author { reply, .. } => {
                        Reply::Author(reply, Err(AuthorError::Log(e.clone())))
                    }
                    Command::WitnessBuilt { reply, .. } => Reply::Built(reply, Vec::new()),
                    Command::Settle { reply } => Reply::Settle(reply),
                    Command::Prune { reply, .. } => {
                        Reply::Prune(reply, Err(QueryError::Log(e.clone())))
                    }
                })
                .collect();
            (e, rest)
        })
    }
}
