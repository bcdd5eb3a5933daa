//! Whole Lattice nodes in one process over the simulated network.
//!
//! A [`Sim`] runs nodes with everything a daemon has — log, Wasm runtime with the built-in
//! guests, system table, store manager, replicator — each in its own data directory, over a
//! [`SimNetwork`] instead of iroh: partitions, offline nodes and gossip loss, duplication and
//! delay are the network's, chosen by its seed. Scenarios create stores, invite and join,
//! write, cut and heal the network, stop and restart nodes, and wait until every reachable
//! member holds the same state ([`Sim::wait_converged`]).
//!
//! A run is a pure function of its seed: on the runtime of [`runtime()`] (one thread, time
//! paused) the nodes run inline ([`Node::inline`]), read a simulated wall clock and take
//! their keys and secrets from the seed, so the same seed gives the same event trace
//! ([`Sim::trace`]) and the same digests.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let rt = lattice_sim::runtime()?;
//! # rt.block_on(async {
//! use lattice_sim::{Sim, SimConfig};
//! let mut sim = Sim::new(7, SimConfig::default(), std::path::Path::new("/tmp/sim"));
//! let (a, b) = (sim.add_node().await?, sim.add_node().await?);
//! let store = sim.create_store(a, "kv").await?;
//! sim.join(a, b, &store).await?;
//! sim.call(a, &store, "put", serde_json::json!({"key": "k", "value": "v"})).await?;
//! sim.wait_converged(&store, std::time::Duration::from_secs(10)).await?;
//! # Ok::<(), lattice_sim::SimError>(()) })?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod script;
pub mod soak;

pub use script::{Report, run_scenario, run_scenario_traced};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lattice_model::{Hash, PubKey, StoreId};
pub use lattice_net::SimConfig;
use lattice_net::{ReplicaStats, ReplicatorConfig, SimNetwork, SimStats};
use lattice_node::{DataDir, Node, NodeError, StoreManager};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// A simulation step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A node operation failed.
    #[error("node {node}: {source}")]
    Node {
        /// The node's index.
        node: usize,
        /// The cause.
        #[source]
        source: Box<NodeError>,
    },
    /// A scenario script does not compile.
    #[error("the scenario does not compile: {0}")]
    Script(String),
    /// Compiling the built-in guests for the nodes failed.
    #[error("preparing the built-in guests: {0}")]
    Setup(#[source] Box<NodeError>),
    /// No such node, or it is stopped.
    #[error("node {0} does not exist or is stopped")]
    NoNode(usize),
    /// The simulation was driven from a multi-threaded runtime: its nodes run inline and
    /// need every task on one thread.
    #[error(
        "a simulation runs on a current-thread tokio runtime (with paused time to be deterministic)"
    )]
    Threaded,
    /// The simulation's runtime could not be built.
    #[error("building the simulation's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The reachable members did not reach the same state in time.
    #[error("store {store} did not converge within {waited:?}: {detail}")]
    Diverged {
        /// Short id of the store.
        store: String,
        /// How long was waited.
        waited: Duration,
        /// Each member's state digest (or why it has none).
        detail: String,
    },
}

/// The error of a failed operation on node `node`.
fn failed(node: usize) -> impl FnOnce(NodeError) -> SimError {
    move |source| SimError::Node {
        node,
        source: Box::new(source),
    }
}

/// One simulated node.
struct SimPeer {
    dir: PathBuf,
    key: PubKey,
    /// `None` while the node is stopped.
    manager: Option<StoreManager>,
    online: bool,
    /// How far its wall clock is off, in milliseconds (ahead when positive).
    skew_ms: i64,
    /// Restarts so far.
    runs: u64,
}

/// Nodes in one process over one simulated network (see the crate docs).
pub struct Sim {
    net: SimNetwork,
    dir: PathBuf,
    config: ReplicatorConfig,
    peers: Vec<SimPeer>,
    /// The module folder with every built-in guest compiled (made by the first `add_node`).
    warm: Option<PathBuf>,
    /// Each store's members as the scenario made them (creator, joiners; a child store's
    /// are its parent's). Revoked ones are taken out: no longer held to the store's state.
    members: HashMap<StoreId, BTreeSet<usize>>,
    /// Nodes made hostile: not held to any store's state.
    hostile: BTreeSet<usize>,
    /// What the replicators of stopped and crashed nodes had done (running ones are asked).
    retired: ReplicaStats,
    /// The seed: of the network's faults, the nodes' identities and their secrets.
    seed: u64,
    /// When the simulation's clock started (on the runtime's clock, simulated when paused).
    epoch: std::sync::OnceLock<tokio::time::Instant>,
}

