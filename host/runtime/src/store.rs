//! [`StoreRuntime`]: one store's `state.db`, its guest instance and the projection of its
//! witness log onto state.
//!
//! `state.db` tables (all redb): `meta` (`store_id` 32 B, `module` 32 B, `cursor` u64 = last
//! projected witness seq, `log_count` u64), `data` (the guest's namespace, bytes → bytes),
//! `rejected` (seq → reason, for intentions whose apply failed), `log` (index → entry, for
//! `log-append`). The cursor is written in the same transaction as the state changes, so
//! projection is exactly-once across crashes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use lattice_log::LogReader;
use lattice_log::file::{CleanMark, contain, open_checked};
use lattice_model::{Hash, HostOp, IntentionFlags, PubKey, SignedIntention, StoreId};
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable, TableDefinition};
use tracing::{debug, warn};

use crate::bindings::lattice::store::types as wit;
use crate::error::{CallError, Error};
use crate::guest::GuestInstance;
use crate::modules::{ModuleHash, Runtime};
use crate::schema::{MethodKind, StoreDescriptor};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const REJECTED: TableDefinition<u64, &str> = TableDefinition::new("rejected");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Host intentions of this partition that decoded: `seq → hash [32] ‖ author [32] ‖ host op`.
const HOST_OPS: TableDefinition<u64, &[u8]> = TableDefinition::new("host_ops");
/// Every projected epoch by number: `(number, seq) → hash`, to find the epochs a new one
/// reaches, highest first.
const EPOCHS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("epochs");
/// `META` key of the current epoch, the greatest by `(number, hash)`: its seq in `HOST_OPS`
/// (0, or absent, before the first).
const META_EPOCH: &str = "epoch";

/// `META` key of the caller's mark, written with [`StoreRuntime::apply_selected`].
const META_MARK: &str = "mark";

/// Witnessed intentions applied per `state.db` transaction.
const PROJECT_BATCH: usize = 512;

/// Which intentions a [`StoreRuntime`] projects: every store has a data partition (its own
/// module) and a system partition (the system table guest), told apart by the intention's
/// `system` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Intentions without the `system` flag.
    Data,
    /// Intentions with the `system` flag.
    System,
}

/// Which authors' intentions a partition projects. Derived by the node from the system table
/// (the same on every peer that has the same intentions).
///
/// A filter is either open (the default: every author is projected, for stores without a
/// membership policy) or members-only ([`AuthorFilter::members_only`]): then only admitted
/// authors are projected, minus their refused author-sequence ranges (revocations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorFilter {
    members_only: bool,
    members: BTreeMap<PubKey, Vec<(u64, Option<u64>)>>,
}

/// Why an author's intention is not projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The author is not a member of the store.
    NotMember,
    /// The author's intention lies in a refused range (the author was revoked).
    Revoked,
}

impl AuthorFilter {
    /// A filter that projects only authors admitted with [`AuthorFilter::admit`].
    pub fn members_only() -> AuthorFilter {
        AuthorFilter {
            members_only: true,
            members: BTreeMap::new(),
        }
    }

    /// True for a members-only filter.
    pub fn is_members_only(&self) -> bool {
        self.members_only
    }

    /// Admits `author` (no effect on its refused ranges).
    pub fn admit(&mut self, author: PubKey) {
        self.members.entry(author).or_default();
    }

    /// True when `author` is admitted (it may still have refused ranges).
    pub fn admits(&self, author: &PubKey) -> bool {
        !self.members_only || self.members.contains_key(author)
    }

    /// Refuses `author`'s intentions with author sequence in `from..=to` (`None`: no end);
    /// admits the author otherwise.
    pub fn refuse(&mut self, author: PubKey, from: u64, to: Option<u64>) {
        self.members.entry(author).or_default().push((from, to));
    }

    /// The refused ranges of `author`.
    pub fn ranges(&self, author: &PubKey) -> &[(u64, Option<u64>)] {
        self.members.get(author).map_or(&[], Vec::as_slice)
    }

    /// True when some author has a refused range.
    pub fn has_revocations(&self) -> bool {
        self.members.values().any(|ranges| !ranges.is_empty())
    }

    /// True when `author` is revoked now: its last refused range has no end.
    pub fn is_revoked(&self, author: &PubKey) -> bool {
        self.ranges(author)
            .last()
            .is_some_and(|(_, to)| to.is_none())
    }

    /// Whether `author`'s intention at `author_seq` is refused, and why.
    pub fn verdict(&self, author: &PubKey, author_seq: u64) -> Option<Refusal> {
        if !self.admits(author) {
            return Some(Refusal::NotMember);
        }
        let revoked = self
            .ranges(author)
            .iter()
            .any(|(from, to)| author_seq >= *from && to.is_none_or(|to| author_seq <= to));
        revoked.then_some(Refusal::Revoked)
    }

    /// Why `author`'s intention at `author_seq` is refused, as recorded with the rejection.
    pub fn reason(&self, author: &PubKey, author_seq: u64) -> Option<String> {
        self.verdict(author, author_seq)
            .map(|refusal| match refusal {
                Refusal::NotMember => {
                    format!("author {} is not a member of the store", author.short())
                }
                Refusal::Revoked => format!(
                    "author {} is revoked for its intention {author_seq}",
                    author.short()
                ),
            })
    }

    /// True when `author`'s intention at `author_seq` is refused.
    pub fn refuses(&self, author: &PubKey, author_seq: u64) -> bool {
        self.verdict(author, author_seq).is_some()
    }

    /// Authors named by the filter (admitted, or with refused ranges).
    pub fn authors(&self) -> impl Iterator<Item = &PubKey> {
        self.members.keys()
    }
}

/// A command turned into what the node authors: ops, deps and pruning hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedWrite {
    /// The ops payload.
    pub ops: Vec<u8>,
    /// Causal deps the guest chose.
    pub deps: Vec<Hash>,
    /// Pruning hints.
    pub flags: IntentionFlags,
}

/// A watch event emitted by an applied intention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Witness seq of the intention that emitted it.
    pub seq: u64,
    /// The topic the guest chose.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What one projection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectReport {
    /// Intentions applied successfully.
    pub applied: u64,
    /// Intentions whose apply failed (recorded in `rejected`).
    pub rejected: u64,
    /// The cursor after the pass.
    pub cursor: u64,
    /// Events emitted, in witness order.
    pub events: Vec<WatchEvent>,
}

