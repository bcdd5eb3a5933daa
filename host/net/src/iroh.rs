//! The real network: iroh (QUIC) for streams and iroh-gossip for broadcast, with relays,
//! discovery and port mapping off. Peers are reached only by the direct addresses given to
//! [`Transport::add_peer`] (loopback in tests and the demo).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::{Connection as QuicConnection, PortmapperConfig, presets};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey};
use iroh_gossip::api::Event;
use iroh_gossip::net::Gossip as IrohGossip;
use iroh_gossip::proto::TopicId;
use lattice_model::{NodeKey, PubKey};
use lattice_sync::MAX_GOSSIP;
use n0_future::StreamExt as _;
use tokio::sync::mpsc;
use tracing::debug;

use crate::transport::{
    BoxFuture, Connection, Gossip, GossipEvent, NetError, PeerAddr, Stream, Topic, Transport,
};

/// The ALPN of Lattice sync sessions.
pub const ALPN: &[u8] = b"lattice/sync/1";

/// Queue of accepted connections between the router and [`Transport::accept`].
const ACCEPT_QUEUE: usize = 64;
/// How long dialling a peer may take. Peers are reached by direct addresses (loopback or
/// LAN), where a QUIC handshake takes milliseconds; an address that does not answer fails
/// this fast instead of after QUIC's idle timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Gossip messages queued per topic in each direction.
const TOPIC_QUEUE: usize = 1024;

/// An iroh endpoint serving Lattice sessions and gossip.
pub struct IrohNet {
    endpoint: Endpoint,
    router: Router,
    gossip: IrohGossip,
    lookup: MemoryLookup,
    incoming: tokio::sync::Mutex<mpsc::Receiver<QuicConnection>>,
    local: PeerAddr,
    known: Mutex<Vec<PeerAddr>>,
}

impl std::fmt::Debug for IrohNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IrohNet({})", self.local)
    }
}

#[derive(Debug, Clone)]
struct Acceptor(mpsc::Sender<QuicConnection>);

impl ProtocolHandler for Acceptor {
    async fn accept(&self, connection: QuicConnection) -> Result<(), AcceptError> {
        // The connection lives on in the queue (and then in the replicator).
        self.0
            .send(connection)
            .await
            .map_err(|_| AcceptError::from_err(std::io::Error::other("transport shut down")))
    }
}

fn setup(e: impl std::fmt::Display) -> NetError {
    NetError::Setup(e.to_string())
}

impl IrohNet {
    /// Binds an endpoint with the node's key on `bind` (for example `127.0.0.1:0`).
    ///
    /// # Errors
    /// [`NetError::Setup`] when the socket cannot be bound.
    pub async fn bind(key: &NodeKey, bind: SocketAddr) -> Result<Arc<IrohNet>, NetError> {
        let lookup = MemoryLookup::new();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&key.seed()))
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .address_lookup(lookup.clone())
            .portmapper_config(PortmapperConfig::Disabled)
            .clear_ip_transports()
            .bind_addr(bind)
            .map_err(setup)?
            .alpns(vec![ALPN.to_vec(), iroh_gossip::ALPN.to_vec()])
            .bind()
            .await
            .map_err(setup)?;
        let gossip = IrohGossip::builder()
            .max_message_size(MAX_GOSSIP + 1024)
            .spawn(endpoint.clone());
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let router = Router::builder(endpoint.clone())
            .accept(ALPN, Acceptor(tx))
            .accept(iroh_gossip::ALPN, gossip.clone())
            .spawn();
        let local = PeerAddr {
            id: PubKey(*endpoint.id().as_bytes()),
            addrs: endpoint.bound_sockets(),
        };
        Ok(Arc::new(IrohNet {
            endpoint,
            router,
            gossip,
            lookup,
            incoming: tokio::sync::Mutex::new(rx),
            local,
            known: Mutex::new(Vec::new()),
        }))
    }

    /// Closes the endpoint and its connections.
    pub async fn shutdown(&self) {
        let _ = self.router.shutdown().await;
        self.endpoint.close().await;
    }
}

fn endpoint_id(key: &PubKey) -> Result<EndpointId, NetError> {
    EndpointId::from_bytes(key.as_bytes()).map_err(|e| NetError::Unreachable {
        peer: key.short(),
        reason: format!("not a valid node key: {e}"),
    })
}

