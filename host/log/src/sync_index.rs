//! The sync index: every witnessed intention as a `(HLC wall ms, hash)` item in sorted order,
//! with per-bucket counts and 256-bit sums, so set-reconciliation (Negentropy) can ask for the
//! i-th item, a lower bound, or the fingerprint sum of a range without reading the whole log.
//!
//! Tables: `sync_items` (`wall_ms u64 BE ‖ hash [32]` → `()`) and `sync_buckets` (bucket lower
//! bound, same 40-byte layout → `count u64 LE ‖ sum [32]`, the little-endian 256-bit sum mod
//! 2^256 of the bucket's hashes). A bucket covers keys from its bound up to the next bucket's.
//! The first bucket's bound is all zero. A bucket that grows past [`BUCKET_MAX`] items splits in
//! two (a scan of that one bucket), so maintenance is amortised O(1) per witnessed intention.
//!
//! Only witnessed intentions are indexed; floating ones never are.

use std::ops::Bound;

use redb::{ReadOnlyTable, ReadableTable, Table, TableDefinition};

use crate::error::Error;

/// `sync_items`: the sorted items.
pub(crate) const SYNC_ITEMS: TableDefinition<&[u8; 40], ()> = TableDefinition::new("sync_items");
/// `sync_buckets`: bucket bound → count and sum.
pub(crate) const SYNC_BUCKETS: TableDefinition<&[u8; 40], &[u8; 40]> =
    TableDefinition::new("sync_buckets");

/// Items per bucket before it splits.
pub(crate) const BUCKET_MAX: u64 = 2048;

/// One reconciliation item: its HLC wall time and the intention hash.
pub type SyncItem = (u64, [u8; 32]);

pub(crate) fn item_key(wall_ms: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&wall_ms.to_be_bytes());
    key[8..].copy_from_slice(hash);
    key
}

fn split_key(key: &[u8; 40]) -> SyncItem {
    let mut wall = [0u8; 8];
    wall.copy_from_slice(&key[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&key[8..]);
    (u64::from_be_bytes(wall), hash)
}

/// Adds `b` to `a` as 256-bit little-endian integers, wrapping (Negentropy's accumulator).
pub(crate) fn add256(a: &mut [u8; 32], b: &[u8; 32]) {
    let mut carry = 0u64;
    for lane in 0..4 {
        let r = lane * 8..lane * 8 + 8;
        let mut x = [0u8; 8];
        x.copy_from_slice(&a[r.clone()]);
        let mut y = [0u8; 8];
        y.copy_from_slice(&b[r.clone()]);
        let (s, c1) = u64::from_le_bytes(x).overflowing_add(u64::from_le_bytes(y));
        let (s, c2) = s.overflowing_add(carry);
        a[r].copy_from_slice(&s.to_le_bytes());
        carry = u64::from(c1 | c2);
    }
}

/// Subtracts `b` from `a` as 256-bit little-endian integers, wrapping (undoes [`add256`]).
pub(crate) fn sub256(a: &mut [u8; 32], b: &[u8; 32]) {
    let mut borrow = 0u64;
    for lane in 0..4 {
        let r = lane * 8..lane * 8 + 8;
        let mut x = [0u8; 8];
        x.copy_from_slice(&a[r.clone()]);
        let mut y = [0u8; 8];
        y.copy_from_slice(&b[r.clone()]);
        let (d, b1) = u64::from_le_bytes(x).overflowing_sub(u64::from_le_bytes(y));
        let (d, b2) = d.overflowing_sub(borrow);
        a[r].copy_from_slice(&d.to_le_bytes());
        borrow = u64::from(b1 | b2);
    }
}

fn encode_bucket(count: u64, sum: &[u8; 32]) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&count.to_le_bytes());
    v[8..].copy_from_slice(sum);
    v
}

fn decode_bucket(v: &[u8; 40]) -> (u64, [u8; 32]) {
    let mut count = [0u8; 8];
    count.copy_from_slice(&v[..8]);
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&v[8..]);
    (u64::from_le_bytes(count), sum)
}