/// A store's projection state and guest.
pub struct StoreRuntime {
    runtime: Runtime,
    store_id: StoreId,
    module: ModuleHash,
    db: Arc<Database>,
    guest: Option<GuestInstance>,
    descriptor: Option<StoreDescriptor>,
    cursor: u64,
    log_count: u64,
    partition: Partition,
    /// The cursor or state committed without an fsync since the last [`StoreRuntime::flush`].
    unsynced: bool,
    /// Writes applied ahead of witnessing (see [`StoreRuntime::begin_run`]).
    run: Option<Run>,
    /// Kept headless by the node's choice: the module is not run even when installed.
    by_choice: bool,
    /// Reference counts to blobs that commits changed, not yet taken
    /// ([`StoreRuntime::take_blob_refs`]).
    blob_refs: Vec<(Hash, u32)>,
    /// Last: written once the database above has closed.
    clean: CleanMark,
}

/// What one apply did: the events it emitted (topic, payload), or the guest's reason to
/// reject the intention.
type ApplyOutcome = Result<Vec<(String, Vec<u8>)>, String>;

/// Outcomes of a run of local intentions applied before they were witnessed, by position in
/// the run.
#[derive(Debug, Default)]
struct Run {
    /// Each intention's rejection reason (`None`: applied), in run order.
    outcomes: Vec<Option<String>>,
    events: Vec<(usize, String, Vec<u8>)>,
    log_entries: Vec<Vec<u8>>,
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            warn!(store = %self.store_id.short(), "could not make projected state durable: {e}");
        }
    }
}

impl std::fmt::Debug for StoreRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoreRuntime({}, module {})",
            self.store_id.short(),
            self.module.short()
        )
    }
}

fn meta_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, Error> {
    match table.get(key)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.value())
            .map(u64::from_le_bytes)
            .map_err(|_| Error::Corrupt(format!("meta `{key}` is malformed"))),
    }
}

fn to_wit(signed: &lattice_model::SignedIntention) -> wit::Intention {
    let i = signed.intention();
    wit::Intention {
        hash: signed.hash().as_bytes().to_vec(),
        author: i.author().as_bytes().to_vec(),
        hlc: wit::Hlc {
            wall_ms: i.hlc().wall_ms,
            counter: i.hlc().counter,
        },
        deps: i.deps().iter().map(|d| d.as_bytes().to_vec()).collect(),
        ops: i.ops().to_vec(),
    }
}

impl StoreRuntime {
    /// Opens (or creates) `state.db` at `path` for a store running `module`. When the module is
    /// not installed the store is *headless*: nothing is projected until it is.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `state.db` belongs to another store or module; storage errors;
    /// [`Error::Call`] when the guest cannot be instantiated.
    pub fn open(
        runtime: &Runtime,
        path: &Path,
        store_id: StoreId,
        module: ModuleHash,
    ) -> Result<StoreRuntime, Error> {
        StoreRuntime::open_partition(runtime, path, store_id, module, Partition::Data)
    }

