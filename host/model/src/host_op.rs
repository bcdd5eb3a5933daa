//! Host intentions: the ops of intentions flagged [`IntentionFlags::host`], written and read
//! by the host (epochs and their acknowledgements, `docs/epochs.md`); no guest applies them.
//!
//! # Canonical encoding, version 1
//!
//! All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `"LH"` |
//! | 2 | 1 | version `1` |
//! | 3 | 1 | kind: `1` epoch, `2` ack, `3` frontier |
//!
//! A frontier has nothing more: it only gathers up to 256 tips as deps for an epoch of a
//! store with more authors than one intention may cite. An epoch continues with `number u64 ‖
//! cause u8 ‖ state [32] ‖ n u16 ‖ n × 32-byte acker keys` (strictly ascending, `n` ≤ [`MAX_EPOCH_ACKERS`]); an ack with `state [32] ‖
//! n u16 ‖ n × 32-byte epoch hashes` (strictly ascending, 1 ≤ `n` ≤ [`MAX_ACKED_EPOCHS`]).
//! `state` is the writer's hash of the state at the epoch (the newest one acked), all zero
//! when it does not hold it. Nothing may follow.
//!
//! [`IntentionFlags::host`]: crate::IntentionFlags::host

use crate::codec::Reader;
use crate::error::DecodeError;
use crate::hash::Hash;
use crate::keys::PubKey;

/// Magic bytes opening a host op.
pub const HOST_OP_MAGIC: [u8; 2] = *b"LH";
/// The host op encoding version this build writes and reads.
pub const HOST_OP_VERSION: u8 = 1;
/// The most peers one epoch may require acknowledgements from.
pub const MAX_EPOCH_ACKERS: usize = 4096;
/// The most epochs one ack may acknowledge (each is also one of its deps).
pub const MAX_ACKED_EPOCHS: usize = 255;

const KIND_EPOCH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_FRONTIER: u8 = 3;

/// Why an epoch was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EpochCause {
    /// The store's first epoch, after its first system writes.
    Genesis,
    /// A peer was revoked.
    Revocation,
    /// A revoked or dormant peer became active again.
    Reactivation,
    /// A peer's key changed.
    KeyChange,
    /// A pruning cut was asked for.
    PruneCut,
    /// Joins epochs written concurrently (the same number, neither citing the other): a
    /// member whose state at an epoch holds one that is not the current one writes it.
    Merge,
}

impl EpochCause {
    fn to_byte(self) -> u8 {
        match self {
            EpochCause::Genesis => 0,
            EpochCause::Revocation => 1,
            EpochCause::Reactivation => 2,
            EpochCause::KeyChange => 3,
            EpochCause::PruneCut => 4,
            EpochCause::Merge => 5,
        }
    }

    /// The cause as the system table names it (`genesis`, `revocation`, `reactivation`,
    /// `key-change`, `prune-cut`, `merge`).
    pub fn name(self) -> &'static str {
        match self {
            EpochCause::Genesis => "genesis",
            EpochCause::Revocation => "revocation",
            EpochCause::Reactivation => "reactivation",
            EpochCause::KeyChange => "key-change",
            EpochCause::PruneCut => "prune-cut",
            EpochCause::Merge => "merge",
        }
    }

    /// The cause named `name` (see [`EpochCause::name`]).
    pub fn from_name(name: &str) -> Option<EpochCause> {
        [
            EpochCause::Genesis,
            EpochCause::Revocation,
            EpochCause::Reactivation,
            EpochCause::KeyChange,
            EpochCause::PruneCut,
            EpochCause::Merge,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }

    fn from_byte(byte: u8) -> Result<EpochCause, DecodeError> {
        Ok(match byte {
            0 => EpochCause::Genesis,
            1 => EpochCause::Revocation,
            2 => EpochCause::Reactivation,
            3 => EpochCause::KeyChange,
            4 => EpochCause::PruneCut,
            5 => EpochCause::Merge,
            other => {
                return Err(DecodeError::BadHostOp(format!(
                    "unknown epoch cause {other}"
                )));
            }
        })
    }
}

