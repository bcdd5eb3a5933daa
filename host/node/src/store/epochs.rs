//! Epochs on one store (docs/epochs.md): writing the epoch the system table asks for, this
//! node's acknowledgement of the epochs that name it, and settlement.

use lattice_log::Draft;
use lattice_model::{EpochCause, Hash, HostOp, IntentionFlags, MAX_CAUSAL_DEPS, PubKey};
use lattice_runtime::{HostRecord, WatchEvent};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use lattice_runtime::{Partition, StoreRuntime};

use super::{PeerStatus, Store, epoch_state};
use crate::error::NodeError;

/// A store's current epoch and its settlement ([`Store::epoch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStatus {
    /// Its number.
    pub number: u64,
    /// The epoch intention's hash.
    pub hash: Hash,
    /// Required ackers whose chains do not reach it yet; settled when empty.
    pub waiting: Vec<PubKey>,
    /// The hash of the state at this epoch, when this node holds it
    /// ([`Store::epoch_state_hash`]).
    pub state: Option<Hash>,
    /// Members whose epoch or ack states another hash of the state at this epoch than
    /// [`EpochStatus::state`]: a replica that diverged (or a hostile member).
    pub disagreeing: Vec<PubKey>,
    /// Settled, this node holds the state, and every required member stated the same hash
    /// (one without the store's module states none): a signed checkpoint of the state.
    pub finalized: bool,
}

impl EpochStatus {
    /// Whether every required acker's chain reaches the epoch.
    pub fn settled(&self) -> bool {
        self.waiting.is_empty()
    }

