//! The blob service of the local API (`BlobService` in `proto/lattice.proto`): blobs of a
//! store put from a client stream and read (fetched from the store's peers first when not
//! here) as a server stream. Neither side holds a blob whole: puts are hashed to disk as
//! they arrive, reads go out in [`DATA_CHUNK`] messages as they are checked.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lattice_cas::BlobInfo;
use lattice_model::{Hash, StoreId};
use lattice_node::NodeError;
use lattice_proto::v1::{self, blob_get_reply::Part, blob_service_server::BlobService};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{Api, Stream, status_of};

/// Bytes per `data` message of a `Get`.
pub(crate) const DATA_CHUNK: usize = 256 << 10;
/// The largest blob-service message either side accepts (a `Put` part of up to 1 MiB and
/// its framing).
pub(crate) const MAX_BLOB_MESSAGE: usize = (1 << 20) + (64 << 10);
/// `Put` parts (and `Get` messages) queued between the network and the disk.
const QUEUE: usize = 8;
/// How often a `Get` that fetches from peers reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn hash_of(text: &str) -> Result<Hash, Status> {
    Hash::from_hex(text.trim()).map_err(|e| {
        Status::invalid_argument(format!("`{text}` is not a blob hash (64 hex digits): {e}"))
    })
}

fn info_of(b: &BlobInfo) -> v1::BlobInfo {
    v1::BlobInfo {
        hash: b.hash.to_string(),
        size: b.size,
        pins: b.pins,
        refs: b.refs,
        added_ms: b.added_ms,
        ..v1::BlobInfo::default()
    }
}

fn not_here(store: &StoreId, hash: &Hash) -> Status {
    status_of(NodeError::Blob(lattice_cas::CasError::NotFound {
        hash: hash.short(),
        store: store.short(),
    }))
}