/// Simulated time one scenario or soak operation takes ([`Sim::step`]).
pub const STEP: Duration = Duration::from_millis(1);

/// The wall-clock date simulated nodes start at (2026-01-01T00:00:00Z), in ms since the
/// Unix epoch: a fixed date, so a seed dates its intentions alike on every run.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// How long a wait took, on the simulation's clock and on the wall.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Took {
    /// Simulated time (the runtime's clock: paused time advances only as timers fire).
    pub sim: Duration,
    /// Wall-clock time.
    pub wall: Duration,
}

/// What moved in a simulation so far ([`Sim::metrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimMetrics {
    /// Reconciliation sessions opened and finished (every node, restarts included).
    pub sync_sessions: u64,
    /// Sessions that failed (cut links, banned or unreachable peers).
    pub failed_sessions: u64,
    /// Intentions newly witnessed from sessions.
    pub synced_intentions: u64,
    /// Intentions newly witnessed from gossip.
    pub gossiped_intentions: u64,
    /// Bytes of session frames, both directions, as the opening side counted them plus what
    /// the serving side counted.
    pub session_bytes: u64,
    /// Gossip messages sent by nodes (one per intention and topic).
    pub gossip_sent: u64,
    /// Copies of them put on links, and lost on links.
    pub gossip_delivered: u64,
    /// Gossip copies lost.
    pub gossip_lost: u64,
    /// Bytes of the gossip copies delivered.
    pub gossip_bytes: u64,
    /// Connections and streams opened.
    pub connections: u64,
    /// Streams opened on those connections.
    pub streams: u64,
    /// Peers banned for sending invalid data.
    pub bans: u64,
}

fn add_stats(a: &mut ReplicaStats, b: ReplicaStats) {
    a.sessions += b.sessions;
    a.served += b.served;
    a.failed_sessions += b.failed_sessions;
    a.synced_intentions += b.synced_intentions;
    a.session_bytes += b.session_bytes;
    a.gossip_sent += b.gossip_sent;
    a.gossiped_intentions += b.gossiped_intentions;
    a.gaps_filled += b.gaps_filled;
    a.bans += b.bans;
}

impl SimMetrics {
    fn of(r: ReplicaStats, n: SimStats) -> SimMetrics {
        SimMetrics {
            sync_sessions: r.sessions,
            failed_sessions: r.failed_sessions,
            synced_intentions: r.synced_intentions,
            gossiped_intentions: r.gossiped_intentions,
            session_bytes: r.session_bytes,
            gossip_sent: r.gossip_sent,
            gossip_delivered: n.gossip_delivered,
            gossip_lost: n.gossip_lost,
            gossip_bytes: n.gossip_bytes,
            connections: n.connections,
            streams: n.streams,
            bans: r.bans,
        }
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sim({} nodes in {})",
            self.peers.len(),
            self.dir.display()
        )
    }
}

/// Anti-entropy period of simulated nodes: short, so a healed partition converges in a
/// fraction of a second rather than the daemon's half minute.
pub const ANTI_ENTROPY: Duration = Duration::from_millis(200);

impl Sim {
    /// A simulation whose network faults follow `seed` and `config`, with the nodes' data
    /// under `dir`.
    pub fn new(seed: u64, config: SimConfig, dir: &Path) -> Sim {
        Sim {
            net: SimNetwork::new(seed, config),
            dir: dir.to_path_buf(),
            config: ReplicatorConfig {
                anti_entropy: ANTI_ENTROPY,
                ..ReplicatorConfig::default()
            },
            peers: Vec::new(),
            members: HashMap::new(),
            hostile: BTreeSet::new(),
            retired: ReplicaStats::default(),
            warm: None,
            seed,
            epoch: std::sync::OnceLock::new(),
        }
    }

