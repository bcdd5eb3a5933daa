//! [`Store`]: one open store: its log, its two projections (data partition by the store's
//! module, system partition by the system table guest), and the call path that joins them.

use std::collections::BTreeMap;
use std::sync::Arc;

use lattice_log::{Authored, Built, Draft, Log};
use lattice_model::SignedIntention;
use lattice_model::{Hash, PubKey, StoreId};
use lattice_runtime::{
    AuthorFilter, MethodKind, Partition, ProjectReport, Refusal, Runtime, StoreDescriptor,
    StoreRuntime, WatchEvent,
};
use lattice_system_types::{ChildItem, Items, PeerItem};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::error::{NodeError, RejectKind};
use crate::genesis::StoreGenesis;

mod epoch_state;
mod epochs;
mod prune;
mod snapshot;

pub use epochs::{EpochStatus, MAX_LAG_SHOWN, PeerLag};
pub use prune::{PRUNE_STEP, PRUNE_STEP_BUDGET, PRUNE_STEP_FIRST, PruneReport};
pub use snapshot::{Snapshot, SnapshotDecodeError};
pub(crate) use snapshot::{install as install_snapshot, refused as snapshot_refused};

/// Intentions read from the log per projection step.
const PROJECT_BATCH: usize = 512;
/// How often a long projection logs how far it is.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Rounds of the membership fixed point (see [`Store::settle`]).
const MAX_SETTLE_ROUNDS: u32 = 8;

/// An open store.
#[derive(Debug)]
pub struct Store {
    id: StoreId,
    genesis: StoreGenesis,
    log: Arc<Log>,
    data: StoreRuntime,
    system: StoreRuntime,
    filter: AuthorFilter,
    system_events: Vec<WatchEvent>,
    /// Data partition events kept for [`Store::take_data_events`] (when enabled).
    data_events: Option<Vec<WatchEvent>>,
    /// The genesis author: a member from the start.
    creator: PubKey,
    me: PubKey,
    /// Where the store's files are.
    files: StoreFiles,
    /// Opens the state at an epoch on first use.
    runtime: Runtime,
    system_module: lattice_runtime::ModuleHash,
    /// What this store tracks of its epochs (see `epochs.rs`).
    epochs: epochs::EpochTracking,
    /// The prune pass under way (see `prune.rs`).
    pruning: Option<prune::PruneRun>,
    /// Referenced blobs not here, not yet taken ([`Store::take_newly_wanted`]).
    newly_wanted: Vec<Hash>,
}

/// The files of one store.
#[derive(Debug, Clone)]
struct StoreFiles {
    log: std::path::PathBuf,
    state: std::path::PathBuf,
    system: std::path::PathBuf,
    epoch_state: std::path::PathBuf,
    epoch_system: std::path::PathBuf,
}

pub use lattice_system_types::{ChildStatus, PeerStatus, StoreInfo, Strategy};

/// A local write that was witnessed and projected: the reply for its caller and the
/// intention to gossip.
#[derive(Debug, Clone)]
pub struct Written {
    /// The reply (`hash`, `seq`, `hlc`, `events`).
    pub value: Value,
    /// The intention.
    pub intention: SignedIntention,
}

/// What a call of a store's type (or of its system table) returned: a write, witnessed and
/// projected, or a query's answer.
#[derive(Debug, Clone)]
pub enum CallReply {
    /// A command: the reply and the intention it wrote.
    Wrote(Written),
    /// A query's answer.
    Answer(Value),
}

impl CallReply {
    /// The JSON reply: the write's (`hash`, `seq`, `hlc`, `events`) or the query's answer.
    pub fn into_value(self) -> Value {
        match self {
            CallReply::Wrote(written) => written.value,
            CallReply::Answer(value) => value,
        }
    }
}

/// A peer as the system table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its key.
    pub key: PubKey,
    /// Its status.
    pub status: PeerStatus,
    /// Its name, when set.
    pub name: Option<String>,
    /// Where it last said it listens (`ip:port`).
    pub addrs: Vec<String>,
    /// Author-sequence ranges of its intentions that are not projected (`None`: open end).
    pub refused: Vec<(u64, Option<u64>)>,
    /// The intention that wrote its status (absent in records from before stamping).
    pub written_in: Option<Hash>,
    /// The peer that wrote its status (stamped with `written_in`).
    pub written_by: Option<PubKey>,
}

impl PeerInfo {
    /// True for active and dormant peers: they may connect, gossip and bootstrap.
    pub fn is_member(&self) -> bool {
        self.status.is_member()
    }
}

/// A child store declared in a store's system table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildLink {
    /// The child's id.
    pub id: StoreId,
    /// Its name in the parent.
    pub alias: String,
    /// Its module.
    pub module: String,
    /// Active or archived.
    pub status: ChildStatus,
}

/// An intention the store type or the membership policy rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedIntention {
    /// Its witness sequence number here.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
    /// Its author.
    pub author: PubKey,
    /// Its hybrid logical clock.
    pub hlc: lattice_model::Hlc,
    /// The partition it was written to.
    pub partition: Partition,
    /// Why it was rejected.
    pub reason: String,
}

/// A witnessed intention, summarised (for history listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentionSummary {
    /// Its witness sequence number here.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
    /// Its author.
    pub author: PubKey,
    /// Its hybrid logical clock.
    pub hlc: lattice_model::Hlc,
    /// Its causal deps.
    pub deps: Vec<Hash>,
    /// Size of its ops payload.
    pub ops_bytes: usize,
    /// `genesis`, `system` or `data`.
    pub partition: &'static str,
}

