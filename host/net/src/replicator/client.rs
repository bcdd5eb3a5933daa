//! Sessions this node opens: sync, gap filling, bootstrap, join.

use super::*;

impl Replicator {
    /// Presents an invite `secret` for `store` to `peer` (whose address must be known). On
    /// success this node is a peer of the store there and may bootstrap it from `peer`.
    ///
    /// # Errors
    /// [`ReplicaError::Session`] with [`SessionError::Refused`] and the inviter's reason when
    /// the invite is not accepted; network errors.
    pub async fn join(
        &self,
        peer: &PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: Vec<(StoreId, u64)>,
    ) -> Result<(), ReplicaError> {
        // An explicit join is worth a try even while automatic retries wait, and on a fresh
        // connection: a cached one may have been closed by the other side a moment ago (as
        // when this node just left the store there).
        self.succeeded(peer);
        if let Some(st) = lock(&self.inner.peers).get_mut(peer) {
            st.conn = None;
        }
        self.session(peer, &store, async |s: &mut Stream| {
            lattice_sync::request_join(s, store, secret, tip, children.clone()).await
        })
        .await
    }

    /// Fetches a snapshot of `store` from `peer` (this node must be a peer of the store
    /// there): the encoded snapshot, or `None` when `peer`'s log is whole (bootstrap from it
    /// instead). `progress` hears (bytes received, total).
    ///
    /// A link failure is tried once more (on a fresh connection when the old one was lost),
    /// as a bootstrap is.
    ///
    /// # Errors
    /// [`ReplicaError::Session`] with [`SessionError::Refused`] and the peer's reason (or when
    /// the snapshot is larger than [`ReplicatorConfig::max_snapshot`]); network errors.
    pub async fn fetch_snapshot(
        &self,
        store: &StoreId,
        peer: &PubKey,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        let max = self.inner.config.max_snapshot;
        let store = *store;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let got = self
                .session(peer, &store, async |s: &mut Stream| {
                    lattice_sync::fetch_snapshot(s, store, max, &mut progress).await
                })
                .await;
            match got {
                Err(e) if attempt == 1 && Self::worth_retrying(&e) => {
                    debug!(peer = %peer.short(), "snapshot fetch failed, retrying once: {e}");
                    self.succeeded(peer);
                }
                other => return other,
            }
        }
    }

    /// True for a failure another attempt may not meet: the link failed or timed out (not a
    /// refusal, not bad data).
    fn worth_retrying(e: &ReplicaError) -> bool {
        matches!(
            e,
            ReplicaError::Session(SessionError::Link(_))
                | ReplicaError::Net(_)
                | ReplicaError::Timeout(_)
        )
    }

    /// Runs one client session on a new stream to `peer`, with timeout and accounting.
    pub(super) async fn session<T, F>(
        &self,
        peer: &PubKey,
        store: &StoreId,
        run: F,
    ) -> Result<T, ReplicaError>
    where
        F: AsyncFnOnce(&mut Stream) -> Result<T, SessionError>,
    {
        let conn = self.connection(peer).await?;
        let mut stream = match conn.open().await {
            Ok(s) => s,
            Err(e) => {
                self.failed(peer);
                return Err(e.into());
            }
        };
        let result = tokio::time::timeout(self.inner.config.session_timeout, run(&mut stream))
            .await
            .map_err(|_| ReplicaError::Timeout(peer.short()));
        stream.finish().await;
        match result {
            Ok(Ok(v)) => {
                self.succeeded(peer);
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_misbehaviour() {
                    self.strike(peer, &e.to_string());
                } else if matches!(e, SessionError::Link(_)) && conn.is_closed() {
                    // Only a lost connection makes the peer unreachable: one stream's failure
                    // (a peer that refused and stopped reading) must not close the connection
                    // the peer's other sessions run on.
                    self.failed(peer);
                }
                self.emit(ReplicaEvent::SessionFailed {
                    store: *store,
                    peer: *peer,
                    error: e.to_string(),
                });
                Err(e.into())
            }
            Err(e) => {
                self.failed(peer);
                Err(e)
            }
        }
    }

    // ---- client operations ----

    /// Reconciles `store` with `peer` now (both directions).
    ///
    /// # Errors
    /// [`ReplicaError`].
    pub async fn sync(
        &self,
        store: &StoreId,
        peer: &PubKey,
    ) -> Result<SessionReport, ReplicaError> {
        let entry = self
            .store(store)
            .ok_or_else(|| ReplicaError::UnknownStore(store.short()))?;
        if !entry.allows(peer) {
            return Err(ReplicaError::NotMember(peer.short()));
        }
        let options = self.inner.config.session.clone();
        let log = entry.log.clone();
        let report = self
            .session(peer, store, async |s: &mut Stream| {
                lattice_sync::reconcile(s, &log, &options).await
            })
            .await?;
        self.emit(ReplicaEvent::Synced {
            store: *store,
            peer: *peer,
            report: report.clone(),
        });
        Ok(report)
    }

    /// Fetches the missing history of `target` from `first` (when given), then from the
    /// store's other peers one at a time, until it is witnessed here.
    ///
    /// # Errors
    /// [`ReplicaError::NoPeer`] when no peer could fill the gap.
    pub async fn fill_gap(
        &self,
        store: &StoreId,
        target: Hash,
        first: Option<PubKey>,
    ) -> Result<PubKey, ReplicaError> {
        let entry = self
            .store(store)
            .ok_or_else(|| ReplicaError::UnknownStore(store.short()))?;
        let mut order: Vec<PubKey> = first.into_iter().collect();
        for p in lock(&entry.peers).iter() {
            if !order.contains(p) {
                order.push(*p);
            }
        }
        let me = self.local().id;
        for peer in order.into_iter().filter(|p| *p != me) {
            let log = entry.log.clone();
            let got = self
                .session(&peer, store, async |s: &mut Stream| {
                    lattice_sync::fetch_chain(s, &log, &[target]).await
                })
                .await;
            if got.is_ok() && entry.log.reader().is_witnessed(&target).unwrap_or(false) {
                self.emit(ReplicaEvent::GapFilled {
                    store: *store,
                    hash: target,
                    peer,
                });
                return Ok(peer);
            }
        }
        Err(ReplicaError::NoPeer("fill the gap"))
    }

    /// Clones `log` (normally empty) from the first of `peers` that completes a bootstrap;
    /// each attempt starts again from the first witness record. The store need not be added.
    ///
    /// # Errors
    /// The last peer's error when every peer failed; [`ReplicaError::NoPeer`] for no peers.
    pub async fn bootstrap(
        &self,
        log: &Arc<Log>,
        peers: &[PubKey],
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<(PubKey, SessionReport), ReplicaError> {
        let store = log.store_id();
        let options = self.inner.config.session.clone();
        let mut last = ReplicaError::NoPeer("serve a bootstrap");
        for peer in peers {
            // A connection the peer dropped a moment ago fails the first attempt; the failure
            // discards it, so one more attempt runs on a fresh connection.
            for attempt in 0..2 {
                let log = log.clone();
                let got = self
                    .session(peer, &store, async |s: &mut Stream| {
                        lattice_sync::bootstrap(s, &log, peer, &options, &mut progress).await
                    })
                    .await;
                match got {
                    Ok(report) => return Ok((*peer, report)),
                    Err(ReplicaError::Session(e)) if e.is_misbehaviour() => {
                        warn!(peer = %peer.short(), "bootstrap refused the peer's data: {e}");
                        last = ReplicaError::Session(e);
                        break;
                    }
                    Err(e) if attempt == 0 => {
                        debug!(peer = %peer.short(), "bootstrap failed, retrying once: {e}");
                        self.succeeded(peer);
                    }
                    Err(e) => {
                        warn!(peer = %peer.short(), "bootstrap failed, trying the next peer: {e}");
                        last = e;
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}
