//! [`Mesh`]: several in-process nodes replicating one store over the simulated network or
//! real iroh on loopback — the harness behind `lattice bench sync` and the multi-node tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice_log::{Draft, Incoming, Log, LogConfig};
use lattice_model::{NodeKey, PubKey, SignedIntention, StoreId};
use tokio::sync::mpsc;

use crate::iroh::IrohNet;
use crate::replicator::{ReplicaError, ReplicaEvent, Replicator, ReplicatorConfig};
use crate::sim::{SimConfig, SimNetwork};
use crate::transport::{Gossip, NetError, Transport};

/// A mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// Opening or writing a log failed.
    #[error("log: {0}")]
    Log(String),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Replication failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Which network the mesh runs on.
#[derive(Debug, Clone)]
pub enum MeshTransport {
    /// The in-memory simulated network.
    Sim(SimNetwork),
    /// Real iroh endpoints bound to loopback.
    Iroh,
}

/// One node of a [`Mesh`].
pub struct MeshNode {
    /// The node's key (its network identity and witness key).
    pub key: NodeKey,
    /// Its log of the store.
    pub log: Arc<Log>,
    /// Its replicator.
    pub replicator: Replicator,
    iroh: Option<Arc<IrohNet>>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshNode({})", self.key.public().short())
    }
}

impl MeshNode {
    /// The node's id.
    pub fn id(&self) -> PubKey {
        self.key.public()
    }

    /// Writes `ops` as a new intention citing other authors' tips, and gossips it.
    ///
    /// # Errors
    /// [`MeshError::Log`] when authoring fails.
    pub async fn write(&self, ops: Vec<u8>) -> Result<SignedIntention, MeshError> {
        let me = self.id();
        let deps = self
            .log
            .reader()
            .tips()
            .map_err(|e| MeshError::Log(e.to_string()))?
            .into_iter()
            .filter(|(a, _)| *a != me)
            .map(|(_, h)| h)
            .take(2)
            .collect();
        let authored = self
            .log
            .submit_author(Draft {
                ops,
                deps,
                ..Draft::default()
            })
            .await
            .map_err(|e| MeshError::Log(e.to_string()))?
            .map_err(|e| MeshError::Log(e.to_string()))?;
        self.replicator.publish(&authored.intention);
        Ok(authored.intention)
    }

    /// `(number of witnessed intentions, sum of their hashes)`: equal on two nodes exactly
    /// when (barring a 2^-256 accident) they witnessed the same set.
    ///
    /// # Errors
    /// [`MeshError::Log`] on storage failure.
    pub fn digest(&self) -> Result<(u64, [u8; 32]), MeshError> {
        let snap = self
            .log
            .reader()
            .sync_snapshot()
            .map_err(|e| MeshError::Log(e.to_string()))?;
        let sum = snap
            .sum(0, snap.len())
            .map_err(|e| MeshError::Log(e.to_string()))?;
        Ok((snap.len(), sum))
    }

    /// Stops the node's replication and closes its endpoint (for "node dies" tests).
    pub async fn stop(&self) {
        self.replicator.shutdown();
        if let Some(net) = &self.iroh {
            net.shutdown().await;
        }
    }
}

/// Several nodes replicating one store.
pub struct Mesh {
    dir: PathBuf,
    transport: MeshTransport,
    config: ReplicatorConfig,
    genesis: SignedIntention,
    /// The nodes, in creation order.
    pub nodes: Vec<MeshNode>,
    events: mpsc::UnboundedSender<()>,
    wake: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mesh({} nodes)", self.nodes.len())
    }
}

/// Node keys of a mesh: deterministic, distinct from any real identity.
fn node_key(i: usize) -> NodeKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    seed[8..16].copy_from_slice(b"meshnode");
    NodeKey::from_seed(seed)
}

impl Mesh {
    /// Starts `n` nodes in `dir` holding `genesis` (the store's first intention), all peers of
    /// each other. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`MeshError`] when a log or an endpoint cannot be opened.
    pub async fn start(
        dir: &Path,
        n: usize,
        transport: MeshTransport,
        config: ReplicatorConfig,
        genesis: SignedIntention,
    ) -> Result<Mesh, MeshError> {
        let (events, wake) = mpsc::unbounded_channel();
        let mut mesh = Mesh {
            dir: dir.to_path_buf(),
            transport,
            config,
            genesis,
            nodes: Vec::new(),
            events,
            wake: tokio::sync::Mutex::new(wake),
        };
        for _ in 0..n {
            let i = mesh.spawn_node(true).await?;
            let log = &mesh.nodes[i].log;
            log.submit_ingest(vec![Incoming::new(mesh.genesis.as_bytes().to_vec())])
                .await
                .map_err(|e| MeshError::Log(e.to_string()))?
                .map_err(|e| MeshError::Log(e.to_string()))?;
        }
        let ids: Vec<PubKey> = mesh.nodes.iter().map(|n| n.id()).collect();
        for node in &mesh.nodes {
            node.replicator
                .add_store(node.log.clone(), ids.clone())
                .await?;
        }
        Ok(mesh)
    }