/// What a store looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The store id.
    pub id: StoreId,
    /// Name from the system table, else from the genesis.
    pub name: String,
    /// The module the store runs.
    pub module: String,
    /// True when the module is not installed here: intentions are witnessed but not projected.
    pub headless: bool,
    /// True when this node keeps the store headless by choice (its module is neither fetched
    /// nor run here).
    pub headless_by_choice: bool,
    /// Witnessed intentions (the witness log head).
    pub witnessed: u64,
    /// Last witness seq projected onto the data partition.
    pub projected: u64,
    /// Floating intentions (waiting for a predecessor or dep).
    pub floating: u64,
    /// Intentions the guest rejected or the author policy refused (data partition).
    pub rejected: u64,
    /// The current epoch and its settlement; `None` before the first.
    pub epoch: Option<EpochStatus>,
    /// How far each active peer's chain is behind the current epoch.
    pub lag: Vec<PeerLag>,
    /// Size of `log.db` on disk (the history kept).
    pub log_bytes: u64,
    /// Size of `state.db` and `system.db` on disk (the projected state).
    pub state_bytes: u64,
}

impl StoreStatus {
    /// `ready`, `projecting`, or `waiting for module <hash>`.
    pub fn state(&self) -> String {
        if self.headless_by_choice {
            "headless by choice".to_string()
        } else if self.headless {
            format!("waiting for module {}", self.module)
        } else if self.projected < self.witnessed {
            "projecting".to_string()
        } else {
            "ready".to_string()
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "store": self.id.to_string(),
            "name": self.name,
            "module": self.module,
            "headless": self.headless,
            "headless_by_choice": self.headless_by_choice,
            "witnessed": self.witnessed,
            "projected": self.projected,
            "floating": self.floating,
            "rejected": self.rejected,
            "state": self.state(),
            "epoch": self.epoch.as_ref().map(EpochStatus::to_json),
            "lag": self.lag.iter().map(|l| json!({"peer": l.peer.to_string(), "behind": l.behind})).collect::<Vec<_>>(),
            "log_bytes": self.log_bytes,
            "state_bytes": self.state_bytes,
        })
    }
}

/// The author-chain position of a witnessed intention (0 when unknown).
fn chain_position_of(log: &Log, hash: &Hash) -> Result<u64, NodeError> {
    Ok(log.reader().dag_info(hash)?.map_or(0, |i| i.author_seq))
}

/// The digest of a store's state held in `data` and `system`: `BLAKE3(data digest ‖ system
/// digest)` (docs/protocol.md, "the state at an epoch").
fn digest_of(data: &StoreRuntime, system: &StoreRuntime) -> Result<Hash, NodeError> {
    let (data, system) = (data.state_digest()?, system.state_digest()?);
    Ok(Hash::of(&[data.0, system.0].concat()))
}

/// A file's size, 0 when it cannot be read (status is best effort).
fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn parse_key(text: &str) -> Option<PubKey> {
    PubKey::from_hex(text).ok()
}

impl Store {
    pub(crate) fn open(
        runtime: &Runtime,
        dir: &crate::DataDir,
        id: StoreId,
        log: Arc<Log>,
        me: PubKey,
        system_module: lattice_runtime::ModuleHash,
        headless_by_choice: bool,
    ) -> Result<Store, NodeError> {
        let genesis_intention = log
            .reader()
            .get(&Hash(id.0))?
            .ok_or(NodeError::BadGenesis(id))?;
        let creator = genesis_intention.intention().author();
        let genesis = StoreGenesis::decode(genesis_intention.intention().ops())
            .ok_or(NodeError::BadGenesis(id))?;
        // The two partitions open side by side: each open waits on an fsync and loads a
        // module, so together they take about as long as one.
        let (data, system) = std::thread::scope(|scope| {
            let system = scope.spawn(|| {
                StoreRuntime::open_partition(
                    runtime,
                    &dir.system_path(&id),
                    id,
                    system_module,
                    Partition::System,
                )
            });
            let data = StoreRuntime::open(runtime, &dir.state_path(&id), id, genesis.module);
            let system = system.join().unwrap_or_else(|_| {
                Err(lattice_runtime::Error::Corrupt(
                    "opening the system partition panicked".into(),
                ))
            });
            (data, system)
        });
        let (mut data, system) = (data?, system?);
        if headless_by_choice {
            data.keep_headless();
        }
        let mut store = Store {
            id,
            genesis,
            log,
            data,
            system,
            filter: AuthorFilter::members_only(),
            system_events: Vec::new(),
            data_events: None,
            creator,
            me,
            files: StoreFiles {
                log: dir.log_path(&id),
                state: dir.state_path(&id),
                system: dir.system_path(&id),
                epoch_state: dir.epoch_state_path(&id),
                epoch_system: dir.epoch_system_path(&id),
            },
            runtime: runtime.clone(),
            system_module,
            epochs: epochs::EpochTracking::default(),
            pruning: None,
            newly_wanted: Vec::new(),
        };
        store.filter = store.read_filter()?;
        // A live state started afresh (lost or repaired) in a pruned store starts from the
        // state at the epoch, not from the log's start.
        if store.data.cursor() == 0 && !store.data.is_headless() && store.is_pruned()? {
            if store.system.cursor() == 0 {
                // Rooted on a snapshot: membership first, from the (never pruned) system
                // partition; settling restores the live state from the state at the epoch.
                store.settle()?;
            } else {
                store.restore_data_from_epoch_state()?;
            }
        }
        store.project()?;
        store.resync_blob_refs();
        Ok(store)
    }

