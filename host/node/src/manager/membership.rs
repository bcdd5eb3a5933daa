//! Who may replicate a store: peer sets for the replicator, membership passed down to
//! child stores, addresses, revocation.

use super::*;

impl StoreManager {
    /// The peer set a store is replicated with: its own active and dormant peers, or its
    /// parent's when it inherits them.
    pub(super) async fn members_of(&self, id: &StoreId) -> Vec<PubKey> {
        let mut current = *id;
        for _ in 0..16 {
            let Ok(open) = self.open_store(&current) else {
                return Vec::new();
            };
            let fallback = open.parent;
            // `Ok(parent)` to follow, `Err(members)` when found.
            let step = open
                .actor
                .with_slot(move |slot| {
                    Ok(match slot.as_mut() {
                        Some(store) => match store.inherits_from().unwrap_or(None) {
                            Some(parent) => Ok(Some(parent)),
                            None => Err(store
                                .peers()
                                .unwrap_or_default()
                                .into_iter()
                                .filter(PeerInfo::is_member)
                                .map(|p| p.key)
                                .collect::<Vec<_>>()),
                        },
                        None => Ok(fallback),
                    })
                })
                .await;
            match step {
                Ok(Ok(Some(parent))) => current = parent,
                Ok(Err(members)) => return members,
                Ok(Ok(None)) | Err(_) => return Vec::new(),
            }
        }
        Vec::new()
    }

    /// Pushes the peer set of `id` and of every open store inheriting from it to the
    /// replicator.
    pub(super) async fn update_members(&self, id: &StoreId) {
        let _consistent = self.inner.members.lock().await;
        let open: Vec<(StoreId, Option<StoreId>)> = lock(&self.inner.stores)
            .iter()
            .map(|(k, v)| (*k, v.parent))
            .collect();
        let mut todo = vec![*id];
        let mut seen = Vec::new();
        while let Some(s) = todo.pop() {
            if seen.contains(&s) {
                continue;
            }
            seen.push(s);
            let members = self.members_of(&s).await;
            self.inner.replicator.set_members(&s, members);
            todo.extend(open.iter().filter(|(_, p)| *p == Some(s)).map(|(k, _)| *k));
        }
    }

    /// Passes membership changes of `parent` down to its open children that inherit their
    /// peers (and on to theirs): a peer whose status this node wrote in the parent gets the
    /// same status in each child, written by this node, with the cut (revocation) or resume
    /// point (re-activation) of the child's own log. A child's projection then needs only its
    /// own system table, and a peer revoked at the root is refused in every descendant.
    pub(super) async fn mirror_membership(&self, parent: &StoreId) -> Result<(), NodeError> {
        let me = self.inner.node.key().public();
        let children: Vec<StoreId> = lock(&self.inner.stores)
            .iter()
            .filter(|(_, v)| v.parent == Some(*parent))
            .map(|(k, _)| *k)
            .collect();
        if children.is_empty() {
            return Ok(());
        }
        let mine: Vec<PeerInfo> = self
            .with_store(parent, |s| s.peers())
            .await?
            .into_iter()
            .filter(|peer| peer.written_by == Some(me))
            .collect();
        for child in children {
            let resume: BTreeMap<PubKey, u64> = lock(&self.inner.resume_at)
                .iter()
                .filter(|((c, _), _)| *c == child)
                .map(|((_, k), at)| (*k, *at))
                .collect();
            let mine = mine.clone();
            let written = self
                .with_store(&child, move |s| {
                    if s.inherits_from()?.is_none() {
                        return Ok(None);
                    }
                    let recorded = s.peers()?;
                    let ops = mirror_ops(s.log(), &me, &mine, &recorded, &resume)?;
                    if ops.is_empty() {
                        return Ok(None);
                    }
                    debug!(child = %s.id().short(), changes = ops.len(), "passing membership to a child store");
                    Ok(Some(s.system_call_reply("batch", &json!({"ops": ops}))?))
                })
                .await;
            match written {
                Ok(Some(reply)) => {
                    self.publish(reply);
                }
                Ok(None) => {}
                Err(NodeError::NotReady(_) | NodeError::NotOpen(_)) => continue,
                Err(e) => return Err(e),
            }
            Box::pin(self.mirror_membership(&child)).await?;
        }
        Ok(())
    }

