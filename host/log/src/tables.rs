//! redb tables of `log.db` and the byte layout of their values.
//!
//! `docs/architecture.md` lists the same tables. All integers little-endian.

use lattice_model::{Hash, Hlc, PubKey};
use redb::{MultimapTableDefinition, TableDefinition};

use crate::error::CorruptError;

/// Format version of `log.db`, stored under [`META_FORMAT`].
pub(crate) const FORMAT_VERSION: u32 = 1;

/// `key → bytes`: format, store id, witness key, clock, floating counters.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_STORE: &str = "store_id";
pub(crate) const META_WITNESS_KEY: &str = "witness_key";
pub(crate) const META_CLOCK: &str = "clock";
pub(crate) const META_FLOATING: &str = "floating";

/// The witness log: `seq → 116-byte record`. Appended in order.
pub(crate) const WITNESS: TableDefinition<u64, &[u8]> = TableDefinition::new("witness");
/// Witnessed intentions: `seq → signed intention bytes`. Appended in order.
pub(crate) const INTENTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("intentions");
/// DAG index of witnessed intentions: `seq → DagEntry`. Appended in order.
pub(crate) const DAG: TableDefinition<u64, &[u8]> = TableDefinition::new("dag");
/// The one random-key index of witnessed intentions: `intention hash → seq`.
pub(crate) const INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("hash_index");
/// Reachability checkpoints: `seq → [(author, author seq)]` for every intention whose
/// author seq is a multiple of [`CHECKPOINT_EVERY`].
pub(crate) const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
/// Attestations: `seq → 64-byte node signature over that record's hash`.
pub(crate) const ATTESTATIONS: TableDefinition<u64, &[u8; 64]> =
    TableDefinition::new("attestations");
/// Author tips: `author → seq u64 ‖ hash [32]` of the author's newest witnessed intention.
pub(crate) const TIPS: TableDefinition<&[u8; 32], &[u8; 40]> = TableDefinition::new("tips");
/// Floating intentions: `hash → FloatingEntry`.
pub(crate) const FLOATING: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("floating");
/// What floating intentions wait for: `missing hash → floating hashes`.
pub(crate) const WAITS: MultimapTableDefinition<&[u8; 32], &[u8; 32]> =
    MultimapTableDefinition::new("floating_waits");
/// Arrival order of floating intentions, for eviction: `arrival → hash`.
pub(crate) const ARRIVALS: TableDefinition<u64, &[u8; 32]> =
    TableDefinition::new("floating_arrivals");

/// `META` key of the prune floor: what pruning has deleted below (see [`PruneFloor`]).
pub(crate) const META_PRUNE_FLOOR: &str = "prune_floor";
/// `META` key present when pruning freed pages since the file was last compacted: the next
/// open compacts it (the file keeps its high-water size until then).
pub(crate) const META_COMPACT_DUE: &str = "compact_due";
/// `META` key of the progress of the prune pass under way (see [`PruneProgress`]).
pub(crate) const META_PRUNE_PROGRESS: &str = "prune_progress";
/// Intentions a prune pass scanned and kept because they were not below its floor (written
/// concurrently with the epoch): `seq → ()`, scanned again by the next pass.
pub(crate) const PRUNE_PENDING: TableDefinition<u64, ()> = TableDefinition::new("prune_pending");

/// Every intention whose author seq is a multiple of this stores a reachability checkpoint.
pub(crate) const CHECKPOINT_EVERY: u64 = 32;

fn malformed(table: &'static str) -> CorruptError {
    CorruptError::Malformed { table }
}

fn u64_at(bytes: &[u8], at: usize, table: &'static str) -> Result<u64, CorruptError> {
    let slice = bytes.get(at..at + 8).ok_or(malformed(table))?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(slice);
    Ok(u64::from_le_bytes(raw))
}

fn array_at<const N: usize>(
    bytes: &[u8],
    at: usize,
    table: &'static str,
) -> Result<[u8; N], CorruptError> {
    let slice = bytes.get(at..at + N).ok_or(malformed(table))?;
    let mut raw = [0u8; N];
    raw.copy_from_slice(slice);
    Ok(raw)
}

/// DAG facts about one witnessed intention, stored under its witness seq (layout at
/// [`DagEntry::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DagEntry {
    /// 1 + the largest generation among parents (1 with no parents).
    pub(crate) generation: u64,
    /// Position in the author's chain, from 1.
    pub(crate) author_seq: u64,
    pub(crate) author: PubKey,
    pub(crate) hlc: Hlc,
    /// Parents by witness seq; the first is the author's previous intention when
    /// `author_seq > 1`.
    pub(crate) parents: Vec<u64>,
    /// What the intention's reach adds to its previous intention's (sorted by author, the
    /// author itself left out), so the reach of any intention is its chain's nearest
    /// checkpoint plus the raises above it, without walking other chains. `None` in entries
    /// written before raises were recorded (those are walked).
    pub(crate) raises: Option<Vec<(PubKey, u64)>>,
}

