//! Ed25519 public keys, signatures and the node's signing key.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::error::{ParseHexError, SignatureError};
use crate::hash::{Hash, parse_hex};

/// An Ed25519 public key: the identity of an author or a witnessing node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PubKey(pub [u8; 32]);

impl PubKey {
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
    pub fn from_hex(text: &str) -> Result<PubKey, ParseHexError> {
        parse_hex::<32>(text).map(PubKey)
    }

    /// Decompresses the key for verification, refusing malformed and small-order (weak) keys.
    ///
    /// # Errors
    /// [`SignatureError::BadKey`] when the bytes are not a usable Ed25519 key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey)?;
        if key.is_weak() {
            return Err(SignatureError::BadKey);
        }
        Ok(key)
    }

    /// Verifies `signature` over the 32-byte `hash` with strict rules (canonical `s`,
    /// no small-order `R` or key).
    ///
    /// # Errors
    /// [`SignatureError`] when the key is unusable or the signature does not verify.
    pub fn verify(&self, hash: &Hash, signature: &Signature) -> Result<(), SignatureError> {
        let key = self.verifying_key()?;
        key.verify_strict(hash.as_bytes(), &signature.to_dalek())
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Display for PubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PubKey({})", self.short())
    }
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    pub(crate) fn to_dalek(self) -> ed25519_dalek::Signature {
        ed25519_dalek::Signature::from_bytes(&self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..4]))
    }
}

impl Default for Signature {
    fn default() -> Self {
        Signature([0; 64])
    }
}

/// A node's secret Ed25519 key: it authors intentions and attests the witness chain.
///
/// The secret never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
    public: PubKey,
}

impl NodeKey {
    /// Builds the key from its 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        let signing = SigningKey::from_bytes(&seed);
        let public = PubKey(signing.verifying_key().to_bytes());
        NodeKey { signing, public }
    }

    /// Returns the 32-byte secret seed (for writing the key file).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// Returns the public key.
    pub fn public(&self) -> PubKey {
        self.public
    }

    /// Signs a 32-byte hash.
    pub fn sign(&self, hash: &Hash) -> Signature {
        Signature(self.signing.sign(hash.as_bytes()).to_bytes())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.public.short())
    }
}

/// Verifies many (key, hash, signature) triples at once with Ed25519 batch verification.
///
/// Returns `Ok(())` when every signature verifies. On failure the caller should fall back
/// to [`PubKey::verify`] per item to find the culprits. Keys are checked for weakness first.
///
/// # Errors
/// [`SignatureError`] when any key is unusable or the batch does not verify.
pub fn verify_batch(items: &[(PubKey, Hash, Signature)]) -> Result<(), SignatureError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut messages: Vec<&[u8]> = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    for (key, hash, sig) in items {
        keys.push(key.verifying_key()?);
        messages.push(hash.as_bytes());
        signatures.push(sig.to_dalek());
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rejects_one_bad_signature() -> Result<(), SignatureError> {
        let key = NodeKey::from_seed([7; 32]);
        let mut items: Vec<_> = (0u8..8)
            .map(|i| {
                let h = Hash::of(&[i]);
                (key.public(), h, key.sign(&h))
            })
            .collect();
        verify_batch(&items)?;
        items[3].2.0[0] ^= 1;
        assert!(verify_batch(&items).is_err());
        assert!(key.public().verify(&items[3].1, &items[3].2).is_err());
        key.public().verify(&items[2].1, &items[2].2)
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let key = NodeKey::from_seed([9; 32]);
        let text = format!("{key:?}");
        assert!(!text.contains(&hex::encode(key.seed())));
    }
}
