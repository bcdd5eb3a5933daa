//! Pruning a store's log below a final epoch (docs/epochs.md, "Pruning"), in bounded steps
//! the store actor runs between write runs, and restoring the live state from the state at
//! an epoch when membership is settled again after history was pruned.
//!
//! What may go: intentions a final epoch reaches (every required member acknowledged it and
//! stated the same state hash), so every member has them and the state at the epoch holds
//! what they did. What stays besides what the log always keeps (genesis, system partition,
//! each author's boundary): every intention whose hash the projected state still names —
//! the state at the epoch or the live state. Honest writers cite only what their state names
//! (a key's heads) or authors' tips, so no new write cites a deleted intention.

use std::sync::Arc;
use std::time::Instant;

use lattice_log::{PruneStep, PruneTarget};
use lattice_model::Hash;
use lattice_runtime::StoreRuntime;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Store, epoch_state};
use crate::error::NodeError;

/// Most intentions looked at per prune step (one `log.db` transaction). A pass starts at
/// [`PRUNE_STEP_FIRST`] and sizes each step from the last one's duration so a step takes
/// about [`PRUNE_STEP_BUDGET`]: a step's cost grows with the log (random-key index deletes
/// touch more leaves in a larger file), and a write run queued behind it waits that long.
pub const PRUNE_STEP: usize = 2048;
/// Intentions looked at by a pass's first step.
pub const PRUNE_STEP_FIRST: usize = 256;
/// Fewest intentions looked at per step.
const PRUNE_STEP_MIN: usize = 32;
/// How long a prune step should take.
pub const PRUNE_STEP_BUDGET: std::time::Duration = std::time::Duration::from_millis(15);

/// The next step's size after a step of `size` took `took`: halved past the budget, doubled
/// well below it.
fn next_step_size(size: usize, took: std::time::Duration) -> usize {
    if took > PRUNE_STEP_BUDGET {
        (size / 2).max(PRUNE_STEP_MIN)
    } else if took < PRUNE_STEP_BUDGET / 3 {
        (size * 2).min(PRUNE_STEP)
    } else {
        size
    }
}

/// What a prune pass did, or why it did not run ([`Store::prune_now`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// The number of the epoch pruned below, when a pass ran.
    pub epoch: Option<u64>,
    /// Intentions looked at.
    pub scanned: u64,
    /// Intentions deleted.
    pub deleted: u64,
    /// Bytes of signed intentions deleted.
    pub bytes: u64,
    /// Why nothing was pruned, when nothing could be.
    pub not_now: Option<String>,
    /// How long the pass took, in ms.
    pub took_ms: u64,
}

impl PruneReport {
    fn not_now(why: impl Into<String>) -> PruneReport {
        PruneReport {
            not_now: Some(why.into()),
            ..PruneReport::default()
        }
    }

    /// The report as JSON (`epoch`, `scanned`, `deleted`, `bytes`, `not_now`, `took_ms`).
    pub fn to_json(&self) -> Value {
        json!({
            "epoch": self.epoch,
            "scanned": self.scanned,
            "deleted": self.deleted,
            "bytes": self.bytes,
            "not_now": self.not_now,
            "took_ms": self.took_ms,
        })
    }
}

/// Which final epoch a pass prunes below.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// The newest final epoch (`lattice store prune`).
    Newest,
    /// The final epoch this many epochs back (1: the newest).
    KeepEpochs(u64),
    /// The newest final epoch at least this many ms old.
    KeepMs(u64),
}

/// A pass under way on the store actor.
#[derive(Debug)]
pub(super) struct PruneRun {
    target: PruneTarget,
    number: u64,
    total: PruneStep,
    started: Instant,
    waiters: Vec<oneshot::Sender<Result<PruneReport, NodeError>>>,
}

impl PruneRun {
    fn new(
        target: PruneTarget,
        number: u64,
        waiters: Vec<oneshot::Sender<Result<PruneReport, NodeError>>>,
    ) -> PruneRun {
        PruneRun {
            target,
            number,
            total: PruneStep::default(),
            started: Instant::now(),
            waiters,
        }
    }
}