    /// Lets every node finish what it can do now (deliveries, ingests, sessions), then
    /// moves the simulation's clock on by [`STEP`]: on a paused runtime the sleep ends only
    /// once every task waits. Scenario and soak operations each take a step, so their
    /// writes are spread over simulated time as a workload's would be.
    pub async fn step(&self) {
        tokio::time::sleep(STEP).await;
    }

    /// How long the simulation has run on its clock (from its first node). Call it on the
    /// simulation's runtime: elsewhere tokio reads the wall clock.
    pub fn elapsed(&self) -> Duration {
        self.epoch.get().map_or(Duration::ZERO, |e| e.elapsed())
    }

    /// What the network carried so far, as a digest chained over every event (see
    /// [`lattice_net::SimNetwork::trace`]): on a paused current-thread runtime, the same
    /// seed and operations give the same trace.
    pub fn trace(&self) -> lattice_net::TraceDigest {
        self.net.trace()
    }

    /// The simulated network (for faults this type does not wrap).
    pub fn network(&self) -> &SimNetwork {
        &self.net
    }

    /// Nodes added so far (stopped ones included).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Node `node`'s identity.
    ///
    /// # Errors
    /// [`SimError::NoNode`].
    pub fn key(&self, node: usize) -> Result<PubKey, SimError> {
        self.peers
            .get(node)
            .map(|p| p.key)
            .ok_or(SimError::NoNode(node))
    }

    /// Adds a node with a new identity and data directory, online; returns its index.
    ///
    /// # Errors
    /// [`SimError::Node`] when the node cannot open its data.
    pub async fn add_node(&mut self) -> Result<usize, SimError> {
        self.add_node_skewed(0).await
    }

    /// As [`Sim::add_node`], with the node's wall clock `skew_ms` milliseconds off (ahead
    /// when positive; its HLCs follow it). Within the HLC's allowed drift
    /// ([`lattice_model::MAX_FUTURE_DRIFT_MS`]) the members must converge all the same.
    ///
    /// # Errors
    /// [`SimError::Node`] when the node cannot open its data.
    pub async fn add_node_skewed(&mut self, skew_ms: i64) -> Result<usize, SimError> {
        if self.warm.is_none() {
            self.warm = Some(compile_builtins(&self.dir.join("modules-compiled"))?);
        }
        let index = self.peers.len();
        let dir = self.dir.join(format!("node-{index}"));
        let manager = self.start(index, &dir, skew_ms, 0).await?;
        let key = manager.node().key().public();
        self.peers.push(SimPeer {
            dir,
            key,
            manager: Some(manager),
            online: true,
            skew_ms,
            runs: 0,
        });
        Ok(index)
    }

    async fn start(
        &self,
        index: usize,
        dir: &Path,
        skew_ms: i64,
        runs: u64,
    ) -> Result<StoreManager, SimError> {
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(SimError::Threaded);
        }
        let data = DataDir::new(dir);
        // The built-in guests compiled once, for every node: each would compile the same code.
        if let Some(warm) = &self.warm {
            link_modules(warm, &data.modules_dir()).map_err(|e| SimError::Node {
                node: index,
                source: Box::new(NodeError::Io {
                    path: data.modules_dir().display().to_string(),
                    source: e,
                }),
            })?;
        }
        // Identities from the seed: the same nodes on every run.
        if !data.identity_path().exists() {
            data.create_identity(seeded(self.seed, b"identity", index as u64))
                .map_err(|e| failed(index)(e.into()))?;
        }
        let epoch = *self.epoch.get_or_init(tokio::time::Instant::now);
        let clock = lattice_log::Clock::from_fn(move || {
            let now = SIM_EPOCH_MS + epoch.elapsed().as_millis() as u64;
            now.saturating_add_signed(skew_ms)
        });
        // A restart draws other secrets than the run before it.
        let entropy = u64::from_le_bytes(
            seeded(self.seed, b"entropy", (index as u64) << 32 | runs)[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let node = Node::open(data)
            .map_err(failed(index))?
            .with_clock(clock)
            .with_entropy(entropy)
            .inline();
        let sim = self.net.node(node.key().public());
        StoreManager::start(node, sim.clone(), sim, None, self.config.clone())
            .await
            .map_err(failed(index))
    }

    /// Links the nodes' built-in guests from `modules`, a folder made by
    /// [`compile_builtins`] (shared by many simulations), instead of compiling them for this
    /// one.
    pub fn use_modules(&mut self, modules: PathBuf) {
        self.warm = Some(modules);
    }

    /// Creates a store of type `store_type` (`kv`, `counter`, `fs`, …) on `node`.
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] for an unknown type or a storage failure.
    pub async fn create_store(
        &mut self,
        node: usize,
        store_type: &str,
    ) -> Result<StoreId, SimError> {
        let store = self
            .node(node)?
            .create(store_type, "", None)
            .await
            .map_err(failed(node))?;
        self.members.insert(store, BTreeSet::from([node]));
        Ok(store)
    }

