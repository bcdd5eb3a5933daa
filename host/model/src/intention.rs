//! Intentions: the signed, hashed unit of change in a store's DAG.
//!
//! # Canonical encoding, version 1
//!
//! All integers little-endian. The intention hash is BLAKE3 over exactly these bytes; the
//! author signs the 32-byte hash. `docs/protocol.md` has the same table and test vectors.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"LI"` |
//! | 2 | 1 | version `1` |
//! | 3 | 1 | flags: bit 0 `ephemeral`, bit 1 `supersedes_all`, bit 2 `system`, bit 3 `host` (only with `system`), other bits 0 |
//! | 4 | 32 | store id (all zero in a genesis intention) |
//! | 36 | 32 | author public key |
//! | 68 | 8 | HLC wall milliseconds |
//! | 76 | 4 | HLC counter |
//! | 80 | 32 | previous intention of this author in this store, zero for the first |
//! | 112 | 2 | dep count `n` ≤ [`MAX_CAUSAL_DEPS`] |
//! | 114 | 32·n | causal deps, strictly ascending, none zero |
//! | 114+32n | 4 | ops length `m` ≤ [`MAX_OPS_LEN`] |
//! | 118+32n | m | ops payload (opaque to the host) |
//!
//! A [`SignedIntention`] on the wire and on disk is these bytes followed by the 64-byte
//! Ed25519 signature.

use std::sync::Arc;

use crate::codec::Reader;
use crate::error::{DecodeError, IntentionError, SignError, SignatureError};
use crate::hash::{Hash, StoreId};
use crate::hlc::Hlc;
use crate::keys::{NodeKey, PubKey, Signature};

/// Magic bytes opening an encoded intention.
pub const INTENTION_MAGIC: [u8; 2] = *b"LI";
/// The intention encoding version this build writes and reads.
pub const INTENTION_VERSION: u8 = 1;
/// The most causal deps one intention may cite.
pub const MAX_CAUSAL_DEPS: usize = 256;
/// The largest ops payload, in bytes (1 MiB + 64 KiB: a 1 MiB user value and its framing).
pub const MAX_OPS_LEN: usize = 1024 * 1024 + 64 * 1024;
/// Bytes of an encoded intention before the deps.
pub const INTENTION_FIXED_LEN: usize = 114;
/// The largest valid encoded [`SignedIntention`], in bytes.
pub const MAX_SIGNED_INTENTION_LEN: usize =
    INTENTION_FIXED_LEN + 32 * MAX_CAUSAL_DEPS + 4 + MAX_OPS_LEN + 64;
/// The smallest valid encoded [`SignedIntention`], in bytes.
pub const MIN_SIGNED_INTENTION_LEN: usize = INTENTION_FIXED_LEN + 4 + 64;

/// Pruning hints an author attaches to an intention (used by later milestones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IntentionFlags {
    /// The intention's effect is short-lived and may be pruned once superseded.
    pub ephemeral: bool,
    /// The intention replaces the author's whole previous contribution.
    pub supersedes_all: bool,
    /// The intention belongs to the store's system partition (peers, children, name), projected
    /// by the system table guest; otherwise it belongs to the data partition.
    pub system: bool,
    /// A host intention of the system partition (an epoch or an ack, [`crate::HostOp`]): its
    /// ops are the host's encoding and no guest applies it. Only valid with `system`.
    pub host: bool,
}

impl IntentionFlags {
    const EPHEMERAL: u8 = 0b01;
    const SUPERSEDES_ALL: u8 = 0b10;
    const SYSTEM: u8 = 0b100;
    const HOST: u8 = 0b1000;

    /// Encodes as the flags byte.
    pub fn to_byte(self) -> u8 {
        (if self.ephemeral { Self::EPHEMERAL } else { 0 })
            | (if self.supersedes_all {
                Self::SUPERSEDES_ALL
            } else {
                0
            })
            | (if self.system { Self::SYSTEM } else { 0 })
            | (if self.host { Self::HOST } else { 0 })
    }

    /// Decodes the flags byte.
    ///
    /// # Errors
    /// [`DecodeError::UnknownFlags`] when undefined bits are set, or `host` without `system`.
    pub fn from_byte(byte: u8) -> Result<IntentionFlags, DecodeError> {
        let unknown = byte & !(Self::EPHEMERAL | Self::SUPERSEDES_ALL | Self::SYSTEM | Self::HOST);
        if unknown != 0 {
            return Err(DecodeError::UnknownFlags(unknown));
        }
        if byte & Self::HOST != 0 && byte & Self::SYSTEM == 0 {
            // A host intention always belongs to the system partition.
            return Err(DecodeError::UnknownFlags(Self::HOST));
        }
        Ok(IntentionFlags {
            ephemeral: byte & Self::EPHEMERAL != 0,
            supersedes_all: byte & Self::SUPERSEDES_ALL != 0,
            system: byte & Self::SYSTEM != 0,
            host: byte & Self::HOST != 0,
        })
    }
}

