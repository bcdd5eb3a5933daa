//! An in-memory simulated network for scale and fault tests: partitions, offline nodes, and
//! gossip loss, duplication, delay and reordering.
//!
//! Every fault decision is a pure function of the seed, the link (sender, receiver, topic)
//! and the message's position on that link, so a seed replays the same faults whatever the
//! thread timing. Streams are reliable while a link is up (like QUIC) and fail with an error
//! when a partition or an offline node cuts their connection; each connection carries any
//! number of concurrent streams. Iteration over nodes and topics is ordered, so on a
//! single-threaded runtime with paused time (and inline nodes) a run is a function of its
//! seed; the network's [trace](SimNetwork::trace) — every gossip copy, connection, stream
//! and stream write, with its (simulated) time — shows that two runs did the same.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use lattice_model::PubKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

use crate::transport::{
    BoxFuture, Connection, Gossip, GossipEvent, NetError, PeerAddr, Stream, Topic, Transport,
};

/// Fault settings of a simulated network.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Probability that a gossip message is lost on a link.
    pub loss: f64,
    /// Probability that a gossip message is delivered twice.
    pub duplicate: f64,
    /// Gossip messages are delayed uniformly in `0..=max_delay` (which reorders them).
    pub max_delay: Duration,
}

/// What a [`SimNetwork`] carried since it was made ([`SimNetwork::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Gossip messages put on a link (copies of a duplicated one count twice).
    pub gossip_delivered: u64,
    /// Gossip messages lost on a link (by the loss setting or a targeted drop).
    pub gossip_lost: u64,
    /// Bytes of the gossip messages delivered.
    pub gossip_bytes: u64,
    /// Connections made.
    pub connections: u64,
    /// Streams opened on them (a sync session, a chain fetch, a blob fetch, a join…).
    pub streams: u64,
}

/// Bytes buffered per stream direction.
const STREAM_BUFFER: usize = 1024 * 1024;
const QUEUE: usize = 4096;

/// The network all simulated nodes share.
#[derive(Clone)]
pub struct SimNetwork {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimNetwork")
    }
}

struct SimState {
    seed: u64,
    config: SimConfig,
    nodes: BTreeMap<PubKey, mpsc::Sender<Arc<dyn Connection>>>,
    offline: BTreeSet<PubKey>,
    /// Partition group per node; nodes in different groups cannot talk. Empty = no partition.
    groups: BTreeMap<PubKey, usize>,
    conns: Vec<(PubKey, PubKey, watch::Sender<bool>)>,
    topics: BTreeMap<[u8; 32], Vec<(PubKey, mpsc::Sender<GossipEvent>)>>,
    link_counts: BTreeMap<(PubKey, PubKey, [u8; 32]), u64>,
    /// Gossip messages still to drop on the way to a node (targeted loss for tests).
    drop_next: BTreeMap<PubKey, u64>,
    /// Nodes whose every gossip message and stream write is garbled on the way out.
    hostile: BTreeSet<PubKey>,
    stats: SimStats,
    trace: Trace,
}

impl SimState {
    fn can_talk(&self, a: &PubKey, b: &PubKey) -> bool {
        !self.offline.contains(a)
            && !self.offline.contains(b)
            && self.groups.get(a).unwrap_or(&0) == self.groups.get(b).unwrap_or(&0)
    }

    /// Closes every connection whose endpoints can no longer talk.
    fn cut(&mut self) {
        let mut keep = Vec::new();
        for (a, b, closed) in std::mem::take(&mut self.conns) {
            if self.can_talk(&a, &b) && !*closed.borrow() {
                keep.push((a, b, closed));
            } else {
                let _ = closed.send(true);
            }
        }
        self.conns = keep;
    }

