//! Running nodes on iroh loopback: create, invite, join, child stores, revocation, leave and
//! re-join, restart. Waits are event-driven (node events) with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use lattice_model::{PubKey, StoreId};
use lattice_net::ReplicatorConfig;
use lattice_node::{DataDir, Node, NodeError, StoreManager, StoreState};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(60);

fn config() -> ReplicatorConfig {
    ReplicatorConfig {
        anti_entropy: Duration::from_secs(1),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..ReplicatorConfig::default()
    }
}

async fn start(dir: &std::path::Path) -> Result<StoreManager, NodeError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    StoreManager::start_iroh(Node::open(DataDir::new(dir))?, loopback, config()).await
}

/// Waits until `check` holds, re-checking on every node event of `nodes` (or at least every
/// 250 ms, since a condition may also change without an event on these nodes).
async fn until(
    nodes: &[&StoreManager],
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) -> TestResult {
    let mut rxs: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        let any = futures_any(&mut rxs);
        let _ = tokio::time::timeout(Duration::from_millis(250), any).await;
    }
}

async fn futures_any(rxs: &mut [tokio::sync::broadcast::Receiver<lattice_node::NodeEvent>]) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let mut tasks = Vec::new();
    for r in rxs.iter() {
        let mut r = r.resubscribe();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = r.recv().await;
            let _ = tx.send(()).await;
        }));
    }
    rx.recv().await;
    for t in tasks {
        t.abort();
    }
}

/// Waits until `a` and `b` hold the same state of `store`.
async fn until_same_state(a: &StoreManager, b: &StoreManager, store: &StoreId) -> TestResult {
    until(&[a, b], "the same state", async || {
        matches!(
            (a.state_digest(store).await, b.state_digest(store).await),
            (Ok(x), Ok(y)) if x == y
        )
    })
    .await
}

async fn get(node: &StoreManager, store: &StoreId, key: &str) -> Value {
    node.call(store, "get", &json!({"key": key}))
        .await
        .map(|v| v["value"].clone())
        .unwrap_or(Value::Null)
}

/// True when `key` reads `value` on every node of `nodes`.
async fn all_read(nodes: &[&StoreManager], store: &StoreId, key: &str, value: &str) -> bool {
    for n in nodes {
        if get(n, store, key).await != value {
            return false;
        }
    }
    true
}

