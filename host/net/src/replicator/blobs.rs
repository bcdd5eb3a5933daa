//! Blob transfers between members: a client asks a peer for chunk ranges of a blob of a
//! store they share (`BlobGet`); the peer answers with the blob's size and the verified
//! stream of those ranges (`BlobSize`, `BlobData`…, `BlobDone`). The receiving side checks
//! every part against the blob's hash as it writes it (`lattice_cas::IncomingBlob`), on a
//! blocking thread fed frame by frame, so memory stays flat whatever the blob's size; a bad
//! part strikes the peer and keeps what verified before it; an interrupted transfer resumes
//! from the partial files.

use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;

use lattice_cas::{BlobInfo, Cas, CasError, ChunkNum, ChunkRanges};
use lattice_sync::{Frames, SNAPSHOT_PART};
use range_collections::range_set::RangeSetRange;

use super::*;

/// Frames in flight between the network and the thread that verifies or encodes them.
const PIPE: usize = 8;
/// Small blobs received on one stream that are committed together.
const SMALL_BATCH: usize = 256;

/// Commits received small blobs of `store` in one transaction.
async fn hold_small(
    cas: &Arc<Cas>,
    store: StoreId,
    blobs: Vec<lattice_cas::SmallBlob>,
) -> Result<(), CasError> {
    if blobs.is_empty() {
        return Ok(());
    }
    let cas = cas.clone();
    match tokio::task::spawn_blocking(move || cas.hold_inline_many(&store, &blobs)).await {
        Ok(held) => held.map(|_| ()),
        Err(_) => Err(CasError::Stopped),
    }
}

/// Chunk ranges as the wire carries them (`[start, end)`, `u64::MAX` for "to the end").
pub(super) fn to_pairs(ranges: &ChunkRanges) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|r| match r {
            RangeSetRange::Range(r) => (r.start.0, r.end.0),
            RangeSetRange::RangeFrom(r) => (r.start.0, u64::MAX),
        })
        .collect()
}

/// Chunk ranges from the wire: ascending, non-empty, not overlapping, else `None`.
pub(super) fn from_pairs(pairs: &[(u64, u64)]) -> Option<ChunkRanges> {
    let mut ranges = ChunkRanges::empty();
    let mut last_end = 0;
    for (i, &(start, end)) in pairs.iter().enumerate() {
        if start >= end || (i > 0 && start < last_end) {
            return None;
        }
        last_end = end;
        ranges |= if end == u64::MAX {
            ChunkRanges::from(ChunkNum(start)..)
        } else {
            ChunkRanges::from(ChunkNum(start)..ChunkNum(end))
        };
    }
    Some(ranges)
}

/// A `Read` over frames handed over from the network (ends when the sender hangs up).
struct FrameReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for FrameReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.buf = next;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A `Write` that hands full frames to the network.
struct FrameWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(SNAPSHOT_PART - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SNAPSHOT_PART {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_PART));
        self.tx
            .blocking_send(frame)
            .map_err(|_| std::io::Error::other("the stream was closed"))
    }
}

/// How a blob fetch from one peer ended, short of a session error.
enum Fetched {
    /// The blob is whole here; this many data bytes came in this time.
    Done(BlobInfo, u64),
    /// A small blob arrived and verified; the caller commits it (with others).
    Small(lattice_cas::SmallBlob),
    /// The local blob store failed.
    Local(CasError),
}

/// A blob fetched ([`Replicator::fetch_blob`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlob {
    /// The blob, now held by the store here.
    pub info: BlobInfo,
    /// Data bytes received for it this time (0 when it was here already; less than its
    /// size when an earlier transfer was resumed).
    pub received: u64,
    /// The peer that gave it (`None` when it was here already).
    pub peer: Option<PubKey>,
}

impl Replicator {
    /// Gives the replicator the node's blob store: from now on it serves blobs to the
    /// members of the stores they belong to, and can fetch them.
    pub fn set_cas(&self, cas: Arc<Cas>) {
        *lock(&self.inner.cas) = Some(cas);
    }