impl DagEntry {
    const FIXED: usize = 8 + 8 + 32 + 12 + 2;

    /// Layout: `generation u64 | author_seq u64 | author [32] | hlc [12] | n u16 | parent
    /// seq u64·n`, then when raises are recorded `m u16 | (author [32] | author seq u64)·m`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let raises = self.raises.as_deref().unwrap_or_default();
        let mut out =
            Vec::with_capacity(Self::FIXED + 8 * self.parents.len() + 2 + 40 * raises.len());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.author_seq.to_le_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.hlc.to_bytes());
        // parents ≤ 1 + MAX_CAUSAL_DEPS (257) always fits u16
        out.extend_from_slice(&(self.parents.len() as u16).to_le_bytes());
        for p in &self.parents {
            out.extend_from_slice(&p.to_le_bytes());
        }
        if let Some(raises) = &self.raises {
            // at most one per author a parent reaches: bounded by the store's authors
            out.extend_from_slice(&(raises.len() as u16).to_le_bytes());
            out.extend_from_slice(&encode_checkpoint(raises));
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<DagEntry, CorruptError> {
        const T: &str = "dag";
        let count = u16::from_le_bytes(array_at::<2>(bytes, Self::FIXED - 2, T)?) as usize;
        let end = Self::FIXED + 8 * count;
        let raises = match bytes.len().checked_sub(end) {
            Some(0) => None,
            Some(_) => {
                let m = u16::from_le_bytes(array_at::<2>(bytes, end, T)?) as usize;
                if bytes.len() != end + 2 + 40 * m {
                    return Err(malformed(T));
                }
                Some(decode_checkpoint(&bytes[end + 2..]).map_err(|_| malformed(T))?)
            }
            None => return Err(malformed(T)),
        };
        let parents = (0..count)
            .map(|i| u64_at(bytes, Self::FIXED + 8 * i, T))
            .collect::<Result<_, _>>()?;
        Ok(DagEntry {
            generation: u64_at(bytes, 0, T)?,
            author_seq: u64_at(bytes, 8, T)?,
            author: PubKey(array_at(bytes, 16, T)?),
            hlc: Hlc::from_bytes(array_at(bytes, 48, T)?),
            parents,
            raises,
        })
    }
}

/// An author's tip: the witness seq and hash of its newest witnessed intention.
pub(crate) fn encode_tip(seq: u64, hash: &Hash) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..].copy_from_slice(hash.as_bytes());
    out
}

pub(crate) fn decode_tip(bytes: &[u8; 40]) -> (u64, Hash) {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..]);
    (u64::from_le_bytes(seq), Hash(hash))
}

/// A floating intention: `arrival u64 | received_ms u64 | waiting_for [32] | signed bytes`.
#[derive(Debug, Clone)]
pub(crate) struct FloatingEntry {
    pub(crate) arrival: u64,
    pub(crate) received_ms: u64,
    pub(crate) waiting_for: Hash,
    pub(crate) bytes: Vec<u8>,
}

impl FloatingEntry {
    const FIXED: usize = 8 + 8 + 32;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED + self.bytes.len());
        out.extend_from_slice(&self.arrival.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        out.extend_from_slice(self.waiting_for.as_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<FloatingEntry, CorruptError> {
        const T: &str = "floating";
        Ok(FloatingEntry {
            arrival: u64_at(bytes, 0, T)?,
            received_ms: u64_at(bytes, 8, T)?,
            waiting_for: Hash(array_at(bytes, 16, T)?),
            bytes: bytes.get(Self::FIXED..).ok_or(malformed(T))?.to_vec(),
        })
    }
}

/// Counters of the floating set, persisted under [`META_FLOATING`] as three u64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FloatingCounters {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    pub(crate) next_arrival: u64,
}