/// True when the counter of `store` reads `value` on every node of `nodes`.
async fn all_count(nodes: &[&StoreManager], store: &StoreId, value: i64) -> bool {
    for n in nodes {
        let read = n.call(store, "get", &json!({})).await;
        if !read.is_ok_and(|v| v["value"] == value) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_invite_join_children_revoke_leave_rejoin_and_restart() -> TestResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    let c = start(dirs[2].path()).await?;

    // A creates a kv store and invites B and C.
    let store = a.create("kv", "shared", None).await?;
    a.call(&store, "put", &json!({"key": "greeting", "value": "hello"}))
        .await?;
    for joiner in [&b, &c] {
        let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
        let joined = joiner.join(&token, |_| {}).await?;
        assert_eq!(joined.store, store);
        assert!(joined.fetched >= 3);
        assert_eq!(get(joiner, &store, "greeting").await, "hello");
    }
    // Bad tokens get clear errors and change nothing.
    let garbage = b.join("not a token", |_| {}).await;
    assert!(matches!(garbage, Err(NodeError::Token(_))), "{garbage:?}");
    let expired = a.invite(&store, Duration::ZERO).await?.encode();
    assert!(matches!(
        b.join(&expired, |_| {}).await,
        Err(NodeError::InviteExpired)
    ));
    let again = a.invite(&store, Duration::from_secs(600)).await?.encode();
    assert!(matches!(
        b.join(&again, |_| {}).await,
        Err(NodeError::AlreadyMember(_))
    ));
    let mut wrong_mesh = a.invite(&store, Duration::from_secs(600)).await?;
    wrong_mesh.store = StoreId([7; 32]);
    let refused = b.join(&wrong_mesh.encode(), |_| {}).await;
    assert!(
        matches!(&refused, Err(NodeError::JoinRefused(r)) if r.contains("no store")),
        "{refused:?}"
    );

    // B leaves; its used token is refused, an expired one too; a fresh one re-joins it and
    // it keeps its data.
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.leave(&store).await?;
    assert!(
        b.list()?
            .iter()
            .any(|r| r.id == store && r.state == StoreState::Left)
    );
    let expired_err = b.join(&expired, |_| {}).await;
    assert!(
        matches!(expired_err, Err(NodeError::InviteExpired)),
        "{expired_err:?}"
    );
    let rejoined = b.join(&token, |_| {}).await?;
    assert_eq!(rejoined.fetched, 0, "a re-join keeps its data");
    b.leave(&store).await?;
    let reused = b.join(&token, |_| {}).await;
    assert!(
        matches!(&reused, Err(NodeError::JoinRefused(r)) if r.contains("already used")),
        "{reused:?}"
    );
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.join(&token, |_| {}).await?;

    // Writes from every node converge everywhere.
    b.call(&store, "put", &json!({"key": "from-b", "value": "1"}))
        .await?;
    c.call(&store, "put", &json!({"key": "from-c", "value": "2"}))
        .await?;
    until(&[&a, &b, &c], "writes to converge", async || {
        all_read(&[&a, &b, &c], &store, "from-b", "1").await
            && all_read(&[&a, &b, &c], &store, "from-c", "2").await
    })
    .await?;

    // A child store created on A opens on B and C.
    let child = a.create("counter", "tally", Some(store)).await?;
    a.call(&child, "increment", &json!({"by": 2})).await?;
    until(&[&a, &b, &c], "the child store on every node", async || {
        all_count(&[&b, &c], &child, 2).await
    })
    .await?;

    // A grandchild created on B opens on A and C too; archiving the child closes both
    // everywhere, keeping the data; re-activating opens them again.
    let grandchild = b.create("kv", "deeper", Some(child)).await?;
    b.call(&grandchild, "put", &json!({"key": "deep", "value": "yes"}))
        .await?;
    until(&[&a, &b, &c], "the grandchild on every node", async || {
        all_read(&[&a, &c], &grandchild, "deep", "yes").await
    })
    .await?;
    a.archive(&child, true).await?;
    let closed = |n: &StoreManager| {
        n.list().is_ok_and(|l| {
            l.iter()
                .filter(|r| r.id == child || r.id == grandchild)
                .all(|r| r.state == StoreState::Archived)
        })
    };
    until(
        &[&a, &b, &c],
        "the archived child closed everywhere",
        async || [&a, &b, &c].iter().all(|n| closed(n)),
    )
    .await?;
    assert!(matches!(a.status(&child).await, Err(NodeError::NotOpen(_))));
    a.archive(&child, false).await?;
    until(
        &[&a, &b, &c],
        "the child re-opened everywhere",
        async || all_count(&[&a, &b, &c], &child, 2).await,
    )
    .await?;

    // Revoking C: its later writes are refused everywhere — in the root, the child and the
    // grandchild. C may or may not have heard of it yet: either its writes fail as revoked,
    // or they land only on C.
    let c_key = c.node().key().public();
    assert!(matches!(
        a.revoke_peer(&store, &a.node().key().public()).await,
        Err(NodeError::RevokeSelf)
    ));
    assert!(matches!(
        a.revoke_peer(&store, &lattice_model::PubKey([9; 32])).await,
        Err(NodeError::NotAPeer(_))
    ));
    assert_eq!(
        a.find_peer(&store, &c_key.to_string()[..12]).await?,
        c_key,
        "a unique prefix names a peer"
    );
    a.revoke_peer(&store, &c_key).await?;
    for (target, method, args) in [
        (
            store,
            "put",
            json!({"key": "from-c", "value": "after revocation"}),
        ),
        (child, "increment", json!({"by": 100})),
        (grandchild, "put", json!({"key": "deep", "value": "evil"})),
    ] {
        match c.call(&target, method, &args).await {
            Ok(_) | Err(NodeError::Rejected { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    b.call(&store, "put", &json!({"key": "marker", "value": "m"}))
        .await?;
    until(&[&a, &b], "the marker", async || {
        get(&a, &store, "marker").await == "m"
    })
    .await?;
    assert_eq!(get(&a, &store, "from-c").await, "2");
    assert_eq!(get(&b, &store, "from-c").await, "2");
    // The revocation wrote an epoch in the root and, mirrored, in the child and grandchild;
    // A and B acknowledge each other's, so every one settles on both (C is not waited for).
    until(
        &[&a, &b],
        "revocation epochs settled everywhere",
        async || {
            for node in [&a, &b] {
                for id in [store, child, grandchild] {
                    let settled = node
                        .status(&id)
                        .await
                        .ok()
                        .and_then(|s| s.epoch)
                        .is_some_and(|e| e.number >= 1 && e.settled());
                    if !settled {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await?;
    let peers = a.peers(&store).await?;
    assert!(
        peers
            .iter()
            .any(|p| p.key == c_key && p.status == lattice_node::PeerStatus::Revoked)
    );

    // C is invited again: it joins with the new token; what it wrote while revoked stays
    // refused on every node (its writes do reach them now), what it writes next is projected.
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    c.join(&token, |_| {}).await?;
    // (C may hear of its re-activation in the root before it hears of it in a child; a
    // write in between is refused on C for now, so write until one is accepted. Every attempt
    // lies after the point C resumed at, so every one counts once C hears of it.)
    let (mut counted, mut put, mut attempts) = (false, false, 0i64);
    until(&[&c], "C's writes to be accepted again", async || {
        if !counted {
            attempts += 1;
            counted = c
                .call(&child, "increment", &json!({"by": 1000}))
                .await
                .is_ok();
        }
        if !put {
            put = c
                .call(
                    &grandchild,
                    "put",
                    &json!({"key": "back", "value": "again"}),
                )
                .await
                .is_ok();
        }
        counted && put
    })
    .await?;
    until(&[&a, &b, &c], "C's new writes everywhere", async || {
        all_read(&[&a, &b, &c], &grandchild, "back", "again").await
            && all_count(&[&a, &b, &c], &child, 2 + 1000 * attempts).await
    })
    .await?;
    for n in [&a, &b, &c] {
        assert_eq!(get(n, &grandchild, "deep").await, "yes");
    }

    // C leaves the root (its children close with it) and re-joins: the children reopen
    // without an unarchive, and C writes in them again.
    c.leave(&store).await?;
    assert!(matches!(c.status(&child).await, Err(NodeError::NotOpen(_))));
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    c.join(&token, |_| {}).await?;
    let mut rejoined_write = false;
    until(&[&c], "C's children reopened and writable", async || {
        if !rejoined_write {
            rejoined_write = c
                .call(
                    &grandchild,
                    "put",
                    &json!({"key": "rejoined", "value": "yes"}),
                )
                .await
                .is_ok();
        }
        rejoined_write
    })
    .await?;
    until(
        &[&a, &b],
        "C's write after re-joining everywhere",
        async || all_read(&[&a, &b], &grandchild, "rejoined", "yes").await,
    )
    .await?;

    // Restart B: everything is still there and it keeps replicating.
    // (A restarted node may author again at once — e.g. its new address — so compare what
    // it kept, not the whole digest.)
    let witnessed = b.status(&store).await?.witnessed;
    let mut kept: Vec<Value> = Vec::new();
    for k in ["greeting", "from-b", "from-c", "marker"] {
        kept.push(get(&b, &store, k).await);
    }
    b.shutdown().await;
    drop(b);
    let b = start(dirs[1].path()).await?;
    assert!(b.status(&store).await?.witnessed >= witnessed);
    let mut after: Vec<Value> = Vec::new();
    for k in ["greeting", "from-b", "from-c", "marker"] {
        after.push(get(&b, &store, k).await);
    }
    assert_eq!(after, kept);
    assert!(
        b.list()?
            .iter()
            .any(|r| r.id == child && r.state == StoreState::Active)
    );
    a.call(
        &store,
        "put",
        &json!({"key": "after-restart", "value": "yes"}),
    )
    .await?;
    until(&[&a, &b], "B to catch up after restart", async || {
        get(&b, &store, "after-restart").await == "yes"
    })
    .await?;

    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_told_how_much_it_missed_and_keeps_its_stream() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = start(dir.path()).await?;
    let store = node.create("kv", "watched", None).await?;
    let mut slow = node.watch(&store)?;
    let writes = lattice_node::WATCH_BUFFER + 50;
    let ops: Vec<Value> = (0..writes)
        .map(|i| json!({"put": format!("k{i:05}"), "value": "v"}))
        .collect();
    // One batch per 100 keys: every key emits one event.
    for chunk in ops.chunks(100) {
        node.call(&store, "batch", &json!({ "ops": chunk })).await?;
    }
    match slow.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
            assert_eq!(missed, 50);
        }
        other => return Err(format!("expected a lag report, got {other:?}").into()),
    }
    // The stream goes on with what is still buffered.
    let next = slow.recv().await?;
    assert_eq!(next.topic, "kv");
    node.shutdown().await;
    Ok(())
}

const EVIL: &[u8] = include_bytes!("../../../tests/guests/dist/evil.wasm");

async fn start_offline(dir: &std::path::Path) -> Result<StoreManager, NodeError> {
    StoreManager::start_offline(Node::open(DataDir::new(dir))?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_the_module_a_store_waits_for_attaches_it_at_once_offline() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = start_offline(dir.path()).await?;
    let hash = lattice_runtime::ModuleHash::of(EVIL);
    let store = node.create(&hash.to_string(), "waiting", None).await?;
    assert!(node.status(&store).await?.headless);
    let refused = node.call(&store, "op", &json!({"mode": "ok"})).await;
    assert!(refused.is_err(), "{refused:?}");

    node.install_module(EVIL.to_vec()).await?;
    let status = node.status(&store).await?;
    assert!(!status.headless, "{status:?}");
    assert_eq!(status.state(), "ready");
    node.call(&store, "op", &json!({"mode": "ok"})).await?;
    let read = node.call(&store, "get", &json!({})).await?;
    assert_eq!(read["ok"], 1);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_guest_does_not_stall_other_stores() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = start_offline(dir.path()).await?;
    node.install_module(EVIL.to_vec()).await?;
    let hash = lattice_runtime::ModuleHash::of(EVIL);
    let slow = node.create(&hash.to_string(), "slow", None).await?;
    let quick = node.create("kv", "quick", None).await?;
    // A query that runs until its fuel is gone keeps the slow store's actor busy.
    let spinning = {
        let node = node.clone();
        tokio::spawn(async move { node.call(&slow, "spin", &json!({})).await })
    };
    for i in 0..20 {
        let key = format!("k{i}");
        node.call(&quick, "put", &json!({"key": key, "value": "v"}))
            .await?;
        assert_eq!(get(&node, &quick, &key).await, "v");
        if i == 0 {
            // The first write already answered while the slow guest still spins.
            assert!(
                !spinning.is_finished(),
                "the other store answered only after the slow guest was done"
            );
        }
    }
    let spun = spinning.await?;
    assert!(spun.is_err(), "a spinning query ends in an error: {spun:?}");
    // The slow store still answers afterwards.
    node.call(&slow, "op", &json!({"mode": "ok"})).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_of_a_pruned_store_gets_a_snapshot_over_the_network() -> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;

    // A, the only member, writes over a few keys many times and prunes its history.
    let store = a.create("kv", "pruned", None).await?;
    for i in 0..300 {
        a.call(
            &store,
            "put",
            &json!({"key": format!("k{}", i % 10), "value": format!("v{i}")}),
        )
        .await?;
    }
    let report = a.prune(&store, true).await?;
    assert!(report.not_now.is_none(), "{report:?}");
    assert!(report.deleted > 250, "{report:?}");

    // B joins: A can only give a snapshot, and B's state is A's byte for byte.
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    let joined = b.join(&token, |_| {}).await?;
    assert_eq!(joined.store, store);
    assert!(joined.snapshot_bytes > 0, "{joined:?}");
    assert!(joined.fetched < 100, "{joined:?}");
    assert_eq!(b.state_digest(&store).await?, a.state_digest(&store).await?);
    assert_eq!(get(&b, &store, "k3").await, "v293");
    assert_eq!(b.status(&store).await?.state(), "ready");

    // Both write on; each sees the other's writes.
    b.call(&store, "put", &json!({"key": "from-b", "value": "hi"}))
        .await?;
    a.call(&store, "put", &json!({"key": "from-a", "value": "ho"}))
        .await?;
    until(&[&a, &b], "both writes everywhere", async || {
        all_read(&[&a, &b], &store, "from-b", "hi").await
            && all_read(&[&a, &b], &store, "from-a", "ho").await
    })
    .await?;
    until_same_state(&a, &b, &store).await?;

    // B restarts on what it joined with.
    b.shutdown().await;
    drop(b);
    let b = start(dirs[1].path()).await?;
    assert_eq!(get(&b, &store, "k3").await, "v293");
    assert_eq!(get(&b, &store, "from-a").await, "ho");
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_pruned_floor_catches_up_through_a_snapshot() -> TestResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let c = start(dirs[1].path()).await?;
    let store = a.create("kv", "away", None).await?;
    a.call(&store, "put", &json!({"key": "k0", "value": "early"}))
        .await?;
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    c.join(&token, |_| {}).await?;
    assert_eq!(get(&c, &store, "k0").await, "early");

    // C steps away (dormant: its acknowledgement is no longer needed) and goes offline.
    let c_key = c.node().key().public();
    c.system_call(
        &store,
        "set-peer-status",
        &json!({"peer": c_key.to_string(), "status": "dormant"}),
    )
    .await?;
    until(&[&a, &c], "A to see C dormant", async || {
        a.peers(&store).await.is_ok_and(|peers| {
            peers
                .iter()
                .any(|p| p.key == c_key && p.status == lattice_node::PeerStatus::Dormant)
        })
    })
    .await?;
    c.shutdown().await;
    drop(c);
    // Offline, C writes something A never hears of.
    {
        let node = Node::open(DataDir::new(dirs[1].path()))?;
        let mut away = node.open_store(store)?;
        away.call(
            "put",
            &json!({"key": "from-c", "value": "written while away"}),
        )?;
        away.close()?;
    }

    // Meanwhile A, now the only active member, writes on and prunes its history below three
    // more epochs (each a prune cut, final at once).
    let mut deleted = 0;
    for round in 0..3 {
        for i in round * 100..(round + 1) * 100 {
            a.call(
                &store,
                "put",
                &json!({"key": format!("k{}", i % 10), "value": format!("v{i}")}),
            )
            .await?;
        }
        let report = a.prune(&store, true).await?;
        assert!(report.not_now.is_none(), "{report:?}");
        deleted += report.deleted;
    }
    assert!(deleted > 250, "{deleted}");
    let epoch = a.status(&store).await?.epoch.ok_or("no epoch")?;

    // C comes back: A cannot give it the history it pruned, so C catches up through a
    // snapshot of A, keeping its own write, which then reaches A.
    let c = start(dirs[1].path()).await?;
    until(
        &[&a, &c],
        "C to catch up and A to get C's write",
        async || {
            get(&c, &store, "k3").await == "v293"
                && all_read(&[&a, &c], &store, "from-c", "written while away").await
        },
    )
    .await?;
    until_same_state(&a, &c, &store).await?;
    assert_eq!(get(&c, &store, "k0").await, "v290");
    let status = c.status(&store).await?;
    assert_eq!(status.state(), "ready");
    // C stands on A's newest epoch (three past the one it left at), final there too.
    let at_c = status.epoch.ok_or("no epoch at C")?;
    assert_eq!((at_c.number, at_c.hash), (epoch.number, epoch.hash));
    assert!(at_c.finalized, "{at_c:?}");
    // Nothing was left aside.
    assert!(!DataDir::new(dirs[1].path()).behind_dir(&store).exists());
    a.shutdown().await;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_gets_a_blob_of_the_store_from_its_peers() -> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    let store = a.create("kv", "with blobs", None).await?;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let blob = a
        .put_blob(&store, std::io::Cursor::new(data.clone()))
        .await?;
    let small = a.put_blob(&store, &b"a small one"[..]).await?;

    // Not a member yet: B has no such store to ask for.
    let early = b.fetch_blob(&store, &blob.hash).await;
    assert!(matches!(early, Err(NodeError::NotOpen(_))), "{early:?}");
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.join(&token, |_| {}).await?;
    for (hash, size) in [(blob.hash, blob.size), (small.hash, small.size)] {
        let got = b.fetch_blob(&store, &hash).await?;
        assert_eq!((got.info.size, got.received), (size, size));
        assert_eq!(got.peer, Some(a.node().key().public()));
    }
    let cas = b.node().cas().ok_or("no blob store")?;
    let mut out = Vec::new();
    cas.read(&store, &blob.hash, 0..blob.size, &mut out)?;
    assert_eq!(out, data);
    // A second fetch finds it here.
    assert_eq!(b.fetch_blob(&store, &blob.hash).await?.received, 0);
    let missing = b.fetch_blob(&store, &lattice_model::Hash([3; 32])).await;
    assert!(
        matches!(missing, Err(NodeError::BlobUnavailable { .. })),
        "{missing:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_of_a_custom_type_store_fetches_its_module_and_projects() -> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    let hash = a.install_module(EVIL.to_vec()).await?;
    let store = a.create(&hash.to_string(), "custom", None).await?;
    a.call(&store, "op", &json!({"mode": "ok"})).await?;
    assert!(!b.node().runtime().is_installed(&hash));

    // B joins and, with no manual install, ends up running the store's type.
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.join(&token, |_| {}).await?;
    until(&[&a, &b], "B to fetch the module and project", async || {
        b.status(&store).await.is_ok_and(|s| !s.headless)
            && b.call(&store, "get", &json!({}))
                .await
                .is_ok_and(|v| v["ok"] == 1)
    })
    .await?;
    assert!(b.node().runtime().is_installed(&hash));
    // B holds the module as a pinned blob of the store, so it can pass it on.
    let cas = b.node().cas().ok_or("no blob store")?;
    let held = cas
        .stat(&store, &lattice_model::Hash(hash.0))?
        .ok_or("the module is not a blob of the store at B")?;
    assert!(held.pins > 0);
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_kv_value_travels_as_a_blob_and_guests_of_both_abi_versions_run_side_by_side()
-> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    // kv (built for lattice:store@0.1.1) and its 0.1.0 release, in the same node.
    let store = a.create("kv", "large values", None).await?;
    let old = a.create("kvstore-0.1.0", "an old store", None).await?;
    let big: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    a.call(&store, "put", &json!({"key": "big", "value": big}))
        .await?;
    a.call(&old, "put", &json!({"key": "k", "value": "old abi"}))
        .await?;
    let read = a.call(&store, "get", &json!({"key": "big"})).await;
    let read = read.map_err(|e| format!("reading the large value: {e}"))?;
    assert!(
        read["value"] == big.as_str(),
        "the large value reads back whole"
    );
    assert_eq!(get(&a, &old, "k").await, "old abi");
    // The 0.1.0 guest keeps its 1 MiB limit; the 0.1.1 kv took 3 MB as a blob.
    let over = a
        .call(&old, "put", &json!({"key": "k", "value": big}))
        .await;
    assert!(over.is_err(), "a 3 MB value was taken by the 0.1.0 guest");
    let cas = a.node().cas().ok_or("no blob store")?;
    let referenced: Vec<_> = cas
        .list(&store)?
        .into_iter()
        .filter(|b| b.refs == 1)
        .collect();
    assert_eq!(referenced.len(), 1, "{referenced:?}");
    assert_eq!(referenced[0].size, 3_000_000);

    // B joins: the state references the blob, so B fetches it, and reads the value.
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.join(&token, |_| {}).await?;
    until(&[&a, &b], "B to read the large value", async || {
        b.call(&store, "get", &json!({"key": "big"}))
            .await
            .is_ok_and(|v| v["value"] == big.as_str())
    })
    .await?;
    let held = b
        .node()
        .cas()
        .ok_or("no blob store")?
        .stat(&store, &referenced[0].hash)?;
    assert_eq!(held.map(|h| (h.size, h.refs)), Some((3_000_000, 1)));

    // Replaced by a small value, the blob is no longer referenced on either node.
    a.call(&store, "put", &json!({"key": "big", "value": "small now"}))
        .await?;
    until(&[&a, &b], "B to see the small value", async || {
        all_read(&[&a, &b], &store, "big", "small now").await
    })
    .await?;
    for node in [&a, &b] {
        let blob = node
            .node()
            .cas()
            .ok_or("no blob store")?
            .stat(&store, &referenced[0].hash)?;
        assert_eq!(blob.map(|b| b.refs), Some(0));
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_kept_headless_by_choice_never_fetches_nor_runs_its_module() -> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    let hash = a.install_module(EVIL.to_vec()).await?;
    let store = a.create(&hash.to_string(), "custom", None).await?;
    a.call(&store, "op", &json!({"mode": "ok"})).await?;

    // B's operator keeps this store headless before joining it.
    b.node().set_headless_by_choice(&store, true)?;
    let mut events = b.replicator().subscribe();
    let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
    b.join(&token, |_| {}).await?;
    let witnessed = a.status(&store).await?.witnessed;
    until(&[&a, &b], "B to replicate the log", async || {
        b.status(&store)
            .await
            .is_ok_and(|s| s.witnessed >= witnessed)
    })
    .await?;
    // Several reconciliations later (each one would have fetched a missing module)…
    let mut synced = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while synced < 3 {
        let event = tokio::time::timeout_at(deadline, events.recv()).await??;
        if matches!(event, lattice_net::ReplicaEvent::Synced { store: s, .. } if s == store) {
            synced += 1;
        }
    }
    // …the module was never fetched, nothing runs, and B says why.
    assert!(!b.node().runtime().is_installed(&hash));
    let status = b.status(&store).await?;
    assert!(status.headless && status.headless_by_choice);
    assert_eq!(status.state(), "headless by choice");
    assert!(b.call(&store, "get", &json!({})).await.is_err());
    let cas = b.node().cas().ok_or("no blob store")?;
    assert!(cas.stat(&store, &lattice_model::Hash(hash.0))?.is_none());

    // Let go, B fetches the module and projects.
    b.set_headless(&store, false).await?;
    until(&[&a, &b], "B to fetch the module and project", async || {
        b.call(&store, "get", &json!({}))
            .await
            .is_ok_and(|v| v["ok"] == 1)
    })
    .await?;

    // A built-in type kept headless by choice stops serving reads at once, and resumes.
    let kv = a.create("kv", "kv", None).await?;
    a.call(&kv, "put", &json!({"key": "k", "value": "v"}))
        .await?;
    a.set_headless(&kv, true).await?;
    let refused = a.call(&kv, "get", &json!({"key": "k"})).await;
    assert!(
        matches!(
            refused,
            Err(NodeError::Runtime(lattice_runtime::Error::Headless(_)))
        ),
        "{refused:?}"
    );
    a.set_headless(&kv, false).await?;
    assert_eq!(get(&a, &kv, "k").await, "v");
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// Whether `member` is among the `copies` members of `members` that keep `blob` (the rule
/// docs/architecture.md gives: lowest BLAKE3 of blob hash ‖ member key).
fn keeps(blob: &lattice_model::Hash, member: &PubKey, members: &[PubKey], copies: usize) -> bool {
    let rank = |m: &PubKey| {
        let mut h = blake3::Hasher::new();
        h.update(blob.as_bytes());
        h.update(m.as_bytes());
        *h.finalize().as_bytes()
    };
    members.iter().filter(|m| rank(m) < rank(member)).count() < copies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_copies_policy_only_the_chosen_members_keep_a_blob_and_others_fetch_on_read()
-> TestResult {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = start(dirs[0].path()).await?;
    let b = start(dirs[1].path()).await?;
    let c = start(dirs[2].path()).await?;
    let store = a.create("kv", "shared blobs", None).await?;
    assert_eq!(a.blob_policy(&store, None).await?, json!({"mode": "all"}));
    a.blob_policy(&store, Some(("copies".into(), 1))).await?;
    for node in [&b, &c] {
        let token = a.invite(&store, Duration::from_secs(600)).await?.encode();
        node.join(&token, |_| {}).await?;
    }
    let members: Vec<PubKey> = [&a, &b, &c].map(|n| n.node().key().public()).to_vec();
    // Values large enough to be blobs, until B and C each keep at least one and skip one.
    let mut blobs = Vec::new();
    for i in 0..24u32 {
        let value = format!("{i:06}").repeat(20_000);
        a.call(
            &store,
            "put",
            &json!({"key": format!("k{i}"), "value": value}),
        )
        .await?;
        let hash = lattice_model::Hash(*blake3::hash(value.as_bytes()).as_bytes());
        blobs.push((format!("k{i}"), value, hash));
        let kept = |m: &PubKey| {
            blobs
                .iter()
                .filter(|(_, _, h)| keeps(h, m, &members, 1))
                .count()
        };
        if (1..blobs.len()).contains(&kept(&members[1]))
            && (1..blobs.len()).contains(&kept(&members[2]))
        {
            break;
        }
    }
    let held = |node: &StoreManager, hash: &lattice_model::Hash| {
        node.node()
            .cas()
            .is_some_and(|cas| cas.stat(&store, hash).ok().flatten().is_some())
    };
    // Each keeper fetches its blobs by itself.
    until(
        &[&a, &b, &c],
        "the chosen members to fetch their blobs",
        async || {
            blobs.iter().all(|(_, _, hash)| {
                [(&b, &members[1]), (&c, &members[2])]
                    .iter()
                    .all(|(node, key)| !keeps(hash, key, &members, 1) || held(node, hash))
            })
        },
    )
    .await?;
    // Once both have projected everything, the others have not fetched theirs…
    let witnessed = a.status(&store).await?.witnessed;
    until(&[&a, &b, &c], "B and C to project everything", async || {
        for node in [&b, &c] {
            if node
                .status(&store)
                .await
                .map_or(true, |s| s.projected < witnessed)
            {
                return false;
            }
        }
        true
    })
    .await?;
    let (key, value, hash) = blobs
        .iter()
        .find(|(_, _, h)| !keeps(h, &members[1], &members, 1))
        .ok_or("B keeps every blob")?;
    assert!(!held(&b, hash), "B fetched a blob it does not keep");
    // …and a read there fetches it on demand.
    let read = b.call(&store, "get", &json!({"key": key})).await?;
    assert!(
        read["value"] == value.as_str(),
        "B read another value for {key}"
    );
    assert!(held(&b, hash));
    for node in [a, b, c] {
        node.shutdown().await;
    }
    Ok(())
}