    /// Sets the blob store's reference counts for this store from the whole state (at open:
    /// after a rebuild, a snapshot, or a crash between a state commit and the blob store).
    /// Costs a scan of the state's references and of the store's blobs, not of the state.
    fn resync_blob_refs(&mut self) {
        let Some(cas) = self.runtime.blobs().cloned() else {
            return;
        };
        self.data.take_blob_refs();
        let result = (|| -> Result<(), NodeError> {
            let mut counts = self.data.blob_refs()?;
            let referenced: std::collections::HashSet<Hash> =
                counts.iter().map(|(h, _)| *h).collect();
            for blob in cas.list(&self.id)? {
                if blob.refs > 0 && !referenced.contains(&blob.hash) {
                    counts.push((blob.hash, 0));
                }
            }
            self.newly_wanted
                .extend(cas.set_refs_many(&self.id, &counts)?);
            Ok(())
        })();
        if let Err(e) = result {
            warn!(store = %self.id.short(), "could not bring blob references in step: {e}");
        }
    }

    /// Passes the reference counts to blobs that projection changed to the blob store.
    fn note_blob_refs(&mut self) {
        let changed = self.data.take_blob_refs();
        let Some(cas) = self.runtime.blobs() else {
            return;
        };
        match cas.set_refs_many(&self.id, &changed) {
            Ok(wanted) => self.newly_wanted.extend(wanted),
            // The next open sets every count again from the state.
            Err(e) => warn!(store = %self.id.short(), "could not record blob references: {e}"),
        }
    }

    /// Blobs the state came to reference that are not here, since the last call (at open:
    /// every such blob), for the node to fetch.
    pub fn take_newly_wanted(&mut self) -> Vec<Hash> {
        std::mem::take(&mut self.newly_wanted)
    }

    /// Blobs the data partition's guest tried to read that were not here (see
    /// [`StoreRuntime::take_missed_blobs`]).
    pub fn take_missed_blobs(&mut self) -> Vec<Hash> {
        self.data.take_missed_blobs()
    }

    /// The store id.
    pub fn id(&self) -> StoreId {
        self.id
    }

    /// The log (for ingest from peers and low-level reads).
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The genesis facts.
    pub fn genesis(&self) -> &StoreGenesis {
        &self.genesis
    }

    /// The membership filter the system table implies: the creator, and every peer recorded
    /// `active`, `dormant` or `revoked`, minus its refused ranges. Peers only `invited` and
    /// keys never recorded are not members.
    ///
    /// A revoked peer's open refused range starts just past the *revocation's frontier*: the
    /// newest of its intentions the revoking intention reaches. So whatever order intentions
    /// arrive in, the peer's writes the revoker had seen stay and the rest go.
    ///
    /// Revocations are settled in order of the revoking intention (HLC, then hash): a
    /// revocation whose own intention falls in a range refused by an earlier one is void (two
    /// members who revoke each other at once: the earlier revocation stands). Pure function of
    /// the system state and the log, so every peer with the same intentions gets the same
    /// filter.
    fn read_filter(&mut self) -> Result<AuthorFilter, NodeError> {
        let peers = self.peers()?;
        let reader = self.log.reader();
        let mut ordered = Vec::with_capacity(peers.len());
        for peer in peers {
            // Where the record was written: (hlc, hash, writer, writer's chain position).
            let origin = match peer.written_in {
                Some(op) => match (reader.get(&op)?, reader.dag_info(&op)?) {
                    (Some(signed), Some(info)) => {
                        Some((signed.intention().hlc(), op, info.author, info.author_seq))
                    }
                    _ => None,
                },
                None => None,
            };
            ordered.push((origin, peer));
        }
        ordered.sort_by(|a, b| a.0.map(|o| (o.0, o.1)).cmp(&b.0.map(|o| (o.0, o.1))));
        let mut filter = AuthorFilter::members_only();
        filter.admit(self.creator);
        for (origin, peer) in ordered {
            if !matches!(
                peer.status,
                PeerStatus::Active | PeerStatus::Dormant | PeerStatus::Revoked
            ) {
                continue;
            }
            let void = origin.is_some_and(|(_, _, writer, position)| {
                writer != peer.key && filter.verdict(&writer, position) == Some(Refusal::Revoked)
            });
            filter.admit(peer.key);
            for (from, to) in peer.refused {
                // A void revocation keeps the ranges it closed, not the one it opened.
                if void && to.is_none() {
                    continue;
                }
                // The open range of a revocation starts past its frontier, not at the number
                // the revoker recorded (equal for an honest revoker, which cites its whole
                // view); see `Store::revocation_frontier`.
                let from = match origin {
                    Some((_, op, _, _)) if to.is_none() && peer.status == PeerStatus::Revoked => {
                        self.revocation_frontier(&op, &peer.key)? + 1
                    }
                    _ => from,
                };
                filter.refuse(peer.key, from, to);
            }
        }
        Ok(filter)
    }

    /// The newest position in `peer`'s chain that stays projected after the revocation
    /// written in `revocation`: the newest the revocation reaches, or that any epoch another
    /// author wrote concurrently with it (not reaching it) reaches — what an epoch's frontier
    /// holds is never taken back, so the state at an epoch stays valid. Epochs the revocation reaches reach
    /// no more of the peer than it does. Pure function of the log: one `reach` per epoch not
    /// reached, one `is_ancestor` per epoch.
    fn revocation_frontier(&self, revocation: &Hash, peer: &PubKey) -> Result<u64, NodeError> {
        let reader = self.log.reader();
        let position = |hash: &Hash| -> Result<u64, NodeError> {
            Ok(reader
                .reach(hash)?
                .iter()
                .find(|(author, _)| author == peer)
                .map_or(0, |(_, seq)| *seq))
        };
        let mut cut = position(revocation)?;
        for (_, epoch) in self.system.epochs_newest_first(usize::MAX)? {
            // The peer's own epochs protect nothing of its own.
            let by_peer = reader.dag_info(&epoch)?.is_some_and(|i| i.author == *peer);
            if !by_peer
                && !reader.is_ancestor(revocation, &epoch)?
                && !reader.is_ancestor(&epoch, revocation)?
            {
                cut = cut.max(position(&epoch)?);
            }
        }
        Ok(cut)
    }

