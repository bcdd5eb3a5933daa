//! Witness records: a node's local, hash-chained total order of the intentions it accepted.
//!
//! # Canonical encoding, version 1 (116 bytes, little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"LW"` |
//! | 2 | 1 | version `1` |
//! | 3 | 1 | reserved, `0` |
//! | 4 | 32 | store id |
//! | 36 | 8 | sequence number, from 1 |
//! | 44 | 32 | intention hash |
//! | 76 | 32 | hash of the previous record's bytes, zero for sequence 1 |
//! | 108 | 8 | local wall milliseconds at witnessing |
//!
//! The record hash is BLAKE3 over the 116 bytes. Records are not signed one by one: because
//! each record's hash covers its predecessor's, a [`WitnessAttestation`] (the node's signature
//! over one record hash) attests that record and every record before it. The log writes one
//! attestation per committed batch.

use crate::codec::Reader;
use crate::error::{DecodeError, SignatureError};
use crate::hash::{Hash, StoreId};
use crate::keys::{NodeKey, PubKey, Signature};

/// Magic bytes opening an encoded witness record.
pub const WITNESS_MAGIC: [u8; 2] = *b"LW";
/// The witness record encoding version this build writes and reads.
pub const WITNESS_VERSION: u8 = 1;
/// Length of an encoded witness record.
pub const WITNESS_RECORD_LEN: usize = 116;

/// One entry of the witness log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessRecord {
    /// The store whose log this is.
    pub store_id: StoreId,
    /// Position in the local total order, from 1.
    pub seq: u64,
    /// The witnessed intention.
    pub intention: Hash,
    /// Hash of the previous record, [`Hash::ZERO`] for sequence 1.
    pub prev: Hash,
    /// Local wall-clock milliseconds when the intention was witnessed.
    pub wall_ms: u64,
}

impl WitnessRecord {
    /// Writes the canonical 116 bytes.
    pub fn encode(&self) -> [u8; WITNESS_RECORD_LEN] {
        let mut out = [0u8; WITNESS_RECORD_LEN];
        out[0..2].copy_from_slice(&WITNESS_MAGIC);
        out[2] = WITNESS_VERSION;
        out[3] = 0;
        out[4..36].copy_from_slice(self.store_id.as_bytes());
        out[36..44].copy_from_slice(&self.seq.to_le_bytes());
        out[44..76].copy_from_slice(self.intention.as_bytes());
        out[76..108].copy_from_slice(self.prev.as_bytes());
        out[108..116].copy_from_slice(&self.wall_ms.to_le_bytes());
        out
    }

    /// Parses the canonical bytes.
    ///
    /// # Errors
    /// [`DecodeError`] when the length, magic, version or reserved byte is wrong.
    pub fn decode(bytes: &[u8]) -> Result<WitnessRecord, DecodeError> {
        if bytes.len() > WITNESS_RECORD_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: WITNESS_RECORD_LEN,
            });
        }
        let mut reader = Reader::new(bytes);
        reader.header(WITNESS_MAGIC, WITNESS_VERSION)?;
        let reserved = reader.u8()?;
        if reserved != 0 {
            return Err(DecodeError::Reserved(reserved));
        }
        let record = WitnessRecord {
            store_id: StoreId(reader.array()?),
            seq: reader.u64()?,
            intention: Hash(reader.array()?),
            prev: Hash(reader.array()?),
            wall_ms: reader.u64()?,
        };
        reader.finish()?;
        Ok(record)
    }

    /// Returns the record hash: BLAKE3 of the canonical bytes.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }
}

/// A node's signature over one witness record hash, attesting that record and, through the
/// hash chain, every earlier record of the same log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessAttestation {
    /// Sequence number of the attested record.
    pub seq: u64,
    /// Signature by the witnessing node over the record hash.
    pub signature: Signature,
}

impl WitnessAttestation {
    /// Signs the record hash of `record` with the node key.
    pub fn sign(record: &WitnessRecord, key: &NodeKey) -> WitnessAttestation {
        WitnessAttestation {
            seq: record.seq,
            signature: key.sign(&record.hash()),
        }
    }

