//! Blobs between iroh nodes on loopback: a member fetches a blob of a store they share,
//! verified as it arrives, completing what an earlier transfer left; other stores' blobs
//! and missing blobs are refused.

use std::time::Duration;

use lattice_cas::{ChunkNum, ChunkRanges};
use lattice_log::SyntheticDag;
use lattice_model::{Hash, StoreId};
use lattice_net::{Mesh, MeshTransport, ReplicaError, ReplicatorConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_fetches_a_blob_verified_and_resumes_what_was_left() -> TestResult {
    let dir = tempfile::tempdir()?;
    let dag = SyntheticDag::new(7, 2, 1, 10);
    let config = ReplicatorConfig {
        auto_sync: false,
        anti_entropy: Duration::from_secs(3600),
        ..ReplicatorConfig::default()
    };
    let mesh = Mesh::start(
        dir.path(),
        2,
        MeshTransport::Iroh,
        config,
        dag.genesis().clone(),
    )
    .await?;
    let store = mesh.store_id();
    let cas = mesh.give_blob_stores()?;
    let data = bytes(5 * 1024 * 1024 + 123, 1);
    let blob = cas[0].put(&store, &data[..])?;
    let from = [mesh.nodes[0].id()];

    // A whole blob, streamed and verified.
    let got = mesh.nodes[1]
        .replicator
        .fetch_blob(&store, &blob.hash, &from, None)
        .await?;
    let got = got.info;
    assert_eq!((got.hash, got.size), (blob.hash, blob.size));
    let mut out = Vec::new();
    cas[1].read(&store, &blob.hash, 0..blob.size, &mut out)?;
    assert_eq!(out, data);

    // A transfer that stopped half way is completed from where it stopped.
    let second = bytes(3 * 1024 * 1024, 2);
    let other = cas[0].put(&store, &second[..])?;
    let mut incoming = cas[1].receive(&other.hash, other.size)?;
    let half = ChunkRanges::from(ChunkNum(0)..ChunkNum(1536));
    let mut part = Vec::new();
    cas[0].encode(&store, &other.hash, &half, &mut part)?;
    incoming.take(&half, &part)??;
    drop(incoming);
    let got = mesh.nodes[1]
        .replicator
        .fetch_blob(&store, &other.hash, &from, None)
        .await?;
    assert_eq!(got.info.size, other.size);
    // Only the second half came this time.
    assert_eq!(got.received, other.size - 1536 * 1024, "{got:?}");
    cas[1].verify(&store, &other.hash)?;

    // Blobs of a store the asker is not a peer of, and blobs nobody has, are not given.
    let elsewhere = StoreId([9; 32]);
    let foreign = cas[0].put(&elsewhere, &b"not yours"[..])?;
    let refused = mesh.nodes[1]
        .replicator
        .fetch_blob(&elsewhere, &foreign.hash, &from, None)
        .await;
    assert!(
        matches!(refused, Err(ReplicaError::NoPeer(_))),
        "{refused:?}"
    );
    let missing = mesh.nodes[1]
        .replicator
        .fetch_blob(&store, &Hash([5; 32]), &from, None)
        .await;
    assert!(
        matches!(missing, Err(ReplicaError::NoPeer(_))),
        "{missing:?}"
    );
    assert!(cas[1].stat(&store, &Hash([5; 32]))?.is_none());
    mesh.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_a_bad_part_is_struck_and_an_honest_one_completes_the_blob() -> TestResult {
    use lattice_net::{ReplicaEvent, SimConfig, SimNetwork, Transport};
    use lattice_sync::{Frames, Msg};

    let dir = tempfile::tempdir()?;
    let dag = SyntheticDag::new(8, 2, 1, 10);
    let net = SimNetwork::new(8, SimConfig::default());
    let config = ReplicatorConfig {
        auto_sync: false,
        anti_entropy: Duration::from_secs(3600),
        ..ReplicatorConfig::default()
    };
    let mesh = Mesh::start(
        dir.path(),
        2,
        MeshTransport::Sim(net.clone()),
        config,
        dag.genesis().clone(),
    )
    .await?;
    let store = mesh.store_id();
    let cas = mesh.give_blob_stores()?;
    let data = bytes(2 * 1024 * 1024, 4);
    let blob = cas[0].put(&store, &data[..])?;

    // A hostile peer answers with the genuine stream, one byte changed three quarters in.
    let hostile_key = lattice_model::NodeKey::from_seed([77; 32]);
    let hostile = net.node(hostile_key.public());
    let mut genuine = Vec::new();
    cas[0].encode(&store, &blob.hash, &ChunkRanges::all(), &mut genuine)?;
    let at = genuine.len() * 3 / 4;
    genuine[at] ^= 0x10;
    let size = blob.size;
    let serving = tokio::spawn(async move {
        let conn = hostile.accept().await.ok_or("no connection")?;
        let mut s = conn.accept().await?;
        let _ask = s.recv().await?;
        s.send(Msg::BlobSize(size).encode()).await?;
        for part in genuine.chunks(64 * 1024) {
            if s.send(Msg::BlobData(part.to_vec()).encode()).await.is_err() {
                break;
            }
        }
        let _ = s.send(Msg::BlobDone.encode()).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let victim = &mesh.nodes[1];
    let mut events = victim.replicator.subscribe();
    let refused = victim
        .replicator
        .fetch_blob(&store, &blob.hash, &[hostile_key.public()], None)
        .await;
    assert!(
        matches!(refused, Err(ReplicaError::NoPeer(_))),
        "{refused:?}"
    );
    let failed = loop {
        match events.try_recv() {
            Ok(ReplicaEvent::SessionFailed { peer, error, .. }) => break (peer, error),
            Ok(_) => {}
            Err(e) => return Err(format!("no session failure reported: {e}").into()),
        }
    };
    assert_eq!(failed.0, hostile_key.public());
    assert!(failed.1.contains("misbehaved"), "{}", failed.1);
    let _ = serving.await;
    // What verified before the bad part was kept; nothing after it.
    let kept = cas[1]
        .partial(&blob.hash)?
        .map_or(0, |p| p.received_bytes());
    assert!(kept > 0 && kept < blob.size * 3 / 4 + 16 * 1024, "{kept}");
    assert!(cas[1].stat(&store, &blob.hash)?.is_none());

    // The honest member gives only the rest.
    let got = victim
        .replicator
        .fetch_blob(&store, &blob.hash, &[mesh.nodes[0].id()], None)
        .await?;
    assert_eq!(got.received, blob.size - kept);
    let mut out = Vec::new();
    cas[1].read(&store, &blob.hash, 0..blob.size, &mut out)?;
    assert_eq!(out, data);
    mesh.stop().await;
    Ok(())
}
