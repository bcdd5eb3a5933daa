//! `lattice demo`: three real nodes on this machine (own data directories, iroh QUIC on
//! 127.0.0.1 only) create a kv store, invite and join, write concurrently, survive a
//! partition with writes on both sides, and converge. Exits 0 only when all three agree.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lattice_model::{Hash, StoreId};
use lattice_net::ReplicatorConfig;
use lattice_node::{DataDir, Node, StoreManager};
use serde_json::{Value, json};

use crate::cli::DemoArgs;
use crate::output::Output;

const NAMES: [&str; 3] = ["A", "B", "C"];

pub(crate) fn run(args: DemoArgs, out: &Output) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.fs {
        return runtime.block_on(crate::demo_fs::demo(args, out));
    }
    runtime.block_on(demo(args, out))
}

fn config() -> ReplicatorConfig {
    ReplicatorConfig {
        anti_entropy: Duration::from_secs(2),
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        ..ReplicatorConfig::default()
    }
}

/// Waits until every node has the same state digest for `store`; returns how long it took.
/// Re-checks whenever any node reports a change (and at least every 100 ms).
async fn converge(
    nodes: &[StoreManager],
    store: &StoreId,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let (tx, mut changes) = tokio::sync::mpsc::channel::<()>(16);
    let forwarders: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut rx = n.subscribe();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) =
                    rx.recv().await
                {
                    let _ = tx.try_send(());
                }
            })
        })
        .collect();
    let result = loop {
        let mut digests: Vec<Option<Hash>> = Vec::with_capacity(nodes.len());
        for n in nodes {
            digests.push(n.state_digest(store).await.ok());
        }
        if digests[0].is_some() && digests.iter().all(|d| *d == digests[0]) {
            break Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "the nodes did not converge within {} s",
                timeout.as_secs()
            ));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.recv()).await;
    };
    for f in forwarders {
        f.abort();
    }
    result
}