    /// Verifies the attestation against the record it names and the witnessing node's key.
    ///
    /// # Errors
    /// [`SignatureError`] when the sequence numbers differ or the signature does not verify.
    pub fn verify(&self, record: &WitnessRecord, witness: &PubKey) -> Result<(), SignatureError> {
        if record.seq != self.seq {
            return Err(SignatureError::Invalid);
        }
        witness.verify(&record.hash(), &self.signature)
    }
}

/// A witness chain broke one of its rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A record names another store.
    #[error("witness record {seq} belongs to store {found}, not {expected}")]
    WrongStore {
        /// Sequence number of the record.
        seq: u64,
        /// Short id of the store expected.
        expected: String,
        /// Short id of the store found.
        found: String,
    },
    /// Sequence numbers are not consecutive.
    #[error("witness record {found} follows {prev_seq}; expected {expected}")]
    SeqGap {
        /// The previous sequence number.
        prev_seq: u64,
        /// The sequence number expected.
        expected: u64,
        /// The sequence number found.
        found: u64,
    },
    /// A record does not cite its predecessor's hash.
    #[error("witness record {seq} does not link to record {}", seq - 1)]
    BrokenLink {
        /// Sequence number of the record whose link is wrong.
        seq: u64,
    },
}

/// Checks records one at a time, in order, for store id, consecutive sequence and hash links.
///
/// Used to verify a whole log, a log's tail, and witness records received while bootstrapping.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    store_id: StoreId,
    last_seq: u64,
    last_hash: Hash,
}

impl ChainVerifier {
    /// Starts at the beginning of a chain (the next record must be sequence 1).
    pub fn new(store_id: StoreId) -> ChainVerifier {
        ChainVerifier::resume(store_id, 0, Hash::ZERO)
    }

    /// Resumes after the record `last_seq` whose hash is `last_hash`.
    pub fn resume(store_id: StoreId, last_seq: u64, last_hash: Hash) -> ChainVerifier {
        ChainVerifier {
            store_id,
            last_seq,
            last_hash,
        }
    }

    /// Checks the next record and returns its hash.
    ///
    /// # Errors
    /// [`ChainError`] naming the rule the record breaks.
    pub fn push(&mut self, record: &WitnessRecord) -> Result<Hash, ChainError> {
        if record.store_id != self.store_id {
            return Err(ChainError::WrongStore {
                seq: record.seq,
                expected: self.store_id.short(),
                found: record.store_id.short(),
            });
        }
        let expected = self.last_seq + 1;
        if record.seq != expected {
            return Err(ChainError::SeqGap {
                prev_seq: self.last_seq,
                expected,
                found: record.seq,
            });
        }
        if record.prev != self.last_hash {
            return Err(ChainError::BrokenLink { seq: record.seq });
        }
        let hash = record.hash();
        self.last_seq = record.seq;
        self.last_hash = hash;
        Ok(hash)
    }

    /// Sequence number of the last record checked (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Hash of the last record checked ([`Hash::ZERO`] before any).
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: Hash) -> WitnessRecord {
        WitnessRecord {
            store_id: StoreId([5; 32]),
            seq,
            intention: Hash::of(&seq.to_le_bytes()),
            prev,
            wall_ms: 1000 + seq,
        }
    }

    #[test]
    fn record_round_trips_and_chain_checks_links() -> Result<(), Box<dyn std::error::Error>> {
        let first = record(1, Hash::ZERO);
        assert_eq!(WitnessRecord::decode(&first.encode())?, first);
        let second = record(2, first.hash());
        let mut chain = ChainVerifier::new(StoreId([5; 32]));
        chain.push(&first)?;
        chain.push(&second)?;
        let bad = record(3, first.hash());
        assert_eq!(chain.push(&bad), Err(ChainError::BrokenLink { seq: 3 }));
        let key = NodeKey::from_seed([3; 32]);
        let att = WitnessAttestation::sign(&second, &key);
        att.verify(&second, &key.public())?;
        assert!(att.verify(&first, &key.public()).is_err());
        Ok(())
    }

    #[test]
    fn decode_rejects_wrong_length_and_magic() {
        let bytes = record(1, Hash::ZERO).encode();
        assert!(WitnessRecord::decode(&bytes[..100]).is_err());
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(
            WitnessRecord::decode(&bad),
            Err(DecodeError::BadMagic { .. })
        ));
    }
}