/// The unsigned body of an intention.
///
/// Fields are private so every value satisfies the structural rules: deps sorted, unique,
/// non-zero and at most [`MAX_CAUSAL_DEPS`]; ops at most [`MAX_OPS_LEN`]; a genesis
/// intention has no predecessor and no deps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intention {
    store_id: StoreId,
    author: PubKey,
    hlc: Hlc,
    prev: Hash,
    deps: Vec<Hash>,
    ops: Vec<u8>,
    flags: IntentionFlags,
}

impl Intention {
    /// Builds an intention; `deps` are sorted and deduplicated here.
    ///
    /// # Errors
    /// [`IntentionError`] when a limit is exceeded, a dep is zero, or a genesis
    /// ([`StoreId::GENESIS`]) intention has a predecessor or deps.
    pub fn new(
        store_id: StoreId,
        author: PubKey,
        hlc: Hlc,
        prev: Hash,
        mut deps: Vec<Hash>,
        ops: Vec<u8>,
        flags: IntentionFlags,
    ) -> Result<Intention, IntentionError> {
        deps.sort_unstable();
        deps.dedup();
        check_rules(&store_id, &prev, &deps, ops.len())?;
        if flags.host && !flags.system {
            return Err(IntentionError::HostOutsideSystem);
        }
        Ok(Intention {
            store_id,
            author,
            hlc,
            prev,
            deps,
            ops,
            flags,
        })
    }

    /// The store this intention belongs to ([`StoreId::GENESIS`] for a genesis intention).
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }
    /// The author's public key.
    pub fn author(&self) -> PubKey {
        self.author
    }
    /// The author's HLC timestamp.
    pub fn hlc(&self) -> Hlc {
        self.hlc
    }
    /// The author's previous intention in this store, or [`Hash::ZERO`].
    pub fn prev(&self) -> Hash {
        self.prev
    }
    /// Causal deps: sorted, unique hashes that must be witnessed first.
    pub fn deps(&self) -> &[Hash] {
        &self.deps
    }
    /// The opaque ops payload.
    pub fn ops(&self) -> &[u8] {
        &self.ops
    }
    /// Pruning hints.
    pub fn flags(&self) -> IntentionFlags {
        self.flags
    }
    /// Returns true when this is a store's genesis intention.
    pub fn is_genesis(&self) -> bool {
        self.store_id == StoreId::GENESIS
    }

    /// Returns every hash this intention needs witnessed first: `prev` (unless zero), then deps.
    pub fn parents(&self) -> impl Iterator<Item = Hash> + '_ {
        (!self.prev.is_zero())
            .then_some(self.prev)
            .into_iter()
            .chain(self.deps.iter().copied())
    }

    /// Returns the length of [`Intention::encode`] without encoding.
    pub fn encoded_len(&self) -> usize {
        INTENTION_FIXED_LEN + 32 * self.deps.len() + 4 + self.ops.len()
    }

    /// Writes the canonical bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + 64);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&INTENTION_MAGIC);
        out.push(INTENTION_VERSION);
        out.push(self.flags.to_byte());
        out.extend_from_slice(self.store_id.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.hlc.to_bytes());
        out.extend_from_slice(self.prev.as_bytes());
        // The constructor bounds deps by MAX_CAUSAL_DEPS (256) and ops by MAX_OPS_LEN (1 MiB + 64 KiB),
        // so both lengths fit their fields.
        out.extend_from_slice(&(self.deps.len() as u16).to_le_bytes());
        for dep in &self.deps {
            out.extend_from_slice(dep.as_bytes());
        }
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.ops);
    }

    /// Returns the intention hash: BLAKE3 of the canonical bytes.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }

    fn decode_from(reader: &mut Reader<'_>) -> Result<Intention, DecodeError> {
        reader.header(INTENTION_MAGIC, INTENTION_VERSION)?;
        let flags = IntentionFlags::from_byte(reader.u8()?)?;
        let store_id = StoreId(reader.array()?);
        let author = PubKey(reader.array()?);
        let hlc = Hlc::from_bytes(reader.array()?);
        let prev = Hash(reader.array()?);
        let count = usize::from(reader.u16()?);
        if count > MAX_CAUSAL_DEPS {
            return Err(IntentionError::TooManyDeps {
                count,
                max: MAX_CAUSAL_DEPS,
            }
            .into());
        }
        let mut deps = Vec::with_capacity(count);
        for _ in 0..count {
            let dep = Hash(reader.array()?);
            if deps.last().is_some_and(|last: &Hash| *last >= dep) {
                return Err(IntentionError::UnsortedDeps.into());
            }
            deps.push(dep);
        }
        let len = reader.u32()? as usize;
        if len > MAX_OPS_LEN {
            return Err(IntentionError::OpsTooLarge {
                len,
                max: MAX_OPS_LEN,
            }
            .into());
        }
        let ops = reader.take(len)?.to_vec();
        check_rules(&store_id, &prev, &deps, ops.len())?;
        Ok(Intention {
            store_id,
            author,
            hlc,
            prev,
            deps,
            ops,
            flags,
        })
    }

    /// Parses canonical bytes produced by [`Intention::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for truncated, oversized, non-canonical or rule-breaking input.
    pub fn decode(bytes: &[u8]) -> Result<Intention, DecodeError> {
        let mut reader = Reader::new(bytes);
        let intention = Intention::decode_from(&mut reader)?;
        reader.finish()?;
        Ok(intention)
    }
}

