//! The Lattice data model: ids, keys, the hybrid logical clock, intentions, witness records
//! and the canonical bytes that are hashed and signed.
//!
//! **Owns:** the canonical encodings (`docs/protocol.md` documents them byte by byte), the
//! structural limits ([`MAX_CAUSAL_DEPS`], [`MAX_OPS_LEN`], [`MAX_FUTURE_DRIFT_MS`]) and the
//! pure verification helpers (signatures, witness chain links).
//!
//! **Does not touch:** files, sockets, threads, redb, wasmtime or protobuf. Persisting keys and
//! clocks is the job of the crates above.
//!
//! **Blocking:** everything is synchronous, CPU-only and fast.
//!
//! **Errors:** [`DecodeError`] for bad bytes, [`IntentionError`] for rule violations,
//! [`SignatureError`], [`SignError`], [`ChainError`] and [`ParseHexError`].
//!
//! **Features:** none.
//!
//! ```
//! use lattice_model::{Hash, Hlc, Intention, IntentionFlags, NodeKey, SignedIntention, StoreId};
//!
//! let key = NodeKey::from_seed([1; 32]);
//! let genesis = Intention::new(StoreId::GENESIS, key.public(), Hlc::new(1, 0), Hash::ZERO,
//!     vec![], b"kv".to_vec(), IntentionFlags::default())?;
//! let signed = SignedIntention::sign(genesis, &key)?;
//! let store = StoreId::from(signed.hash());
//! let decoded = SignedIntention::decode(signed.as_bytes())?;
//! decoded.verify()?;
//! assert_eq!(StoreId::from(decoded.hash()), store);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod codec;
mod error;
mod hash;
mod hlc;
mod host_op;
mod intention;
mod keys;
mod witness;

pub use error::{DecodeError, IntentionError, ParseHexError, SignError, SignatureError};
pub use hash::{Hash, StoreId};
pub use hlc::{Hlc, HlcClock, MAX_FUTURE_DRIFT_MS};
pub use host_op::{
    EpochCause, HOST_OP_MAGIC, HOST_OP_VERSION, HostOp, MAX_ACKED_EPOCHS, MAX_EPOCH_ACKERS,
};
pub use intention::{
    INTENTION_FIXED_LEN, INTENTION_MAGIC, INTENTION_VERSION, Intention, IntentionFlags,
    MAX_CAUSAL_DEPS, MAX_OPS_LEN, MAX_SIGNED_INTENTION_LEN, MIN_SIGNED_INTENTION_LEN,
    SignedIntention,
};
pub use keys::{NodeKey, PubKey, Signature, verify_batch};
pub use witness::{
    ChainError, ChainVerifier, WITNESS_MAGIC, WITNESS_RECORD_LEN, WITNESS_VERSION,
    WitnessAttestation, WitnessRecord,
};
