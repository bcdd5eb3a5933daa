//! The [`Replicator`]: keeps a node's stores in sync with their peers over a [`Transport`]
//! and [`Gossip`].
//!
//! - Serves sync sessions on inbound streams (rate-limited per peer).
//! - Gossips locally written intentions ([`Replicator::publish`]) and ingests gossip; an
//!   intention whose parents are missing triggers a chain fetch from the peer that delivered
//!   it, then from the store's other peers one at a time.
//! - Anti-entropy: reconciles with each peer when the store is added, when a neighbour comes
//!   up, and periodically with one peer at a time, so a node that was offline or partitioned
//!   catches up on its own.
//! - Peers that send invalid data collect strikes and are then banned for a while: their
//!   connections are closed and refused.
//! - Access: a store is open to any peer or only to its peer set ([`Access`]); joins (a
//!   client presenting an invite secret) are decided by the node, which receives them as [`JoinRequest`]s.

mod anti_entropy;
mod blobs;

pub use blobs::FetchedBlob;
mod client;
mod gossip;
mod peers;
mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use lattice_log::{Incoming, Ingested, Log};
use lattice_model::{Hash, PubKey, SignedIntention, StoreId};
use lattice_sync::{GossipMsg, Opening, SessionError, SessionOptions, SessionReport};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::transport::{Connection, Gossip, GossipEvent, NetError, PeerAddr, Stream, Transport};

/// Replicator settings.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// Period of anti-entropy rounds (one peer per round per store).
    pub anti_entropy: Duration,
    /// Session settings.
    pub session: SessionOptions,
    /// Strikes (invalid frames, intentions, protocol violations) before a peer is banned.
    pub strikes_to_ban: u32,
    /// How long a ban lasts.
    pub ban: Duration,
    /// Inbound streams per second a peer may open (burst: twice that).
    pub streams_per_second: u32,
    /// First retry delay after a peer could not be reached (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Longest a whole session may take.
    pub session_timeout: Duration,
    /// Reconcile on its own (on start, on neighbour up, periodically). Benchmarks turn it off
    /// to time sessions they start themselves.
    pub auto_sync: bool,
    /// Largest encoded snapshot this node fetches (it is held in memory while it arrives).
    pub max_snapshot: u64,
}

impl Default for ReplicatorConfig {
    fn default() -> ReplicatorConfig {
        ReplicatorConfig {
            anti_entropy: Duration::from_secs(30),
            session: SessionOptions::default(),
            strikes_to_ban: 3,
            ban: Duration::from_secs(600),
            streams_per_second: 50,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            session_timeout: Duration::from_secs(600),
            auto_sync: true,
            max_snapshot: 2 << 30,
        }
    }
}

/// What the replicator did (for tests, progress display and logs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A reconciliation with `peer` finished.
    Synced {
        /// The store.
        store: StoreId,
        /// The peer.
        peer: PubKey,
        /// What moved.
        report: SessionReport,
    },
    /// A session with `peer` failed.
    SessionFailed {
        /// The store.
        store: StoreId,
        /// The peer.
        peer: PubKey,
        /// Why.
        error: String,
    },
    /// A session opened by `peer` was served.
    Served {
        /// The store.
        store: StoreId,
        /// The peer.
        peer: PubKey,
        /// What moved.
        report: SessionReport,
    },
    /// An intention arrived by gossip and was witnessed.
    Gossiped {
        /// The store.
        store: StoreId,
        /// The intention.
        hash: Hash,
    },
    /// A gap (missing parents) was filled by a chain fetch from `peer`.
    GapFilled {
        /// The store.
        store: StoreId,
        /// The intention that is now witnessed.
        hash: Hash,
        /// The peer that had the chain.
        peer: PubKey,
    },
    /// A peer was banned for sending invalid data.
    PeerBanned {
        /// The peer.
        peer: PubKey,
        /// The last offence.
        reason: String,
    },
}

