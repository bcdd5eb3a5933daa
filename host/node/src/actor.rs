//! [`StoreActor`]: the thread that owns one open store — its guest instances, `state.db` and
//! `system.db`. Everything else sends it messages and awaits the reply.
//!
//! The actor blocks for one message, then drains whatever else is queued. Consecutive
//! commands of the store's type become one write run: prepared and applied in order, then
//! handed to the log for one group commit ([`Store::start_write_run`]). The actor does not
//! wait for the fsync: it goes on taking messages, and the log reports the commit back into
//! its inbox; then the run's state is committed and each caller answered with its own
//! outcome ([`Store::finish_write_run`]). Commands arriving meanwhile wait and become the
//! next run, so concurrency turns into bigger runs. Queries of the store's type are
//! answered as they come, from the committed state (the queued and in-flight writes are not
//! answered yet, so they are concurrent with the query), and never wait for a commit. Other
//! work (system calls, status, projection after replication) runs as a job in arrival order,
//! after the writes queued before it have landed. Between runs the actor takes one prune step
//! when a prune pass is under way, passes the data partition's watch events to subscribers,
//! and makes the projected state durable every [`FLUSH_INTERVAL`] and when it stops.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use lattice_model::{Hash, StoreId};
use lattice_runtime::{MethodKind, WatchEvent};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, error, warn};

use lattice_net::Replicator;

use crate::error::NodeError;
use crate::store::{CallReply, RunInFlight, RunStart, Store, Written};

/// How often projected state is made durable (the log already is).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Most messages taken in one round.
const MAX_ROUND: usize = 1024;

type Job = Box<dyn FnOnce(&mut Option<Store>) + Send>;

/// Where an actor passes what its store produces besides replies.
pub(crate) struct Outlets {
    /// Subscribers to the data partition's watch events.
    pub watch: broadcast::Sender<WatchEvent>,
    /// Gossips the host intentions the store writes on its own (epochs, acks) and follows
    /// its current epoch (the gossip topic rotates with it).
    pub replicator: Replicator,
}

enum Msg {
    /// A method of the store's type.
    Call {
        method: String,
        args: Value,
        reply: Reply,
    },
    /// Any other work on the store.
    Job(Job),
    /// The log's outcome of the write run in flight.
    Witnessed(lattice_log::BuiltOutcome),
    /// Stop once the work queued before is done.
    Stop,
    /// Stop now, as a killed process would: queued work is dropped (its callers get
    /// `NotOpen`) and projected state is not made durable (it is rebuilt from the log on
    /// the next open). For simulations and tests of recovery.
    Crash,
}

/// Handle to one store's actor: a thread, or state run on the callers' thread (inline).
pub(crate) struct StoreActor {
    id: StoreId,
    /// Set by the actor as it stops: `Some(None)` closed, `Some(Some(reason))` damaged.
    stopped: watch::Receiver<Option<Option<String>>>,
    inbox: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The actor when it runs inline: `None` once it stopped.
    inline: Option<Mutex<Option<Inline>>>,
}

/// An inline actor: its state, inbox and stop signal, run by whoever sends it a message.
struct Inline {
    actor: Actor,
    inbox: mpsc::Receiver<Msg>,
    flushed: Instant,
    stop: watch::Sender<Option<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreActor {
    /// Starts the actor for `id`; `store` is `None` while the genesis has not arrived. An
    /// `inline` actor has no thread: each message is handled as it is sent, on the
    /// sender's thread (deterministic simulations, see `Node::inline`).
    pub(crate) fn spawn(
        id: StoreId,
        store: Option<Store>,
        outlets: Outlets,
        inline: bool,
    ) -> Result<StoreActor, NodeError> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = watch::channel(None);
        let actor = Actor::new(id, store, outlets, tx.clone());
        let (thread, inline) = if inline {
            let state = Inline {
                actor,
                inbox: rx,
                flushed: Instant::now(),
                stop,
            };
            (None, Some(Mutex::new(Some(state))))
        } else {
            let thread = std::thread::Builder::new()
                .name(format!("store-{}", id.short()))
                .spawn(move || {
                    let damage = run(actor, rx);
                    stop.send_replace(Some(damage));
                })
                .map_err(|source| NodeError::Io {
                    path: format!("store actor thread for {}", id.short()),
                    source,
                })?;
            (Some(thread), None)
        };
        Ok(StoreActor {
            id,
            stopped,
            inbox: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
            inline,
        })
    }