    /// As [`StoreRuntime::open`], for one partition of the store.
    ///
    /// # Errors
    /// As [`StoreRuntime::open`].
    pub fn open_partition(
        runtime: &Runtime,
        path: &Path,
        store_id: StoreId,
        module: ModuleHash,
        partition: Partition,
    ) -> Result<StoreRuntime, Error> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(16 << 20);
        let db = open_checked(path, &builder)?;
        let (cursor, log_count) = contain(path, || identify(&db, store_id, module))?;
        let mut store = StoreRuntime {
            runtime: runtime.clone(),
            store_id,
            module,
            db: Arc::new(db),
            guest: None,
            descriptor: None,
            cursor,
            log_count,
            partition,
            unsynced: false,
            run: None,
            blob_refs: Vec::new(),
            by_choice: false,
            clean: CleanMark::new(path),
        };
        store.attach()?;
        Ok(store)
    }

    /// Keeps the files from being marked clean when they close (they were found damaged while
    /// open, so the next open checks them).
    pub fn mark_damaged(&mut self) {
        self.clean.disarm();
    }

    /// Loads the module if it is installed now (after a headless start). Returns true when the
    /// store has a guest.
    ///
    /// # Errors
    /// [`Error::Module`] when the installed module does not load; [`Error::Call`] when it does
    /// not instantiate.
    pub fn attach(&mut self) -> Result<bool, Error> {
        if self.guest.is_some() {
            return Ok(true);
        }
        if self.by_choice {
            return Ok(false);
        }
        if !self.runtime.is_installed(&self.module) {
            return Ok(false);
        }
        let loaded = self.runtime.load(&self.module)?;
        let mut guest = GuestInstance::new(&self.runtime, loaded)?;
        guest.host().log_next = self.log_count;
        guest.host().blobs = self
            .runtime
            .blobs
            .clone()
            .map(|cas| crate::host::BlobAccess {
                cas,
                store: self.store_id,
            });
        self.guest = Some(guest);
        Ok(true)
    }

    /// Keeps the store headless by choice from now on: its module is not run (nor loaded)
    /// even when installed; the state stays as projected so far, and projection resumes from
    /// its cursor in a runtime opened without this.
    pub fn keep_headless(&mut self) {
        self.by_choice = true;
        self.abort_run();
        self.guest = None;
        self.descriptor = None;
    }

    /// Blobs the guest's reads asked for that were not here since the last call, for the
    /// node to fetch (a read of them can then be tried again).
    pub fn take_missed_blobs(&mut self) -> Vec<Hash> {
        self.guest
            .as_mut()
            .map(|g| std::mem::take(&mut g.host().missed_blobs))
            .unwrap_or_default()
    }

    /// True when kept headless by choice ([`StoreRuntime::keep_headless`]).
    pub fn is_headless_by_choice(&self) -> bool {
        self.by_choice
    }

    /// The store's module.
    pub fn module(&self) -> ModuleHash {
        self.module
    }

    /// True when the module is not installed, so nothing is projected.
    pub fn is_headless(&self) -> bool {
        self.guest.is_none()
    }

    /// The last projected witness seq.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    fn guest(&mut self) -> Result<&mut GuestInstance, Error> {
        let module = self.module;
        self.guest
            .as_mut()
            .ok_or_else(|| Error::Headless(module.to_string()))
    }

    fn snapshot(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, Error> {
        Ok(self.db.begin_read()?.open_table(DATA)?)
    }

    /// The store type's description (cached after the first call).
    ///
    /// # Errors
    /// [`Error::Headless`] without a module; [`Error::Call`] when the guest fails.
    pub fn describe(&mut self) -> Result<StoreDescriptor, Error> {
        Ok(self.descriptor()?.clone())
    }

    /// The kind of `method` (`None`: the type has no such method), from the cached descriptor.
    ///
    /// # Errors
    /// As [`StoreRuntime::describe`].
    pub fn method_kind(&mut self, method: &str) -> Result<Option<MethodKind>, Error> {
        Ok(self.descriptor()?.method(method).map(|m| m.kind))
    }

    fn descriptor(&mut self) -> Result<&StoreDescriptor, Error> {
        if self.descriptor.is_none() {
            let d: StoreDescriptor = self.guest()?.describe()?.into();
            self.descriptor = Some(d);
        }
        self.descriptor
            .as_ref()
            .ok_or(Error::Corrupt("descriptor missing after describe".into()))
    }

    /// Gives the guest a snapshot of the committed state for one call, unless a run holds
    /// one already (nothing commits during a run). Returns true when the caller must take it
    /// back after the call.
    fn lend_snapshot(&mut self) -> Result<bool, Error> {
        if self.run.is_some() {
            return Ok(false);
        }
        let snapshot = self.snapshot()?;
        self.guest()?.host().snapshot = Some(snapshot);
        Ok(true)
    }

    /// Checks a call against the cached descriptor and returns the method's kind.
    fn check_call(&mut self, method: &str, args: &serde_json::Value) -> Result<MethodKind, Error> {
        Ok(self
            .descriptor()?
            .check_call(method, args)
            .map_err(Error::BadArguments)?
            .kind)
    }

    /// Turns a command into a write, after checking the arguments against the schema.
    /// `heads` are the store's current DAG heads (what `get-head` returns).
    ///
    /// # Errors
    /// [`Error::BadArguments`] when the call does not match the schema; [`Error::Call`] when the
    /// guest refuses or fails; [`Error::Headless`].
    pub fn prepare(
        &mut self,
        method: &str,
        args: &serde_json::Value,
        heads: &[Hash],
    ) -> Result<PreparedWrite, Error> {
        let kind = self.check_call(method, args)?;
        if kind != MethodKind::Command {
            return Err(Error::BadArguments(format!(
                "`{method}` is a query; use query, not a command"
            )));
        }
        let lent = self.lend_snapshot()?;
        let guest = self.guest()?;
        guest.host().heads = heads.iter().map(|h| h.as_bytes().to_vec()).collect();
        let result = guest.prepare(method, &args.to_string());
        if lent {
            guest.host().snapshot = None;
        }
        let prepared = result?;
        let mut deps = Vec::with_capacity(prepared.deps.len());
        for d in &prepared.deps {
            let bytes = <[u8; 32]>::try_from(d.as_slice()).map_err(|_| {
                CallError::Guest(crate::GuestError::Internal("a dep is not 32 bytes".into()))
            })?;
            deps.push(Hash(bytes));
        }
        Ok(PreparedWrite {
            ops: prepared.ops,
            deps,
            flags: IntentionFlags {
                ephemeral: prepared.ephemeral,
                supersedes_all: prepared.supersedes_all,
                system: self.partition == Partition::System,
                host: false,
            },
        })
    }

    /// Runs a query and returns its JSON result. During a run (see
    /// [`StoreRuntime::begin_run`]) it reads the committed state the run started from.
    ///
    /// # Errors
    /// As [`StoreRuntime::prepare`]; a query that writes fails with [`CallError::Forbidden`].
    pub fn query(
        &mut self,
        method: &str,
        args: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let kind = self.check_call(method, args)?;
        if kind != MethodKind::Query {
            return Err(Error::BadArguments(format!(
                "`{method}` is a command, not a query"
            )));
        }
        let lent = self.lend_snapshot()?;
        let in_run = self.run.is_some();
        let guest = self.guest()?;
        // During a run the query reads the committed state the run started from, not the
        // run's applied writes: those are not durable until the run is witnessed.
        let hidden = in_run.then(|| std::mem::take(&mut guest.host().batch));
        let result = guest.query(method, &args.to_string());
        if lent {
            guest.host().snapshot = None;
        }
        if let Some(batch) = hidden {
            guest.host().batch = batch;
        }
        let text = result?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Call(CallError::Guest(crate::GuestError::Internal(format!(
                "query result is not JSON: {e}"
            ))))
        })
    }

    /// Applies every witnessed intention of this partition after the cursor, in witness order,
    /// in batches of 512 per `state.db` transaction. A guest failure rejects that one intention
    /// (recorded with its reason) and projection goes on; so does an author `filter` refusal.
    /// Headless stores do nothing.
    ///
    /// # Errors
    /// Storage failures of the log or `state.db` (the batch is not committed and will be
    /// retried); a host failure inside a guest call.
    pub fn project(
        &mut self,
        log: &LogReader,
        filter: &AuthorFilter,
    ) -> Result<ProjectReport, Error> {
        let mut report = ProjectReport {
            cursor: self.cursor,
            ..ProjectReport::default()
        };
        if self.guest.is_none() {
            return Ok(report);
        }
        loop {
            let batch = log.witnessed(self.cursor + 1, PROJECT_BATCH)?;
            if batch.is_empty() {
                break;
            }
            self.apply_witnessed(log, &batch, filter, &mut report)?;
        }
        report.cursor = self.cursor;
        Ok(report)
    }

    /// Applies the intentions of `batch` (witness-ordered, consecutive) that lie after the
    /// cursor, in one `state.db` transaction, adding to `report`. Lets a caller read a batch of
    /// the log once for several partitions. Headless stores do nothing.
    ///
    /// # Errors
    /// As [`StoreRuntime::project`].
    pub fn apply_witnessed(
        &mut self,
        log: &LogReader,
        batch: &[(u64, SignedIntention)],
        filter: &AuthorFilter,
        report: &mut ProjectReport,
    ) -> Result<(), Error> {
        let start = batch.partition_point(|(seq, _)| *seq <= self.cursor);
        if self.guest.is_none() || start == batch.len() {
            report.cursor = self.cursor;
            return Ok(());
        }
        self.project_batch(log, &batch[start..], filter, report, None)?;
        report.cursor = self.cursor;
        Ok(())
    }

    /// Applies `items` — intentions the caller selected, ascending by witness seq, any of
    /// them at or below the cursor — and then moves the cursor to `cursor`, recording `mark`
    /// (the caller's own bytes, read back with [`StoreRuntime::mark`]) in the same
    /// transaction. For a projection of a chosen subset of the log, such as the state at an
    /// epoch. Headless stores do nothing.
    ///
    /// # Errors
    /// As [`StoreRuntime::project`].
    pub fn apply_selected(
        &mut self,
        log: &LogReader,
        items: &[(u64, SignedIntention)],
        filter: &AuthorFilter,
        cursor: u64,
        mark: &[u8],
    ) -> Result<ProjectReport, Error> {
        let mut report = ProjectReport::default();
        if self.guest.is_some() {
            self.project_batch(log, items, filter, &mut report, Some((cursor, mark)))?;
        }
        report.cursor = self.cursor;
        Ok(report)
    }

    /// The mark last recorded by [`StoreRuntime::apply_selected`] (`None` before the first).
    ///
    /// # Errors
    /// Storage failures.
    pub fn mark(&self) -> Result<Option<Vec<u8>>, Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_MARK)?.map(|v| v.value().to_vec()))
    }

    /// Why `filter` refuses `signed`, when it does.
    fn refusal(
        log: &LogReader,
        signed: &SignedIntention,
        filter: &AuthorFilter,
    ) -> Result<Option<String>, Error> {
        let author = signed.intention().author();
        if !filter.admits(&author) {
            return Ok(filter.reason(&author, 0));
        }
        if filter.ranges(&author).is_empty() {
            return Ok(None);
        }
        let Some(info) = log.dag_info(&signed.hash())? else {
            return Ok(None);
        };
        Ok(filter.reason(&author, info.author_seq))
    }

    /// Whether this partition's guest applies `signed`: an intention of its partition that is
    /// neither the genesis nor a host intention (epochs and acks are the host's own).
    fn for_guest(signed: &SignedIntention, system: bool) -> bool {
        let intention = signed.intention();
        let flags = intention.flags();
        flags.system == system && !flags.host && !intention.is_genesis()
    }

    /// Applies the intentions of `batch` that belong to this partition and commits them with
    /// the cursor at the batch's last seq — or, with `end`, at `end.0` together with the mark
    /// `end.1` (see [`StoreRuntime::apply_selected`]).
    fn project_batch(
        &mut self,
        log: &LogReader,
        batch: &[(u64, SignedIntention)],
        filter: &AuthorFilter,
        report: &mut ProjectReport,
        end: Option<(u64, &[u8])>,
    ) -> Result<(), Error> {
        let system = self.partition == Partition::System;
        let mut rejected: Vec<(u64, String)> = Vec::new();
        let mut refused = Vec::new();
        // Host intentions of this partition: recorded here, never applied by the guest.
        let mut host_ops: Vec<HostRecord> = Vec::new();
        for (seq, signed) in batch {
            let intention = signed.intention();
            let flags = intention.flags();
            if flags.system != system || intention.is_genesis() {
                continue;
            }
            // Only members write, host intentions included.
            if let Some(reason) = Self::refusal(log, signed, filter)? {
                refused.push(*seq);
                rejected.push((*seq, reason));
            } else if flags.host {
                let record = HostOp::decode(intention.ops())
                    .map_err(|e| e.to_string())
                    .map(|op| HostRecord {
                        seq: *seq,
                        hash: signed.hash(),
                        author: intention.author(),
                        op,
                    });
                let checked = match record {
                    Ok(record) => self
                        .check_epoch(log, signed, &record, &host_ops)?
                        .map(|()| record),
                    Err(reason) => Err(reason),
                };
                match checked {
                    Ok(record) => host_ops.push(record),
                    Err(reason) => rejected.push((*seq, reason)),
                }
            }
        }
        let mut last = self.cursor;
        let mut events = Vec::new();
        let mut log_entries: Vec<Vec<u8>> = Vec::new();
        let mut applied = 0u64;
        self.host_begin()?;
        for (seq, signed) in batch {
            last = *seq;
            if !Self::for_guest(signed, system) || refused.contains(seq) {
                continue;
            }
            match self.apply_one(signed, &mut log_entries) {
                Ok(Ok(emitted)) => {
                    events.extend(emitted.into_iter().map(|(topic, payload)| WatchEvent {
                        seq: *seq,
                        topic,
                        payload,
                    }));
                    applied += 1;
                }
                Ok(Err(reason)) => {
                    debug!(seq, %reason, "intention rejected by the guest");
                    rejected.push((*seq, reason));
                }
                Err(e) => {
                    self.host_end();
                    return Err(e);
                }
            }
        }
        let writes = self.host_end();
        rejected.sort_by_key(|r| r.0);
        let (last, mark) = match end {
            Some((cursor, mark)) => (cursor, Some(mark)),
            None => (last, None),
        };
        self.commit_projected(last, &writes, &log_entries, &rejected, &host_ops, mark)?;
        // Refusals by the author filter are expected (a revoked author, a member admitted in
        // the same batch: membership is settled again and the batch replayed); the guest's
        // own rejections are worth a warning.
        let store = self.store_id.short();
        if let Some(seq) = refused.first() {
            debug!(%store, count = refused.len(), first = seq, "intentions of authors the filter refuses not projected");
        }
        let mut refused_by_guest = rejected.iter().filter(|(seq, _)| !refused.contains(seq));
        if let Some((seq, reason)) = refused_by_guest.next() {
            let count = 1 + refused_by_guest.count();
            warn!(%store, count, first = seq, %reason, "guest rejected intentions");
        }
        report.applied += applied;
        report.rejected += rejected.len() as u64;
        report.events.extend(events);
        Ok(())
    }

    /// Checks an epoch against the DAG (other host ops pass): it must cite the genesis, and its
    /// number must be 1 + the largest number among the epochs it reaches (0 when none), looking
    /// at the epochs recorded and those earlier in this batch (`pending`). Everything an epoch
    /// reaches is witnessed before it, so every peer gets the same answer. Returns the reason
    /// to reject it.
    fn check_epoch(
        &self,
        log: &LogReader,
        signed: &SignedIntention,
        record: &HostRecord,
        pending: &[HostRecord],
    ) -> Result<Result<(), String>, Error> {
        let HostOp::Epoch { number, .. } = record.op else {
            return Ok(Ok(()));
        };
        if !signed.intention().deps().contains(&Hash(self.store_id.0)) {
            return Ok(Err("an epoch must cite the store's genesis".into()));
        }
        let mut reached: Option<u64> = None;
        for (n, hash) in pending.iter().filter_map(HostRecord::epoch_order) {
            if reached.is_none_or(|r| n > r) && log.is_ancestor(&hash, &record.hash)? {
                reached = Some(n);
            }
        }
        let txn = self.db.begin_read()?;
        let epochs = txn.open_table(EPOCHS)?;
        // Highest number first: the first one reached is the largest.
        for entry in epochs.iter()?.rev() {
            let (n, hash) = epoch_entry(entry?)?;
            if reached.is_some_and(|r| r >= n) {
                break;
            }
            if log.is_ancestor(&hash, &record.hash)? {
                reached = Some(n);
                break;
            }
        }
        let expected = reached.map_or(0, |r| r + 1);
        Ok(if number == expected {
            Ok(())
        } else {
            Err(format!(
                "epoch number {number} is wrong: the epochs it reaches make it {expected}"
            ))
        })
    }

    /// Readies the guest's host state for a pass of applies over the committed snapshot.
    fn host_begin(&mut self) -> Result<(), Error> {
        let snapshot = self.snapshot()?;
        let log_count = self.log_count;
        let guest = self.guest()?;
        let host = guest.host();
        host.snapshot = Some(snapshot);
        host.batch.clear();
        host.log_next = log_count;
        Ok(())
    }

    /// Ends a pass of applies: returns the writes they made.
    fn host_end(&mut self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        match self.guest.as_mut() {
            Some(guest) => {
                let host = guest.host();
                host.snapshot = None;
                std::mem::take(&mut host.batch)
            }
            None => BTreeMap::new(),
        }
    }

    /// Applies one intention on top of the writes of the pass so far. `Ok(Err(reason))` when
    /// the guest rejected it (its writes are dropped); `Err` for a host failure.
    fn apply_one(
        &mut self,
        signed: &SignedIntention,
        log_entries: &mut Vec<Vec<u8>>,
    ) -> Result<ApplyOutcome, Error> {
        let guest = self.guest()?;
        let result = guest.apply(&to_wit(signed));
        let host = guest.host();
        match result {
            Ok(()) => {
                let pending = std::mem::take(&mut host.pending);
                host.batch.extend(pending);
                host.pending_bytes = 0;
                log_entries.append(&mut host.log_pending);
                Ok(Ok(host.events.drain(..).collect()))
            }
            Err(CallError::Host(msg)) => {
                host.discard_pending();
                Err(Error::Call(CallError::Host(msg)))
            }
            Err(err) => {
                host.discard_pending();
                Ok(Err(err.to_string()))
            }
        }
    }

    /// Commits a pass: its writes, guest log entries and rejections with the cursor, without
    /// an fsync (the log is the write-ahead log: after a crash, projection resumes from the
    /// cursor that last reached the disk). A pass that changed nothing only moves the cursor
    /// in memory; [`StoreRuntime::flush`] persists it.
    fn commit_projected(
        &mut self,
        last: u64,
        writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        log_entries: &[Vec<u8>],
        rejected: &[(u64, String)],
        host_ops: &[HostRecord],
        mark: Option<&[u8]>,
    ) -> Result<(), Error> {
        if writes.is_empty()
            && log_entries.is_empty()
            && rejected.is_empty()
            && host_ops.is_empty()
            && mark.is_none()
        {
            if last != self.cursor {
                self.cursor = last;
                self.unsynced = true;
            }
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut data = txn.open_table(DATA)?;
            for (k, v) in writes {
                match v {
                    Some(v) => {
                        data.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        data.remove(k.as_slice())?;
                    }
                }
            }
            let mut log_table = txn.open_table(LOG)?;
            for (i, entry) in log_entries.iter().enumerate() {
                log_table.insert(self.log_count + i as u64, entry.as_slice())?;
            }
            let mut rej = txn.open_table(REJECTED)?;
            for (seq, reason) in rejected {
                rej.insert(*seq, reason.as_str())?;
            }
            let mut host = txn.open_table(HOST_OPS)?;
            let mut epochs = txn.open_table(EPOCHS)?;
            for record in host_ops {
                host.insert(record.seq, record.encode().as_slice())?;
                if let Some((number, hash)) = record.epoch_order() {
                    epochs.insert((number, record.seq), hash.as_bytes().as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            let greatest = host_ops
                .iter()
                .filter_map(|r| Some((r.epoch_order()?, r.seq)))
                .max();
            if let Some((order, seq)) = greatest {
                let current = match meta_u64(&meta, META_EPOCH)? {
                    0 => None,
                    at => host_record(&host, at)?.and_then(|r| r.epoch_order()),
                };
                if current.is_none_or(|c| c < order) {
                    meta.insert(META_EPOCH, seq.to_le_bytes().as_slice())?;
                }
            }
            meta.insert("cursor", last.to_le_bytes().as_slice())?;
            if let Some(mark) = mark {
                meta.insert(META_MARK, mark)?;
            }
            let count = self.log_count + log_entries.len() as u64;
            meta.insert("log_count", count.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        for (key, value) in writes {
            if let Some(hash) = crate::host::blob_ref(key) {
                let count = value.as_deref().map_or(0, crate::host::ref_count);
                self.blob_refs.push((hash, count));
            }
        }
        self.cursor = last;
        self.log_count += log_entries.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// The reference counts to blobs that commits changed since the last call (the newest
    /// count of each blob last), for the node to keep its blob store in step.
    pub fn take_blob_refs(&mut self) -> Vec<(Hash, u32)> {
        std::mem::take(&mut self.blob_refs)
    }

    /// Every blob the projected state references, with its count (after the state was
    /// replaced: a rebuild, a snapshot). Costs one scan of the references, not of the state.
    ///
    /// # Errors
    /// Storage failures.
    pub fn blob_refs(&self) -> Result<Vec<(Hash, u32)>, Error> {
        let txn = self.db.begin_read()?;
        let data = txn.open_table(DATA)?;
        let mut out = Vec::new();
        for row in data.range::<&[u8]>(crate::host::BLOB_REF_PREFIX..)? {
            let (k, v) = row?;
            let Some(hash) = crate::host::blob_ref(k.value()) else {
                if k.value().starts_with(crate::host::BLOB_REF_PREFIX) {
                    continue;
                }
                break;
            };
            out.push((hash, crate::host::ref_count(v.value())));
        }
        Ok(out)
    }

    /// Makes the projected state durable: one fsync covering every commit since the last
    /// flush. Until then a crash rolls state and cursor back together to the last flush, and
    /// projection replays the log from there (exactly once).
    ///
    /// # Errors
    /// Storage failures.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.unsynced {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("cursor", self.cursor.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        self.unsynced = false;
        Ok(())
    }

    /// Starts a run of this node's own writes, applied as each is built and before the log
    /// witnesses them, so the next `prepare` sees the state the earlier ones leave. End it with
    /// [`StoreRuntime::commit_run`] once the run is witnessed right after the cursor, or with
    /// [`StoreRuntime::abort_run`] (the intentions are then projected from the log as usual).
    ///
    /// # Errors
    /// [`Error::Headless`]; storage failures.
    pub fn begin_run(&mut self) -> Result<(), Error> {
        self.abort_run();
        self.host_begin()?;
        self.run = Some(Run::default());
        Ok(())
    }

    /// Applies the next intention of the run. `refusal` is the membership policy's reason to
    /// reject it (the guest is not called then). Returns the rejection reason, if any.
    ///
    /// # Errors
    /// No run started; a host failure (abort the run then).
    pub fn apply_in_run(
        &mut self,
        signed: &SignedIntention,
        refusal: Option<String>,
    ) -> Result<Option<String>, Error> {
        let mut run = self
            .run
            .take()
            .ok_or_else(|| Error::Corrupt("apply_in_run without begin_run".into()))?;
        let index = run.outcomes.len();
        // Reads in apply fall back to the snapshot `begin_run` took.
        let outcome = match refusal {
            Some(reason) => Ok(Err(reason)),
            None => self.apply_one(signed, &mut run.log_entries),
        };
        let rejected = match outcome {
            Ok(Ok(events)) => {
                run.events
                    .extend(events.into_iter().map(|(t, p)| (index, t, p)));
                None
            }
            Ok(Err(reason)) => Some(reason),
            Err(e) => {
                self.host_end();
                return Err(e);
            }
        };
        run.outcomes.push(rejected.clone());
        self.run = Some(run);
        Ok(rejected)
    }

    /// Commits the run now that the log witnessed it at `seqs` (one per applied intention,
    /// consecutive and right after the cursor). Returns each intention's rejection reason
    /// (`None`: applied), in run order.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `seqs` do not continue the cursor (nothing is committed; abort
    /// the run and project from the log); storage failures.
    pub fn commit_run(
        &mut self,
        seqs: &[u64],
        report: &mut ProjectReport,
    ) -> Result<Vec<Option<String>>, Error> {
        let contiguous = seqs
            .iter()
            .enumerate()
            .all(|(i, s)| *s == self.cursor + 1 + i as u64);
        let Some(run) = self.run.take() else {
            return Err(Error::Corrupt("commit_run without begin_run".into()));
        };
        if !contiguous || seqs.len() != run.outcomes.len() {
            self.run = Some(run);
            return Err(Error::Corrupt(
                "the run was not witnessed right after the cursor".into(),
            ));
        }
        let writes = self.host_end();
        let rejected: Vec<(u64, String)> = seqs
            .iter()
            .zip(&run.outcomes)
            .filter_map(|(seq, reason)| Some((*seq, reason.clone()?)))
            .collect();
        let last = seqs.last().copied().unwrap_or(self.cursor);
        self.commit_projected(last, &writes, &run.log_entries, &rejected, &[], None)?;
        report.applied += (run.outcomes.len() - rejected.len()) as u64;
        report.rejected += rejected.len() as u64;
        report.events.extend(
            run.events
                .into_iter()
                .map(|(i, topic, payload)| WatchEvent {
                    seq: seqs[i],
                    topic,
                    payload,
                }),
        );
        report.cursor = self.cursor;
        Ok(run.outcomes)
    }

    /// A run is open: begun and neither committed nor aborted.
    pub fn in_run(&self) -> bool {
        self.run.is_some()
    }

    /// Drops the run's applied writes (none reached `state.db`).
    pub fn abort_run(&mut self) {
        if self.run.take().is_some() {
            self.host_end();
            if let Some(guest) = self.guest.as_mut() {
                guest.host().log_next = self.log_count;
            }
        }
    }

    /// Moves the cursor past witnessed intentions of the other partition (nothing to apply
    /// here) without a commit. Only when `to` continues from the cursor with no intention of
    /// this partition in between.
    pub fn skip_to(&mut self, to: u64) {
        if to > self.cursor {
            self.cursor = to;
            self.unsynced = true;
        }
    }

    /// Forgets all projected state (data, rejections, guest log) and moves the cursor back to
    /// the start, in one transaction, so the next [`StoreRuntime::project`] replays the log.
    ///
    /// # Errors
    /// Storage failures (nothing changes then).
    pub fn reset(&mut self) -> Result<(), Error> {
        self.abort_run();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(DATA)?;
        txn.delete_table(REJECTED)?;
        txn.delete_table(LOG)?;
        txn.delete_table(HOST_OPS)?;
        txn.delete_table(EPOCHS)?;
        txn.open_table(DATA)?;
        txn.open_table(REJECTED)?;
        txn.open_table(LOG)?;
        txn.open_table(HOST_OPS)?;
        txn.open_table(EPOCHS)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.remove(META_EPOCH)?;
            meta.remove(META_MARK)?;
            meta.insert("cursor", 0u64.to_le_bytes().as_slice())?;
            meta.insert("log_count", 0u64.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        self.cursor = 0;
        self.log_count = 0;
        self.unsynced = false;
        if let Some(guest) = self.guest.as_mut() {
            guest.host().log_next = 0;
        }
        Ok(())
    }

    /// Replaces this partition's projected state (data, rejections, guest log), cursor and
    /// mark with `source`'s, in one durable transaction: the live state restarts from the
    /// state at an epoch when the history below it was pruned. Cost grows with the state,
    /// not with history. Host records stay as they are (only the data partition is restored;
    /// the system partition keeps its whole history).
    ///
    /// # Errors
    /// Storage failures (nothing changes then).
    pub fn restore_from(&mut self, source: &StoreRuntime) -> Result<(), Error> {
        self.abort_run();
        let from = source.db.begin_read()?;
        let (cursor, log_count, mark) = {
            let meta = from.open_table(META)?;
            (
                meta_u64(&meta, "cursor")?,
                meta_u64(&meta, "log_count")?,
                meta.get(META_MARK)?.map(|v| v.value().to_vec()),
            )
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(DATA)?;
        txn.delete_table(REJECTED)?;
        txn.delete_table(LOG)?;
        {
            let mut data = txn.open_table(DATA)?;
            for row in from.open_table(DATA)?.iter()? {
                let (k, v) = row?;
                data.insert(k.value(), v.value())?;
            }
            let mut rejected = txn.open_table(REJECTED)?;
            for row in from.open_table(REJECTED)?.iter()? {
                let (k, v) = row?;
                rejected.insert(k.value(), v.value())?;
            }
            let mut log = txn.open_table(LOG)?;
            for row in from.open_table(LOG)?.iter()? {
                let (k, v) = row?;
                log.insert(k.value(), v.value())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert("cursor", cursor.to_le_bytes().as_slice())?;
            meta.insert("log_count", log_count.to_le_bytes().as_slice())?;
            match &mark {
                Some(mark) => meta.insert(META_MARK, mark.as_slice())?,
                None => meta.remove(META_MARK)?,
            };
        }
        txn.commit()?;
        self.cursor = cursor;
        self.log_count = log_count;
        self.unsynced = false;
        if let Some(guest) = self.guest.as_mut() {
            guest.host().log_next = log_count;
        }
        Ok(())
    }

    /// The projected state as a snapshot carries it: every key and value in key order and
    /// every guest log entry in order (what [`StoreRuntime::state_digest`] hashes), with the
    /// cursor. Cost grows with the state.
    ///
    /// # Errors
    /// Storage failures.
    pub fn state_rows(&self) -> Result<StateRows, Error> {
        let txn = self.db.begin_read()?;
        let mut rows = StateRows::default();
        for row in txn.open_table(DATA)?.iter()? {
            let (k, v) = row?;
            rows.data.push((k.value().to_vec(), v.value().to_vec()));
        }
        for row in txn.open_table(LOG)?.iter()? {
            let (_, v) = row?;
            rows.log.push(v.value().to_vec());
        }
        Ok(rows)
    }

    /// Replaces this partition's projected state with `rows` (a snapshot's), its cursor with
    /// `cursor` and its mark with `mark`, in one durable transaction; rejections are
    /// cleared. Host records stay as they are.
    ///
    /// # Errors
    /// Storage failures (nothing changes then).
    pub fn load_rows(&mut self, rows: &StateRows, cursor: u64, mark: &[u8]) -> Result<(), Error> {
        self.abort_run();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.delete_table(DATA)?;
        txn.delete_table(REJECTED)?;
        txn.delete_table(LOG)?;
        let log_count = rows.log.len() as u64;
        {
            let mut data = txn.open_table(DATA)?;
            for (k, v) in &rows.data {
                data.insert(k.as_slice(), v.as_slice())?;
            }
            txn.open_table(REJECTED)?;
            let mut log = txn.open_table(LOG)?;
            for (i, line) in rows.log.iter().enumerate() {
                log.insert(i as u64, line.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert("cursor", cursor.to_le_bytes().as_slice())?;
            meta.insert("log_count", log_count.to_le_bytes().as_slice())?;
            meta.insert(META_MARK, mark)?;
        }
        txn.commit()?;
        self.cursor = cursor;
        self.log_count = log_count;
        self.unsynced = false;
        if let Some(guest) = self.guest.as_mut() {
            guest.host().log_next = log_count;
        }
        Ok(())
    }

    /// Calls `visit` with every key and value of the projected state and every guest log
    /// entry, in order: what the state names (pruning keeps every intention whose hash
    /// appears in it).
    ///
    /// # Errors
    /// Storage failures.
    pub fn visit_state(&self, visit: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
        let txn = self.db.begin_read()?;
        for row in txn.open_table(DATA)?.iter()? {
            let (k, v) = row?;
            visit(k.value());
            visit(v.value());
        }
        for row in txn.open_table(LOG)?.iter()? {
            let (_, v) = row?;
            visit(v.value());
        }
        Ok(())
    }

    /// The current epoch's record: the greatest epoch projected so far, by `(number, hash)`.
    ///
    /// # Errors
    /// Storage failures; [`Error::Corrupt`] for a damaged or missing record.
    pub fn current_epoch(&self) -> Result<Option<HostRecord>, Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let seq = meta_u64(&meta, META_EPOCH)?;
        if seq == 0 {
            return Ok(None);
        }
        match host_record(&txn.open_table(HOST_OPS)?, seq)? {
            Some(record) if record.epoch_order().is_some() => Ok(Some(record)),
            _ => Err(Error::Corrupt(format!(
                "the current epoch's record at seq {seq} is missing"
            ))),
        }
    }

    /// Projected host ops from witness seq `from` on, at most `limit`, in seq order.
    ///
    /// # Errors
    /// Storage failures; [`Error::Corrupt`] for a damaged record.
    pub fn host_records(&self, from: u64, limit: usize) -> Result<Vec<HostRecord>, Error> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(HOST_OPS)?.range(from..)?.take(limit) {
            let (seq, bytes) = entry?;
            out.push(HostRecord::decode(seq.value(), bytes.value())?);
        }
        Ok(out)
    }

    /// Projected epochs, greatest `(number, seq)` first, at most `limit`: `(number, hash)`.
    ///
    /// # Errors
    /// Storage failures; [`Error::Corrupt`] for a damaged record.
    pub fn epochs_newest_first(&self, limit: usize) -> Result<Vec<(u64, Hash)>, Error> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(EPOCHS)?.iter()?.rev().take(limit) {
            out.push(epoch_entry(entry?)?);
        }
        Ok(out)
    }

    /// Intentions whose apply failed, with the reason, from `from_seq` on.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, String)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REJECTED)?;
        let mut out = Vec::new();
        for row in table.range(from_seq..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_string()));
        }
        Ok(out)
    }

    /// The newest `limit` rejected intentions, newest first: `(witness seq, reason)`.
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected_newest(&self, limit: usize) -> Result<Vec<(u64, String)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REJECTED)?;
        let mut out = Vec::new();
        for row in table.range(0u64..)?.rev().take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_string()));
        }
        Ok(out)
    }

    /// How many intentions the guest rejected (read from the table's length, not by a scan).
    ///
    /// # Errors
    /// Storage failures.
    pub fn rejected_count(&self) -> Result<u64, Error> {
        use redb::ReadableTableMetadata as _;
        Ok(self.db.begin_read()?.open_table(REJECTED)?.len()?)
    }

    /// A hash of the whole projected state (data and log tables), to compare replicas.
    ///
    /// # Errors
    /// Storage failures.
    pub fn state_digest(&self) -> Result<Hash, Error> {
        let txn = self.db.begin_read()?;
        let mut hasher = blake3::Hasher::new();
        for row in txn.open_table(DATA)?.iter()? {
            let (k, v) = row?;
            hash_parts(&mut hasher, &[k.value(), v.value()]);
        }
        for row in txn.open_table(LOG)?.iter()? {
            let (_, v) = row?;
            hash_parts(&mut hasher, &[v.value()]);
        }
        Ok(Hash(*hasher.finalize().as_bytes()))
    }
}

