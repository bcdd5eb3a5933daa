//! The state a guest sees: [`Host`], its Wasm implementation and an in-memory one for tests.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::bindings::lattice::store::host as imports;

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