/// What a host intention says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostOp {
    /// A cut every peer agrees on: the intention cites genesis and every author tip its author
    /// had; it is settled once every required acker's tip reaches it.
    Epoch {
        /// 1 + the largest number among the epochs its deps reach (0 for the first).
        number: u64,
        /// Why it was written.
        cause: EpochCause,
        /// The writer's hash of the state at this epoch ([`Hash::ZERO`]: not known).
        state: Hash,
        /// The peers whose acknowledgement settles it, strictly ascending.
        required: Vec<PubKey>,
    },
    /// Acknowledges epochs (also cited as deps), strictly ascending.
    Ack {
        /// The epochs acknowledged.
        epochs: Vec<Hash>,
        /// The writer's hash of the state at the newest epoch acknowledged ([`Hash::ZERO`]:
        /// not known, as on a node without the store's module).
        state: Hash,
    },
    /// Gathers tips (its deps) for an epoch that must cite more than one intention can.
    Frontier,
}

impl HostOp {
    /// Encodes canonically. Lists are sorted and deduplicated first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&HOST_OP_MAGIC);
        out.push(HOST_OP_VERSION);
        match self {
            HostOp::Epoch {
                number,
                cause,
                state,
                required,
            } => {
                out.push(KIND_EPOCH);
                out.extend_from_slice(&number.to_le_bytes());
                out.push(cause.to_byte());
                out.extend_from_slice(state.as_bytes());
                let mut keys: Vec<&PubKey> = required.iter().collect();
                keys.sort_unstable();
                keys.dedup();
                put_list(&mut out, keys.iter().map(|k| k.as_bytes()));
            }
            HostOp::Ack { epochs, state } => {
                out.push(KIND_ACK);
                out.extend_from_slice(state.as_bytes());
                let mut hashes: Vec<&Hash> = epochs.iter().collect();
                hashes.sort_unstable();
                hashes.dedup();
                put_list(&mut out, hashes.iter().map(|h| h.as_bytes()));
            }
            HostOp::Frontier => out.push(KIND_FRONTIER),
        }
        out
    }

    /// Decodes a host op, checking every rule of the encoding.
    ///
    /// # Errors
    /// [`DecodeError`]: bad magic or version, truncation, trailing bytes, or
    /// [`DecodeError::BadHostOp`] for an unknown kind or cause, unsorted or duplicate entries,
    /// an ack of no epoch, or lists over their limits.
    pub fn decode(bytes: &[u8]) -> Result<HostOp, DecodeError> {
        let mut r = Reader::new(bytes);
        r.header(HOST_OP_MAGIC, HOST_OP_VERSION)?;
        let op = match r.u8()? {
            KIND_EPOCH => {
                let number = r.u64()?;
                let cause = EpochCause::from_byte(r.u8()?)?;
                let state = Hash(r.array::<32>()?);
                let required = take_list(&mut r, MAX_EPOCH_ACKERS, "acker")?
                    .into_iter()
                    .map(PubKey)
                    .collect();
                HostOp::Epoch {
                    number,
                    cause,
                    state,
                    required,
                }
            }
            KIND_ACK => {
                let state = Hash(r.array::<32>()?);
                let epochs: Vec<Hash> = take_list(&mut r, MAX_ACKED_EPOCHS, "epoch")?
                    .into_iter()
                    .map(Hash)
                    .collect();
                if epochs.is_empty() {
                    return Err(DecodeError::BadHostOp("an ack names no epoch".into()));
                }
                HostOp::Ack { epochs, state }
            }
            KIND_FRONTIER => HostOp::Frontier,
            other => {
                return Err(DecodeError::BadHostOp(format!(
                    "unknown host op kind {other}"
                )));
            }
        };
        r.finish()?;
        Ok(op)
    }
}

