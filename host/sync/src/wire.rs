//! Session and gossip messages and their byte encoding (documented in `docs/protocol.md`).
//!
//! Every message is one frame: a tag byte then fixed-width little-endian fields. Decoding
//! checks every count against the bytes actually present before reserving memory for it.

use lattice_model::{Hash, PubKey, Signature, StoreId, WitnessAttestation, WitnessRecord};

/// Largest frame any Lattice peer sends or accepts, in bytes (4 MiB). A transport checks a
/// frame's length prefix against it before reading the frame.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Target size of one batch of intentions in a frame (1 MiB; one intention may exceed it
/// alone, and always fits under [`MAX_FRAME`]).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Largest gossip message, in bytes (64 KiB). Bigger intentions are announced by hash.
pub const MAX_GOSSIP: usize = 64 * 1024;

/// The session protocol version carried in [`Msg::Open`].
pub const SESSION_VERSION: u8 = 1;

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame: {0}")]
pub struct FrameError(pub &'static str);

/// One message of a sync session (a bidirectional stream opened by the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// First client frame: which store this session is about.
    Open {
        /// Session protocol version ([`SESSION_VERSION`]).
        version: u8,
        /// The store.
        store: StoreId,
    },
    /// A Negentropy v1 message (client → server and back).
    Reconcile(Vec<u8>),
    /// Asks for these witnessed intentions.
    Want(Vec<Hash>),
    /// Signed intentions, in causal order; `last` ends the answer to one request (or a push).
    Intentions {
        /// Encoded signed intentions.
        items: Vec<Vec<u8>>,
        /// True on the final frame of this answer.
        last: bool,
    },
    /// Asks for the missing causal history of `targets` given what the client holds.
    Chain {
        /// Hashes the client is missing.
        targets: Vec<Hash>,
        /// The client's newest chain position per author.
        frontier: Vec<(PubKey, u64)>,
    },
    /// Asks for witness records from `from_seq`.
    Records {
        /// First sequence number wanted (in the server's witness log).
        from_seq: u64,
        /// About how many records.
        limit: u32,
    },
    /// Witness records, ending on an attested record, with that attestation.
    RecordPage {
        /// Consecutive records.
        records: Vec<WitnessRecord>,
        /// The attestation of the last record (absent when `records` is empty).
        attestation: Option<WitnessAttestation>,
    },
    /// The sender has nothing more to ask or send in this session.
    Done,
    /// The server will not serve this session (unknown store, not allowed, busy).
    Refused(String),
    /// First client frame of a join: the client presents an invite's secret for `store`.
    Join {
        /// Session protocol version ([`SESSION_VERSION`]).
        version: u8,
        /// The store the invite is for.
        store: StoreId,
        /// The invite's secret (the inviter keeps only its BLAKE3 hash).
        secret: [u8; 32],
        /// The client's newest position in its own chain of that store (0: none), so a
        /// re-activation after a revocation knows where the client's chain stands.
        tip: u64,
        /// The same for the child stores (at any depth) the client holds of that store, so
        /// their re-activations know it too (at most [`MAX_JOIN_CHILDREN`]).
        children: Vec<(StoreId, u64)>,
    },
    /// The join was accepted: the client is now a peer of the store and may bootstrap it.
    Welcome,
    /// First client frame of a snapshot fetch: the client (a peer of `store`) asks for the
    /// state at the server's final epoch and what the server holds of the log.
    SnapshotOpen {
        /// Session protocol version ([`SESSION_VERSION`]).
        version: u8,
        /// The store.
        store: StoreId,
    },
    /// One part of an encoded snapshot: parts arrive in order, each at most
    /// [`SNAPSHOT_PART`] bytes, until their lengths add up to `total`.
    SnapshotPart {
        /// Length of the whole encoded snapshot, the same in every part.
        total: u64,
        /// The next bytes.
        bytes: Vec<u8>,
    },
    /// The server's log is whole (it pruned nothing): bootstrap from its witness records.
    NoSnapshot,
    /// Asks for the server's prune floor (client, within a session).
    FloorQuery,
    /// The server's prune floor: per author, the chain position of its boundary, below which
    /// the server pruned that author's intentions (empty: it pruned nothing).
    Floor(Vec<(PubKey, u64)>),
    /// First client frame of a blob fetch: chunk ranges (1 KiB chunks, `[start, end)`,
    /// ascending, `end` = `u64::MAX` for "to the end") of blob `hash` of `store`.
    BlobGet {
        /// Session protocol version ([`SESSION_VERSION`]).
        version: u8,
        /// The store the blob belongs to.
        store: StoreId,
        /// The blob.
        hash: Hash,
        /// The chunk ranges wanted (at most [`MAX_BLOB_RANGES`]).
        ranges: Vec<(u64, u64)>,
    },
    /// The blob's size, first in the answer to a [`Msg::BlobGet`].
    BlobSize(u64),
    /// The next bytes of the verified stream of the ranges asked for (at most
    /// [`SNAPSHOT_PART`] bytes).
    BlobData(Vec<u8>),
    /// The end of the stream.
    BlobDone,
}

