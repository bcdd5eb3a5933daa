//! Whole nodes over the simulated network: stores replicate through loss, duplication,
//! delay, partitions and restarts, and every member ends with the same state.

use std::time::Duration;

use lattice_model::StoreId;
use lattice_sim::{Sim, SimConfig, SimError};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(60);

/// A `kv` put on `node`.
async fn put(
    sim: &Sim,
    node: usize,
    store: &StoreId,
    key: impl AsRef<str>,
    value: impl AsRef<str>,
) -> Result<(), SimError> {
    let args = json!({"key": key.as_ref(), "value": value.as_ref()});
    sim.call(node, store, "put", args).await.map(drop)
}

/// A `kv` get on `node`: the value, `null` when absent.
async fn get(
    sim: &Sim,
    node: usize,
    store: &StoreId,
    key: impl AsRef<str>,
) -> Result<serde_json::Value, SimError> {
    let got = sim
        .call(node, store, "get", json!({"key": key.as_ref()}))
        .await?;
    Ok(got["value"].clone())
}

/// `nodes` nodes, a `kv` store made by node 0 and joined by all the others.
async fn kv_store_on(sim: &mut Sim, nodes: usize) -> Result<StoreId, SimError> {
    for _ in 0..nodes {
        sim.add_node().await?;
    }
    let store = sim.create_store(0, "kv").await?;
    for joiner in 1..nodes {
        sim.join(0, joiner, &store).await?;
    }
    Ok(store)
}

