//! The [`Transport`] and [`Gossip`] abstractions, peer addresses, and framed streams.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lattice_model::PubKey;
use lattice_sync::{Frames, LinkError, MAX_FRAME};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A boxed, sendable future (what the object-safe traits return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A network operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The peer could not be reached (no route, partitioned, refused, offline).
    #[error("cannot reach {peer}: {reason}")]
    Unreachable {
        /// Short id of the peer.
        peer: String,
        /// What the transport said.
        reason: String,
    },
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Binding or configuring the local endpoint failed.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// The peer address text is not `<node id hex>@<ip:port>[,<ip:port>…]`.
    #[error("bad peer address {0:?}: expected <node id hex>@<ip:port>[,<ip:port>...]")]
    BadAddr(String),
}

/// How to reach a node: its key and direct socket addresses (no relays, no discovery).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The node's public key (its identity on the network).
    pub id: PubKey,
    /// Direct addresses.
    pub addrs: Vec<SocketAddr>,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", hex::encode(self.id.as_bytes()))?;
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl FromStr for PeerAddr {
    type Err = NetError;
    fn from_str(s: &str) -> Result<PeerAddr, NetError> {
        let bad = || NetError::BadAddr(s.to_string());
        let (id, addrs) = s.split_once('@').ok_or_else(bad)?;
        let id = PubKey::from_hex(id).map_err(|_| bad())?;
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| a.parse().map_err(|_| bad()))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        Ok(PeerAddr { id, addrs })
    }
}

/// Connections between nodes, each carrying many concurrent bidirectional streams.
pub trait Transport: Send + Sync + 'static {
    /// This node's address.
    fn local(&self) -> PeerAddr;
    /// Remembers how to reach a peer (used by `connect` and by gossip).
    fn add_peer(&self, peer: &PeerAddr);
    /// Connects to a peer (its identity is authenticated by the transport).
    fn connect(&self, peer: PubKey) -> BoxFuture<'_, Result<Arc<dyn Connection>, NetError>>;
    /// Waits for the next inbound connection; `None` once the transport is shut down.
    fn accept(&self) -> BoxFuture<'_, Option<Arc<dyn Connection>>>;
}

/// One authenticated connection to a peer.
pub trait Connection: Send + Sync + 'static {
    /// The peer's key.
    fn remote(&self) -> PubKey;
    /// Opens a new stream.
    fn open(&self) -> BoxFuture<'_, Result<Stream, NetError>>;
    /// Waits for the peer to open a stream.
    fn accept(&self) -> BoxFuture<'_, Result<Stream, NetError>>;
    /// Closes the connection; every stream on it fails.
    fn close(&self, reason: &str);
    /// True once the connection is closed (by either side or the network).
    fn is_closed(&self) -> bool;
}

/// Something that happened on a gossip topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A message, delivered by the neighbour `from` (not necessarily its author).
    Received {
        /// The delivering neighbour.
        from: PubKey,
        /// True when `from` is also the message's original sender (not a relay), so invalid
        /// content can be held against it.
        direct: bool,
        /// The message.
        bytes: Vec<u8>,
    },
    /// A neighbour joined.
    NeighborUp(PubKey),
    /// A neighbour left.
    NeighborDown(PubKey),
    /// Messages were dropped because this receiver was too slow.
    Lagged,
}

/// A joined gossip topic: send to broadcast, receive events. Dropping both leaves the topic.
#[derive(Debug)]
pub struct Topic {
    /// Broadcasts a message to the topic.
    pub sender: mpsc::Sender<Vec<u8>>,
    /// Events of the topic.
    pub events: mpsc::Receiver<GossipEvent>,
}

/// Epidemic broadcast to the members of a topic (one topic per store).
pub trait Gossip: Send + Sync + 'static {
    /// Joins `topic`, starting from `peers`.
    fn join(&self, topic: [u8; 32], peers: Vec<PubKey>) -> BoxFuture<'_, Result<Topic, NetError>>;
}

/// Boxed write half of a stream.
pub type SendHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// Boxed read half of a stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;

/// A bidirectional stream carrying length-prefixed frames (4-byte big-endian length, at most
/// [`MAX_FRAME`]; the length is checked before the frame is read).
pub struct Stream {
    send: SendHalf,
    recv: RecvHalf,
    idle: Duration,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stream")
    }
}

/// How long a stream may wait for the peer's next frame.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

impl Stream {
    /// Wraps the two halves of a transport stream.
    pub fn new(send: SendHalf, recv: RecvHalf) -> Stream {
        Stream {
            send,
            recv,
            idle: IDLE_TIMEOUT,
        }
    }

    /// Sets how long [`Frames::recv`] waits for a frame before failing.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Stream {
        self.idle = idle;
        self
    }

    /// Writes raw bytes (tests use this to send malformed frames).
    ///
    /// # Errors
    /// [`LinkError`] when the stream failed.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.send.write_all(bytes).await.map_err(link)?;
        self.send.flush().await.map_err(link)
    }

    /// Ends this side of the stream (the peer reads end-of-stream).
    pub async fn finish(&mut self) {
        let _ = self.send.shutdown().await;
    }
}

/// The stream's error with its causes (a lost connection says why it was lost).
fn link(e: std::io::Error) -> LinkError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    LinkError(text)
}

impl Frames for Stream {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), LinkError> {
        if frame.len() > MAX_FRAME {
            return Err(LinkError(format!(
                "frame of {} bytes exceeds the {MAX_FRAME}-byte limit",
                frame.len()
            )));
        }
        let len = (frame.len() as u32).to_be_bytes();
        self.send.write_all(&len).await.map_err(link)?;
        self.send.write_all(&frame).await.map_err(link)?;
        self.send.flush().await.map_err(link)
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let read = async {
            let mut len = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                let n = self.recv.read(&mut len[got..]).await.map_err(link)?;
                if n == 0 {
                    return if got == 0 {
                        Ok(None)
                    } else {
                        Err(LinkError("stream ended inside a frame header".into()))
                    };
                }
                got += n;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(LinkError(format!(
                    "peer announced a {len}-byte frame, over the {MAX_FRAME}-byte limit"
                )));
            }
            let mut frame = vec![0u8; len];
            self.recv.read_exact(&mut frame).await.map_err(link)?;
            Ok(Some(frame))
        };
        match tokio::time::timeout(self.idle, read).await {
            Ok(r) => r,
            Err(_) => Err(LinkError(format!(
                "no frame from the peer for {} s",
                self.idle.as_secs()
            ))),
        }
    }
}
