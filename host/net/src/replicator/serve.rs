//! Sessions this node serves: accepting connections and streams, joins.

use super::*;

impl Replicator {
    /// Hands a join to the node and waits (bounded) for its answer.
    async fn ask_join(
        &self,
        peer: PubKey,
        store: StoreId,
        secret: [u8; 32],
        tip: u64,
        children: Vec<(StoreId, u64)>,
    ) -> Result<(), String> {
        let Some(joins) = lock(&self.inner.joins).clone() else {
            return Err("this node does not accept joins".into());
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = JoinRequest {
            peer,
            store,
            secret,
            tip,
            children,
            reply,
        };
        if joins.send(request).await.is_err() {
            return Err("this node is shutting down".into());
        }
        match tokio::time::timeout(JOIN_ANSWER_WAIT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("this node is shutting down".into()),
            Err(_) => Err("the inviter did not decide in time; try again".into()),
        }
    }

    /// The store's entry when `peer` may be served it here; otherwise the stream is refused
    /// with the reason and `None` returned.
    pub(super) async fn entry_for_peer(
        &self,
        peer: &PubKey,
        store: &StoreId,
        stream: &mut Stream,
    ) -> Option<Arc<StoreEntry>> {
        let reason = match self.store(store) {
            Some(entry) if entry.allows(peer) => return Some(entry),
            Some(_) => "you are not a peer of this store here; ask a member for an invite",
            None => "this node does not replicate that store",
        };
        let _ = lattice_sync::refuse(stream, reason).await;
        None
    }

    /// Asks the node for a snapshot of `store` for `peer` and waits (bounded) for it.
    async fn ask_snapshot(&self, peer: PubKey, store: StoreId) -> Result<Option<Vec<u8>>, String> {
        let Some(snapshots) = lock(&self.inner.snapshots).clone() else {
            return Err("this node does not serve snapshots".into());
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if snapshots
            .send(SnapshotRequest { peer, store, reply })
            .await
            .is_err()
        {
            return Err("this node is shutting down".into());
        }
        match tokio::time::timeout(SNAPSHOT_ANSWER_WAIT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("this node is shutting down".into()),
            Err(_) => Err("making the snapshot took too long; try again".into()),
        }
    }

    /// Serves a snapshot fetch of `store` to `peer` (a peer of the store here).
    async fn serve_snapshot(&self, peer: PubKey, store: StoreId, stream: &mut Stream) {
        if self.entry_for_peer(&peer, &store, stream).await.is_none() {
            return;
        }
        let sent = match self.ask_snapshot(peer, store).await {
            Ok(Some(encoded)) => {
                let sent = tokio::time::timeout(
                    self.inner.config.session_timeout,
                    lattice_sync::send_snapshot(stream, &encoded),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    info!(peer = %peer.short(), store = %store.short(), bytes = encoded.len(), "snapshot sent");
                }
                sent.unwrap_or_else(|_| Err(SessionError::Link("timed out".into())))
            }
            Ok(None) => lattice_sync::no_snapshot(stream).await,
            Err(reason) => {
                info!(peer = %peer.short(), store = %store.short(), "no snapshot given: {reason}");
                lattice_sync::refuse(stream, &reason).await
            }
        };
        if let Err(e) = sent {
            debug!(peer = %peer.short(), "sending a snapshot failed: {e}");
        }
    }

    // ---- background loops ----

    pub(super) async fn accept_loop(self) {
        while let Some(conn) = self.inner.transport.accept().await {
            let peer = conn.remote();
            if self.check_peer(&peer, false).is_err() {
                conn.close("not accepting sessions from this peer now");
                continue;
            }
            {
                let mut peers = lock(&self.inner.peers);
                let st = peers.entry(peer).or_default();
                if st.conn.as_ref().is_none_or(|c| c.is_closed()) {
                    st.conn = Some(conn.clone());
                }
                st.failures = 0;
                st.retry_at = None;
            }
            let this = self.clone();
            let task = tokio::spawn(async move { this.serve_connection(conn).await });
            self.track(task);
        }
    }

    pub(super) async fn serve_connection(self, conn: Arc<dyn Connection>) {
        let peer = conn.remote();
        // The connection's streams end with it: aborting this task (the replicator shutting
        // down) aborts them, and with them their hold on the stores' logs.
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                // In order: a simulation replays the same choice.
                biased;
                accepted = conn.accept() => accepted,
                Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            };
            let Ok(mut stream) = accepted else { break };
            if self.check_peer(&peer, false).is_err() {
                conn.close("not accepting sessions from this peer now");
                return;
            }
            if !self.allow_stream(&peer) {
                self.strike(&peer, "too many streams");
                continue;
            }
            let this = self.clone();
            streams.spawn(async move {
                this.serve_stream(peer, &mut stream).await;
                stream.finish().await;
            });
        }
        // The connection is gone; the sessions on it end on their own.
        while streams.join_next().await.is_some() {}
    }

    pub(super) async fn serve_stream(&self, peer: PubKey, stream: &mut Stream) {
        let store = match lattice_sync::accept(stream).await {
            Ok(Opening::Session(s)) => s,
            Ok(Opening::Join {
                store,
                secret,
                tip,
                children,
            }) => {
                let answer = self.ask_join(peer, store, secret, tip, children).await;
                let _ = match answer {
                    Ok(()) => {
                        info!(peer = %peer.short(), store = %store.short(), "peer joined");
                        lattice_sync::welcome(stream).await
                    }
                    Err(reason) => {
                        info!(peer = %peer.short(), store = %store.short(), "join refused: {reason}");
                        lattice_sync::refuse(stream, &reason).await
                    }
                };
                return;
            }
            Ok(Opening::Snapshot(store)) => {
                self.serve_snapshot(peer, store, stream).await;
                return;
            }
            Ok(Opening::Blob {
                store,
                hash,
                ranges,
            }) => {
                self.serve_blob(peer, store, hash, ranges, stream).await;
                return;
            }
            Err(e) => {
                if e.is_misbehaviour() {
                    self.strike(&peer, &e.to_string());
                }
                return;
            }
        };
        // A peer a members-only store does not list (yet) gets a session that takes in only
        // what members wrote and gives nothing out: the records admitting it reach a member
        // that missed them, even when no other member it knows is up.
        let (entry, listed) = match self.store(&store) {
            Some(entry) if !entry.allows(&peer) => (entry, false),
            _ => match self.entry_for_peer(&peer, &store, stream).await {
                Some(entry) => (entry, true),
                None => return,
            },
        };
        let session = &self.inner.config.session;
        let members = |author: &PubKey| entry.allows(author);
        let served = tokio::time::timeout(self.inner.config.session_timeout, async {
            if listed {
                lattice_sync::serve(stream, &entry.log, session).await
            } else {
                lattice_sync::serve_unlisted(stream, &entry.log, session, &members).await
            }
        })
        .await;
        match served {
            Ok(Ok(report)) => self.emit(ReplicaEvent::Served {
                store,
                peer,
                report,
            }),
            Ok(Err(e)) => {
                debug!(peer = %peer.short(), "serving failed: {e}");
                if e.is_misbehaviour() {
                    self.strike(&peer, &e.to_string());
                }
            }
            Err(_) => debug!(peer = %peer.short(), "serving timed out"),
        }
    }
}
