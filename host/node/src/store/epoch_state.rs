//! The state at an epoch: the projection of exactly the intentions an epoch reaches, kept
//! beside the live projection (`epoch-state.db`, `epoch-system.db`).
//!
//! The live state holds everything witnessed here, in this node's witness order, including
//! writes concurrent with the epoch. The state at an epoch holds only what the epoch reaches,
//! so it is the same on every member, whatever order they received things in: its hash is
//! what members compare (and will sign), and it is the base that pruning and snapshot
//! bootstrap start from (docs/epochs.md).
//!
//! It advances when a newer epoch that reaches the one it holds becomes current: the
//! intentions the new epoch reaches that it has not applied yet — those witnessed since, plus
//! earlier ones left *pending* (witnessed before, but not reached by the older epoch) — are
//! applied in witness order, a topological order. An intention is reached by epoch `E` when
//! its chain position is at most `reach(E)` for its author (chains are linear), so the cost is
//! the work since the last epoch, never the history below it.

use std::collections::HashMap;

use lattice_log::LogReader;
use lattice_model::{Hash, PubKey, SignedIntention};
use lattice_runtime::{AuthorFilter, HostRecord, StoreRuntime};

use crate::error::NodeError;

/// Intentions read and applied per step.
const STEP: usize = 512;

/// What a partition's state at an epoch records beside its cursor: the epoch it holds and
/// the witnessed intentions at or below the cursor it has not applied (not reached yet).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Mark {
    epoch: Hash,
    pending: Vec<u64>,
}

impl Mark {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 8 * self.pending.len());
        out.extend_from_slice(self.epoch.as_bytes());
        for seq in &self.pending {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Mark, NodeError> {
        let corrupt = || {
            NodeError::Runtime(lattice_runtime::Error::Corrupt(
                "the state at an epoch has a damaged mark".into(),
            ))
        };
        let epoch: [u8; 32] = bytes
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let rest = bytes.get(32..).ok_or_else(corrupt)?;
        if rest.len() % 8 != 0 {
            return Err(corrupt());
        }
        let pending = rest
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok(Mark {
            epoch: Hash(epoch),
            pending,
        })
    }
}

/// The epoch a partition's state at an epoch holds (`None` before the first).
pub(super) fn held_epoch(runtime: &StoreRuntime) -> Result<Option<Hash>, NodeError> {
    Ok(match runtime.mark()? {
        Some(bytes) => Some(Mark::decode(&bytes)?.epoch),
        None => None,
    })
}

/// The witnessed intentions a partition's state at an epoch has not applied although they
/// lie at or below its cursor (not reached by its epoch).
pub(super) fn pending_of(runtime: &StoreRuntime) -> Result<Vec<u64>, NodeError> {
    Ok(match runtime.mark()? {
        Some(bytes) => Mark::decode(&bytes)?.pending,
        None => Vec::new(),
    })
}

/// Advances one partition's state at an epoch to `target` (a projected epoch), when `target`
/// reaches the epoch it holds; a concurrent epoch is skipped (a later epoch citing both comes).
/// Returns whether the state now holds `target`. Headless partitions do nothing.
///
/// # Errors
/// Storage failures; a DAG query over its visit cap.
pub(super) fn advance(
    runtime: &mut StoreRuntime,
    log: &LogReader,
    filter: &AuthorFilter,
    target: &HostRecord,
) -> Result<bool, NodeError> {
    if runtime.is_headless() {
        return Ok(false);
    }
    let mark = match runtime.mark()? {
        Some(bytes) => Mark::decode(&bytes)?,
        None => Mark::default(),
    };
    if mark.epoch == target.hash {
        return Ok(true);
    }
    if mark.epoch != Hash::ZERO && !log.is_ancestor(&mark.epoch, &target.hash)? {
        return Ok(false);
    }
    let reach: HashMap<PubKey, u64> = log.reach(&target.hash)?.into_iter().collect();
    let below = |signed: &SignedIntention| -> Result<bool, NodeError> {
        let author = signed.intention().author();
        let position = log.dag_info(&signed.hash())?.map_or(0, |i| i.author_seq);
        Ok(reach.get(&author).is_some_and(|r| position <= *r))
    };
    let mut skipped: Vec<u64> = Vec::new();
    // First the intentions left pending by the older epoch, then those witnessed since.
    let mut old: std::collections::VecDeque<u64> = mark.pending.into();
    while !old.is_empty() {
        let mut chosen = Vec::new();
        for seq in old.drain(..old.len().min(STEP)) {
            let Some(signed) = log.witnessed_at(seq)? else {
                continue;
            };
            if below(&signed)? {
                chosen.push((seq, signed));
            } else {
                skipped.push(seq);
            }
        }
        let pending: Vec<u64> = old.iter().chain(&skipped).copied().collect();
        let held = Mark {
            epoch: mark.epoch,
            pending,
        };
        let cursor = runtime.cursor();
        runtime.apply_selected(log, &chosen, filter, cursor, &held.encode())?;
    }
    let mut from = runtime.cursor() + 1;
    loop {
        let batch: Vec<(u64, SignedIntention)> = log
            .witnessed(from, STEP)?
            .into_iter()
            .filter(|(seq, _)| *seq <= target.seq)
            .collect();
        let done = batch.len() < STEP;
        let last = batch.last().map_or(target.seq, |(seq, _)| *seq);
        let mut chosen = Vec::new();
        for (seq, signed) in batch {
            if below(&signed)? {
                chosen.push((seq, signed));
            } else {
                skipped.push(seq);
            }
        }
        let (cursor, epoch) = if done {
            (target.seq, target.hash)
        } else {
            (last, mark.epoch)
        };
        let held = Mark {
            epoch,
            pending: skipped.clone(),
        };
        runtime.apply_selected(log, &chosen, filter, cursor, &held.encode())?;
        if done {
            return Ok(true);
        }
        from = last + 1;
    }
}

/// Makes `runtime` the state at `epoch` (witnessed here at `epoch_seq`) from a snapshot's
/// `rows`, with `pending` the intentions witnessed here up to the epoch that it does not
/// reach (applied when the live state is restored from it).
///
/// # Errors
/// Storage failures.
pub(super) fn load(
    runtime: &mut StoreRuntime,
    rows: &lattice_runtime::StateRows,
    epoch: Hash,
    epoch_seq: u64,
    pending: Vec<u64>,
) -> Result<(), NodeError> {
    let mark = Mark { epoch, pending };
    runtime.load_rows(rows, epoch_seq, &mark.encode())?;
    Ok(())
}