/// The bytes a client stream carries, read on a blocking thread.
struct PartReader {
    parts: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.parts.blocking_recv() {
                None => return Ok(0),
                Some(part) => {
                    self.current = part?;
                    self.at = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Sends what is written as `data` messages of [`DATA_CHUNK`] bytes (from a blocking
/// thread); fails once the client has gone.
struct DataWriter {
    out: mpsc::Sender<Result<v1::BlobGetReply, Status>>,
    buf: Vec<u8>,
}

impl DataWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(DATA_CHUNK));
        let message = v1::BlobGetReply {
            part: Some(Part::Data(data)),
        };
        self.out.blocking_send(Ok(message)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl Write for DataWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(DATA_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == DATA_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Api {
    /// Blob `hash` of store `id`, fetched from its peers when it is not here (unless
    /// `local_only`), reporting the bytes received on `out` meanwhile.
    async fn held_or_fetched(
        &self,
        id: &StoreId,
        hash: &Hash,
        local_only: bool,
        out: &mpsc::Sender<Result<v1::BlobGetReply, Status>>,
    ) -> Result<v1::BlobInfo, Status> {
        let manager = self.manager();
        if local_only {
            return match manager.blob_stat(id, hash).await.map_err(status_of)? {
                Some(info) => Ok(info_of(&info)),
                None => Err(not_here(id, hash)),
            };
        }
        // A blob here already is found at once (nothing fetched, no progress sent).
        let received = Arc::new(AtomicU64::new(0));
        let fetch = manager.fetch_blob_counting(id, hash, Some(received.clone()));
        tokio::pin!(fetch);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        let fetched = loop {
            tokio::select! {
                fetched = &mut fetch => break fetched.map_err(status_of)?,
                _ = tick.tick() => {
                    let progress = v1::BlobProgress { received: received.load(Ordering::Relaxed) };
                    let message = v1::BlobGetReply { part: Some(Part::Progress(progress)) };
                    if out.send(Ok(message)).await.is_err() {
                        return Err(Status::cancelled("the client went away"));
                    }
                }
            }
        };
        Ok(v1::BlobInfo {
            fetched_from: fetched.peer.map(|p| p.to_string()).unwrap_or_default(),
            fetched_bytes: fetched.received,
            ..info_of(&fetched.info)
        })
    }

    /// Sends blob `hash` of store `id` on `out`: progress while it is fetched, its info,
    /// then bytes `offset..offset + length` (to its end when `length` is 0).
    async fn send_blob(
        &self,
        req: v1::BlobGetRequest,
        out: &mpsc::Sender<Result<v1::BlobGetReply, Status>>,
    ) -> Result<(), Status> {
        let id = self.find(&req.store)?;
        let hash = hash_of(&req.hash)?;
        let info = self
            .held_or_fetched(&id, &hash, req.local_only, out)
            .await?;
        let end = match req.length {
            0 => info.size,
            n => req.offset.checked_add(n).ok_or_else(|| {
                Status::out_of_range(format!("offset {} + length {n} overflows", req.offset))
            })?,
        };
        if req.offset > end || end > info.size {
            return Err(status_of(NodeError::Blob(
                lattice_cas::CasError::OutOfRange {
                    hash: hash.short(),
                    start: req.offset,
                    end,
                    size: info.size,
                },
            )));
        }
        let message = v1::BlobGetReply {
            part: Some(Part::Info(info)),
        };
        if out.send(Ok(message)).await.is_err() {
            return Ok(());
        }
        let writer = DataWriter {
            out: out.clone(),
            buf: Vec::with_capacity(DATA_CHUNK),
        };
        match self
            .manager()
            .read_blob(&id, &hash, req.offset..end, writer)
            .await
        {
            // The client hanging up is not an error of the node's.
            Err(NodeError::Blob(lattice_cas::CasError::Output(_))) if out.is_closed() => Ok(()),
            other => other.map(|_| ()).map_err(status_of),
        }
    }
}

#[tonic::async_trait]
impl BlobService for Api {
    async fn put(
        &self,
        req: Request<Streaming<v1::BlobPutRequest>>,
    ) -> Result<Response<v1::BlobInfo>, Status> {
        let mut parts = req.into_inner();
        let first = parts.message().await?.ok_or_else(|| {
            Status::invalid_argument("a put names its store in its first message")
        })?;
        let id = self.find(&first.store)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.send(Ok(first.data)).await;
        // The network side: parts go to the disk side as they come; an aborted client
        // stream fails the put (nothing of it is kept).
        tokio::spawn(async move {
            loop {
                let part = match parts.message().await {
                    Ok(Some(part)) => Ok(part.data),
                    Ok(None) => return,
                    Err(status) => Err(std::io::Error::other(format!(
                        "the client's stream failed: {}",
                        status.message()
                    ))),
                };
                let failed = part.is_err();
                if tx.send(part).await.is_err() || failed {
                    return;
                }
            }
        });
        let reader = PartReader {
            parts: rx,
            current: Vec::new(),
            at: 0,
        };
        let manager = self.manager();
        let mut info = manager.put_blob(&id, reader).await.map_err(status_of)?;
        if first.pin {
            info = manager
                .pin_blob(&id, &info.hash, true)
                .await
                .map_err(status_of)?;
        }
        Ok(Response::new(info_of(&info)))
    }

    type GetStream = Stream<v1::BlobGetReply>;

    async fn get(
        &self,
        req: Request<v1::BlobGetRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        // Bad arguments fail the call itself, before any stream.
        self.find(&req.store)?;
        hash_of(&req.hash)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let api = self.clone();
        tokio::spawn(async move {
            if let Err(status) = api.send_blob(req, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn stat(&self, req: Request<v1::BlobRequest>) -> Result<Response<v1::BlobInfo>, Status> {
        let req = req.into_inner();
        let (id, hash) = (self.find(&req.store)?, hash_of(&req.hash)?);
        match self
            .manager()
            .blob_stat(&id, &hash)
            .await
            .map_err(status_of)?
        {
            Some(info) => Ok(Response::new(info_of(&info))),
            None => Err(not_here(&id, &hash)),
        }
    }

    async fn pin(
        &self,
        req: Request<v1::BlobPinRequest>,
    ) -> Result<Response<v1::BlobInfo>, Status> {
        let req = req.into_inner();
        let (id, hash) = (self.find(&req.store)?, hash_of(&req.hash)?);
        let info = self
            .manager()
            .pin_blob(&id, &hash, req.pin)
            .await
            .map_err(status_of)?;
        Ok(Response::new(info_of(&info)))
    }

    async fn policy(
        &self,
        req: Request<v1::BlobPolicyRequest>,
    ) -> Result<Response<v1::BlobPolicy>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let set = match req.mode.as_str() {
            "" => None,
            "all" => Some(("all".to_string(), 0)),
            "copies" if req.copies >= 1 => Some(("copies".to_string(), req.copies)),
            "copies" => {
                return Err(Status::invalid_argument(
                    "a `copies` policy needs `copies` of at least 1",
                ));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "`{other}` is not a blob policy; use `all` or `copies`"
                )));
            }
        };
        let policy = self
            .manager()
            .blob_policy(&id, set)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::BlobPolicy {
            store: id.to_string(),
            mode: policy["mode"].as_str().unwrap_or("all").to_string(),
            copies: policy["copies"].as_u64().unwrap_or(0),
        }))
    }

    async fn collect(
        &self,
        req: Request<v1::BlobCollectRequest>,
    ) -> Result<Response<v1::BlobCollectReply>, Status> {
        let grace = req
            .into_inner()
            .grace_seconds
            .map_or(lattice_node::BLOB_GRACE, Duration::from_secs);
        let report = self
            .manager()
            .collect_blobs(grace)
            .await
            .map_err(status_of)?;
        Ok(Response::new(v1::BlobCollectReply {
            released: report.released,
            deleted: report.deleted,
            bytes: report.bytes,
        }))
    }

    async fn status(
        &self,
        req: Request<v1::BlobStatusRequest>,
    ) -> Result<Response<v1::BlobStatus>, Status> {
        let req = req.into_inner();
        let id = self.find(&req.store)?;
        let blobs = self.manager().blobs(&id).await.map_err(status_of)?;
        let count = |f: fn(&BlobInfo) -> bool| blobs.iter().filter(|b| f(b)).count() as u64;
        Ok(Response::new(v1::BlobStatus {
            store: id.to_string(),
            blobs: blobs.len() as u64,
            bytes: blobs.iter().map(|b| b.size).sum(),
            pinned: count(|b| b.pins > 0),
            referenced: count(|b| b.refs > 0),
            loose: count(|b| b.pins == 0 && b.refs == 0),
            items: if req.list {
                blobs.iter().map(info_of).collect()
            } else {
                Vec::new()
            },
        }))
    }
}