#[tokio::test(start_paused = true)]
async fn five_nodes_converge_through_loss_and_a_partition() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = SimConfig {
        loss: 0.1,
        duplicate: 0.05,
        max_delay: Duration::from_millis(20),
    };
    let mut sim = Sim::new(1, config, dir.path());
    let store = kv_store_on(&mut sim, 5).await?;
    sim.partition(&[vec![0, 1, 2], vec![3, 4]])?;
    for round in 0..10 {
        for node in 0..5 {
            // Each node its own keys, and one key everyone writes (a conflict to resolve).
            put(
                &sim,
                node,
                &store,
                format!("n{node}-{round}"),
                format!("{round}"),
            )
            .await?;
            put(&sim, node, &store, "shared", format!("{node}-{round}")).await?;
        }
    }
    sim.heal();
    sim.wait_converged(&store, DEADLINE).await?;
    let digests = sim.digests(&store).await;
    assert!(
        digests.iter().all(|d| d.is_some() && *d == digests[0]),
        "{digests:?}"
    );
    for node in 0..5 {
        for writer in 0..5 {
            assert_eq!(
                get(&sim, node, &store, format!("n{writer}-9")).await?,
                "9",
                "node {node} misses node {writer}'s last put"
            );
        }
    }
    let shared: Vec<_> = {
        let mut v = Vec::new();
        for node in 0..5 {
            v.push(
                sim.call(node, &store, "get", json!({"key": "shared"}))
                    .await?,
            );
        }
        v
    };
    assert!(shared.iter().all(|s| *s == shared[0]), "{shared:?}");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_node_offline_and_one_restarted_catch_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut sim = Sim::new(2, SimConfig::default(), dir.path());
    let store = kv_store_on(&mut sim, 3).await?;
    sim.set_online(1, false)?;
    sim.stop(2).await?;
    for i in 0..20 {
        put(&sim, 0, &store, format!("k{i}"), "while apart").await?;
    }
    // Node 1 wrote offline too: its write must survive and reach the others.
    put(&sim, 1, &store, "from-1", "offline").await?;
    sim.set_online(1, true)?;
    sim.restart(2).await?;
    sim.wait_converged(&store, DEADLINE).await?;
    for node in 0..3 {
        assert_eq!(get(&sim, node, &store, "k19").await?, "while apart");
        assert_eq!(get(&sim, node, &store, "from-1").await?, "offline");
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn writes_of_a_peer_revoked_during_a_partition_are_projected_nowhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut sim = Sim::new(3, SimConfig::default(), dir.path());
    let store = kv_store_on(&mut sim, 4).await?;
    put(&sim, 3, &store, "before", "kept").await?;
    sim.wait_converged(&store, DEADLINE).await?;
    sim.partition(&[vec![0, 1], vec![2, 3]])?;
    sim.revoke(0, &store, 3).await?;
    // Node 3 writes on the other side, not knowing; node 2 writes there too.
    for i in 0..5 {
        put(&sim, 3, &store, format!("late{i}"), "revoked").await?;
    }
    put(&sim, 2, &store, "from-2", "member").await?;
    sim.heal();
    sim.wait_converged(&store, DEADLINE).await?;
    // The members agree; the revoked node is refused by all of them and never hears of it.
    for node in 0..3 {
        assert_eq!(
            get(&sim, node, &store, "before").await?,
            "kept",
            "node {node}"
        );
        assert_eq!(
            get(&sim, node, &store, "from-2").await?,
            "member",
            "node {node}"
        );
        for i in 0..5 {
            assert_eq!(
                get(&sim, node, &store, format!("late{i}")).await?,
                serde_json::Value::Null,
                "node {node} projects a write made after its author was revoked"
            );
        }
    }
    assert!(sim.digests(&store).await[3].is_none());
    sim.shutdown().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn child_stores_open_on_every_member_and_converge() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = SimConfig {
        loss: 0.05,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(4, config, dir.path());
    let root = kv_store_on(&mut sim, 3).await?;
    let mut children = Vec::new();
    for (i, kind) in ["kv", "counter", "kv"].into_iter().enumerate() {
        children.push((sim.create_child(i, &root, kind).await?, kind));
    }
    for (child, _) in &children {
        sim.wait_converged(child, DEADLINE).await?;
    }
    // Every member writes into every child; they end equal.
    for node in 0..3 {
        for (child, kind) in &children {
            let (method, args) = match *kind {
                "counter" => ("increment", json!({"name": "hits", "by": 1})),
                _ => ("put", json!({"key": format!("from-{node}"), "value": "x"})),
            };
            sim.call(node, child, method, args).await?;
        }
    }
    for (child, _) in &children {
        sim.wait_converged(child, DEADLINE).await?;
    }
    let (counter, _) = children[1];
    for node in 0..3 {
        let hits = sim
            .call(node, &counter, "get", json!({"name": "hits"}))
            .await?;
        assert_eq!(hits, json!({"value": 3, "authors": 3}), "node {node}");
    }
    sim.shutdown().await;
    Ok(())
}

/// Found by `lattice sim soak` (seed 296): a member that missed the admission of a newer
/// member, while every member it knows is down, must still come to agree with the newcomer.
#[tokio::test(start_paused = true)]
async fn a_member_that_missed_a_newcomers_admission_syncs_with_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut sim = Sim::new(4, SimConfig::default(), dir.path());
    let store = kv_store_on(&mut sim, 2).await?;
    let late = sim.add_node().await?;
    sim.wait_converged(&store, Duration::from_secs(30)).await?;
    // Node 1 is cut off while node 0 admits node 2, and node 0 goes down after.
    sim.partition(&[vec![0, late], vec![1]])?;
    sim.join(0, late, &store).await?;
    put(&sim, late, &store, "from-late", "v").await?;
    put(&sim, 1, &store, "from-1", "v").await?;
    sim.crash(0).await?;
    sim.heal();
    // Only nodes 1 and 2 are up: 1 knows 0 alone, 2 knows both.
    sim.wait_converged(&store, Duration::from_secs(30)).await?;
    assert_eq!(get(&sim, 1, &store, "from-late").await?, json!("v"));
    assert_eq!(get(&sim, late, &store, "from-1").await?, json!("v"));
    Ok(())
}
