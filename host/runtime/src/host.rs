//! The host side of the ABI: what a guest's `lattice:store/host` imports do.
//!
//! Reads see, in order: this apply's own writes, the writes of earlier applies in the same
//! projection batch, and the committed `state.db` snapshot taken when the call began. Writes
//! are buffered and only reach `state.db` when the whole batch commits, together with the
//! projection cursor; a failed apply's writes are dropped.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::ReadOnlyTable;
use wasmtime::StoreLimits;

use std::sync::Arc;

use lattice_cas::{BlobWriter, Cas, CasError};
use lattice_model::{Hash, StoreId};
use wasmtime::component::Resource;

use crate::bindings::lattice::store::{blobs, host, types};

/// Longest key a guest may use.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value a guest may write (room for a store type's own record around a 1 MiB
/// user value, including a few concurrent versions of it).
pub const MAX_VALUE_BYTES: usize = 4 << 20;
/// Most entries one `kv-scan` returns.
pub const MAX_SCAN: u32 = 1000;
/// Largest watch event payload.
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// Missed blobs remembered between two takes.
const MAX_MISSED: usize = 16;
/// Blob writers a guest may have open at once.
pub const MAX_OPEN_WRITERS: usize = 16;
/// Largest chunk a guest writes to or reads from a blob in one call.
pub const MAX_BLOB_CHUNK: usize = 1 << 20;
/// Keys the host keeps in a store's state for itself; a guest can neither read, write nor
/// scan them. The state's references to blobs are `BLOB_REF_PREFIX ‖ hash → count`.
pub const HOST_KEY_PREFIX: &[u8] = b"\xff\xfflattice/";
/// The state's reference counts to blobs (under [`HOST_KEY_PREFIX`]).
pub const BLOB_REF_PREFIX: &[u8] = b"\xff\xfflattice/blob-ref/";

/// The blob store a guest reaches, for its own store only.
#[derive(Clone)]
pub(crate) struct BlobAccess {
    pub(crate) cas: Arc<Cas>,
    pub(crate) store: StoreId,
}

/// The blob hash a reference key names, when `key` is one.
pub(crate) fn blob_ref(key: &[u8]) -> Option<Hash> {
    let hash: [u8; 32] = key.strip_prefix(BLOB_REF_PREFIX)?.try_into().ok()?;
    Some(Hash(hash))
}

fn ref_key(blob: &[u8]) -> wasmtime::Result<Vec<u8>> {
    if blob.len() != 32 {
        return Err(wasmtime::Error::new(HostTrap::Limit(format!(
            "a blob hash is 32 bytes, not {}",
            blob.len()
        ))));
    }
    Ok([BLOB_REF_PREFIX, blob].concat())
}

/// Decodes a reference count kept in the state.
pub(crate) fn ref_count(value: &[u8]) -> u32 {
    value.try_into().map_or(0, u32::from_le_bytes)
}

/// What a guest call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `describe`, `prepare`, `query`: read-only.
    Read,
    /// `prepare`: read-only, `get-head` allowed.
    Prepare,
    /// `apply`: reads and writes.
    Apply,
}

/// Why the host stopped a guest (returned from an import, so the guest traps).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostTrap {
    /// A write or `get-head` where it is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// A size limit was exceeded.
    #[error("{0}")]
    Limit(String),
    /// `state.db` failed.
    #[error("{0}")]
    Storage(String),
}

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Per-instance host state.
pub(crate) struct HostState {
    pub(crate) limits: StoreLimits,
    pub(crate) mode: Mode,
    pub(crate) snapshot: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    /// Writes of earlier applies in this batch.
    pub(crate) batch: Overlay,
    /// This apply's writes.
    pub(crate) pending: Overlay,
    pub(crate) pending_bytes: usize,
    pub(crate) max_write_bytes: usize,
    pub(crate) heads: Vec<Vec<u8>>,
    pub(crate) events: Vec<(String, Vec<u8>)>,
    /// Index the next `log-append` gets.
    pub(crate) log_next: u64,
    pub(crate) log_pending: Vec<Vec<u8>>,
    /// The store's blobs (`None`: this node keeps none; blob calls trap).
    pub(crate) blobs: Option<BlobAccess>,
    /// Blobs a read asked for that were not here (for the node to fetch), at most
    /// [`MAX_MISSED`].
    pub(crate) missed_blobs: Vec<Hash>,
    /// The guest's open blob writers, by resource handle.
    pub(crate) writers: std::collections::HashMap<u32, BlobWriter>,
    next_writer: u32,
}