    /// As JSON: `number`, `hash`, `settled`, `waiting` (hex keys).
    pub fn to_json(&self) -> Value {
        json!({
            "number": self.number,
            "hash": self.hash.to_string(),
            "settled": self.settled(),
            "waiting": self.waiting.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "state": self.state.map(|h| h.to_string()),
            "finalized": self.finalized,
            "disagreeing": self.disagreeing.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// Most epochs looked back when measuring how far a peer is behind ([`Store::epoch_lag`]).
pub const MAX_LAG_SHOWN: u64 = 64;

/// How far one peer's chain is behind the current epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLag {
    /// The peer.
    pub peer: PubKey,
    /// Epochs between the newest one its chain reaches and the current one (0: it reaches the
    /// current epoch; current + 1: it reaches none); [`MAX_LAG_SHOWN`] + 1 when it reaches
    /// none of the last [`MAX_LAG_SHOWN`].
    pub behind: u64,
}

/// What a store tracks of its epochs between calls.
#[derive(Debug)]
pub(super) struct EpochTracking {
    /// The last current epoch acted on (acknowledged if required).
    pub(super) checked: Option<Hash>,
    /// The current epoch last reported by [`Store::take_epoch_change`].
    pub(super) announced: Option<Hash>,
    /// Host intentions written on this node's own initiative, for [`Store::take_host_writes`].
    pub(super) host_writes: Vec<lattice_model::SignedIntention>,
    /// The state at the newest epoch (data, system partitions); opened when first needed.
    pub(super) state: Option<(StoreRuntime, StoreRuntime)>,
    /// The state at an epoch waits to be brought up to date by the next flush.
    pub(super) state_due: bool,
    /// Host intentions were projected since finality was last checked.
    pub(super) finality_unchecked: bool,
    /// The newest epoch found finalized (its frontier is set on the log).
    pub(super) finalized: Option<Hash>,
    /// The state at an epoch holds an epoch written concurrently with the current one, so it
    /// cannot advance to it: the next projection writes a merge epoch citing both.
    pub(super) merge_due: bool,
}

impl Default for EpochTracking {
    fn default() -> EpochTracking {
        EpochTracking {
            checked: None,
            announced: None,
            host_writes: Vec::new(),
            state: None,
            state_due: false,
            // Checked once as the store opens.
            finality_unchecked: true,
            finalized: None,
            merge_due: false,
        }
    }
}

/// What the system table asked for in an `epoch` event.
struct EpochRequest {
    cause: EpochCause,
    required: Vec<PubKey>,
}

impl EpochRequest {
    /// Reads `{"cause", "required": [hex keys]}`.
    fn parse(payload: &[u8]) -> Option<EpochRequest> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let cause = EpochCause::from_name(value.get("cause")?.as_str()?)?;
        let required = value
            .get("required")?
            .as_array()?
            .iter()
            .map(|k| k.as_str().and_then(super::parse_key))
            .collect::<Option<Vec<PubKey>>>()?;
        Some(EpochRequest { cause, required })
    }
}

/// The members an epoch record requires acknowledgements from (none for other host ops).
fn required_of(record: &HostRecord) -> &[PubKey] {
    match &record.op {
        HostOp::Epoch { required, .. } => required,
        _ => &[],
    }
}

/// Flags of a host intention.
fn host_flags() -> IntentionFlags {
    IntentionFlags {
        system: true,
        host: true,
        ..IntentionFlags::default()
    }
}

impl Store {
    /// The store's current epoch — the greatest projected by `(number, hash)` — and the
    /// required ackers whose chains do not reach it yet (settled when none are left). `None`
    /// before the first epoch. Cost: one `is_ancestor` per required acker.
    ///
    /// # Errors
    /// Storage failures; a DAG query over its visit cap.
    pub fn epoch(&self) -> Result<Option<EpochStatus>, NodeError> {
        match self.system.current_epoch()? {
            Some(record) => {
                let statements = self.state_statements(&record)?;
                let mut status = self.epoch_status(&record)?;
                status.state = self.epoch_state_hash_at(&record.hash)?;
                if let Some(ours) = status.state {
                    status.disagreeing = statements
                        .iter()
                        .filter(|(_, stated)| *stated != Hash::ZERO && *stated != ours)
                        .map(|(peer, _)| *peer)
                        .collect();
                    let stated: Vec<PubKey> = statements.iter().map(|(p, _)| *p).collect();
                    status.finalized = status.settled()
                        && status.disagreeing.is_empty()
                        && required_of(&record)
                            .iter()
                            .all(|p| stated.contains(p) || self.filter.is_revoked(p));
                }
                Ok(Some(status))
            }
            None => Ok(None),
        }
    }

    /// What members stated as the hash of the state at the epoch `record` holds: its writer in
    /// the epoch, each acker in its ack (the acks come after the epoch here, so this reads the
    /// host ops from the epoch on).
    fn state_statements(&self, record: &HostRecord) -> Result<Vec<(PubKey, Hash)>, NodeError> {
        let mut out = Vec::new();
        if let HostOp::Epoch { state, .. } = record.op {
            out.push((record.author, state));
        }
        for later in self.system.host_records(record.seq + 1, usize::MAX)? {
            if let HostOp::Ack { epochs, state } = &later.op
                && epochs.contains(&record.hash)
            {
                out.push((later.author, *state));
            }
        }
        Ok(out)
    }

    /// The settlement of the epoch `record` holds: which required ackers' chains do not reach
    /// it yet (one `is_ancestor` each). A required acker revoked since is not waited for.
    fn epoch_status(&self, record: &HostRecord) -> Result<EpochStatus, NodeError> {
        let HostOp::Epoch { number, .. } = record.op else {
            return Err(NodeError::Runtime(lattice_runtime::Error::Corrupt(
                format!("the host op at seq {} is not an epoch", record.seq),
            )));
        };
        let reader = self.log.reader();
        let mut waiting = Vec::new();
        for acker in required_of(record) {
            if self.filter.is_revoked(acker) {
                continue;
            }
            let reached = match reader.tip(acker)? {
                Some(tip) => reader.is_ancestor(&record.hash, &tip)?,
                None => false,
            };
            if !reached {
                waiting.push(*acker);
            }
        }
        Ok(EpochStatus {
            number,
            hash: record.hash,
            waiting,
            state: None,
            disagreeing: Vec::new(),
            finalized: false,
        })
    }

    /// How many epochs each active peer's chain is behind the current one (empty before the
    /// first epoch). Cost: per peer, one `is_ancestor` per epoch it is behind, up to
    /// [`MAX_LAG_SHOWN`].
    ///
    /// # Errors
    /// Storage failures; a DAG query over its visit cap.
    pub fn epoch_lag(&mut self) -> Result<Vec<PeerLag>, NodeError> {
        let epochs = self
            .system
            .epochs_newest_first(usize::try_from(MAX_LAG_SHOWN).unwrap_or(usize::MAX))?;
        let Some(&(current, _)) = epochs.first() else {
            return Ok(Vec::new());
        };
        let mut lags = Vec::new();
        let peers = self.peers()?;
        let reader = self.log.reader();
        for peer in peers
            .iter()
            .filter(|p| p.status == super::PeerStatus::Active)
        {
            // Reaching none of the epochs looked at: behind all of them, or more than shown.
            let mut behind = if epochs.last().is_some_and(|(n, _)| *n == 0) {
                current + 1
            } else {
                MAX_LAG_SHOWN + 1
            };
            if let Some(tip) = reader.tip(&peer.key)? {
                for (number, hash) in &epochs {
                    if reader.is_ancestor(hash, &tip)? {
                        behind = current - number;
                        break;
                    }
                }
            }
            lags.push(PeerLag {
                peer: peer.key,
                behind,
            });
        }
        Ok(lags)
    }

    /// Opens the state at an epoch (brought up to the current epoch) when it is not open yet.
    pub(super) fn open_epoch_state(&mut self) -> Result<(), NodeError> {
        if self.epochs.state.is_none()
            && let Some(current) = self.system.current_epoch()?
        {
            self.advance_epoch_state(&current)?;
        }
        Ok(())
    }

    /// Brings the state at an epoch up to the current epoch (opening it on first use).
    pub(super) fn advance_epoch_state(&mut self, target: &HostRecord) -> Result<(), NodeError> {
        if self.epochs.state.is_none() {
            let system = StoreRuntime::open_partition(
                &self.runtime,
                &self.files.epoch_system,
                self.id,
                self.system_module,
                Partition::System,
            )?;
            let data = StoreRuntime::open(
                &self.runtime,
                &self.files.epoch_state,
                self.id,
                self.genesis.module,
            )?;
            // A fresh state at an epoch would replay the log from its start: with history
            // pruned, that would silently miss what was deleted.
            if data.cursor() == 0 && self.is_pruned()? {
                return Err(NodeError::PrunedStateMissing(self.id.short()));
            }
            self.epochs.state = Some((data, system));
        }
        let Some((data, system)) = self.epochs.state.as_mut() else {
            return Ok(());
        };
        let log = self.log.reader();
        let system_held = epoch_state::advance(system, log, &self.filter, target)?;
        let data_held =
            data.is_headless() || epoch_state::advance(data, log, &self.filter, target)?;
        // Holding an epoch concurrent with the current one, the state at an epoch cannot
        // move sideways: an epoch citing both lets it (and every member like it) go on.
        let holds_target = system_held && data_held;
        self.epochs.merge_due |= !holds_target && !self.data.is_headless();
        Ok(())
    }

    /// Writes a merge epoch when the state at an epoch was found holding an epoch concurrent
    /// with the current one (see [`EpochCause::Merge`]): numbered above the current epoch,
    /// citing this node's whole view (so both), requiring the active members. Members that
    /// hold the current epoch already simply advance to it. Returns whether it wrote one;
    /// failures are logged and the next projection tries again.
    pub(super) fn write_merge_epoch(&mut self) -> bool {
        if !std::mem::take(&mut self.epochs.merge_due) {
            return false;
        }
        let current = match self.system.current_epoch() {
            Ok(Some(current)) => current,
            Ok(None) => return false,
            Err(e) => {
                warn!(store = %self.id.short(), "reading the current epoch failed: {e}");
                return false;
            }
        };
        let required = match self.peers() {
            Ok(peers) => peers
                .into_iter()
                .filter(|p| p.status == PeerStatus::Active)
                .map(|p| p.key)
                .collect(),
            Err(e) => {
                warn!(store = %self.id.short(), "reading the members for a merge epoch failed: {e}");
                self.epochs.merge_due = true;
                return false;
            }
        };
        let request = EpochRequest {
            cause: EpochCause::Merge,
            required,
        };
        match self.write_epoch(current.hash, request) {
            Ok(()) => true,
            Err(e) => {
                warn!(store = %self.id.short(), "writing a merge epoch failed: {e}");
                self.epochs.merge_due = true;
                false
            }
        }
    }

    /// The hash of the state at the current epoch (data and system partitions), when this
    /// node holds it: the same on every member that has the epoch, whatever else it has.
    /// `None` before the first epoch, while headless, or while the current epoch is one
    /// written concurrently with the one held.
    ///
    /// # Errors
    /// Storage failures.
    pub fn epoch_state_hash(&self) -> Result<Option<Hash>, NodeError> {
        match self.system.current_epoch()? {
            Some(current) => self.epoch_state_hash_at(&current.hash),
            None => Ok(None),
        }
    }

    /// As [`Store::epoch_state_hash`], for the current epoch `epoch` already read.
    fn epoch_state_hash_at(&self, epoch: &Hash) -> Result<Option<Hash>, NodeError> {
        let Some((data, system)) = self.epochs.state.as_ref() else {
            return Ok(None);
        };
        for runtime in [data, system] {
            if runtime.is_headless() || epoch_state::held_epoch(runtime)? != Some(*epoch) {
                return Ok(None);
            }
        }
        Ok(Some(super::digest_of(data, system)?))
    }

    /// Writes the epoch the system table asked for in the system events from `start` on (those
    /// projected by this pass), when the asking intention is this node's own and no epoch reaches it yet: only
    /// the author of the triggering write makes the epoch, and a replay of an old request
    /// (membership settled again, state rebuilt, a crash before the epoch was written) writes
    /// one only if it is still missing. The newest request of this node covers the older ones.
    /// Returns whether it wrote one. Failures are logged: the next projection asks again.
    pub(super) fn write_requested_epoch(&mut self, start: usize) -> bool {
        let events = self.system_events.get(start..).unwrap_or_default();
        match self.requested_epoch(events) {
            Ok(Some((trigger, request))) => match self.write_epoch(trigger, request) {
                Ok(()) => true,
                Err(e) => {
                    warn!(store = %self.id.short(), "writing an epoch failed: {e}");
                    false
                }
            },
            Ok(None) => false,
            Err(e) => {
                warn!(store = %self.id.short(), "checking for a requested epoch failed: {e}");
                false
            }
        }
    }

    /// The newest epoch request among `events` that this node must answer, with the
    /// intention that made it.
    fn requested_epoch(
        &self,
        events: &[WatchEvent],
    ) -> Result<Option<(Hash, EpochRequest)>, NodeError> {
        let reader = self.log.reader();
        for event in events.iter().rev().filter(|e| e.topic == "epoch") {
            let Some(signed) = reader.witnessed_at(event.seq)? else {
                continue;
            };
            if signed.intention().author() != self.me {
                continue;
            }
            let trigger = signed.hash();
            if let Some(current) = self.system.current_epoch()?
                && reader.is_ancestor(&trigger, &current.hash)?
            {
                return Ok(None);
            }
            let Some(request) = EpochRequest::parse(&event.payload) else {
                warn!(store = %self.id.short(), "the system table asked for an epoch in a form this host does not read");
                return Ok(None);
            };
            return Ok(Some((trigger, request)));
        }
        Ok(None)
    }

    /// Writes an epoch citing the genesis and every author tip here (through frontier
    /// intentions when there are more than one intention may cite), numbered one above the
    /// current epoch (every projected epoch is below those tips).
    fn write_epoch(&mut self, trigger: Hash, request: EpochRequest) -> Result<(), NodeError> {
        let number = self
            .system
            .current_epoch()?
            .and_then(|r| r.epoch_order())
            .map_or(0, |(n, _)| n + 1);
        let deps = self.frontier_deps(vec![Hash(self.id.0)])?;
        // Everything witnessed here is below the epoch, so the live state is the state at
        // it — when all of it is projected.
        let complete =
            !self.data.is_headless() && self.data.cursor() == self.log.reader().status()?.head_seq;
        let state = if complete {
            self.state_digest()?
        } else {
            Hash::ZERO
        };
        let written = self.log.author(Draft {
            ops: HostOp::Epoch {
                number,
                cause: request.cause,
                state,
                required: request.required,
            }
            .encode(),
            deps,
            flags: host_flags(),
        })?;
        info!(
            store = %self.id.short(),
            number,
            cause = request.cause.name(),
            trigger = %trigger.short(),
            "epoch written"
        );
        self.epochs.host_writes.push(written.intention);
        Ok(())
    }

    /// `deps` and every other author's tip here: the deps of an intention that cites this
    /// node's whole view (an epoch, a system write). When that is more than one intention may
    /// cite, frontier host intentions gather the tips first and are cited instead.
    pub(super) fn frontier_deps(&mut self, mut deps: Vec<Hash>) -> Result<Vec<Hash>, NodeError> {
        deps.sort_unstable();
        deps.dedup();
        let mut tips: Vec<Hash> = self
            .log
            .reader()
            .tips()?
            .into_iter()
            .filter(|(author, hash)| *author != self.me && deps.binary_search(hash).is_err())
            .map(|(_, hash)| hash)
            .collect();
        while deps.len() + tips.len() > MAX_CAUSAL_DEPS {
            let mut gathered = Vec::new();
            for chunk in tips.chunks(MAX_CAUSAL_DEPS) {
                let frontier = self.log.author(Draft {
                    ops: HostOp::Frontier.encode(),
                    deps: chunk.to_vec(),
                    flags: host_flags(),
                })?;
                gathered.push(frontier.hash);
                self.epochs.host_writes.push(frontier.intention);
            }
            tips = gathered;
        }
        deps.extend(tips);
        Ok(deps)
    }

    /// Acts on a new current epoch, once per epoch: brings the state at an epoch up to it, and
    /// writes this node's ack (carrying that state's hash) when the epoch requires one and this
    /// node's chain does not reach it yet. Returns whether it wrote an ack. Failures are
    /// logged: the next epoch, or a restart, tries again.
    pub(super) fn on_new_epoch(&mut self) -> bool {
        let record = match self.system.current_epoch() {
            Ok(Some(record)) if self.epochs.checked != Some(record.hash) => record,
            Ok(_) => return false,
            Err(e) => {
                warn!(store = %self.id.short(), "reading the current epoch failed: {e}");
                return false;
            }
        };
        let opening = self.epochs.checked.is_none();
        self.epochs.checked = Some(record.hash);
        let epoch = match self.epoch_status(&record) {
            Ok(epoch) => epoch,
            Err(e) => {
                warn!(store = %self.id.short(), "checking the current epoch failed: {e}");
                return false;
            }
        };
        let must_ack = epoch.waiting.contains(&self.me);
        if opening && !must_ack {
            // As the store opens, the state at the epoch is almost always up to date already:
            // leave opening its files to the first flush, off the path to the first answer.
            self.epochs.state_due = true;
            return false;
        }
        if let Err(e) = self.advance_epoch_state(&record) {
            warn!(store = %self.id.short(), "advancing the state at the epoch failed: {e}");
        }
        if !must_ack {
            return false;
        }
        let state = self
            .epoch_state_hash_at(&record.hash)
            .ok()
            .flatten()
            .unwrap_or(Hash::ZERO);
        let ack = Draft {
            ops: HostOp::Ack {
                epochs: vec![epoch.hash],
                state,
            }
            .encode(),
            deps: vec![epoch.hash],
            flags: host_flags(),
        };
        match self.log.author(ack) {
            Ok(written) => {
                debug!(store = %self.id.short(), epoch = epoch.number, "acknowledged the epoch");
                self.epochs.host_writes.push(written.intention);
                true
            }
            Err(e) => {
                warn!(store = %self.id.short(), "acknowledging epoch {} failed: {e}", epoch.number);
                false
            }
        }
    }

    /// Brings the state at an epoch up to date when opening the store left that for later
    /// (see [`Store::flush`]).
    pub(super) fn advance_when_due(&mut self) {
        if !std::mem::take(&mut self.epochs.state_due) {
            return;
        }
        match self.system.current_epoch() {
            Ok(Some(record)) => {
                if let Err(e) = self.advance_epoch_state(&record) {
                    warn!(store = %self.id.short(), "advancing the state at the epoch failed: {e}");
                }
                self.check_finality();
            }
            Ok(None) => {}
            Err(e) => warn!(store = %self.id.short(), "reading the current epoch failed: {e}"),
        }
    }

    /// Sets the current epoch's frontier on the log once the epoch is finalized, so forks of
    /// the history it reaches are refused on ingest. Failures are logged.
    pub(super) fn check_finality(&mut self) {
        let epoch = match self.epoch() {
            Ok(Some(epoch)) if epoch.finalized && self.epochs.finalized != Some(epoch.hash) => {
                epoch
            }
            Ok(_) => return,
            Err(e) => {
                warn!(store = %self.id.short(), "checking finality failed: {e}");
                return;
            }
        };
        match self.log.reader().reach(&epoch.hash) {
            Ok(reach) => {
                self.log.set_final_frontier(reach);
                self.epochs.finalized = Some(epoch.hash);
                info!(store = %self.id.short(), number = epoch.number, "epoch finalized");
                self.prune_by_policy();
            }
            Err(e) => {
                warn!(store = %self.id.short(), "reading a finalized epoch's frontier failed: {e}")
            }
        }
    }

    /// Takes the host intentions this store wrote on its own since the last call (epochs,
    /// acks, frontiers), for the node to gossip.
    pub fn take_host_writes(&mut self) -> Vec<lattice_model::SignedIntention> {
        std::mem::take(&mut self.epochs.host_writes)
    }

    /// The current epoch's hash, as last projected (`None` before the first epoch).
    pub fn epoch_hash(&self) -> Option<Hash> {
        self.epochs.checked
    }

    /// The current epoch's hash when it changed since the last call (for the gossip topic).
    pub fn take_epoch_change(&mut self) -> Option<Hash> {
        let now = self.epochs.checked;
        if now != self.epochs.announced {
            self.epochs.announced = now;
            return now;
        }
        None
    }
}
