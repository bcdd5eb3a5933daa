//! A last-writer-wins table with self-contained heads.
//!
//! Per key the table stores every *surviving head*: each write that no later write on that key
//! has cited. A write removes the heads it cites in its causal deps (causal subsumption) and
//! adds itself. The winner is the maximum over all surviving heads by (HLC, author, hash), so
//! the result depends only on the set of writes, never on the order they arrived in (as long
//! as each write arrives after the writes it cites, which the host guarantees). A key with more
//! than one head is *conflicted*; [`LwwTable::heads`] returns them all.
//!
//! Stored value layout (version 1): `1u8 | n u16 | head*n`, heads sorted by hash, each head
//! `hash [32] | wall_ms u64 | counter u32 | author [32] | tag u8 (0 tombstone, 1 value) |
//! len u32 | value`, little-endian.

use crate::host::scan_prefix;
use crate::{Hlc, Host, Intention, StoreError};

/// One surviving write to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The intention that wrote it.
    pub hash: Vec<u8>,
    /// Its HLC.
    pub hlc: Hlc,
    /// Its author.
    pub author: Vec<u8>,
    /// The value written, or `None` for a delete (tombstone).
    pub value: Option<Vec<u8>>,
}

impl Head {
    fn rank(&self) -> (u64, u32, &[u8], &[u8]) {
        (self.hlc.wall_ms, self.hlc.counter, &self.author, &self.hash)
    }
}

/// A read of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwRead {
    /// The winning value, `None` when the winner is a delete.
    pub value: Option<Vec<u8>>,
    /// True when more than one head survives (concurrent writes).
    pub conflicted: bool,
}

/// A last-writer-wins table stored under a key prefix of the guest's namespace.
#[derive(Debug, Clone)]
pub struct LwwTable {
    prefix: Vec<u8>,
}

