//! Moving blobs between nodes as verified ranges: the sender encodes chunk ranges of a blob
//! with their hash-tree nodes ([`Cas::encode`]); the receiver checks every part against the
//! blob's hash as it writes it into a partial blob ([`IncomingBlob`]), so a bad chunk is
//! found at once and what was verified before it stays. Partial blobs live in `partial/`
//! across restarts: receiving again starts from what the files hold that still verifies.
//!
//! Ranges are in 1 KiB chunks ([`ChunkRanges`]); a transfer's unit is a 16 KiB group.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bao_tree::io::outboard::{PostOrderMemOutboard, PreOrderOutboard};
use bao_tree::io::sync::{ReadAt, WriteAt, decode_ranges, encode_ranges_validated, valid_ranges};
use bao_tree::{ChunkNum, ChunkRanges};
use lattice_model::{Hash, StoreId};
use range_collections::range_set::RangeSetRange;

use crate::cas::{BlobInfo, Cas, Held};
use crate::error::CasError;
use crate::index::INLINE_MAX;
use crate::verify;

/// A blob being received: `hash` of `size` bytes, its data and hash tree filled in as
/// verified parts arrive ([`Cas::receive`]).
#[derive(Debug)]
pub struct IncomingBlob {
    _turn: ReceiveTurn,
    received: Option<Arc<AtomicU64>>,
    hash: Hash,
    size: u64,
    parts: Parts,
    have: ChunkRanges,
}

/// Positioned reads and writes of a part of a blob being received (a file or memory).
trait Part: ReadAt + WriteAt {}

impl<T: ReadAt + WriteAt> Part for T {}

/// Where a blob being received is written.
#[derive(Debug)]
enum Parts {
    /// Partial files in `partial/` (kept across restarts, so a transfer resumes).
    Files {
        data_path: PathBuf,
        obao_path: PathBuf,
        data: File,
        obao: File,
    },
    /// Memory, for a blob kept inline (at most 16 KiB: started again if interrupted).
    Memory { data: Vec<u8>, obao: Vec<u8> },
}

impl Parts {
    /// The data and hash-tree parts, to read.
    fn read(&self) -> (&dyn Part, &dyn Part) {
        match self {
            Parts::Files { data, obao, .. } => (data, obao),
            Parts::Memory { data, obao } => (data, obao),
        }
    }

    /// The data and hash-tree parts, to write.
    fn write(&mut self) -> (&mut dyn Part, &mut dyn Part) {
        match self {
            Parts::Files { data, obao, .. } => (data, obao),
            Parts::Memory { data, obao } => (data, obao),
        }
    }
}

/// A received small blob, verified, not yet committed ([`IncomingBlob::finish_or_defer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallBlob {
    /// Its hash.
    pub hash: Hash,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A received blob, finished.
#[derive(Debug)]
pub enum Finished {
    /// Held by the store now.
    Held(BlobInfo),
    /// Small: verified, to be committed by the caller.
    Inline(SmallBlob),
}

/// The blobs being received right now: one receiver per blob at a time.
#[derive(Debug, Default)]
pub(crate) struct Receiving {
    blobs: Mutex<HashSet<Hash>>,
    done: Condvar,
}

/// How long [`Cas::receive`] waits for another receiver of the same blob to finish.
const RECEIVE_WAIT: Duration = Duration::from_secs(60);

/// A receiver's turn on one blob, given back when dropped.
#[derive(Debug)]
struct ReceiveTurn {
    receiving: Arc<Receiving>,
    hash: Hash,
}

impl ReceiveTurn {
    fn take(receiving: &Arc<Receiving>, hash: &Hash) -> Result<ReceiveTurn, CasError> {
        let mut blobs = receiving.blobs.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + RECEIVE_WAIT;
        while blobs.contains(hash) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(CasError::Busy { hash: hash.short() });
            }
            blobs = receiving
                .done
                .wait_timeout(blobs, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        blobs.insert(*hash);
        Ok(ReceiveTurn {
            receiving: receiving.clone(),
            hash: *hash,
        })
    }
}

impl Drop for ReceiveTurn {
    fn drop(&mut self) {
        let mut blobs = self
            .receiving
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        blobs.remove(&self.hash);
        self.receiving.done.notify_all();
    }
}

/// Counts the data bytes written through it.
struct Counting<'a, W> {
    inner: W,
    written: u64,
    shared: Option<&'a AtomicU64>,
}

