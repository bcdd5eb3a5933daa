//! Invites and joins: issuing tokens, the inviter's side of a join, the joiner's side.

use super::*;

impl StoreManager {
    /// Answers join requests the replicator receives, one at a time (checking an invite reads
    /// the system table and records the joiner durably, on the store's actor).
    pub(super) async fn answer_joins(self, mut joins: tokio::sync::mpsc::Receiver<JoinRequest>) {
        while let Some(request) = joins.recv().await {
            let JoinRequest {
                peer,
                store,
                secret,
                tip,
                children,
                reply,
            } = request;
            let answer = self.accept_join(peer, store, secret, tip, &children).await;
            let _ = reply.send(answer);
        }
    }

    /// Answers snapshot requests the replicator receives, each on its own task (making one
    /// runs on the store's actor).
    pub(super) async fn answer_snapshots(
        self,
        mut requests: tokio::sync::mpsc::Receiver<SnapshotRequest>,
    ) {
        while let Some(SnapshotRequest { peer, store, reply }) = requests.recv().await {
            let this = self.clone();
            self.spawn_side(async move {
                let answer = this.snapshot_for(&store).await.map_err(|e| e.to_string());
                if let Err(reason) = &answer {
                    debug!(peer = %peer.short(), store = %store.short(), "no snapshot: {reason}");
                }
                let _ = reply.send(answer);
            });
        }
    }

    /// The encoded snapshot of store `id` a joiner bootstraps from, or `None` when this
    /// node's log of it is whole (a joiner bootstraps from its witness records then).
    async fn snapshot_for(&self, id: &StoreId) -> Result<Option<Vec<u8>>, NodeError> {
        self.with_store(id, |s| {
            if s.log().reader().prune_floor()?.is_empty() {
                return Ok(None);
            }
            Ok(Some(s.snapshot()?.encode()))
        })
        .await
    }

    /// Issues a one-time invite to store `id`, valid for `ttl`. Only the secret's hash is
    /// recorded (in the system table, so any peer can see an invite was issued).
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child store (invite to its root instead);
    /// storage failures.
    pub async fn invite(&self, id: &StoreId, ttl: Duration) -> Result<InviteToken, NodeError> {
        self.require_own_peers(id).await?;
        let secret = self.inner.node.random_secret()?;
        let expires_ms = self
            .inner
            .node
            .clock()
            .now_ms()
            .saturating_add(ttl.as_millis() as u64);
        let me = self.inner.node.key().public();
        let result = self
            .system_call(
                id,
                "add-invite",
                &json!({
                    "hash": hex::encode(InviteToken::secret_hash(&secret)),
                    "expires_ms": expires_ms,
                    "invited_by": me.to_string(),
                }),
            )
            .await?;
        debug!(store = %id.short(), intention = %result["hash"], "invite recorded");
        Ok(InviteToken {
            store: *id,
            inviter: me,
            addrs: self.address().addrs,
            secret,
            expires_ms,
        })
    }

    /// Refuses stores that inherit their peers (invites and revocations go to the parent).
    pub(super) async fn require_own_peers(&self, id: &StoreId) -> Result<(), NodeError> {
        match self.with_store(id, |s| s.inherits_from()).await? {
            Some(parent) => Err(NodeError::InheritedPeers(parent.to_string())),
            None => Ok(()),
        }
    }

