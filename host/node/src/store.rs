//! [`Store`]: one open store: its log, its runtime, and the call path that joins them.

use std::path::PathBuf;

use lattice_log::{Draft, Log};
use lattice_model::{Hash, PubKey, StoreId};
use lattice_runtime::{MethodKind, ProjectReport, StoreDescriptor, StoreRuntime};
use serde_json::{Value, json};

use crate::error::NodeError;
use crate::genesis::StoreGenesis;

/// An open store.
#[derive(Debug)]
pub struct Store {
    id: StoreId,
    genesis: StoreGenesis,
    log: Log,
    runtime: StoreRuntime,
    me: PubKey,
    state_path: PathBuf,
}

/// What a store looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The store id.
    pub id: StoreId,
    /// Name from the genesis.
    pub name: String,
    /// The module the store runs.
    pub module: String,
    /// True when the module is not installed here: intentions are witnessed but not projected.
    pub headless: bool,
    /// Witnessed intentions (the witness log head).
    pub witnessed: u64,
    /// Last witness seq projected onto state.
    pub projected: u64,
    /// Floating intentions (waiting for a predecessor or dep).
    pub floating: u64,
    /// Intentions the guest rejected.
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

impl Store {
    pub(crate) fn new(
        id: StoreId,
        genesis: StoreGenesis,
        log: Log,
        runtime: StoreRuntime,
        me: PubKey,
        state_path: PathBuf,
    ) -> Store {
        Store {
            id,
            genesis,
            log,
            runtime,
            me,
            state_path,
        }
    }

    /// The store id.
    pub fn id(&self) -> StoreId {
        self.id
    }

    /// The log (for ingest from peers and low-level reads).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The genesis facts.
    pub fn genesis(&self) -> &StoreGenesis {
        &self.genesis
    }

    /// Projects everything witnessed but not yet applied (after loading the module if it was
    /// installed meanwhile).
    ///
    /// # Errors
    /// Storage or host failures.
    pub fn project(&mut self) -> Result<ProjectReport, NodeError> {
        self.runtime.attach()?;
        Ok(self.runtime.project(self.log.reader())?)
    }

    /// The store type's description.
    ///
    /// # Errors
    /// [`lattice_runtime::Error::Headless`] when the module is missing.
    pub fn describe(&mut self) -> Result<StoreDescriptor, NodeError> {
        Ok(self.runtime.describe()?)
    }

    /// Calls a method with JSON arguments. A command is prepared by the guest, authored (cites
    /// the genesis when it is this node's first write), witnessed, durable and projected; the
    /// result names the intention. A query is answered from projected state.
    ///
    /// # Errors
    /// Bad arguments, guest refusals, storage failures, or a headless store.
    pub fn call(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        let descriptor = self.runtime.describe()?;
        let kind = descriptor.method(method).map(|m| m.kind);
        match kind {
            Some(MethodKind::Query) => {
                self.project()?;
                Ok(self.runtime.query(method, args)?)
            }
            _ => {
                let heads: Vec<Hash> = self
                    .log
                    .reader()
                    .tips()?
                    .into_iter()
                    .map(|(_, h)| h)
                    .collect();
                let prepared = self.runtime.prepare(method, args, &heads)?;
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
                    .runtime
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
        }
    }

    /// Runs a query on the projected state as it is (no projection first).
    ///
    /// # Errors
    /// As [`Store::call`].
    pub fn query_now(&mut self, method: &str, args: &Value) -> Result<Value, NodeError> {
        Ok(self.runtime.query(method, args)?)
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
        let prepared = self.runtime.prepare(method, args, &[])?;
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

    /// The store's status.
    ///
    /// # Errors
    /// Storage failures.
    pub fn status(&self) -> Result<StoreStatus, NodeError> {
        let log = self.log.reader().status()?;
        Ok(StoreStatus {
            id: self.id,
            name: self.genesis.name.clone(),
            module: self.genesis.module.to_string(),
            headless: self.runtime.is_headless(),
            witnessed: log.head_seq,
            projected: self.runtime.cursor(),
            floating: log.floating,
            rejected: self.runtime.rejected_count()?,
        })
    }

    /// Intentions the guest rejected, with reasons.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected(&self) -> Result<Vec<(u64, String)>, NodeError> {
        Ok(self.runtime.rejected(0, usize::MAX)?)
    }

    /// A digest of the projected state, to compare replicas.
    ///
    /// # Errors
    /// Storage failures.
    pub fn state_digest(&self) -> Result<Hash, NodeError> {
        Ok(self.runtime.state_digest()?)
    }

    /// Drops `state.db` and projects the whole log again.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rebuild(
        self,
        runtime: &lattice_runtime::Runtime,
    ) -> Result<(Store, ProjectReport), NodeError> {
        let Store {
            id,
            genesis,
            log,
            runtime: old,
            me,
            state_path,
        } = self;
        drop(old);
        match std::fs::remove_file(&state_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NodeError::Io {
                    path: state_path.display().to_string(),
                    source,
                });
            }
        }
        let fresh = StoreRuntime::open(runtime, &state_path, id, genesis.module)?;
        let mut store = Store::new(id, genesis, log, fresh, me, state_path);
        let report = store.project()?;
        Ok((store, report))
    }

    /// Closes the store, waiting for its log actor.
    ///
    /// # Errors
    /// When the log actor failed.
    pub fn close(self) -> Result<(), NodeError> {
        Ok(self.log.close()?)
    }
}