impl<W: WriteAt> WriteAt for Counting<'_, W> {
    fn write_at(&mut self, pos: u64, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write_at(pos, buf)?;
        self.written += n as u64;
        if let Some(shared) = self.shared {
            shared.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A part of a blob did not verify: the sender is at fault (what verified before it was kept).
#[derive(Debug, thiserror::Error)]
#[error("a part of blob {hash} does not verify: {reason}")]
pub struct BadPart {
    /// Short hash of the blob.
    pub hash: String,
    /// What the check found.
    pub reason: String,
}

impl Cas {
    /// Writes chunk `ranges` of blob `hash` of `store` to `out` as a verified stream (the
    /// chunk groups those ranges touch, with the hash-tree nodes that prove them), each
    /// checked against the hash before it is written. Returns the blob's size.
    ///
    /// # Errors
    /// [`CasError::NotFound`]; [`CasError::Damaged`] when the bytes on disk do not match
    /// (what was written before is a valid prefix of the stream).
    pub fn encode(
        &self,
        store: &StoreId,
        hash: &Hash,
        ranges: &ChunkRanges,
        out: &mut impl Write,
    ) -> Result<u64, CasError> {
        let damaged = |e: bao_tree::io::EncodeError| CasError::Damaged {
            hash: hash.short(),
            reason: e.to_string(),
        };
        let (data, obao, size) = match self.held(store, hash)? {
            Held::Inline(bytes) => {
                let outboard = PostOrderMemOutboard::create(&bytes, verify::BLOCK);
                encode_ranges_validated(&bytes[..], &outboard, ranges, out).map_err(damaged)?;
                return Ok(bytes.len() as u64);
            }
            Held::Files { data, obao, size } => (data, obao, size),
        };
        let outboard = PreOrderOutboard {
            root: blake3::Hash::from_bytes(hash.0),
            tree: verify::tree(size),
            data: &obao,
        };
        encode_ranges_validated(&data, &outboard, ranges, out).map_err(damaged)?;
        Ok(size)
    }

    /// What an earlier transfer of blob `hash` left here, to resume, if anything.
    ///
    /// # Errors
    /// File errors.
    pub fn partial(&self, hash: &Hash) -> Result<Option<IncomingBlob>, CasError> {
        let dir = self.dir().join("partial");
        let prefix = format!("{hash}.");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CasError::io(&dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".data"))
                .and_then(|size| size.parse::<u64>().ok());
            if let Some(size) = size {
                return self.receive(hash, size).map(Some);
            }
        }
        Ok(None)
    }

    /// Starts or resumes receiving blob `hash` of `size` bytes: the partial files are opened
    /// (created when new) and what they hold that verifies counts as received. One receiver
    /// per blob at a time: this waits (up to a minute) for an earlier one to be dropped.
    ///
    /// # Errors
    /// [`CasError::Busy`] when another receiver of the blob does not finish in time; file
    /// errors.
    pub fn receive(&self, hash: &Hash, size: u64) -> Result<IncomingBlob, CasError> {
        let turn = ReceiveTurn::take(self.receiving(), hash)?;
        let tree = verify::tree(size);
        let parts = if size <= INLINE_MAX {
            Parts::Memory {
                data: vec![0; size as usize],
                obao: vec![0; tree.outboard_size() as usize],
            }
        } else {
            let dir = self.dir().join("partial");
            std::fs::create_dir_all(&dir).map_err(CasError::io(&dir))?;
            let hex = hash.to_string();
            let data_path = dir.join(format!("{hex}.{size}.data"));
            let obao_path = dir.join(format!("{hex}.{size}.obao"));
            let open = |path: &PathBuf| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(CasError::io(path))
            };
            let (data, obao) = (open(&data_path)?, open(&obao_path)?);
            // Full length from the start: parts not received read as zeros, which never
            // verify.
            data.set_len(size).map_err(CasError::io(&data_path))?;
            obao.set_len(tree.outboard_size())
                .map_err(CasError::io(&obao_path))?;
            Parts::Files {
                data_path,
                obao_path,
                data,
                obao,
            }
        };
        let mut blob = IncomingBlob {
            _turn: turn,
            received: None,
            hash: *hash,
            size,
            parts,
            have: ChunkRanges::empty(),
        };
        if matches!(blob.parts, Parts::Files { .. }) {
            blob.have = blob.verified(&ChunkRanges::all())?;
        }
        Ok(blob)
    }
}

