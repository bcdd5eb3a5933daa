//! Negentropy (protocol v1) set reconciliation over the log's sync index.
//!
//! This is our own implementation of the v1 wire format, so that range fingerprints come
//! from the sync index's persisted bucket sums (two partial buckets read per fingerprint,
//! whatever the range) instead of a walk over every item in the range. It interoperates with
//! the `negentropy` crate in both directions (see this crate's tests).
//!
//! Wire format (all varints are big-endian base-128, high bit = more):
//! a message is the version byte `0x61` followed by ranges; a range is an upper bound
//! (timestamp delta + 1, or 0 for "infinity", then an id-prefix length and prefix), a mode
//! (0 skip, 1 fingerprint, 2 id list) and the mode's payload (16 fingerprint bytes, or a count
//! and that many 32-byte ids). The fingerprint of a range is the first 16 bytes of
//! SHA-256(sum of its ids as 256-bit little-endian integers ‖ varint(count)).

use std::collections::BTreeSet;

use lattice_log::SyncSnapshot;
use lattice_model::Hash;
use sha2::{Digest, Sha256};

/// Largest reconciliation message, in bytes (1 MiB). Bigger differences take more rounds.
pub const FRAME_LIMIT: u64 = 1024 * 1024;

/// The protocol version byte (Negentropy v1).
const VERSION: u8 = 0x61;
/// Ranges split into this many sub-ranges.
const BUCKETS: u64 = 16;
/// Ranges with fewer items than this are sent as id lists.
const DOUBLE_BUCKETS: u64 = 2 * BUCKETS;
/// Room kept below the frame limit for the closing range.
const FRAME_SLACK: usize = 200;