impl HostState {
    pub(crate) fn new(limits: StoreLimits, max_write_bytes: usize) -> HostState {
        HostState {
            limits,
            mode: Mode::Read,
            snapshot: None,
            batch: Overlay::new(),
            pending: Overlay::new(),
            pending_bytes: 0,
            max_write_bytes,
            heads: Vec::new(),
            events: Vec::new(),
            log_next: 0,
            log_pending: Vec::new(),
            blobs: None,
            missed_blobs: Vec::new(),
            writers: std::collections::HashMap::new(),
            next_writer: 0,
        }
    }

    /// Forgets this apply's writes, events and log entries.
    pub(crate) fn discard_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.events.clear();
        self.log_next -= self.log_pending.len() as u64;
        self.log_pending.clear();
    }

    fn write_allowed(&self, what: &str) -> wasmtime::Result<()> {
        if self.mode != Mode::Apply {
            return Err(wasmtime::Error::new(HostTrap::Forbidden(format!(
                "{what} is only allowed in apply"
            ))));
        }
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.pending_bytes += bytes;
        if self.pending_bytes > self.max_write_bytes {
            return Err(wasmtime::Error::new(HostTrap::Limit(format!(
                "one apply wrote more than {} bytes",
                self.max_write_bytes
            ))));
        }
        Ok(())
    }

    fn read(&self, key: &[u8]) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key).or_else(|| self.batch.get(key)) {
            return Ok(v.clone());
        }
        match &self.snapshot {
            None => Ok(None),
            Some(table) => Ok(table
                .get(key)
                .map_err(|e| wasmtime::Error::new(HostTrap::Storage(e.to_string())))?
                .map(|v| v.value().to_vec())),
        }
    }
}