    /// Creates a child store of type `store_type` under `parent` on `node`; it opens on every
    /// member of the parent as the declaration reaches them.
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] for an unknown type or a parent not open.
    pub async fn create_child(
        &mut self,
        node: usize,
        parent: &StoreId,
        store_type: &str,
    ) -> Result<StoreId, SimError> {
        let store = self
            .node(node)?
            .create(store_type, "", Some(*parent))
            .await
            .map_err(failed(node))?;
        let members = self.members.get(parent).cloned().unwrap_or_default();
        self.members.insert(store, members);
        Ok(store)
    }

    /// `inviter` invites `joiner` into `store` and `joiner` joins with the token.
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] when the invite or the join fails (for
    /// example, the two cannot reach each other).
    pub async fn join(
        &mut self,
        inviter: usize,
        joiner: usize,
        store: &StoreId,
    ) -> Result<(), SimError> {
        let token = self
            .node(inviter)?
            .invite(store, Duration::from_secs(3600))
            .await
            .map_err(failed(inviter))?;
        self.node(joiner)?
            .join(&token.encode(), |_| {})
            .await
            .map_err(failed(joiner))?;
        self.members.entry(*store).or_default().insert(joiner);
        Ok(())
    }

    /// Calls `method` of `store`'s type on `node` (a command writes; a query reads).
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] with the store's error (a rejected write is
    /// an error).
    pub async fn call(
        &self,
        node: usize,
        store: &StoreId,
        method: &str,
        args: Value,
    ) -> Result<Value, SimError> {
        self.node(node)?
            .call(store, method, &args)
            .await
            .map_err(failed(node))
    }

    /// `node` revokes `peer` from `store`: the peer's writes that `node` has not seen are
    /// rejected on every member once they learn of it, and the peer is left out of
    /// [`Sim::wait_converged`] for the store.
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] when `node` may not revoke (not a member, a
    /// child store).
    pub async fn revoke(
        &mut self,
        node: usize,
        store: &StoreId,
        peer: usize,
    ) -> Result<(), SimError> {
        let key = self.key(peer)?;
        self.node(node)?
            .revoke_peer(store, &key)
            .await
            .map_err(failed(node))?;
        // Members refuse it from now on: it never hears of its revocation, and is no longer
        // held to the store's state.
        if let Some(members) = self.members.get_mut(store) {
            members.remove(&peer);
        }
        Ok(())
    }

    /// Takes `node` off the network (its connections fail) or brings it back.
    ///
    /// # Errors
    /// [`SimError::NoNode`].
    pub fn set_online(&mut self, node: usize, online: bool) -> Result<(), SimError> {
        let peer = self.peers.get_mut(node).ok_or(SimError::NoNode(node))?;
        peer.online = online;
        self.net.set_online(peer.key, online);
        Ok(())
    }

    /// Splits the network into `groups` of node indices (nodes not listed join the first
    /// group); members of different groups cannot reach each other until [`Sim::heal`].
    ///
    /// # Errors
    /// [`SimError::NoNode`] for an index that does not exist.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), SimError> {
        let keyed = groups
            .iter()
            .map(|g| g.iter().map(|n| self.key(*n)).collect())
            .collect::<Result<Vec<Vec<PubKey>>, SimError>>()?;
        self.net.partition(&keyed);
        Ok(())
    }

    /// Changes the network's gossip faults (loss, duplication, delay) from now on.
    pub fn set_faults(&self, config: SimConfig) {
        self.net.set_faults(config);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// Stops `node` cleanly (its stores close, its state is made durable).
    ///
    /// # Errors
    /// [`SimError::NoNode`] when it does not exist or is stopped already.
    pub async fn stop(&mut self, node: usize) -> Result<(), SimError> {
        let manager = self.take_manager(node)?;
        manager.shutdown().await;
        Ok(())
    }

    /// Stops `node` as a killed process would ([`StoreManager::crash`]): writes in flight
    /// are not answered, projected state is not made durable; [`Sim::restart`] recovers it
    /// from the log.
    ///
    /// # Errors
    /// [`SimError::NoNode`] when it does not exist or is stopped already.
    pub async fn crash(&mut self, node: usize) -> Result<(), SimError> {
        let manager = self.take_manager(node)?;
        manager.crash().await;
        Ok(())
    }

    fn take_manager(&mut self, node: usize) -> Result<StoreManager, SimError> {
        let peer = self.peers.get_mut(node).ok_or(SimError::NoNode(node))?;
        let manager = peer.manager.take().ok_or(SimError::NoNode(node))?;
        // A stopped process has no endpoint: its links fail at once, as a refused connection
        // would (its `online` setting is kept for the restart).
        self.net.set_online(peer.key, false);
        add_stats(&mut self.retired, manager.replicator().stats());
        Ok(manager)
    }

    /// A running node's store manager (for operations this type does not wrap).
    ///
    /// # Errors
    /// [`SimError::NoNode`] when it does not exist or is stopped.
    pub fn node(&self, node: usize) -> Result<&StoreManager, SimError> {
        self.peers
            .get(node)
            .and_then(|p| p.manager.as_ref())
            .ok_or(SimError::NoNode(node))
    }

    /// Makes `node` hostile: one byte of everything it sends is flipped from now on (see
    /// [`SimNetwork::set_hostile`]). It is no longer held to any store's state; its peers
    /// should strike and ban it and go on without it.
    ///
    /// # Errors
    /// [`SimError::NoNode`].
    pub fn set_hostile(&mut self, node: usize) -> Result<(), SimError> {
        let key = self.key(node)?;
        self.net.set_hostile(key, true);
        self.hostile.insert(node);
        Ok(())
    }

    /// What moved so far: sessions, intentions, gossip, bytes, bans.
    pub fn metrics(&self) -> SimMetrics {
        let mut replicas = self.retired;
        for manager in self.peers.iter().filter_map(|p| p.manager.as_ref()) {
            add_stats(&mut replicas, manager.replicator().stats());
        }
        SimMetrics::of(replicas, self.net.stats())
    }

    /// Starts a stopped `node` again from its data directory.
    ///
    /// # Errors
    /// [`SimError::NoNode`]; [`SimError::Node`] when its data does not open.
    pub async fn restart(&mut self, node: usize) -> Result<(), SimError> {
        let (dir, skew_ms, runs) = match self.peers.get(node) {
            Some(p) if p.manager.is_none() => (p.dir.clone(), p.skew_ms, p.runs + 1),
            _ => return Err(SimError::NoNode(node)),
        };
        let manager = self.start(node, &dir, skew_ms, runs).await?;
        self.peers[node].runs = runs;
        let online = self.peers[node].online;
        self.peers[node].manager = Some(manager);
        self.net.set_online(self.peers[node].key, online);
        Ok(())
    }

    /// Each node's state digest of `store` (`None`: stopped, offline, not a member, or the
    /// store is not open there yet).
    pub async fn digests(&self, store: &StoreId) -> Vec<Option<Hash>> {
        let mut out = Vec::with_capacity(self.peers.len());
        for (i, peer) in self.peers.iter().enumerate() {
            let digest = match (&peer.manager, peer.online) {
                (Some(m), true) if self.is_member(store, i) => m.state_digest(store).await.ok(),
                _ => None,
            };
            out.push(digest);
        }
        out
    }

    fn is_member(&self, store: &StoreId, node: usize) -> bool {
        self.members.get(store).is_some_and(|m| m.contains(&node))
    }

    /// The members of `store` that are running, online and not hostile: the ones held to
    /// its state.
    pub fn reachable(&self, store: &StoreId) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|i| self.is_member(store, *i) && !self.hostile.contains(i))
            .filter(|i| self.peers[*i].manager.is_some() && self.peers[*i].online)
            .collect()
    }

    /// Waits until every running, online member of `store` holds the same state (a member
    /// that has not opened it yet holds none), re-checking whenever a node's stores change;
    /// returns how long it took.
    ///
    /// # Errors
    /// [`SimError::Diverged`] after `deadline`, with each node's digest.
    pub async fn wait_converged(
        &self,
        store: &StoreId,
        deadline: Duration,
    ) -> Result<Took, SimError> {
        let start = tokio::time::Instant::now();
        let wall = Instant::now();
        let (tx, mut changed) = mpsc::channel::<()>(1);
        let mut forwarders = Vec::new();
        for manager in self.peers.iter().filter_map(|p| p.manager.as_ref()) {
            let mut events = manager.subscribe();
            let tx = tx.clone();
            forwarders.push(tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            let _ = tx.try_send(());
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }));
        }
        let _stop = AbortOnDrop(forwarders);
        loop {
            let digests = self.digests(store).await;
            let held = self.pick_reachable(store, &digests);
            if held.iter().all(Option::is_some) && held.windows(2).all(|w| w[0] == w[1]) {
                return Ok(Took {
                    sim: start.elapsed(),
                    wall: wall.elapsed(),
                });
            }
            let left = deadline.saturating_sub(start.elapsed());
            // A change somewhere, or an anti-entropy round's worth of time (sessions that
            // find nothing new raise no event).
            let wake = left.min(ANTI_ENTROPY);
            if left.is_zero() {
                return Err(SimError::Diverged {
                    store: store.short(),
                    waited: start.elapsed(),
                    detail: describe(&digests),
                });
            }
            let _ = tokio::time::timeout(wake, changed.recv()).await;
        }
    }

    /// [`Sim::wait_converged`] with, when the members diverge, the keys that differ (for a
    /// `kv` store) and each node's view ([`Sim::explain`]) added to the error's detail.
    ///
    /// # Errors
    /// As [`Sim::wait_converged`].
    pub async fn converge_or_explain(
        &self,
        store: &StoreId,
        deadline: Duration,
    ) -> Result<Took, SimError> {
        match self.wait_converged(store, deadline).await {
            Err(SimError::Diverged {
                store: short,
                waited,
                detail,
            }) => {
                let keys = self.diverging_keys(store).await;
                let mut detail = if keys.is_empty() {
                    detail
                } else {
                    format!("{detail}; keys that differ: {}", keys.join(", "))
                };
                detail.push_str(&format!("; nodes: {}", self.explain(store).await));
                Err(SimError::Diverged {
                    store: short,
                    waited,
                    detail,
                })
            }
            other => other,
        }
    }

    /// For a failure report: each running node's view of `store` — the peers it replicates
    /// it with (a member that does not know another cannot sync with it) and its digest, or
    /// why it has none (not open, damaged…).
    pub async fn explain(&self, store: &StoreId) -> String {
        let index = |key: &PubKey| self.peers.iter().position(|p| p.key == *key);
        let mut out = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let Some(manager) = &peer.manager else {
                out.push(format!("{i}: down"));
                continue;
            };
            let knows: Vec<String> = manager
                .replicator()
                .store_peers(store)
                .iter()
                .filter_map(index)
                .map(|j| j.to_string())
                .collect();
            let state = match manager.state_digest(store).await {
                Ok(digest) => digest.short(),
                Err(e) => e.to_string(),
            };
            out.push(format!("{i}: knows [{}], {state}", knows.join(" ")));
        }
        out.join("; ")
    }

    /// The digests of the reachable members of `store`, from all nodes' `digests`.
    fn pick_reachable(&self, store: &StoreId, digests: &[Option<Hash>]) -> Vec<Option<Hash>> {
        self.reachable(store)
            .into_iter()
            .map(|i| digests[i])
            .collect()
    }

    /// The digests of the reachable members of `store`.
    async fn held_digests(&self, store: &StoreId) -> Vec<Option<Hash>> {
        let digests = self.digests(store).await;
        self.pick_reachable(store, &digests)
    }

    /// Of the reachable members of `store`, the percentage holding the most common state.
    pub async fn agreement(&self, store: &StoreId) -> f64 {
        let held = self.held_digests(store).await;
        if held.is_empty() {
            return 100.0;
        }
        let mut counts: HashMap<Option<Hash>, usize> = HashMap::new();
        for d in held.iter().flatten() {
            *counts.entry(Some(*d)).or_default() += 1;
        }
        let most = counts.values().copied().max().unwrap_or(0);
        most as f64 * 100.0 / held.len() as f64
    }

    /// Every key of a `kv` store on `node` with its value (text values; others as JSON).
    ///
    /// # Errors
    /// Why the listing failed, as text.
    pub async fn kv_items(
        &self,
        node: usize,
        store: &StoreId,
    ) -> Result<BTreeMap<String, String>, String> {
        let listed = self
            .call(node, store, "list", serde_json::json!({"limit": 100_000}))
            .await
            .map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for item in listed["items"].as_array().into_iter().flatten() {
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            out.insert(text(&item["key"]), text(&item["value"]));
        }
        Ok(out)
    }

    /// For a `kv` store: the keys on which the reachable members differ, each with every
    /// member's value (`-`: absent), at most ten (empty for other store types).
    pub async fn diverging_keys(&self, store: &StoreId) -> Vec<String> {
        let mut held = Vec::new();
        for node in self.reachable(store) {
            if let Ok(items) = self.kv_items(node, store).await {
                held.push((node, items));
            }
        }
        let keys: BTreeSet<&String> = held.iter().flat_map(|(_, items)| items.keys()).collect();
        keys.into_iter()
            .filter(|k| held.windows(2).any(|w| w[0].1.get(*k) != w[1].1.get(*k)))
            .take(10)
            .map(|k| {
                let each: Vec<String> = held
                    .iter()
                    .map(|(n, items)| format!("{n}={}", items.get(k).map_or("-", String::as_str)))
                    .collect();
                format!("{k} ({})", each.join(" "))
            })
            .collect()
    }

    /// Stops every running node cleanly.
    pub async fn shutdown(&mut self) {
        for node in 0..self.peers.len() {
            if let Ok(manager) = self.take_manager(node) {
                manager.shutdown().await;
            }
        }
    }
}