/// Counts of what a replicator did since it started ([`Replicator::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Reconciliation sessions this node opened that finished.
    pub sessions: u64,
    /// Sessions peers opened that this node served.
    pub served: u64,
    /// Sessions (either way) that failed.
    pub failed_sessions: u64,
    /// Intentions received in sessions this node opened and newly witnessed.
    pub synced_intentions: u64,
    /// Bytes of session frames sent and received by either side's sessions, as counted here.
    pub session_bytes: u64,
    /// Gossip messages this node handed to the network (one per written intention).
    pub gossip_sent: u64,
    /// Intentions that arrived by gossip and were newly witnessed.
    pub gossiped_intentions: u64,
    /// Gaps filled by a chain fetch.
    pub gaps_filled: u64,
    /// Peers banned.
    pub bans: u64,
}

/// The counters behind [`ReplicaStats`].
#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicU64,
    served: AtomicU64,
    failed_sessions: AtomicU64,
    synced_intentions: AtomicU64,
    session_bytes: AtomicU64,
    gossip_sent: AtomicU64,
    gossiped_intentions: AtomicU64,
    gaps_filled: AtomicU64,
    bans: AtomicU64,
}

impl Counters {
    fn count(&self, event: &ReplicaEvent) {
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        match event {
            ReplicaEvent::Synced { report, .. } => {
                add(&self.sessions, 1);
                add(&self.synced_intentions, report.witnessed);
                add(
                    &self.session_bytes,
                    report.bytes_sent + report.bytes_received,
                );
            }
            ReplicaEvent::Served { report, .. } => {
                add(&self.served, 1);
                add(
                    &self.session_bytes,
                    report.bytes_sent + report.bytes_received,
                );
            }
            ReplicaEvent::SessionFailed { .. } => add(&self.failed_sessions, 1),
            ReplicaEvent::Gossiped { .. } => add(&self.gossiped_intentions, 1),
            ReplicaEvent::GapFilled { .. } => add(&self.gaps_filled, 1),
            ReplicaEvent::PeerBanned { .. } => add(&self.bans, 1),
        }
    }

    fn snapshot(&self) -> ReplicaStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReplicaStats {
            sessions: get(&self.sessions),
            served: get(&self.served),
            failed_sessions: get(&self.failed_sessions),
            synced_intentions: get(&self.synced_intentions),
            session_bytes: get(&self.session_bytes),
            gossip_sent: get(&self.gossip_sent),
            gossiped_intentions: get(&self.gossiped_intentions),
            gaps_filled: get(&self.gaps_filled),
            bans: get(&self.bans),
        }
    }
}

/// A replication request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The store is not registered with the replicator.
    #[error("store {0} is not being replicated here")]
    UnknownStore(String),
    /// The peer is banned or waiting out a retry delay.
    #[error("peer {peer} is {state}")]
    PeerUnavailable {
        /// Short id of the peer.
        peer: String,
        /// Banned or backing off.
        state: &'static str,
    },
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session took longer than the configured timeout.
    #[error("session with {0} timed out")]
    Timeout(String),
    /// No peer could serve the request.
    #[error("no peer could {0}")]
    NoPeer(&'static str),
    /// The peer is not a member of the store (members-only stores sync with members only).
    #[error("peer {0} is not a member of this store")]
    NotMember(String),
    /// The node's blob store failed.
    #[error(transparent)]
    Blob(#[from] lattice_cas::CasError),
}

/// Who may replicate a store with this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any peer that names the store (headless serving, benchmarks).
    Open,
    /// Only the store's peer set: sessions from others are refused, gossip from or by others
    /// is dropped. The node keeps the set equal to the system table's active and dormant
    /// peers ([`Replicator::set_members`]).
    Members,
}

