//! Blobs of the node's stores: putting one, and getting one from the store's peers when it
//! is not here (`lattice-cas` keeps them; the replicator moves them). A store's module is a
//! blob of the store too: every node running the store holds (and so serves) it, and a node
//! that holds the store headless fetches it from the store's peers and installs it.

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use lattice_cas::{BlobInfo, Cas, CollectReport};
use lattice_net::FetchedBlob;

use super::*;

impl StoreManager {
    fn blob_store(&self) -> Result<Arc<Cas>, NodeError> {
        self.inner
            .node
            .cas()
            .cloned()
            .ok_or(NodeError::Blob(lattice_cas::CasError::Stopped))
    }

    /// Puts the bytes `data` yields as a blob of store `id` (open here), streaming them to
    /// disk.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Blob`].
    pub async fn put_blob(
        &self,
        id: &StoreId,
        data: impl Read + Send + 'static,
    ) -> Result<BlobInfo, NodeError> {
        self.open_store(id)?;
        let (cas, store) = (self.blob_store()?, *id);
        self.off_workers("putting a blob", move || Ok(cas.put(&store, data)?))
            .await
    }

    /// Blob `hash` of store `id`: here already, or fetched (verified, resumed where an
    /// earlier transfer stopped) from the store's peers.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::BlobUnavailable`] when no peer gives it;
    /// [`NodeError::Blob`].
    pub async fn fetch_blob(&self, id: &StoreId, hash: &Hash) -> Result<FetchedBlob, NodeError> {
        self.fetch_blob_counting(id, hash, None).await
    }

    /// As [`StoreManager::fetch_blob`], adding the bytes received (verified) to `progress` as
    /// they arrive.
    ///
    /// # Errors
    /// As [`StoreManager::fetch_blob`].
    pub async fn fetch_blob_counting(
        &self,
        id: &StoreId,
        hash: &Hash,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<FetchedBlob, NodeError> {
        self.open_store(id)?;
        self.blob_store()?;
        let peers = self.inner.replicator.store_peers(id);
        self.inner
            .replicator
            .fetch_blob(id, hash, &peers, progress)
            .await
            .map_err(|source| match source {
                lattice_net::ReplicaError::Blob(e) => NodeError::Blob(e),
                source => NodeError::BlobUnavailable {
                    hash: hash.short(),
                    source,
                },
            })
    }

    /// Blob `hash` as store `id` (open here) holds it here, or `None`.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Blob`].
    pub async fn blob_stat(
        &self,
        id: &StoreId,
        hash: &Hash,
    ) -> Result<Option<BlobInfo>, NodeError> {
        self.open_store(id)?;
        let (cas, store, hash) = (self.blob_store()?, *id, *hash);
        self.off_workers("reading a blob's entry", move || {
            Ok(cas.stat(&store, &hash)?)
        })
        .await
    }

    /// The blobs store `id` (open here) holds here, in hash order.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Blob`].
    pub async fn blobs(&self, id: &StoreId) -> Result<Vec<BlobInfo>, NodeError> {
        self.open_store(id)?;
        let (cas, store) = (self.blob_store()?, *id);
        self.off_workers("listing blobs", move || Ok(cas.list(&store)?))
            .await
    }

    /// Writes bytes `range` of blob `hash` of store `id` (held here) to `out`, each checked
    /// against the hash before it is written; returns how many were written.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::Blob`] (not here, out of range, damaged on disk,
    /// `out` failing).
    pub async fn read_blob(
        &self,
        id: &StoreId,
        hash: &Hash,
        range: Range<u64>,
        mut out: impl Write + Send + 'static,
    ) -> Result<u64, NodeError> {
        self.open_store(id)?;
        let (cas, store, hash) = (self.blob_store()?, *id, *hash);
        self.off_workers("reading a blob", move || {
            let written = cas.read(&store, &hash, range, &mut out)?;
            out.flush().map_err(lattice_cas::CasError::Output)?;
            Ok(written)
        })
        .await
    }

    /// Collects blobs: drops every store's hold on a blob nothing pins or references that
    /// it has held for at least `grace`, and deletes blobs no store holds any more. The node
    /// does this every [`COLLECT_EVERY`] with [`BLOB_GRACE`].
    ///
    /// # Errors
    /// [`NodeError::Blob`].
    pub async fn collect_blobs(&self, grace: Duration) -> Result<CollectReport, NodeError> {
        let cas = self.blob_store()?;
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.off_workers("collecting blobs", move || Ok(cas.collect(grace_ms)?))
            .await
    }

    /// Adds a pin to blob `hash` of store `id`, fetching it from the store's peers first
    /// when it is not here; with `pin` false removes one pin (a blob not here is
    /// [`lattice_cas::CasError::NotFound`]). A pinned blob is never collected.
    ///
    /// # Errors
    /// As [`StoreManager::fetch_blob`].
    pub async fn pin_blob(
        &self,
        id: &StoreId,
        hash: &Hash,
        pin: bool,
    ) -> Result<BlobInfo, NodeError> {
        if pin {
            // Here already, this finds it at once.
            self.fetch_blob(id, hash).await?;
        }
        let (cas, store, hash) = (self.blob_store()?, *id, *hash);
        let delta = if pin { 1 } else { -1 };
        self.off_workers("pinning a blob", move || Ok(cas.pin(&store, &hash, delta)?))
            .await
    }
}

/// How long a blob that nothing pins or references is kept after a store first held it (a
/// blob written in `prepare` waits here for the intention that references it).
pub const BLOB_GRACE: Duration = Duration::from_secs(3600);
/// How often the node collects blobs nothing keeps.
pub const COLLECT_EVERY: Duration = Duration::from_secs(600);

impl StoreManager {
    /// Starts fetching, in the background, the blobs store `id`'s state came to reference
    /// that are not here and that this node keeps under the store's blob policy (from the
    /// store's peers), and again those an earlier pass could not get; does nothing while a
    /// pass for the store is under way (what it did not take waits for the next call). The
    /// cost follows what is new, not every blob the store references.
    pub(super) fn fetch_referenced(&self, id: &StoreId) {
        if self.blob_store().is_err() || !lock(&self.inner.fetching_blobs).insert(*id) {
            return;
        }
        let (this, id) = (self.clone(), *id);
        self.spawn_side(async move {
            if let Err(e) = this.fetch_wanted(&id).await {
                debug!(store = %id.short(), "fetching referenced blobs stopped: {e}");
            }
            lock(&this.inner.fetching_blobs).remove(&id);
        });
    }

