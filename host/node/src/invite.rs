//! Invite tokens: what `lattice store invite` prints and `lattice store join` takes.
//!
//! A token carries the store id, the inviter's key and direct addresses, a 32-byte random
//! secret and an expiry. The inviter's system table keeps only the secret's BLAKE3 hash, so a
//! token is single-use and can be checked without storing it.
//!
//! Text form: `lattice1` followed by unpadded base64url of `version 1 | store [32] |
//! inviter [32] | secret [32] | expires_ms u64 LE | n u8 | addr*n | checksum [4]`, addr =
//! `4 | ipv4 [4] | port u16 LE` or `6 | ipv6 [16] | port u16 LE`; the checksum is the first
//! four bytes of the BLAKE3 hash of everything before it.

use std::net::{IpAddr, SocketAddr};

use lattice_model::{PubKey, StoreId};

const PREFIX: &str = "lattice1";
const VERSION: u8 = 1;
/// Most addresses in a token.
pub const MAX_ADDRS: usize = 16;

/// A token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// It is not a Lattice invite at all.
    #[error(
        "this is not a Lattice invite token (they start with `lattice1`); copy the whole token"
    )]
    NotAToken,
    /// It is damaged (cut short, mistyped).
    #[error("the invite token is damaged ({0}); copy it again, whole")]
    Damaged(&'static str),
    /// It is from a newer version of Lattice.
    #[error("the invite token has version {0}; this Lattice reads version 1, upgrade it")]
    Version(u8),
}

/// An invite to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteToken {
    /// The store.
    pub store: StoreId,
    /// Who invites (the node to contact).
    pub inviter: PubKey,
    /// Where to reach the inviter.
    pub addrs: Vec<SocketAddr>,
    /// The one-time secret.
    pub secret: [u8; 32],
    /// When it stops being accepted (ms since the Unix epoch).
    pub expires_ms: u64,
}

impl InviteToken {
    /// The hash of the secret, as the system table records it.
    pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
        *blake3::hash(secret).as_bytes()
    }

    /// Encodes as text.
    pub fn encode(&self) -> String {
        let mut out = vec![VERSION];
        out.extend_from_slice(&self.store.0);
        out.extend_from_slice(&self.inviter.0);
        out.extend_from_slice(&self.secret);
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        let addrs = &self.addrs[..self.addrs.len().min(MAX_ADDRS)];
        out.push(addrs.len() as u8);
        for a in addrs {
            match a.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&a.port().to_le_bytes());
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(&sum.as_bytes()[..4]);
        format!("{PREFIX}{}", data_encoding::BASE64URL_NOPAD.encode(&out))
    }

    /// Decodes text (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// [`TokenError`] saying what is wrong.
    pub fn decode(text: &str) -> Result<InviteToken, TokenError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::NotAToken)?;
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| TokenError::Damaged("not base64url"))?;
        let Some((payload, sum)) = bytes.split_last_chunk::<4>() else {
            return Err(TokenError::Damaged("too short"));
        };
        if blake3::hash(payload).as_bytes()[..4] != sum[..] {
            return Err(TokenError::Damaged("checksum mismatch"));
        }
        let mut input = payload;
        let mut take = |n: usize| -> Result<&[u8], TokenError> {
            if input.len() < n {
                return Err(TokenError::Damaged("too short"));
            }
            let (head, rest) = input.split_at(n);
            input = rest;
            Ok(head)
        };
        let version = take(1)?[0];
        if version != VERSION {
            return Err(TokenError::Version(version));
        }
        let arr = |b: &[u8]| -> [u8; 32] {
            let mut out = [0; 32];
            out.copy_from_slice(b);
            out
        };
        let store = StoreId(arr(take(32)?));
        let inviter = PubKey(arr(take(32)?));
        let secret = arr(take(32)?);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(take(8)?);
        let expires_ms = u64::from_le_bytes(raw);
        let n = take(1)?[0] as usize;
        if n > MAX_ADDRS {
            return Err(TokenError::Damaged("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let ip: IpAddr = match take(1)?[0] {
                4 => {
                    let mut o = [0u8; 4];
                    o.copy_from_slice(take(4)?);
                    o.into()
                }
                6 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(take(16)?);
                    o.into()
                }
                _ => return Err(TokenError::Damaged("bad address")),
            };
            let port = take(2)?;
            addrs.push(SocketAddr::new(ip, u16::from_le_bytes([port[0], port[1]])));
        }
        if !take(0)?.is_empty() || !input.is_empty() {
            return Err(TokenError::Damaged("trailing bytes"));
        }
        Ok(InviteToken {
            store,
            inviter,
            addrs,
            secret,
            expires_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_damage_is_named() {
        let token = InviteToken {
            store: StoreId([1; 32]),
            inviter: PubKey([2; 32]),
            addrs: vec![
                "127.0.0.1:4000".parse().unwrap(),
                "[::1]:5000".parse().unwrap(),
            ],
            secret: [3; 32],
            expires_ms: 1_800_000_000_000,
        };
        let text = token.encode();
        assert!(text.starts_with("lattice1"));
        assert_eq!(InviteToken::decode(&format!(" {text}\n")), Ok(token));
        assert_eq!(InviteToken::decode("hello"), Err(TokenError::NotAToken));
        assert!(matches!(
            InviteToken::decode(&text[..text.len() - 3]),
            Err(TokenError::Damaged(_))
        ));
        let mut flipped = text.into_bytes();
        let last = flipped.len() - 10;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            InviteToken::decode(&flipped),
            Err(TokenError::Damaged("checksum mismatch"))
        );
    }
}
