//! `lattice daemon`: runs the node and serves the local API on `<data dir>/lattice.sock`.

use std::sync::Arc;

use lattice_net::ReplicatorConfig;
use lattice_node::{DataDir, StoreManager};
use serde_json::json;
use tokio::sync::Notify;

use crate::api::{self, Api, SOCKET};
use crate::cli::DaemonArgs;
use crate::client_cmd::{Opened, StartingMark, open_node};
use crate::output::Output;

pub(crate) fn run(args: DaemonArgs, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon(args, dir, out))
}

/// Keeps the data directory private to this user (it holds the key and the socket).
fn restrict(dir: &DataDir) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.root())?;
    std::fs::set_permissions(dir.root(), std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// How long a stopping daemon waits for API calls in flight.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn daemon(args: DaemonArgs, dir: &DataDir, out: &Output) -> anyhow::Result<()> {
    restrict(dir)?;
    // Opening the node takes the data directory's lock: a second daemon stops here (after
    // waiting a little: the holder may be a one-shot command about to finish).
    let socket = dir.root().join(SOCKET);
    if crate::api::Client::connect(&socket).await.is_some() {
        anyhow::bail!(
            "a daemon already runs for {} (its socket {} answers); `lattice node stop` stops it",
            dir.root().display(),
            socket.display()
        );
    }
    // One-shot commands arriving now wait for this daemon instead of taking the lock.
    let starting = StartingMark::new(dir)?;
    let node = match open_node(dir, None, out).await? {
        Opened::Node(node) => node,
        Opened::Daemon(_) => anyhow::bail!("a daemon already runs for {}", dir.root().display()),
    };
    let config = ReplicatorConfig {
        anti_entropy: std::time::Duration::from_secs(args.anti_entropy),
        ..ReplicatorConfig::default()
    };
    let manager = StoreManager::start_iroh(node, args.listen, config)
        .await
        .map_err(|e| match e {
            lattice_node::NodeError::Net(net) => anyhow::anyhow!(
                "cannot listen for peers on {}: {net} (is the port taken, or the address not one of this machine's? `--listen 127.0.0.1:0` picks a free port)",
                args.listen
            ),
            other => other.into(),
        })?;
    let path = dir.root().join(SOCKET);
    let listener = api::bind(&path)?;
    drop(starting);
    let api_stop = Arc::new(Notify::new());
    let server_stop = Arc::new(Notify::new());
    let api = Api::new(manager.clone(), api_stop.clone());
    let server = tokio::spawn(api::serve_on(api.clone(), listener, server_stop.clone()));
    let key = manager.node().key().public();
    out.record(
        &format!(
            "daemon running: node {key}\n  peers reach it at {}\n  API socket {}\n  Ctrl-C stops it",
            manager.address(),
            path.display()
        ),
        json!({"event": "running", "node": key.to_string(), "address": manager.address().to_string(), "socket": path.display().to_string()}),
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = api_stop.notified() => {}
    }
    out.progress("stopping: unmounting, closing stores…");
    api.unmount_all().await;
    api.end_streams();
    server_stop.notify_one();
    match tokio::time::timeout(STOP_WAIT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("the API server failed: {e:#}"),
        Ok(Err(e)) => tracing::warn!("the API server task failed: {e}"),
        Err(_) => tracing::warn!("API calls still running after {STOP_WAIT:?}; stopping anyway"),
    }
    manager.shutdown().await;
    out.record("daemon stopped", json!({"event": "stopped"}));
    Ok(())
}