fn put_list<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a [u8; 32]>) {
    // Both lists are bounded far below u16::MAX by the limits the decoder checks.
    let count = u16::try_from(items.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for item in items.take(usize::from(count)) {
        out.extend_from_slice(item);
    }
}

fn take_list(r: &mut Reader<'_>, max: usize, what: &str) -> Result<Vec<[u8; 32]>, DecodeError> {
    let count = usize::from(r.u16()?);
    if count > max {
        return Err(DecodeError::BadHostOp(format!(
            "{count} {what} entries exceed the limit of {max}"
        )));
    }
    let mut items: Vec<[u8; 32]> = Vec::with_capacity(count);
    for _ in 0..count {
        let item = r.array::<32>()?;
        if items.last().is_some_and(|last| *last >= item) {
            return Err(DecodeError::BadHostOp(format!(
                "{what} entries are not sorted and unique"
            )));
        }
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn epoch(number: u64, required: Vec<PubKey>) -> HostOp {
        HostOp::Epoch {
            number,
            cause: EpochCause::Revocation,
            state: Hash([0x5a; 32]),
            required,
        }
    }

    #[test]
    fn epochs_and_acks_round_trip_in_canonical_order() -> Result<(), DecodeError> {
        let op = epoch(3, vec![PubKey([9; 32]), PubKey([2; 32]), PubKey([9; 32])]);
        let bytes = op.encode();
        assert_eq!(
            HostOp::decode(&bytes)?,
            epoch(3, vec![PubKey([2; 32]), PubKey([9; 32])])
        );
        let ack = HostOp::Ack {
            epochs: vec![Hash([5; 32]), Hash([1; 32])],
            state: Hash([7; 32]),
        };
        assert_eq!(
            HostOp::decode(&ack.encode())?,
            HostOp::Ack {
                epochs: vec![Hash([1; 32]), Hash([5; 32])],
                state: Hash([7; 32]),
            }
        );
        assert_eq!(HostOp::Frontier.encode(), b"LH\x01\x03");
        assert_eq!(HostOp::decode(b"LH\x01\x03")?, HostOp::Frontier);
        assert!(HostOp::decode(b"LH\x01\x03\x00").is_err());
        for cause in [
            EpochCause::Genesis,
            EpochCause::PruneCut,
            EpochCause::KeyChange,
        ] {
            assert_eq!(EpochCause::from_name(cause.name()), Some(cause));
        }
        assert_eq!(EpochCause::from_name("whim"), None);
        Ok(())
    }

    #[test]
    fn the_example_in_protocol_md_is_exact() {
        let mut expected = b"LH\x01\x01".to_vec();
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.push(1);
        expected.extend_from_slice(&[0x5a; 32]);
        expected.extend_from_slice(&1u16.to_le_bytes());
        expected.extend_from_slice(&[0x11; 32]);
        assert_eq!(epoch(2, vec![PubKey([0x11; 32])]).encode(), expected);
        assert_eq!(expected.len(), 79);
    }

    #[test]
    fn malformed_host_ops_are_refused_with_a_reason() {
        let good = epoch(1, vec![PubKey([1; 32]), PubKey([2; 32])]).encode();
        // Keys out of order: swap the two 32-byte entries at the end.
        let mut swapped = good.clone();
        let n = swapped.len();
        let (a, b) = (good[n - 64..n - 32].to_vec(), good[n - 32..].to_vec());
        swapped[n - 64..n - 32].copy_from_slice(&b);
        swapped[n - 32..].copy_from_slice(&a);
        assert!(matches!(
            HostOp::decode(&swapped),
            Err(DecodeError::BadHostOp(_))
        ));
        let mut cause = good.clone();
        cause[12] = 99;
        assert!(matches!(
            HostOp::decode(&cause),
            Err(DecodeError::BadHostOp(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            HostOp::decode(&trailing),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
        let empty_ack = HostOp::Ack {
            epochs: vec![],
            state: Hash::ZERO,
        }
        .encode();
        assert!(matches!(
            HostOp::decode(&empty_ack),
            Err(DecodeError::BadHostOp(_))
        ));
        let mut kind = good;
        kind[3] = 7;
        assert!(matches!(
            HostOp::decode(&kind),
            Err(DecodeError::BadHostOp(_))
        ));
        assert!(matches!(
            HostOp::decode(b"LI\x01\x01"),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = HostOp::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_refused(number in any::<u64>(), keys in proptest::collection::vec(any::<[u8; 32]>(), 0..6), cut in any::<prop::sample::Index>()) {
            let bytes = epoch(number, keys.into_iter().map(PubKey).collect()).encode();
            let cut = cut.index(bytes.len());
            prop_assert!(HostOp::decode(&bytes[..cut]).is_err());
        }
    }
}
