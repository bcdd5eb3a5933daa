//! Negentropy set reconciliation over the log's sync index.

use std::sync::{Arc, Mutex};

use lattice_log::SyncSnapshot;
use lattice_model::Hash;
use negentropy::{Bound, Id, Item, Negentropy, NegentropyStorageBase};

/// Largest reconciliation message, in bytes (512 KiB). Bigger differences take more rounds.
pub const FRAME_LIMIT: u64 = 512 * 1024;

/// Reconciliation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer sent a message that is not valid Negentropy v1 (or out of turn).
    #[error("bad reconciliation message: {0}")]
    Protocol(String),
    /// Reading the local sync index failed.
    #[error(transparent)]
    Log(#[from] lattice_log::Error),
}

/// Where a storage failure waits until the session reports it.
type FailureSlot = Arc<Mutex<Option<lattice_log::Error>>>;

/// A [`SyncSnapshot`] as Negentropy storage. Storage failures cannot travel through
/// Negentropy's error type, so they are kept aside and reported by the session.
struct SnapshotStorage {
    snapshot: SyncSnapshot,
    failure: FailureSlot,
}

impl SnapshotStorage {
    fn fail(&self, err: lattice_log::Error) -> negentropy::Error {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(err);
        }
        negentropy::Error::BadRange
    }
}

fn item((wall, hash): (u64, [u8; 32])) -> Item {
    Item {
        timestamp: wall,
        id: Id::from_byte_array(hash),
    }
}

impl NegentropyStorageBase for SnapshotStorage {
    fn size(&self) -> Result<usize, negentropy::Error> {
        Ok(self.snapshot.len() as usize)
    }

    fn get_item(&self, i: usize) -> Result<Option<Item>, negentropy::Error> {
        match self.snapshot.item(i as u64) {
            Ok(found) => Ok(found.map(item)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn iterate(
        &self,
        begin: usize,
        end: usize,
        cb: &mut dyn FnMut(Item, usize) -> Result<bool, negentropy::Error>,
    ) -> Result<(), negentropy::Error> {
        let mut inner = Ok(());
        let walked = self
            .snapshot
            .for_each(
                begin as u64,
                end as u64,
                &mut |it, i| match cb(item(it), i as usize) {
                    Ok(more) => more,
                    Err(e) => {
                        inner = Err(e);
                        false
                    }
                },
            );
        walked.map_err(|e| self.fail(e))?;
        inner
    }

    fn find_lower_bound(&self, first: usize, last: usize, value: &Bound) -> usize {
        let prefix = &value.item.id[..value.id_len.min(32)];
        match self
            .snapshot
            .lower_bound(first as u64, last as u64, value.item.timestamp, prefix)
        {
            Ok(i) => i as usize,
            Err(e) => {
                self.fail(e);
                last
            }
        }
    }
    // `fingerprint` keeps Negentropy's default (a sum over `iterate`): negentropy 0.5.3 does not
    // export its `Fingerprint` type, so the bucket sums of the sync index cannot be used yet.
}

fn session(
    snapshot: SyncSnapshot,
    frame_limit: u64,
) -> Result<(Negentropy<'static, SnapshotStorage>, FailureSlot), SyncError> {
    let failure = Arc::new(Mutex::new(None));
    let storage = SnapshotStorage {
        snapshot,
        failure: failure.clone(),
    };
    let neg =
        Negentropy::owned(storage, frame_limit).map_err(|e| SyncError::Protocol(e.to_string()))?;
    Ok((neg, failure))
}

fn map_err(failure: &Mutex<Option<lattice_log::Error>>, e: negentropy::Error) -> SyncError {
    match failure.lock().ok().and_then(|mut f| f.take()) {
        Some(storage) => SyncError::Log(storage),
        None => SyncError::Protocol(e.to_string()),
    }
}

/// What one round told the initiator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Witnessed here but not at the peer: offer them.
    pub have: Vec<Hash>,
    /// Witnessed at the peer but not here: fetch them.
    pub need: Vec<Hash>,
    /// The next message to send, or `None` when reconciliation is complete.
    pub next: Option<Vec<u8>>,
}

/// The side that starts a reconciliation and learns the differences.
pub struct Initiator {
    neg: Negentropy<'static, SnapshotStorage>,
    failure: FailureSlot,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts over a snapshot of the local sync index; returns the first message.
    ///
    /// # Errors
    /// [`SyncError`] when the frame limit is invalid or the index cannot be read.
    pub fn start(
        snapshot: SyncSnapshot,
        frame_limit: u64,
    ) -> Result<(Initiator, Vec<u8>), SyncError> {
        let (mut neg, failure) = session(snapshot, frame_limit)?;
        let first = neg.initiate().map_err(|e| map_err(&failure, e))?;
        Ok((Initiator { neg, failure }, first))
    }

    /// Handles the responder's reply.
    ///
    /// # Errors
    /// [`SyncError::Protocol`] for a malformed reply; storage failures.
    pub fn step(&mut self, reply: &[u8]) -> Result<Step, SyncError> {
        let mut have = Vec::new();
        let mut need = Vec::new();
        let next = self
            .neg
            .reconcile_with_ids(reply, &mut have, &mut need)
            .map_err(|e| map_err(&self.failure, e))?;
        Ok(Step {
            have: have.iter().map(|id| Hash(**id)).collect(),
            need: need.iter().map(|id| Hash(**id)).collect(),
            next,
        })
    }
}

/// The side that answers a reconciliation.
pub struct Responder {
    neg: Negentropy<'static, SnapshotStorage>,
    failure: FailureSlot,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

impl Responder {
    /// Prepares to answer over a snapshot of the local sync index.
    ///
    /// # Errors
    /// [`SyncError`] when the frame limit is invalid.
    pub fn new(snapshot: SyncSnapshot, frame_limit: u64) -> Result<Responder, SyncError> {
        let (neg, failure) = session(snapshot, frame_limit)?;
        Ok(Responder { neg, failure })
    }

    /// Answers one message.
    ///
    /// # Errors
    /// [`SyncError::Protocol`] for a malformed message; storage failures.
    pub fn respond(&mut self, msg: &[u8]) -> Result<Vec<u8>, SyncError> {
        self.neg
            .reconcile(msg)
            .map_err(|e| map_err(&self.failure, e))
    }
}
