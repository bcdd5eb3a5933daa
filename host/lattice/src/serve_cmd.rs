//! `lattice serve`: replicate this data dir's stores with peers over iroh (headless: logs
//! only; the daemon with projection and a local API comes with the node milestone).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lattice_log::{Log, LogConfig};
use lattice_model::{PubKey, StoreId};
use lattice_net::{IrohNet, PeerAddr, ReplicaEvent, Replicator, ReplicatorConfig};
use lattice_node::DataDir;
use serde_json::json;

use crate::cli::ServeArgs;
use crate::output::Output;

pub(crate) fn run(args: ServeArgs, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    // Hold the data directory's lock, as a daemon does: the two never share the logs.
    std::fs::create_dir_all(dir.root())?;
    let _lock = lattice_node::MetaDb::open(&dir.meta_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, dir, out))
}

fn local_stores(dir: &DataDir) -> anyhow::Result<Vec<StoreId>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir.stores_dir()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).context("reading the stores directory"),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Ok(id) = StoreId::from_hex(&name) {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

async fn serve(args: ServeArgs, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    let key = dir.load_or_create_identity()?;
    let peers: Vec<PeerAddr> = args
        .peer
        .iter()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let listen: SocketAddr = args.listen;
    let net = IrohNet::bind(&key, listen).await?;
    let replicator = Replicator::start(net.clone(), net.clone(), ReplicatorConfig::default());
    for p in &peers {
        replicator.add_peer(p);
    }
    let me = replicator.local();
    out.record(
        &format!("listening as {me}"),
        json!({ "event": "listening", "node": me.to_string() }),
    );
    let peer_ids: Vec<PubKey> = peers.iter().map(|p| p.id).collect();
    let mut stores = local_stores(dir)?;
    let mut added = std::collections::HashSet::new();
    let mut events = replicator.subscribe();
    for text in &args.store {
        let id = StoreId::from_hex(text.trim())
            .with_context(|| format!("--store {text:?} is not a full store id (64 hex digits)"))?;
        if stores.contains(&id) {
            continue;
        }
        if peer_ids.is_empty() {
            bail!(
                "store {} is not here; give --peer to clone it from",
                id.short()
            );
        }
        std::fs::create_dir_all(dir.store_dir(&id)).context("creating the store directory")?;
        let log = Arc::new(Log::open(
            &dir.log_path(&id),
            id,
            key.clone(),
            LogConfig::default(),
        )?);
        out.progress(&format!(
            "cloning store {} from {} peer(s)",
            id.short(),
            peer_ids.len()
        ));
        let (from, report) = replicator
            .bootstrap(&log, &peer_ids, |n| {
                out.progress(&format!("  {n} witness records checked"));
            })
            .await
            .with_context(|| format!("cloning store {}", id.short()))?;
        out.record(
            &format!(
                "cloned store {} from {}: {} intentions",
                id.short(),
                from.short(),
                report.witnessed
            ),
            json!({ "event": "cloned", "store": id.to_string(), "from": from.to_string(),
                    "intentions": report.witnessed }),
        );
        replicator.add_store(log, peer_ids.clone()).await?;
        stores.push(id);
        added.insert(id);
    }
    if stores.is_empty() {
        bail!(
            "no stores in {} to replicate; create one (`lattice log create`) or clone one with --store <id> --peer <addr>",
            dir.root().display()
        );
    }
    for id in stores.iter().filter(|id| !added.contains(*id)) {
        let id = *id;
        let log = Log::open(&dir.log_path(&id), id, key.clone(), LogConfig::default())
            .with_context(|| format!("opening the log of store {}", id.short()))?;
        replicator
            .add_store(Arc::new(log), peer_ids.clone())
            .await?;
    }
    let deadline = args.for_seconds.map(Duration::from_secs);
    let run = async {
        let mut synced: Vec<PubKey> = Vec::new();
        if args.until_synced && peer_ids.is_empty() {
            return;
        }
        loop {
            match events.recv().await {
                Ok(ReplicaEvent::Synced {
                    store,
                    peer,
                    report,
                }) => {
                    out.record(
                        &format!(
                            "synced {} with {}: +{} received, {} sent",
                            store.short(),
                            peer.short(),
                            report.witnessed,
                            report.sent
                        ),
                        json!({ "event": "synced", "store": store.to_string(),
                                "peer": peer.to_string(), "received": report.witnessed,
                                "sent": report.sent }),
                    );
                    if !synced.contains(&peer) {
                        synced.push(peer);
                    }
                    if args.until_synced && peer_ids.iter().all(|p| synced.contains(p)) {
                        return;
                    }
                }
                Ok(ReplicaEvent::PeerBanned { peer, reason }) => {
                    out.progress(&format!("banned {}: {reason}", peer.short()))
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    };
    let limited = async {
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout(d, run).await;
            }
            None => run.await,
        }
    };
    tokio::select! {
        _ = limited => {}
        _ = tokio::signal::ctrl_c() => out.progress("interrupted; stopping"),
    }
    replicator.shutdown();
    net.shutdown().await;
    Ok(())
}
