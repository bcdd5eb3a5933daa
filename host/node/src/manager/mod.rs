//! [`StoreManager`]: a running node — its stores open and replicated, the peer set of each
//! store kept equal to what its system table says, child stores opened on every peer,
//! invites, joins, revocation, leaving, archiving, and watchers.
//!
//! Every store is replicated with [`Access::Members`]: only its active and dormant peers (for
//! a child with the inherited strategy: its parent's) may open sessions or gossip it. The
//! manager reads the peer set from the system table guest's `peers` query whenever the
//! system partition reports a `peer` event, and opens or closes children on `child` events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lattice_log::Log;
use lattice_model::{Hash, PubKey, StoreId};
use lattice_net::{
    Access, Gossip, IrohNet, JoinRequest, PeerAddr, ReplicaError, ReplicaEvent, Replicator,
    ReplicatorConfig, SnapshotRequest, Transport,
};
use lattice_runtime::{ModuleHash, WatchEvent};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

mod blobs;
pub use blobs::{BLOB_GRACE, COLLECT_EVERY};
mod invites;
mod lifecycle;
mod membership;

use crate::actor::{Outlets, StoreActor};
use crate::error::NodeError;
use crate::invite::InviteToken;
use crate::meta::{StoreRecord, StoreState};
use crate::node::Node;
use crate::store::{
    CallReply, ChildStatus, IntentionSummary, PeerInfo, PeerStatus, RejectedIntention, Snapshot,
    Store, StoreStatus, snapshot_refused,
};

/// Watch events buffered per subscriber before it is told it lagged.
pub const WATCH_BUFFER: usize = 1024;

/// Something a running node did (for watchers, progress and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A store was opened (created, joined, or a child discovered).
    StoreOpened(StoreId),
    /// A store was closed (archived, left, or shut down).
    StoreClosed(StoreId),
    /// A store's projected state changed.
    StoreChanged(StoreId),
}

struct OpenStore {
    log: Arc<Log>,
    /// Owns the store (absent while a child store's genesis has not arrived yet).
    actor: StoreActor,
    parent: Option<StoreId>,
    watch: broadcast::Sender<WatchEvent>,
}

struct Inner {
    node: Node,
    replicator: Replicator,
    iroh: Option<Arc<IrohNet>>,
    /// False for a node started without a network ([`StoreManager::start_offline`]).
    online: bool,
    stores: Mutex<BTreeMap<StoreId, Arc<OpenStore>>>,
    events: broadcast::Sender<NodeEvent>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Short-lived work started on the side (snapshot answers, catch-ups, module and blob
    /// fetches); `None` once the node stops. Aborted and awaited by a stop, so nothing
    /// holds the node afterwards.
    side: Mutex<Option<tokio::task::JoinSet<()>>>,
    /// Held while a store is opened or closed.
    lifecycle: tokio::sync::Mutex<()>,
    /// Held while peer sets are read and handed to the replicator, so a set computed from an
    /// older system state never overwrites a newer one.
    members: tokio::sync::Mutex<()>,
    /// Chain positions re-joining peers reported for child stores: where their
    /// re-activation in each child resumes (see [`StoreManager::mirror_membership`]).
    resume_at: Mutex<BTreeMap<(StoreId, PubKey), u64>>,
    /// Stores that failed to open, with the reason: not served until repaired.
    damaged: Mutex<BTreeMap<StoreId, String>>,
    /// Stores being repaired: closed, and not to be reopened until the repair is done.
    repairing: Mutex<std::collections::BTreeSet<StoreId>>,
    /// Headless stores whose module is being fetched from their peers.
    fetching_modules: Mutex<std::collections::BTreeSet<StoreId>>,
    /// Stores whose referenced blobs are being fetched now.
    fetching_blobs: Mutex<std::collections::BTreeSet<StoreId>>,
    /// Referenced blobs a fetch failed for, per store: asked for again at the next pass.
    blob_retry: Mutex<BTreeMap<StoreId, std::collections::BTreeSet<Hash>>>,
}

/// A running node; cheap to clone.
#[derive(Clone)]
pub struct StoreManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StoreManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreManager({})",
            self.inner.node.key().public().short()
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder is a bug elsewhere; the guarded values stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreManager {
    /// Runs blocking node work (redb, fsyncs, Cranelift compiles) off the async workers;
    /// `what` names it in the error should the task panic. An inline node
    /// ([`Node::inline`]) runs it in place.
    async fn off_workers<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        if self.inner.node.is_inline() {
            return f();
        }
        on_blocking_pool(what, f).await?
    }
}