fn corrupt() -> StoreError {
    StoreError::Internal("lww entry is malformed".into())
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if bytes.len() < n {
        return Err(corrupt());
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, StoreError> {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(take(bytes, 8)?);
    Ok(u64::from_le_bytes(raw))
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, StoreError> {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(take(bytes, 4)?);
    Ok(u32::from_le_bytes(raw))
}

fn encode(heads: &[Head]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(heads.len() as u16).to_le_bytes());
    for h in heads {
        out.extend_from_slice(&h.hash);
        out.extend_from_slice(&h.hlc.wall_ms.to_le_bytes());
        out.extend_from_slice(&h.hlc.counter.to_le_bytes());
        out.extend_from_slice(&h.author);
        match &h.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

fn decode(mut bytes: &[u8]) -> Result<Vec<Head>, StoreError> {
    if take(&mut bytes, 1)? != [1] {
        return Err(corrupt());
    }
    let mut raw = [0u8; 2];
    raw.copy_from_slice(take(&mut bytes, 2)?);
    let n = u16::from_le_bytes(raw) as usize;
    let mut heads = Vec::with_capacity(n);
    for _ in 0..n {
        let hash = take(&mut bytes, 32)?.to_vec();
        let wall_ms = take_u64(&mut bytes)?;
        let counter = take_u32(&mut bytes)?;
        let author = take(&mut bytes, 32)?.to_vec();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => {
                let len = take_u32(&mut bytes)? as usize;
                Some(take(&mut bytes, len)?.to_vec())
            }
            _ => return Err(corrupt()),
        };
        heads.push(Head {
            hash,
            hlc: Hlc { wall_ms, counter },
            author,
            value,
        });
    }
    if !bytes.is_empty() {
        return Err(corrupt());
    }
    Ok(heads)
}

fn read(heads: &[Head]) -> Option<LwwRead> {
    let winner = heads.iter().max_by(|a, b| a.rank().cmp(&b.rank()))?;
    Some(LwwRead {
        value: winner.value.clone(),
        conflicted: heads.len() > 1,
    })
}

impl LwwTable {
    /// A table whose keys live under `prefix` in the guest's namespace.
    pub fn new(prefix: &[u8]) -> LwwTable {
        LwwTable {
            prefix: prefix.to_vec(),
        }
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// Every surviving head of `key`, sorted by hash (empty when never written).
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the stored entry is malformed.
    pub fn heads(&self, host: &dyn Host, key: &[u8]) -> Result<Vec<Head>, StoreError> {
        match host.get(&self.full_key(key)) {
            Some(bytes) => decode(&bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Reads `key`: the winning value and whether it is conflicted. `None` when never written.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the stored entry is malformed.
    pub fn get(&self, host: &dyn Host, key: &[u8]) -> Result<Option<LwwRead>, StoreError> {
        Ok(read(&self.heads(host, key)?))
    }

    /// The hashes of the current heads of `keys`, sorted and unique: the causal deps a new write
    /// to those keys should cite so that it supersedes what its author has seen.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when a stored entry is malformed.
    pub fn deps_for(&self, host: &dyn Host, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut deps = Vec::new();
        for key in keys {
            deps.extend(self.heads(host, key)?.into_iter().map(|h| h.hash));
        }
        deps.sort();
        deps.dedup();
        Ok(deps)
    }

    /// Applies a write (`Some(value)`) or delete (`None`) of `key` by intention `op`: removes
    /// the heads `op` cites, adds `op` as a head. Returns the resulting read, or `None` when
    /// `op` was already applied to this key (nothing changed).
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the stored entry is malformed.
    pub fn write(
        &self,
        host: &mut dyn Host,
        key: &[u8],
        value: Option<&[u8]>,
        op: &Intention,
    ) -> Result<Option<LwwRead>, StoreError> {
        Ok(self
            .write_removing(host, key, value, op)?
            .map(|(read, _)| read))
    }

    /// As [`LwwTable::write`], also returning the heads the write removed (for a store type
    /// that keeps references from values, such as blobs).
    ///
    /// # Errors
    /// [`StoreError::Internal`] when the stored entry is malformed.
    pub fn write_removing(
        &self,
        host: &mut dyn Host,
        key: &[u8],
        value: Option<&[u8]>,
        op: &Intention,
    ) -> Result<Option<(LwwRead, Vec<Head>)>, StoreError> {
        let mut heads = self.heads(host, key)?;
        if heads.iter().any(|h| h.hash == op.hash) {
            return Ok(None);
        }
        let (removed, mut heads): (Vec<Head>, Vec<Head>) = heads
            .drain(..)
            .partition(|h| op.deps.binary_search(&h.hash).is_ok());
        heads.push(Head {
            hash: op.hash.clone(),
            hlc: op.hlc,
            author: op.author.clone(),
            value: value.map(<[u8]>::to_vec),
        });
        heads.sort_by(|a, b| a.hash.cmp(&b.hash));
        host.set(&self.full_key(key), &encode(&heads));
        Ok(read(&heads).map(|r| (r, removed)))
    }

    /// Lists keys starting with `prefix` whose winner is not a delete, with their reads, in
    /// key order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Internal`] when a stored entry is malformed.
    pub fn list(
        &self,
        host: &dyn Host,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, LwwRead)>, StoreError> {
        let mut out = Vec::new();
        // Deleted keys are skipped, so scan in pages until `limit` live keys are found.
        for (key, bytes) in scan_prefix(host, &self.full_key(prefix), usize::MAX) {
            if out.len() >= limit {
                break;
            }
            if let Some(r) = read(&decode(&bytes)?)
                && r.value.is_some()
            {
                out.push((key[self.prefix.len()..].to_vec(), r));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::MemoryHost;

    fn op(n: u8, wall: u64, author: u8, deps: &[u8]) -> Intention {
        let mut deps: Vec<Vec<u8>> = deps.iter().map(|d| vec![*d; 32]).collect();
        deps.sort();
        Intention {
            hash: vec![n; 32],
            author: vec![author; 32],
            hlc: Hlc {
                wall_ms: wall,
                counter: 0,
            },
            deps,
            ops: vec![],
        }
    }

    #[test]
    fn concurrent_writes_conflict_and_a_citing_write_resolves_them() -> Result<(), StoreError> {
        let t = LwwTable::new(b"t/");
        let mut host = MemoryHost::new();
        t.write(&mut host, b"k", Some(b"a"), &op(1, 10, 1, &[]))?;
        t.write(&mut host, b"k", Some(b"b"), &op(2, 20, 2, &[]))?;
        let r = t.get(&host, b"k")?.ok_or_else(corrupt)?;
        assert_eq!(
            (r.value.as_deref(), r.conflicted),
            (Some(b"b".as_slice()), true)
        );
        // Re-applying is a no-op.
        assert_eq!(
            t.write(&mut host, b"k", Some(b"b"), &op(2, 20, 2, &[]))?,
            None
        );
        t.write(&mut host, b"k", Some(b"c"), &op(3, 15, 1, &[1, 2]))?;
        let r = t.get(&host, b"k")?.ok_or_else(corrupt)?;
        assert_eq!(
            (r.value.as_deref(), r.conflicted),
            (Some(b"c".as_slice()), false)
        );
        t.write(&mut host, b"k", None, &op(4, 16, 1, &[3]))?;
        assert_eq!(t.get(&host, b"k")?.and_then(|r| r.value), None);
        assert!(t.list(&host, b"", 10)?.is_empty());
        Ok(())
    }

    #[test]
    fn losing_values_survive_partial_subsumption() -> Result<(), StoreError> {
        // The original's bug: a write citing only the winner must not let the loser's value
        // be replaced by a stale one. A (wins) and B (loses) are concurrent; C cites A only.
        let t = LwwTable::new(b"");
        let mut host = MemoryHost::new();
        t.write(&mut host, b"k", Some(b"A"), &op(1, 30, 1, &[]))?;
        t.write(&mut host, b"k", Some(b"B"), &op(2, 20, 2, &[]))?;
        t.write(&mut host, b"k", Some(b"C"), &op(3, 10, 1, &[1]))?;
        let heads = t.heads(&host, b"k")?;
        assert_eq!(heads.len(), 2);
        // B (wall 20) beats C (wall 10): B's value must still be there.
        assert_eq!(
            t.get(&host, b"k")?.and_then(|r| r.value),
            Some(b"B".to_vec())
        );
        Ok(())
    }

    /// A random causal history: each op writes one of a few keys and cites a random subset of
    /// the heads a random replica had seen of that key.
    fn history(seed: u64, n: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>, Intention)> {
        let mut rng = seed;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize
        };
        let mut out: Vec<(Vec<u8>, Option<Vec<u8>>, Intention)> = Vec::new();
        for i in 0..n {
            let key = vec![b'k', (next() % 3) as u8];
            // deps: a random subset of earlier ops on the same key
            let earlier: Vec<usize> = (0..out.len()).filter(|j| out[*j].0 == key).collect();
            let mut deps = BTreeSet::new();
            for j in earlier {
                if next() % 3 == 0 {
                    deps.insert(out[j].2.hash.clone());
                }
            }
            let value = if next() % 5 == 0 {
                None
            } else {
                Some(vec![i as u8])
            };
            let mut hash = vec![0u8; 32];
            hash[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            out.push((
                key,
                value,
                Intention {
                    hash,
                    author: vec![(next() % 3) as u8; 32],
                    hlc: Hlc {
                        wall_ms: (next() % 8) as u64,
                        counter: 0,
                    },
                    deps: deps.into_iter().collect(),
                    ops: vec![],
                },
            ));
        }
        out
    }

    proptest! {
        #[test]
        fn delivery_order_never_changes_the_state(seed in any::<u64>(), n in 1usize..40, orders in proptest::collection::vec(any::<u64>(), 4)) {
            let ops = history(seed, n);
            let t = LwwTable::new(b"lww/");
            let mut reference: Option<Vec<u8>> = None;
            for order_seed in orders {
                // A random topological order: repeatedly pick a random op whose deps are done.
                let mut done = BTreeSet::new();
                let mut pending: Vec<usize> = (0..ops.len()).collect();
                let mut host = MemoryHost::new();
                let mut r = order_seed;
                while !pending.is_empty() {
                    let ready: Vec<usize> = pending.iter().copied()
                        .filter(|i| ops[*i].2.deps.iter().all(|d| done.contains(d)))
                        .collect();
                    r = r.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let pick = ready[(r >> 33) as usize % ready.len()];
                    let (key, value, op) = &ops[pick];
                    t.write(&mut host, key, value.as_deref(), op).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    done.insert(op.hash.clone());
                    pending.retain(|i| *i != pick);
                }
                let bytes = host.state_bytes();
                match &reference {
                    None => reference = Some(bytes),
                    Some(b) => prop_assert_eq!(b, &bytes),
                }
            }
        }
    }
}