    /// Why the actor stopped serving the store, if a storage operation panicked.
    pub(crate) fn damage(&self) -> Option<String> {
        self.stopped.borrow().clone().flatten()
    }

    /// The error for a caller whose message the actor will not answer.
    fn gone(&self) -> NodeError {
        match self.damage() {
            Some(reason) => NodeError::Damaged {
                store: self.id.short(),
                reason,
            },
            None => NodeError::NotOpen(self.id.to_string()),
        }
    }

    /// As [`StoreActor::gone`], once the actor has said why it stopped (its reply channels
    /// close while it unwinds, a moment before it records the damage).
    async fn gone_after_stop(&self) -> NodeError {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(Option::is_some).await;
        self.gone()
    }

    /// Asks the actor to stop after the work queued so far; later messages are refused.
    fn stop(&self) {
        self.stop_with(Msg::Stop);
    }

    fn stop_with(&self, msg: Msg) {
        let inbox = lock(&self.inbox).take();
        if let Some(inbox) = inbox {
            let _ = inbox.send(msg);
            self.pump();
        }
    }

    fn send(&self, msg: Msg) -> Result<(), NodeError> {
        lock(&self.inbox)
            .as_ref()
            .ok_or_else(|| self.gone())?
            .send(msg)
            .map_err(|_| self.gone())?;
        self.pump();
        Ok(())
    }

    /// Inline, handles what was sent. A message sent while the actor is busy (by work it
    /// runs) is handled by that same pump, which runs until the inbox is empty.
    fn pump(&self) {
        let Some(inline) = &self.inline else {
            return;
        };
        let mut slot = match inline.try_lock() {
            Ok(slot) => slot,
            // A panic outside the actor's own guard: it is gone, as a dead thread would be.
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let outcome = Some("the store actor panicked".into());
                self.retire(p.into_inner().take(), outcome);
                return;
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if let Some(state) = slot.as_mut()
            && let Some(outcome) = pump(state)
        {
            self.retire(slot.take(), outcome);
        }
    }

    /// Ends an inline actor that stopped (`None`: closed, `Some`: why it is damaged): its
    /// state goes, with its inbox and its own sender, and later callers see it gone.
    fn retire(&self, state: Option<Inline>, outcome: Option<String>) {
        if let Some(Inline { actor, stop, .. }) = state {
            drop(actor);
            stop.send_replace(Some(outcome));
        }
        lock(&self.inbox).take();
    }

    /// Calls a method of the store's type. A failed call comes with the blobs its guest
    /// looked for and did not find (taken in the same turn, so a caller learns at once
    /// whether fetching them could help).
    ///
    /// Its result fails as [`Store::call`] does; with [`NodeError::NotReady`] before the
    /// genesis arrived; [`NodeError::NotOpen`] once the actor stopped.
    pub(crate) async fn call(&self, method: String, args: Value) -> Answer {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.send(Msg::Call {
            method,
            args,
            reply,
        }) {
            return failed(e);
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => failed(self.gone_after_stop().await),
        }
    }

    /// Runs `f` on the store on the actor thread and returns its result.
    ///
    /// # Errors
    /// What `f` returns; [`NodeError::NotReady`] before the genesis arrived;
    /// [`NodeError::NotOpen`] once the actor stopped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let id = self.id;
        self.with_slot(move |slot| match slot.as_mut() {
            Some(store) => f(store),
            None => Err(NodeError::NotReady(id.to_string())),
        })
        .await
    }

