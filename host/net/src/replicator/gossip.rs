//! Gossip: publishing new intentions, taking in what neighbours send.

use tokio::sync::Semaphore;

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
            } else {
                self.inner
                    .counters
                    .gossip_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let ingesting = Arc::new(Semaphore::new(INGESTS_IN_FLIGHT));
        loop {
            let rotated = tokio::select! {
                // In order: a simulation replays the same choice.
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        backoff = self.inner.config.min_backoff;
                        self.on_gossip(store, event, &ingesting).await;
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

    /// Takes in one gossip event. An intention is handed to the log at once and its outcome
    /// awaited on a task of its own, so the intentions of a busy writer share group commits
    /// (at most [`INGESTS_IN_FLIGHT`] per store at a time).
    pub(super) async fn on_gossip(
        &self,
        store: StoreId,
        event: GossipEvent,
        ingesting: &Arc<Semaphore>,
    ) {
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
        let msg = match GossipMsg::decode(&bytes) {
            Ok(m) if m.store() == store => m,
            Ok(_) => return self.offence(&from, direct, "gossip for another store on this topic"),
            Err(e) => return self.offence(&from, direct, &e.to_string()),
        };
        match msg {
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
                let Ok(permit) = ingesting.clone().acquire_owned().await else {
                    return;
                };
                let pending = entry.log.submit_ingest(vec![Incoming::new(bytes)]);
                let this = self.clone();
                tokio::spawn(async move {
                    let result = pending
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .and_then(|mut r| r.pop());
                    drop(permit);
                    match result {
                        Some(Ok(Ingested::Witnessed { .. })) => {
                            this.emit(ReplicaEvent::Gossiped { store, hash });
                        }
                        Some(Ok(Ingested::Duplicate)) | None => {}
                        Some(Ok(Ingested::Floating { missing })) => {
                            this.fill_soon(store, missing, from);
                        }
                        Some(Err(e)) if e.is_retryable() => {}
                        Some(Err(lattice_log::IngestError::ForkedChain { .. })) => {}
                        Some(Err(e)) => this.offence(&from, direct, &e.to_string()),
                    }
                });
            }
            GossipMsg::Announce { hash, .. } => match entry.log.reader().lacking(&[hash]) {
                Ok(l) if !l.is_empty() => self.fill_soon(store, hash, from),
                _ => {}
            },
        }
    }

    /// Invalid content counts against the neighbour only when it is the original sender: an
    /// honest relay must not pay for what it forwarded.
    fn offence(&self, from: &PubKey, direct: bool, reason: &str) {
        if direct {
            self.strike(from, reason);
        } else {
            debug!(peer = %from.short(), "dropped relayed gossip: {reason}");
        }
    }

    /// Fetches the missing intention `missing` (and what it needs) from `from`, unless that
    /// is under way already.
    fn fill_soon(&self, store: StoreId, missing: lattice_model::Hash, from: PubKey) {
        let Some(entry) = self.store(&store) else {
            return;
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

/// Gossiped intentions of one store handed to the log and not yet answered, at most.
const INGESTS_IN_FLIGHT: usize = 256;
