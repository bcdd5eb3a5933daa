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
//!   client presenting an invite secret) are decided by the node's [`JoinHandler`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lattice_log::{Incoming, Ingested, Log};
use lattice_model::{Hash, PubKey, SignedIntention, StoreId};
use lattice_sync::{GossipMsg, Opening, SessionError, SessionOptions, SessionReport};
use tokio::sync::{broadcast, mpsc};
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

/// Decides join requests (a client presenting an invite secret).
pub trait JoinHandler: Send + Sync + 'static {
    /// Accepts (`Ok`) or refuses (`Err(reason for the joiner)`) `peer` joining `store` with
    /// `secret`; `tip` is the joiner's newest position in its own chain of the store,
    /// `children` the same for the child stores it holds. On success the handler has made
    /// `peer` a member already, so it can bootstrap at once.
    ///
    /// # Errors
    /// The refusal reason, shown to the joiner.
    fn join(
        &self,
        peer: PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: &[(StoreId, u64)],
    ) -> Result<(), String>;
}

struct StoreEntry {
    log: Arc<Log>,
    access: Access,
    /// Sync partners; with [`Access::Members`] also exactly who is allowed.
    peers: Mutex<Vec<PubKey>>,
    /// This store's gossip and anti-entropy tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    gossip: Mutex<mpsc::Sender<Vec<u8>>>,
    /// Missing hashes being fetched right now (so one gap is fetched once).
    filling: Mutex<HashSet<Hash>>,
    /// Peers to reconcile with soon (neighbour up, gap unresolved).
    nudge: mpsc::Sender<PubKey>,
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
    stores: Mutex<HashMap<StoreId, Arc<StoreEntry>>>,
    peers: Mutex<HashMap<PubKey, PeerState>>,
    events: broadcast::Sender<ReplicaEvent>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    join: Mutex<Option<Arc<dyn JoinHandler>>>,
    /// Offline: no sessions either way, gossip neither sent nor taken.
    offline: std::sync::atomic::AtomicBool,
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

/// The gossip topic of a store.
pub fn topic_of(store: &StoreId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"lattice/gossip/v1/");
    h.update(store.as_bytes());
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
            stores: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            events,
            tasks: Mutex::new(Vec::new()),
            join: Mutex::new(None),
            offline: std::sync::atomic::AtomicBool::new(false),
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
        let _ = self.inner.events.send(event);
    }

    /// Remembers how to reach a peer.
    pub fn add_peer(&self, addr: &PeerAddr) {
        self.inner.transport.add_peer(addr);
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
        let topic = self.inner.gossip.join(topic_of(&store), neighbours).await?;
        let (nudge_tx, nudge_rx) = mpsc::channel(256);
        let entry = Arc::new(StoreEntry {
            log,
            access,
            peers: Mutex::new(peers),
            tasks: Mutex::new(Vec::new()),
            gossip: Mutex::new(topic.sender),
            filling: Mutex::new(HashSet::new()),
            nudge: nudge_tx,
        });
        lock(&self.inner.stores).insert(store, entry.clone());
        let this = self.clone();
        let gossip_task = tokio::spawn(async move { this.gossip_loop(store, topic.events).await });
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

    /// True when `peer` is in the peer set of some store, or some store is open to all.
    fn is_known_anywhere(&self, peer: &PubKey) -> bool {
        lock(&self.inner.stores)
            .values()
            .any(|e| e.access == Access::Open || lock(&e.peers).contains(peer))
    }

    /// Sets who decides join requests; without a handler every join is refused.
    pub fn set_join_handler(&self, handler: Arc<dyn JoinHandler>) {
        *lock(&self.inner.join) = Some(handler);
    }

    /// Presents an invite `secret` for `store` to `peer` (whose address must be known). On
    /// success this node is a peer of the store there and may bootstrap it from `peer`.
    ///
    /// # Errors
    /// [`ReplicaError::Session`] with [`SessionError::Refused`] and the inviter's reason when
    /// the invite is not accepted; network errors.
    pub async fn join(
        &self,
        peer: &PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: Vec<(StoreId, u64)>,
    ) -> Result<(), ReplicaError> {
        // An explicit join is worth a try even while automatic retries wait, and on a fresh
        // connection: a cached one may have been closed by the other side a moment ago (as
        // when this node just left the store there).
        self.succeeded(peer);
        if let Some(st) = lock(&self.inner.peers).get_mut(peer) {
            st.conn = None;
        }
        self.session(peer, &store, async |s: &mut Stream| {
            lattice_sync::request_join(s, store, secret, tip, children.clone()).await
        })
        .await
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

    /// Gossips a locally written intention to the store's peers.
    pub fn publish(&self, intention: &SignedIntention) {
        if !self.is_online() {
            return;
        }
        let store = intention.intention().store_id();
        if let Some(entry) = self.store(&store) {
            let msg = GossipMsg::for_intention(store, intention.hash(), intention.as_bytes());
            if lock(&entry.gossip).try_send(msg.encode()).is_err() {
                debug!(store = %store.short(), "gossip queue full; anti-entropy will carry it");
            }
        }
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
        for (_, p) in lock(&self.inner.peers).drain() {
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

    fn check_peer(&self, peer: &PubKey, outbound: bool) -> Result<(), ReplicaError> {
        if !self.is_online() {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "not reachable: this node is offline",
            });
        }
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        let now = Instant::now();
        if st.banned_until.is_some_and(|t| t > now) {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "banned",
            });
        }
        if outbound && st.retry_at.is_some_and(|t| t > now) {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "unreachable (retrying later)",
            });
        }
        Ok(())
    }

    fn strike(&self, peer: &PubKey, reason: &str) {
        let banned = {
            let mut peers = lock(&self.inner.peers);
            let st = peers.entry(*peer).or_default();
            st.strikes += 1;
            warn!(peer = %peer.short(), strikes = st.strikes, "peer misbehaved: {reason}");
            if st.strikes >= self.inner.config.strikes_to_ban {
                st.banned_until = Some(Instant::now() + self.inner.config.ban);
                st.strikes = 0;
                if let Some(c) = st.conn.take() {
                    c.close("banned for sending invalid data");
                }
                true
            } else {
                false
            }
        };
        if banned {
            self.emit(ReplicaEvent::PeerBanned {
                peer: *peer,
                reason: reason.to_string(),
            });
        }
    }

    /// Token bucket for inbound streams.
    fn allow_stream(&self, peer: &PubKey) -> bool {
        let rate = f64::from(self.inner.config.streams_per_second.max(1));
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        let now = Instant::now();
        let elapsed = st
            .refilled
            .map_or(2.0, |t| now.duration_since(t).as_secs_f64());
        st.tokens = (st.tokens + elapsed * rate).min(2.0 * rate);
        st.refilled = Some(now);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn failed(&self, peer: &PubKey) {
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        st.failures = st.failures.saturating_add(1);
        let cfg = &self.inner.config;
        let backoff = cfg
            .min_backoff
            .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
            .min(cfg.max_backoff);
        st.retry_at = Some(Instant::now() + backoff);
        if let Some(c) = st.conn.take() {
            c.close("session failed");
        }
    }

    fn succeeded(&self, peer: &PubKey) {
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        st.failures = 0;
        st.retry_at = None;
    }

    async fn connection(&self, peer: &PubKey) -> Result<Arc<dyn Connection>, ReplicaError> {
        self.check_peer(peer, true)?;
        if let Some(c) = lock(&self.inner.peers)
            .get(peer)
            .and_then(|p| p.conn.clone())
            && !c.is_closed()
        {
            return Ok(c);
        }
        match self.inner.transport.connect(*peer).await {
            Ok(c) => {
                lock(&self.inner.peers).entry(*peer).or_default().conn = Some(c.clone());
                let this = self.clone();
                let served = c.clone();
                let task = tokio::spawn(async move { this.serve_connection(served).await });
                self.track(task);
                Ok(c)
            }
            Err(e) => {
                self.failed(peer);
                Err(e.into())
            }
        }
    }

    /// Runs one client session on a new stream to `peer`, with timeout and accounting.
    async fn session<T, F>(&self, peer: &PubKey, store: &StoreId, run: F) -> Result<T, ReplicaError>
    where
        F: AsyncFnOnce(&mut Stream) -> Result<T, SessionError>,
    {
        let conn = self.connection(peer).await?;
        let mut stream = match conn.open().await {
            Ok(s) => s,
            Err(e) => {
                self.failed(peer);
                return Err(e.into());
            }
        };
        let result = tokio::time::timeout(self.inner.config.session_timeout, run(&mut stream))
            .await
            .map_err(|_| ReplicaError::Timeout(peer.short()));
        stream.finish().await;
        match result {
            Ok(Ok(v)) => {
                self.succeeded(peer);
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_misbehaviour() {
                    self.strike(peer, &e.to_string());
                } else if matches!(e, SessionError::Link(_)) {
                    self.failed(peer);
                }
                self.emit(ReplicaEvent::SessionFailed {
                    store: *store,
                    peer: *peer,
                    error: e.to_string(),
                });
                Err(e.into())
            }
            Err(e) => {
                self.failed(peer);
                Err(e)
            }
        }
    }

    // ---- client operations ----

    /// Reconciles `store` with `peer` now (both directions).
    ///
    /// # Errors
    /// [`ReplicaError`].
    pub async fn sync(
        &self,
        store: &StoreId,
        peer: &PubKey,
    ) -> Result<SessionReport, ReplicaError> {
        let entry = self
            .store(store)
            .ok_or_else(|| ReplicaError::UnknownStore(store.short()))?;
        if !entry.allows(peer) {
            return Err(ReplicaError::NotMember(peer.short()));
        }
        let options = self.inner.config.session.clone();
        let log = entry.log.clone();
        let report = self
            .session(peer, store, async |s: &mut Stream| {
                lattice_sync::reconcile(s, &log, &options).await
            })
            .await?;
        self.emit(ReplicaEvent::Synced {
            store: *store,
            peer: *peer,
            report: report.clone(),
        });
        Ok(report)
    }

    /// Fetches the missing history of `target` from `first` (when given), then from the
    /// store's other peers one at a time, until it is witnessed here.
    ///
    /// # Errors
    /// [`ReplicaError::NoPeer`] when no peer could fill the gap.
    pub async fn fill_gap(
        &self,
        store: &StoreId,
        target: Hash,
        first: Option<PubKey>,
    ) -> Result<PubKey, ReplicaError> {
        let entry = self
            .store(store)
            .ok_or_else(|| ReplicaError::UnknownStore(store.short()))?;
        let mut order: Vec<PubKey> = first.into_iter().collect();
        for p in lock(&entry.peers).iter() {
            if !order.contains(p) {
                order.push(*p);
            }
        }
        let me = self.local().id;
        for peer in order.into_iter().filter(|p| *p != me) {
            let log = entry.log.clone();
            let got = self
                .session(&peer, store, async |s: &mut Stream| {
                    lattice_sync::fetch_chain(s, &log, &[target]).await
                })
                .await;
            if got.is_ok() && entry.log.reader().is_witnessed(&target).unwrap_or(false) {
                self.emit(ReplicaEvent::GapFilled {
                    store: *store,
                    hash: target,
                    peer,
                });
                return Ok(peer);
            }
        }
        Err(ReplicaError::NoPeer("fill the gap"))
    }

    /// Clones `log` (normally empty) from the first of `peers` that completes a bootstrap;
    /// each attempt starts again from the first witness record. The store need not be added.
    ///
    /// # Errors
    /// [`ReplicaError::NoPeer`] when every peer failed (the last error is logged).
    pub async fn bootstrap(
        &self,
        log: &Arc<Log>,
        peers: &[PubKey],
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<(PubKey, SessionReport), ReplicaError> {
        let store = log.store_id();
        let options = self.inner.config.session.clone();
        for peer in peers {
            // A connection the peer dropped a moment ago fails the first attempt; the failure
            // discards it, so one more attempt runs on a fresh connection.
            for attempt in 0..2 {
                let log = log.clone();
                let got = self
                    .session(peer, &store, async |s: &mut Stream| {
                        lattice_sync::bootstrap(s, &log, peer, &options, &mut progress).await
                    })
                    .await;
                match got {
                    Ok(report) => return Ok((*peer, report)),
                    Err(ReplicaError::Session(e)) if e.is_misbehaviour() => {
                        warn!(peer = %peer.short(), "bootstrap refused the peer's data: {e}");
                        break;
                    }
                    Err(e) if attempt == 0 => {
                        debug!(peer = %peer.short(), "bootstrap failed, retrying once: {e}");
                        self.succeeded(peer);
                    }
                    Err(e) => {
                        warn!(peer = %peer.short(), "bootstrap failed, trying the next peer: {e}")
                    }
                }
            }
        }
        Err(ReplicaError::NoPeer("serve a bootstrap"))
    }

    // ---- background loops ----

    async fn accept_loop(self) {
        while let Some(conn) = self.inner.transport.accept().await {
            let peer = conn.remote();
            if self.check_peer(&peer, false).is_err() {
                conn.close("not accepting sessions from this peer now");
                continue;
            }
            {
                let mut peers = lock(&self.inner.peers);
                let st = peers.entry(peer).or_default();
                if st.conn.as_ref().is_none_or(|c| c.is_closed()) {
                    st.conn = Some(conn.clone());
                }
                st.failures = 0;
                st.retry_at = None;
            }
            let this = self.clone();
            let task = tokio::spawn(async move { this.serve_connection(conn).await });
            self.track(task);
        }
    }

    async fn serve_connection(self, conn: Arc<dyn Connection>) {
        let peer = conn.remote();
        while let Ok(mut stream) = conn.accept().await {
            if self.check_peer(&peer, false).is_err() {
                conn.close("not accepting sessions from this peer now");
                return;
            }
            if !self.allow_stream(&peer) {
                self.strike(&peer, "too many streams");
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.serve_stream(peer, &mut stream).await;
                stream.finish().await;
            });
        }
    }

    async fn serve_stream(&self, peer: PubKey, stream: &mut Stream) {
        let store = match lattice_sync::accept(stream).await {
            Ok(Opening::Session(s)) => s,
            Ok(Opening::Join {
                store,
                secret,
                tip,
                children,
            }) => {
                let handler = lock(&self.inner.join).clone();
                let answer = match handler {
                    Some(h) => h.join(peer, store, secret, tip, &children),
                    None => Err("this node does not accept joins".to_string()),
                };
                let _ = match answer {
                    Ok(()) => {
                        info!(peer = %peer.short(), store = %store.short(), "peer joined");
                        lattice_sync::welcome(stream).await
                    }
                    Err(reason) => {
                        info!(peer = %peer.short(), store = %store.short(), "join refused: {reason}");
                        lattice_sync::refuse(stream, &reason).await
                    }
                };
                return;
            }
            Err(e) => {
                if e.is_misbehaviour() {
                    self.strike(&peer, &e.to_string());
                }
                return;
            }
        };
        let Some(entry) = self.store(&store) else {
            let _ = lattice_sync::refuse(stream, "this node does not replicate that store").await;
            return;
        };
        if !entry.allows(&peer) {
            let _ = lattice_sync::refuse(
                stream,
                "you are not a peer of this store here; ask a member for an invite",
            )
            .await;
            return;
        }
        let served = tokio::time::timeout(
            self.inner.config.session_timeout,
            lattice_sync::serve(stream, &entry.log, &self.inner.config.session),
        )
        .await;
        match served {
            Ok(Ok(report)) => self.emit(ReplicaEvent::Served {
                store,
                peer,
                report,
            }),
            Ok(Err(e)) => {
                debug!(peer = %peer.short(), "serving failed: {e}");
                if e.is_misbehaviour() {
                    self.strike(&peer, &e.to_string());
                }
            }
            Err(_) => debug!(peer = %peer.short(), "serving timed out"),
        }
    }

    async fn gossip_loop(self, store: StoreId, mut events: mpsc::Receiver<GossipEvent>) {
        let mut backoff = self.inner.config.min_backoff;
        loop {
            while let Some(event) = events.recv().await {
                backoff = self.inner.config.min_backoff;
                self.on_gossip(store, event).await;
            }
            // The topic ended (transport trouble): rejoin with backoff.
            let Some(entry) = self.store(&store) else {
                return;
            };
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.inner.config.max_backoff);
            let me = self.local().id;
            let peers: Vec<PubKey> = lock(&entry.peers)
                .iter()
                .copied()
                .filter(|p| *p != me)
                .collect();
            match self.inner.gossip.join(topic_of(&store), peers).await {
                Ok(topic) => {
                    events = topic.events;
                    *lock(&entry.gossip) = topic.sender;
                }
                Err(e) => warn!(store = %store.short(), "rejoining gossip failed: {e}"),
            }
        }
    }

    async fn on_gossip(&self, store: StoreId, event: GossipEvent) {
        let Some(entry) = self.store(&store) else {
            return;
        };
        let (from, direct, bytes) = match event {
            GossipEvent::Received {
                from,
                direct,
                bytes,
            } => (from, direct, bytes),
            GossipEvent::NeighborUp(peer) => {
                // A stranger on the topic never gets a session from us.
                if entry.allows(&peer) {
                    let _ = entry.nudge.try_send(peer);
                }
                return;
            }
            GossipEvent::NeighborDown(_) => return,
            GossipEvent::Lagged => {
                // Messages were dropped: reconcile with someone soon.
                if let Some(p) = lock(&entry.peers).first() {
                    let _ = entry.nudge.try_send(*p);
                }
                return;
            }
        };
        if self.check_peer(&from, false).is_err() || !entry.allows(&from) {
            return;
        }
        // Invalid content counts against the neighbour only when it is the original sender:
        // an honest relay must not pay for what it forwarded.
        let offence = |reason: &str| {
            if direct {
                self.strike(&from, reason);
            } else {
                debug!(peer = %from.short(), "dropped relayed gossip: {reason}");
            }
        };
        let msg = match GossipMsg::decode(&bytes) {
            Ok(m) if m.store() == store => m,
            Ok(_) => return offence("gossip for another store on this topic"),
            Err(e) => return offence(&e.to_string()),
        };
        let missing = match msg {
            GossipMsg::Intention { bytes, .. } => {
                if entry.access == Access::Members
                    && let Ok(signed) = SignedIntention::decode(&bytes)
                    && !entry.allows(&signed.intention().author())
                {
                    debug!(peer = %from.short(), "dropped gossip by an author who is not a peer");
                    return;
                }
                let hash = lattice_model::Hash::of(
                    bytes
                        .get(..bytes.len().saturating_sub(64))
                        .unwrap_or_default(),
                );
                let result = entry
                    .log
                    .submit_ingest(vec![Incoming::new(bytes)])
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|mut r| r.pop());
                match result {
                    Some(Ok(Ingested::Witnessed { .. })) => {
                        return self.emit(ReplicaEvent::Gossiped { store, hash });
                    }
                    Some(Ok(Ingested::Duplicate)) | None => return,
                    Some(Ok(Ingested::Floating { missing })) => missing,
                    Some(Err(e)) if e.is_retryable() => return,
                    Some(Err(lattice_log::IngestError::ForkedChain { .. })) => return,
                    Some(Err(e)) => return offence(&e.to_string()),
                }
            }
            GossipMsg::Announce { hash, .. } => match entry.log.reader().lacking(&[hash]) {
                Ok(l) if !l.is_empty() => hash,
                _ => return,
            },
        };
        if !lock(&entry.filling).insert(missing) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let filled = this.fill_gap(&store, missing, Some(from)).await;
            if let Some(e) = this.store(&store) {
                lock(&e.filling).remove(&missing);
                if filled.is_err() {
                    let _ = e.nudge.try_send(from);
                }
            }
        });
    }

    async fn anti_entropy_loop(self, store: StoreId, mut nudges: mpsc::Receiver<PubKey>) {
        if !self.inner.config.auto_sync {
            while nudges.recv().await.is_some() {}
            return;
        }
        let me = self.local().id;
        let initial = self
            .store(&store)
            .map(|e| lock(&e.peers).clone())
            .unwrap_or_default();
        for peer in initial.into_iter().filter(|p| *p != me) {
            let _ = self.sync(&store, &peer).await;
        }
        let mut tick = tokio::time::interval(self.inner.config.anti_entropy);
        tick.tick().await;
        let mut next = 0usize;
        loop {
            let peer = tokio::select! {
                _ = tick.tick() => {
                    let Some(entry) = self.store(&store) else { return };
                    let peers: Vec<PubKey> =
                        lock(&entry.peers).iter().copied().filter(|p| *p != me).collect();
                    if peers.is_empty() {
                        continue;
                    }
                    next = next.wrapping_add(1);
                    peers[next % peers.len()]
                }
                p = nudges.recv() => match p {
                    Some(p) if p != me => p,
                    Some(_) => continue,
                    None => return,
                },
            };
            let _ = self.sync(&store, &peer).await;
        }
    }
}