fn check_rules(
    store_id: &StoreId,
    prev: &Hash,
    deps: &[Hash],
    ops_len: usize,
) -> Result<(), IntentionError> {
    if deps.len() > MAX_CAUSAL_DEPS {
        return Err(IntentionError::TooManyDeps {
            count: deps.len(),
            max: MAX_CAUSAL_DEPS,
        });
    }
    if ops_len > MAX_OPS_LEN {
        return Err(IntentionError::OpsTooLarge {
            len: ops_len,
            max: MAX_OPS_LEN,
        });
    }
    if deps.iter().any(Hash::is_zero) {
        return Err(IntentionError::ZeroDep);
    }
    if *store_id == StoreId::GENESIS && (!prev.is_zero() || !deps.is_empty()) {
        return Err(IntentionError::GenesisWithParents);
    }
    Ok(())
}

/// An intention with its hash, signature and exact encoded bytes.
///
/// Cloning is cheap (the bytes are shared). Decoding does not verify the signature, so many
/// can be checked at once with [`crate::verify_batch`]; call [`SignedIntention::verify`] for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIntention {
    intention: Arc<Intention>,
    hash: Hash,
    signature: Signature,
    bytes: Arc<[u8]>,
}

impl SignedIntention {
    /// Signs `intention` with `key`, which must be its author.
    ///
    /// # Errors
    /// [`SignError::WrongAuthor`] when `key` is not the intention's author.
    pub fn sign(intention: Intention, key: &NodeKey) -> Result<SignedIntention, SignError> {
        if intention.author != key.public() {
            return Err(SignError::WrongAuthor {
                author: intention.author.short(),
                key: key.public().short(),
            });
        }
        let mut bytes = Vec::with_capacity(intention.encoded_len() + 64);
        intention.encode_into(&mut bytes);
        let hash = Hash::of(&bytes);
        let signature = key.sign(&hash);
        bytes.extend_from_slice(signature.as_bytes());
        Ok(SignedIntention {
            intention: Arc::new(intention),
            hash,
            signature,
            bytes: bytes.into(),
        })
    }