/// Creates the partition's tables and checks (or records) which store and module the file
/// belongs to. Returns the projection cursor and the count of guest log lines.
fn identify(db: &Database, store_id: StoreId, module: ModuleHash) -> Result<(u64, u64), Error> {
    let mut txn = db.begin_write()?;
    // Nothing here needs an fsync: tables and identity lost in a crash are written again.
    txn.set_durability(Durability::None)?;
    let found = {
        let mut meta = txn.open_table(META)?;
        txn.open_table(DATA)?;
        txn.open_table(REJECTED)?;
        txn.open_table(LOG)?;
        txn.open_table(HOST_OPS)?;
        txn.open_table(EPOCHS)?;
        let found_store = meta.get("store_id")?.map(|v| v.value().to_vec());
        match found_store {
            None => {
                meta.insert("store_id", store_id.as_bytes().as_slice())?;
                meta.insert("module", module.0.as_slice())?;
            }
            Some(found) => {
                if found != store_id.as_bytes() {
                    return Err(Error::Corrupt(format!(
                        "state.db belongs to another store, not {}",
                        store_id.short()
                    )));
                }
                let found_module = meta.get("module")?.map(|v| v.value().to_vec());
                if found_module.as_deref() != Some(module.0.as_slice()) {
                    return Err(Error::Corrupt(format!(
                        "state.db was projected by another module, not {}",
                        module.short()
                    )));
                }
            }
        }
        (meta_u64(&meta, "cursor")?, meta_u64(&meta, "log_count")?)
    };
    txn.commit()?;
    Ok(found)
}

