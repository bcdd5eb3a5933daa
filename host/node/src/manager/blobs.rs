//! Blobs of the node's stores: putting one, and getting one from the store's peers when it
//! is not here (`lattice-cas` keeps them; the replicator moves them).

use std::io::Read;

use lattice_cas::{BlobInfo, Cas};
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
        off_workers("putting a blob", move || Ok(cas.put(&store, data)?)).await
    }

    /// Blob `hash` of store `id`: here already, or fetched (verified, resumed where an
    /// earlier transfer stopped) from the store's peers.
    ///
    /// # Errors
    /// [`NodeError::NotOpen`]; [`NodeError::BlobUnavailable`] when no peer gives it;
    /// [`NodeError::Blob`].
    pub async fn fetch_blob(&self, id: &StoreId, hash: &Hash) -> Result<FetchedBlob, NodeError> {
        self.open_store(id)?;
        self.blob_store()?;
        let peers = self.inner.replicator.store_peers(id);
        self.inner
            .replicator
            .fetch_blob(id, hash, &peers, None)
            .await
            .map_err(|source| match source {
                lattice_net::ReplicaError::Blob(e) => NodeError::Blob(e),
                source => NodeError::BlobUnavailable {
                    hash: hash.short(),
                    source,
                },
            })
    }
}