    /// One pass: fetches the newly wanted blobs of store `id` this node keeps, and those
    /// that failed before.
    async fn fetch_wanted(&self, id: &StoreId) -> Result<(), NodeError> {
        let mut wanted = self.with_store(id, |s| Ok(s.take_newly_wanted())).await?;
        let retry: Vec<Hash> = lock(&self.inner.blob_retry)
            .get_mut(id)
            .map(|r| std::mem::take(r).into_iter().collect())
            .unwrap_or_default();
        wanted.extend(retry);
        if wanted.is_empty() {
            return Ok(());
        }
        let keeper = self.blob_keeper(id).await?;
        for hash in &wanted {
            if !keeper.keeps(hash) {
                continue;
            }
            // A blob here already is found at once.
            if let Err(e) = self.fetch_blob(id, hash).await {
                debug!(store = %id.short(), blob = %hash.short(), "a referenced blob is not here yet: {e}");
                lock(&self.inner.blob_retry)
                    .entry(*id)
                    .or_default()
                    .insert(*hash);
            }
        }
        Ok(())
    }

    /// Who keeps store `id`'s blobs: its blob policy and its active members.
    async fn blob_keeper(&self, id: &StoreId) -> Result<BlobKeeper, NodeError> {
        let policy = self.blob_policy(id, None).await?;
        let copies = match policy["mode"].as_str() {
            Some("copies") => policy["copies"].as_u64().map(|c| c as usize),
            _ => None,
        };
        let me = self.inner.node.key().public();
        let mut members: Vec<PubKey> = self
            .peers(id)
            .await?
            .into_iter()
            .filter(|p| p.status == crate::PeerStatus::Active)
            .map(|p| p.key)
            .collect();
        if !members.contains(&me) {
            members.push(me);
        }
        Ok(BlobKeeper {
            copies,
            members,
            me,
        })
    }