impl IncomingBlob {
    /// Its hash.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds the data bytes of every part taken from now on to `counter` (progress).
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.received = Some(counter);
    }

    /// Every chunk of the blob.
    fn all(&self) -> ChunkRanges {
        ChunkRanges::from(ChunkNum(0)..verify::tree(self.size).chunks())
    }

    /// The chunks not received yet.
    pub fn missing(&self) -> ChunkRanges {
        self.all() - self.have.clone()
    }

    /// Bytes received and verified so far.
    pub fn received_bytes(&self) -> u64 {
        let chunks = verify::tree(self.size).chunks().0;
        let mut total = 0u64;
        for range in self.have.iter() {
            let (start, end) = match range {
                RangeSetRange::Range(r) => (r.start.0, r.end.0),
                RangeSetRange::RangeFrom(r) => (r.start.0, chunks),
            };
            let end = end.min(chunks);
            let bytes = end.saturating_sub(start) * 1024;
            // The last chunk may be short.
            let short = if end == chunks && end > start {
                chunks * 1024 - self.size
            } else {
                0
            };
            total += bytes - short;
        }
        total
    }

    /// True when every chunk was received.
    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// The chunks of `ranges` the parts hold that verify.
    fn verified(&self, ranges: &ChunkRanges) -> Result<ChunkRanges, CasError> {
        let root = blake3::Hash::from_bytes(self.hash.0);
        let tree = verify::tree(self.size);
        let (data, obao) = self.parts.read();
        let outboard = PreOrderOutboard {
            root,
            tree,
            data: obao,
        };
        let found: Vec<_> = valid_ranges(outboard, data, ranges).into_iter().collect();
        let mut have = ChunkRanges::empty();
        for range in found {
            let range = range.map_err(|e| CasError::Damaged {
                hash: self.hash.short(),
                reason: format!("reading what was received: {e}"),
            })?;
            have |= ChunkRanges::from(range);
        }
        Ok(have)
    }

    /// Takes a verified stream of chunk `ranges` (what [`Cas::encode`] wrote for them),
    /// checking every part against the blob's hash as it writes it. Returns the data bytes
    /// written (whole 16 KiB groups: a little more than `ranges` when they start or end
    /// inside a group).
    ///
    /// # Errors
    /// `Ok(Err(BadPart))` when a part does not verify or the stream ends early (the
    /// sender's fault; what verified before it is kept); `Err` for local file errors.
    pub fn take(
        &mut self,
        ranges: &ChunkRanges,
        encoded: &[u8],
    ) -> Result<Result<u64, BadPart>, CasError> {
        self.take_from(ranges, encoded)
    }

    /// As [`IncomingBlob::take`], reading the stream from `encoded` as it comes (memory
    /// stays flat: each part is written once verified).
    ///
    /// # Errors
    /// As [`IncomingBlob::take`].
    pub fn take_from(
        &mut self,
        ranges: &ChunkRanges,
        encoded: impl std::io::Read,
    ) -> Result<Result<u64, BadPart>, CasError> {
        let root = blake3::Hash::from_bytes(self.hash.0);
        let tree = verify::tree(self.size);
        let shared = self.received.as_deref();
        let (data, obao) = self.parts.write();
        let outboard = PreOrderOutboard {
            root,
            tree,
            data: obao,
        };
        let (decoded, written) = decode_into(encoded, ranges, data, outboard, shared);
        match decoded {
            Ok(()) => {
                self.have |= ranges.clone() & self.all();
                Ok(Ok(written))
            }
            Err(bao_tree::io::DecodeError::Io(e)) => Err(CasError::Damaged {
                hash: self.hash.short(),
                reason: format!("writing what was received: {e}"),
            }),
            Err(e) => {
                self.have |= self.verified(ranges)?;
                Ok(Err(BadPart {
                    hash: self.hash.short(),
                    reason: e.to_string(),
                }))
            }
        }
    }

    /// Makes the received blob a blob of `store` (it must be complete).
    ///
    /// # Errors
    /// [`CasError::Damaged`] when it is not complete or does not verify whole; file and
    /// index errors.
    pub fn finish(self, cas: &Cas, store: &StoreId) -> Result<BlobInfo, CasError> {
        match self.finish_or_defer(cas, store)? {
            Finished::Held(info) => Ok(info),
            Finished::Inline(blob) => cas.hold_inline(store, &blob.hash, &blob.bytes),
        }
    }

    /// As [`IncomingBlob::finish`], except that a small (inline) blob is handed back instead
    /// of committed, so a caller receiving many commits them together
    /// ([`Cas::hold_inline_many`]).
    ///
    /// # Errors
    /// As [`IncomingBlob::finish`].
    pub fn finish_or_defer(self, cas: &Cas, store: &StoreId) -> Result<Finished, CasError> {
        if self.size == 0 && self.hash.0 != *blake3::hash(&[]).as_bytes() {
            return Err(CasError::Damaged {
                hash: self.hash.short(),
                reason: "an empty blob has another hash".into(),
            });
        }
        if !self.is_complete() {
            return Err(CasError::Damaged {
                hash: self.hash.short(),
                reason: format!(
                    "only {} of {} bytes were received",
                    self.received_bytes(),
                    self.size
                ),
            });
        }
        match self.parts {
            Parts::Memory { data, .. } => Ok(Finished::Inline(SmallBlob {
                hash: self.hash,
                bytes: data,
            })),
            Parts::Files {
                data_path,
                obao_path,
                data,
                obao,
            } => {
                for (file, path) in [(&data, &data_path), (&obao, &obao_path)] {
                    file.sync_all().map_err(CasError::io(path))?;
                }
                drop((data, obao));
                cas.adopt(store, &self.hash, self.size, &data_path, &obao_path)
                    .map(Finished::Held)
            }
        }
    }
}

/// Decodes `encoded` (a verified stream of `ranges`) into `data` and `outboard`, counting
/// the data bytes written (also into `shared`).
fn decode_into<D: WriteAt, O: bao_tree::io::sync::Outboard + bao_tree::io::sync::OutboardMut>(
    encoded: impl std::io::Read,
    ranges: &ChunkRanges,
    data: D,
    outboard: O,
    shared: Option<&AtomicU64>,
) -> (Result<(), bao_tree::io::DecodeError>, u64) {
    let mut target = Counting {
        inner: data,
        written: 0,
        shared,
    };
    let decoded = decode_ranges(encoded, ranges, &mut target, outboard);
    (decoded, target.written)
}