/// A client presented an invite secret: the node decides, on its own time, and answers
/// through `reply` (`Err` carries the reason shown to the joiner). On success the node has
/// made `peer` a member already, so it can bootstrap at once. Received from
/// [`Replicator::join_requests`]; the net layer never calls into the node itself.
#[derive(Debug)]
pub struct JoinRequest {
    /// The joiner.
    pub peer: PubKey,
    /// The store the invite is for.
    pub store: StoreId,
    /// The invite's secret.
    pub secret: [u8; 32],
    /// The joiner's newest position in its own chain of the store.
    pub tip: u64,
    /// The same for the child stores of the store it holds.
    pub children: Vec<(StoreId, u64)>,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// How long a served join waits for the node's answer.
const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// A peer of a store asks for a snapshot of it (to join without the history this node
/// pruned): the node answers through `reply` with the encoded snapshot, `None` when its log
/// of the store is whole (the peer bootstraps from witness records instead), or `Err` with
/// the reason shown to the peer. Received from [`Replicator::snapshot_requests`].
#[derive(Debug)]
pub struct SnapshotRequest {
    /// The peer asking.
    pub peer: PubKey,
    /// The store.
    pub store: StoreId,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<Option<Vec<u8>>, String>>,
}

/// How long a served snapshot fetch waits for the node to make the snapshot.
const SNAPSHOT_ANSWER_WAIT: Duration = Duration::from_secs(120);

struct StoreEntry {
    log: Arc<Log>,
    access: Access,
    /// Sync partners; with [`Access::Members`] also exactly who is allowed.
    peers: Mutex<Vec<PubKey>>,
    /// This store's gossip and anti-entropy tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    gossip: Mutex<mpsc::Sender<Vec<u8>>>,
    /// Missing hashes being fetched right now (so one gap is fetched once).
    filling: Mutex<BTreeSet<Hash>>,
    /// Peers to reconcile with soon (neighbour up, gap unresolved).
    nudge: mpsc::Sender<PubKey>,
    /// The store's current epoch; the gossip topic follows it ([`topic_of`]).
    epoch: watch::Sender<Option<Hash>>,
}

#[derive(Default)]
struct PeerState {
    conn: Option<Arc<dyn Connection>>,
    strikes: u32,
    banned_until: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    tokens: f64,
    refilled: Option<Instant>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    gossip: Arc<dyn Gossip>,
    config: ReplicatorConfig,
    stores: Mutex<BTreeMap<StoreId, Arc<StoreEntry>>>,
    peers: Mutex<BTreeMap<PubKey, PeerState>>,
    events: broadcast::Sender<ReplicaEvent>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    joins: Mutex<Option<mpsc::Sender<JoinRequest>>>,
    snapshots: Mutex<Option<mpsc::Sender<SnapshotRequest>>>,
    /// The node's blob store, once given ([`Replicator::set_cas`]).
    cas: Mutex<Option<Arc<lattice_cas::Cas>>>,
    /// Offline: no sessions either way, gossip neither sent nor taken.
    offline: std::sync::atomic::AtomicBool,
    /// What it did ([`Replicator::stats`]).
    counters: Counters,
}

impl StoreEntry {
    fn allows(&self, peer: &PubKey) -> bool {
        self.access == Access::Open || lock(&self.peers).contains(peer)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent between statements; a panicked holder is a bug
    // elsewhere, and replication should keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gossip topic of a store in its current epoch: `blake3("lattice/gossip/v1/" ‖ store ‖
/// epoch)`, or without the epoch before the store's first one. Topics rotate with epochs, so
/// a peer revoked by an epoch (which never receives it) stops hearing live traffic.
pub fn topic_of(store: &StoreId, epoch: Option<&Hash>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"lattice/gossip/v1/");
    h.update(store.as_bytes());
    if let Some(epoch) = epoch {
        h.update(epoch.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// Keeps registered stores replicated; cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replicator({})", self.inner.transport.local().id.short())
    }
}

impl Replicator {
    /// Starts serving inbound sessions on `transport`. Must be called inside a tokio runtime.
    pub fn start(
        transport: Arc<dyn Transport>,
        gossip: Arc<dyn Gossip>,
        config: ReplicatorConfig,
    ) -> Replicator {
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            transport,
            gossip,
            config,
            stores: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            events,
            tasks: Mutex::new(Vec::new()),
            joins: Mutex::new(None),
            snapshots: Mutex::new(None),
            cas: Mutex::new(None),
            offline: std::sync::atomic::AtomicBool::new(false),
            counters: Counters::default(),
        });
        let r = Replicator { inner };
        let this = r.clone();
        let task = tokio::spawn(async move { this.accept_loop().await });
        lock(&r.inner.tasks).push(task);
        r
    }

