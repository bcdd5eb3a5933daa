//! [`StoreActor`]: the thread that owns one open store — its guest instances, `state.db` and
//! `system.db`. Everything else sends it messages and awaits the reply.
//!
//! The actor blocks for one message, then drains whatever else is queued. Consecutive
//! commands of the store's type become one write run ([`Store::write_run`]): prepared and
//! applied in order, witnessed in one group commit, committed to state in one transaction,
//! each caller answered with its own outcome. Concurrency turns into bigger runs. Queries of
//! the store's type are answered as they come, from the state before the round's queued
//! writes (those are concurrent with them), so they do not split a run. Other work (system
//! calls, status, projection after replication) runs as a job in arrival order, after the
//! writes queued before it. After each round the actor passes the data partition's watch events to
//! subscribers, and it makes the projected state durable every [`FLUSH_INTERVAL`] and when it
//! stops.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lattice_model::StoreId;
use lattice_runtime::{MethodKind, WatchEvent};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tracing::{debug, error, warn};

use lattice_net::Replicator;

use crate::error::NodeError;
use crate::store::{CallReply, Store};

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
        reply: oneshot::Sender<Result<CallReply, NodeError>>,
    },
    /// Any other work on the store.
    Job(Job),
}

/// Handle to one store's actor thread.
pub(crate) struct StoreActor {
    id: StoreId,
    /// Set by the actor as it stops: `Some(None)` closed, `Some(Some(reason))` damaged.
    stopped: watch::Receiver<Option<Option<String>>>,
    inbox: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreActor {
    /// Starts the actor for `id`; `store` is `None` while the genesis has not arrived.
    pub(crate) fn spawn(
        id: StoreId,
        store: Option<Store>,
        outlets: Outlets,
    ) -> Result<StoreActor, NodeError> {
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = watch::channel(None);
        let thread = std::thread::Builder::new()
            .name(format!("store-{}", id.short()))
            .spawn(move || {
                let damage = run(id, store, rx, &outlets);
                stop.send_replace(Some(damage));
            })
            .map_err(|source| NodeError::Io {
                path: format!("store actor thread for {}", id.short()),
                source,
            })?;
        Ok(StoreActor {
            id,
            stopped,
            inbox: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
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

    fn send(&self, msg: Msg) -> Result<(), NodeError> {
        lock(&self.inbox)
            .as_ref()
            .ok_or_else(|| self.gone())?
            .send(msg)
            .map_err(|_| self.gone())
    }

    /// Calls a method of the store's type.
    ///
    /// # Errors
    /// As [`Store::call`]; [`NodeError::NotReady`] before the genesis arrived;
    /// [`NodeError::NotOpen`] once the actor stopped.
    pub(crate) async fn call(&self, method: String, args: Value) -> Result<CallReply, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Call {
            method,
            args,
            reply,
        })?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.gone_after_stop().await),
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
        lock(&self.inbox).take();
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
        lock(&self.inbox).take();
    }
}

fn run(
    id: StoreId,
    mut slot: Option<Store>,
    inbox: mpsc::Receiver<Msg>,
    outlets: &Outlets,
) -> Option<String> {
    let _span = tracing::info_span!("store", store = %id.short()).entered();
    let mut flushed = Instant::now();
    loop {
        // While a prune pass is under way the actor does not wait for messages: it runs one
        // prune step per round, between write runs.
        let pruning = slot.as_ref().is_some_and(Store::is_pruning);
        let wait = if pruning {
            Duration::ZERO
        } else {
            FLUSH_INTERVAL
        };
        let mut round = Vec::new();
        match inbox.recv_timeout(wait) {
            Ok(msg) => round.push(msg),
            Err(RecvTimeoutError::Timeout) if !pruning => {
                flush(&mut slot, &mut flushed);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while round.len() < MAX_ROUND {
            match inbox.try_recv() {
                Ok(msg) => round.push(msg),
                Err(_) => break,
            }
        }
        // A panic below comes from a storage library reading damaged bytes: the store stops
        // being served (callers get `Damaged`), the rest of the node goes on.
        if let Err(payload) =
            std::panic::catch_unwind(AssertUnwindSafe(|| handle(id, &mut slot, round, outlets)))
        {
            let reason = format!(
                "a storage operation panicked: {}",
                lattice_log::file::panic_text(payload.as_ref())
            );
            error!(
                "store {} is damaged and no longer served: {reason}",
                id.short()
            );
            if let Some(mut store) = slot.take() {
                store.mark_damaged();
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(store)));
            }
            return Some(reason);
        }
        if flushed.elapsed() >= FLUSH_INTERVAL {
            flush(&mut slot, &mut flushed);
        }
    }
    flush(&mut slot, &mut flushed);
    debug!("store actor stopped");
    None
}

/// Handles one round of messages (see the module docs).
fn handle(id: StoreId, slot: &mut Option<Store>, round: Vec<Msg>, outlets: &Outlets) {
    let mut queued: Vec<Queued> = Vec::new();
    for msg in round {
        match msg {
            Msg::Call {
                method,
                args,
                reply,
            } => {
                let kind = slot
                    .as_mut()
                    .and_then(|s| s.method_kind(&method).ok().flatten());
                if kind == Some(MethodKind::Query) {
                    // A query is answered at once, from the state before the writes queued in
                    // this round: their callers are still waiting for them, so they are
                    // concurrent with the query and either order is a true answer. Keeping
                    // queries out of the way lets the round's writes share one durable commit
                    // (a mount's lookups between its files' writes, for example).
                    let answer = match slot.as_mut() {
                        Some(store) => store.call(&method, &args).map(CallReply::Answer),
                        None => Err(NodeError::NotReady(id.to_string())),
                    };
                    let _ = reply.send(answer);
                } else {
                    queued.push(((method, args), reply));
                }
            }
            Msg::Job(job) => {
                write_run(id, slot, &mut queued, outlets);
                job(slot);
            }
        }
    }
    write_run(id, slot, &mut queued, outlets);
    if let Some(store) = slot.as_mut() {
        store.prune_step();
        pass_events(store, outlets);
    }
}

/// A command waiting for the next write run, with its caller's reply channel.
type Queued = (
    (String, Value),
    oneshot::Sender<Result<CallReply, NodeError>>,
);

fn write_run(id: StoreId, slot: &mut Option<Store>, queued: &mut Vec<Queued>, outlets: &Outlets) {
    if queued.is_empty() {
        return;
    }
    let (calls, replies): (Vec<(String, Value)>, Vec<_>) =
        std::mem::take(queued).into_iter().unzip();
    match slot.as_mut() {
        Some(store) => {
            let results = store.write_run(&calls);
            // Watchers hear of a write before its caller does.
            pass_events(store, outlets);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result.map(CallReply::Wrote));
            }
        }
        None => {
            for reply in replies {
                let _ = reply.send(Err(NodeError::NotReady(id.to_string())));
            }
        }
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