impl Transport for IrohNet {
    fn local(&self) -> PeerAddr {
        self.local.clone()
    }

    fn add_peer(&self, peer: &PeerAddr) {
        let Ok(id) = endpoint_id(&peer.id) else {
            return;
        };
        let mut addr = EndpointAddr::new(id);
        for a in &peer.addrs {
            addr = addr.with_ip_addr(*a);
        }
        self.lookup.add_endpoint_info(addr);
        if let Ok(mut known) = self.known.lock() {
            known.retain(|k| k.id != peer.id);
            known.push(peer.clone());
        }
    }

    fn connect(&self, peer: PubKey) -> BoxFuture<'_, Result<Arc<dyn Connection>, NetError>> {
        Box::pin(async move {
            let id = endpoint_id(&peer)?;
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(id, ALPN))
                .await
            {
                Ok(connected) => connected.map_err(|e| NetError::Unreachable {
                    peer: peer.short(),
                    reason: e.to_string(),
                })?,
                Err(_) => {
                    return Err(NetError::Unreachable {
                        peer: peer.short(),
                        reason: format!(
                            "no answer within {} s at its known addresses",
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    });
                }
            };
            Ok(Arc::new(IrohConnection(conn)) as Arc<dyn Connection>)
        })
    }

    fn accept(&self) -> BoxFuture<'_, Option<Arc<dyn Connection>>> {
        Box::pin(async move {
            let conn = self.incoming.lock().await.recv().await?;
            Some(Arc::new(IrohConnection(conn)) as Arc<dyn Connection>)
        })
    }
}

struct IrohConnection(QuicConnection);

impl Connection for IrohConnection {
    fn remote(&self) -> PubKey {
        PubKey(*self.0.remote_id().as_bytes())
    }

    fn open(&self) -> BoxFuture<'_, Result<Stream, NetError>> {
        Box::pin(async move {
            let (send, recv) = self
                .0
                .open_bi()
                .await
                .map_err(|e| NetError::Closed(e.to_string()))?;
            Ok(Stream::new(Box::new(send), Box::new(recv)))
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<Stream, NetError>> {
        Box::pin(async move {
            let (send, recv) = self
                .0
                .accept_bi()
                .await
                .map_err(|e| NetError::Closed(e.to_string()))?;
            Ok(Stream::new(Box::new(send), Box::new(recv)))
        })
    }

    fn close(&self, reason: &str) {
        self.0.close(1u32.into(), reason.as_bytes());
    }

    fn is_closed(&self) -> bool {
        self.0.close_reason().is_some()
    }
}

impl Gossip for IrohNet {
    fn join(&self, topic: [u8; 32], peers: Vec<PubKey>) -> BoxFuture<'_, Result<Topic, NetError>> {
        Box::pin(async move {
            let ids = peers.iter().filter_map(|p| endpoint_id(p).ok()).collect();
            let sub = self
                .gossip
                .subscribe(TopicId::from_bytes(topic), ids)
                .await
                .map_err(setup)?;
            let (sender, mut receiver) = sub.split();
            let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(TOPIC_QUEUE);
            let (ev_tx, ev_rx) = mpsc::channel(TOPIC_QUEUE);
            tokio::spawn(async move {
                while let Some(msg) = out_rx.recv().await {
                    if let Err(e) = sender.broadcast(msg.into()).await {
                        debug!("gossip broadcast failed: {e}");
                    }
                }
            });
            tokio::spawn(async move {
                loop {
                    let event = match receiver.try_next().await {
                        Ok(Some(e)) => e,
                        Ok(None) | Err(_) => break,
                    };
                    let event = match event {
                        Event::Received(m) => GossipEvent::Received {
                            from: PubKey(*m.delivered_from.as_bytes()),
                            direct: m.scope.is_direct(),
                            bytes: m.content.to_vec(),
                        },
                        Event::NeighborUp(id) => GossipEvent::NeighborUp(PubKey(*id.as_bytes())),
                        Event::NeighborDown(id) => {
                            GossipEvent::NeighborDown(PubKey(*id.as_bytes()))
                        }
                        Event::Lagged => GossipEvent::Lagged,
                    };
                    if ev_tx.send(event).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Topic {
                sender: out_tx,
                events: ev_rx,
            })
        })
    }
}