    /// Runs `f` on the actor thread with the store slot (empty before the genesis arrived).
    ///
    /// # Errors
    /// What `f` returns; [`NodeError::NotOpen`] once the actor stopped.
    pub(crate) async fn with_slot<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<Store>) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Job(Box::new(move |slot| {
            let _ = reply.send(f(slot));
        })))?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.gone_after_stop().await),
        }
    }

    /// Stops the actor after the work queued before this call, makes state durable and waits
    /// for the thread.
    pub(crate) async fn close(&self) {
        self.stop();
        self.join().await;
    }

    /// Stops the actor as a killed process would (see `Msg::Crash`) and waits for the thread.
    pub(crate) async fn crash(&self) {
        self.stop_with(Msg::Crash);
        self.join().await;
    }

    async fn join(&self) {
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                warn!(store = %self.id.short(), "the store actor ended abnormally");
            }
        }
    }
}

impl Drop for StoreActor {
    fn drop(&mut self) {
        // Stops the thread; it finishes its queue and flushes on its own.
        self.stop();
    }
}

/// The actor thread's loop; returns why the store stopped being served (`None`: closed).
fn run(mut actor: Actor, inbox: mpsc::Receiver<Msg>) -> Option<String> {
    let _span = tracing::info_span!("store", store = %actor.id.short()).entered();
    let mut flushed = Instant::now();
    loop {
        if let Some(outcome) = actor.finished(&mut flushed) {
            return outcome;
        }
        // While a prune pass is under way the actor does not wait for messages: it runs one
        // prune step per round, between write runs.
        let pruning = actor.pruning();
        let wait = if pruning {
            Duration::ZERO
        } else {
            FLUSH_INTERVAL
        };
        let mut round = Vec::new();
        match inbox.recv_timeout(wait) {
            Ok(msg) => round.push(msg),
            Err(RecvTimeoutError::Timeout) if !pruning => {
                if actor.flight.is_none() {
                    flush(&mut actor.slot, &mut flushed);
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Not while the actor holds `me`; stop all the same.
            Err(RecvTimeoutError::Disconnected) => actor.stopping = true,
        }
        take_round(&inbox, &mut round);
        if let Some(damage) = actor.turn(round, &mut flushed) {
            return Some(damage);
        }
    }
}

/// An inline actor's turn: handles every message queued (and prune steps) until it would
/// wait; returns why it stopped once it has.
fn pump(state: &mut Inline) -> Option<Option<String>> {
    let Inline {
        actor,
        inbox,
        flushed,
        ..
    } = state;
    let _span = tracing::info_span!("store", store = %actor.id.short()).entered();
    loop {
        if let Some(outcome) = actor.finished(flushed) {
            return Some(outcome);
        }
        let mut round = Vec::new();
        take_round(inbox, &mut round);
        if round.is_empty() && !actor.pruning() {
            return None;
        }
        if let Some(damage) = actor.turn(round, flushed) {
            return Some(Some(damage));
        }
    }
}

/// Adds to `round` what is queued, up to [`MAX_ROUND`] messages.
fn take_round(inbox: &mpsc::Receiver<Msg>, round: &mut Vec<Msg>) {
    while round.len() < MAX_ROUND {
        match inbox.try_recv() {
            Ok(msg) => round.push(msg),
            Err(_) => break,
        }
    }
}

/// The actor's state between rounds.
struct Actor {
    id: StoreId,
    slot: Option<Store>,
    outlets: Outlets,
    /// The actor's own inbox, for the log to report a write run's group commit.
    me: mpsc::Sender<Msg>,
    /// Work not started yet, in arrival order.
    backlog: VecDeque<Waiting>,
    /// The write run the log is committing, with its callers.
    flight: Option<Flight>,
    /// Asked to stop: it does once the backlog is done.
    stopping: bool,
    /// Asked to crash: it stops after this round without flushing.
    crashed: bool,
}

/// Work waiting for the store.
enum Waiting {
    /// Consecutive commands of the store's type: the next write run.
    Writes(Vec<Queued>),
    Job(Job),
}

/// A write run handed to the log, and the callers waiting for it.
struct Flight {
    run: RunInFlight,
    replies: Vec<Reply>,
}

/// A call's result and, when it failed, the blobs its guest looked for and did not find.
pub(crate) type Answer = (Result<CallReply, NodeError>, Vec<Hash>);

/// A call's caller.
type Reply = oneshot::Sender<Answer>;

/// The answer to a call that failed before its guest ran (no blobs missed).
fn failed(error: NodeError) -> Answer {
    (Err(error), Vec::new())
}

/// A command waiting for the next write run, with its caller.
type Queued = ((String, Value), Reply);

impl Actor {
    fn new(id: StoreId, slot: Option<Store>, outlets: Outlets, me: mpsc::Sender<Msg>) -> Actor {
        Actor {
            id,
            slot,
            outlets,
            me,
            backlog: VecDeque::new(),
            flight: None,
            stopping: false,
            crashed: false,
        }
    }

    /// Whether a prune pass wants steps (taken between write runs, without waiting).
    fn pruning(&self) -> bool {
        self.flight.is_none() && self.slot.as_ref().is_some_and(Store::is_pruning)
    }

    /// `Some` once the actor is done: crashed (nothing flushed) or stopped with its backlog
    /// finished (state made durable).
    fn finished(&mut self, flushed: &mut Instant) -> Option<Option<String>> {
        if self.crashed {
            debug!("store actor crashed (as asked)");
            return Some(None);
        }
        if self.stopping && self.flight.is_none() && self.backlog.is_empty() {
            flush(&mut self.slot, flushed);
            debug!("store actor stopped");
            return Some(None);
        }
        None
    }

    /// Handles one round of messages; a panic in it comes from a storage library reading
    /// damaged bytes: the store stops being served (callers get `Damaged`), the rest of
    /// the node goes on. Returns the reason then.
    fn turn(&mut self, round: Vec<Msg>, flushed: &mut Instant) -> Option<String> {
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(round))) {
            let reason = format!(
                "a storage operation panicked: {}",
                lattice_log::file::panic_text(payload.as_ref())
            );
            error!(
                "store {} is damaged and no longer served: {reason}",
                self.id.short()
            );
            if let Some(mut store) = self.slot.take() {
                store.mark_damaged();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(store)));
            }
            return Some(reason);
        }
        if self.flight.is_none() && flushed.elapsed() >= FLUSH_INTERVAL {
            flush(&mut self.slot, flushed);
        }
        None
    }

    /// Handles one round of messages (see the module docs).
    fn handle(&mut self, round: Vec<Msg>) {
        for msg in round {
            match msg {
                Msg::Call {
                    method,
                    args,
                    reply,
                } => {
                    let kind = self
                        .slot
                        .as_mut()
                        .and_then(|s| s.method_kind(&method).ok().flatten());
                    if kind == Some(MethodKind::Query) {
                        // A query is answered at once, from the committed state: the writes
                        // queued or in flight are not answered yet, so they are concurrent
                        // with it and either order is a true answer. Queries never wait for
                        // a group commit (a mount's lookups between its files' writes).
                        let answer = match self.slot.as_mut() {
                            Some(store) => {
                                let result = store.call(&method, &args).map(CallReply::Answer);
                                let missed = missed_if_failed(store, result.is_err());
                                (result, missed)
                            }
                            None => failed(NodeError::NotReady(self.id.to_string())),
                        };
                        let _ = reply.send(answer);
                    } else if let Some(Waiting::Writes(queued)) = self.backlog.back_mut() {
                        queued.push(((method, args), reply));
                    } else {
                        self.backlog
                            .push_back(Waiting::Writes(vec![((method, args), reply)]));
                    }
                }
                Msg::Job(job) => self.backlog.push_back(Waiting::Job(job)),
                Msg::Witnessed(outcome) => self.land(outcome),
                Msg::Stop => self.stopping = true,
                Msg::Crash => {
                    self.crashed = true;
                    self.backlog.clear();
                    return;
                }
            }
        }
        if self.flight.is_none()
            && let Some(store) = self.slot.as_mut()
        {
            store.prune_step();
        }
        self.advance();
        if let Some(store) = self.slot.as_mut() {
            pass_events(store, &self.outlets);
        }
    }

    /// Starts waiting work in order until a write run is in flight or nothing is left.
    fn advance(&mut self) {
        while self.flight.is_none() {
            match self.backlog.pop_front() {
                None => break,
                Some(Waiting::Job(job)) => job(&mut self.slot),
                Some(Waiting::Writes(queued)) => self.start(queued),
            }
        }
    }

    /// Hands the next write run to the log.
    fn start(&mut self, queued: Vec<Queued>) {
        let (calls, replies): (Vec<(String, Value)>, Vec<Reply>) = queued.into_iter().unzip();
        let Some(store) = self.slot.as_mut() else {
            for reply in replies {
                let _ = reply.send(failed(NodeError::NotReady(self.id.to_string())));
            }
            return;
        };
        let me = self.me.clone();
        match store.start_write_run(&calls, move |outcome| {
            let _ = me.send(Msg::Witnessed(outcome));
        }) {
            RunStart::Done(results) => answer(store, &self.outlets, replies, results),
            RunStart::InFlight(run) => self.flight = Some(Flight { run, replies }),
        }
    }

    /// The log committed the run in flight: finish it and answer its callers.
    fn land(&mut self, outcome: lattice_log::BuiltOutcome) {
        let Some(Flight { run, replies }) = self.flight.take() else {
            warn!(store = %self.id.short(), "a group commit was reported with no run in flight");
            return;
        };
        match self.slot.as_mut() {
            Some(store) => {
                let results = store.finish_write_run(run, outcome);
                answer(store, &self.outlets, replies, results);
            }
            None => {
                for reply in replies {
                    let _ = reply.send(failed(NodeError::NotReady(self.id.to_string())));
                }
            }
        }
    }
}

