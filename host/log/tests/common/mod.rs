//! Helpers shared by the log's integration tests.

/// Adds `b` to `a` as 256-bit little-endian integers, wrapping: the sum the sync index keeps,
/// computed independently of the crate's own.
pub fn add256(a: &mut [u8; 32], b: &[u8; 32]) {
    let mut carry = 0u128;
    for lane in 0..4 {
        let x = u64::from_le_bytes(a[lane * 8..lane * 8 + 8].try_into().unwrap_or([0; 8])) as u128;
        let y = u64::from_le_bytes(b[lane * 8..lane * 8 + 8].try_into().unwrap_or([0; 8])) as u128;
        let s = x + y + carry;
        a[lane * 8..lane * 8 + 8].copy_from_slice(&(s as u64).to_le_bytes());
        carry = s >> 64;
    }
}