    fn neighbours(&self, topic: &[u8; 32], of: &PubKey) -> Vec<PubKey> {
        self.topics
            .get(topic)
            .map(|subs| {
                subs.iter()
                    .filter(|(id, _)| id != of && self.can_talk(id, of))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tells every topic member about neighbours gained or lost by a change of links.
    fn announce(&self, before: &BTreeMap<([u8; 32], PubKey), Vec<PubKey>>) {
        for (topic, subs) in &self.topics {
            for (id, tx) in subs {
                let now: BTreeSet<PubKey> = self.neighbours(topic, id).into_iter().collect();
                let was: BTreeSet<PubKey> = before
                    .get(&(*topic, *id))
                    .map(|v| v.iter().copied().collect())
                    .unwrap_or_default();
                for up in now.difference(&was) {
                    let _ = tx.try_send(GossipEvent::NeighborUp(*up));
                }
                for down in was.difference(&now) {
                    let _ = tx.try_send(GossipEvent::NeighborDown(*down));
                }
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<([u8; 32], PubKey), Vec<PubKey>> {
        let mut out = BTreeMap::new();
        for (topic, subs) in &self.topics {
            for (id, _) in subs {
                out.insert((*topic, *id), self.neighbours(topic, id));
            }
        }
        out
    }
}

/// The running trace of a [`SimNetwork`].
struct Trace {
    /// When the first event was recorded (times are counted from it).
    start: Option<tokio::time::Instant>,
    events: u64,
    digest: [u8; 32],
    keep: usize,
    kept: Vec<String>,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            start: None,
            events: 0,
            digest: [0; 32],
            keep: 0,
            kept: Vec::new(),
        }
    }

    /// Chains `event`, stamped with the time since the first event, into the digest.
    fn record(&mut self, event: std::fmt::Arguments<'_>) {
        let start = *self.start.get_or_insert_with(tokio::time::Instant::now);
        let text = format!("{} {event}", start.elapsed().as_micros());
        let mut h = blake3::Hasher::new();
        h.update(&self.digest);
        h.update(text.as_bytes());
        self.digest = *h.finalize().as_bytes();
        self.events += 1;
        if self.kept.len() < self.keep {
            self.kept.push(text);
        }
    }
}

/// A summary of a network's trace: two runs with the same digest carried the same events
/// at the same (simulated) times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceDigest {
    /// Events recorded.
    pub events: u64,
    /// The chained digest, hex.
    pub digest: String,
}

/// A short hex digest of `bytes` for trace lines.
fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&blake3::hash(bytes).as_bytes()[..6])
}

/// A deterministic 64-bit mix of the inputs (SplitMix64 finaliser over a running hash).
fn mix(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let bytes = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(out)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl SimNetwork {
    /// A network whose faults follow `seed`.
    pub fn new(seed: u64, config: SimConfig) -> SimNetwork {
        SimNetwork {
            state: Arc::new(Mutex::new(SimState {
                seed,
                config,
                nodes: BTreeMap::new(),
                offline: BTreeSet::new(),
                groups: BTreeMap::new(),
                conns: Vec::new(),
                topics: BTreeMap::new(),
                link_counts: BTreeMap::new(),
                drop_next: BTreeMap::new(),
                hostile: BTreeSet::new(),
                stats: SimStats::default(),
                trace: Trace::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters to a test network; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a node (its transport and gossip) with identity `id`.
    pub fn node(&self, id: PubKey) -> Arc<SimNode> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.lock().nodes.insert(id, tx);
        Arc::new(SimNode {
            net: self.clone(),
            id,
            incoming: tokio::sync::Mutex::new(rx),
        })
    }

    /// Splits the network: nodes in different groups cannot reach each other (nodes not
    /// listed join group 0). Connections across groups fail at once.
    pub fn partition(&self, groups: &[Vec<PubKey>]) {
        let mut s = self.lock();
        let before = s.snapshot();
        s.groups.clear();
        for (i, g) in groups.iter().enumerate() {
            for id in g {
                s.groups.insert(*id, i);
            }
        }
        s.cut();
        s.announce(&before);
    }

    /// Changes the gossip faults (loss, duplication, delay) from now on.
    pub fn set_faults(&self, config: SimConfig) {
        self.lock().config = config;
    }

    /// Drops the next `count` gossip messages sent to `to` (from anyone).
    pub fn drop_gossip_to(&self, to: PubKey, count: u64) {
        *self.lock().drop_next.entry(to).or_insert(0) += count;
    }

    /// Makes `id` hostile (or honest again): from now on one byte of every gossip message
    /// and of every stream write it sends is flipped on the way, so its peers receive frames
    /// and intentions that fail to decode or to verify.
    pub fn set_hostile(&self, id: PubKey, hostile: bool) {
        let mut s = self.lock();
        if hostile {
            s.hostile.insert(id);
        } else {
            s.hostile.remove(&id);
        }
    }

    fn is_hostile(&self, id: &PubKey) -> bool {
        self.lock().hostile.contains(id)
    }

    /// What the network carried so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// The trace of what the network carried so far: a digest chained over every event.
    pub fn trace(&self) -> TraceDigest {
        let s = self.lock();
        TraceDigest {
            events: s.trace.events,
            digest: hex::encode(s.trace.digest),
        }
    }

    /// Keeps the text of the next events (up to `max`) besides the digest, to find where
    /// two runs part ([`SimNetwork::trace_events`]).
    pub fn keep_trace(&self, max: usize) {
        let mut s = self.lock();
        s.trace.keep = max;
    }

    /// The events kept since [`SimNetwork::keep_trace`], oldest first.
    pub fn trace_events(&self) -> Vec<String> {
        self.lock().trace.kept.clone()
    }

    fn record(&self, event: std::fmt::Arguments<'_>) {
        self.lock().trace.record(event);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        let mut s = self.lock();
        let before = s.snapshot();
        s.groups.clear();
        s.announce(&before);
    }

    /// Takes a node off the network (its connections fail) or brings it back.
    pub fn set_online(&self, id: PubKey, online: bool) {
        let mut s = self.lock();
        let before = s.snapshot();
        if online {
            s.offline.remove(&id);
        } else {
            s.offline.insert(id);
        }
        s.cut();
        s.announce(&before);
    }
}

/// One node's view of a [`SimNetwork`]: its [`Transport`] and [`Gossip`].
pub struct SimNode {
    net: SimNetwork,
    id: PubKey,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Arc<dyn Connection>>>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimNode({})", self.id.short())
    }
}

impl Transport for SimNode {
    fn local(&self) -> PeerAddr {
        PeerAddr {
            id: self.id,
            addrs: Vec::new(),
        }
    }

    fn add_peer(&self, _peer: &PeerAddr) {}

    fn connect(&self, peer: PubKey) -> BoxFuture<'_, Result<Arc<dyn Connection>, NetError>> {
        Box::pin(async move {
            let unreachable = |reason: &str| NetError::Unreachable {
                peer: peer.short(),
                reason: reason.to_string(),
            };
            let (closed, accept_tx) = {
                let mut s = self.net.lock();
                if !s.can_talk(&self.id, &peer) {
                    return Err(unreachable("partitioned or offline"));
                }
                let accept_tx = s
                    .nodes
                    .get(&peer)
                    .cloned()
                    .ok_or_else(|| unreachable("no such node"))?;
                let (closed, _) = watch::channel(false);
                s.conns.push((self.id, peer, closed.clone()));
                s.stats.connections += 1;
                s.trace
                    .record(format_args!("connect {} {}", self.id.short(), peer.short()));
                (closed, accept_tx)
            };
            let (a_streams, a_rx) = mpsc::channel(QUEUE);
            let (b_streams, b_rx) = mpsc::channel(QUEUE);
            let ours = Arc::new(SimConnection {
                net: self.net.clone(),
                local: self.id,
                remote: peer,
                closed: closed.clone(),
                to_peer: a_streams,
                from_peer: tokio::sync::Mutex::new(b_rx),
            });
            let theirs = Arc::new(SimConnection {
                net: self.net.clone(),
                local: peer,
                remote: self.id,
                closed,
                to_peer: b_streams,
                from_peer: tokio::sync::Mutex::new(a_rx),
            });
            accept_tx
                .send(theirs)
                .await
                .map_err(|_| unreachable("node is gone"))?;
            Ok(ours as Arc<dyn Connection>)
        })
    }

    fn accept(&self) -> BoxFuture<'_, Option<Arc<dyn Connection>>> {
        Box::pin(async move { self.incoming.lock().await.recv().await })
    }
}

struct SimConnection {
    net: SimNetwork,
    local: PubKey,
    remote: PubKey,
    closed: watch::Sender<bool>,
    to_peer: mpsc::Sender<Stream>,
    from_peer: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
}

impl SimConnection {
    fn closed_err(&self) -> NetError {
        NetError::Closed(format!("link to {} is down", self.remote.short()))
    }
}

impl Connection for SimConnection {
    fn remote(&self) -> PubKey {
        self.remote
    }

    fn open(&self) -> BoxFuture<'_, Result<Stream, NetError>> {
        Box::pin(async move {
            if *self.closed.borrow() {
                return Err(self.closed_err());
            }
            {
                let mut s = self.net.lock();
                s.stats.streams += 1;
                s.trace.record(format_args!(
                    "stream {} {}",
                    self.local.short(),
                    self.remote.short()
                ));
            }
            let (a, b) = tokio::io::duplex(STREAM_BUFFER);
            let wrap = |io: tokio::io::DuplexStream, writer: PubKey| {
                let (r, w) = tokio::io::split(io);
                let reader = if writer == self.local {
                    self.remote
                } else {
                    self.local
                };
                let tap = Some(Tap {
                    net: self.net.clone(),
                    writer,
                    reader,
                });
                Stream::new(
                    Box::new(Cut::new(w, self.closed.subscribe(), tap)),
                    Box::new(Cut::new(r, self.closed.subscribe(), None)),
                )
            };
            self.to_peer
                .send(wrap(b, self.remote))
                .await
                .map_err(|_| self.closed_err())?;
            Ok(wrap(a, self.local))
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Stream, NetError>> {
        Box::pin(async move {
            let mut closed = self.closed.subscribe();
            let mut rx = self.from_peer.lock().await;
            tokio::select! {
                // In order: a simulation replays the same choice.
                biased;
                s = rx.recv() => s.ok_or_else(|| self.closed_err()),
                _ = closed.wait_for(|c| *c) => Err(self.closed_err()),
            }
        })
    }

    fn close(&self, _reason: &str) {
        let _ = self.closed.send(true);
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// An I/O half that fails once its connection is cut.
struct Cut<T> {
    inner: T,
    cut: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// For a write half: where its writes are traced and garbled while the writer is
    /// hostile.
    tap: Option<Tap>,
}

impl<T> Cut<T> {
    fn new(inner: T, mut closed: watch::Receiver<bool>, tap: Option<Tap>) -> Cut<T> {
        Cut {
            inner,
            cut: Box::pin(async move {
                let _ = closed.wait_for(|c| *c).await;
            }),
            tap,
        }
    }

    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.cut.as_mut().poll(cx).is_ready()
    }
}

/// The write half of a stream as the network sees it.
struct Tap {
    net: SimNetwork,
    writer: PubKey,
    reader: PubKey,
}

/// `bytes` with the middle byte flipped.
fn garbled(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(b) = out.get_mut(bytes.len() / 2) {
        *b ^= 0x55;
    }
    out
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "simulated link cut")
}

impl<T: AsyncRead + Unpin> AsyncRead for Cut<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Cut<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        let Some(tap) = &this.tap else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let garbled_buf;
        let out = if tap.net.is_hostile(&tap.writer) {
            garbled_buf = garbled(buf);
            &garbled_buf[..]
        } else {
            buf
        };
        let written = Pin::new(&mut this.inner).poll_write(cx, out);
        if let Poll::Ready(Ok(n)) = &written {
            tap.net.record(format_args!(
                "write {} {} {}",
                tap.writer.short(),
                tap.reader.short(),
                short_hash(&out[..*n])
            ));
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Gossip for SimNode {
    fn join(&self, topic: [u8; 32], _peers: Vec<PubKey>) -> BoxFuture<'_, Result<Topic, NetError>> {
        Box::pin(async move {
            let (ev_tx, ev_rx) = mpsc::channel(QUEUE);
            let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
            {
                let mut s = self.net.lock();
                let before = s.snapshot();
                let subs = s.topics.entry(topic).or_default();
                subs.retain(|(id, _)| *id != self.id);
                subs.push((self.id, ev_tx));
                s.announce(&before);
            }
            let net = self.net.clone();
            let me = self.id;
            tokio::spawn(async move {
                while let Some(msg) = out_rx.recv().await {
                    let mut garble_next = false;
                    let deliveries = {
                        let mut s = net.lock();
                        let targets: Vec<(PubKey, mpsc::Sender<GossipEvent>)> = s
                            .topics
                            .get(&topic)
                            .map(|subs| {
                                subs.iter()
                                    .filter(|(id, _)| *id != me)
                                    .map(|(id, tx)| (*id, tx.clone()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let mut out = Vec::new();
                        for (to, tx) in targets {
                            if !s.can_talk(&me, &to) {
                                continue;
                            }
                            let n = s.link_counts.entry((me, to, topic)).or_insert(0);
                            *n += 1;
                            let n = *n;
                            let seed = s.seed;
                            let r = |salt: &[u8]| {
                                mix(&[
                                    &seed.to_le_bytes(),
                                    me.as_bytes(),
                                    to.as_bytes(),
                                    &topic,
                                    &n.to_le_bytes(),
                                    salt,
                                ])
                            };
                            let lost = unit(r(b"loss")) < s.config.loss;
                            let dup = unit(r(b"dup")) < s.config.duplicate;
                            let max = s.config.max_delay.as_micros() as u64;
                            let delays = [r(b"d0"), r(b"d1")];
                            if let Some(d) = s.drop_next.get_mut(&to)
                                && *d > 0
                            {
                                *d -= 1;
                                s.stats.gossip_lost += 1;
                                continue;
                            }
                            if lost {
                                s.stats.gossip_lost += 1;
                                continue;
                            }
                            let copies = if dup { 2 } else { 1 };
                            if s.hostile.contains(&me) {
                                garble_next = true;
                            }
                            s.stats.gossip_delivered += copies as u64;
                            s.stats.gossip_bytes += (copies * msg.len()) as u64;
                            for d in &delays[..copies] {
                                let delay = if max == 0 { 0 } else { d % (max + 1) };
                                out.push((to, tx.clone(), Duration::from_micros(delay)));
                            }
                        }
                        out
                    };
                    let msg = if garble_next { garbled(&msg) } else { msg };
                    if !deliveries.is_empty() {
                        let hash = short_hash(&msg);
                        let mut s = net.lock();
                        for (to, _, delay) in &deliveries {
                            s.trace.record(format_args!(
                                "gossip {} {} {hash} +{}",
                                me.short(),
                                to.short(),
                                delay.as_micros()
                            ));
                        }
                    }
                    for (_, tx, delay) in deliveries {
                        let event = GossipEvent::Received {
                            from: me,
                            direct: true,
                            bytes: msg.clone(),
                        };
                        if delay.is_zero() {
                            let _ = tx.try_send(event);
                        } else {
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = tx.try_send(event);
                            });
                        }
                    }
                }
                // The sender is gone: leave the topic.
                let mut s = net.lock();
                let before = s.snapshot();
                if let Some(subs) = s.topics.get_mut(&topic) {
                    subs.retain(|(id, _)| *id != me);
                }
                s.announce(&before);
            });
            Ok(Topic {
                sender: out_tx,
                events: ev_rx,
            })
        })
    }
}
