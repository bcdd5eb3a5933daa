//! Error types of the model crate.

/// Text that should have been a hex id was not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected_chars} hex characters")]
pub struct ParseHexError {
    /// How many hex characters the id has.
    pub expected_chars: usize,
}

/// A signature or key failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The public key is malformed or of small order.
    #[error("public key is malformed or weak")]
    BadKey,
    /// The signature does not verify for this key and hash.
    #[error("signature does not verify")]
    Invalid,
}

/// Bytes that should hold a canonical intention or witness record do not.
///
/// Every variant is checked before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before the structure does.
    #[error("truncated: need at least {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed to continue.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The input is longer than the largest valid encoding; nothing was parsed.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Largest valid length.
        max: usize,
    },
    /// The leading magic bytes are wrong.
    #[error("bad magic bytes {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 2],
        /// The bytes expected.
        expected: [u8; 2],
    },
    /// The encoding version is not one this build understands.
    #[error("unsupported encoding version {0}")]
    UnsupportedVersion(u8),
    /// Flag bits that no version defines are set.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A reserved byte is not zero.
    #[error("reserved byte is {0:#04x}, must be 0")]
    Reserved(u8),
    /// Bytes remain after the structure.
    #[error("{extra} trailing bytes after the structure")]
    TrailingBytes {
        /// How many bytes remain.
        extra: usize,
    },
    /// A host op ([`crate::HostOp`]) breaks a rule of its encoding.
    #[error("bad host op: {0}")]
    BadHostOp(String),
    /// The structure is well-formed bytes but breaks an intention rule.
    #[error(transparent)]
    Invalid(#[from] IntentionError),
}

/// An intention breaks a structural rule (limits, canonical dep order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntentionError {
    /// More causal deps than [`crate::MAX_CAUSAL_DEPS`].
    #[error("{count} causal deps exceed the limit of {max}")]
    TooManyDeps {
        /// Deps given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The ops payload is larger than [`crate::MAX_OPS_LEN`].
    #[error("ops payload of {len} bytes exceeds the limit of {max}")]
    OpsTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Deps are not strictly ascending (unsorted or duplicated) in the encoding.
    #[error("causal deps are not sorted and unique")]
    UnsortedDeps,
    /// A dep is the zero hash.
    #[error("a causal dep is the zero hash")]
    ZeroDep,
    /// A genesis intention (store field zero) has a predecessor or deps.
    #[error("a genesis intention must have no predecessor and no deps")]
    GenesisWithParents,
    /// The `host` flag is set without the `system` flag.
    #[error("a host intention must belong to the system partition")]
    HostOutsideSystem,
}

/// An intention could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The intention names another author than the signing key.
    #[error("intention author {author} is not the signing key {key}")]
    WrongAuthor {
        /// Short id of the intention's author.
        author: String,
        /// Short id of the signing key.
        key: String,
    },
}