/// A set of hashes the projected state names, built from every 32-byte window of its bytes
/// (guests store hashes in any layout): a Bloom filter, so a false positive only keeps one
/// more intention.
struct Named {
    bits: Vec<u64>,
    mask: u64,
}

impl Named {
    fn new(state_bytes: usize) -> Named {
        // About 16 bits per window: under 1% false positives with two probes.
        let wanted = (state_bytes.max(1 << 16) as u64 * 16).next_power_of_two();
        let bits = wanted.min(1 << 31);
        Named {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    fn probes(window: &[u8]) -> (u64, u64) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&window[..8]);
        b.copy_from_slice(&window[8..16]);
        (u64::from_le_bytes(a), u64::from_le_bytes(b))
    }

    fn add_windows(&mut self, bytes: &[u8]) {
        for window in bytes.windows(32) {
            let (a, b) = Named::probes(window);
            for p in [a & self.mask, b & self.mask] {
                self.bits[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
    }

    fn contains(&self, hash: &Hash) -> bool {
        let (a, b) = Named::probes(hash.as_bytes());
        [a & self.mask, b & self.mask]
            .into_iter()
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Every hash named by `states`, whose files hold at most `size` bytes (sizes the
    /// filter without reading the states twice).
    fn of(states: &[&StoreRuntime], size: u64) -> Result<Named, NodeError> {
        let mut named = Named::new(usize::try_from(size).unwrap_or(usize::MAX));
        for state in states {
            state.visit_state(&mut |bytes| named.add_windows(bytes))?;
        }
        Ok(named)
    }
}

impl Store {
    /// Prunes below the newest final epoch now, all steps at once (embedded use and tests;
    /// a running node prunes in steps between write runs, see [`Store::begin_prune`]).
    ///
    /// # Errors
    /// Storage failures.
    pub fn prune_now(&mut self) -> Result<PruneReport, NodeError> {
        let (tx, mut rx) = oneshot::channel();
        self.begin_prune(Some(tx))?;
        while self.is_pruning() {
            self.prune_step();
        }
        rx.try_recv().unwrap_or_else(|_| {
            Ok(PruneReport::not_now(
                "the prune pass ended without a report",
            ))
        })
    }

    /// True while a prune pass is under way ([`Store::prune_step`] moves it on).
    pub fn is_pruning(&self) -> bool {
        self.pruning.is_some()
    }

    /// Starts a prune pass below the newest final epoch; `waiter` hears the report when it
    /// ends, or at once why it cannot run now. Joins a pass already under way.
    ///
    /// # Errors
    /// Storage failures while preparing the pass.
    pub fn begin_prune(
        &mut self,
        waiter: Option<oneshot::Sender<Result<PruneReport, NodeError>>>,
    ) -> Result<(), NodeError> {
        if let Some(run) = self.pruning.as_mut() {
            run.waiters.extend(waiter);
            return Ok(());
        }
        match self.prune_target(Policy::Newest)? {
            Ok((target, number)) => {
                self.pruning = Some(PruneRun::new(target, number, waiter.into_iter().collect()));
            }
            Err(why) => {
                debug!(store = %self.id.short(), "not pruning: {why}");
                if let Some(w) = waiter {
                    let _ = w.send(Ok(PruneReport::not_now(why)));
                }
            }
        }
        Ok(())
    }

    /// Runs one step of the pass under way (one `log.db` transaction of at most
    /// [`PRUNE_STEP`] intentions, sized to take about [`PRUNE_STEP_BUDGET`]) and answers its
    /// waiters when it ends.
    pub fn prune_step(&mut self) {
        let Some(run) = self.pruning.as_mut() else {
            return;
        };
        let began = Instant::now();
        let step = self
            .log
            .submit_prune(run.target.clone())
            .wait()
            .map_err(lattice_log::QueryError::from)
            .and_then(|r| r);
        run.target.step = next_step_size(run.target.step, began.elapsed());
        let finished = match step {
            Ok(step) => {
                run.total.scanned += step.scanned;
                run.total.deleted += step.deleted;
                run.total.bytes += step.bytes;
                step.done.then(|| {
                    Ok(PruneReport {
                        epoch: Some(run.number),
                        scanned: run.total.scanned,
                        deleted: run.total.deleted,
                        bytes: run.total.bytes,
                        not_now: None,
                        took_ms: run.started.elapsed().as_millis() as u64,
                    })
                })
            }
            Err(e) => Some(Err(e)),
        };
        if let Some(result) = finished {
            let Some(run) = self.pruning.take() else {
                return;
            };
            match &result {
                Ok(r) => info!(
                    store = %self.id.short(),
                    epoch = run.number,
                    deleted = r.deleted,
                    bytes = r.bytes,
                    ms = r.took_ms,
                    "pruned below the epoch"
                ),
                Err(e) => warn!(store = %self.id.short(), "pruning failed: {e}"),
            }
            for w in run.waiters {
                let _ = w.send(result.clone().map_err(NodeError::Query));
            }
        }
    }

    /// Asks the system table for a prune cut: an epoch the active members acknowledge (final
    /// at once when this node is the only one).
    ///
    /// # Errors
    /// As [`Store::system_call`].
    pub fn request_prune_cut(&mut self) -> Result<(), NodeError> {
        self.system_call(
            "request-epoch",
            &json!({"cause": "prune-cut", "nonce": lattice_log::system_now_ms()}),
        )?;
        self.project()?;
        Ok(())
    }

    /// Starts a pass when the store's prune policy (system table `prune-policy`) asks for
    /// one: called when an epoch becomes final. Failures are logged.
    pub(super) fn prune_by_policy(&mut self) {
        if self.pruning.is_some() || self.data.is_headless() {
            return;
        }
        let policy = match self.system_query("prune-policy", &json!({})) {
            Ok(v) => v,
            Err(e) => {
                debug!(store = %self.id.short(), "no prune policy read: {e}");
                return;
            }
        };
        let keep = policy.get("keep").and_then(Value::as_u64).unwrap_or(0);
        let policy = match policy.get("mode").and_then(Value::as_str) {
            Some("keep-epochs") => Policy::KeepEpochs(keep.max(1)),
            Some("keep-ms") => Policy::KeepMs(keep),
            _ => return,
        };
        match self.prune_target(policy) {
            Ok(Ok((target, number))) => {
                debug!(store = %self.id.short(), epoch = number, "pruning by policy");
                self.pruning = Some(PruneRun::new(target, number, Vec::new()));
            }
            Ok(Err(why)) => debug!(store = %self.id.short(), "not pruning by policy: {why}"),
            Err(e) => warn!(store = %self.id.short(), "preparing to prune failed: {e}"),
        }
    }

    /// The epoch `policy` prunes below: one the newest final epoch reaches (or itself).
    fn policy_epoch(
        &self,
        finalized: Hash,
        policy: Policy,
    ) -> Result<Option<(u64, Hash)>, NodeError> {
        let reader = self.log.reader();
        let epochs = self.system.epochs_newest_first(usize::MAX)?;
        let Some(&(newest, _)) = epochs.iter().find(|(_, h)| *h == finalized) else {
            return Ok(None);
        };
        let now = lattice_log::system_now_ms();
        for (number, hash) in epochs {
            if number > newest || !(hash == finalized || reader.is_ancestor(&hash, &finalized)?) {
                continue;
            }
            let fits = match policy {
                Policy::Newest => true,
                Policy::KeepEpochs(n) => number + (n - 1) <= newest,
                Policy::KeepMs(ms) => reader
                    .hlc_of(&hash)?
                    .is_some_and(|hlc| hlc.wall_ms.saturating_add(ms) <= now),
            };
            if fits {
                return Ok(Some((number, hash)));
            }
        }
        Ok(None)
    }

    /// What to prune below now, or why nothing can be: the epoch `policy` picks among those
    /// the newest final epoch reaches, when the state at an epoch holds that final epoch (or
    /// a later one) and the live state has applied it, both made durable first.
    fn prune_target(
        &mut self,
        policy: Policy,
    ) -> Result<Result<(PruneTarget, u64), String>, NodeError> {
        if self.data.is_headless() {
            return Ok(Err(
                "the store's module is not installed here, so it keeps its whole history".into(),
            ));
        }
        self.flush()?;
        let Some(finalized) = self.epochs.finalized else {
            return Ok(Err("no epoch is final yet: every required member must acknowledge one with the same state".into()));
        };
        let reader = self.log.reader();
        let Some(info) = reader.dag_info(&finalized)? else {
            return Ok(Err("the final epoch is not witnessed here".into()));
        };
        let Some((number, below)) = self.policy_epoch(finalized, policy)? else {
            return Ok(Err(
                "no final epoch is old enough for the store's prune policy".into(),
            ));
        };
        self.open_epoch_state()?;
        let reader = self.log.reader();
        let Some((data_at, system_at)) = self.epochs.state.as_ref() else {
            return Ok(Err("the state at the epoch is not open yet".into()));
        };
        let holds = match epoch_state::held_epoch(data_at)? {
            Some(h) => h == finalized || reader.is_ancestor(&finalized, &h)?,
            None => false,
        };
        if !holds {
            return Ok(Err(
                "the state at the epoch has not reached the final epoch yet".into(),
            ));
        }
        if self.data.cursor() < info.seq {
            return Ok(Err(
                "the live state has not applied the final epoch yet".into()
            ));
        }
        let size = [
            &self.files.state,
            &self.files.system,
            &self.files.epoch_state,
            &self.files.epoch_system,
        ]
        .into_iter()
        .map(|p| super::file_size(p))
        .sum();
        let named = Named::of(&[data_at, system_at, &self.data, &self.system], size)?;
        let target = PruneTarget {
            epoch: below,
            keep: Arc::new(move |h| named.contains(h)),
            step: PRUNE_STEP_FIRST,
        };
        Ok(Ok((target, number)))
    }

    /// True when this store's log was pruned (its history below the floor is gone).
    pub(super) fn is_pruned(&self) -> Result<bool, NodeError> {
        Ok(!self.log.reader().pruned_floor()?.is_empty())
    }

    /// After the data partition was reset in a pruned store: restores it from the state at
    /// the epoch and applies the intentions that state left pending (witnessed before its
    /// epoch but not reached by it); projection goes on from there.
    pub(super) fn restore_data_from_epoch_state(&mut self) -> Result<(), NodeError> {
        let id = self.id.short();
        let missing = || NodeError::PrunedStateMissing(id.clone());
        self.open_epoch_state()?;
        let Some((data_at, _)) = self.epochs.state.as_ref() else {
            return Err(missing());
        };
        if epoch_state::held_epoch(data_at)?.is_none() {
            return Err(missing());
        }
        self.data.restore_from(data_at)?;
        let reader = self.log.reader();
        let mut pending = Vec::new();
        for seq in epoch_state::pending_of(data_at)? {
            pending.extend(reader.witnessed_at(seq)?.map(|signed| (seq, signed)));
        }
        let cursor = self.data.cursor();
        self.data
            .apply_selected(reader, &pending, &self.filter, cursor, &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn steps_shrink_past_the_budget_and_grow_well_below_it() {
        assert_eq!(next_step_size(256, Duration::from_millis(40)), 128);
        assert_eq!(
            next_step_size(PRUNE_STEP_MIN, Duration::from_secs(1)),
            PRUNE_STEP_MIN
        );
        assert_eq!(next_step_size(256, Duration::from_millis(1)), 512);
        assert_eq!(next_step_size(PRUNE_STEP, Duration::ZERO), PRUNE_STEP);
        assert_eq!(next_step_size(256, Duration::from_millis(10)), 256);
    }
}