/// Most chunk ranges in one [`Msg::BlobGet`].
pub const MAX_BLOB_RANGES: usize = 4096;

/// Most bytes of a snapshot in one [`Msg::SnapshotPart`] (1 MiB).
pub const SNAPSHOT_PART: usize = 1024 * 1024;

const OPEN: u8 = 1;
const RECONCILE: u8 = 2;
const WANT: u8 = 3;
const INTENTIONS: u8 = 4;
const CHAIN: u8 = 5;
const RECORDS: u8 = 6;
const RECORD_PAGE: u8 = 7;
const DONE: u8 = 8;
const REFUSED: u8 = 9;
const JOIN: u8 = 10;
const WELCOME: u8 = 11;
const SNAPSHOT_OPEN: u8 = 12;
const SNAPSHOT_PART_TAG: u8 = 13;
const NO_SNAPSHOT: u8 = 14;
const FLOOR_QUERY: u8 = 15;
const FLOOR: u8 = 16;
const BLOB_GET: u8 = 17;
const BLOB_SIZE: u8 = 18;
const BLOB_DATA: u8 = 19;
const BLOB_DONE: u8 = 20;

/// Longest refusal reason kept, in bytes.
const MAX_REASON: usize = 1024;

/// A refusal reason as text: lossy UTF-8, clipped to [`MAX_REASON`] bytes at a character
/// boundary (so a decoded reason encodes to the same reason).
fn reason_text(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON)]).into_owned();
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Most child-store tips in one [`Msg::Join`].
pub const MAX_JOIN_CHILDREN: usize = 4096;

/// Most hashes in one [`Msg::Want`] or [`Msg::Chain`].
pub const MAX_HASHES: usize = 65_536;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError("frame ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: usize, max: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_size) > self.0.len() {
            return Err(FrameError("count larger than the frame"));
        }
        Ok(n)
    }
    fn end(self) -> Result<(), FrameError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(FrameError("trailing bytes"))
        }
    }
}

fn put_hashes(out: &mut Vec<u8>, hashes: &[Hash]) {
    out.extend((hashes.len() as u32).to_le_bytes());
    for h in hashes {
        out.extend(h.as_bytes());
    }
}

fn get_hashes(input: &mut Input<'_>) -> Result<Vec<Hash>, FrameError> {
    let n = input.count(32, MAX_HASHES)?;
    (0..n).map(|_| input.array().map(Hash)).collect()
}

/// Per-author chain positions: count u32 (at most [`MAX_HASHES`]), then (key, position u64).
fn put_positions(out: &mut Vec<u8>, positions: &[(PubKey, u64)]) {
    let positions = &positions[..positions.len().min(MAX_HASHES)];
    out.extend((positions.len() as u32).to_le_bytes());
    for (author, pos) in positions {
        out.extend(author.as_bytes());
        out.extend(pos.to_le_bytes());
    }
}

