//! [`Store`]: one open store: its log, its two projections (data partition by the store's
//! module, system partition by the system table guest), and the call path that joins them.

use std::sync::Arc;

use lattice_log::{Draft, Log};
use lattice_model::{Hash, PubKey, StoreId};
use lattice_runtime::{
    AuthorFilter, MethodKind, Partition, ProjectReport, Runtime, StoreDescriptor, StoreRuntime,
    WatchEvent,
};
use serde_json::{Value, json};
use tracing::warn;

use crate::error::NodeError;
use crate::genesis::StoreGenesis;

/// Intentions read from the log per projection step.
const PROJECT_BATCH: usize = 512;
/// Replays per projection call when a revocation changes what may be projected.
const MAX_REPLAYS: u32 = 4;

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
    /// A replay is running: the filter stays fixed until it reaches the log head.
    replaying: bool,
    me: PubKey,
}

/// A peer as the system table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its key.
    pub key: PubKey,
    /// `invited`, `active`, `dormant` or `revoked`.
    pub status: String,
    /// Its name, when set.
    pub name: Option<String>,
    /// Where it last said it listens (`ip:port`).
    pub addrs: Vec<String>,
}

impl PeerInfo {
    /// True for active and dormant peers: they may connect, gossip and bootstrap.
    pub fn is_member(&self) -> bool {
        matches!(self.status.as_str(), "active" | "dormant")
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
    /// `active` or `archived`.
    pub status: String,
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
    /// Witnessed intentions (the witness log head).
    pub witnessed: u64,
    /// Last witness seq projected onto the data partition.
    pub projected: u64,
    /// Floating intentions (waiting for a predecessor or dep).
    pub floating: u64,
    /// Intentions the guest rejected or the author policy refused (data partition).
    pub rejected: u64,
}

impl StoreStatus {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "store": self.id.to_string(),
            "name": self.name,
            "module": self.module,
            "headless": self.headless,
            "witnessed": self.witnessed,
            "projected": self.projected,
            "floating": self.floating,
            "rejected": self.rejected,
            "state": if self.headless { format!("waiting for module {}", self.module) } else if self.projected < self.witnessed { "projecting".to_string() } else { "ready".to_string() },
        })
    }
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
    ) -> Result<Store, NodeError> {
        let genesis = log
            .reader()
            .get(&Hash(id.0))?
            .and_then(|g| StoreGenesis::decode(g.intention().ops()))
            .ok_or(NodeError::BadGenesis(id))?;
        let data = StoreRuntime::open(runtime, &dir.state_path(&id), id, genesis.module)?;
        let system = StoreRuntime::open_partition(
            runtime,
            &dir.system_path(&id),
            id,
            system_module,
            Partition::System,
        )?;
        let mut store = Store {
            id,
            genesis,
            log,
            data,
            system,
            filter: AuthorFilter::default(),
            system_events: Vec::new(),
            data_events: None,
            replaying: false,
            me,
        };
        store.filter = store.read_filter()?;
        store.project()?;
        Ok(store)
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

    /// Reads the author filter from the system table's `peers` query.
    fn read_filter(&mut self) -> Result<AuthorFilter, NodeError> {
        let mut filter = AuthorFilter::default();
        let peers = self.system.query("peers", &json!({}))?;
        for item in peers["items"].as_array().into_iter().flatten() {
            let Some(key) = item["peer"].as_str().and_then(parse_key) else {
                continue;
            };
            for range in item["refused"].as_array().into_iter().flatten() {
                if let Some(from) = range[0].as_u64() {
                    filter.refuse(key, from, range[1].as_u64());
                }
            }
        }
        Ok(filter)
    }

    /// True when changing the filter from `old` to `new` may change what was already
    /// projected: some author whose ranges differ has intentions at or after the first
    /// differing range.
    fn filter_change_matters(
        &self,
        old: &AuthorFilter,
        new: &AuthorFilter,
    ) -> Result<bool, NodeError> {
        let frontier = self.log.reader().frontier()?;
        for author in old.authors().chain(new.authors()) {
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
            let tip = frontier
                .iter()
                .find(|(k, _)| k == author)
                .map_or(0, |(_, s)| *s);
            if first.is_some_and(|first| tip >= first) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn reset_projections(&mut self) -> Result<(), NodeError> {
        self.system.reset()?;
        self.data.reset()?;
        Ok(())
    }

    /// Projects everything witnessed but not yet applied, both partitions, reading each batch
    /// of the log once: first the system partition, then the data partition with the author
    /// filter the system table now implies. When a revocation (or re-activation) changes what
    /// may be projected of intentions already projected, both partitions are replayed from
    /// the start with the new filter, so every peer ends with the same state whatever order
    /// the revocation and the revoked writes arrived in. Loads the data module first if it was
    /// installed meanwhile. Returns the data partition's report.
    ///
    /// # Errors
    /// Storage or host failures.
    pub fn project(&mut self) -> Result<ProjectReport, NodeError> {
        self.data.attach()?;
        let mut report = ProjectReport {
            cursor: self.data.cursor(),
            ..ProjectReport::default()
        };
        let mut replays = 0;
        loop {
            let from = if self.data.is_headless() {
                self.system.cursor()
            } else {
                self.system.cursor().min(self.data.cursor())
            };
            let batch = self.log.reader().witnessed(from + 1, PROJECT_BATCH)?;
            if batch.is_empty() {
                if self.replaying {
                    // Replays keep the filter fixed; check it is a fixed point.
                    self.replaying = false;
                    let fresh = self.read_filter()?;
                    if fresh != self.filter && replays < MAX_REPLAYS {
                        self.filter = fresh;
                        self.reset_projections()?;
                        replays += 1;
                        self.replaying = true;
                        continue;
                    }
                    self.filter = fresh;
                }
                break;
            }
            let mut system = ProjectReport::default();
            self.system
                .apply_witnessed(self.log.reader(), &batch, &self.filter, &mut system)?;
            if !self.replaying && system.events.iter().any(|e| e.topic == "peer") {
                let fresh = self.read_filter()?;
                if fresh != self.filter {
                    let matters = self.filter_change_matters(&self.filter, &fresh)?;
                    self.filter = fresh;
                    if matters {
                        if replays >= MAX_REPLAYS {
                            warn!(store = %self.id.short(), "author filter keeps changing; not replaying again");
                        } else {
                            self.reset_projections()?;
                            self.system_events.extend(system.events);
                            replays += 1;
                            self.replaying = true;
                            report = ProjectReport::default();
                            continue;
                        }
                    }
                }
            }
            self.system_events.extend(system.events);
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
    }

    /// Calls a method of the system table (see the `system` guest): `peers`, `children`,
    /// `set-peer-status`, `add-child`, …
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn system_call(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
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
    ) -> Result<Value, NodeError> {
        let descriptor = self.runtime_of(partition).describe()?;
        let kind = descriptor.method(method).map(|m| m.kind);
        if kind == Some(MethodKind::Query) {
            self.project()?;
            return Ok(self.runtime_of(partition).query(method, args)?);
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
        let written = self.log.author(Draft {
            ops: prepared.ops,
            deps,
            flags: prepared.flags,
        })?;
        let report = self.project()?;
        let rejected = self
            .runtime_of(partition)
            .rejected(written.seq, 1)?
            .into_iter()
            .find(|(seq, _)| *seq == written.seq)
            .map(|(_, reason)| reason);
        Ok(json!({
            "hash": written.hash.to_string(),
            "seq": written.seq,
            "hlc": written.hlc.to_string(),
            "events": report.events.len(),
            "rejected": rejected,
        }))
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
        let peers = self.system.query("peers", &json!({}))?;
        Ok(peers["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                Some(PeerInfo {
                    key: parse_key(item["peer"].as_str()?)?,
                    status: item["status"].as_str()?.to_string(),
                    name: item["name"].as_str().map(str::to_string),
                    addrs: item["addrs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect(),
                })
            })
            .collect())
    }

    /// The child stores declared in the system table.
    ///
    /// # Errors
    /// Storage failures.
    pub fn children(&mut self) -> Result<Vec<ChildLink>, NodeError> {
        let children = self.system.query("children", &json!({}))?;
        Ok(children["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                Some(ChildLink {
                    id: StoreId::from_hex(item["id"].as_str()?).ok()?,
                    alias: item["alias"].as_str()?.to_string(),
                    module: item["module"].as_str()?.to_string(),
                    status: item["status"].as_str()?.to_string(),
                })
            })
            .collect())
    }

    /// The system table's `store` record: name, strategy, parent.
    ///
    /// # Errors
    /// Storage failures.
    pub fn system_info(&mut self) -> Result<Value, NodeError> {
        Ok(self.system.query("store", &json!({}))?)
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
        let name = self.system_info()?["name"]
            .as_str()
            .map_or_else(|| self.genesis.name.clone(), str::to_string);
        Ok(StoreStatus {
            id: self.id,
            name,
            module: self.genesis.module.to_string(),
            headless: self.data.is_headless(),
            witnessed: log.head_seq,
            projected: self.data.cursor(),
            floating: log.floating,
            rejected: self.data.rejected_count()?,
        })
    }

    /// Intentions the guest rejected or the author policy refused, with reasons.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected(&self) -> Result<Vec<(u64, String)>, NodeError> {
        Ok(self.data.rejected(0, usize::MAX)?)
    }

    /// A digest of the projected state (both partitions), to compare replicas.
    ///
    /// # Errors
    /// Storage failures.
    pub fn state_digest(&self) -> Result<Hash, NodeError> {
        let data = self.data.state_digest()?;
        let system = self.system.state_digest()?;
        Ok(Hash::of(&[data.0, system.0].concat()))
    }

    /// Forgets both projections and projects the whole log again.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rebuild(&mut self) -> Result<ProjectReport, NodeError> {
        self.reset_projections()?;
        self.replaying = true;
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