    /// Parses `body ‖ signature` and computes the hash. The signature is not verified.
    ///
    /// # Errors
    /// [`DecodeError`] for input that is too large, truncated, non-canonical or breaks a rule.
    pub fn decode(bytes: &[u8]) -> Result<SignedIntention, DecodeError> {
        if bytes.len() > MAX_SIGNED_INTENTION_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_INTENTION_LEN,
            });
        }
        if bytes.len() < MIN_SIGNED_INTENTION_LEN {
            return Err(DecodeError::Truncated {
                needed: MIN_SIGNED_INTENTION_LEN,
                got: bytes.len(),
            });
        }
        let mut reader = Reader::new(bytes);
        let intention = Intention::decode_from(&mut reader)?;
        let body_len = reader.pos();
        let signature = Signature(reader.array()?);
        reader.finish()?;
        let hash = Hash::of(&bytes[..body_len]);
        Ok(SignedIntention {
            intention: Arc::new(intention),
            hash,
            signature,
            bytes: bytes.into(),
        })
    }

    /// The intention.
    pub fn intention(&self) -> &Intention {
        &self.intention
    }
    /// The intention hash.
    pub fn hash(&self) -> Hash {
        self.hash
    }
    /// The author's signature over the hash.
    pub fn signature(&self) -> Signature {
        self.signature
    }
    /// The encoded bytes: canonical body followed by the signature.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The canonical body (what the hash covers).
    pub fn body(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - 64]
    }

    /// Verifies the author's signature over the hash (strict rules).
    ///
    /// # Errors
    /// [`SignatureError`] when the author key is unusable or the signature is wrong.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.intention.author.verify(&self.hash, &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_hash() -> impl Strategy<Value = Hash> {
        any::<[u8; 32]>().prop_map(Hash)
    }

    prop_compose! {
        fn arb_intention()(
            store in any::<[u8; 32]>(),
            seed in any::<[u8; 32]>(),
            wall in any::<u64>(),
            counter in any::<u32>(),
            prev in arb_hash(),
            deps in proptest::collection::vec(arb_hash(), 0..20),
            ops in proptest::collection::vec(any::<u8>(), 0..300),
            flags in 0u8..16,
        ) -> (Intention, NodeKey) {
            let key = NodeKey::from_seed(seed);
            let store = if store == [0; 32] { [1; 32] } else { store };
            let deps = deps.into_iter().filter(|d| !d.is_zero()).collect();
            let flags = IntentionFlags::from_byte(flags).unwrap_or_default();
            let intention = Intention::new(StoreId(store), key.public(), Hlc::new(wall, counter), prev, deps, ops, flags)
                .unwrap_or_else(|e| panic!("generator built an invalid intention: {e}"));
            (intention, key)
        }
    }

    #[test]
    fn a_host_intention_belongs_to_the_system_partition() {
        let host_only = IntentionFlags {
            host: true,
            ..IntentionFlags::default()
        };
        assert_eq!(
            IntentionFlags::from_byte(host_only.to_byte()),
            Err(DecodeError::UnknownFlags(0b1000))
        );
        let key = NodeKey::from_seed([3; 32]);
        let build = |flags| {
            Intention::new(
                StoreId([1; 32]),
                key.public(),
                Hlc::new(1, 0),
                Hash([2; 32]),
                vec![],
                vec![],
                flags,
            )
        };
        assert_eq!(build(host_only), Err(IntentionError::HostOutsideSystem));
        let system_host = IntentionFlags {
            system: true,
            ..host_only
        };
        let intention = build(system_host).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            IntentionFlags::from_byte(system_host.to_byte()),
            Ok(system_host)
        );
        assert_eq!(
            Intention::decode(&intention.encode()).map(|i| i.flags()),
            Ok(system_host)
        );
    }

    proptest! {
        #[test]
        fn encoding_round_trips((intention, key) in arb_intention()) {
            let bytes = intention.encode();
            prop_assert_eq!(bytes.len(), intention.encoded_len());
            prop_assert_eq!(&Intention::decode(&bytes).unwrap(), &intention);
            let signed = SignedIntention::sign(intention.clone(), &key).unwrap();
            let decoded = SignedIntention::decode(signed.as_bytes()).unwrap();
            prop_assert_eq!(decoded.hash(), intention.hash());
            prop_assert_eq!(decoded.intention(), &intention);
            prop_assert!(decoded.verify().is_ok());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedIntention::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_rejected((intention, key) in arb_intention(), cut in any::<prop::sample::Index>()) {
            let signed = SignedIntention::sign(intention, &key).unwrap();
            let bytes = signed.as_bytes();
            let cut = cut.index(bytes.len());
            prop_assert!(SignedIntention::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn decode_rejects_unsorted_deps_and_unknown_flags() {
        let key = NodeKey::from_seed([1; 32]);
        let intention = Intention::new(
            StoreId([2; 32]),
            key.public(),
            Hlc::new(1, 0),
            Hash::ZERO,
            vec![Hash([3; 32]), Hash([4; 32])],
            vec![],
            IntentionFlags::default(),
        )
        .unwrap();
        let mut bytes = intention.encode();
        // swap the two deps
        let (a, b) = (114, 146);
        let first: Vec<u8> = bytes[a..a + 32].to_vec();
        bytes.copy_within(b..b + 32, a);
        bytes[b..b + 32].copy_from_slice(&first);
        assert_eq!(
            Intention::decode(&bytes),
            Err(DecodeError::Invalid(IntentionError::UnsortedDeps))
        );
        let mut bytes = intention.encode();
        bytes[3] = 0x80;
        assert_eq!(
            Intention::decode(&bytes),
            Err(DecodeError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn genesis_cannot_have_parents() {
        let key = NodeKey::from_seed([1; 32]);
        let result = Intention::new(
            StoreId::GENESIS,
            key.public(),
            Hlc::new(1, 0),
            Hash([9; 32]),
            vec![],
            vec![],
            IntentionFlags::default(),
        );
        assert_eq!(result, Err(IntentionError::GenesisWithParents));
    }
}
