//! Opening, refreshing, creating, archiving, leaving and closing stores.

use super::*;

/// A store's log and, once its genesis is witnessed, the store itself: its files opened.
pub(super) type OpenedFiles = (Arc<Log>, Option<Store>);

/// Opens a store's files (blocking: redb, module load). A store not fetched yet has no files;
/// one with projections but no log has lost it and is damaged.
pub(super) fn open_files(node: &Node, id: StoreId) -> Result<OpenedFiles, NodeError> {
    node.settle_rebase(id)?;
    let dir = node.dir();
    let path = dir.log_path(&id);
    if !path.exists() && (dir.state_path(&id).exists() || dir.system_path(&id).exists()) {
        return Err(NodeError::Damaged {
            store: id.short(),
            reason: format!("{} is missing", path.display()),
        });
    }
    let log = Arc::new(node.open_log(id)?);
    let store = if log.reader().is_witnessed(&Hash(id.0))? {
        Some(node.store_from_log(id, log.clone())?)
    } else {
        None
    };
    Ok((log, store))
}

/// Opens the files of every active store of the inventory, for a node about to start (while
/// its network endpoint binds); what failed is quarantined as the manager starts.
pub(super) fn preopen(
    node: &Node,
) -> Result<BTreeMap<StoreId, Result<OpenedFiles, NodeError>>, NodeError> {
    Ok(node
        .meta()
        .list()?
        .into_iter()
        .filter(|r| r.state == StoreState::Active)
        .map(|r| (r.id, open_files(node, r.id)))
        .collect())
}

impl StoreManager {
    /// Opens a store of the inventory and starts replicating it; `opened` holds its files
    /// when they were opened ahead ([`preopen`]).
    pub(super) async fn open_registered(
        &self,
        record: &StoreRecord,
        opened: Option<Result<OpenedFiles, NodeError>>,
    ) -> Result<(), NodeError> {
        let log = {
            // Opening and closing are serialised, so a store's files are never opened twice.
            let _opening = self.inner.lifecycle.lock().await;
            if self.is_open(&record.id) || lock(&self.inner.repairing).contains(&record.id) {
                return Ok(());
            }
            let (log, store) = match opened {
                Some(opened) => opened?,
                None => {
                    let this = self.clone();
                    let id = record.id;
                    self.off_workers("opening a store", move || open_files(&this.inner.node, id))
                        .await?
                }
            };
            self.register_open(record.id, log.clone(), store, record.parent)?;
            log
        };
        self.activate(record.id, log).await
    }

    /// Opens a store of the inventory; a store that fails to open is quarantined (reported
    /// damaged, not served) instead of stopping the node.
    pub(super) async fn open_or_quarantine(&self, record: &StoreRecord) {
        self.open_or_quarantine_from(record, None).await;
    }

    /// As [`StoreManager::open_or_quarantine`], with the store's files when opened ahead.
    pub(super) async fn open_or_quarantine_from(
        &self,
        record: &StoreRecord,
        opened: Option<Result<OpenedFiles, NodeError>>,
    ) {
        let opened = self.open_registered(record, opened).await;
        if opened.is_ok() || self.is_open(&record.id) {
            // Opened (a later failure, e.g. of a child, is not this store's damage).
            lock(&self.inner.damaged).remove(&record.id);
            if let Err(e) = opened {
                warn!(store = %record.id.short(), "store opened, but acting on its system table failed: {e}");
            }
            return;
        }
        if let Err(e) = opened {
            let reason = match e {
                NodeError::LogOpen(lattice_log::OpenError::Damaged { path, reason }) => {
                    format!("{path}: {reason}")
                }
                NodeError::Damaged { reason, .. } => reason,
                other => other.to_string(),
            };
            tracing::error!(
                "store {} ({}) is damaged and not served: {reason}; run `lattice store repair {}`",
                record.id.short(),
                record.name,
                record.id.short()
            );
            lock(&self.inner.damaged).insert(record.id, reason);
        }
    }