/// Runs `f` on tokio's blocking pool; `what` names it in the error should the task panic.
async fn on_blocking_pool<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Meta(format!("{what} failed: {e}")))
}

/// The newest position of `author`'s chain in `log` (0 when it has written nothing).
fn chain_position(log: &Log, author: &PubKey) -> Result<u64, NodeError> {
    Ok(match log.reader().tip(author)? {
        Some(h) => log.reader().dag_info(&h)?.map_or(0, |i| i.author_seq),
        None => 0,
    })
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The store joined.
    pub store: StoreId,
    /// Intentions fetched by the bootstrap (0 for a re-join that kept its data).
    pub fetched: u64,
    /// Size of the snapshot the store was joined from (0: bootstrapped from the inviter's
    /// history); a member that pruned its history gives a snapshot.
    pub snapshot_bytes: u64,
}

/// The refusal an inviter gives a peer that is a member already (the joiner maps it to
/// [`NodeError::AlreadyMember`]).
const ALREADY_MEMBER: &str = "already a member of this store";

impl StoreManager {
    /// Starts a node on iroh bound to `listen` (for example `127.0.0.1:0`).
    ///
    /// # Errors
    /// [`NodeError::Net`] when the endpoint cannot be bound; store open failures.
    pub async fn start_iroh(
        node: Node,
        listen: SocketAddr,
        config: ReplicatorConfig,
    ) -> Result<StoreManager, NodeError> {
        // With port 0, take the previous port again when it is free, so peers that know this
        // node's address reach it after a restart.
        let previous_text = node.meta().setting("listen")?;
        let previous = previous_text
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| listen.port() == 0 && a.ip() == listen.ip());
        let key = node.key().clone();
        let binding = async {
            match previous {
                Some(addr) => match IrohNet::bind(&key, addr).await {
                    Ok(net) => Ok(net),
                    Err(e) => {
                        debug!(%addr, "previous port unavailable ({e}); binding a new one");
                        IrohNet::bind(&key, listen).await
                    }
                },
                None => IrohNet::bind(&key, listen).await,
            }
        };
        // The stores' files open while the endpoint binds.
        let opening = on_blocking_pool("opening the stores", move || {
            let opened = lifecycle::preopen(&node);
            (node, opened)
        });
        let (net, opening) = tokio::join!(binding, opening);
        let (node, opened) = opening?;
        let (net, opened) = (net?, opened?);
        if let Some(bound) = net.local().addrs.first().map(ToString::to_string)
            && previous_text.as_deref() != Some(bound.as_str())
        {
            node.meta().set_setting("listen", &bound)?;
        }
        Self::start_with(
            node,
            net.clone(),
            net.clone(),
            Some(net),
            true,
            config,
            opened,
        )
        .await
    }

    /// Starts a node with no network at all, for one-shot work on the local data (reads,
    /// writes, status): nothing is dialled, nothing listens, and this node's recorded
    /// addresses are left as they are. Its writes reach peers when the node next runs online.
    ///
    /// # Errors
    /// Store open failures.
    pub async fn start_offline(node: Node) -> Result<StoreManager, NodeError> {
        let alone = lattice_net::SimNetwork::new(0, lattice_net::SimConfig::default())
            .node(node.key().public());
        Self::start_with(
            node,
            alone.clone(),
            alone,
            None,
            false,
            ReplicatorConfig::default(),
            BTreeMap::new(),
        )
        .await
    }

    /// Starts a node on the given transport: opens every active store of the inventory
    /// (parents before children) and replicates it.
    ///
    /// # Errors
    /// Store open failures.
    pub async fn start(
        node: Node,
        transport: Arc<dyn Transport>,
        gossip: Arc<dyn Gossip>,
        iroh: Option<Arc<IrohNet>>,
        config: ReplicatorConfig,
    ) -> Result<StoreManager, NodeError> {
        Self::start_with(node, transport, gossip, iroh, true, config, BTreeMap::new()).await
    }

    async fn start_with(
        node: Node,
        transport: Arc<dyn Transport>,
        gossip: Arc<dyn Gossip>,
        iroh: Option<Arc<IrohNet>>,
        online: bool,
        config: ReplicatorConfig,
        mut opened: BTreeMap<StoreId, Result<lifecycle::OpenedFiles, NodeError>>,
    ) -> Result<StoreManager, NodeError> {
        let replicator = Replicator::start(transport, gossip, config);
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            node,
            replicator,
            iroh,
            online,
            stores: Mutex::new(BTreeMap::new()),
            events,
            tasks: Mutex::new(Vec::new()),
            side: Mutex::new(Some(tokio::task::JoinSet::new())),
            lifecycle: tokio::sync::Mutex::new(()),
            members: tokio::sync::Mutex::new(()),
            resume_at: Mutex::new(BTreeMap::new()),
            damaged: Mutex::new(BTreeMap::new()),
            repairing: Mutex::new(std::collections::BTreeSet::new()),
            fetching_modules: Mutex::new(std::collections::BTreeSet::new()),
            fetching_blobs: Mutex::new(std::collections::BTreeSet::new()),
            blob_retry: Mutex::new(BTreeMap::new()),
        });
        if let Some(cas) = inner.node.cas() {
            inner.replicator.set_cas(cas.clone());
        }
        let joins = inner.replicator.join_requests();
        let snapshots = inner.replicator.snapshot_requests();
        let manager = StoreManager { inner };
        let answering = tokio::spawn(manager.clone().answer_joins(joins));
        lock(&manager.inner.tasks).push(answering);
        let answering = tokio::spawn(manager.clone().answer_snapshots(snapshots));
        lock(&manager.inner.tasks).push(answering);
        for text in manager.inner.node.meta().addrs()? {
            match text.parse::<PeerAddr>() {
                Ok(addr) => manager.inner.replicator.add_peer(&addr),
                Err(e) => warn!("ignoring a malformed remembered peer address: {e}"),
            }
        }
        let mut pending: Vec<StoreRecord> = manager
            .inner
            .node
            .meta()
            .list()?
            .into_iter()
            .filter(|r| r.state == StoreState::Active)
            .collect();
        // Parents first: a child's peer set comes from its parent.
        while !pending.is_empty() {
            let before = pending.len();
            let mut later = Vec::new();
            for record in pending {
                let parent_ready = record.parent.is_none_or(|p| manager.is_open(&p));
                if parent_ready {
                    let files = opened.remove(&record.id);
                    manager.open_or_quarantine_from(&record, files).await;
                } else {
                    later.push(record);
                }
            }
            if later.len() == before {
                // Orphans (parent archived or gone): open them on their own.
                for record in &later {
                    let files = opened.remove(&record.id);
                    manager.open_or_quarantine_from(record, files).await;
                }
                break;
            }
            pending = later;
        }
        let this = manager.clone();
        let mut rx = manager.inner.replicator.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let store = match rx.recv().await {
                    Ok(ReplicaEvent::Synced {
                        store,
                        peer,
                        report,
                    }) if report.behind => {
                        // The peer pruned history this node never had: catch up through a
                        // snapshot of it (on its own task; the store closes meanwhile).
                        let that = this.clone();
                        this.spawn_side(async move {
                            if let Err(e) = that.catch_up(&store, &peer).await {
                                warn!(store = %store.short(), peer = %peer.short(), "could not catch up through a snapshot: {e}");
                            }
                        });
                        continue;
                    }
                    Ok(ReplicaEvent::Synced { store, .. }) => {
                        // A store still waiting for its module asks its peers again after a
                        // reconciliation (not per gossiped intention).
                        let that = this.clone();
                        this.spawn_side(async move {
                            if that
                                .with_store(&store, |st| Ok(st.is_headless()))
                                .await
                                .unwrap_or(false)
                            {
                                that.module_travels(&store).await;
                            }
                        });
                        Some(store)
                    }
                    Ok(
                        ReplicaEvent::Served { store, .. }
                        | ReplicaEvent::Gossiped { store, .. }
                        | ReplicaEvent::GapFilled { store, .. },
                    ) => Some(store),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let targets = match store {
                    Some(s) => vec![s],
                    None => this.open_ids(),
                };
                for s in targets {
                    if let Err(e) = this.refresh(&s).await {
                        warn!(store = %s.short(), "projecting replicated intentions failed: {e}");
                    }
                    this.fetch_referenced(&s);
                }
            }
        });
        lock(&manager.inner.tasks).push(task);
        // Blobs nothing keeps are collected once they are past the grace period.
        let this = manager.clone();
        let collecting = tokio::spawn(async move {
            loop {
                tokio::time::sleep(blobs::COLLECT_EVERY).await;
                match this.collect_blobs(blobs::BLOB_GRACE).await {
                    Ok(r) if r.deleted > 0 || r.released > 0 => {
                        info!(
                            released = r.released,
                            deleted = r.deleted,
                            bytes = r.bytes,
                            "blobs collected"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => warn!("collecting blobs failed: {e}"),
                }
            }
        });
        lock(&manager.inner.tasks).push(collecting);
        info!(node = %manager.inner.node.key().public().short(), addr = %manager.address(), "node running");
        Ok(manager)
    }

    /// Runs `work` on the side (see `Inner::side`); dropped once the node is stopping.
    pub(crate) fn spawn_side(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Some(side) = lock(&self.inner.side).as_mut() {
            // Reap what finished, so the set holds only running work.
            while side.try_join_next().is_some() {}
            side.spawn(work);
        }
    }

    /// The node (identity, inventory, modules).
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// This node's network address (`<key>@<ip:port>,…`), what peers dial.
    pub fn address(&self) -> PeerAddr {
        self.inner.replicator.local()
    }

    /// The replicator (for explicit syncs and its events).
    pub fn replicator(&self) -> &Replicator {
        &self.inner.replicator
    }

    /// Node events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.inner.events.send(event);
    }

    fn is_open(&self, id: &StoreId) -> bool {
        lock(&self.inner.stores).contains_key(id)
    }

    fn open_ids(&self) -> Vec<StoreId> {
        lock(&self.inner.stores).keys().copied().collect()
    }

    fn open_store(&self, id: &StoreId) -> Result<Arc<OpenStore>, NodeError> {
        if let Some(reason) = self.damage(id) {
            return Err(NodeError::Damaged {
                store: id.short(),
                reason,
            });
        }
        lock(&self.inner.stores)
            .get(id)
            .cloned()
            .ok_or_else(|| NodeError::NotOpen(id.to_string()))
    }

    /// Why store `id` is not served, when its files are damaged (found at open, or by a
    /// storage operation that failed while it ran). `lattice store repair` fixes it.
    pub fn damage(&self, id: &StoreId) -> Option<String> {
        if let Some(reason) = lock(&self.inner.damaged).get(id) {
            return Some(reason.clone());
        }
        lock(&self.inner.stores)
            .get(id)
            .and_then(|open| open.actor.damage())
    }

    /// Finds an open or known store by id prefix.
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`], [`NodeError::Ambiguous`].
    pub fn find(&self, text: &str) -> Result<StoreId, NodeError> {
        // A whole id of an open store needs no look at the inventory.
        if let Ok(id) = StoreId::from_hex(text.trim())
            && self.is_open(&id)
        {
            return Ok(id);
        }
        let ids = self
            .inner
            .node
            .meta()
            .list()?
            .into_iter()
            .map(|r| r.id)
            .collect();
        crate::node::match_store_prefix(ids, text)
    }

    /// Runs `f` on an open store whose genesis is here, on the store's actor thread.
    async fn with_store<T: Send + 'static>(
        &self,
        id: &StoreId,
        f: impl FnOnce(&mut Store) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        self.open_store(id)?.actor.run(f).await
    }

    /// Gossips the intention a call wrote (if any) and returns the call's JSON reply.
    fn publish(&self, reply: CallReply) -> Value {
        if let CallReply::Wrote(written) = &reply {
            self.inner.replicator.publish(&written.intention);
        }
        reply.into_value()
    }

    /// Calls a method of a store's type; commands are gossiped to its peers. Concurrent
    /// commands on one store are written as one group (see [`Store::write_run`]).
    ///
    /// # Errors
    /// As [`Store::call`]; [`NodeError::NotOpen`].
    pub async fn call(&self, id: &StoreId, method: &str, args: &Value) -> Result<Value, NodeError> {
        let open = self.open_store(id)?;
        let reply = match open.actor.call(method.to_string(), args.clone()).await {
            // A read of a blob not here (one this node does not keep under the store's blob
            // policy, or not fetched yet): fetch it from the store's peers and try once more.
            // Not after a rejected write: that one was written.
            (Err(e), missed) if !missed.is_empty() && !matches!(e, NodeError::Rejected { .. }) => {
                for hash in &missed {
                    self.fetch_blob(id, hash).await?;
                }
                open.actor.call(method.to_string(), args.clone()).await.0?
            }
            (result, _) => result?,
        };
        if matches!(reply, CallReply::Wrote(_)) {
            self.emit(NodeEvent::StoreChanged(*id));
        }
        Ok(self.publish(reply))
    }

    /// Calls a system table method of a store (peers, children, …); commands are gossiped.
    ///
    /// # Errors
    /// As [`Store::system_call`].
    pub async fn system_call(
        &self,
        id: &StoreId,
        method: &str,
        args: &Value,
    ) -> Result<Value, NodeError> {
        let (method, args) = (method.to_string(), args.clone());
        let reply = self
            .with_store(id, move |s| s.system_call_reply(&method, &args))
            .await?;
        Ok(self.publish(reply))
    }

    /// A store's status.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub async fn status(&self, id: &StoreId) -> Result<StoreStatus, NodeError> {
        self.with_store(id, |s| s.status()).await
    }

    /// The store type's description.
    ///
    /// # Errors
    /// As [`StoreManager::status`]; headless stores cannot describe themselves.
    pub async fn describe(
        &self,
        id: &StoreId,
    ) -> Result<lattice_runtime::StoreDescriptor, NodeError> {
        self.with_store(id, |s| s.describe()).await
    }

    /// The newest `limit` witnessed intentions of a store, newest first.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub async fn history(
        &self,
        id: &StoreId,
        limit: usize,
    ) -> Result<Vec<IntentionSummary>, NodeError> {
        self.with_store(id, move |s| s.history(limit)).await
    }

    /// The newest `limit` rejected intentions of a store (both partitions), newest first,
    /// with author, HLC and reason.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub async fn rejected(
        &self,
        id: &StoreId,
        limit: usize,
    ) -> Result<Vec<RejectedIntention>, NodeError> {
        self.with_store(id, move |s| {
            s.project()?;
            s.rejected_details(limit)
        })
        .await
    }

    /// A digest of a store's projected state (both partitions).
    ///
    /// # Errors
    /// As [`StoreManager::status`].
    pub async fn state_digest(&self, id: &StoreId) -> Result<Hash, NodeError> {
        self.with_store(id, |s| {
            s.project()?;
            s.state_digest()
        })
        .await
    }

    /// Prunes a store's history below its newest final epoch (docs/epochs.md, "Pruning").
    /// With `cut`, first asks for a prune-cut epoch, which is final at once when this node is
    /// the store's only active member (otherwise once every member acknowledged it: prune
    /// again then, or let the store's prune policy do it). The pass runs in steps between
    /// write runs; the reply comes when it is done, or at once saying why nothing can go now.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; storage failures.
    pub async fn prune(&self, id: &StoreId, cut: bool) -> Result<crate::PruneReport, NodeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.with_store(id, move |s| {
            if cut {
                s.request_prune_cut()?;
            }
            s.begin_prune(Some(tx))
        })
        .await?;
        rx.await.map_err(|_| NodeError::NotOpen(id.to_string()))?
    }

    /// A store's prune policy (`{"mode", "keep"}`), after setting it to `set` (mode, keep)
    /// when given: a system-table write every member projects.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Rejected`] or an invalid-argument error for a
    /// policy the system table refuses.
    pub async fn prune_policy(
        &self,
        id: &StoreId,
        set: Option<(String, u64)>,
    ) -> Result<Value, NodeError> {
        self.with_store(id, move |s| {
            if let Some((mode, keep)) = set {
                let args = if mode == "off" {
                    json!({"mode": mode})
                } else {
                    json!({"mode": mode, "keep": keep})
                };
                s.system_call("set-prune-policy", &args)?;
            }
            s.system_query("prune-policy", &json!({}))
        })
        .await
    }

    /// Checks the whole log of an open store (witness chain, attestations, every signature)
    /// while it keeps running; `progress` gets (done, total) records.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Damaged`] naming what failed the check.
    pub async fn verify_log(&self, id: &StoreId) -> Result<lattice_log::VerifyReport, NodeError> {
        let log = self.open_store(id)?.log.clone();
        let store = *id;
        self.off_workers("verifying a log", move || {
            log.reader()
                .verify(|_, _| {})
                .map_err(|e| NodeError::Damaged {
                    store: store.short(),
                    reason: format!("log.db fails verification: {e}"),
                })
        })
        .await
    }

    /// Every store in the inventory with its state.
    ///
    /// # Errors
    /// [`NodeError::Meta`].
    pub fn list(&self) -> Result<Vec<StoreRecord>, NodeError> {
        self.inner.node.meta().list()
    }

    /// Watch events of a store's data partition from now on (bounded: a slow subscriber
    /// gets [`broadcast::error::RecvError::Lagged`] with the number it missed).
    ///
    /// # Errors
    /// [`NodeError::NotOpen`].
    pub fn watch(&self, id: &StoreId) -> Result<broadcast::Receiver<WatchEvent>, NodeError> {
        Ok(self.open_store(id)?.watch.subscribe())
    }
}