    /// Inviter side of a join: checks the invite and records the joiner as an active peer.
    pub(super) async fn accept_join(
        &self,
        peer: PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: &[(StoreId, u64)],
    ) -> Result<(), String> {
        if !self.is_open(&store) {
            return Err(format!(
                "the inviter has no store {} open; the token is for another mesh or the store was closed",
                store.short()
            ));
        }
        let hash = hex::encode(InviteToken::secret_hash(&secret));
        let asked = hash.clone();
        let (peers, invite, seen) = self
            .with_store(&store, move |s| {
                s.project()?;
                let seen = chain_position(s.log(), &peer).unwrap_or(0);
                Ok((
                    s.peers()?,
                    s.system_query("invite", &json!({"hash": asked}))?,
                    seen,
                ))
            })
            .await
            .map_err(|e| format!("the inviter could not check the invite: {e}"))?;
        let status = peers.into_iter().find(|p| p.key == peer).map(|p| p.status);
        if matches!(status, Some(PeerStatus::Active | PeerStatus::Dormant)) {
            return Err(ALREADY_MEMBER.into());
        }
        let tip = tip.max(seen);
        {
            let mut resume = lock(&self.inner.resume_at);
            for (child, at) in children.iter().take(lattice_sync::MAX_JOIN_CHILDREN) {
                resume.insert((*child, peer), *at);
            }
        }
        let invite: Option<lattice_system_types::InviteRecord> = serde_json::from_value(invite)
            .map_err(|e| format!("the inviter's invite record is malformed: {e}"))?;
        let Some(invite) = invite else {
            return Err("unknown invite: this token was not issued for this store".into());
        };
        match invite.status {
            lattice_system_types::InviteStatus::Claimed => {
                return Err("this invite was already used; ask for a new one".into());
            }
            lattice_system_types::InviteStatus::Revoked => {
                return Err("this invite was withdrawn; ask for a new one".into());
            }
            lattice_system_types::InviteStatus::Valid => {}
        }
        if invite.expires_ms <= self.inner.node.clock().now_ms() {
            return Err("this invite has expired; ask for a new one".into());
        }
        let ops = json!({"ops": [
            {"method": "claim-invite", "args": {"hash": hash, "by": peer.to_string()}},
            {"method": "set-peer-status", "args": {"peer": peer.to_string(), "status": "active", "resume": tip}},
        ]});
        self.system_call(&store, "batch", &ops)
            .await
            .map_err(|e| format!("the inviter could not record the join: {e}"))?;
        self.update_members(&store).await;
        if let Err(e) = self.mirror_membership(&store).await {
            warn!(store = %store.short(), "could not pass the join to child stores: {e}");
        }
        Ok(())
    }

    /// Joins the store an invite token is for: presents the token to the inviter, then
    /// bootstraps the store from it (`progress` gets the number of intentions fetched so far)
    /// and opens it; its children open as their declarations arrive. A store this node left
    /// keeps its data and only catches up.
    ///
    /// # Errors
    /// [`NodeError::Token`] for an unreadable or expired token, [`NodeError::JoinRefused`]
    /// with the inviter's reason, [`NodeError::InviterUnreachable`] when the inviter cannot be reached.
    pub async fn join(
        &self,
        token: &str,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<Joined, NodeError> {
        let token = InviteToken::decode(token)?;
        if token.expires_ms <= self.inner.node.clock().now_ms() {
            return Err(NodeError::InviteExpired);
        }
        let me = self.inner.node.key().public();
        if token.inviter == me {
            return Err(NodeError::JoinRefused(
                "this token was issued by this node".into(),
            ));
        }
        let id = token.store;
        if self.is_open(&id) {
            // Open here: the inviter tells whether this node is a member already (a node that
            // was revoked may not know it yet, and comes back with a new invite).
            let tip = self
                .with_store(&id, move |s| chain_position(s.log(), &me))
                .await?;
            self.present_token(&token, tip).await?;
            self.update_members(&id).await;
            let _ = self.inner.replicator.sync(&id, &token.inviter).await;
            self.refresh(&id).await?;
            return Ok(Joined {
                store: id,
                fetched: 0,
                snapshot_bytes: 0,
            });
        }
        let known = self.inner.node.meta().get(&id)?;
        // A store left here keeps its log (and its chain position, which the inviter needs);
        // a new one gets none until it knows how it bootstraps.
        let this = self.clone();
        let (log, tip, has_genesis) = self
            .off_workers("opening a store", move || {
                if !this.inner.node.dir().log_path(&id).exists() {
                    return Ok((None, 0, false));
                }
                let log = Arc::new(this.inner.node.open_log(id)?);
                let tip = chain_position(&log, &me)?;
                let has_genesis = log.reader().is_witnessed(&Hash(id.0))?;
                Ok((Some(log), tip, has_genesis))
            })
            .await?;
        if let Err(e) = self.present_token(&token, tip).await {
            drop(log);
            return Err(e);
        }
        self.reopen_left_children(&id)?;
        let snapshot = match has_genesis {
            true => None,
            false => self
                .fetch_snapshot(&id, &token.inviter)
                .await
                .map_err(|reason| {
                    NodeError::JoinRefused(format!(
                        "the inviter pruned its history and gives no snapshot now: {reason}"
                    ))
                })?,
        };
        let snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.len() as u64);
        let this = self.clone();
        let (store, fetched) = match snapshot {
            Some(encoded) => {
                self.off_workers("joining from a snapshot", move || {
                    this.store_from_encoded_snapshot(id, log, &encoded)
                })
                .await?
            }
            None => {
                let log = match log {
                    Some(log) => log,
                    None => {
                        self.off_workers("opening a store", move || {
                            Ok(Arc::new(this.inner.node.open_log(id)?))
                        })
                        .await?
                    }
                };
                let mut fetched = 0;
                if !has_genesis {
                    let (_, report) = self
                        .inner
                        .replicator
                        .bootstrap(&log, &[token.inviter], &mut progress)
                        .await
                        .map_err(NodeError::Bootstrap)?;
                    fetched = report.witnessed;
                }
                let this = self.clone();
                let store = self
                    .off_workers("opening a store", move || {
                        this.inner.node.store_from_log(id, log)
                    })
                    .await?;
                (store, fetched)
            }
        };
        let log = store.log().clone();
        let record = StoreRecord {
            id,
            parent: None,
            module: store.genesis().module,
            name: store.genesis().name.clone(),
            state: StoreState::Active,
        };
        let record = StoreRecord {
            parent: known.and_then(|k| k.parent),
            ..record
        };
        self.inner.node.meta().put(&record)?;
        self.insert_open(id, log, Some(store), record.parent)
            .await?;
        let name = self.inner.node.name()?;
        if !name.is_empty() {
            self.system_call(
                &id,
                "set-peer-name",
                &json!({"peer": me.to_string(), "name": name}),
            )
            .await?;
        }
        let _ = self.inner.replicator.sync(&id, &token.inviter).await;
        self.refresh(&id).await?;
        Ok(Joined {
            store: id,
            fetched,
            snapshot_bytes,
        })
    }