/// Reconciliation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer sent a message that is not valid Negentropy v1 (or out of turn).
    #[error("bad reconciliation message: {0}")]
    Protocol(&'static str),
    /// The frame limit is non-zero but too small to make progress (minimum 4096).
    #[error("frame limit {0} is too small (minimum 4096, or 0 for none)")]
    FrameLimit(u64),
    /// Reading the local sync index failed.
    #[error(transparent)]
    Log(#[from] lattice_log::Error),
}

/// A sorted set of `(timestamp, id)` items with range sums: what reconciliation reads.
///
/// [`SyncSnapshot`] is the real one; [`VecSet`] holds items in memory.
pub trait ItemSet {
    /// Number of items.
    fn len(&self) -> u64;
    /// True when there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f(item, index)` for items `begin..end` in order until it returns false.
    ///
    /// # Errors
    /// Storage failures.
    fn for_each(
        &self,
        begin: u64,
        end: u64,
        f: &mut dyn FnMut((u64, [u8; 32]), u64) -> bool,
    ) -> Result<(), lattice_log::Error>;
    /// 256-bit little-endian sum of the ids of items `begin..end`.
    ///
    /// # Errors
    /// Storage failures.
    fn sum(&self, begin: u64, end: u64) -> Result<[u8; 32], lattice_log::Error>;
    /// Index of the first item in `first..last` at or after `(timestamp, prefix…)`, else `last`.
    ///
    /// # Errors
    /// Storage failures.
    fn lower_bound(
        &self,
        first: u64,
        last: u64,
        timestamp: u64,
        prefix: &[u8],
    ) -> Result<u64, lattice_log::Error>;
}

impl ItemSet for SyncSnapshot {
    fn len(&self) -> u64 {
        SyncSnapshot::len(self)
    }
    fn for_each(
        &self,
        begin: u64,
        end: u64,
        f: &mut dyn FnMut((u64, [u8; 32]), u64) -> bool,
    ) -> Result<(), lattice_log::Error> {
        SyncSnapshot::for_each(self, begin, end, f)
    }
    fn sum(&self, begin: u64, end: u64) -> Result<[u8; 32], lattice_log::Error> {
        SyncSnapshot::sum(self, begin, end)
    }
    fn lower_bound(
        &self,
        first: u64,
        last: u64,
        timestamp: u64,
        prefix: &[u8],
    ) -> Result<u64, lattice_log::Error> {
        SyncSnapshot::lower_bound(self, first, last, timestamp, prefix)
    }
}

/// Items held in memory, sorted by `(timestamp, id)` (tests, small sets, bootstrap pages).
#[derive(Debug, Clone, Default)]
pub struct VecSet(Vec<(u64, [u8; 32])>);

impl VecSet {
    /// Sorts and deduplicates `items`.
    pub fn new(mut items: Vec<(u64, [u8; 32])>) -> VecSet {
        items.sort_unstable();
        items.dedup();
        VecSet(items)
    }
}

impl ItemSet for VecSet {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn for_each(
        &self,
        begin: u64,
        end: u64,
        f: &mut dyn FnMut((u64, [u8; 32]), u64) -> bool,
    ) -> Result<(), lattice_log::Error> {
        let end = end.min(self.len());
        for i in begin..end {
            if !f(self.0[i as usize], i) {
                break;
            }
        }
        Ok(())
    }
    fn sum(&self, begin: u64, end: u64) -> Result<[u8; 32], lattice_log::Error> {
        let mut sum = [0u8; 32];
        self.for_each(begin, end, &mut |(_, id), _| {
            add256(&mut sum, &id);
            true
        })?;
        Ok(sum)
    }
    fn lower_bound(
        &self,
        first: u64,
        last: u64,
        timestamp: u64,
        prefix: &[u8],
    ) -> Result<u64, lattice_log::Error> {
        let last = last.min(self.len());
        if first >= last {
            return Ok(last);
        }
        let slice = &self.0[first as usize..last as usize];
        let at =
            slice.partition_point(|(ts, id)| (*ts, &id[..]) < (timestamp, &padded(prefix)[..]));
        Ok(first + at as u64)
    }
}

fn padded(prefix: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = prefix.len().min(32);
    out[..n].copy_from_slice(&prefix[..n]);
    out
}

fn add256(a: &mut [u8; 32], b: &[u8; 32]) {
    let mut carry = 0u16;
    for i in 0..32 {
        let s = a[i] as u16 + b[i] as u16 + carry;
        a[i] = s as u8;
        carry = s >> 8;
    }
}

fn fingerprint(sum: &[u8; 32], count: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(sum);
    h.update(varint(count));
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = vec![(n & 0x7f) as u8];
    n >>= 7;
    while n > 0 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.reverse();
    out
}

/// Reads protocol fields from a peer's message; every read is bounds-checked.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn varint(&mut self) -> Result<u64, SyncError> {
        let mut n: u64 = 0;
        for (i, &b) in self.0.iter().enumerate() {
            if i == 10 || n >> 57 != 0 {
                return Err(SyncError::Protocol("varint too long"));
            }
            n = (n << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(n);
            }
        }
        Err(SyncError::Protocol("message ends inside a varint"))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], SyncError> {
        if self.0.len() < n {
            return Err(SyncError::Protocol("message ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
}

/// A range bound: items strictly below `(timestamp, prefix zero-padded)` are in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    timestamp: u64,
    prefix: [u8; 32],
    len: usize,
}

impl Bound {
    const INFINITY: Bound = Bound {
        timestamp: u64::MAX,
        prefix: [0; 32],
        len: 0,
    };
    const ZERO: Bound = Bound {
        timestamp: 0,
        prefix: [0; 32],
        len: 0,
    };

    /// The shortest bound that separates `prev` (below) from `curr` (at or above).
    fn between(prev: (u64, [u8; 32]), curr: (u64, [u8; 32])) -> Bound {
        if prev.0 != curr.0 {
            return Bound {
                timestamp: curr.0,
                prefix: [0; 32],
                len: 0,
            };
        }
        let shared = prev
            .1
            .iter()
            .zip(&curr.1)
            .take_while(|(a, b)| a == b)
            .count();
        let len = (shared + 1).min(32);
        let mut prefix = [0u8; 32];
        prefix[..len].copy_from_slice(&curr.1[..len]);
        Bound {
            timestamp: curr.0,
            prefix,
            len,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Skip,
    Fingerprint,
    IdList,
}

/// One end of a reconciliation: the shared machinery of both roles.
struct Session<S> {
    set: S,
    frame_limit: u64,
    initiator: bool,
    last_in: u64,
    last_out: u64,
}

impl<S: ItemSet> Session<S> {
    fn new(set: S, frame_limit: u64, initiator: bool) -> Result<Session<S>, SyncError> {
        if frame_limit != 0 && frame_limit < 4096 {
            return Err(SyncError::FrameLimit(frame_limit));
        }
        Ok(Session {
            set,
            frame_limit,
            initiator,
            last_in: 0,
            last_out: 0,
        })
    }

    fn over_limit(&self, n: usize) -> bool {
        self.frame_limit != 0 && n > self.frame_limit as usize - FRAME_SLACK
    }

    fn put_bound(&mut self, out: &mut Vec<u8>, b: &Bound) {
        if b.timestamp == u64::MAX {
            self.last_out = u64::MAX;
            out.push(0);
        } else {
            let delta = b.timestamp.saturating_sub(self.last_out);
            self.last_out = b.timestamp;
            out.extend(varint(delta.saturating_add(1)));
        }
        out.extend(varint(b.len as u64));
        out.extend(&b.prefix[..b.len]);
    }

    fn get_bound(&mut self, input: &mut Input<'_>) -> Result<Bound, SyncError> {
        let raw = input.varint()?;
        let timestamp = if raw == 0 { u64::MAX } else { raw - 1 };
        let timestamp = timestamp.saturating_add(self.last_in);
        self.last_in = timestamp;
        let len = input.varint()?;
        if len > 32 {
            return Err(SyncError::Protocol("bound prefix longer than 32 bytes"));
        }
        let mut prefix = [0u8; 32];
        prefix[..len as usize].copy_from_slice(input.bytes(len as usize)?);
        Ok(Bound {
            timestamp,
            prefix,
            len: len as usize,
        })
    }

    fn put_mode(out: &mut Vec<u8>, mode: Mode) {
        out.push(match mode {
            Mode::Skip => 0,
            Mode::Fingerprint => 1,
            Mode::IdList => 2,
        });
    }

    fn fingerprint(&self, begin: u64, end: u64) -> Result<[u8; 16], SyncError> {
        Ok(fingerprint(
            &self.set.sum(begin, end)?,
            end.saturating_sub(begin),
        ))
    }

    /// Describes `lower..upper` (ending at `upper_bound`): an id list when small, else
    /// [`BUCKETS`] fingerprinted sub-ranges.
    fn split(
        &mut self,
        out: &mut Vec<u8>,
        lower: u64,
        upper: u64,
        upper_bound: Bound,
    ) -> Result<(), SyncError> {
        let n = upper - lower;
        if n < DOUBLE_BUCKETS {
            self.put_bound(out, &upper_bound);
            Self::put_mode(out, Mode::IdList);
            out.extend(varint(n));
            self.set.for_each(lower, upper, &mut |(_, id), _| {
                out.extend(id);
                true
            })?;
            return Ok(());
        }
        let per = n / BUCKETS;
        let extra = n % BUCKETS;
        let mut curr = lower;
        for i in 0..BUCKETS {
            let size = per + u64::from(i < extra);
            let fp = self.fingerprint(curr, curr + size)?;
            curr += size;
            let bound = if curr == upper {
                upper_bound
            } else {
                let mut pair = [(0u64, [0u8; 32]); 2];
                self.set.for_each(curr - 1, curr + 1, &mut |item, idx| {
                    pair[(idx + 1 - curr) as usize] = item;
                    true
                })?;
                Bound::between(pair[0], pair[1])
            };
            self.put_bound(out, &bound);
            Self::put_mode(out, Mode::Fingerprint);
            out.extend(fp);
        }
        Ok(())
    }

    fn initiate(&mut self) -> Result<Vec<u8>, SyncError> {
        let mut out = vec![VERSION];
        let len = self.set.len();
        self.split(&mut out, 0, len, Bound::INFINITY)?;
        Ok(out)
    }

    /// Handles one message; returns the reply (just the version byte when nothing is left).
    fn reconcile(
        &mut self,
        msg: &[u8],
        have: &mut Vec<Hash>,
        need: &mut Vec<Hash>,
    ) -> Result<Vec<u8>, SyncError> {
        self.last_in = 0;
        self.last_out = 0;
        let mut input = Input(msg);
        let version = *input.bytes(1)?.first().unwrap_or(&0);
        if !(0x60..=0x6f).contains(&version) {
            return Err(SyncError::Protocol("not a Negentropy message"));
        }
        let mut full = vec![VERSION];
        if version != VERSION {
            if self.initiator {
                return Err(SyncError::Protocol("peer does not support protocol v1"));
            }
            return Ok(full);
        }
        let size = self.set.len();
        let mut prev_bound = Bound::ZERO;
        let mut prev_index = 0u64;
        let mut skip = false;
        let mut emitted = 0u64;
        while !input.0.is_empty() {
            let mut o = Vec::new();
            let bound = self.get_bound(&mut input)?;
            let mode = match input.varint()? {
                0 => Mode::Skip,
                1 => Mode::Fingerprint,
                2 => Mode::IdList,
                _ => return Err(SyncError::Protocol("unknown range mode")),
            };
            let lower = prev_index;
            let mut upper = self.set.lower_bound(
                prev_index,
                size,
                bound.timestamp,
                &bound.prefix[..bound.len],
            )?;
            match mode {
                Mode::Skip => skip = true,
                Mode::Fingerprint => {
                    let theirs = input.bytes(16)?;
                    if theirs != self.fingerprint(lower, upper)? {
                        if skip {
                            skip = false;
                            self.put_bound(&mut o, &prev_bound);
                            Self::put_mode(&mut o, Mode::Skip);
                        }
                        self.split(&mut o, lower, upper, bound)?;
                    } else {
                        skip = true;
                    }
                }
                Mode::IdList => {
                    let count = input.varint()?;
                    if count > (input.0.len() / 32) as u64 {
                        return Err(SyncError::Protocol("id list longer than the message"));
                    }
                    let mut theirs = BTreeSet::new();
                    for _ in 0..count {
                        let mut id = [0u8; 32];
                        id.copy_from_slice(input.bytes(32)?);
                        theirs.insert(id);
                    }
                    let initiator = self.initiator;
                    self.set.for_each(lower, upper, &mut |(_, id), _| {
                        if !theirs.remove(&id) && initiator {
                            have.push(Hash(id));
                        }
                        true
                    })?;
                    if self.initiator {
                        skip = true;
                        need.extend(theirs.into_iter().map(Hash));
                    } else {
                        if skip {
                            skip = false;
                            self.put_bound(&mut o, &prev_bound);
                            Self::put_mode(&mut o, Mode::Skip);
                        }
                        let mut ids = Vec::new();
                        let mut n = 0u64;
                        let mut end_bound = bound;
                        let base = full.len();
                        let limit = self.frame_limit;
                        self.set.for_each(lower, upper, &mut |item, idx| {
                            if limit != 0 && base + ids.len() > limit as usize - FRAME_SLACK {
                                end_bound = Bound {
                                    timestamp: item.0,
                                    prefix: item.1,
                                    len: 32,
                                };
                                upper = idx;
                                return false;
                            }
                            ids.extend(item.1);
                            n += 1;
                            true
                        })?;
                        self.put_bound(&mut o, &end_bound);
                        Self::put_mode(&mut o, Mode::IdList);
                        o.extend(varint(n));
                        o.extend(ids);
                        full.extend(&o);
                        o.clear();
                        emitted = upper;
                    }
                }
            }
            if self.over_limit(full.len() + o.len()) {
                // Out of room: one fingerprint for everything from the last range written on.
                let fp = self.fingerprint(emitted, size)?;
                self.put_bound(&mut full, &Bound::INFINITY);
                Self::put_mode(&mut full, Mode::Fingerprint);
                full.extend(fp);
                break;
            }
            if !o.is_empty() {
                emitted = upper;
            }
            full.extend(o);
            prev_index = upper;
            prev_bound = bound;
        }
        Ok(full)
    }
}

/// What one round told the initiator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Witnessed here but not at the peer: offer them.
    pub have: Vec<Hash>,
    /// Witnessed at the peer but not here: fetch them.
    pub need: Vec<Hash>,
    /// The next message to send, or `None` when reconciliation is complete.
    pub next: Option<Vec<u8>>,
}

/// The side that starts a reconciliation and learns the differences.
pub struct Initiator<S = SyncSnapshot> {
    session: Session<S>,
}

impl<S> std::fmt::Debug for Initiator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator")
    }
}

impl<S: ItemSet> Initiator<S> {
    /// Starts over a set (normally a snapshot of the local sync index); returns the first
    /// message. `frame_limit` caps every message this side writes (0 = no cap).
    ///
    /// # Errors
    /// [`SyncError`] when the frame limit is too small or the index cannot be read.
    pub fn start(set: S, frame_limit: u64) -> Result<(Initiator<S>, Vec<u8>), SyncError> {
        let mut session = Session::new(set, frame_limit, true)?;
        let first = session.initiate()?;
        Ok((Initiator { session }, first))
    }

    /// Handles the responder's reply.
    ///
    /// # Errors
    /// [`SyncError::Protocol`] for a malformed reply; storage failures.
    pub fn step(&mut self, reply: &[u8]) -> Result<Step, SyncError> {
        let mut step = Step::default();
        let next = self
            .session
            .reconcile(reply, &mut step.have, &mut step.need)?;
        step.next = (next.len() > 1).then_some(next);
        Ok(step)
    }
}

/// The side that answers a reconciliation.
pub struct Responder<S = SyncSnapshot> {
    session: Session<S>,
}

impl<S> std::fmt::Debug for Responder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl<S: ItemSet> Responder<S> {
    /// Prepares to answer over a set (normally a snapshot of the local sync index).
    ///
    /// # Errors
    /// [`SyncError::FrameLimit`] when the frame limit is too small.
    pub fn new(set: S, frame_limit: u64) -> Result<Responder<S>, SyncError> {
        Ok(Responder {
            session: Session::new(set, frame_limit, false)?,
        })
    }

    /// Answers one message.
    ///
    /// # Errors
    /// [`SyncError::Protocol`] for a malformed message; storage failures.
    pub fn respond(&mut self, msg: &[u8]) -> Result<Vec<u8>, SyncError> {
        self.session
            .reconcile(msg, &mut Vec::new(), &mut Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for n in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let bytes = varint(n);
            let mut input = Input(&bytes);
            assert_eq!(input.varint().unwrap(), n);
            assert!(input.0.is_empty());
        }
        assert!(Input(&[0x80]).varint().is_err());
        assert!(Input(&[0xff; 11]).varint().is_err());
    }

    #[test]
    fn sums_carry_across_bytes() {
        let mut a = [0xffu8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        add256(&mut a, &one);
        assert_eq!(a, [0u8; 32]);
    }
}
