//! Peers: connections, retry delays, strikes and bans.

use super::*;

impl Replicator {
    /// Remembers how to reach a peer.
    pub fn add_peer(&self, addr: &PeerAddr) {
        self.inner.transport.add_peer(addr);
    }

    /// True when `peer` is in the peer set of some store, or some store is open to all.
    pub(super) fn is_known_anywhere(&self, peer: &PubKey) -> bool {
        lock(&self.inner.stores)
            .values()
            .any(|e| e.access == Access::Open || lock(&e.peers).contains(peer))
    }

    pub(super) fn check_peer(&self, peer: &PubKey, outbound: bool) -> Result<(), ReplicaError> {
        if !self.is_online() {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "not reachable: this node is offline",
            });
        }
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        let now = Instant::now();
        if st.banned_until.is_some_and(|t| t > now) {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "banned",
            });
        }
        if outbound && st.retry_at.is_some_and(|t| t > now) {
            return Err(ReplicaError::PeerUnavailable {
                peer: peer.short(),
                state: "unreachable (retrying later)",
            });
        }
        Ok(())
    }

    pub(super) fn strike(&self, peer: &PubKey, reason: &str) {
        let banned = {
            let mut peers = lock(&self.inner.peers);
            let st = peers.entry(*peer).or_default();
            st.strikes += 1;
            warn!(peer = %peer.short(), strikes = st.strikes, "peer misbehaved: {reason}");
            if st.strikes >= self.inner.config.strikes_to_ban {
                st.banned_until = Some(Instant::now() + self.inner.config.ban);
                st.strikes = 0;
                if let Some(c) = st.conn.take() {
                    c.close("banned for sending invalid data");
                }
                true
            } else {
                false
            }
        };
        if banned {
            self.emit(ReplicaEvent::PeerBanned {
                peer: *peer,
                reason: reason.to_string(),
            });
        }
    }

    /// Token bucket for inbound streams.
    pub(super) fn allow_stream(&self, peer: &PubKey) -> bool {
        let rate = f64::from(self.inner.config.streams_per_second.max(1));
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        let now = Instant::now();
        let elapsed = st
            .refilled
            .map_or(2.0, |t| now.duration_since(t).as_secs_f64());
        st.tokens = (st.tokens + elapsed * rate).min(2.0 * rate);
        st.refilled = Some(now);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(super) fn failed(&self, peer: &PubKey) {
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        st.failures = st.failures.saturating_add(1);
        let cfg = &self.inner.config;
        let backoff = cfg
            .min_backoff
            .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
            .min(cfg.max_backoff);
        st.retry_at = Some(Instant::now() + backoff);
        if let Some(c) = st.conn.take() {
            c.close("session failed");
        }
    }

    pub(super) fn succeeded(&self, peer: &PubKey) {
        let mut peers = lock(&self.inner.peers);
        let st = peers.entry(*peer).or_default();
        st.failures = 0;
        st.retry_at = None;
    }

    pub(super) async fn connection(
        &self,
        peer: &PubKey,
    ) -> Result<Arc<dyn Connection>, ReplicaError> {
        self.check_peer(peer, true)?;
        if let Some(c) = lock(&self.inner.peers)
            .get(peer)
            .and_then(|p| p.conn.clone())
            && !c.is_closed()
        {
            return Ok(c);
        }
        match self.inner.transport.connect(*peer).await {
            Ok(c) => {
                lock(&self.inner.peers).entry(*peer).or_default().conn = Some(c.clone());
                let this = self.clone();
                let served = c.clone();
                let task = tokio::spawn(async move { this.serve_connection(served).await });
                self.track(task);
                Ok(c)
            }
            Err(e) => {
                self.failed(peer);
                Err(e.into())
            }
        }
    }
}
