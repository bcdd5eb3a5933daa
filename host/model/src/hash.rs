//! BLAKE3 hashes and the ids built from them.

use std::fmt;

use crate::error::ParseHexError;

/// A BLAKE3-256 digest.
///
/// `Display` prints the full lower-case hex; [`Hash::short`] the first 8 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash: "no predecessor" in an author chain or a witness chain.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Hashes `bytes` with BLAKE3.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Returns true for [`Hash::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Returns the first 8 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// [`ParseHexError`] when the text is not 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Hash, ParseHexError> {
        parse_hex::<32>(text).map(Hash)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

/// The id of a store: the hash of its genesis intention.
///
/// A genesis intention carries [`StoreId::GENESIS`] (all zero) in its store field, because
/// its own hash is not known while it is being built; every later intention of the store
/// carries the real id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StoreId(pub [u8; 32]);

impl StoreId {
    /// The placeholder a genesis intention carries in its store field.
    pub const GENESIS: StoreId = StoreId([0; 32]);

    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Returns the first 8 hex characters.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// [`ParseHexError`] when the text is not 64 hex characters.
    pub fn from_hex(text: &str) -> Result<StoreId, ParseHexError> {
        parse_hex::<32>(text).map(StoreId)
    }
}

impl From<Hash> for StoreId {
    fn from(hash: Hash) -> StoreId {
        StoreId(hash.0)
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreId({})", self.short())
    }
}

pub(crate) fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], ParseHexError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| ParseHexError {
        expected_chars: N * 2,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_short_is_eight_chars() -> Result<(), ParseHexError> {
        let h = Hash::of(b"abc");
        assert_eq!(Hash::from_hex(&h.to_string())?, h);
        assert_eq!(h.short().len(), 8);
        assert!(Hash::from_hex("zz").is_err());
        Ok(())
    }
}