fn get_positions(input: &mut Input<'_>) -> Result<Vec<(PubKey, u64)>, FrameError> {
    let n = input.count(40, MAX_HASHES)?;
    (0..n)
        .map(|_| Ok((PubKey(input.array()?), input.u64()?)))
        .collect()
}

impl Msg {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Msg::Open { version, store } => {
                out.push(OPEN);
                out.push(*version);
                out.extend(store.as_bytes());
            }
            Msg::Reconcile(bytes) => {
                out.push(RECONCILE);
                out.extend(bytes);
            }
            Msg::Want(hashes) => {
                out.push(WANT);
                put_hashes(&mut out, hashes);
            }
            Msg::Intentions { items, last } => {
                out.reserve(6 + items.iter().map(|i| i.len() + 4).sum::<usize>());
                out.push(INTENTIONS);
                out.push(u8::from(*last));
                out.extend((items.len() as u32).to_le_bytes());
                for item in items {
                    out.extend((item.len() as u32).to_le_bytes());
                    out.extend(item);
                }
            }
            Msg::Chain { targets, frontier } => {
                out.push(CHAIN);
                put_hashes(&mut out, targets);
                put_positions(&mut out, frontier);
            }
            Msg::Records { from_seq, limit } => {
                out.push(RECORDS);
                out.extend(from_seq.to_le_bytes());
                out.extend(limit.to_le_bytes());
            }
            Msg::RecordPage {
                records,
                attestation,
            } => {
                out.push(RECORD_PAGE);
                match attestation {
                    Some(a) => {
                        out.push(1);
                        out.extend(a.seq.to_le_bytes());
                        out.extend(a.signature.as_bytes());
                    }
                    None => out.push(0),
                }
                out.extend((records.len() as u32).to_le_bytes());
                for r in records {
                    out.extend(r.encode());
                }
            }
            Msg::Done => out.push(DONE),
            Msg::Refused(reason) => {
                out.push(REFUSED);
                out.extend(reason_text(reason.as_bytes()).as_bytes());
            }
            Msg::Join {
                version,
                store,
                secret,
                tip,
                children,
            } => {
                out.push(JOIN);
                out.push(*version);
                out.extend(store.as_bytes());
                out.extend(secret);
                out.extend(tip.to_le_bytes());
                let children = &children[..children.len().min(MAX_JOIN_CHILDREN)];
                out.extend((children.len() as u32).to_le_bytes());
                for (id, tip) in children {
                    out.extend(id.as_bytes());
                    out.extend(tip.to_le_bytes());
                }
            }
            Msg::Welcome => out.push(WELCOME),
            Msg::SnapshotOpen { version, store } => {
                out.push(SNAPSHOT_OPEN);
                out.push(*version);
                out.extend(store.as_bytes());
            }
            Msg::SnapshotPart { total, bytes } => {
                out.reserve(9 + bytes.len());
                out.push(SNAPSHOT_PART_TAG);
                out.extend(total.to_le_bytes());
                out.extend(bytes);
            }
            Msg::NoSnapshot => out.push(NO_SNAPSHOT),
            Msg::FloorQuery => out.push(FLOOR_QUERY),
            Msg::Floor(marks) => {
                out.push(FLOOR);
                put_positions(&mut out, marks);
            }
            Msg::BlobGet {
                version,
                store,
                hash,
                ranges,
            } => {
                out.push(BLOB_GET);
                out.push(*version);
                out.extend(store.as_bytes());
                out.extend(hash.as_bytes());
                let ranges = &ranges[..ranges.len().min(MAX_BLOB_RANGES)];
                out.extend((ranges.len() as u32).to_le_bytes());
                for (start, end) in ranges {
                    out.extend(start.to_le_bytes());
                    out.extend(end.to_le_bytes());
                }
            }
            Msg::BlobSize(size) => {
                out.push(BLOB_SIZE);
                out.extend(size.to_le_bytes());
            }
            Msg::BlobData(bytes) => {
                out.reserve(1 + bytes.len());
                out.push(BLOB_DATA);
                out.extend(bytes);
            }
            Msg::BlobDone => out.push(BLOB_DONE),
        }
        out
    }

    /// Decodes one frame.
    ///
    /// # Errors
    /// [`FrameError`] for anything that is not exactly one well-formed message.
    pub fn decode(frame: &[u8]) -> Result<Msg, FrameError> {
        if frame.len() > MAX_FRAME {
            return Err(FrameError("frame larger than MAX_FRAME"));
        }
        let mut input = Input(frame);
        let msg = match input.u8()? {
            OPEN => Msg::Open {
                version: input.u8()?,
                store: StoreId(input.array()?),
            },
            RECONCILE => Msg::Reconcile(input.take(input.0.len())?.to_vec()),
            WANT => Msg::Want(get_hashes(&mut input)?),
            INTENTIONS => {
                let last = match input.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError("bad flag")),
                };
                let n = input.count(4, usize::MAX)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = input.u32()? as usize;
                    items.push(input.take(len)?.to_vec());
                }
                Msg::Intentions { items, last }
            }
            CHAIN => {
                let targets = get_hashes(&mut input)?;
                let frontier = get_positions(&mut input)?;
                Msg::Chain { targets, frontier }
            }
            RECORDS => Msg::Records {
                from_seq: input.u64()?,
                limit: input.u32()?,
            },
            RECORD_PAGE => {
                let attestation = match input.u8()? {
                    0 => None,
                    1 => Some(WitnessAttestation {
                        seq: input.u64()?,
                        signature: Signature(input.array()?),
                    }),
                    _ => return Err(FrameError("bad flag")),
                };
                let n = input.count(lattice_model::WITNESS_RECORD_LEN, usize::MAX)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let bytes = input.take(lattice_model::WITNESS_RECORD_LEN)?;
                    records.push(
                        WitnessRecord::decode(bytes)
                            .map_err(|_| FrameError("malformed witness record"))?,
                    );
                }
                Msg::RecordPage {
                    records,
                    attestation,
                }
            }
            DONE => Msg::Done,
            REFUSED => {
                let text = input.take(input.0.len())?;
                Msg::Refused(reason_text(text))
            }
            JOIN => {
                let version = input.u8()?;
                let store = StoreId(input.array()?);
                let secret = input.array()?;
                let tip = input.u64()?;
                let n = input.count(40, MAX_JOIN_CHILDREN)?;
                let mut children = Vec::with_capacity(n);
                for _ in 0..n {
                    children.push((StoreId(input.array()?), input.u64()?));
                }
                Msg::Join {
                    version,
                    store,
                    secret,
                    tip,
                    children,
                }
            }
            WELCOME => Msg::Welcome,
            SNAPSHOT_OPEN => Msg::SnapshotOpen {
                version: input.u8()?,
                store: StoreId(input.array()?),
            },
            SNAPSHOT_PART_TAG => {
                let total = input.u64()?;
                let bytes = input.take(input.0.len())?;
                if bytes.len() > SNAPSHOT_PART {
                    return Err(FrameError("snapshot part larger than SNAPSHOT_PART"));
                }
                Msg::SnapshotPart {
                    total,
                    bytes: bytes.to_vec(),
                }
            }
            NO_SNAPSHOT => Msg::NoSnapshot,
            FLOOR_QUERY => Msg::FloorQuery,
            FLOOR => Msg::Floor(get_positions(&mut input)?),
            BLOB_GET => {
                let version = input.u8()?;
                let store = StoreId(input.array()?);
                let hash = Hash(input.array()?);
                let n = input.count(16, MAX_BLOB_RANGES)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push((input.u64()?, input.u64()?));
                }
                Msg::BlobGet {
                    version,
                    store,
                    hash,
                    ranges,
                }
            }
            BLOB_SIZE => Msg::BlobSize(input.u64()?),
            BLOB_DATA => {
                let bytes = input.take(input.0.len())?;
                if bytes.len() > SNAPSHOT_PART {
                    return Err(FrameError("blob data larger than SNAPSHOT_PART"));
                }
                Msg::BlobData(bytes.to_vec())
            }
            BLOB_DONE => Msg::BlobDone,
            _ => return Err(FrameError("unknown message tag")),
        };
        input.end()?;
        Ok(msg)
    }
}

