//! [`StoreManager`]: a running node — its stores open and replicated, the peer set of each
//! store kept equal to what its system table says, child stores opened on every peer,
//! invites, joins, revocation, leaving, archiving, and watchers.
//!
//! Every store is replicated with [`Access::Members`]: only its active and dormant peers (for
//! a child with the inherited strategy: its parent's) may open sessions or gossip it. The
//! manager reads the peer set from the system table guest's `peers` query whenever the
//! system partition reports a `peer` event, and opens or closes children on `child` events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lattice_log::{Log, system_now_ms};
use lattice_model::{Hash, PubKey, StoreId};
use lattice_net::{
    Access, Gossip, IrohNet, JoinHandler, PeerAddr, ReplicaError, ReplicaEvent, Replicator,
    ReplicatorConfig, Transport,
};
use lattice_runtime::{ModuleHash, WatchEvent};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::NodeError;
use crate::invite::InviteToken;
use crate::meta::{StoreRecord, StoreState};
use crate::node::Node;
use crate::store::{ChildStatus, PeerInfo, PeerStatus, Store, StoreStatus};

/// Watch events buffered per subscriber before it is told it lagged.
pub const WATCH_BUFFER: usize = 1024;
/// How long closing a store waits for replication tasks to let go of its log.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

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
    /// `None` while a child store's genesis has not arrived yet.
    store: Mutex<Option<Store>>,
    parent: Option<StoreId>,
    watch: broadcast::Sender<WatchEvent>,
}

struct Inner {
    node: Node,
    replicator: Replicator,
    iroh: Option<Arc<IrohNet>>,
    stores: Mutex<HashMap<StoreId, Arc<OpenStore>>>,
    events: broadcast::Sender<NodeEvent>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held while a store is opened or closed.
    lifecycle: tokio::sync::Mutex<()>,
    /// Held while peer sets are read and handed to the replicator, so a set computed from an
    /// older system state never overwrites a newer one.
    members: Mutex<()>,
    /// Chain positions re-joining peers reported for child stores: where their
    /// re-activation in each child resumes (see [`StoreManager::mirror_membership`]).
    resume_at: Mutex<HashMap<(StoreId, PubKey), u64>>,
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
}

/// Decides joins for the manager (held weakly by the replicator).
struct JoinGate(Weak<Inner>);