    /// Asks `peer` for a snapshot of store `id`: `Ok(None)` when its log is whole (bootstrap
    /// from its history then) or it could not give one over this connection; `Err` with its
    /// reason when it refused.
    async fn fetch_snapshot(&self, id: &StoreId, peer: &PubKey) -> Result<Option<Vec<u8>>, String> {
        match self
            .inner
            .replicator
            .fetch_snapshot(id, peer, |_, _| {})
            .await
        {
            Ok(got) => Ok(got),
            Err(ReplicaError::Session(lattice_sync::SessionError::Refused(reason))) => Err(reason),
            Err(e) => {
                debug!(store = %id.short(), peer = %peer.short(), "no snapshot: {e}");
                Ok(None)
            }
        }
    }

    /// Catches store `id` up through a snapshot of `peer`, a member that pruned history
    /// this node never had (a reconciliation with it said so): the store is closed, rebuilt
    /// from the snapshot with what only this node had taken over ([`Node::rebase_on_snapshot`])
    /// and opened again. Returns how many intentions were taken over; does nothing while the
    /// store is being repaired or caught up already.
    ///
    /// # Errors
    /// [`NodeError::SnapshotRefused`] when `peer` gives no snapshot or it is not taken (the
    /// store stays as it was, its old files opened again); storage failures.
    pub async fn catch_up(&self, id: &StoreId, peer: &PubKey) -> Result<u64, NodeError> {
        let record = self.record(id)?;
        if lock(&self.inner.repairing).contains(id) {
            return Ok(0);
        }
        let encoded = self
            .fetch_snapshot(id, peer)
            .await
            .map_err(|reason| snapshot_refused(*id, format!("the peer gives none now: {reason}")))?
            .ok_or_else(|| {
                snapshot_refused(
                    *id,
                    "the peer gave none (its log is whole, or it was not reachable)",
                )
            })?;
        let snapshot = decode_snapshot(*id, &encoded)?;
        if !lock(&self.inner.repairing).insert(*id) {
            return Ok(0);
        }
        let rebased = async {
            self.close(id).await?;
            let this = self.clone();
            self.off_workers("catching up through a snapshot", move || {
                this.inner.node.rebase_on_snapshot(&snapshot)
            })
            .await
        }
        .await;
        lock(&self.inner.repairing).remove(id);
        match rebased {
            Ok((store, taken)) => {
                info!(store = %id.short(), peer = %peer.short(), taken, "caught up through a snapshot");
                self.insert_open(*id, store.log().clone(), Some(store), record.parent)
                    .await?;
                self.refresh(id).await?;
                Ok(taken)
            }
            Err(e) => {
                warn!(store = %id.short(), "catching up through a snapshot failed: {e}");
                if record.state == StoreState::Active {
                    self.open_or_quarantine(&record).await;
                }
                Err(e)
            }
        }
    }