/// A gossip message: one new intention of a store, or just its hash when it is too big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMsg {
    /// A whole signed intention.
    Intention {
        /// The store.
        store: StoreId,
        /// The encoded signed intention.
        bytes: Vec<u8>,
    },
    /// A new intention too big for gossip: fetch it from the sender.
    Announce {
        /// The store.
        store: StoreId,
        /// Its hash.
        hash: Hash,
    },
}

const G_INTENTION: u8 = 1;
const G_ANNOUNCE: u8 = 2;

impl GossipMsg {
    /// The intention (whole, or announced) for `store`, chosen by size.
    pub fn for_intention(store: StoreId, hash: Hash, bytes: &[u8]) -> GossipMsg {
        if bytes.len() + 33 <= MAX_GOSSIP {
            GossipMsg::Intention {
                store,
                bytes: bytes.to_vec(),
            }
        } else {
            GossipMsg::Announce { store, hash }
        }
    }

    /// The store the message is about.
    pub fn store(&self) -> StoreId {
        match self {
            GossipMsg::Intention { store, .. } | GossipMsg::Announce { store, .. } => *store,
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            GossipMsg::Intention { store, bytes } => {
                out.push(G_INTENTION);
                out.extend(store.as_bytes());
                out.extend(bytes);
            }
            GossipMsg::Announce { store, hash } => {
                out.push(G_ANNOUNCE);
                out.extend(store.as_bytes());
                out.extend(hash.as_bytes());
            }
        }
        out
    }