    fn cas(&self) -> Option<Arc<Cas>> {
        lock(&self.inner.cas).clone()
    }

    /// Fetches blob `hash` of `store` from the first of `peers` that has it, resuming from
    /// what an earlier transfer left; the blob becomes the store's here. `progress`, when
    /// given, counts the data bytes as they are verified and written.
    ///
    /// # Errors
    /// [`ReplicaError::NoPeer`] when no peer could give it (a peer that sent a bad part is
    /// struck); [`ReplicaError::Blob`] when the local blob store fails.
    pub async fn fetch_blob(
        &self,
        store: &StoreId,
        hash: &Hash,
        peers: &[PubKey],
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<FetchedBlob, ReplicaError> {
        let cas = self.cas().ok_or(ReplicaError::NoPeer(
            "serve blobs: this node has no blob store",
        ))?;
        if let Some(info) = cas.stat(store, hash)? {
            return Ok(FetchedBlob {
                info,
                received: 0,
                peer: None,
            });
        }
        for peer in peers {
            let (session_cas, store_id, hash) = (cas.clone(), *store, *hash);
            let progress = progress.clone();
            let got = self
                .session(peer, store, async move |s: &mut Stream| {
                    fetch_from(s, session_cas, store_id, hash, progress).await
                })
                .await;
            match got {
                Ok(Fetched::Done(info, received)) => {
                    return Ok(FetchedBlob {
                        info,
                        received,
                        peer: Some(*peer),
                    });
                }
                Ok(Fetched::Small(blob)) => {
                    let received = blob.bytes.len() as u64;
                    let cas = cas.clone();
                    let store = *store;
                    let held = tokio::task::spawn_blocking(move || {
                        cas.hold_inline_many(&store, std::slice::from_ref(&blob))
                    })
                    .await
                    .map_err(|_| ReplicaError::Blob(CasError::Stopped))??;
                    let info = held
                        .into_iter()
                        .next()
                        .ok_or(ReplicaError::NoPeer("give the blob"))?;
                    return Ok(FetchedBlob {
                        info,
                        received,
                        peer: Some(*peer),
                    });
                }
                Ok(Fetched::Local(e)) => return Err(ReplicaError::Blob(e)),
                Err(e) => {
                    debug!(peer = %peer.short(), blob = %hash.short(), "blob fetch failed: {e}")
                }
            }
        }
        Err(ReplicaError::NoPeer("give the blob"))
    }

    /// Fetches blobs `hashes` of `store` from `peer`, one after another on one stream (a
    /// blob the store holds here already is skipped). Returns the data bytes received.
    ///
    /// # Errors
    /// The first failure: [`ReplicaError::Session`] (a bad part strikes the peer),
    /// [`ReplicaError::Blob`] for the local blob store.
    pub async fn fetch_blobs(
        &self,
        store: &StoreId,
        hashes: &[Hash],
        peer: &PubKey,
    ) -> Result<u64, ReplicaError> {
        let cas = self.cas().ok_or(ReplicaError::NoPeer(
            "serve blobs: this node has no blob store",
        ))?;
        let mut wanted = Vec::with_capacity(hashes.len());
        for hash in hashes {
            if cas.stat(store, hash)?.is_none() {
                wanted.push(*hash);
            }
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let store_id = *store;
        let fetched = self
            .session(peer, store, async move |s: &mut Stream| {
                let mut received = 0;
                let mut small = Vec::new();
                for hash in wanted {
                    match fetch_from(s, cas.clone(), store_id, hash, None).await? {
                        Fetched::Done(_, bytes) => received += bytes,
                        Fetched::Small(blob) => {
                            received += blob.bytes.len() as u64;
                            small.push(blob);
                        }
                        Fetched::Local(e) => return Ok(Err(e)),
                    }
                    // Small blobs are committed together, a batch at a time.
                    if small.len() >= SMALL_BATCH
                        && let Err(e) = hold_small(&cas, store_id, std::mem::take(&mut small)).await
                    {
                        return Ok(Err(e));
                    }
                }
                if let Err(e) = hold_small(&cas, store_id, small).await {
                    return Ok(Err(e));
                }
                Ok(Ok(received))
            })
            .await?;
        Ok(fetched?)
    }

    /// Serves blob fetches of `store` to `peer` (a peer of the store here): the opening
    /// request, then each further `BlobGet` for the same store on the stream, in turn.
    pub(super) async fn serve_blob(
        &self,
        peer: PubKey,
        store: StoreId,
        hash: Hash,
        ranges: Vec<(u64, u64)>,
        stream: &mut Stream,
    ) {
        if self.entry_for_peer(&peer, &store, stream).await.is_none() {
            return;
        }
        let Some(cas) = self.cas() else {
            let _ = lattice_sync::refuse(stream, "this node keeps no blobs").await;
            return;
        };
        let (mut hash, mut ranges) = (hash, ranges);
        let deadline = tokio::time::Instant::now() + self.inner.config.session_timeout;
        loop {
            let Some(wanted) = from_pairs(&ranges) else {
                self.strike(&peer, "malformed blob ranges");
                return;
            };
            let served = tokio::time::timeout_at(
                deadline,
                serve_from(stream, cas.clone(), store, hash, wanted),
            )
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(peer = %peer.short(), blob = %hash.short(), "serving a blob failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(peer = %peer.short(), blob = %hash.short(), "serving blobs timed out");
                    return;
                }
            }
            // The next request on this stream, if any.
            let next = match tokio::time::timeout_at(deadline, stream.recv()).await {
                Ok(Ok(Some(frame))) => lattice_sync::Msg::decode(&frame),
                _ => return,
            };
            match next {
                Ok(lattice_sync::Msg::BlobGet {
                    store: asked,
                    hash: h,
                    ranges: r,
                    ..
                }) if asked == store => (hash, ranges) = (h, r),
                _ => {
                    self.strike(&peer, "expected the next blob request");
                    return;
                }
            }
        }
    }
}

/// A local blob-store failure while serving, told to the client as a refusal.
fn refusal(e: &CasError) -> String {
    match e {
        CasError::NotFound { .. } => "this node does not have that blob".into(),
        other => format!("this node cannot give that blob now: {other}"),
    }
}

async fn serve_from(
    io: &mut Stream,
    cas: Arc<Cas>,
    store: StoreId,
    hash: Hash,
    ranges: ChunkRanges,
) -> Result<(), SessionError> {
    let stat = {
        let cas = cas.clone();
        tokio::task::spawn_blocking(move || cas.stat(&store, &hash)).await
    };
    let size = match stat {
        Ok(Ok(Some(info))) => info.size,
        Ok(Ok(None)) => {
            return lattice_sync::refuse(io, "this node does not have that blob").await;
        }
        Ok(Err(e)) => return lattice_sync::refuse(io, &refusal(&e)).await,
        Err(_) => return lattice_sync::refuse(io, "this node is shutting down").await,
    };
    io.send(lattice_sync::Msg::BlobSize(size).encode()).await?;
    let (tx, mut rx) = mpsc::channel(PIPE);
    let encoding = tokio::task::spawn_blocking(move || {
        let mut out = FrameWriter {
            tx,
            buf: Vec::with_capacity(SNAPSHOT_PART),
        };
        cas.encode(&store, &hash, &ranges, &mut out)?;
        out.flush().map_err(CasError::Output)?;
        Ok::<_, CasError>(())
    });
    while let Some(frame) = rx.recv().await {
        io.send(lattice_sync::Msg::BlobData(frame).encode()).await?;
    }
    match encoding.await {
        Ok(Ok(())) => {
            io.send(lattice_sync::Msg::BlobDone.encode()).await?;
            Ok(())
        }
        Ok(Err(e)) => lattice_sync::refuse(io, &refusal(&e)).await,
        Err(_) => lattice_sync::refuse(io, "this node is shutting down").await,
    }
}

async fn fetch_from(
    io: &mut Stream,
    cas: Arc<Cas>,
    store: StoreId,
    hash: Hash,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Fetched, SessionError> {
    // What an earlier transfer left, if its size is known: ask only for the rest.
    let resumed = {
        let cas = cas.clone();
        tokio::task::spawn_blocking(move || cas.partial(&hash))
            .await
            .map_err(|_| SessionError::Link("the node is shutting down".into()))?
    };
    let (asked, resumed) = match resumed {
        Ok(Some(partial)) => (partial.missing(), Some(partial)),
        Ok(None) => (ChunkRanges::all(), None),
        Err(e) => return Ok(Fetched::Local(e)),
    };
    io.send(
        lattice_sync::Msg::BlobGet {
            version: lattice_sync::SESSION_VERSION,
            store,
            hash,
            ranges: to_pairs(&asked),
        }
        .encode(),
    )
    .await?;
    let size = match next(io).await? {
        lattice_sync::Msg::BlobSize(size) => size,
        lattice_sync::Msg::Refused(reason) => return Err(SessionError::Refused(reason)),
        _ => return Err(SessionError::Misbehaved("expected a blob size".into())),
    };
    if resumed
        .as_ref()
        .is_some_and(|partial| partial.size() != size)
    {
        return Err(SessionError::Misbehaved(
            "the blob's size differs from what another peer said".into(),
        ));
    }
    let (tx, rx) = mpsc::channel(PIPE);
    let decoding = tokio::task::spawn_blocking(move || {
        // The partial blob found above is received into; its parts were verified once.
        let mut incoming = match resumed {
            Some(partial) => partial,
            None => cas.receive(&hash, size)?,
        };
        if let Some(counter) = progress {
            incoming.count_into(counter);
        }
        let wanted = asked & incoming.missing();
        let reader = FrameReader {
            rx,
            buf: Vec::new(),
            at: 0,
        };
        let taken = incoming.take_from(&wanted, reader)?;
        let outcome = match taken {
            Ok(written) if incoming.is_complete() => {
                Some((incoming.finish_or_defer(&cas, &store)?, written))
            }
            _ => None,
        };
        Ok::<_, CasError>((taken, outcome))
    });
    let mut ended = false;
    loop {
        match next(io).await? {
            lattice_sync::Msg::BlobData(bytes) => {
                if tx.send(bytes).await.is_err() {
                    // The decoder stopped (a bad part); its verdict follows.
                    break;
                }
            }
            lattice_sync::Msg::BlobDone => {
                ended = true;
                break;
            }
            lattice_sync::Msg::Refused(reason) => {
                drop(tx);
                let _ = decoding.await;
                return Err(SessionError::Refused(reason));
            }
            _ => return Err(SessionError::Misbehaved("expected blob data".into())),
        }
    }
    drop(tx);
    let (taken, outcome) = match decoding.await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => return Ok(Fetched::Local(e)),
        Err(_) => return Err(SessionError::Link("the node is shutting down".into())),
    };
    if let Err(bad) = taken {
        return Err(SessionError::Misbehaved(bad.to_string()));
    }
    match outcome {
        Some((lattice_cas::Finished::Held(info), written)) => Ok(Fetched::Done(info, written)),
        Some((lattice_cas::Finished::Inline(blob), _)) => Ok(Fetched::Small(blob)),
        None if ended => Err(SessionError::Misbehaved(
            "the peer ended the blob before sending all of it".into(),
        )),
        None => Err(SessionError::Link("the blob stream stopped early".into())),
    }
}

/// The next frame of a blob stream, decoded.
async fn next(io: &mut Stream) -> Result<lattice_sync::Msg, SessionError> {
    let frame = io
        .recv()
        .await?
        .ok_or_else(|| SessionError::Link("the stream ended early".into()))?;
    Ok(lattice_sync::Msg::decode(&frame)?)
}
