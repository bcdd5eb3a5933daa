//! Gossip: publishing new intentions, taking in what neighbours send.

use super::*;

impl Replicator {
    /// Gossips a locally written intention to the store's peers.
    pub fn publish(&self, intention: &SignedIntention) {
        if !self.is_online() {
            return;
        }
        let store = intention.intention().store_id();
        if let Some(entry) = self.store(&store) {
            let msg = GossipMsg::for_intention(store, intention.hash(), intention.as_bytes());
            if lock(&entry.gossip).try_send(msg.encode()).is_err() {
                debug!(store = %store.short(), "gossip queue full; anti-entropy will carry it");
            }
        }
    }

    /// Takes in the store's gossip; rejoins when the topic ends (with backoff) and when the
    /// store's epoch changes (at once, on the new epoch's topic).
    pub(super) async fn gossip_loop(
        self,
        store: StoreId,
        mut events: mpsc::Receiver<GossipEvent>,
        mut epoch: watch::Receiver<Option<Hash>>,
    ) {
        let mut backoff = self.inner.config.min_backoff;
        loop {
            let rotated = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        backoff = self.inner.config.min_backoff;
                        self.on_gossip(store, event).await;
                        continue;
                    }
                    // The topic ended (transport trouble).
                    None => false,
                },
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
            };
            let Some(entry) = self.store(&store) else {
                return;
            };
            if !rotated {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.inner.config.max_backoff);
            }
            let me = self.local().id;
            let peers: Vec<PubKey> = lock(&entry.peers)
                .iter()
                .copied()
                .filter(|p| *p != me)
                .collect();
            let topic = topic_of(&store, epoch.borrow_and_update().as_ref());
            match self.inner.gossip.join(topic, peers).await {
                Ok(topic) => {
                    events = topic.events;
                    *lock(&entry.gossip) = topic.sender;
                    if rotated {
                        debug!(store = %store.short(), "gossip moved to the new epoch's topic");
                    }
                }
                Err(e) => warn!(store = %store.short(), "joining gossip failed: {e}"),
            }
        }
    }

    pub(super) async fn on_gossip(&self, store: StoreId, event: GossipEvent) {
        let Some(entry) = self.store(&store) else {
            return;
        };
        let (from, direct, bytes) = match event {
            GossipEvent::Received {
                from,
                direct,
                bytes,
            } => (from, direct, bytes),
            GossipEvent::NeighborUp(peer) => {
                // A stranger on the topic never gets a session from us.
                if entry.allows(&peer) {
                    let _ = entry.nudge.try_send(peer);
                }
                return;
            }
            GossipEvent::NeighborDown(_) => return,
            GossipEvent::Lagged => {
                // Messages were dropped: reconcile with someone soon.
                if let Some(p) = lock(&entry.peers).first() {
                    let _ = entry.nudge.try_send(*p);
                }
                return;
            }
        };
        if self.check_peer(&from, false).is_err() || !entry.allows(&from) {
            return;
        }
        // Invalid content counts against the neighbour only when it is the original sender:
        // an honest relay must not pay for what it forwarded.
        let offence = |reason: &str| {
            if direct {
                self.strike(&from, reason);
            } else {
                debug!(peer = %from.short(), "dropped relayed gossip: {reason}");
            }
        };
        let msg = match GossipMsg::decode(&bytes) {
            Ok(m) if m.store() == store => m,
            Ok(_) => return offence("gossip for another store on this topic"),
            Err(e) => return offence(&e.to_string()),
        };
        let missing = match msg {
            GossipMsg::Intention { bytes, .. } => {
                if entry.access == Access::Members
                    && let Ok(signed) = SignedIntention::decode(&bytes)
                    && !entry.allows(&signed.intention().author())
                {
                    debug!(peer = %from.short(), "dropped gossip by an author who is not a peer");
                    return;
                }
                let hash = lattice_model::Hash::of(
                    bytes
                        .get(..bytes.len().saturating_sub(64))
                        .unwrap_or_default(),
                );
                let result = entry
                    .log
                    .submit_ingest(vec![Incoming::new(bytes)])
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|mut r| r.pop());
                match result {
                    Some(Ok(Ingested::Witnessed { .. })) => {
                        return self.emit(ReplicaEvent::Gossiped { store, hash });
                    }
                    Some(Ok(Ingested::Duplicate)) | None => return,
                    Some(Ok(Ingested::Floating { missing })) => missing,
                    Some(Err(e)) if e.is_retryable() => return,
                    Some(Err(lattice_log::IngestError::ForkedChain { .. })) => return,
                    Some(Err(e)) => return offence(&e.to_string()),
                }
            }
            GossipMsg::Announce { hash, .. } => match entry.log.reader().lacking(&[hash]) {
                Ok(l) if !l.is_empty() => hash,
                _ => return,
            },
        };
        if !lock(&entry.filling).insert(missing) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let filled = this.fill_gap(&store, missing, Some(from)).await;
            if let Some(e) = this.store(&store) {
                lock(&e.filling).remove(&missing);
                if filled.is_err() {
                    let _ = e.nudge.try_send(from);
                }
            }
        });
    }
}