    /// Store `id`'s blob policy (`{"mode": "all"}` or `{"mode": "copies", "copies": n}`),
    /// after setting it to `set` (mode, copies) when given. The policy lives in the store's
    /// system table: the same on every member.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; a policy the system table refuses.
    pub async fn blob_policy(
        &self,
        id: &StoreId,
        set: Option<(String, u64)>,
    ) -> Result<Value, NodeError> {
        self.with_store(id, move |s| {
            if let Some((mode, copies)) = set {
                let args = if mode == "copies" {
                    json!({"mode": mode, "copies": copies})
                } else {
                    json!({"mode": mode})
                };
                s.system_call("set-blob-policy", &args)?;
            }
            s.system_query("blob-policy", &json!({}))
        })
        .await
    }
}

/// Which members keep a store's referenced blobs: all of them, or for each blob the
/// `copies` active members whose BLAKE3 of (blob hash ‖ member key) is lowest — the same
/// choice on every member, without coordination (rendezvous hashing). A member that does
/// not keep a blob still fetches it when asked for it (`cas get`, a read of a kv value).
#[derive(Debug)]
struct BlobKeeper {
    copies: Option<usize>,
    members: Vec<PubKey>,
    me: PubKey,
}

impl BlobKeeper {
    fn keeps(&self, blob: &Hash) -> bool {
        let Some(copies) = self.copies else {
            return true;
        };
        let rank = |member: &PubKey| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(blob.as_bytes());
            hasher.update(member.as_bytes());
            *hasher.finalize().as_bytes()
        };
        let mine = rank(&self.me);
        self.members.iter().filter(|m| rank(m) < mine).count() < copies
    }
}

impl StoreManager {
    /// Makes store `id`'s module a pinned blob of the store here when its module is
    /// installed (so peers joining it can fetch the module); returns whether it is.
    pub(super) async fn share_module(&self, id: &StoreId) -> Result<bool, NodeError> {
        let Ok(cas) = self.blob_store() else {
            return Ok(false);
        };
        let module = self.with_store(id, |s| Ok(s.genesis().module)).await?;
        let Some(path) = self.inner.node.runtime().module_file(&module) else {
            return Ok(false);
        };
        let store = *id;
        let hash = Hash(module.0);
        self.off_workers("sharing a store's module", move || {
            if cas.stat(&store, &hash)?.is_some_and(|b| b.pins > 0) {
                return Ok(true);
            }
            let file = std::fs::File::open(&path).map_err(|source| NodeError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let blob = cas.put(&store, file)?;
            if blob.hash != hash {
                // The file no longer holds the bytes it is named by; nothing is shared.
                return Ok(false);
            }
            cas.pin(&store, &hash, 1)?;
            Ok(true)
        })
        .await
    }

    /// For a store held headless here (its module not installed): fetches the module from
    /// the store's peers as a blob of the store, checks it names the store's type, installs
    /// it and attaches the store. Returns whether the module is installed now.
    ///
    /// # Errors
    /// [`NodeError::BlobUnavailable`] when no peer gives it; [`NodeError::Module`] when the
    /// bytes are not a valid store module (they hash to the module's name, so a peer cannot
    /// substitute another).
    pub async fn fetch_module(&self, id: &StoreId) -> Result<bool, NodeError> {
        let module = self.with_store(id, |s| Ok(s.genesis().module)).await?;
        if self.inner.node.runtime().is_installed(&module) {
            return Ok(true);
        }
        let hash = Hash(module.0);
        let fetched = self.fetch_blob(id, &hash).await?;
        let (cas, store) = (self.blob_store()?, *id);
        let bytes = self
            .off_workers("reading a fetched module", move || {
                let mut bytes = Vec::with_capacity(fetched.info.size as usize);
                cas.read(&store, &hash, 0..fetched.info.size, &mut bytes)?;
                cas.pin(&store, &hash, 1)?;
                Ok(bytes)
            })
            .await?;
        let installed = self.install_module(bytes).await?;
        info!(store = %id.short(), module = %installed.short(), "module fetched from the store's peers and installed");
        Ok(installed == module)
    }
}