    /// This node's address.
    pub fn local(&self) -> PeerAddr {
        self.inner.transport.local()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReplicaEvent> {
        self.inner.events.subscribe()
    }

    /// Keeps a task for shutdown, forgetting finished ones so the list does not grow.
    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    fn emit(&self, event: ReplicaEvent) {
        self.inner.counters.count(&event);
        let _ = self.inner.events.send(event);
    }

    /// What this replicator did since it started: sessions, intentions, gossip.
    pub fn stats(&self) -> ReplicaStats {
        self.inner.counters.snapshot()
    }

    /// Starts replicating `log` with `peers`, open to any peer ([`Access::Open`]); see
    /// [`Replicator::add_store_with`].
    ///
    /// # Errors
    /// [`ReplicaError::Net`] when the gossip topic cannot be joined.
    pub async fn add_store(&self, log: Arc<Log>, peers: Vec<PubKey>) -> Result<(), ReplicaError> {
        self.add_store_with(log, peers, Access::Open).await
    }

    /// Starts replicating `log` with `peers`: joins the store's gossip topic, reconciles with
    /// each peer, then keeps reconciling periodically and when neighbours come up. A store
    /// already replicated is left as it is.
    ///
    /// # Errors
    /// [`ReplicaError::Net`] when the gossip topic cannot be joined.
    pub async fn add_store_with(
        &self,
        log: Arc<Log>,
        peers: Vec<PubKey>,
        access: Access,
    ) -> Result<(), ReplicaError> {
        let store = log.store_id();
        if self.store(&store).is_some() {
            return Ok(());
        }
        let me = self.local().id;
        let neighbours: Vec<PubKey> = peers.iter().copied().filter(|p| *p != me).collect();
        let topic = self
            .inner
            .gossip
            .join(topic_of(&store, None), neighbours)
            .await?;
        let (nudge_tx, nudge_rx) = mpsc::channel(256);
        let (epoch_tx, epoch_rx) = watch::channel(None);
        let entry = Arc::new(StoreEntry {
            log,
            access,
            peers: Mutex::new(peers),
            tasks: Mutex::new(Vec::new()),
            gossip: Mutex::new(topic.sender),
            filling: Mutex::new(BTreeSet::new()),
            nudge: nudge_tx,
            epoch: epoch_tx,
        });
        lock(&self.inner.stores).insert(store, entry.clone());
        let this = self.clone();
        let gossip_task =
            tokio::spawn(async move { this.gossip_loop(store, topic.events, epoch_rx).await });
        let this = self.clone();
        let ae_task = tokio::spawn(async move { this.anti_entropy_loop(store, nudge_rx).await });
        lock(&entry.tasks).extend([gossip_task, ae_task]);
        info!(store = %store.short(), ?access, "replicating");
        Ok(())
    }

    /// Stops replicating a store (its gossip and anti-entropy tasks end; sessions for it are
    /// refused from now on). The log is the caller's to close.
    pub fn remove_store(&self, store: &StoreId) {
        if let Some(entry) = lock(&self.inner.stores).remove(store) {
            for t in lock(&entry.tasks).drain(..) {
                t.abort();
            }
            info!(store = %store.short(), "no longer replicating");
        }
    }

    /// Like [`Replicator::remove_store`], and waits until the store's tasks have ended (and
    /// let go of its log).
    pub async fn remove_store_and_wait(&self, store: &StoreId) {
        let Some(entry) = lock(&self.inner.stores).remove(store) else {
            return;
        };
        let tasks: Vec<_> = lock(&entry.tasks).drain(..).collect();
        drop(entry);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        info!(store = %store.short(), "no longer replicating");
    }

    /// Replaces a store's peer set (for [`Access::Members`]: who is allowed). Peers that are
    /// now in no store's set lose their connection at once; new ones are reconciled with soon.
    pub fn set_members(&self, store: &StoreId, members: Vec<PubKey>) {
        let Some(entry) = self.store(store) else {
            return;
        };
        let removed: Vec<PubKey> = {
            let mut peers = lock(&entry.peers);
            let removed = peers
                .iter()
                .filter(|p| !members.contains(p))
                .copied()
                .collect();
            for p in &members {
                if !peers.contains(p) {
                    let _ = entry.nudge.try_send(*p);
                }
            }
            *peers = members;
            removed
        };
        for peer in removed {
            if !self.is_known_anywhere(&peer)
                && let Some(c) = lock(&self.inner.peers)
                    .get_mut(&peer)
                    .and_then(|st| st.conn.take())
            {
                info!(peer = %peer.short(), "closing the connection of a removed peer");
                c.close("no longer a peer of any store here");
            }
        }
    }

    /// Tells the replicator a store's current epoch: its gossip moves to the epoch's topic
    /// ([`topic_of`]). Peers still on the old topic catch up through anti-entropy and move
    /// when the epoch reaches them.
    pub fn set_epoch(&self, store: &StoreId, epoch: Hash) {
        if let Some(entry) = self.store(store) {
            entry.epoch.send_if_modified(|now| {
                let changed = *now != Some(epoch);
                *now = Some(epoch);
                changed
            });
        }
    }

    /// Join requests from now on (replacing an earlier receiver); while nobody takes them,
    /// every join is refused.
    pub fn join_requests(&self) -> mpsc::Receiver<JoinRequest> {
        let (tx, rx) = mpsc::channel(16);
        *lock(&self.inner.joins) = Some(tx);
        rx
    }

    /// Snapshot requests from now on (replacing an earlier receiver); while nobody takes
    /// them, every snapshot fetch is refused.
    pub fn snapshot_requests(&self) -> mpsc::Receiver<SnapshotRequest> {
        let (tx, rx) = mpsc::channel(4);
        *lock(&self.inner.snapshots) = Some(tx);
        rx
    }

    /// A store's sync partners here (empty when the store is not replicated).
    pub fn store_peers(&self, store: &StoreId) -> Vec<PubKey> {
        self.store(store)
            .map(|entry| lock(&entry.peers).clone())
            .unwrap_or_default()
    }

    /// Adds a peer to a store's peer set (and reconciles with it soon).
    pub fn add_store_peer(&self, store: &StoreId, peer: PubKey) {
        if let Some(entry) = self.store(store) {
            let mut peers = lock(&entry.peers);
            if !peers.contains(&peer) {
                peers.push(peer);
            }
            let _ = entry.nudge.try_send(peer);
        }
    }

    fn store(&self, store: &StoreId) -> Option<Arc<StoreEntry>> {
        lock(&self.inner.stores).get(store).cloned()
    }

    /// Stops every task; registered logs are dropped by the replicator (close them after).
    pub fn shutdown(&self) {
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
        for entry in lock(&self.inner.stores).values() {
            for t in lock(&entry.tasks).drain(..) {
                t.abort();
            }
        }
        for (_, p) in std::mem::take(&mut *lock(&self.inner.peers)) {
            if let Some(c) = p.conn {
                c.close("shutting down");
            }
        }
        lock(&self.inner.stores).clear();
    }

    // ---- peers ----

    /// Takes the node off the network (`false`: every connection is closed, no session is
    /// served or started, gossip is neither sent nor taken) or back on (`true`: every store
    /// reconciles with its peers at once). Writes go on locally meanwhile.
    pub fn set_online(&self, online: bool) {
        use std::sync::atomic::Ordering;
        let was_online = !self.inner.offline.swap(!online, Ordering::SeqCst);
        if !online {
            for p in lock(&self.inner.peers).values_mut() {
                if let Some(c) = p.conn.take() {
                    c.close("going offline");
                }
            }
        } else if !was_online {
            for entry in lock(&self.inner.stores).values() {
                for p in lock(&entry.peers).iter() {
                    let _ = entry.nudge.try_send(*p);
                }
            }
            for p in lock(&self.inner.peers).values_mut() {
                p.failures = 0;
                p.retry_at = None;
            }
        }
        info!(online, "network state");
    }

    /// True unless [`Replicator::set_online`] took the node offline.
    pub fn is_online(&self) -> bool {
        !self.inner.offline.load(std::sync::atomic::Ordering::SeqCst)
    }
}
