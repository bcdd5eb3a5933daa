//! Snapshot fetches: a peer joining a store whose members pruned their history asks one of
//! them for a snapshot (the state at a final epoch and what the member holds of the log),
//! which travels as an opaque encoded blob in parts. The node layer makes and checks the
//! snapshot; this module only carries it.
//!
//! The client opens a stream with [`Msg::SnapshotOpen`]; the server answers with
//! [`Msg::SnapshotPart`]s in order until their lengths add up to the stated total, with
//! [`Msg::NoSnapshot`] when its log is whole (bootstrap from its witness records instead), or
//! with [`Msg::Refused`] and a reason.

use lattice_model::StoreId;

use crate::session::{Frames, SessionError};
use crate::wire::{Msg, SESSION_VERSION, SNAPSHOT_PART};

/// Bytes reserved ahead while a snapshot arrives (the stated total is only trusted as far as
/// the parts that actually arrive).
const RESERVE_AHEAD: usize = 64 * 1024 * 1024;

/// Client side: asks the server for a snapshot of `store` and collects its parts.
/// `progress` hears (bytes received, total) after each part.
///
/// Returns `None` when the server's log is whole ([`Msg::NoSnapshot`]).
///
/// # Errors
/// [`SessionError::Refused`] with the server's reason, or when the snapshot is larger than
/// `max_bytes`; [`SessionError::Misbehaved`] for parts that do not add up;
/// [`SessionError::Link`] when the stream ends early.
pub async fn fetch_snapshot<F: Frames>(
    io: &mut F,
    store: StoreId,
    max_bytes: u64,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<Option<Vec<u8>>, SessionError> {
    io.send(
        Msg::SnapshotOpen {
            version: SESSION_VERSION,
            store,
        }
        .encode(),
    )
    .await?;
    let mut out: Vec<u8> = Vec::new();
    let mut expected: Option<u64> = None;
    loop {
        let frame = io
            .recv()
            .await?
            .ok_or_else(|| SessionError::Link("stream ended before the snapshot did".into()))?;
        let (total, bytes) = match Msg::decode(&frame)? {
            Msg::SnapshotPart { total, bytes } => (total, bytes),
            Msg::NoSnapshot if expected.is_none() => return Ok(None),
            Msg::Refused(reason) => return Err(SessionError::Refused(reason)),
            _ => {
                return Err(SessionError::Misbehaved("expected a snapshot part".into()));
            }
        };
        match expected {
            None if total > max_bytes => {
                return Err(SessionError::Refused(format!(
                    "the snapshot is {total} bytes, more than the {max_bytes} this node takes"
                )));
            }
            None => expected = Some(total),
            Some(t) if t != total => {
                return Err(SessionError::Misbehaved(
                    "snapshot parts state different totals".into(),
                ));
            }
            Some(_) => {}
        }
        let got = out.len() as u64 + bytes.len() as u64;
        if got > total || (bytes.is_empty() && got < total) {
            return Err(SessionError::Misbehaved(
                "snapshot parts do not add up to their total".into(),
            ));
        }
        if out.capacity() - out.len() < bytes.len() {
            let left = usize::try_from(total - out.len() as u64).unwrap_or(usize::MAX);
            out.reserve(left.min(RESERVE_AHEAD).max(bytes.len()));
        }
        out.extend_from_slice(&bytes);
        progress(got, total);
        if got == total {
            return Ok(Some(out));
        }
    }
}

/// Server side: sends `encoded` (a whole encoded snapshot) in parts.
///
/// # Errors
/// [`SessionError::Link`] when the stream fails.
pub async fn send_snapshot<F: Frames>(io: &mut F, encoded: &[u8]) -> Result<(), SessionError> {
    let total = encoded.len() as u64;
    // An empty blob still goes as one (empty) part, so the client is never left waiting.
    let empty: [&[u8]; 1] = [&[]];
    let parts: Vec<&[u8]> = if encoded.is_empty() {
        empty.to_vec()
    } else {
        encoded.chunks(SNAPSHOT_PART).collect()
    };
    for part in parts {
        io.send(
            Msg::SnapshotPart {
                total,
                bytes: part.to_vec(),
            }
            .encode(),
        )
        .await?;
    }
    Ok(())
}

/// Server side: tells the client this log is whole, so it bootstraps from witness records.
///
/// # Errors
/// [`SessionError::Link`] when the stream fails.
pub async fn no_snapshot<F: Frames>(io: &mut F) -> Result<(), SessionError> {
    io.send(Msg::NoSnapshot.encode()).await?;
    Ok(())
}