fn check_key(key: &[u8]) -> wasmtime::Result<()> {
    if key.starts_with(HOST_KEY_PREFIX) {
        return Err(wasmtime::Error::new(HostTrap::Forbidden(
            "keys starting with 0xFF 0xFF \"lattice/\" are the host's".into(),
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(wasmtime::Error::new(HostTrap::Limit(format!(
            "key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        ))));
    }
    Ok(())
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn kv_get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        check_key(&key)?;
        self.read(&key)
    }

    fn kv_set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.write_allowed("kv-set")?;
        check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(wasmtime::Error::new(HostTrap::Limit(format!(
                "value of {} bytes exceeds {MAX_VALUE_BYTES}",
                value.len()
            ))));
        }
        self.charge(key.len() + value.len())?;
        self.pending.insert(key, Some(value));
        Ok(())
    }

    fn kv_delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.write_allowed("kv-delete")?;
        check_key(&key)?;
        self.charge(key.len())?;
        self.pending.insert(key, None);
        Ok(())
    }

    fn kv_scan(
        &mut self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if limit > MAX_SCAN {
            return Err(wasmtime::Error::new(HostTrap::Limit(format!(
                "kv-scan limit {limit} exceeds {MAX_SCAN}"
            ))));
        }
        check_key(&start)?;
        let upper = match &end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Ok(Vec::new());
        }
        let range = (Bound::Included(start.clone()), upper);
        // Overlay entries in range (this apply's writes win over the batch's).
        let mut overlay: Overlay = self
            .batch
            .range(range.clone())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in self.pending.range(range) {
            overlay.insert(k.clone(), v.clone());
        }
        let limit = limit as usize;
        let mut out = Vec::with_capacity(limit.min(64));
        let mut over = overlay.into_iter().peekable();
        let storage =
            |e: redb::StorageError| wasmtime::Error::new(HostTrap::Storage(e.to_string()));
        let mut base = match &self.snapshot {
            Some(table) => {
                let iter = match &end {
                    Some(e) => table.range::<&[u8]>(start.as_slice()..e.as_slice()),
                    None => table.range::<&[u8]>(start.as_slice()..),
                }
                .map_err(storage)?;
                Some(iter)
            }
            None => None,
        };
        let next_base = |base: &mut Option<redb::Range<'static, &'static [u8], &'static [u8]>>| -> wasmtime::Result<Option<(Vec<u8>, Vec<u8>)>> {
            match base.as_mut().and_then(Iterator::next) {
                Some(row) => {
                    let (k, v) = row.map_err(storage)?;
                    Ok(Some((k.value().to_vec(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        };
        let mut b = next_base(&mut base)?;
        while out.len() < limit {
            let take_overlay = match (&b, over.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((ok, _))) => ok <= bk,
            };
            if take_overlay {
                if let Some((k, v)) = over.next() {
                    if b.as_ref().is_some_and(|(bk, _)| *bk == k) {
                        b = next_base(&mut base)?;
                    }
                    if let Some(v) = v
                        && !k.starts_with(HOST_KEY_PREFIX)
                    {
                        out.push((k, v));
                    }
                }
            } else if let Some(row) = b.take() {
                if !row.0.starts_with(HOST_KEY_PREFIX) {
                    out.push(row);
                }
                b = next_base(&mut base)?;
            }
        }
        Ok(out)
    }

    fn log_append(&mut self, entry: Vec<u8>) -> wasmtime::Result<u64> {
        self.write_allowed("log-append")?;
        if entry.len() > MAX_VALUE_BYTES {
            return Err(wasmtime::Error::new(HostTrap::Limit(format!(
                "log entry of {} bytes exceeds {MAX_VALUE_BYTES}",
                entry.len()
            ))));
        }
        self.charge(entry.len())?;
        let index = self.log_next;
        self.log_next += 1;
        self.log_pending.push(entry);
        Ok(index)
    }

    fn get_head(&mut self) -> wasmtime::Result<Vec<Vec<u8>>> {
        if self.mode != Mode::Prepare {
            return Err(wasmtime::Error::new(HostTrap::Forbidden(
                "get-head is only allowed in prepare".into(),
            )));
        }
        Ok(self.heads.clone())
    }

    fn emit(&mut self, topic: String, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.write_allowed("emit")?;
        if payload.len() + topic.len() > MAX_EVENT_BYTES {
            return Err(wasmtime::Error::new(HostTrap::Limit(format!(
                "event of {} bytes exceeds {MAX_EVENT_BYTES}",
                payload.len()
            ))));
        }
        self.charge(payload.len() + topic.len())?;
        self.events.push((topic, payload));
        Ok(())
    }
}

fn trap(kind: fn(String) -> HostTrap, text: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(kind(text.into()))
}

impl HostState {
    fn blob_access(&self, what: &str) -> wasmtime::Result<BlobAccess> {
        self.blobs.clone().ok_or_else(|| {
            trap(
                HostTrap::Forbidden,
                format!("{what}: this node keeps no blobs"),
            )
        })
    }

    fn blob_reads_allowed(&self, what: &str) -> wasmtime::Result<()> {
        if self.mode == Mode::Apply {
            return Err(trap(
                HostTrap::Forbidden,
                format!(
                    "{what} is not allowed in apply (which blobs are here differs between members)"
                ),
            ));
        }
        Ok(())
    }

    fn missed(&mut self, hash: Hash) {
        if self.missed_blobs.len() < MAX_MISSED && !self.missed_blobs.contains(&hash) {
            self.missed_blobs.push(hash);
        }
    }

    /// Changes the state's reference count to `blob` by `delta` (in this apply's writes).
    fn change_ref(&mut self, what: &str, blob: &[u8], delta: i64) -> wasmtime::Result<()> {
        self.write_allowed(what)?;
        let key = ref_key(blob)?;
        let count = i64::from(self.read(&key)?.map_or(0, |v| ref_count(&v)));
        let count = u32::try_from((count + delta).max(0)).unwrap_or(u32::MAX);
        self.charge(key.len() + 4)?;
        let value = (count > 0).then(|| count.to_le_bytes().to_vec());
        self.pending.insert(key, value);
        Ok(())
    }
}

fn storage(e: CasError) -> wasmtime::Error {
    trap(HostTrap::Storage, format!("blob store: {e}"))
}

impl blobs::HostBlobWriter for HostState {
    fn new(&mut self) -> wasmtime::Result<Resource<blobs::BlobWriter>> {
        if self.mode == Mode::Read {
            return Err(trap(
                HostTrap::Forbidden,
                "a blob-writer is only allowed in prepare and apply",
            ));
        }
        let access = self.blob_access("blob-writer")?;
        if self.writers.len() >= MAX_OPEN_WRITERS {
            return Err(trap(
                HostTrap::Limit,
                format!("more than {MAX_OPEN_WRITERS} blob writers open at once"),
            ));
        }
        let id = self.next_writer;
        self.next_writer = self.next_writer.wrapping_add(1);
        self.writers.insert(id, access.cas.writer(&access.store));
        Ok(Resource::new_own(id))
    }

    fn write(
        &mut self,
        writer: Resource<blobs::BlobWriter>,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<()> {
        if bytes.len() > MAX_BLOB_CHUNK {
            return Err(trap(
                HostTrap::Limit,
                format!(
                    "a blob chunk of {} bytes exceeds {MAX_BLOB_CHUNK}",
                    bytes.len()
                ),
            ));
        }
        if self.mode == Mode::Apply {
            self.charge(bytes.len())?;
        }
        let writer = self
            .writers
            .get_mut(&writer.rep())
            .ok_or_else(|| trap(HostTrap::Forbidden, "no such blob-writer"))?;
        writer.write(&bytes).map_err(storage)
    }

    fn finish(&mut self, writer: Resource<blobs::BlobWriter>) -> wasmtime::Result<Vec<u8>> {
        let access = self.blob_access("blob-writer.finish")?;
        let writer = self
            .writers
            .remove(&writer.rep())
            .ok_or_else(|| trap(HostTrap::Forbidden, "no such blob-writer"))?;
        let blob = writer.finish(&access.cas).map_err(storage)?;
        Ok(blob.hash.as_bytes().to_vec())
    }

    fn drop(&mut self, writer: Resource<blobs::BlobWriter>) -> wasmtime::Result<()> {
        self.writers.remove(&writer.rep());
        Ok(())
    }
}

impl blobs::Host for HostState {
    fn read(
        &mut self,
        blob: Vec<u8>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, blobs::BlobError>> {
        self.blob_reads_allowed("blobs.read")?;
        if len as usize > MAX_BLOB_CHUNK {
            return Err(trap(
                HostTrap::Limit,
                format!("a blob read of {len} bytes exceeds {MAX_BLOB_CHUNK}"),
            ));
        }
        let access = self.blob_access("blobs.read")?;
        let Ok(hash) = <[u8; 32]>::try_from(blob.as_slice()) else {
            return Ok(Err(blobs::BlobError::NotHere));
        };
        let hash = Hash(hash);
        let Some(info) = access.cas.stat(&access.store, &hash).map_err(storage)? else {
            self.missed(hash);
            return Ok(Err(blobs::BlobError::NotHere));
        };
        if offset > info.size {
            return Ok(Err(blobs::BlobError::OutOfRange));
        }
        let end = offset.saturating_add(u64::from(len)).min(info.size);
        let mut out = Vec::with_capacity((end - offset) as usize);
        match access.cas.read(&access.store, &hash, offset..end, &mut out) {
            Ok(_) => Ok(Ok(out)),
            Err(CasError::NotFound { .. }) => Ok(Err(blobs::BlobError::NotHere)),
            Err(CasError::OutOfRange { .. }) => Ok(Err(blobs::BlobError::OutOfRange)),
            Err(e @ CasError::Damaged { .. }) => Ok(Err(blobs::BlobError::Damaged(e.to_string()))),
            Err(e) => Err(storage(e)),
        }
    }

    fn size(&mut self, blob: Vec<u8>) -> wasmtime::Result<Option<u64>> {
        self.blob_reads_allowed("blobs.size")?;
        let access = self.blob_access("blobs.size")?;
        let Ok(hash) = <[u8; 32]>::try_from(blob.as_slice()) else {
            return Ok(None);
        };
        let size = access
            .cas
            .stat(&access.store, &Hash(hash))
            .map_err(storage)?
            .map(|b| b.size);
        if size.is_none() {
            self.missed(Hash(hash));
        }
        Ok(size)
    }

    fn add_ref(&mut self, blob: Vec<u8>) -> wasmtime::Result<()> {
        self.change_ref("blobs.add-ref", &blob, 1)
    }

    fn drop_ref(&mut self, blob: Vec<u8>) -> wasmtime::Result<()> {
        self.change_ref("blobs.drop-ref", &blob, -1)
    }
}
