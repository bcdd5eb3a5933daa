//! Anti-entropy: periodic and nudged reconciliation with members.

use tokio::task::JoinSet;

use super::*;

/// Periodic reconciliations of one store running at once, at most (nudges may add more,
/// one per peer).
const ROUNDS_IN_FLIGHT: usize = 2;

impl Replicator {
    pub(super) async fn anti_entropy_loop(
        self,
        store: StoreId,
        mut nudges: mpsc::Receiver<PubKey>,
    ) {
        if !self.inner.config.auto_sync {
            while nudges.recv().await.is_some() {}
            return;
        }
        let me = self.local().id;
        let initial = self
            .store(&store)
            .map(|e| lock(&e.peers).clone())
            .unwrap_or_default();
        // First contact with every member at once: an offline member costs its dial timeout
        // on its own task, never a delay for the others (nor for nudges below). The tasks are
        // the store's, so removing the store ends them and waits for them.
        if let Some(entry) = self.store(&store) {
            let first: Vec<JoinHandle<()>> = initial
                .into_iter()
                .filter(|p| *p != me)
                .map(|peer| {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.sync(&store, &peer).await;
                    })
                })
                .collect();
            lock(&entry.tasks).extend(first);
        }
        let mut tick = tokio::time::interval(self.inner.config.anti_entropy);
        tick.tick().await;
        let mut next = 0usize;
        // Each reconciliation runs on its own task, at most one per peer and a few at once: a
        // peer that takes long to answer (or never does, until the session timeout) holds up
        // only itself.
        // Dropping the set (the store removed) ends them.
        let mut syncing: JoinSet<PubKey> = JoinSet::new();
        let mut busy: BTreeSet<PubKey> = BTreeSet::new();
        loop {
            let peer = tokio::select! {
                // In order: a simulation replays the same choice.
                biased;
                _ = tick.tick() => {
                    // A round starts only while few are running: slow sessions (a loaded
                    // node) must not pile up one per tick.
                    if syncing.len() >= ROUNDS_IN_FLIGHT {
                        continue;
                    }
                    let Some(entry) = self.store(&store) else { return };
                    let peers: Vec<PubKey> = lock(&entry.peers)
                        .iter()
                        .copied()
                        .filter(|p| *p != me && !busy.contains(p))
                        .collect();
                    if peers.is_empty() {
                        continue;
                    }
                    next = next.wrapping_add(1);
                    peers[next % peers.len()]
                }
                p = nudges.recv() => match p {
                    Some(p) if p != me => p,
                    Some(_) => continue,
                    None => return,
                },
                Some(done) = syncing.join_next(), if !syncing.is_empty() => {
                    if let Ok(peer) = done {
                        busy.remove(&peer);
                    }
                    continue;
                }
            };
            if !busy.insert(peer) {
                continue;
            }
            let this = self.clone();
            syncing.spawn(async move {
                let _ = this.sync(&store, &peer).await;
                peer
            });
        }
    }
}