/// Gives each caller of a write run its outcome; watchers hear of the writes first.
fn answer(
    store: &mut Store,
    outlets: &Outlets,
    replies: Vec<Reply>,
    results: Vec<Result<Written, NodeError>>,
) {
    pass_events(store, outlets);
    let missed = missed_if_failed(store, results.iter().any(Result::is_err));
    for (reply, result) in replies.into_iter().zip(results) {
        let missed = if result.is_err() {
            missed.clone()
        } else {
            Vec::new()
        };
        let _ = reply.send((result.map(CallReply::Wrote), missed));
    }
}

/// The blobs the store's guest looked for and did not find, when a call `failed` (a
/// successful call leaves them for the next failure to report).
fn missed_if_failed(store: &mut Store, failed: bool) -> Vec<Hash> {
    if failed {
        store.take_missed_blobs()
    } else {
        Vec::new()
    }
}

fn pass_events(store: &mut Store, outlets: &Outlets) {
    for event in store.take_data_events() {
        let _ = outlets.watch.send(event);
    }
    for intention in store.take_host_writes() {
        outlets.replicator.publish(&intention);
    }
    if let Some(epoch) = store.take_epoch_change() {
        outlets.replicator.set_epoch(&store.id(), epoch);
    }
}

fn flush(slot: &mut Option<Store>, flushed: &mut Instant) {
    if let Some(store) = slot.as_mut()
        && let Err(e) = store.flush()
    {
        warn!("could not make projected state durable: {e}");
    }
    *flushed = Instant::now();
}