/// Compiles every built-in guest once, in a data folder `dir` of its own; returns its module
/// folder, for [`Sim::use_modules`].
///
/// # Errors
/// [`SimError::Setup`] when a guest does not compile or the folder cannot be written.
pub fn compile_builtins(dir: &Path) -> Result<PathBuf, SimError> {
    let failed = |e| SimError::Setup(Box::new(e));
    let data = DataDir::new(dir);
    let node = Node::open(data.clone()).map_err(&failed)?;
    for (name, _) in lattice_runtime::BUILTIN_MODULES {
        node.resolve_type(name).map_err(&failed)?;
    }
    Ok(data.modules_dir())
}

/// The runtime a simulation runs on: one thread, time paused (it advances only when every
/// task waits, to the next timer), so a seed replays the same run and simulated minutes
/// pass in the time the work takes. Nodes run inline on it ([`Node::inline`]).
///
/// # Errors
/// When the runtime cannot be built.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
}

/// 32 bytes derived from the simulation's seed for `what` of `index`.
fn seeded(seed: u64, what: &[u8], index: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("lattice sim seed");
    h.update(&seed.to_le_bytes());
    h.update(what);
    h.update(&index.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Links the module files of `from` (component bytes and compiled code) into `to`, which is
/// made when missing; files already there are kept.
fn link_modules(from: &Path, to: &Path) -> std::io::Result<()> {
    for sub in ["", "cache"] {
        let (from, to) = (from.join(sub), to.join(sub));
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let target = to.join(entry.file_name());
            if target.exists() {
                continue;
            }
            if std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target)?;
            }
        }
    }
    Ok(())
}

/// Aborts the tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn describe(digests: &[Option<Hash>]) -> String {
    digests
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(h) => format!("node {i}: {}", h.short()),
            None => format!("node {i}: -"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