/// A partition's projected state as rows ([`StoreRuntime::state_rows`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRows {
    /// Every key and value, in key order.
    pub data: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every guest log entry, in order.
    pub log: Vec<Vec<u8>>,
}

impl StateRows {
    /// The digest [`StoreRuntime::state_digest`] gives for a state holding these rows.
    pub fn digest(&self) -> Hash {
        let mut hasher = blake3::Hasher::new();
        for (k, v) in &self.data {
            hash_parts(&mut hasher, &[k, v]);
        }
        for line in &self.log {
            hash_parts(&mut hasher, &[line]);
        }
        Hash(*hasher.finalize().as_bytes())
    }
}

/// Feeds each part, length-prefixed, to a state digest.
fn hash_parts(hasher: &mut blake3::Hasher, parts: &[&[u8]]) {
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

/// A projected host intention (an epoch or an ack); see [`StoreRuntime::current_epoch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// Its witness seq here.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
    /// Its author.
    pub author: PubKey,
    /// What it says.
    pub op: HostOp,
}

impl HostRecord {
    fn encode(&self) -> Vec<u8> {
        let op = self.op.encode();
        let mut out = Vec::with_capacity(64 + op.len());
        out.extend_from_slice(self.hash.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&op);
        out
    }

    fn decode(seq: u64, bytes: &[u8]) -> Result<HostRecord, Error> {
        let corrupt = || Error::Corrupt(format!("host op record at seq {seq} is damaged"));
        let hash: [u8; 32] = bytes
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let author: [u8; 32] = bytes
            .get(32..64)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let op = HostOp::decode(bytes.get(64..).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
        Ok(HostRecord {
            seq,
            hash: Hash(hash),
            author: PubKey(author),
            op,
        })
    }

    /// An epoch's place in the order that picks the current one: `(number, hash)`; `None`
    /// for an ack.
    pub fn epoch_order(&self) -> Option<(u64, Hash)> {
        match self.op {
            HostOp::Epoch { number, .. } => Some((number, self.hash)),
            _ => None,
        }
    }
}

/// An `EPOCHS` row as `(number, hash)`.
fn epoch_entry(
    (key, hash): (
        redb::AccessGuard<'_, (u64, u64)>,
        redb::AccessGuard<'_, &'static [u8]>,
    ),
) -> Result<(u64, Hash), Error> {
    let (number, _) = key.value();
    let hash: [u8; 32] = hash
        .value()
        .try_into()
        .map_err(|_| Error::Corrupt(format!("epoch {number}'s record is damaged")))?;
    Ok((number, Hash(hash)))
}

/// The host op record at `seq`, if any.
fn host_record(
    table: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<HostRecord>, Error> {
    match table.get(seq)? {
        Some(v) => Ok(Some(HostRecord::decode(seq, v.value())?)),
        None => Ok(None),
    }
}