impl FloatingCounters {
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.count.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        out[16..].copy_from_slice(&self.next_arrival.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<FloatingCounters, CorruptError> {
        const T: &str = "meta";
        if bytes.len() != 24 {
            return Err(malformed(T));
        }
        Ok(FloatingCounters {
            count: u64_at(bytes, 0, T)?,
            bytes: u64_at(bytes, 8, T)?,
            next_arrival: u64_at(bytes, 16, T)?,
        })
    }
}

/// A reachability checkpoint: for each author, the highest author seq reachable.
pub(crate) fn encode_checkpoint(frontier: &[(PubKey, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frontier.len() * 40);
    for (author, seq) in frontier {
        out.extend_from_slice(author.as_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out
}

pub(crate) fn decode_checkpoint(bytes: &[u8]) -> Result<Vec<(PubKey, u64)>, CorruptError> {
    const T: &str = "checkpoints";
    if !bytes.len().is_multiple_of(40) {
        return Err(malformed(T));
    }
    bytes
        .chunks_exact(40)
        .map(|c| Ok((PubKey(array_at(c, 0, T)?), u64_at(c, 32, T)?)))
        .collect()
}

/// What pruning deleted below: per author, the chain position of the newest intention an
/// epoch reaches (its *boundary*, which stays) and that intention's HLC. Every intention of the
/// author at or below the position that is not kept is gone; an arriving intention of the
/// author dated at or before the boundary's HLC is at or below it (chains are dated in
/// increasing order). Layout: `(author [32] | position u64 | hlc [12])·n`, sorted by author.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PruneFloor(pub(crate) Vec<(PubKey, u64, Hlc)>);

impl PruneFloor {
    const ROW: usize = 32 + 8 + 12;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * Self::ROW);
        for (author, position, hlc) in &self.0 {
            out.extend_from_slice(author.as_bytes());
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&hlc.to_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<PruneFloor, CorruptError> {
        const T: &str = "meta";
        if !bytes.len().is_multiple_of(Self::ROW) {
            return Err(malformed(T));
        }
        bytes
            .chunks_exact(Self::ROW)
            .map(|c| {
                Ok((
                    PubKey(array_at(c, 0, T)?),
                    u64_at(c, 32, T)?,
                    Hlc::from_bytes(array_at(c, 40, T)?),
                ))
            })
            .collect::<Result<_, _>>()
            .map(PruneFloor)
    }

    /// The author's boundary: its chain position and HLC.
    pub(crate) fn boundary(&self, author: &PubKey) -> Option<(u64, Hlc)> {
        self.0
            .binary_search_by(|(a, _, _)| a.cmp(author))
            .ok()
            .map(|i| (self.0[i].1, self.0[i].2))
    }

    /// The floor as a reachability frontier (per author, the position), for DAG walks that
    /// meet a pruned parent.
    pub(crate) fn frontier(&self) -> Vec<(PubKey, u64)> {
        self.0.iter().map(|(a, p, _)| (*a, *p)).collect()
    }
}

/// The prune pass under way: the epoch it prunes below (its witness seq), the next seq of
/// the log to scan, and how far the intentions left pending by earlier passes were scanned
/// again (`pending_next` up to `pending_end`). Layout: four u64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PruneProgress {
    pub(crate) epoch_seq: u64,
    pub(crate) next_seq: u64,
    pub(crate) pending_next: u64,
    pub(crate) pending_end: u64,
}

impl PruneProgress {
    pub(crate) fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, v) in [
            self.epoch_seq,
            self.next_seq,
            self.pending_next,
            self.pending_end,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<PruneProgress, CorruptError> {
        const T: &str = "meta";
        if bytes.len() != 32 {
            return Err(malformed(T));
        }
        Ok(PruneProgress {
            epoch_seq: u64_at(bytes, 0, T)?,
            next_seq: u64_at(bytes, 8, T)?,
            pending_next: u64_at(bytes, 16, T)?,
            pending_end: u64_at(bytes, 24, T)?,
        })
    }
}

/// Reads the prune floor (empty while nothing was pruned).
pub(crate) fn read_floor(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<PruneFloor, crate::error::Error> {
    Ok(match meta.get(META_PRUNE_FLOOR)? {
        Some(v) => PruneFloor::decode(v.value())?,
        None => PruneFloor::default(),
    })
}

pub(crate) fn decode_hlc(bytes: &[u8]) -> Result<Hlc, CorruptError> {
    Ok(Hlc::from_bytes(array_at(bytes, 0, "meta")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_entry_round_trips_and_rejects_bad_length() -> Result<(), CorruptError> {
        let entry = DagEntry {
            generation: 3,
            author_seq: 2,
            author: PubKey([1; 32]),
            hlc: Hlc::new(9, 1),
            parents: vec![2, 3],
            raises: None,
        };
        let bytes = entry.encode();
        assert_eq!(DagEntry::decode(&bytes)?, entry);
        assert!(DagEntry::decode(&bytes[..bytes.len() - 1]).is_err());
        let entry = DagEntry {
            raises: Some(vec![(PubKey([2; 32]), 7), (PubKey([3; 32]), 1)]),
            ..entry
        };
        let bytes = entry.encode();
        assert_eq!(DagEntry::decode(&bytes)?, entry);
        assert!(DagEntry::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(DagEntry::decode(&bytes[..bytes.len() - 40]).is_err());
        let empty = DagEntry {
            raises: Some(Vec::new()),
            ..entry
        };
        assert_eq!(DagEntry::decode(&empty.encode())?, empty);
        Ok(())
    }
}