    /// Repairs a store (see [`Node::repair_store`]) and opens it again: a damaged or
    /// quarantined store is served again, with its projections rebuilt from the log and a
    /// damaged log rebuilt from what still verifies (its peers send the rest).
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`]; [`NodeError::Damaged`] when it still does not open;
    /// file system failures.
    pub async fn repair(&self, id: &StoreId) -> Result<crate::RepairReport, NodeError> {
        let record = self.record(id)?;
        // Nothing reopens the store while it is repaired (children, refresh, joins).
        lock(&self.inner.repairing).insert(*id);
        let repaired = self.repair_closed(id).await;
        lock(&self.inner.repairing).remove(id);
        let report = match repaired {
            Ok(report) => report,
            Err(e) => {
                // Not served, and says so: the store stays quarantined with this reason.
                lock(&self.inner.damaged).insert(*id, format!("repair failed: {e}"));
                return Err(e);
            }
        };
        info!(store = %id.short(), ?report, "store repaired");
        if record.state == StoreState::Active {
            self.reopen(&record).await?;
        }
        Ok(report)
    }

    /// Opens a closed store of the inventory again; [`NodeError::Damaged`] when it does not
    /// open (it stays quarantined).
    async fn reopen(&self, record: &StoreRecord) -> Result<(), NodeError> {
        self.open_or_quarantine(record).await;
        match self.damage(&record.id) {
            Some(reason) => Err(NodeError::Damaged {
                store: record.id.short(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Keeps store `id` headless by choice on this node (`on`), or lets it fetch and run its
    /// module again ([`Node::set_headless_by_choice`]); an open store is closed and opened
    /// again so the choice holds at once.
    ///
    /// # Errors
    /// [`NodeError::UnknownStore`]; inventory failures; [`NodeError::Damaged`] when the
    /// store does not open again.
    pub async fn set_headless(&self, id: &StoreId, on: bool) -> Result<(), NodeError> {
        let record = self.record(id)?;
        self.inner.node.set_headless_by_choice(id, on)?;
        if self.is_open(id) {
            self.close(id).await?;
            self.reopen(&record).await?;
        }
        Ok(())
    }

    /// Store `id`'s inventory record.
    pub(super) fn record(&self, id: &StoreId) -> Result<StoreRecord, NodeError> {
        self.inner
            .node
            .meta()
            .get(id)?
            .ok_or_else(|| NodeError::UnknownStore(id.to_string()))
    }

    /// Closes store `id` and repairs its files (see [`StoreManager::repair`]).
    async fn repair_closed(&self, id: &StoreId) -> Result<crate::RepairReport, NodeError> {
        self.close(id).await?;
        lock(&self.inner.damaged).remove(id);
        let this = self.clone();
        let store = *id;
        self.off_workers("repairing a store", move || {
            this.inner.node.repair_store(store)
        })
        .await
    }

    /// Registers an open store (the caller opened it) and starts replicating it.
    pub(super) async fn insert_open(
        &self,
        id: StoreId,
        log: Arc<Log>,
        store: Option<Store>,
        parent: Option<StoreId>,
    ) -> Result<(), NodeError> {
        {
            let _opening = self.inner.lifecycle.lock().await;
            if self.is_open(&id) {
                return Ok(());
            }
            self.register_open(id, log.clone(), store, parent)?;
        }
        self.activate(id, log).await
    }

    pub(super) fn register_open(
        &self,
        id: StoreId,
        log: Arc<Log>,
        store: Option<Store>,
        parent: Option<StoreId>,
    ) -> Result<(), NodeError> {
        let (watch, _) = broadcast::channel(WATCH_BUFFER);
        let store = store.map(|mut s| {
            s.keep_data_events();
            s
        });
        let outlets = Outlets {
            watch: watch.clone(),
            replicator: self.inner.replicator.clone(),
        };
        let actor = StoreActor::spawn(id, store, outlets, self.inner.node.is_inline())?;
        let open = Arc::new(OpenStore {
            log: log.clone(),
            actor,
            parent,
            watch,
        });
        lock(&self.inner.stores).insert(id, open);
        Ok(())
    }

    /// Replicates a just-registered store and acts on its system table.
    pub(super) async fn activate(&self, id: StoreId, log: Arc<Log>) -> Result<(), NodeError> {
        {
            // A join answered meanwhile updates the peer set after this (not before the
            // store is replicated, when the update would find no store and be lost).
            let _consistent = self.inner.members.lock().await;
            let members = self.members_of(&id).await;
            self.inner
                .replicator
                .add_store_with(log, members, Access::Members)
                .await?;
        }
        if let Ok(Some(epoch)) = self.with_store(&id, |s| Ok(s.epoch_hash())).await {
            self.inner.replicator.set_epoch(&id, epoch);
        }
        self.emit(NodeEvent::StoreOpened(id));
        self.learn_addrs(&id).await;
        if let Err(e) = self.announce_addrs(&id).await {
            warn!(store = %id.short(), "could not record this node's address: {e}");
        }
        let parent = self.open_store(&id).ok().and_then(|o| o.parent);
        if let Some(parent) = parent
            && let Err(e) = self.mirror_membership(&parent).await
        {
            warn!(store = %id.short(), "could not pass the parent's membership to a child: {e}");
        }
        self.reconcile_children(&id).await?;
        // The store's module travels with it: shared when installed here, fetched when not.
        let this = self.clone();
        self.spawn_side(async move { this.module_travels(&id).await });
        self.fetch_referenced(&id);
        Ok(())
    }

    /// Shares store `id`'s module as a blob when it is installed here, or fetches it from
    /// the store's peers when it is not; failures are logged (the next reconciliation with a
    /// peer tries the fetch again).
    pub(super) async fn module_travels(&self, id: &StoreId) {
        match self.share_module(id).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                debug!(store = %id.short(), "could not share the store's module: {e}");
                return;
            }
        }
        // An operator's choice: this node never fetches (nor runs) the store's module.
        if self.inner.node.is_headless_by_choice(id).unwrap_or(true) {
            return;
        }
        if !lock(&self.inner.fetching_modules).insert(*id) {
            return;
        }
        let fetched = self.fetch_module(id).await;
        lock(&self.inner.fetching_modules).remove(id);
        match fetched {
            Ok(_) => {
                if let Err(e) = self.share_module(id).await {
                    debug!(store = %id.short(), "could not share the fetched module: {e}");
                }
            }
            Err(e) => debug!(store = %id.short(), "the store's module is not here yet: {e}"),
        }
    }

    /// Projects what replication brought, then acts on system table changes: peer sets,
    /// children to open or close. Opens a pending child once its genesis is here.
    pub(super) async fn refresh(&self, id: &StoreId) -> Result<(), NodeError> {
        let Ok(open) = self.open_store(id) else {
            return Ok(());
        };
        let this = self.clone();
        let target = *id;
        let log = open.log.clone();
        let (system_events, changed) = open
            .actor
            .with_slot(move |slot| {
                if slot.is_none() {
                    if log.reader().get(&Hash(target.0))?.is_none() {
                        return Ok((Vec::new(), false));
                    }
                    let mut store = this.inner.node.store_from_log(target, log)?;
                    store.keep_data_events();
                    *slot = Some(store);
                    info!(store = %target.short(), "genesis arrived; store open");
                }
                let Some(store) = slot.as_mut() else {
                    return Ok((Vec::new(), false));
                };
                let report = store.project()?;
                let system = store.take_system_events();
                let changed = !report.events.is_empty() || !system.is_empty();
                Ok((system, changed))
            })
            .await?;
        if system_events
            .iter()
            .any(|e| e.topic == "peer" || e.topic == "store")
        {
            self.update_members(id).await;
            // Mirroring from the parent covers this store (its record may have drifted from
            // the parent's, as when a peer's leave arrives after its re-join was mirrored)
            // and everything below it; a store with its own peers mirrors from itself.
            let inherits = matches!(
                self.with_store(id, |s| s.inherits_from()).await,
                Ok(Some(_))
            );
            let from = match open.parent {
                Some(parent) if inherits => parent,
                _ => *id,
            };
            if let Err(e) = self.mirror_membership(&from).await {
                warn!(store = %id.short(), "could not pass a membership change to child stores: {e}");
            }
        }
        if system_events.iter().any(|e| e.topic == "child") {
            Box::pin(self.reconcile_children(id)).await?;
        }
        if changed {
            self.emit(NodeEvent::StoreChanged(*id));
        }
        Ok(())
    }

    /// Opens the active children declared in `id`'s system table that are not open, and
    /// closes the archived or removed ones this node has open.
    pub(super) async fn reconcile_children(&self, id: &StoreId) -> Result<(), NodeError> {
        let children = match self.with_store(id, |s| s.children()).await {
            Ok(c) => c,
            Err(NodeError::NotReady(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in &children {
            let known = self.inner.node.meta().get(&child.id)?;
            let left = known.as_ref().is_some_and(|r| r.state == StoreState::Left);
            if self.damage(&child.id).is_some() || lock(&self.inner.repairing).contains(&child.id) {
                continue;
            }
            if child.status == ChildStatus::Active && !self.is_open(&child.id) && !left {
                let record = StoreRecord {
                    id: child.id,
                    parent: Some(*id),
                    module: ModuleHash::from_hex(&child.module).unwrap_or(ModuleHash([0; 32])),
                    name: child.alias.clone(),
                    state: StoreState::Active,
                };
                self.inner.node.meta().put(&record)?;
                info!(parent = %id.short(), child = %child.id.short(), "opening child store");
                Box::pin(self.open_or_quarantine(&record)).await;
            } else if child.status == ChildStatus::Active
                && let Some(record) = known.filter(|r| r.parent.is_none() && !left)
                && self.is_open(&child.id)
            {
                // Recorded as a root (an inventory rebuilt from disk): re-attach it to its
                // parent, whose peers it shares.
                info!(parent = %id.short(), child = %child.id.short(), "re-attaching a child store to its parent");
                self.close(&child.id).await?;
                let record = StoreRecord {
                    parent: Some(*id),
                    name: child.alias.clone(),
                    module: ModuleHash::from_hex(&child.module).unwrap_or(record.module),
                    ..record
                };
                self.inner.node.meta().put(&record)?;
                Box::pin(self.open_or_quarantine(&record)).await;
            } else if child.status == ChildStatus::Archived && self.is_open(&child.id) {
                info!(parent = %id.short(), child = %child.id.short(), "closing archived child store");
                Box::pin(self.close_tree(&child.id, StoreState::Archived)).await?;
            }
        }
        Ok(())
    }

    /// Closes `id` and every open store below it, depth first, recording `state`.
    pub(super) async fn close_tree(
        &self,
        id: &StoreId,
        state: StoreState,
    ) -> Result<(), NodeError> {
        // The record first: a refresh of the parent running meanwhile (replication events
        // arrive on their own task) must not open again a child this closes.
        if let Some(mut record) = self.inner.node.meta().get(id)? {
            record.state = state;
            self.inner.node.meta().put(&record)?;
        }
        let children: Vec<StoreId> = lock(&self.inner.stores)
            .iter()
            .filter(|(_, v)| v.parent == Some(*id))
            .map(|(k, _)| *k)
            .collect();
        for child in children {
            Box::pin(self.close_tree(&child, state)).await?;
        }
        self.close(id).await
    }

    /// Stops replicating a store and closes it, waiting until its log is closed.
    pub(super) async fn close(&self, id: &StoreId) -> Result<(), NodeError> {
        self.close_as(id, Closing::Clean).await
    }

    async fn close_as(&self, id: &StoreId, how: Closing) -> Result<(), NodeError> {
        let _closing = self.inner.lifecycle.lock().await;
        self.inner.replicator.remove_store_and_wait(id).await;
        let Some(open) = lock(&self.inner.stores).remove(id) else {
            return Ok(());
        };
        // The actor ends after the work queued before this (or at once, crashing); its store
        // lets go of the log.
        match how {
            Closing::Clean | Closing::Stop => open.actor.close().await,
            Closing::Crash => open.actor.crash().await,
        }
        let mut log = open.log.clone();
        drop(open);
        // When the node stops, its sessions were told to end: wait for them to let go of
        // the log, so its file is closed when this returns (a start in the same process
        // opens it again).
        let patience = match how {
            Closing::Clean => Duration::ZERO,
            Closing::Stop | Closing::Crash => SESSIONS_END_WITHIN,
        };
        let since = tokio::time::Instant::now();
        loop {
            match Arc::try_unwrap(log) {
                Ok(log) => {
                    self.off_workers("closing a log", move || Ok(log.close()?))
                        .await?;
                    break;
                }
                Err(held) if since.elapsed() < patience => {
                    log = held;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // A session serving a peer still reads it; the log closes when that ends.
                Err(_) => {
                    debug!(store = %id.short(), "log still in use by a session; it closes when that ends");
                    break;
                }
            }
        }
        self.emit(NodeEvent::StoreClosed(*id));
        Ok(())
    }

    // ---- operations ----

    /// Creates a store of `store_type` (see [`Node::resolve_type`]); with `parent`, as a
    /// child declared in the parent's system table (so it opens on every peer of the parent).
    ///
    /// # Errors
    /// Unknown type, parent not open, storage failures.
    pub async fn create(
        &self,
        store_type: &str,
        name: &str,
        parent: Option<StoreId>,
    ) -> Result<StoreId, NodeError> {
        // The child inherits the parent's peers: record them in its own system table.
        let inherited: Vec<Value> = match &parent {
            Some(p) => {
                let me = self.inner.node.key().public();
                self.with_store(p, |s| s.peers())
                    .await?
                    .into_iter()
                    .filter(|peer| peer.key != me)
                    .filter_map(|peer| {
                        let args = match peer.status {
                            PeerStatus::Revoked => {
                                json!({"peer": peer.key.to_string(), "status": "revoked", "cut": 0})
                            }
                            PeerStatus::Active | PeerStatus::Dormant => {
                                json!({"peer": peer.key.to_string(), "status": peer.status.as_str()})
                            }
                            PeerStatus::Invited => return None,
                        };
                        Some(json!({"method": "set-peer-status", "args": args}))
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let this = self.clone();
        let name_owned = name.to_string();
        let spec = store_type.to_string();
        let (module, store) = self
            .off_workers("creating a store", move || {
                // Resolving a path installs the module (a Cranelift compile).
                let module = this.inner.node.resolve_type(&spec)?;
                let mut store = this.inner.node.create_child(module, &name_owned, parent)?;
                if !inherited.is_empty() {
                    store.system_call("batch", &json!({ "ops": inherited }))?;
                }
                Ok((module, store))
            })
            .await?;
        let id = store.id();
        let log = store.log().clone();
        self.insert_open(id, log, Some(store), parent).await?;
        if let Some(p) = parent {
            self.system_call(
                &p,
                "add-child",
                &json!({"id": id.to_string(), "alias": name, "module": module.to_string()}),
            )
            .await?;
        }
        info!(store = %id.short(), parent = ?parent.map(|p| p.short()), "store created");
        Ok(id)
    }

    /// Installs a module (compiling it off the async workers) and attaches it at once to
    /// every open store that was waiting for it: they project what they hold and answer
    /// calls from then on, with or without peers online.
    ///
    /// # Errors
    /// Module errors (not a component, does not compile or link).
    pub async fn install_module(&self, bytes: Vec<u8>) -> Result<ModuleHash, NodeError> {
        let this = self.clone();
        let hash = self
            .off_workers("installing a module", move || {
                Ok(this.inner.node.install_module(&bytes)?.hash())
            })
            .await?;
        let open: Vec<(StoreId, Arc<OpenStore>)> = lock(&self.inner.stores)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, store) in open {
            let attached = store
                .actor
                .run(move |s| {
                    if s.genesis().module != hash || !s.is_headless() {
                        return Ok(false);
                    }
                    s.project()?;
                    Ok(true)
                })
                .await;
            match attached {
                Ok(true) => {
                    info!(store = %id.short(), module = %hash.short(), "module installed; store attached");
                    self.emit(NodeEvent::StoreChanged(id));
                }
                Ok(false) | Err(NodeError::NotReady(_)) => {}
                Err(e) => warn!(store = %id.short(), "could not attach the installed module: {e}"),
            }
        }
        Ok(hash)
    }

    /// Leaves store `id` (and its children): revokes this node's own key (so its peers stop
    /// syncing with it), tells the peers it can reach, closes the stores and keeps the data
    /// for a later re-join.
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child; storage failures.
    pub async fn leave(&self, id: &StoreId) -> Result<(), NodeError> {
        let me = self.inner.node.key().public();
        let members = self.members_of(id).await;
        self.revoke(id, &me).await?;
        for peer in members.iter().filter(|p| **p != me) {
            if let Err(e) = self.inner.replicator.sync(id, peer).await {
                debug!(peer = %peer.short(), "could not tell a peer about leaving: {e}");
            }
        }
        self.close_tree(id, StoreState::Left).await
    }

    /// Archives a child store in its parent's system table: every peer closes it, data stays.
    ///
    /// # Errors
    /// [`NodeError::NotAChild`] for a root store.
    pub async fn archive(&self, id: &StoreId, archived: bool) -> Result<(), NodeError> {
        let record = self.record(id)?;
        let parent = record
            .parent
            .ok_or_else(|| NodeError::NotAChild(id.to_string()))?;
        let status = if archived { "archived" } else { "active" };
        self.system_call(
            &parent,
            "set-child-status",
            &json!({"id": id.to_string(), "status": status}),
        )
        .await?;
        if !archived && let Some(mut record) = self.inner.node.meta().get(id)? {
            record.state = StoreState::Active;
            self.inner.node.meta().put(&record)?;
        }
        self.refresh(&parent).await
    }

    /// Deletes the local data of a store that is not open (archived or left).
    ///
    /// # Errors
    /// [`NodeError::StillOpen`] for an open store; file errors.
    pub fn delete(&self, id: &StoreId) -> Result<(), NodeError> {
        if self.is_open(id) {
            return Err(NodeError::StillOpen(id.to_string()));
        }
        self.inner.node.remove_store_files(id)?;
        // Its blobs go with it (those another store holds stay).
        if let Some(cas) = self.inner.node.cas() {
            cas.release_store(id)?;
        }
        lock(&self.inner.blob_retry).remove(id);
        self.inner.node.meta().remove(id)
    }

    /// Closes every store (waiting for each log to close), stops replication and the network.
    pub async fn shutdown(&self) {
        self.stop_as(Closing::Clean).await;
    }

    /// Stops as a killed process would, as far as one process can: tasks are aborted, store
    /// actors drop their queued work (callers get [`NodeError::NotOpen`]) and do not make
    /// projected state durable, so the next start rebuilds it from the log. What the log
    /// acknowledged is durable already. For simulations and recovery tests; the node's files
    /// are released, so the data directory can be opened again in this process.
    pub async fn crash(&self) {
        self.stop_as(Closing::Crash).await;
    }

    async fn stop_as(&self, how: Closing) {
        let how = match how {
            Closing::Clean => Closing::Stop,
            other => other,
        };
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.tasks).drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        let side = lock(&self.inner.side).take();
        // Once they have ended, no task holds this manager any more.
        for t in tasks {
            let _ = t.await;
        }
        if let Some(mut side) = side {
            side.abort_all();
            while side.join_next().await.is_some() {}
        }
        self.inner.replicator.shutdown();
        for id in self.open_ids() {
            if let Err(e) = self.close_as(&id, how).await {
                warn!(store = %id.short(), "closing failed: {e}");
            }
        }
        if let Some(net) = &self.inner.iroh {
            net.shutdown().await;
        }
    }
}

/// How long a stopping node waits for its aborted sessions to let go of a store's log.
const SESSIONS_END_WITHIN: Duration = Duration::from_secs(10);

/// How a store is closed.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// After the work queued before, with state made durable.
    Clean,
    /// As `Clean`, while the node stops: waits for sessions to let go of the log.
    Stop,
    /// At once, without making projected state durable (see [`StoreManager::crash`]).
    Crash,
}