impl JoinHandler for JoinGate {
    fn join(
        &self,
        peer: PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: &[(StoreId, u64)],
    ) -> Result<(), String> {
        let inner = self.0.upgrade().ok_or("the node is shutting down")?;
        StoreManager { inner }.accept_join(peer, store, secret, tip, children)
    }
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
        let previous = node
            .meta()
            .setting("listen")?
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| listen.port() == 0 && a.ip() == listen.ip());
        let net = match previous {
            Some(addr) => match IrohNet::bind(node.key(), addr).await {
                Ok(net) => net,
                Err(e) => {
                    debug!(%addr, "previous port unavailable ({e}); binding a new one");
                    IrohNet::bind(node.key(), listen)
                        .await
                        .map_err(|e| NodeError::Net(e.to_string()))?
                }
            },
            None => IrohNet::bind(node.key(), listen)
                .await
                .map_err(|e| NodeError::Net(e.to_string()))?,
        };
        if let Some(bound) = net.local().addrs.first() {
            node.meta().set_setting("listen", &bound.to_string())?;
        }
        Self::start(node, net.clone(), net.clone(), Some(net), config).await
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
        let replicator = Replicator::start(transport, gossip, config);
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            node,
            replicator,
            iroh,
            stores: Mutex::new(HashMap::new()),
            events,
            tasks: Mutex::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            members: Mutex::new(()),
            resume_at: Mutex::new(HashMap::new()),
        });
        inner
            .replicator
            .set_join_handler(Arc::new(JoinGate(Arc::downgrade(&inner))));
        let manager = StoreManager { inner };
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
                    manager.open_registered(&record).await?;
                } else {
                    later.push(record);
                }
            }
            if later.len() == before {
                // Orphans (parent archived or gone): open them on their own.
                for record in &later {
                    manager.open_registered(record).await?;
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
                    Ok(
                        ReplicaEvent::Synced { store, .. }
                        | ReplicaEvent::Served { store, .. }
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
                }
            }
        });
        lock(&manager.inner.tasks).push(task);
        info!(node = %manager.inner.node.key().public().short(), addr = %manager.address(), "node running");
        Ok(manager)
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
        lock(&self.inner.stores)
            .get(id)
            .cloned()
            .ok_or_else(|| NodeError::NotOpen(id.to_string()))
    }

    /// Finds an open or known store by id prefix.
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`], [`NodeError::Ambiguous`].
    pub fn find(&self, text: &str) -> Result<StoreId, NodeError> {
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

    /// Runs `f` on an open store whose genesis is here.
    fn with_store<T>(
        &self,
        id: &StoreId,
        f: impl FnOnce(&mut Store) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        let open = self.open_store(id)?;
        let mut guard = lock(&open.store);
        let store = guard
            .as_mut()
            .ok_or_else(|| NodeError::NotReady(id.to_string()))?;
        f(store)
    }

    /// Gossips the intention a call authored (its result names it).
    fn publish_result(&self, id: &StoreId, result: &Value) {
        let Some(hash) = result["hash"].as_str().and_then(|h| Hash::from_hex(h).ok()) else {
            return;
        };
        let Ok(open) = self.open_store(id) else {
            return;
        };
        match open.log.reader().get(&hash) {
            Ok(Some(signed)) => self.inner.replicator.publish(&signed),
            Ok(None) => {}
            Err(e) => warn!(store = %id.short(), "could not read a new intention to gossip: {e}"),
        }
    }

    /// The peer set a store is replicated with: its own active and dormant peers, or its
    /// parent's when it inherits them.
    fn members_of(&self, id: &StoreId) -> Vec<PubKey> {
        let mut current = *id;
        for _ in 0..16 {
            let Ok(open) = self.open_store(&current) else {
                return Vec::new();
            };
            let inherited = {
                let mut guard = lock(&open.store);
                match guard.as_mut() {
                    Some(store) => {
                        let parent = store.inherits_from().unwrap_or(None);
                        if parent.is_some() {
                            parent
                        } else {
                            return store
                                .peers()
                                .unwrap_or_default()
                                .into_iter()
                                .filter(PeerInfo::is_member)
                                .map(|p| p.key)
                                .collect();
                        }
                    }
                    None => open.parent,
                }
            };
            match inherited {
                Some(parent) => current = parent,
                None => return Vec::new(),
            }
        }
        Vec::new()
    }

    /// Pushes the peer set of `id` and of every open store inheriting from it to the
    /// replicator.
    fn update_members(&self, id: &StoreId) {
        let _consistent = lock(&self.inner.members);
        let open: Vec<(StoreId, Option<StoreId>)> = lock(&self.inner.stores)
            .iter()
            .map(|(k, v)| (*k, v.parent))
            .collect();
        let mut todo = vec![*id];
        let mut seen = Vec::new();
        while let Some(s) = todo.pop() {
            if seen.contains(&s) {
                continue;
            }
            seen.push(s);
            let members = self.members_of(&s);
            self.inner.replicator.set_members(&s, members);
            todo.extend(open.iter().filter(|(_, p)| *p == Some(s)).map(|(k, _)| *k));
        }
    }

    /// Opens a store of the inventory and starts replicating it.
    async fn open_registered(&self, record: &StoreRecord) -> Result<(), NodeError> {
        let log = {
            // Opening and closing are serialised, so a store's files are never opened twice.
            let _opening = self.inner.lifecycle.lock().await;
            if self.is_open(&record.id) {
                return Ok(());
            }
            let log = Arc::new(self.inner.node.open_log(record.id)?);
            let has_genesis = log.reader().get(&Hash(record.id.0))?.is_some();
            let store = if has_genesis {
                Some(self.inner.node.store_from_log(record.id, log.clone())?)
            } else {
                None
            };
            self.register_open(record.id, log.clone(), store, record.parent);
            log
        };
        self.activate(record.id, log).await
    }

    /// Registers an open store (the caller opened it) and starts replicating it.
    async fn insert_open(
        &self,
        id: StoreId,
        log: Arc<Log>,
        store: Option<Store>,
        parent: Option<StoreId>,
    ) -> Result<(), NodeError> {
        {
            let _opening = self.inner.lifecycle.lock().await;
            if self.is_open(&id) {
                return Ok(());
            }
            self.register_open(id, log.clone(), store, parent);
        }
        self.activate(id, log).await
    }

    fn register_open(
        &self,
        id: StoreId,
        log: Arc<Log>,
        store: Option<Store>,
        parent: Option<StoreId>,
    ) {
        let (watch, _) = broadcast::channel(WATCH_BUFFER);
        let store = store.map(|mut s| {
            s.keep_data_events();
            s
        });
        let open = Arc::new(OpenStore {
            log: log.clone(),
            store: Mutex::new(store),
            parent,
            watch,
        });
        lock(&self.inner.stores).insert(id, open);
    }

    /// Replicates a just-registered store and acts on its system table.
    async fn activate(&self, id: StoreId, log: Arc<Log>) -> Result<(), NodeError> {
        let members = self.members_of(&id);
        self.inner
            .replicator
            .add_store_with(log, members, Access::Members)
            .await
            .map_err(|e| NodeError::Net(e.to_string()))?;
        self.emit(NodeEvent::StoreOpened(id));
        self.learn_addrs(&id);
        if let Err(e) = self.announce_addrs(&id) {
            warn!(store = %id.short(), "could not record this node's address: {e}");
        }
        if let Some(parent) = self.open_store(&id).ok().and_then(|o| o.parent)
            && let Err(e) = self.mirror_membership(&parent)
        {
            warn!(store = %id.short(), "could not pass the parent's membership to a child: {e}");
        }
        self.reconcile_children(&id).await?;
        Ok(())
    }

    /// Passes membership changes of `parent` down to its open children that inherit their
    /// peers (and on to theirs): a peer whose status this node wrote in the parent gets the
    /// same status in each child, written by this node, with the cut (revocation) or resume
    /// point (re-activation) of the child's own log. A child's projection then needs only its
    /// own system table, and a peer revoked at the root is refused in every descendant.
    fn mirror_membership(&self, parent: &StoreId) -> Result<(), NodeError> {
        let me = self.inner.node.key().public();
        let children: Vec<(StoreId, Arc<OpenStore>)> = lock(&self.inner.stores)
            .iter()
            .filter(|(_, v)| v.parent == Some(*parent))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if children.is_empty() {
            return Ok(());
        }
        let writer_of = |peer: &PeerInfo| -> Result<Option<PubKey>, NodeError> {
            let Some(op) = peer.written_in else {
                return Ok(None);
            };
            let open = self.open_store(parent)?;
            Ok(open.log.reader().dag_info(&op)?.map(|i| i.author))
        };
        let mut mine = Vec::new();
        for peer in self.with_store(parent, |s| s.peers())? {
            if writer_of(&peer)? == Some(me) {
                mine.push(peer);
            }
        }
        for (child, open) in children {
            if !matches!(self.with_store(&child, |s| s.inherits_from()), Ok(Some(_))) {
                continue;
            }
            let recorded = self.with_store(&child, |s| s.peers())?;
            let mut ops = Vec::new();
            for peer in &mine {
                let now = recorded
                    .iter()
                    .find(|p| p.key == peer.key)
                    .map(|p| p.status);
                if now == Some(peer.status) {
                    continue;
                }
                let position = chain_position(&open.log, &peer.key)?;
                let args = match peer.status {
                    PeerStatus::Revoked => {
                        // Leaving: this node's own revocation must still count.
                        let cut = if peer.key == me {
                            position + 1
                        } else {
                            position
                        };
                        json!({"peer": peer.key.to_string(), "status": "revoked", "cut": cut})
                    }
                    PeerStatus::Active | PeerStatus::Dormant => {
                        // Resume where the peer says its chain stands when it re-joined, never
                        // below what this node has seen of it.
                        let reported = lock(&self.inner.resume_at)
                            .get(&(child, peer.key))
                            .copied()
                            .unwrap_or(0);
                        json!({
                            "peer": peer.key.to_string(), "status": peer.status.as_str(),
                            "resume": position.max(reported),
                        })
                    }
                    PeerStatus::Invited => continue,
                };
                ops.push(json!({"method": "set-peer-status", "args": args}));
            }
            if !ops.is_empty() {
                debug!(child = %child.short(), changes = ops.len(), "passing membership to a child store");
                let result =
                    self.with_store(&child, |s| s.system_call("batch", &json!({"ops": ops})))?;
                self.publish_result(&child, &result);
            }
            self.mirror_membership(&child)?;
        }
        Ok(())
    }

    /// Records this node's current direct addresses in a root store's system table when they
    /// differ from what is recorded, so every peer can dial it (not only its inviter).
    fn announce_addrs(&self, id: &StoreId) -> Result<(), NodeError> {
        let me = self.inner.node.key().public();
        let addrs: Vec<String> = self
            .address()
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect();
        let recorded = self.with_store(id, |s| {
            if s.inherits_from()?.is_some() {
                return Ok(None);
            }
            let me_now = s.peers()?.into_iter().find(|p| p.key == me);
            Ok(Some(me_now.map(|p| (p.status, p.addrs))))
        });
        match recorded {
            Ok(Some(Some((PeerStatus::Active, recorded)))) if recorded != addrs => {
                self.system_call(
                    id,
                    "set-peer-addrs",
                    &json!({"peer": me.to_string(), "addrs": addrs}),
                )?;
                Ok(())
            }
            Ok(_) | Err(NodeError::NotReady(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Tells the replicator where a store's peers listen, from its system table.
    fn learn_addrs(&self, id: &StoreId) {
        let me = self.inner.node.key().public();
        let Ok(peers) = self.with_store(id, |s| s.peers()) else {
            return;
        };
        for peer in peers.into_iter().filter(|p| p.key != me && p.is_member()) {
            let addrs: Vec<SocketAddr> = peer.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if !addrs.is_empty() {
                self.inner.replicator.add_peer(&PeerAddr {
                    id: peer.key,
                    addrs,
                });
            }
        }
    }

    /// Projects what replication brought, then acts on system table changes: peer sets,
    /// children to open or close. Opens a pending child once its genesis is here.
    async fn refresh(&self, id: &StoreId) -> Result<(), NodeError> {
        let Ok(open) = self.open_store(id) else {
            return Ok(());
        };
        let (system_events, data_events) = {
            let mut guard = lock(&open.store);
            if guard.is_none() {
                if open.log.reader().get(&Hash(id.0))?.is_none() {
                    return Ok(());
                }
                let mut store = self.inner.node.store_from_log(*id, open.log.clone())?;
                store.keep_data_events();
                *guard = Some(store);
                info!(store = %id.short(), "genesis arrived; store open");
            }
            let Some(store) = guard.as_mut() else {
                return Ok(());
            };
            store.project()?;
            (store.take_system_events(), store.take_data_events())
        };
        let changed = !data_events.is_empty() || !system_events.is_empty();
        for e in data_events {
            let _ = open.watch.send(e);
        }
        if system_events
            .iter()
            .any(|e| e.topic == "peer" || e.topic == "store")
        {
            self.update_members(id);
            if let Err(e) = self.mirror_membership(id) {
                warn!(store = %id.short(), "could not pass a membership change to child stores: {e}");
            }
        }
        if system_events.iter().any(|e| e.topic == "child") {
            Box::pin(self.reconcile_children(id)).await?;
        }
        if changed {
            self.emit(NodeEvent::StoreChanged(*id));
        }
        Ok(())
    }

    /// Opens the active children declared in `id`'s system table that are not open, and
    /// closes the archived or removed ones this node has open.
    async fn reconcile_children(&self, id: &StoreId) -> Result<(), NodeError> {
        let children = match self.with_store(id, |s| s.children()) {
            Ok(c) => c,
            Err(NodeError::NotReady(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in &children {
            let known = self.inner.node.meta().get(&child.id)?;
            let left = known.as_ref().is_some_and(|r| r.state == StoreState::Left);
            if child.status == ChildStatus::Active && !self.is_open(&child.id) && !left {
                let record = StoreRecord {
                    id: child.id,
                    parent: Some(*id),
                    module: ModuleHash::from_hex(&child.module).unwrap_or(ModuleHash([0; 32])),
                    name: child.alias.clone(),
                    state: StoreState::Active,
                };
                self.inner.node.meta().put(&record)?;
                info!(parent = %id.short(), child = %child.id.short(), "opening child store");
                Box::pin(self.open_registered(&record)).await?;
            } else if child.status == ChildStatus::Archived && self.is_open(&child.id) {
                info!(parent = %id.short(), child = %child.id.short(), "closing archived child store");
                Box::pin(self.close_tree(&child.id, StoreState::Archived)).await?;
            }
        }
        Ok(())
    }

    /// Closes `id` and every open store below it, depth first, recording `state`.
    async fn close_tree(&self, id: &StoreId, state: StoreState) -> Result<(), NodeError> {
        let children: Vec<StoreId> = lock(&self.inner.stores)
            .iter()
            .filter(|(_, v)| v.parent == Some(*id))
            .map(|(k, _)| *k)
            .collect();
        for child in children {
            Box::pin(self.close_tree(&child, state)).await?;
        }
        self.close(id).await?;
        if let Some(mut record) = self.inner.node.meta().get(id)? {
            record.state = state;
            self.inner.node.meta().put(&record)?;
        }
        Ok(())
    }

    /// Stops replicating a store and closes it, waiting until its log is closed.
    async fn close(&self, id: &StoreId) -> Result<(), NodeError> {
        let _closing = self.inner.lifecycle.lock().await;
        self.inner.replicator.remove_store(id);
        let Some(open) = lock(&self.inner.stores).remove(id) else {
            return Ok(());
        };
        let store = lock(&open.store).take();
        let log = open.log.clone();
        drop(open);
        drop(store);
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        let mut log = log;
        loop {
            match Arc::try_unwrap(log) {
                Ok(l) => {
                    l.close()?;
                    break;
                }
                Err(still) if tokio::time::Instant::now() < deadline => {
                    log = still;
                    // Sessions still hold the log; they end on their own shortly.
                    tokio::task::yield_now().await;
                }
                Err(_) => {
                    warn!(store = %id.short(), "log still in use after closing; it closes when the last session ends");
                    break;
                }
            }
        }
        self.emit(NodeEvent::StoreClosed(*id));
        Ok(())
    }

    // ---- operations ----

    /// Creates a store of `store_type` (see [`Node::resolve_type`]); with `parent`, as a
    /// child declared in the parent's system table (so it opens on every peer of the parent).
    ///
    /// # Errors
    /// Unknown type, parent not open, storage failures.
    pub async fn create(
        &self,
        store_type: &str,
        name: &str,
        parent: Option<StoreId>,
    ) -> Result<StoreId, NodeError> {
        let module = self.inner.node.resolve_type(store_type)?;
        if let Some(p) = &parent {
            self.with_store(p, |_| Ok(()))?;
        }
        let mut store = self.inner.node.create_child(module, name, parent)?;
        let id = store.id();
        let log = store.log().clone();
        if let Some(p) = &parent {
            // The child inherits the parent's peers: record them in its own system table.
            let me = self.inner.node.key().public();
            let ops: Vec<Value> = self
                .with_store(p, |s| s.peers())?
                .into_iter()
                .filter(|peer| peer.key != me)
                .filter_map(|peer| {
                    let args = match peer.status {
                        PeerStatus::Revoked => {
                            json!({"peer": peer.key.to_string(), "status": "revoked", "cut": 0})
                        }
                        PeerStatus::Active | PeerStatus::Dormant => {
                            json!({"peer": peer.key.to_string(), "status": peer.status.as_str()})
                        }
                        PeerStatus::Invited => return None,
                    };
                    Some(json!({"method": "set-peer-status", "args": args}))
                })
                .collect();
            if !ops.is_empty() {
                store.system_call("batch", &json!({ "ops": ops }))?;
            }
        }
        self.insert_open(id, log, Some(store), parent).await?;
        if let Some(p) = parent {
            let result = self.with_store(&p, |s| {
                s.system_call(
                    "add-child",
                    &json!({"id": id.to_string(), "alias": name, "module": module.to_string()}),
                )
            })?;
            self.publish_result(&p, &result);
        }
        info!(store = %id.short(), parent = ?parent.map(|p| p.short()), "store created");
        Ok(id)
    }

    /// Calls a method of a store's type; commands are gossiped to its peers.
    ///
    /// # Errors
    /// As [`Store::call`]; [`NodeError::NotOpen`].
    pub fn call(&self, id: &StoreId, method: &str, args: &Value) -> Result<Value, NodeError> {
        let (result, events) = self.with_store(id, |s| {
            let result = s.call(method, args)?;
            Ok((result, s.take_data_events()))
        })?;
        self.publish_result(id, &result);
        if let Ok(open) = self.open_store(id) {
            for e in events {
                let _ = open.watch.send(e);
            }
        }
        if result.get("hash").is_some() {
            self.emit(NodeEvent::StoreChanged(*id));
        }
        Ok(result)
    }

    /// Calls a system table method of a store (peers, children, …); commands are gossiped.
    ///
    /// # Errors
    /// As [`Store::system_call`].
    pub fn system_call(
        &self,
        id: &StoreId,
        method: &str,
        args: &Value,
    ) -> Result<Value, NodeError> {
        let result = self.with_store(id, |s| s.system_call(method, args))?;
        self.publish_result(id, &result);
        Ok(result)
    }

    /// A store's status.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub fn status(&self, id: &StoreId) -> Result<StoreStatus, NodeError> {
        self.with_store(id, |s| s.status())
    }

    /// The store type's description.
    ///
    /// # Errors
    /// As [`StoreManager::status`]; headless stores cannot describe themselves.
    pub fn describe(&self, id: &StoreId) -> Result<lattice_runtime::StoreDescriptor, NodeError> {
        self.with_store(id, |s| s.describe())
    }

    /// The newest `limit` witnessed intentions of a store, newest first.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub fn history(&self, id: &StoreId, limit: usize) -> Result<Vec<Value>, NodeError> {
        let open = self.open_store(id)?;
        let reader = open.log.reader();
        let head = reader.status()?.head_seq;
        let from = head.saturating_sub(limit as u64).saturating_add(1).max(1);
        let mut out: Vec<Value> = reader
            .witnessed(from, limit)?
            .into_iter()
            .map(|(seq, s)| {
                let i = s.intention();
                json!({
                    "seq": seq,
                    "hash": s.hash().to_string(),
                    "author": i.author().to_string(),
                    "hlc": i.hlc().to_string(),
                    "deps": i.deps().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ops_bytes": i.ops().len(),
                    "partition": if i.is_genesis() { "genesis" } else if i.flags().system { "system" } else { "data" },
                })
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` rejected intentions of a store (both partitions), newest first,
    /// with author, HLC and reason.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`], storage failures.
    pub fn rejected(&self, id: &StoreId, limit: usize) -> Result<Vec<Value>, NodeError> {
        self.with_store(id, |s| {
            s.project()?;
            s.rejected_details(limit)
        })
    }

    /// A digest of a store's projected state (both partitions).
    ///
    /// # Errors
    /// As [`StoreManager::status`].
    pub fn state_digest(&self, id: &StoreId) -> Result<Hash, NodeError> {
        self.with_store(id, |s| {
            s.project()?;
            s.state_digest()
        })
    }

    /// A store's peers as its system table records them (inherited ones for a child).
    ///
    /// # Errors
    /// As [`StoreManager::status`].
    pub fn peers(&self, id: &StoreId) -> Result<Vec<PeerInfo>, NodeError> {
        let mut current = *id;
        for _ in 0..16 {
            match self.with_store(&current, |s| s.inherits_from())? {
                Some(parent) => current = parent,
                None => return self.with_store(&current, |s| s.peers()),
            }
        }
        Err(NodeError::NotReady(id.to_string()))
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

    /// Issues a one-time invite to store `id`, valid for `ttl`. Only the secret's hash is
    /// recorded (in the system table, so any peer can see an invite was issued).
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child store (invite to its root instead);
    /// storage failures.
    pub fn invite(&self, id: &StoreId, ttl: Duration) -> Result<InviteToken, NodeError> {
        self.require_own_peers(id)?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| NodeError::Net(format!("no randomness: {e}")))?;
        let expires_ms = system_now_ms().saturating_add(ttl.as_millis() as u64);
        let me = self.inner.node.key().public();
        let result = self.system_call(
            id,
            "add-invite",
            &json!({
                "hash": hex::encode(InviteToken::secret_hash(&secret)),
                "expires_ms": expires_ms,
                "invited_by": me.to_string(),
            }),
        )?;
        debug!(store = %id.short(), intention = %result["hash"], "invite recorded");
        Ok(InviteToken {
            store: *id,
            inviter: me,
            addrs: self.address().addrs,
            secret,
            expires_ms,
        })
    }

    /// Refuses stores that inherit their peers (invites and revocations go to the parent).
    fn require_own_peers(&self, id: &StoreId) -> Result<(), NodeError> {
        match self.with_store(id, |s| s.inherits_from())? {
            Some(parent) => Err(NodeError::InheritedPeers(parent.to_string())),
            None => Ok(()),
        }
    }

    /// Inviter side of a join: checks the invite and records the joiner as an active peer.
    fn accept_join(
        &self,
        peer: PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: &[(StoreId, u64)],
    ) -> Result<(), String> {
        if !self.is_open(&store) {
            return Err(format!(
                "the inviter has no store {} open; the token is for another mesh or the store was closed",
                store.short()
            ));
        }
        let hash = hex::encode(InviteToken::secret_hash(&secret));
        let status = self
            .with_store(&store, |s| {
                s.project()?;
                s.peers()
            })
            .map_err(|e| format!("the inviter could not read the store's peers: {e}"))?
            .into_iter()
            .find(|p| p.key == peer)
            .map(|p| p.status);
        if matches!(status, Some(PeerStatus::Active | PeerStatus::Dormant)) {
            return Err(ALREADY_MEMBER.into());
        }
        let seen = self
            .open_store(&store)
            .and_then(|o| chain_position(&o.log, &peer))
            .unwrap_or(0);
        let tip = tip.max(seen);
        {
            let mut resume = lock(&self.inner.resume_at);
            for (child, at) in children.iter().take(lattice_sync::MAX_JOIN_CHILDREN) {
                resume.insert((*child, peer), *at);
            }
        }
        let invite = self
            .with_store(&store, |s| {
                s.project()?;
                s.system_query("invite", &json!({"hash": hash}))
            })
            .map_err(|e| format!("the inviter could not check the invite: {e}"))?;
        let invite: Option<lattice_system_types::InviteRecord> = serde_json::from_value(invite)
            .map_err(|e| format!("the inviter's invite record is malformed: {e}"))?;
        let Some(invite) = invite else {
            return Err("unknown invite: this token was not issued for this store".into());
        };
        match invite.status {
            lattice_system_types::InviteStatus::Claimed => {
                return Err("this invite was already used; ask for a new one".into());
            }
            lattice_system_types::InviteStatus::Revoked => {
                return Err("this invite was withdrawn; ask for a new one".into());
            }
            lattice_system_types::InviteStatus::Valid => {}
        }
        if invite.expires_ms <= system_now_ms() {
            return Err("this invite has expired; ask for a new one".into());
        }
        let ops = json!({"ops": [
            {"method": "claim-invite", "args": {"hash": hash, "by": peer.to_string()}},
            {"method": "set-peer-status", "args": {"peer": peer.to_string(), "status": "active", "resume": tip}},
        ]});
        self.system_call(&store, "batch", &ops)
            .map_err(|e| format!("the inviter could not record the join: {e}"))?;
        self.update_members(&store);
        if let Err(e) = self.mirror_membership(&store) {
            warn!(store = %store.short(), "could not pass the join to child stores: {e}");
        }
        Ok(())
    }

    /// Joins the store an invite token is for: presents the token to the inviter, then
    /// bootstraps the store from it (`progress` gets the number of intentions fetched so far)
    /// and opens it; its children open as their declarations arrive. A store this node left
    /// keeps its data and only catches up.
    ///
    /// # Errors
    /// [`NodeError::Token`] for an unreadable or expired token, [`NodeError::JoinRefused`]
    /// with the inviter's reason, [`NodeError::Net`] when the inviter cannot be reached.
    pub async fn join(
        &self,
        token: &str,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<Joined, NodeError> {
        let token = InviteToken::decode(token)?;
        if token.expires_ms <= system_now_ms() {
            return Err(NodeError::InviteExpired);
        }
        let me = self.inner.node.key().public();
        if token.inviter == me {
            return Err(NodeError::JoinRefused(
                "this token was issued by this node".into(),
            ));
        }
        let id = token.store;
        if self.is_open(&id) {
            // Open here: the inviter tells whether this node is a member already (a node that
            // was revoked may not know it yet, and comes back with a new invite).
            let log = self.open_store(&id)?.log.clone();
            let tip = chain_position(&log, &me)?;
            self.present_token(&token, tip).await?;
            self.update_members(&id);
            let _ = self.inner.replicator.sync(&id, &token.inviter).await;
            self.refresh(&id).await?;
            return Ok(Joined {
                store: id,
                fetched: 0,
            });
        }
        let known = self.inner.node.meta().get(&id)?;
        let log = Arc::new(self.inner.node.open_log(id)?);
        let tip = chain_position(&log, &me)?;
        if let Err(e) = self.present_token(&token, tip).await {
            drop(log);
            return Err(e);
        }
        self.reopen_left_children(&id)?;
        let fetched = if log.reader().get(&Hash(id.0))?.is_none() {
            let (_, report) = self
                .inner
                .replicator
                .bootstrap(&log, &[token.inviter], &mut progress)
                .await
                .map_err(|e| NodeError::Net(format!("bootstrap failed: {e}")))?;
            report.witnessed
        } else {
            0
        };
        let store = self.inner.node.store_from_log(id, log.clone())?;
        let record = StoreRecord {
            id,
            parent: None,
            module: store.genesis().module,
            name: store.genesis().name.clone(),
            state: StoreState::Active,
        };
        let record = StoreRecord {
            parent: known.and_then(|k| k.parent),
            ..record
        };
        self.inner.node.meta().put(&record)?;
        self.insert_open(id, log, Some(store), record.parent)
            .await?;
        let name = self.inner.node.name()?;
        if !name.is_empty() {
            self.system_call(
                &id,
                "set-peer-name",
                &json!({"peer": me.to_string(), "name": name}),
            )?;
        }
        let _ = self.inner.replicator.sync(&id, &token.inviter).await;
        self.refresh(&id).await?;
        Ok(Joined { store: id, fetched })
    }

    /// Presents an invite token to its inviter (which records this node as an active peer,
    /// resuming at chain position `tip`).
    async fn present_token(&self, token: &InviteToken, tip: u64) -> Result<(), NodeError> {
        let inviter = PeerAddr {
            id: token.inviter,
            addrs: token.addrs.clone(),
        };
        self.inner.replicator.add_peer(&inviter);
        self.inner
            .node
            .meta()
            .set_addr(&token.inviter, &inviter.to_string())?;
        self.inner
            .replicator
            .join(
                &token.inviter,
                token.store,
                token.secret,
                tip,
                self.descendant_tips(&token.store)?,
            )
            .await
            .map_err(|e| match e {
                ReplicaError::Session(lattice_sync::SessionError::Refused(reason))
                    if reason == ALREADY_MEMBER =>
                {
                    NodeError::AlreadyMember(token.store.to_string())
                }
                ReplicaError::Session(lattice_sync::SessionError::Refused(reason)) => {
                    NodeError::JoinRefused(reason)
                }
                other => NodeError::Net(format!(
                    "could not reach the inviter {}: {other}",
                    token.inviter.short()
                )),
            })
    }

    /// This node's chain position in every store below `root` it keeps (open or not).
    fn descendant_tips(&self, root: &StoreId) -> Result<Vec<(StoreId, u64)>, NodeError> {
        let me = self.inner.node.key().public();
        let records = self.inner.node.meta().list()?;
        let mut out = Vec::new();
        let mut parents = vec![*root];
        while let Some(parent) = parents.pop() {
            for record in records.iter().filter(|r| r.parent == Some(parent)) {
                parents.push(record.id);
                let tip = match self.open_store(&record.id) {
                    Ok(open) => chain_position(&open.log, &me)?,
                    Err(_) if self.inner.node.dir().log_path(&record.id).exists() => {
                        let log = self.inner.node.open_log(record.id)?;
                        let tip = chain_position(&log, &me)?;
                        log.close()?;
                        tip
                    }
                    Err(_) => 0,
                };
                out.push((record.id, tip));
            }
        }
        out.truncate(lattice_sync::MAX_JOIN_CHILDREN);
        Ok(out)
    }

    /// Marks the stores below `root` that this node left together with it as active again,
    /// so they reopen as the root's children are reconciled.
    fn reopen_left_children(&self, root: &StoreId) -> Result<(), NodeError> {
        let records = self.inner.node.meta().list()?;
        let mut parents = vec![*root];
        while let Some(parent) = parents.pop() {
            for record in records.iter().filter(|r| r.parent == Some(parent)) {
                if record.state == StoreState::Left {
                    let mut again = record.clone();
                    again.state = StoreState::Active;
                    self.inner.node.meta().put(&again)?;
                    parents.push(record.id);
                }
            }
        }
        Ok(())
    }

    /// Revokes `peer` from store `id`: its connections and gossip are refused at once and
    /// its intentions after the last one this node has seen are not projected by anyone —
    /// in this store and in every child store that inherits its peers.
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child; [`NodeError::RevokeSelf`] for this node's
    /// own key (leave instead); [`NodeError::NotAPeer`] for a key the store does not list as
    /// a peer; storage failures.
    pub fn revoke_peer(&self, id: &StoreId, peer: &PubKey) -> Result<Value, NodeError> {
        if *peer == self.inner.node.key().public() {
            return Err(NodeError::RevokeSelf);
        }
        let known = self
            .with_store(id, |s| s.peers())?
            .into_iter()
            .any(|p| p.key == *peer && p.status != PeerStatus::Invited);
        if !known {
            return Err(NodeError::NotAPeer(peer.to_string()));
        }
        self.revoke(id, peer)
    }

    /// Finds a peer of store `id` by full key or unique prefix.
    ///
    /// # Errors
    /// [`NodeError::NotAPeer`] when nothing matches, [`NodeError::Ambiguous`] for several.
    pub fn find_peer(&self, id: &StoreId, text: &str) -> Result<PubKey, NodeError> {
        let text = text.trim().to_ascii_lowercase();
        let matches: Vec<PubKey> = self
            .peers(id)?
            .into_iter()
            .map(|p| p.key)
            .filter(|k| !text.is_empty() && k.to_string().starts_with(&text))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::NotAPeer(text)),
            _ => Err(NodeError::Ambiguous(text)),
        }
    }

    /// Records `peer` revoked in `id` at the last position seen here, and in the children
    /// that inherit `id`'s peers.
    fn revoke(&self, id: &StoreId, peer: &PubKey) -> Result<Value, NodeError> {
        self.require_own_peers(id)?;
        let open = self.open_store(id)?;
        let mut cut = chain_position(&open.log, peer)?;
        if *peer == self.inner.node.key().public() {
            // Leaving: the revocation is this node's next intention and must still count.
            cut += 1;
        }
        let result = self.system_call(
            id,
            "set-peer-status",
            &json!({"peer": peer.to_string(), "status": "revoked", "cut": cut}),
        )?;
        self.update_members(id);
        self.mirror_membership(id)?;
        Ok(result)
    }

    /// Leaves store `id` (and its children): revokes this node's own key (so its peers stop
    /// syncing with it), tells the peers it can reach, closes the stores and keeps the data
    /// for a later re-join.
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child; storage failures.
    pub async fn leave(&self, id: &StoreId) -> Result<(), NodeError> {
        let me = self.inner.node.key().public();
        let members = self.members_of(id);
        self.revoke(id, &me)?;
        for peer in members.iter().filter(|p| **p != me) {
            if let Err(e) = self.inner.replicator.sync(id, peer).await {
                debug!(peer = %peer.short(), "could not tell a peer about leaving: {e}");
            }
        }
        self.close_tree(id, StoreState::Left).await
    }

    /// Archives a child store in its parent's system table: every peer closes it, data stays.
    ///
    /// # Errors
    /// [`NodeError::NotAChild`] for a root store.
    pub async fn archive(&self, id: &StoreId, archived: bool) -> Result<(), NodeError> {
        let record = self
            .inner
            .node
            .meta()
            .get(id)?
            .ok_or_else(|| NodeError::UnknownStore(id.to_string()))?;
        let parent = record
            .parent
            .ok_or_else(|| NodeError::NotAChild(id.to_string()))?;
        let status = if archived { "archived" } else { "active" };
        self.system_call(
            &parent,
            "set-child-status",
            &json!({"id": id.to_string(), "status": status}),
        )?;
        if !archived && let Some(mut record) = self.inner.node.meta().get(id)? {
            record.state = StoreState::Active;
            self.inner.node.meta().put(&record)?;
        }
        self.refresh(&parent).await
    }

    /// Deletes the local data of a store that is not open (archived or left).
    ///
    /// # Errors
    /// [`NodeError::StillOpen`] for an open store; file errors.
    pub fn delete(&self, id: &StoreId) -> Result<(), NodeError> {
        if self.is_open(id) {
            return Err(NodeError::StillOpen(id.to_string()));
        }
        let dir = self.inner.node.dir().store_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NodeError::Io {
                    path: dir.display().to_string(),
                    source,
                });
            }
        }
        self.inner.node.meta().remove(id)
    }

    /// Closes every store (waiting for each log to close), stops replication and the network.
    pub async fn shutdown(&self) {
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        self.inner.replicator.shutdown();
        for id in self.open_ids() {
            if let Err(e) = self.close(&id).await {
                warn!(store = %id.short(), "closing failed: {e}");
            }
        }
        if let Some(net) = &self.inner.iroh {
            net.shutdown().await;
        }
    }
}