    /// True when changing the filter from `old` to `new` may change what was already
    /// witnessed: some author admitted by one and not the other has intentions here, or
    /// some author whose ranges differ has intentions at or after the first differing range.
    fn filter_change_matters(
        &self,
        old: &AuthorFilter,
        new: &AuthorFilter,
    ) -> Result<bool, NodeError> {
        let frontier = self.log.reader().frontier()?;
        for author in old.authors().chain(new.authors()) {
            let tip = frontier
                .iter()
                .find(|(k, _)| k == author)
                .map_or(0, |(_, s)| *s);
            if old.admits(author) != new.admits(author) {
                if tip > 0 {
                    return Ok(true);
                }
                continue;
            }
            let (a, b) = (old.ranges(author), new.ranges(author));
            if a == b {
                continue;
            }
            let first = a
                .iter()
                .chain(b)
                .filter(|r| !(a.contains(r) && b.contains(r)))
                .map(|r| r.0)
                .min();
            if first.is_some_and(|first| tip >= first) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// True when `batch` holds a system intention the current filter refuses as revoked: it
    /// may be a revocation that competes with the one refusing it, so membership must be
    /// settled again.
    fn refuses_system_writes(&self, batch: &[(u64, SignedIntention)]) -> Result<bool, NodeError> {
        for (_, signed) in batch {
            let i = signed.intention();
            if !i.flags().system || i.is_genesis() || self.filter.ranges(&i.author()).is_empty() {
                continue;
            }
            if let Some(info) = self.log.reader().dag_info(&signed.hash())?
                && self.filter.verdict(&i.author(), info.author_seq) == Some(Refusal::Revoked)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Settles membership from scratch and resets the data partition: starting from the
    /// creator alone, projects the system partition with the filter, reads the filter that
    /// state implies, and repeats until the filter is a fixed point (at most
    /// [`MAX_SETTLE_ROUNDS`]). The sequence of filters depends only on the intentions, not on
    /// the order they arrived in, so every peer settles on the same membership.
    fn settle(&mut self) -> Result<(), NodeError> {
        let mut filter = AuthorFilter::members_only();
        filter.admit(self.creator);
        for round in 0..MAX_SETTLE_ROUNDS {
            self.system.reset()?;
            let report = self.system.project(self.log.reader(), &filter)?;
            self.system_events.extend(report.events);
            let fresh = self.read_filter()?;
            if fresh == filter {
                break;
            }
            if round + 1 == MAX_SETTLE_ROUNDS {
                warn!(store = %self.id.short(), "membership did not settle; using the last round");
            }
            filter = fresh;
        }
        self.filter = filter;
        self.data.reset()?;
        if !self.data.is_headless() && self.is_pruned()? {
            self.restore_data_from_epoch_state()?;
        }
        Ok(())
    }

    /// Projects everything witnessed but not yet applied, both partitions, reading each batch
    /// of the log once: first the system partition, then the data partition with the
    /// membership filter the system table implies. Only members' intentions are projected
    /// (see `Store::settle`). When a membership change touches intentions already
    /// witnessed (a revocation after the revoked peer's writes arrived, a peer admitted after
    /// its first writes arrived, competing revocations), membership is settled again from the
    /// start and the data partition replayed, so every peer ends with the same state whatever
    /// order things arrived in. Loads the data module first if it was installed meanwhile.
    /// Returns the data partition's report.
    ///
    /// # Errors
    /// Storage or host failures.
    pub fn project(&mut self) -> Result<ProjectReport, NodeError> {
        let start = self.system_events.len();
        let mut report = self.project_witnessed()?;
        if self.write_requested_epoch(start) {
            self.project_more(&mut report)?;
        }
        if self.on_new_epoch() {
            // The ack is a host intention of the system partition: project it too.
            self.project_more(&mut report)?;
        }
        if self.write_merge_epoch() {
            self.project_more(&mut report)?;
            if self.on_new_epoch() {
                self.project_more(&mut report)?;
            }
        }
        if std::mem::take(&mut self.epochs.finality_unchecked) {
            self.check_finality();
        }
        self.note_blob_refs();
        Ok(report)
    }

    /// Projects what this store just wrote on its own, adding to `report`.
    fn project_more(&mut self, report: &mut ProjectReport) -> Result<(), NodeError> {
        let more = self.project_witnessed()?;
        report.applied += more.applied;
        report.rejected += more.rejected;
        report.cursor = more.cursor;
        report.events.extend(more.events);
        Ok(())
    }

    /// The body of [`Store::project`]: projects what is witnessed, both partitions.
    fn project_witnessed(&mut self) -> Result<ProjectReport, NodeError> {
        self.data.attach()?;
        let mut report = ProjectReport {
            cursor: self.data.cursor(),
            ..ProjectReport::default()
        };
        // Long catch-ups (a rebuilt projection, a big bootstrap) say how far they are.
        let mut reported = std::time::Instant::now();
        loop {
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = std::time::Instant::now();
                let head = self.log.reader().status().map_or(0, |s| s.head_seq);
                info!(store = %self.id.short(), "projecting: {} of {head} intentions", self.data.cursor());
            }
            let from = if self.data.is_headless() {
                self.system.cursor()
            } else {
                self.system.cursor().min(self.data.cursor())
            };
            let batch = self.log.reader().witnessed(from + 1, PROJECT_BATCH)?;
            if batch.is_empty() {
                break;
            }
            let competing = self.system.cursor() < batch[batch.len() - 1].0
                && self.refuses_system_writes(&batch)?;
            let mut system = ProjectReport::default();
            self.system
                .apply_witnessed(self.log.reader(), &batch, &self.filter, &mut system)?;
            let host = batch.iter().any(|(_, s)| s.intention().flags().host);
            self.epochs.finality_unchecked |= host;
            // An epoch can move a revocation's frontier (see `Store::revocation_frontier`).
            let membership = system.events.iter().any(|e| e.topic == "peer")
                || (self.filter.has_revocations() && host);
            self.system_events.extend(system.events);
            if membership || competing {
                let fresh = self.read_filter()?;
                if competing
                    || (fresh != self.filter && self.filter_change_matters(&self.filter, &fresh)?)
                {
                    self.settle()?;
                    report = ProjectReport::default();
                    continue;
                }
                self.filter = fresh;
            }
            self.data
                .apply_witnessed(self.log.reader(), &batch, &self.filter, &mut report)?;
        }
        report.cursor = self.data.cursor();
        if let Some(kept) = self.data_events.as_mut() {
            kept.extend(report.events.iter().cloned());
        }
        Ok(report)
    }

    /// Keeps the data partition's watch events from now on, for
    /// [`Store::take_data_events`] (off by default, so batch work does not buffer them).
    pub fn keep_data_events(&mut self) {
        self.data_events.get_or_insert_with(Vec::new);
    }

    /// Takes the data partition's watch events kept since the last call.
    pub fn take_data_events(&mut self) -> Vec<WatchEvent> {
        self.data_events
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes the system table events projected since the last call (peer, child, store,
    /// invite and app changes), for the node to act on.
    pub fn take_system_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.system_events)
    }

    /// True while the store's module is not installed here (nothing is projected onto the
    /// data partition).
    pub fn is_headless(&self) -> bool {
        self.data.is_headless()
    }

    /// The store type's description.
    ///
    /// # Errors
    /// [`lattice_runtime::Error::Headless`] when the module is missing.
    pub fn describe(&mut self) -> Result<StoreDescriptor, NodeError> {
        Ok(self.data.describe()?)
    }

    /// Calls a method of the store's type with JSON arguments. A command is prepared by the
    /// guest, authored (cites the genesis when it is this node's first write), witnessed,
    /// durable and projected; the result names the intention. A query is answered from
    /// projected state.
    ///
    /// # Errors
    /// Bad arguments, guest refusals, storage failures, or a headless store.
    pub fn call(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        self.call_in(Partition::Data, method, args)
            .map(CallReply::into_value)
    }

    /// Calls a method of the system table (see the `system` guest): `peers`, `children`,
    /// `set-peer-status`, `add-child`, …
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn system_call(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        self.call_in(Partition::System, method, args)
            .map(CallReply::into_value)
    }

    /// As [`Store::system_call`], keeping the written intention (for gossip).
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn system_call_reply(
        &mut self,
        method: &str,
        args: &Value,
    ) -> Result<CallReply, NodeError> {
        self.call_in(Partition::System, method, args)
    }

    fn runtime_of(&mut self, partition: Partition) -> &mut StoreRuntime {
        match partition {
            Partition::Data => &mut self.data,
            Partition::System => &mut self.system,
        }
    }

    fn call_in(
        &mut self,
        partition: Partition,
        method: &str,
        args: &Value,
    ) -> Result<CallReply, NodeError> {
        if self.runtime_of(partition).method_kind(method)? == Some(MethodKind::Query) {
            // While a write run is with the log (`Store::start_write_run`) queries read the
            // state as it is: projecting would apply the run from the log under it.
            if !self.data.in_run() {
                self.project()?;
            }
            return Ok(CallReply::Answer(
                self.runtime_of(partition).query(method, args)?,
            ));
        }
        let heads: Vec<Hash> = self
            .log
            .reader()
            .tips()?
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        let prepared = self.runtime_of(partition).prepare(method, args, &heads)?;
        let mut deps = prepared.deps;
        if self.log.reader().tip(&self.me)?.is_none() {
            deps.push(Hash(self.id.0));
        }
        if partition == Partition::System {
            // A system write cites everything this node has: a revocation cuts the revoked
            // peer's chain where this causal past ends (see `Store::read_filter`).
            deps = self.frontier_deps(deps)?;
        }
        let written = self.log.author(Draft {
            ops: prepared.ops,
            deps,
            flags: prepared.flags,
        })?;
        let report = self.project()?;
        self.outcome(partition, written, Some(report.events.len()))
            .map(CallReply::Wrote)
    }

    /// Makes both projections (and the state at an epoch) durable: one fsync each, covering
    /// every commit since the last flush (the log is their write-ahead log; see
    /// docs/architecture.md "Durability"). First brings the state at an epoch up to date if
    /// opening the store left that for later.
    ///
    /// # Errors
    /// Storage failures.
    pub fn flush(&mut self) -> Result<(), NodeError> {
        self.advance_when_due();
        self.data.flush()?;
        self.system.flush()?;
        if let Some((data, system)) = self.epochs.state.as_mut() {
            data.flush()?;
            system.flush()?;
        }
        Ok(())
    }

    /// What became of a witnessed and projected local write: its rejection, or the reply
    /// naming it. `events` is the number of watch events it emitted, when known.
    fn outcome(
        &mut self,
        partition: Partition,
        written: Authored,
        events: Option<usize>,
    ) -> Result<Written, NodeError> {
        let rejected = self
            .runtime_of(partition)
            .rejected(written.seq, 1)?
            .into_iter()
            .find(|(seq, _)| *seq == written.seq)
            .map(|(_, reason)| reason);
        self.outcome_known(written, rejected, events)
    }

    /// As [`Store::outcome`], with the rejection already known.
    fn outcome_known(
        &self,
        written: Authored,
        rejected: Option<String>,
        events: Option<usize>,
    ) -> Result<Written, NodeError> {
        if let Some(reason) = rejected {
            return Err(self.rejection(written.hash, reason)?);
        }
        Ok(Written {
            value: json!({
                "hash": written.hash.to_string(),
                "seq": written.seq,
                "hlc": written.hlc.to_string(),
                "events": events.unwrap_or(0),
            }),
            intention: written.intention,
        })
    }

    /// The error for this node's own intention `hash`, rejected for `reason`.
    fn rejection(&self, hash: Hash, reason: String) -> Result<NodeError, NodeError> {
        let position = chain_position_of(&self.log, &hash)?;
        let kind = match self.filter.verdict(&self.me, position) {
            Some(Refusal::NotMember) => RejectKind::NotMember,
            Some(Refusal::Revoked) => RejectKind::Revoked,
            None => RejectKind::Guest,
        };
        Ok(NodeError::Rejected { kind, hash, reason })
    }

    /// The kind of a method of the store's type (`None`: no such method).
    ///
    /// # Errors
    /// [`lattice_runtime::Error::Headless`] when the module is missing.
    pub fn method_kind(&mut self, method: &str) -> Result<Option<MethodKind>, NodeError> {
        Ok(self.data.method_kind(method)?)
    }

    /// Runs a series of commands of the store's type as one group: each is prepared in turn,
    /// built into an intention and applied before the next is prepared (so a later command
    /// sees the state the earlier ones leave), then the whole series is witnessed in one
    /// group commit (one fsync) and committed to `state.db` in one transaction. One result
    /// per call, in order, as [`Store::call`] gives; the written intention comes with each
    /// success, for gossip.
    ///
    /// When something arrived from a peer in between (the series is then not next in the
    /// witness order), the applied state is dropped and the log projected as usual, so the
    /// outcome is what a node that received the same intentions in the same order computes.
    ///
    /// This waits for the group commit; [`Store::start_write_run`] does not.
    pub fn write_run(&mut self, calls: &[(String, Value)]) -> Vec<Result<Written, NodeError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        match self.start_write_run(calls, move |outcome| {
            let _ = tx.send(outcome);
        }) {
            RunStart::Done(results) => results,
            RunStart::InFlight(run) => {
                let outcome = rx.recv().unwrap_or(Err(lattice_log::Error::Closed));
                self.finish_write_run(run, outcome)
            }
        }
    }

    /// The first half of [`Store::write_run`]: prepares, builds and applies the calls and
    /// hands the run to the log, which calls `witnessed` (on its own thread) once the group
    /// commit is durable. Until then the store answers queries from the state before the run
    /// ([`Store::call`] of a query); pass the outcome to [`Store::finish_write_run`] before
    /// anything else touches the store. When nothing needs witnessing the results are final
    /// at once and `witnessed` is never called.
    pub fn start_write_run(
        &mut self,
        calls: &[(String, Value)],
        witnessed: impl FnOnce(lattice_log::BuiltOutcome) + Send + 'static,
    ) -> RunStart {
        let mut results: Vec<Option<Result<Written, NodeError>>> =
            calls.iter().map(|_| None).collect();
        let mut built: Vec<(usize, Built)> = Vec::new();
        if let Err(e) = self.build_run(calls, &mut results, &mut built) {
            // Nothing was witnessed: answer each remaining call on its own.
            warn!(store = %self.id.short(), "write run failed ({e}); writing one by one");
            self.data.abort_run();
            return RunStart::Done(
                calls
                    .iter()
                    .zip(results)
                    .map(|((method, args), done)| match done {
                        Some(r) => r,
                        None => match self.call_in(Partition::Data, method, args)? {
                            CallReply::Wrote(written) => Ok(written),
                            CallReply::Answer(_) => {
                                Err(NodeError::Runtime(lattice_runtime::Error::BadArguments(
                                    format!("`{method}` is a query, not a command"),
                                )))
                            }
                        },
                    })
                    .collect(),
            );
        }
        if built.is_empty() {
            self.data.abort_run();
            return RunStart::Done(final_results(results));
        }
        let (slots, run): (Vec<usize>, Vec<Built>) = built.into_iter().unzip();
        self.log.submit_built_then(run, witnessed);
        RunStart::InFlight(RunInFlight { slots, results })
    }

    /// The building part of [`Store::start_write_run`]: prepare, build and apply each call. Calls the guest
    /// refuses get their error in `results`; the rest land in `built`.
    fn build_run(
        &mut self,
        calls: &[(String, Value)],
        results: &mut [Option<Result<Written, NodeError>>],
        built: &mut Vec<(usize, Built)>,
    ) -> Result<(), NodeError> {
        self.project()?;
        let mut chain = self.log.chain_builder()?;
        let mut tips: BTreeMap<PubKey, Hash> = self.log.reader().tips()?.into_iter().collect();
        self.data.begin_run()?;
        for (i, (method, args)) in calls.iter().enumerate() {
            let heads: Vec<Hash> = tips.values().copied().collect();
            let prepared = match self.data.prepare(method, args, &heads) {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            let mut deps = prepared.deps;
            if chain.is_first() {
                deps.push(Hash(self.id.0));
            }
            let draft = Draft {
                ops: prepared.ops,
                deps,
                flags: prepared.flags,
            };
            let next = match chain.build(draft, self.log.reader()) {
                Ok(b) => b,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            let refusal = self.filter.reason(&self.me, next.author_seq);
            self.data.apply_in_run(&next.signed, refusal)?;
            tips.insert(self.me, next.signed.hash());
            built.push((i, next));
        }
        Ok(())
    }

    /// The second half of [`Store::write_run`]: with the log's outcome of the group commit,
    /// commits the run's applied state (or projects from the log when the run was not next
    /// in witness order) and gives each call its outcome, in order.
    pub fn finish_write_run(
        &mut self,
        run: RunInFlight,
        outcome: lattice_log::BuiltOutcome,
    ) -> Vec<Result<Written, NodeError>> {
        let RunInFlight { slots, mut results } = run;
        let witnessed = match outcome {
            Ok(w) => w,
            Err(e) => {
                self.data.abort_run();
                for i in slots {
                    results[i] = Some(Err(NodeError::Log(e.clone())));
                }
                return final_results(results);
            }
        };
        let seqs: Option<Vec<u64>> = witnessed
            .iter()
            .map(|w| w.as_ref().ok().map(|a| a.seq))
            .collect();
        let mut report = ProjectReport::default();
        // Each intention's rejection reason when the applied run was committed as it is.
        let reasons: Option<Vec<Option<String>>> = match seqs {
            Some(seqs) => {
                let system_next = seqs.first().is_some_and(|f| self.system.cursor() + 1 == *f);
                match self.data.commit_run(&seqs, &mut report) {
                    Ok(reasons) => {
                        if system_next && let Some(last) = seqs.last() {
                            self.system.skip_to(*last);
                        }
                        Some(reasons)
                    }
                    Err(e) => {
                        debug!(store = %self.id.short(), "write run projected from the log: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        match &reasons {
            Some(_) => {
                self.note_blob_refs();
                if let Some(kept) = self.data_events.as_mut() {
                    kept.extend(report.events.iter().cloned());
                }
            }
            None => {
                self.data.abort_run();
                if let Err(e) = self.project() {
                    warn!(store = %self.id.short(), "projecting a write run failed: {e}");
                }
            }
        }
        for (k, (i, outcome)) in slots.into_iter().zip(witnessed).enumerate() {
            results[i] = Some(match outcome {
                Err(e) => Err(e.into()),
                Ok(written) => match reasons.as_ref().and_then(|r| r.get(k)) {
                    Some(reason) => {
                        let events = report
                            .events
                            .iter()
                            .filter(|e| e.seq == written.seq)
                            .count();
                        self.outcome_known(written, reason.clone(), Some(events))
                    }
                    None => self.outcome(Partition::Data, written, None),
                },
            });
        }
        final_results(results)
    }

    /// Runs a query on the projected state as it is (no projection first).
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn query_now(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        Ok(self.data.query(method, args)?)
    }

    /// Authors a prepared write without projecting (for benchmarks that batch projection).
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn submit(
        &mut self,
        method: &str,
        args: &Value,
    ) -> Result<
        lattice_log::Pending<Result<lattice_log::Authored, lattice_log::AuthorError>>,
        NodeError,
    > {
        let prepared = self.data.prepare(method, args, &[])?;
        let mut deps = prepared.deps;
        if self.log.reader().tip(&self.me)?.is_none() {
            deps.push(Hash(self.id.0));
        }
        Ok(self.log.submit_author(Draft {
            ops: prepared.ops,
            deps,
            flags: prepared.flags,
        }))
    }

    /// The peers in the system table.
    ///
    /// # Errors
    /// Storage failures.
    pub fn peers(&mut self) -> Result<Vec<PeerInfo>, NodeError> {
        let peers: Items<PeerItem> = self.system_typed("peers")?;
        Ok(peers
            .items
            .into_iter()
            .filter_map(|item| {
                Some(PeerInfo {
                    key: parse_key(&item.peer)?,
                    status: item.status?,
                    name: item.name,
                    addrs: item.addrs,
                    refused: item.refused,
                    written_in: item.op.and_then(|h| Hash::from_hex(&h).ok()),
                    written_by: item.by.as_deref().and_then(parse_key),
                })
            })
            .collect())
    }

    /// Runs a system table query without arguments and reads its answer as `T`.
    fn system_typed<T: serde::de::DeserializeOwned>(
        &mut self,
        query: &str,
    ) -> Result<T, NodeError> {
        let value = self.system.query(query, &json!({}))?;
        serde_json::from_value(value).map_err(|e| NodeError::SystemShape {
            query: query.to_string(),
            reason: e.to_string(),
        })
    }

    /// The child stores declared in the system table.
    ///
    /// # Errors
    /// Storage failures.
    pub fn children(&mut self) -> Result<Vec<ChildLink>, NodeError> {
        let children: Items<ChildItem> = self.system_typed("children")?;
        Ok(children
            .items
            .into_iter()
            .filter_map(|item| {
                Some(ChildLink {
                    id: StoreId::from_hex(&item.id).ok()?,
                    alias: item.record.alias,
                    module: item.record.module,
                    status: item.record.status,
                })
            })
            .collect())
    }

    /// The system table's `store` record: name and peer strategy.
    ///
    /// # Errors
    /// Storage failures.
    pub fn system_info(&mut self) -> Result<StoreInfo, NodeError> {
        self.system_typed("store")
    }

    /// The parent store this store inherits its peers from (`None` for its own peers).
    ///
    /// # Errors
    /// Storage failures.
    pub fn inherits_from(&mut self) -> Result<Option<StoreId>, NodeError> {
        Ok(self
            .system_info()?
            .strategy
            .parent()
            .and_then(|p| StoreId::from_hex(p).ok()))
    }

    /// Runs a system table query on the projected system state.
    ///
    /// # Errors
    /// Bad arguments or storage failures.
    pub fn system_query(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        Ok(self.system.query(method, args)?)
    }

    /// The store's status.
    ///
    /// # Errors
    /// Storage failures.
    pub fn status(&mut self) -> Result<StoreStatus, NodeError> {
        let log = self.log.reader().status()?;
        let name = self
            .system_info()?
            .name
            .unwrap_or_else(|| self.genesis.name.clone());
        Ok(StoreStatus {
            id: self.id,
            name,
            module: self.genesis.module.to_string(),
            headless: self.is_headless(),
            headless_by_choice: self.data.is_headless_by_choice(),
            witnessed: log.head_seq,
            projected: self.data.cursor(),
            floating: log.floating,
            rejected: self.data.rejected_count()?,
            epoch: self.epoch()?,
            lag: self.epoch_lag()?,
            log_bytes: file_size(&self.files.log),
            state_bytes: [
                &self.files.state,
                &self.files.system,
                &self.files.epoch_state,
                &self.files.epoch_system,
            ]
            .into_iter()
            .map(|p| file_size(p))
            .sum(),
        })
    }

    /// The newest `limit` witnessed intentions, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn history(&self, limit: usize) -> Result<Vec<IntentionSummary>, NodeError> {
        let reader = self.log.reader();
        let head = reader.status()?.head_seq;
        let from = head.saturating_sub(limit as u64).saturating_add(1).max(1);
        let mut out: Vec<IntentionSummary> = reader
            .witnessed(from, limit)?
            .into_iter()
            .map(|(seq, s)| {
                let i = s.intention();
                IntentionSummary {
                    seq,
                    hash: s.hash(),
                    author: i.author(),
                    hlc: i.hlc(),
                    deps: i.deps().to_vec(),
                    ops_bytes: i.ops().len(),
                    partition: if i.is_genesis() {
                        "genesis"
                    } else if i.flags().system {
                        "system"
                    } else {
                        "data"
                    },
                }
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Intentions the guest rejected or the author policy refused, with reasons.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected(&self) -> Result<Vec<(u64, String)>, NodeError> {
        Ok(self.data.rejected(0, usize::MAX)?)
    }

    /// The newest `limit` rejected intentions of both partitions, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected_details(&self, limit: usize) -> Result<Vec<RejectedIntention>, NodeError> {
        let mut all: Vec<(u64, Partition, String)> = Vec::new();
        for (partition, runtime) in [
            (Partition::Data, &self.data),
            (Partition::System, &self.system),
        ] {
            all.extend(
                runtime
                    .rejected_newest(limit)?
                    .into_iter()
                    .map(|(seq, reason)| (seq, partition, reason)),
            );
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.0));
        all.truncate(limit);
        let reader = self.log.reader();
        let mut out = Vec::with_capacity(all.len());
        for (seq, partition, reason) in all {
            // A rejected intention pruned since is not listed.
            let Some(signed) = reader.witnessed_at(seq)? else {
                continue;
            };
            let i = signed.intention();
            out.push(RejectedIntention {
                seq,
                hash: signed.hash(),
                author: i.author(),
                hlc: i.hlc(),
                partition,
                reason,
            });
        }
        Ok(out)
    }

    /// A digest of the projected state (both partitions), to compare replicas.
    ///
    /// # Errors
    /// Storage failures.
    pub fn state_digest(&self) -> Result<Hash, NodeError> {
        digest_of(&self.data, &self.system)
    }

    /// Keeps both projection files from being marked clean when they close, so the next open
    /// checks them (a storage operation on them failed in a way that suggests damage).
    pub fn mark_damaged(&mut self) {
        self.data.mark_damaged();
        self.system.mark_damaged();
        if let Some((data, system)) = self.epochs.state.as_mut() {
            data.mark_damaged();
            system.mark_damaged();
        }
    }

    /// Forgets both projections and projects the whole log again.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rebuild(&mut self) -> Result<ProjectReport, NodeError> {
        self.settle()?;
        self.project()
    }

    /// Closes the store, waiting for its log actor when this was the last handle to the log
    /// (otherwise the log closes when the last handle goes).
    ///
    /// # Errors
    /// When the log actor failed.
    pub fn close(self) -> Result<(), NodeError> {
        match Arc::try_unwrap(self.log) {
            Ok(log) => Ok(log.close()?),
            Err(_) => Ok(()),
        }
    }
}

/// How [`Store::start_write_run`] left a run.
#[derive(Debug)]
pub enum RunStart {
    /// Nothing to witness (every call was refused, or the run was written one by one): the
    /// results, in call order.
    Done(Vec<Result<Written, NodeError>>),
    /// Handed to the log; finish it with [`Store::finish_write_run`].
    InFlight(RunInFlight),
}

/// A write run the log is committing (see [`Store::start_write_run`]).
#[derive(Debug)]
pub struct RunInFlight {
    /// The calls that became intentions, in run order.
    slots: Vec<usize>,
    /// Outcomes known so far (calls the guest refused).
    results: Vec<Option<Result<Written, NodeError>>>,
}

/// Every call's outcome; a call left without one (a bug) gets a typed error.
fn final_results(
    results: Vec<Option<Result<Written, NodeError>>>,
) -> Vec<Result<Written, NodeError>> {
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(NodeError::Runtime(lattice_runtime::Error::Corrupt(
                    "a call of a write run got no outcome".into(),
                )))
            })
        })
        .collect()
}