/// Writes `count` keys `prefix-i` on `node`, on a blocking thread.
async fn write_keys(
    node: StoreManager,
    store: StoreId,
    prefix: String,
    count: u32,
) -> anyhow::Result<()> {
    for i in 0..count {
        node.call(
            &store,
            "put",
            &json!({"key": format!("{prefix}-{i:04}"), "value": format!("{i}")}),
        )
        .await?;
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

async fn demo(args: DemoArgs, out: &Output) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("lattice-demo-").tempdir()?;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    out.progress("lattice demo: three nodes on this machine, each with its own data directory,");
    out.progress("talking QUIC (iroh) on 127.0.0.1 only: no relays, no discovery.\n");
    let mut nodes = Vec::new();
    for name in NAMES {
        let dir = temp.path().join(name.to_lowercase());
        let node = Node::open(DataDir::new(&dir))?;
        node.set_name(&format!("node-{name}"))?;
        let manager = StoreManager::start_iroh(node, loopback, config()).await?;
        out.progress(&format!(
            "  node {name}  {}  data {}",
            manager.address(),
            dir.display()
        ));
        nodes.push(manager);
    }
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];

    let store = a.create("kv", "demo", None).await?;
    out.progress(&format!("\n[1] A creates a kv store: {store}"));

    out.progress("[2] A invites B and C; each joins with its token (one-time, expires in 10 min)");
    let mut join_ms = Vec::new();
    for (name, joiner) in [("B", b), ("C", c)] {
        let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
        let start = Instant::now();
        let joined = joiner
            .join(&token, |_| {})
            .await
            .with_context(|| format!("{name} joining"))?;
        join_ms.push(ms(start.elapsed()));
        out.progress(&format!(
            "    {name} joined: bootstrapped {} intentions in {} ms",
            joined.fetched,
            ms(start.elapsed())
        ));
    }

    let per_node = args.writes;
    out.progress(&format!(
        "[3] concurrent writes: every node writes {per_node} keys and sets `color` at the same time"
    ));
    let start = Instant::now();
    let mut writers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let color = ["red", "blue", "yellow"][i];
        node.call(&store, "put", &json!({"key": "color", "value": color}))
            .await?;
        writers.push(tokio::spawn(write_keys(
            node.clone(),
            store,
            NAMES[i].to_lowercase(),
            per_node,
        )));
    }
    for w in writers {
        w.await??;
    }
    let wrote = start.elapsed();
    let first = converge(&nodes, &store, Duration::from_secs(120)).await?;
    out.progress(&format!(
        "    {} writes in {} ms; all three converged {} ms later",
        3 * (per_node + 1),
        ms(wrote),
        ms(first)
    ));

    out.progress("[4] partition: C goes offline; A and C both write, including `color`");
    c.replicator().set_online(false);
    a.call(&store, "put", &json!({"key": "color", "value": "green"}))
        .await?;
    c.call(&store, "put", &json!({"key": "color", "value": "purple"}))
        .await?;
    let side_a = tokio::spawn(write_keys(
        a.clone(),
        store,
        "offline-a".into(),
        per_node / 2,
    ));
    let side_c = tokio::spawn(write_keys(
        c.clone(),
        store,
        "offline-c".into(),
        per_node / 2,
    ));
    side_a.await??;
    side_c.await??;
    converge(&nodes[..2], &store, Duration::from_secs(120)).await?;
    let differs = c.state_digest(&store).await? != a.state_digest(&store).await?;
    out.progress(&format!(
        "    A and B agree; C {}",
        if differs {
            "has diverged, as expected"
        } else {
            "unexpectedly agrees"
        }
    ));

    out.progress("[5] heal: C comes back online");
    c.replicator().set_online(true);
    let healed = converge(&nodes, &store, Duration::from_secs(120)).await?;
    out.progress(&format!("    converged {} ms after the heal", ms(healed)));

    let mut digests: Vec<Hash> = Vec::with_capacity(nodes.len());
    for n in &nodes {
        digests.push(n.state_digest(&store).await?);
    }
    let agree = digests.iter().all(|d| *d == digests[0]);
    let color = a.call(&store, "inspect", &json!({"key": "color"})).await?;
    let listed = a.call(&store, "list", &json!({"limit": 100_000})).await?;
    let keys = listed["items"].as_array().map_or(0, Vec::len);
    let heads: Vec<Value> = color["heads"].as_array().cloned().unwrap_or_default();
    let head_values: Vec<String> = heads
        .iter()
        .map(|h| h["value"].as_str().unwrap_or("?").to_string())
        .collect();
    let summary = json!({
        "store": store.to_string(),
        "nodes": nodes.iter().map(|n| n.address().to_string()).collect::<Vec<_>>(),
        "keys": keys,
        "conflict": {"key": "color", "winner": color["value"], "conflicted": color["conflicted"], "heads": head_values},
        "join_ms": join_ms,
        "converge_ms": ms(first),
        "heal_converge_ms": ms(healed),
        "digest": digests[0].to_string(),
        "agree": agree,
    });
    let text = format!(
        "\nresult: {keys} keys on every node; `color` is {} with heads {} (winner by HLC: {})\n\
         state digest {} on A, B and C: {}\n\
         converged in {} ms after concurrent writes, {} ms after healing the partition",
        if color["conflicted"] == true {
            "conflicted"
        } else {
            "settled"
        },
        head_values.join(" and "),
        color["value"],
        digests[0].short(),
        if agree {
            "all three agree"
        } else {
            "THEY DISAGREE"
        },
        ms(first),
        ms(healed),
    );
    out.record(&text, summary);
    for n in &nodes {
        n.shutdown().await;
    }
    if args.keep {
        let path = temp.keep();
        out.progress(&format!("data directories kept in {}", path.display()));
    }
    if !agree {
        bail!("the three nodes do not agree");
    }
    Ok(())
}