/// Adds the intentions witnessed in one group commit to the index (inside its transaction).
///
/// `keys` are [`item_key`]s. Keys falling into the same bucket update that bucket once, so a
/// commit of thousands of intentions (mostly newer than everything indexed) touches a handful
/// of bucket rows. A bucket that overflows is re-cut into buckets of half the maximum.
pub(crate) fn insert_many(
    items: &mut Table<'_, &'static [u8; 40], ()>,
    buckets: &mut Table<'_, &'static [u8; 40], &'static [u8; 40]>,
    mut keys: Vec<[u8; 40]>,
) -> Result<(), Error> {
    keys.sort_unstable();
    keys.dedup();
    let mut i = 0;
    while i < keys.len() {
        let key = keys[i];
        let (bound, mut count, mut sum) = match buckets.range::<&[u8; 40]>(..=&key)?.next_back() {
            Some(row) => {
                let (k, v) = row?;
                let (count, sum) = decode_bucket(v.value());
                (*k.value(), count, sum)
            }
            None => ([0u8; 40], 0, [0u8; 32]),
        };
        let next_bound = match buckets
            .range::<&[u8; 40]>((Bound::Excluded(&bound), Bound::Unbounded))?
            .next()
        {
            Some(row) => Some(*row?.0.value()),
            None => None,
        };
        while i < keys.len() && next_bound.is_none_or(|nb| keys[i] < nb) {
            if items.insert(&keys[i], ())?.is_none() {
                count += 1;
                add256(&mut sum, &split_key(&keys[i]).1);
            }
            i += 1;
        }
        if count <= BUCKET_MAX {
            buckets.insert(&bound, &encode_bucket(count, &sum))?;
        } else {
            recut(items, buckets, bound, next_bound)?;
        }
    }
    Ok(())
}

/// Removes items (pruned intentions) from the index inside the pruning transaction: each
/// bucket's count and sum are adjusted by subtraction, and a bucket left empty goes (its
/// range joins the bucket before it), so the bucket rows follow what remains.
pub(crate) fn remove_many(
    items: &mut Table<'_, &'static [u8; 40], ()>,
    buckets: &mut Table<'_, &'static [u8; 40], &'static [u8; 40]>,
    mut keys: Vec<[u8; 40]>,
) -> Result<(), Error> {
    keys.sort_unstable();
    keys.dedup();
    let mut i = 0;
    while i < keys.len() {
        let key = keys[i];
        let Some((bound, mut count, mut sum)) =
            (match buckets.range::<&[u8; 40]>(..=&key)?.next_back() {
                Some(row) => {
                    let (k, v) = row?;
                    let (count, sum) = decode_bucket(v.value());
                    Some((*k.value(), count, sum))
                }
                None => None,
            })
        else {
            i += 1;
            continue;
        };
        let next_bound = match buckets
            .range::<&[u8; 40]>((Bound::Excluded(&bound), Bound::Unbounded))?
            .next()
        {
            Some(row) => Some(*row?.0.value()),
            None => None,
        };
        while i < keys.len() && next_bound.is_none_or(|nb| keys[i] < nb) {
            if items.remove(&keys[i])?.is_some() {
                count = count.saturating_sub(1);
                sub256(&mut sum, &split_key(&keys[i]).1);
            }
            i += 1;
        }
        if count == 0 && bound != [0u8; 40] {
            buckets.remove(&bound)?;
        } else {
            buckets.insert(&bound, &encode_bucket(count, &sum))?;
        }
    }
    Ok(())
}

/// Re-cuts the bucket starting at `bound` into buckets of `BUCKET_MAX / 2` items.
fn recut(
    items: &mut Table<'_, &'static [u8; 40], ()>,
    buckets: &mut Table<'_, &'static [u8; 40], &'static [u8; 40]>,
    bound: [u8; 40],
    next_bound: Option<[u8; 40]>,
) -> Result<(), Error> {
    let size = (BUCKET_MAX / 2) as usize;
    let mut chunk_bound = bound;
    let mut count = 0u64;
    let mut sum = [0u8; 32];
    let range = match &next_bound {
        Some(nb) => items.range::<&[u8; 40]>(&bound..nb)?,
        None => items.range::<&[u8; 40]>(&bound..)?,
    };
    let mut cuts = Vec::new();
    for row in range {
        let (k, _) = row?;
        let k = *k.value();
        if count as usize == size {
            cuts.push((chunk_bound, count, sum));
            chunk_bound = k;
            count = 0;
            sum = [0u8; 32];
        }
        count += 1;
        add256(&mut sum, &split_key(&k).1);
    }
    cuts.push((chunk_bound, count, sum));
    for (b, c, s) in cuts {
        buckets.insert(&b, &encode_bucket(c, &s))?;
    }
    Ok(())
}

/// A consistent read view of the sync index: rank, lower-bound and range-sum queries.
///
/// Opening it reads the bucket summaries (one row per ~1,000–2,000 intentions); each query then
/// reads at most two partial buckets.
pub struct SyncSnapshot {
    items: ReadOnlyTable<&'static [u8; 40], ()>,
    /// (bound, count, sum, items before this bucket)
    buckets: Vec<([u8; 40], u64, [u8; 32], u64)>,
    len: u64,
}