    /// Records this node's current direct addresses in a root store's system table when they
    /// differ from what is recorded, so every peer can dial it (not only its inviter).
    pub(super) async fn announce_addrs(&self, id: &StoreId) -> Result<(), NodeError> {
        if !self.inner.online {
            return Ok(());
        }
        let me = self.inner.node.key().public();
        let addrs: Vec<String> = self
            .address()
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect();
        let recorded = self
            .with_store(id, move |s| {
                if s.inherits_from()?.is_some() {
                    return Ok(None);
                }
                let me_now = s.peers()?.into_iter().find(|p| p.key == me);
                Ok(Some(me_now.map(|p| (p.status, p.addrs))))
            })
            .await;
        match recorded {
            Ok(Some(Some((PeerStatus::Active, recorded)))) if recorded != addrs => {
                self.system_call(
                    id,
                    "set-peer-addrs",
                    &json!({"peer": me.to_string(), "addrs": addrs}),
                )
                .await?;
                Ok(())
            }
            Ok(_) | Err(NodeError::NotReady(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Tells the replicator where a store's peers listen, from its system table.
    pub(super) async fn learn_addrs(&self, id: &StoreId) {
        let me = self.inner.node.key().public();
        let Ok(peers) = self.with_store(id, |s| s.peers()).await else {
            return;
        };
        for peer in peers.into_iter().filter(|p| p.key != me && p.is_member()) {
            let addrs: Vec<SocketAddr> = peer.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if !addrs.is_empty() {
                self.inner.replicator.add_peer(&PeerAddr {
                    id: peer.key,
                    addrs,
                });
            }
        }
    }

    /// A store's peers as its system table records them (inherited ones for a child).
    ///
    /// # Errors
    /// As [`StoreManager::status`].
    pub async fn peers(&self, id: &StoreId) -> Result<Vec<PeerInfo>, NodeError> {
        let mut current = *id;
        for _ in 0..16 {
            match self.with_store(&current, |s| s.inherits_from()).await? {
                Some(parent) => current = parent,
                None => return self.with_store(&current, |s| s.peers()).await,
            }
        }
        Err(NodeError::NotReady(id.to_string()))
    }

    /// Revokes `peer` from store `id`: its connections and gossip are refused at once and
    /// its intentions after the last one this node has seen are not projected by anyone —
    /// in this store and in every child store that inherits its peers.
    ///
    /// # Errors
    /// [`NodeError::InheritedPeers`] for a child; [`NodeError::RevokeSelf`] for this node's
    /// own key (leave instead); [`NodeError::NotAPeer`] for a key the store does not list as
    /// a peer; storage failures.
    pub async fn revoke_peer(&self, id: &StoreId, peer: &PubKey) -> Result<Value, NodeError> {
        if *peer == self.inner.node.key().public() {
            return Err(NodeError::RevokeSelf);
        }
        let known = self
            .with_store(id, |s| s.peers())
            .await?
            .into_iter()
            .any(|p| p.key == *peer && p.status != PeerStatus::Invited);
        if !known {
            return Err(NodeError::NotAPeer(peer.to_string()));
        }
        self.revoke(id, peer).await
    }

    /// Finds a peer of store `id` by full key or unique prefix.
    ///
    /// # Errors
    /// [`NodeError::NotAPeer`] when nothing matches, [`NodeError::Ambiguous`] for several.
    pub async fn find_peer(&self, id: &StoreId, text: &str) -> Result<PubKey, NodeError> {
        let text = text.trim().to_ascii_lowercase();
        let matches: Vec<PubKey> = self
            .peers(id)
            .await?
            .into_iter()
            .map(|p| p.key)
            .filter(|k| !text.is_empty() && k.to_string().starts_with(&text))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::NotAPeer(text)),
            _ => Err(NodeError::Ambiguous(text)),
        }
    }

    /// Records `peer` revoked in `id` at the last position seen here, and in the children
    /// that inherit `id`'s peers.
    pub(super) async fn revoke(&self, id: &StoreId, peer: &PubKey) -> Result<Value, NodeError> {
        self.require_own_peers(id).await?;
        let me = self.inner.node.key().public();
        let peer = *peer;
        let reply = self
            .with_store(id, move |s| {
                let cut = revocation_cut(s.log(), &peer, &me)?;
                s.system_call_reply(
                    "set-peer-status",
                    &json!({"peer": peer.to_string(), "status": "revoked", "cut": cut}),
                )
            })
            .await?;
        let result = self.publish(reply);
        self.update_members(id).await;
        self.mirror_membership(id).await?;
        Ok(result)
    }
}

/// Where a revocation of `peer` written now by `me` cuts its chain in `log`: the newest
/// position seen here — one further when a node revokes itself (leaving), as the revocation
/// is then its own next intention and must still count.
fn revocation_cut(log: &Log, peer: &PubKey, me: &PubKey) -> Result<u64, NodeError> {
    let seen = chain_position(log, peer)?;
    Ok(if peer == me { seen + 1 } else { seen })
}

/// The `set-peer-status` ops that bring a child's recorded peers (`recorded`) in line with
/// the parent records `me` wrote (`mine`): revocations cut at the newest position seen in the
/// child's log, re-activations resume there (or where the peer reported, when further).
fn mirror_ops(
    log: &Log,
    me: &PubKey,
    mine: &[PeerInfo],
    recorded: &[PeerInfo],
    resume: &BTreeMap<PubKey, u64>,
) -> Result<Vec<Value>, NodeError> {
    let mut ops = Vec::new();
    for peer in mine {
        let now = recorded
            .iter()
            .find(|p| p.key == peer.key)
            .map(|p| p.status);
        if now == Some(peer.status) {
            continue;
        }
        let args = match peer.status {
            PeerStatus::Revoked => {
                let cut = revocation_cut(log, &peer.key, me)?;
                json!({"peer": peer.key.to_string(), "status": "revoked", "cut": cut})
            }
            PeerStatus::Active | PeerStatus::Dormant => {
                // Resume where the peer says its chain stands when it re-joined, never below
                // what this node has seen of it.
                let position = chain_position(log, &peer.key)?;
                let reported = resume.get(&peer.key).copied().unwrap_or(0);
                json!({
                    "peer": peer.key.to_string(), "status": peer.status.as_str(),
                    "resume": position.max(reported),
                })
            }
            PeerStatus::Invited => continue,
        };
        ops.push(json!({"method": "set-peer-status", "args": args}));
    }
    Ok(ops)
}