    /// Decodes a message.
    ///
    /// # Errors
    /// [`FrameError`] when the message is oversized or malformed.
    pub fn decode(bytes: &[u8]) -> Result<GossipMsg, FrameError> {
        if bytes.len() > MAX_GOSSIP {
            return Err(FrameError("gossip message larger than MAX_GOSSIP"));
        }
        let mut input = Input(bytes);
        let tag = input.u8()?;
        let store = StoreId(input.array()?);
        let msg = match tag {
            G_INTENTION => GossipMsg::Intention {
                store,
                bytes: input.take(input.0.len())?.to_vec(),
            },
            G_ANNOUNCE => GossipMsg::Announce {
                store,
                hash: Hash(input.array()?),
            },
            _ => return Err(FrameError("unknown gossip tag")),
        };
        input.end()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reason_decodes_to_one_that_encodes_back_the_same() {
        // Found by the sync_frame fuzzer: invalid UTF-8 expands when made lossy.
        let frame = include_bytes!("../tests/fuzz-regressions/sync_frame-refused-reason.bin");
        let msg = Msg::decode(frame).unwrap();
        assert_eq!(Msg::decode(&msg.encode()), Ok(msg.clone()));
        if let Msg::Refused(reason) = msg {
            assert!(reason.len() <= MAX_REASON);
        }
    }

    #[test]
    fn messages_round_trip_and_truncations_fail() {
        let record = WitnessRecord {
            store_id: StoreId([3; 32]),
            seq: 9,
            intention: Hash([4; 32]),
            prev: Hash([5; 32]),
            wall_ms: 77,
        };
        let all = vec![
            Msg::Open {
                version: 1,
                store: StoreId([1; 32]),
            },
            Msg::Reconcile(vec![0x61, 0, 1]),
            Msg::Want(vec![Hash([2; 32]), Hash([3; 32])]),
            Msg::Intentions {
                items: vec![vec![1, 2, 3], vec![]],
                last: true,
            },
            Msg::Chain {
                targets: vec![Hash([6; 32])],
                frontier: vec![(PubKey([7; 32]), 12)],
            },
            Msg::Records {
                from_seq: 5,
                limit: 100,
            },
            Msg::RecordPage {
                records: vec![record],
                attestation: Some(WitnessAttestation {
                    seq: 9,
                    signature: Signature([8; 64]),
                }),
            },
            Msg::Done,
            Msg::Refused("no".into()),
            Msg::Join {
                version: 1,
                store: StoreId([1; 32]),
                secret: [2; 32],
                tip: 7,
                children: vec![(StoreId([3; 32]), 4)],
            },
            Msg::Welcome,
            Msg::SnapshotOpen {
                version: 1,
                store: StoreId([5; 32]),
            },
            Msg::SnapshotPart {
                total: 10,
                bytes: vec![1, 2, 3],
            },
            Msg::NoSnapshot,
            Msg::FloorQuery,
            Msg::Floor(vec![(PubKey([8; 32]), 41), (PubKey([9; 32]), 2)]),
            Msg::BlobGet {
                version: 1,
                store: StoreId([1; 32]),
                hash: Hash([2; 32]),
                ranges: vec![(0, 16), (32, u64::MAX)],
            },
            Msg::BlobSize(12345),
            Msg::BlobData(vec![1, 2, 3]),
            Msg::BlobDone,
        ];
        for msg in all {
            let bytes = msg.encode();
            assert_eq!(Msg::decode(&bytes).unwrap(), msg);
            let fixed = !matches!(
                msg,
                Msg::Reconcile(_)
                    | Msg::Refused(_)
                    | Msg::Done
                    | Msg::Welcome
                    | Msg::SnapshotPart { .. }
                    | Msg::NoSnapshot
                    | Msg::FloorQuery
                    | Msg::BlobData(_)
                    | Msg::BlobDone
            );
            if fixed {
                for cut in 0..bytes.len() {
                    assert!(Msg::decode(&bytes[..cut]).is_err(), "{msg:?} cut at {cut}");
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            if fixed {
                assert!(Msg::decode(&longer).is_err());
            }
        }
        // A snapshot part over the limit is refused.
        let big = Msg::SnapshotPart {
            total: 1 << 30,
            bytes: vec![0; SNAPSHOT_PART + 1],
        };
        assert!(Msg::decode(&big.encode()).is_err());
        // A huge count with no bytes behind it is refused before allocating.
        let mut want = vec![WANT];
        want.extend(u32::MAX.to_le_bytes());
        assert!(Msg::decode(&want).is_err());
    }

    #[test]
    fn gossip_round_trips_and_big_intentions_are_announced() {
        let small = GossipMsg::for_intention(StoreId([1; 32]), Hash([2; 32]), &[9; 100]);
        assert!(matches!(small, GossipMsg::Intention { .. }));
        assert_eq!(GossipMsg::decode(&small.encode()).unwrap(), small);
        let big = GossipMsg::for_intention(StoreId([1; 32]), Hash([2; 32]), &vec![9; MAX_GOSSIP]);
        assert_eq!(
            big,
            GossipMsg::Announce {
                store: StoreId([1; 32]),
                hash: Hash([2; 32])
            }
        );
        assert_eq!(GossipMsg::decode(&big.encode()).unwrap(), big);
        assert!(GossipMsg::decode(&[G_ANNOUNCE, 1]).is_err());
        assert!(GossipMsg::decode(&vec![G_INTENTION; MAX_GOSSIP + 1]).is_err());
    }
}