    /// The store.
    pub fn store_id(&self) -> StoreId {
        StoreId(self.genesis.hash().0)
    }

    /// Gives every node a blob store of its own (`cas<i>` in the mesh's directory) and
    /// returns them, in node order.
    ///
    /// # Errors
    /// When a blob store cannot be opened.
    pub fn give_blob_stores(&self) -> Result<Vec<Arc<lattice_cas::Cas>>, lattice_cas::CasError> {
        let mut stores = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let cas = Arc::new(lattice_cas::Cas::open(&self.dir.join(format!("cas{i}")))?);
            node.replicator.set_cas(cas.clone());
            stores.push(cas);
        }
        Ok(stores)
    }

    /// Adds a node with an empty log that knows every existing node's address but does not
    /// replicate the store yet (bootstrap it, then [`Mesh::join`]). Returns its index.
    ///
    /// # Errors
    /// [`MeshError`] when its log or endpoint cannot be opened.
    pub async fn add_empty_node(&mut self) -> Result<usize, MeshError> {
        self.spawn_node(false).await
    }

    /// Starts replicating the store on node `i` with every other node as a peer.
    ///
    /// # Errors
    /// [`MeshError`] when joining gossip fails.
    pub async fn join(&self, i: usize) -> Result<(), MeshError> {
        let ids: Vec<PubKey> = self.nodes.iter().map(|n| n.id()).collect();
        let node = &self.nodes[i];
        node.replicator
            .add_store(node.log.clone(), ids.clone())
            .await?;
        for other in &self.nodes {
            if other.id() != node.id() {
                other.replicator.add_store_peer(&self.store_id(), node.id());
            }
        }
        Ok(())
    }

    async fn spawn_node(&mut self, _member: bool) -> Result<usize, MeshError> {
        let i = self.nodes.len();
        let key = node_key(i);
        let path = self.dir.join(format!("node{i}.db"));
        let log = Log::open(&path, self.store_id(), key.clone(), LogConfig::default())
            .map_err(|e| MeshError::Log(e.to_string()))?;
        let (transport, gossip, iroh): (Arc<dyn Transport>, Arc<dyn Gossip>, _) =
            match &self.transport {
                MeshTransport::Sim(net) => {
                    let node = net.node(key.public());
                    (node.clone(), node, None)
                }
                MeshTransport::Iroh => {
                    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
                    let net = IrohNet::bind(&key, loopback).await?;
                    (net.clone(), net.clone(), Some(net))
                }
            };
        let replicator = Replicator::start(transport.clone(), gossip, self.config.clone());
        // Everyone learns everyone's address.
        for other in &self.nodes {
            replicator.add_peer(&other.replicator.local());
            other.replicator.add_peer(&transport.local());
        }
        let mut rx = replicator.subscribe();
        let wake = self.events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if wake.send(()).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        self.nodes.push(MeshNode {
            key,
            log: Arc::new(log),
            replicator,
            iroh,
        });
        Ok(i)
    }

    /// Waits until the nodes in `which` have witnessed identical sets, re-checking after each
    /// replication event; returns how long it took.
    ///
    /// # Errors
    /// [`MeshError::Log`] naming the digests when `timeout` passes first.
    pub async fn converged(
        &self,
        which: &[usize],
        timeout: Duration,
    ) -> Result<Duration, MeshError> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wake = self.wake.lock().await;
        loop {
            // Drop queued wake-ups first: anything after this point wakes the wait below.
            while wake.try_recv().is_ok() {}
            let digests = which
                .iter()
                .map(|&i| self.nodes[i].digest())
                .collect::<Result<Vec<_>, _>>()?;
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return Ok(start.elapsed());
            }
            match tokio::time::timeout_at(deadline, wake.recv()).await {
                Ok(Some(())) => {}
                Ok(None) | Err(_) => {
                    let counts: Vec<u64> = digests.iter().map(|d| d.0).collect();
                    return Err(MeshError::Log(format!(
                        "not converged after {timeout:?}: witnessed counts {counts:?}"
                    )));
                }
            }
        }
    }

    /// The simulated network, when the mesh runs on one.
    pub fn sim(&self) -> Option<&SimNetwork> {
        match &self.transport {
            MeshTransport::Sim(net) => Some(net),
            MeshTransport::Iroh => None,
        }
    }

    /// Stops every node.
    pub async fn stop(&self) {
        for n in &self.nodes {
            n.stop().await;
        }
    }
}

/// A simulated network with `seed` and `config`, for [`Mesh::start`].
pub fn sim_transport(seed: u64, config: SimConfig) -> MeshTransport {
    MeshTransport::Sim(SimNetwork::new(seed, config))
}

/// Events of one node as they happen (a thin alias for tests).
pub type Events = tokio::sync::broadcast::Receiver<ReplicaEvent>;