impl std::fmt::Debug for SyncSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SyncSnapshot({} items, {} buckets)",
            self.len,
            self.buckets.len()
        )
    }
}

impl SyncSnapshot {
    pub(crate) fn open(
        items: ReadOnlyTable<&'static [u8; 40], ()>,
        buckets: &ReadOnlyTable<&'static [u8; 40], &'static [u8; 40]>,
    ) -> Result<SyncSnapshot, Error> {
        let mut out = Vec::new();
        let mut before = 0u64;
        for row in buckets.iter()? {
            let (k, v) = row?;
            let (count, sum) = decode_bucket(v.value());
            out.push((*k.value(), count, sum, before));
            before += count;
        }
        Ok(SyncSnapshot {
            items,
            buckets: out,
            len: before,
        })
    }

    /// Number of items (witnessed intentions).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing is witnessed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index of the bucket holding item `i`.
    fn bucket_of(&self, i: u64) -> usize {
        self.buckets
            .partition_point(|(_, count, _, before)| before + count <= i)
    }

    /// Calls `f` with items `begin..end` in order until it returns false.
    ///
    /// # Errors
    /// Storage failures.
    pub fn for_each(
        &self,
        begin: u64,
        end: u64,
        f: &mut dyn FnMut(SyncItem, u64) -> bool,
    ) -> Result<(), Error> {
        let end = end.min(self.len);
        if begin >= end {
            return Ok(());
        }
        let b = self.bucket_of(begin);
        let (bound, _, _, before) = self.buckets[b];
        for (i, row) in (before..).zip(self.items.range::<&[u8; 40]>(&bound..)?) {
            let (k, _) = row?;
            if i >= end {
                break;
            }
            if i >= begin && !f(split_key(k.value()), i) {
                break;
            }
        }
        Ok(())
    }

    /// The item at index `i`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn item(&self, i: u64) -> Result<Option<SyncItem>, Error> {
        let mut found = None;
        self.for_each(i, i + 1, &mut |item, _| {
            found = Some(item);
            false
        })?;
        Ok(found)
    }

    /// The 256-bit sum of the hashes of items `begin..end` (for the range fingerprint).
    ///
    /// # Errors
    /// Storage failures.
    pub fn sum(&self, begin: u64, end: u64) -> Result<[u8; 32], Error> {
        let end = end.min(self.len);
        let mut sum = [0u8; 32];
        if begin >= end {
            return Ok(sum);
        }
        let first = self.bucket_of(begin);
        let last = self.bucket_of(end - 1);
        let partial = |from: u64, to: u64, sum: &mut [u8; 32]| -> Result<(), Error> {
            self.for_each(from, to, &mut |(_, h), _| {
                add256(sum, &h);
                true
            })
        };
        if first == last {
            partial(begin, end, &mut sum)?;
            return Ok(sum);
        }
        let (_, c, s, b) = self.buckets[first];
        if begin == b {
            add256(&mut sum, &s);
        } else {
            partial(begin, b + c, &mut sum)?;
        }
        for (_, _, s, _) in &self.buckets[first + 1..last] {
            add256(&mut sum, s);
        }
        let (_, c, s, b) = self.buckets[last];
        if end == b + c {
            add256(&mut sum, &s);
        } else {
            partial(b, end, &mut sum)?;
        }
        Ok(sum)
    }

    /// The index of the first item at or after `(wall_ms, hash_prefix…)` within `first..last`
    /// (`last` when none). `bound` is compared as the 40-byte key with the hash part zero-padded.
    ///
    /// # Errors
    /// Storage failures.
    pub fn lower_bound(
        &self,
        first: u64,
        last: u64,
        wall_ms: u64,
        hash_prefix: &[u8],
    ) -> Result<u64, Error> {
        let mut target = [0u8; 40];
        target[..8].copy_from_slice(&wall_ms.to_be_bytes());
        let n = hash_prefix.len().min(32);
        target[8..8 + n].copy_from_slice(&hash_prefix[..n]);
        // Buckets wholly below the target are skipped by their bounds.
        let b = self
            .buckets
            .partition_point(|(bound, _, _, _)| *bound <= target)
            .saturating_sub(1);
        let start = self.buckets.get(b).map_or(0, |x| x.3).max(first);
        let mut found = last;
        self.for_each(start, last, &mut |(w, h), i| {
            if item_key(w, &h) >= target {
                found = i;
                false
            } else {
                true
            }
        })?;
        Ok(found.max(first).min(last))
    }
}