    /// Makes store `id` from an encoded snapshot a member sent. `log` is what this node had
    /// of the store (a log without a genesis holds nothing): closed and removed first.
    /// Returns the store and how many intentions the snapshot held.
    fn store_from_encoded_snapshot(
        &self,
        id: StoreId,
        log: Option<Arc<Log>>,
        encoded: &[u8],
    ) -> Result<(Store, u64), NodeError> {
        let snapshot = decode_snapshot(id, encoded)?;
        if let Some(log) = log {
            Arc::try_unwrap(log)
                .map_err(|_| snapshot_refused(id, "the store's log is in use here"))?
                .close()?;
            self.inner.node.remove_store_files(&id)?;
        }
        let store = self.inner.node.store_from_snapshot(&snapshot)?;
        Ok((store, snapshot.held.len() as u64))
    }

    /// Presents an invite token to its inviter (which records this node as an active peer,
    /// resuming at chain position `tip`).
    pub(super) async fn present_token(
        &self,
        token: &InviteToken,
        tip: u64,
    ) -> Result<(), NodeError> {
        let inviter = PeerAddr {
            id: token.inviter,
            addrs: token.addrs.clone(),
        };
        self.inner.replicator.add_peer(&inviter);
        self.inner
            .node
            .meta()
            .set_addr(&token.inviter, &inviter.to_string())?;
        self.inner
            .replicator
            .join(
                &token.inviter,
                token.store,
                token.secret,
                tip,
                self.descendant_tips(&token.store).await?,
            )
            .await
            .map_err(|e| match e {
                ReplicaError::Session(lattice_sync::SessionError::Refused(reason))
                    if reason == ALREADY_MEMBER =>
                {
                    NodeError::AlreadyMember(token.store.to_string())
                }
                ReplicaError::Session(lattice_sync::SessionError::Refused(reason)) => {
                    NodeError::JoinRefused(reason)
                }
                other => NodeError::InviterUnreachable {
                    inviter: token.inviter.short(),
                    source: other,
                },
            })
    }

    /// This node's chain position in every store below `root` it keeps (open or not).
    pub(super) async fn descendant_tips(
        &self,
        root: &StoreId,
    ) -> Result<Vec<(StoreId, u64)>, NodeError> {
        let this = self.clone();
        let root = *root;
        self.off_workers("reading chain positions", move || {
            this.descendant_tips_blocking(&root)
        })
        .await
    }

    fn descendant_tips_blocking(&self, root: &StoreId) -> Result<Vec<(StoreId, u64)>, NodeError> {
        let me = self.inner.node.key().public();
        let records = self.inner.node.meta().list()?;
        let mut out = Vec::new();
        let mut parents = vec![*root];
        while let Some(parent) = parents.pop() {
            for record in records.iter().filter(|r| r.parent == Some(parent)) {
                parents.push(record.id);
                let tip = match self.open_store(&record.id) {
                    Ok(open) => chain_position(&open.log, &me)?,
                    Err(_) if self.inner.node.dir().log_path(&record.id).exists() => {
                        let log = self.inner.node.open_log(record.id)?;
                        let tip = chain_position(&log, &me)?;
                        log.close()?;
                        tip
                    }
                    Err(_) => 0,
                };
                out.push((record.id, tip));
            }
        }
        out.truncate(lattice_sync::MAX_JOIN_CHILDREN);
        Ok(out)
    }

    /// Marks the stores below `root` that this node left together with it as active again,
    /// so they reopen as the root's children are reconciled.
    pub(super) fn reopen_left_children(&self, root: &StoreId) -> Result<(), NodeError> {
        let records = self.inner.node.meta().list()?;
        let mut parents = vec![*root];
        while let Some(parent) = parents.pop() {
            for record in records.iter().filter(|r| r.parent == Some(parent)) {
                if record.state == StoreState::Left {
                    let mut again = record.clone();
                    again.state = StoreState::Active;
                    self.inner.node.meta().put(&again)?;
                    parents.push(record.id);
                }
            }
        }
        Ok(())
    }
}

/// An encoded snapshot of store `id` a peer sent, decoded.
fn decode_snapshot(id: StoreId, encoded: &[u8]) -> Result<Snapshot, NodeError> {
    let snapshot = Snapshot::decode(encoded).map_err(|e| snapshot_refused(id, e.to_string()))?;
    if snapshot.store != id {
        return Err(snapshot_refused(id, "it is a snapshot of another store"));
    }
    Ok(snapshot)
}
