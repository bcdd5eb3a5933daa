//! The state a guest sees: [`Host`], its Wasm implementation and an in-memory one for tests.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::bindings::lattice::store::blobs as blob_imports;
use crate::bindings::lattice::store::host as imports;

/// Why a blob read failed ([`Host::blob_read`]).
pub use crate::bindings::lattice::store::blobs::BlobError;

/// Largest chunk one blob call moves (the host's limit).
pub const BLOB_CHUNK: usize = 1 << 20;

/// The host ABI as a trait, so store logic runs in Wasm and natively alike.
///
/// Reads take `&self`; writes take `&mut self` and are only valid in `apply` (the Wasm host
/// traps a write made from `prepare` or `query`).
pub trait Host {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Returns up to `limit` entries with `start <= key < end` (no end: unbounded), ascending.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// The store's DAG heads (only meaningful in `prepare`).
    fn heads(&self) -> Vec<Vec<u8>>;
    /// Writes a key.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Deletes a key.
    fn delete(&mut self, key: &[u8]);
    /// Appends to the store's log; returns the entry's index.
    fn log_append(&mut self, entry: &[u8]) -> u64;
    /// Emits a watch event.
    fn emit(&mut self, topic: &str, payload: &[u8]);
    /// Stores `bytes` as a blob of the store (written in chunks) and returns its hash. In
    /// `prepare` and `apply`.
    fn blob_put(&self, bytes: &[u8]) -> Vec<u8>;
    /// Reads up to `len` bytes (at most 1 MiB) of blob `hash` from `offset`. In `prepare` and
    /// `query` only.
    fn blob_read(&self, hash: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, BlobError>;
    /// Declares one more reference from the state to blob `hash` (in `apply`).
    fn blob_add_ref(&mut self, hash: &[u8]);
    /// Removes one reference to blob `hash` (in `apply`).
    fn blob_drop_ref(&mut self, hash: &[u8]);
}

/// Reads `size` bytes of blob `hash` whole, chunk by chunk.
///
/// # Errors
/// As [`Host::blob_read`].
pub fn read_blob(host: &dyn Host, hash: &[u8], size: u64) -> Result<Vec<u8>, BlobError> {
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let want = (size - out.len() as u64).min(BLOB_CHUNK as u64) as u32;
        let chunk = host.blob_read(hash, out.len() as u64, want)?;
        if chunk.is_empty() {
            return Err(BlobError::OutOfRange);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads every entry whose key starts with `prefix`, page by page.
pub(crate) fn scan_prefix(host: &dyn Host, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let end = prefix_end(prefix);
    let mut out = Vec::new();
    let mut start = prefix.to_vec();
    while out.len() < limit {
        let want = (limit - out.len()).min(1000) as u32;
        let page = host.scan(&start, end.as_deref(), want);
        let done = page.len() < want as usize;
        if let Some((last, _)) = page.last() {
            start = last.clone();
            start.push(0);
        }
        out.extend(page);
        if done {
            break;
        }
    }
    out
}

/// The smallest key greater than every key with this prefix (`None` when there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The host ABI of a real guest: calls the `lattice:store/host` imports.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

impl Host for WasmHost {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        imports::kv_get(key)
    }
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        imports::kv_scan(start, end, limit)
    }
    fn heads(&self) -> Vec<Vec<u8>> {
        imports::get_head()
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        imports::kv_set(key, value)
    }
    fn delete(&mut self, key: &[u8]) {
        imports::kv_delete(key)
    }
    fn log_append(&mut self, entry: &[u8]) -> u64 {
        imports::log_append(entry)
    }
    fn emit(&mut self, topic: &str, payload: &[u8]) {
        imports::emit(topic, payload)
    }
    fn blob_put(&self, bytes: &[u8]) -> Vec<u8> {
        let writer = blob_imports::BlobWriter::new();
        for chunk in bytes.chunks(BLOB_CHUNK) {
            writer.write(chunk);
        }
        blob_imports::BlobWriter::finish(writer)
    }
    fn blob_read(&self, hash: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, BlobError> {
        blob_imports::read(hash, offset, len)
    }
    fn blob_add_ref(&mut self, hash: &[u8]) {
        blob_imports::add_ref(hash)
    }
    fn blob_drop_ref(&mut self, hash: &[u8]) {
        blob_imports::drop_ref(hash)
    }
}

/// An in-memory host for native unit tests of store logic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryHost {
    /// The key-value state.
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Entries appended with `log_append`.
    pub log: Vec<Vec<u8>>,
    /// Events emitted, as (topic, payload).
    pub events: Vec<(String, Vec<u8>)>,
    /// What `heads` returns.
    pub dag_heads: Vec<Vec<u8>>,
    /// Blobs put, by name. The names are not BLAKE3 hashes here (a deterministic stand-in).
    pub blobs: std::cell::RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// References the state declares to blobs.
    pub blob_refs: BTreeMap<Vec<u8>, u32>,
}

impl MemoryHost {
    /// An empty host.
    pub fn new() -> MemoryHost {
        MemoryHost::default()
    }

    /// The state as one canonical byte string (for comparing replicas).
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.kv {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }
}

impl Host for MemoryHost {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = match end {
            Some(e) => Bound::Excluded(e.to_vec()),
            None => Bound::Unbounded,
        };
        self.kv
            .range((Bound::Included(start.to_vec()), upper))
            .take(limit.min(1000) as usize)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn heads(&self) -> Vec<Vec<u8>> {
        self.dag_heads.clone()
    }
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.kv.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.kv.remove(key);
    }
    fn log_append(&mut self, entry: &[u8]) -> u64 {
        self.log.push(entry.to_vec());
        (self.log.len() - 1) as u64
    }
    fn emit(&mut self, topic: &str, payload: &[u8]) {
        self.events.push((topic.to_string(), payload.to_vec()));
    }
    fn blob_put(&self, bytes: &[u8]) -> Vec<u8> {
        use std::hash::{Hash as _, Hasher as _};
        let mut name = Vec::with_capacity(32);
        for i in 0..4u8 {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (i, bytes).hash(&mut h);
            name.extend_from_slice(&h.finish().to_le_bytes());
        }
        self.blobs.borrow_mut().insert(name.clone(), bytes.to_vec());
        name
    }
    fn blob_read(&self, hash: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, BlobError> {
        let blobs = self.blobs.borrow();
        let blob = blobs.get(hash).ok_or(BlobError::NotHere)?;
        let start = usize::try_from(offset).map_err(|_| BlobError::OutOfRange)?;
        if start > blob.len() {
            return Err(BlobError::OutOfRange);
        }
        let end = blob.len().min(start.saturating_add(len as usize));
        Ok(blob[start..end].to_vec())
    }
    fn blob_add_ref(&mut self, hash: &[u8]) {
        *self.blob_refs.entry(hash.to_vec()).or_default() += 1;
    }
    fn blob_drop_ref(&mut self, hash: &[u8]) {
        if let Some(n) = self.blob_refs.get_mut(hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.blob_refs.remove(hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_scan_pages_through_everything_and_stops_at_the_prefix() {
        let mut host = MemoryHost::new();
        for i in 0..2500u32 {
            host.set(&[b"a/".as_slice(), &i.to_be_bytes()].concat(), b"x");
        }
        host.set(b"b", b"y");
        host.set(&[b'a', 0xFF], b"z");
        assert_eq!(scan_prefix(&host, b"a/", usize::MAX).len(), 2500);
        assert_eq!(scan_prefix(&host, b"a/", 10).len(), 10);
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b"a\xFF"), Some(b"b".to_vec()));
    }
}
