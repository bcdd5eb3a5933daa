//! Stores end to end in embedded mode: real redb files, wasmtime with the built-in guests.

mod common;

use common::{TestResult, all_of, exchange, feed, permutations, replica_of, sync_into};
use lattice_log::Incoming;
use lattice_node::{DataDir, Node, NodeError};
use serde_json::json;

#[test]
fn kv_put_get_survives_restart_and_rebuild() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let kv = node.resolve_type("kv")?;
    let mut store = node.create_store(kv, "test")?;
    let id = store.id();
    let out = store.call("put", &json!({"key": "a", "value": "1"}))?;
    // seq 1 is the genesis, seq 2 the creator's system entries (name, strategy, itself),
    // seq 3 the epoch 0 they asked for.
    assert_eq!(out["seq"], 4);
    store.call("put", &json!({"key": "b", "value": "2"}))?;
    store.call("delete", &json!({"key": "b"}))?;
    assert_eq!(
        store.call("get", &json!({"key": "a"}))?,
        json!({"value": "1", "conflicted": false})
    );
    assert_eq!(
        store.call("get", &json!({"key": "b"}))?["value"],
        json!(null)
    );
    let digest = store.state_digest()?;
    store.close()?;
    drop(node);

    let node = Node::open(DataDir::new(dir.path()))?;
    let mut store = node.open_store(node.find_store(&id.to_string()[..8])?)?;
    let status = store.status()?;
    assert_eq!(
        (status.witnessed, status.projected, status.headless),
        (6, 6, false)
    );
    assert_eq!(store.state_digest()?, digest);
    let report = store.rebuild()?;
    assert_eq!(report.applied, 3);
    assert_eq!(store.state_digest()?, digest);
    assert_eq!(store.call("get", &json!({"key": "a"}))?["value"], "1");
    Ok(())
}

#[test]
fn stores_created_in_the_same_millisecond_are_distinct() -> TestResult {
    // A store's id is its genesis' hash (creator, type, name, time): with a clock that
    // stands still, the second store must still get an id of its own.
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?
        .with_clock(lattice_log::Clock::from_fn(|| 1_767_225_600_000));
    let kv = node.resolve_type("kv")?;
    let mut first = node.create_store(kv, "same")?;
    let mut second = node.create_store(kv, "same")?;
    assert_ne!(first.id(), second.id());
    first.call("put", &json!({"key": "a", "value": "1"}))?;
    assert_eq!(
        second.call("get", &json!({"key": "a"}))?["value"],
        json!(null)
    );
    Ok(())
}

#[test]
fn arguments_are_checked_against_the_schema() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let mut store = node.create_store(node.resolve_type("kvstore.wasm")?, "s")?;
    for (method, args) in [
        ("put", json!({"key": "a"})),
        ("put", json!({"key": 5, "value": "x"})),
        ("put", json!({"key": "a", "value": "x", "extra": 1})),
        ("nope", json!({})),
    ] {
        let err = store.call(method, &args);
        assert!(
            matches!(
                err,
                Err(NodeError::Runtime(lattice_runtime::Error::BadArguments(_)))
            ),
            "{method} {args}: {err:?}"
        );
    }
    // Nothing was written (genesis, system entries and epoch 0 only).
    assert_eq!(store.status()?.witnessed, 3);
    Ok(())
}

#[test]
fn counter_sums_increments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let mut store = node.create_store(node.resolve_type("counter")?, "c")?;
    store.call("increment", &json!({"by": 5}))?;
    store.call("decrement", &json!({}))?;
    store.call("increment", &json!({"name": "other"}))?;
    assert_eq!(
        store.call("get", &json!({}))?,
        json!({"value": 4, "authors": 1})
    );
    assert_eq!(store.call("get", &json!({"name": "other"}))?["value"], 1);
    Ok(())
}

/// A store type that is not built in (the test guest): a node without it is headless.
const EVIL: &[u8] = include_bytes!("../../../tests/guests/dist/evil.wasm");

#[test]
fn a_headless_replica_witnesses_and_catches_up_when_the_module_arrives() -> TestResult {
    // Node A creates a store of a non-built-in type and writes.
    let a_dir = tempfile::tempdir()?;
    let a = Node::open(DataDir::new(a_dir.path()))?;
    let module = a.install_module(EVIL)?.hash();
    let mut store = a.create_store(module, "shared")?;
    for _ in 0..10 {
        store.call("op", &json!({"mode": "ok"}))?;
    }
    let id = store.id();
    let digest = store.state_digest()?;
    let intentions: Vec<Incoming> = store
        .log()
        .reader()
        .witnessed(1, 100)?
        .into_iter()
        .map(|(_, s)| Incoming::new(s.as_bytes().to_vec()))
        .collect();

    // Node B lacks the module: it witnesses everything, projects no data.
    let b_dir = tempfile::tempdir()?;
    let b = Node::open(DataDir::new(b_dir.path()))?;
    for r in b.ingest_replica(id, intentions)? {
        r?;
    }
    let mut replica = b.open_store(id)?;
    let status = replica.status()?;
    assert!(status.headless);
    assert_eq!((status.witnessed, status.projected), (13, 0));
    // The system partition is projected all the same: the peer set is known headless.
    assert_eq!(replica.peers()?.len(), 1);
    assert!(
        status.to_json()["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("waiting for module"))
    );
    assert!(replica.call("get", &json!({})).is_err());

    // Installing the module catches projection up to the same state.
    let installed = b.install_module(EVIL)?;
    assert_eq!(installed.hash(), module);
    let report = replica.project()?;
    assert_eq!(report.applied, 10);
    assert!(!replica.status()?.headless);
    assert_eq!(replica.state_digest()?, digest);
    assert_eq!(replica.call("get", &json!({}))?["ok"], 10);
    Ok(())
}

#[test]
fn a_replica_of_a_built_in_type_is_never_headless() -> TestResult {
    let a_dir = tempfile::tempdir()?;
    let a = Node::open(DataDir::new(a_dir.path()))?;
    let mut store = a.create_store(a.resolve_type("kv")?, "shared")?;
    store.call("put", &json!({"key": "k", "value": "v"}))?;
    let intentions: Vec<Incoming> = store
        .log()
        .reader()
        .witnessed(1, 100)?
        .into_iter()
        .map(|(_, s)| Incoming::new(s.as_bytes().to_vec()))
        .collect();
    let b_dir = tempfile::tempdir()?;
    let b = Node::open(DataDir::new(b_dir.path()))?;
    for r in b.ingest_replica(store.id(), intentions)? {
        r?;
    }
    let mut replica = b.open_store(store.id())?;
    assert!(!replica.status()?.headless);
    assert_eq!(replica.call("get", &json!({"key": "k"}))?["value"], "v");
    Ok(())
}

#[test]
fn install_refuses_bad_module_bytes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    for bytes in [
        b"not wasm at all".to_vec(),
        vec![0, 0x61, 0x73, 0x6d, 1, 0, 0, 0],
        b"\0asm\x01\0\0\0\x01\x05".to_vec(),
    ] {
        assert!(node.install_module(&bytes).is_err());
    }
    // A valid but empty core module: it exports nothing of the store world.
    let core = b"\0asm\x01\0\0\0".to_vec();
    let err = node.install_module(&core);
    assert!(
        matches!(
            err,
            Err(NodeError::Module(lattice_runtime::ModuleError::WrongWorld(
                _
            )))
        ),
        "{err:?}"
    );
    // Only the built-in system table module (installed on open) is there.
    assert_eq!(node.runtime().list()?.len(), 1);
    Ok(())
}

/// Every witnessed intention of `store`, in its witness order.
#[test]
fn a_revoked_peers_later_writes_are_not_projected_whatever_the_arrival_order() -> TestResult {
    // A creates the store; B gets a replica, is made active, writes k1 and k2.
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = Node::open(DataDir::new(dirs[0].path()))?;
    let b = Node::open(DataDir::new(dirs[1].path()))?;
    let mut sa = a.create_store(a.resolve_type("kv")?, "shared")?;
    let id = sa.id();
    let bk = b.key().public().to_string();
    sa.system_call("set-peer-status", &json!({"peer": bk, "status": "active"}))?;
    b.resolve_type("kv")?;
    for r in b.ingest_replica(
        id,
        all_of(&sa)?
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect(),
    )? {
        r?;
    }
    let mut sb = b.open_store(id)?;
    sb.call("put", &json!({"key": "k1", "value": "from b"}))?;
    let b1 = all_of(&sb)?.pop().ok_or("no write")?;
    feed(&sa, std::slice::from_ref(&b1))?;
    // A revokes B having seen B's first write only; B writes on regardless.
    sa.system_call(
        "set-peer-status",
        &json!({"peer": bk, "status": "revoked", "cut": 1}),
    )?;
    let revocation = all_of(&sa)?.pop().ok_or("no revocation")?;
    sb.call("put", &json!({"key": "k2", "value": "concurrent"}))?;
    sb.call("put", &json!({"key": "k3", "value": "after"}))?;
    let b_later: Vec<_> = all_of(&sb)?.into_iter().rev().take(2).rev().collect();
    let base: Vec<_> = all_of(&sa)?
        .into_iter()
        .filter(|s| s.hash() != revocation.hash())
        .collect();

    // C receives B's later writes before the revocation; D after it.
    let mut digests = Vec::new();
    for (n, late_revocation) in [(2, true), (3, false)] {
        let node = Node::open(DataDir::new(dirs[n].path()))?;
        node.resolve_type("kv")?;
        let mut order = base.clone();
        if late_revocation {
            order.extend(b_later.iter().cloned());
            order.push(revocation.clone());
        } else {
            order.push(revocation.clone());
            order.extend(b_later.iter().cloned());
        }
        for r in node.ingest_replica(
            id,
            order
                .iter()
                .map(|s| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )? {
            r?;
        }
        let mut replica = node.open_store(id)?;
        assert_eq!(
            replica.call("get", &json!({"key": "k1"}))?["value"],
            "from b"
        );
        assert_eq!(
            replica.call("get", &json!({"key": "k2"}))?["value"],
            json!(null)
        );
        assert_eq!(
            replica.call("get", &json!({"key": "k3"}))?["value"],
            json!(null)
        );
        let refused = replica.rejected()?;
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused.iter().all(|(_, why)| why.contains("revoked")));
        digests.push(replica.state_digest()?);
        replica.close()?;
    }
    assert_eq!(digests[0], digests[1]);

    // Re-activating B at its current position keeps k2 and k3 refused but accepts what follows.
    feed(&sa, &b_later)?;
    sa.system_call(
        "set-peer-status",
        &json!({"peer": bk, "status": "active", "resume": 3}),
    )?;
    feed(&sb, &all_of(&sa)?)?;
    sb.call("put", &json!({"key": "k4", "value": "welcome back"}))?;
    feed(&sa, &all_of(&sb)?)?;
    sa.project()?;
    assert_eq!(
        sa.call("get", &json!({"key": "k4"}))?["value"],
        "welcome back"
    );
    assert_eq!(sa.call("get", &json!({"key": "k3"}))?["value"], json!(null));
    sb.project()?;
    assert_eq!(sb.state_digest()?, sa.state_digest()?);
    Ok(())
}

fn is_rejected(
    result: Result<serde_json::Value, NodeError>,
    kind: lattice_node::RejectKind,
) -> bool {
    matches!(result, Err(NodeError::Rejected { kind: k, .. }) if k == kind)
}

#[test]
fn a_strangers_writes_are_rejected_on_every_node_and_cannot_revoke_anyone() -> TestResult {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = Node::open(DataDir::new(dirs[0].path()))?;
    let b = Node::open(DataDir::new(dirs[1].path()))?;
    let s = Node::open(DataDir::new(dirs[2].path()))?;
    let mut sa = a.create_store(a.resolve_type("kv")?, "members only")?;
    let bk = b.key().public().to_string();
    sa.system_call("set-peer-status", &json!({"peer": bk, "status": "active"}))?;
    sa.call("put", &json!({"key": "k", "value": "from a"}))?;
    let mut sb = replica_of(&b, &sa)?;

    // The stranger clones the log (as a hostile node could) and writes: a key, a revocation
    // of B, its own activation. Its own node already refuses all of it.
    let mut ss = replica_of(&s, &sa)?;
    let sk = s.key().public().to_string();
    let hostile = ss.call("put", &json!({"key": "k", "value": "from a stranger"}));
    assert!(is_rejected(hostile, lattice_node::RejectKind::NotMember));
    for (method, args) in [
        (
            "set-peer-status",
            json!({"peer": bk, "status": "revoked", "cut": 0}),
        ),
        ("set-peer-status", json!({"peer": sk, "status": "active"})),
    ] {
        let r = ss.system_call(method, &args);
        assert!(
            is_rejected(r, lattice_node::RejectKind::NotMember),
            "{method}"
        );
    }

    // Its intentions reach A directly and B through A (a member relaying them).
    sync_into(&ss, &sa)?;
    sa.project()?;
    sync_into(&sa, &sb)?;
    sb.project()?;
    for store in [&mut sa, &mut sb] {
        assert_eq!(store.call("get", &json!({"key": "k"}))?["value"], "from a");
        let peers = store.peers()?;
        assert!(peers.iter().all(|p| p.key.to_string() != sk), "{peers:?}");
        assert!(
            peers
                .iter()
                .any(|p| p.key.to_string() == bk && p.status == lattice_node::PeerStatus::Active)
        );
        let rejected = store.rejected_details(10)?;
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(
            rejected
                .iter()
                .all(|r| r.author.to_string() == sk && r.reason.contains("not a member"))
        );
    }
    assert_eq!(sa.state_digest()?, sb.state_digest()?);
    // B can still write, and A projects it.
    sb.call("put", &json!({"key": "b", "value": "still here"}))?;
    sync_into(&sb, &sa)?;
    sa.project()?;
    assert_eq!(sa.call("get", &json!({"key": "b"}))?["value"], "still here");
    // A rebuild settles membership from scratch and agrees.
    let digest = sa.state_digest()?;
    sa.rebuild()?;
    assert_eq!(sa.state_digest()?, digest);
    Ok(())
}

#[test]
fn the_system_write_policy_holds_against_a_hostile_member() -> TestResult {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = Node::open(DataDir::new(dirs[0].path()))?;
    let m = Node::open(DataDir::new(dirs[1].path()))?;
    let mut sa = a.create_store(a.resolve_type("kv")?, "policy")?;
    let ak = a.key().public().to_string();
    let mk = m.key().public().to_string();
    sa.system_call("set-peer-status", &json!({"peer": mk, "status": "active"}))?;
    let mut sm = replica_of(&m, &sa)?;
    let hash = "ab".repeat(32);
    for (method, args) in [
        (
            "set-peer-name",
            json!({"peer": ak, "name": "mallory was here"}),
        ),
        (
            "set-peer-addrs",
            json!({"peer": ak, "addrs": ["10.0.0.1:1"]}),
        ),
        (
            "add-invite",
            json!({"hash": hash, "expires_ms": 1, "invited_by": ak}),
        ),
        ("claim-app", json!({"app_id": "chat", "by": ak})),
    ] {
        let r = sm.system_call(method, &args);
        assert!(is_rejected(r, lattice_node::RejectKind::Guest), "{method}");
    }
    // Leaving is allowed; coming back on its own is not.
    sm.system_call(
        "set-peer-status",
        &json!({"peer": mk, "status": "revoked", "cut": 0}),
    )?;
    let back = sm.system_call(
        "set-peer-status",
        &json!({"peer": mk, "status": "active", "resume": 9}),
    );
    assert!(back.is_err(), "{back:?}");
    // A sees the same: every hostile entry rejected, M's name untouched elsewhere.
    sync_into(&sm, &sa)?;
    sa.project()?;
    let peer_a = sa.system_query("peer", &json!({"peer": ak}))?;
    assert_eq!(peer_a["addrs"], json!([]));
    assert!(peer_a["name"].is_null());
    assert_eq!(sa.system_query("apps", &json!({}))?["items"], json!([]));
    assert_eq!(sa.state_digest()?, {
        sm.project()?;
        sm.state_digest()?
    });
    Ok(())
}

/// Each peer's final status, and which of the three keys survived.
type Outcome = (Vec<Option<lattice_node::PeerStatus>>, Vec<bool>);

/// A creates a store and admits B and C. Then, with nobody seeing anyone else's new
/// writes, each `(revoker, revoked)` pair in `revocations` is written, and every node writes
/// one key named after itself. Every arrival order of the three new chains (on fresh nodes),
/// a rebuild, and the three writers after exchanging everything must agree; returns each
/// peer's final status and which keys survived.
fn mutual_revocations(
    revocations: &[(usize, usize)],
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let nodes: Vec<Node> = dirs
        .iter()
        .map(|d| Node::open(DataDir::new(d.path())))
        .collect::<Result<_, _>>()?;
    let keys: Vec<String> = nodes.iter().map(|n| n.key().public().to_string()).collect();
    let mut sa = nodes[0].create_store(nodes[0].resolve_type("kv")?, "mutual")?;
    for k in &keys[1..] {
        sa.system_call("set-peer-status", &json!({"peer": k, "status": "active"}))?;
    }
    let sb = replica_of(&nodes[1], &sa)?;
    let sc = replica_of(&nodes[2], &sa)?;
    let base = all_of(&sa)?;
    let mut stores = [sa, sb, sc];
    for (by, who) in revocations {
        // Distinct HLCs, so "earlier" is well defined: wait for the clock to move on.
        let now = lattice_log::system_now_ms();
        while lattice_log::system_now_ms() == now {
            std::hint::spin_loop();
        }
        // The cut is what the revoker has seen of the revoked peer (as the node computes it).
        let cut = stores[*by]
            .log()
            .reader()
            .frontier()?
            .into_iter()
            .find(|(k, _)| k.to_string() == keys[*who])
            .map_or(0, |(_, seq)| seq);
        stores[*by].system_call(
            "set-peer-status",
            &json!({"peer": keys[*who], "status": "revoked", "cut": cut}),
        )?;
    }
    for (n, store) in stores.iter_mut().enumerate() {
        store.call("put", &json!({"key": format!("k{n}"), "value": "1"}))?;
    }
    let mut chains = Vec::new();
    for store in &stores {
        chains.push(
            all_of(store)?
                .into_iter()
                .skip(base.len())
                .collect::<Vec<_>>(),
        );
    }
    let mut outcomes = Vec::new();
    for order in permutations(&[0usize, 1, 2]) {
        let dir = tempfile::tempdir()?;
        let node = Node::open(DataDir::new(dir.path()))?;
        node.resolve_type("kv")?;
        let mut items = base.clone();
        for i in &order {
            items.extend(chains[*i].iter().cloned());
        }
        for r in node.ingest_replica(
            stores[0].id(),
            items
                .iter()
                .map(|s| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )? {
            r?;
        }
        let mut replica = node.open_store(stores[0].id())?;
        let digest = replica.state_digest()?;
        replica.rebuild()?;
        assert_eq!(replica.state_digest()?, digest, "order {order:?}: rebuild");
        let peers = replica.peers()?;
        let statuses: Vec<_> = keys
            .iter()
            .map(|k| {
                peers
                    .iter()
                    .find(|p| p.key.to_string() == *k)
                    .map(|p| p.status)
            })
            .collect();
        let mut kept = Vec::new();
        for n in 0..3 {
            kept.push(!replica.call("get", &json!({"key": format!("k{n}")}))?["value"].is_null());
        }
        outcomes.push((digest, statuses, kept));
        replica.close()?;
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    exchange(&stores)?;
    for store in &mut stores {
        store.project()?;
        assert_eq!(store.state_digest()?, outcomes[0].0);
    }
    let (_, statuses, kept) = outcomes.swap_remove(0);
    Ok((statuses, kept))
}

#[test]
fn the_creator_wins_a_concurrent_mutual_revocation_in_every_arrival_order() -> TestResult {
    use lattice_node::PeerStatus::{Active, Revoked};
    // A (the creator) and B revoke each other; B also revokes C.
    let (statuses, kept) = mutual_revocations(&[(0, 1), (1, 0), (1, 2)])?;
    assert_eq!(statuses, vec![Some(Active), Some(Revoked), Some(Active)]);
    assert_eq!(kept, vec![true, false, true]);
    Ok(())
}

#[test]
fn between_two_members_the_earlier_revocation_wins_in_every_arrival_order() -> TestResult {
    use lattice_node::PeerStatus::{Active, Revoked};
    // B revokes C, then (later HLC, not having seen it) C revokes B.
    let (statuses, kept) = mutual_revocations(&[(1, 2), (2, 1)])?;
    assert_eq!(statuses, vec![Some(Active), Some(Active), Some(Revoked)]);
    assert_eq!(kept, vec![true, true, false]);
    Ok(())
}

#[test]
fn apply_outcomes_do_not_depend_on_what_an_instance_ran_before() -> TestResult {
    // The test guest's `count` apply traps on the third apply one instance sees. Every apply
    // runs on a fresh instance, so none traps: not on the node that projected each write as
    // it was made, not after a rebuild, not on replicas that projected everything at once or
    // one intention at a time.
    let a_dir = tempfile::tempdir()?;
    let a = Node::open(DataDir::new(a_dir.path()))?;
    let module = a.install_module(EVIL)?.hash();
    let mut store = a.create_store(module, "counted")?;
    for i in 0..8 {
        let mode = if i % 3 == 2 { "ok" } else { "count" };
        store.call("op", &json!({ "mode": mode }))?;
    }
    let read = store.call("get", &json!({}))?;
    assert_eq!(
        (read["counted"].clone(), read["ok"].clone()),
        (json!(6), json!(2))
    );
    assert_eq!(store.status()?.rejected, 0);
    let digest = store.state_digest()?;
    store.rebuild()?;
    assert_eq!(store.status()?.rejected, 0);
    assert_eq!(store.state_digest()?, digest);

    let id = store.id();
    let all: Vec<lattice_model::SignedIntention> = store
        .log()
        .reader()
        .witnessed(1, 100)?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    for one_at_a_time in [false, true] {
        let dir = tempfile::tempdir()?;
        let node = Node::open(DataDir::new(dir.path()))?;
        node.install_module(EVIL)?;
        let (first, rest) = all.split_first().ok_or("no genesis")?;
        for r in node.ingest_replica(id, vec![Incoming::new(first.as_bytes().to_vec())])? {
            r?;
        }
        let mut replica = node.open_store(id)?;
        if one_at_a_time {
            for s in rest {
                feed(&replica, std::slice::from_ref(s))?;
                replica.project()?;
            }
        } else {
            feed(&replica, rest)?;
            replica.project()?;
        }
        assert_eq!(
            replica.status()?.rejected,
            0,
            "one at a time: {one_at_a_time}"
        );
        assert_eq!(
            replica.state_digest()?,
            digest,
            "one at a time: {one_at_a_time}"
        );
    }
    Ok(())
}

#[test]
fn an_fs_store_converges_with_a_conflict_copy_on_two_nodes() -> TestResult {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a_node, b_node) = (
        Node::open(DataDir::new(da.path()))?,
        Node::open(DataDir::new(db.path()))?,
    );
    let mut a = a_node.create_store(a_node.resolve_type("fs")?, "files")?;
    a.system_call(
        "set-peer-status",
        &json!({"peer": b_node.key().public().to_string(), "status": "active"}),
    )?;
    a.call("mkdir", &json!({"path": "docs"}))?;
    a.call("write", &json!({"path": "docs/notes.txt", "data": "first"}))?;
    b_node.resolve_type("fs")?;
    let mut b = replica_of(&b_node, &a)?;
    b.project()?;
    // Both edit the same file before hearing of each other; A also adds a large file.
    a.call("write", &json!({"path": "docs/notes.txt", "data": "A's"}))?;
    let big = "x".repeat(100_000);
    a.call("write", &json!({"path": "docs/big.bin", "data": big}))?;
    b.call("write", &json!({"path": "docs/notes.txt", "data": "B's"}))?;
    let mut s = vec![a, b];
    exchange(&s)?;
    let mut listings = Vec::new();
    for store in &mut s {
        store.project()?;
        let listed = store.call("readdir", &json!({"path": "docs"}))?;
        let names: Vec<String> = listed["items"]
            .as_array()
            .ok_or("no items")?
            .iter()
            .filter_map(|i| i["name"].as_str().map(str::to_string))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "big.bin");
        assert_eq!(names[1], "notes.txt");
        assert!(names[2].starts_with("notes.txt.conflict-"), "{names:?}");
        let stat = store.call("stat", &json!({"path": "docs/big.bin"}))?;
        assert_eq!(stat["size"], json!(100_000));
        assert!(stat["blob"].is_string(), "{stat}");
        listings.push(listed);
    }
    assert_eq!(listings[0], listings[1]);
    assert_eq!(s[0].state_digest()?, s[1].state_digest()?);
    // The two edits are both there: one under the name, the other beside it.
    let mut texts = Vec::new();
    for path in [
        "docs/notes.txt",
        &format!(
            "docs/{}",
            listings[0]["items"][2]["name"].as_str().ok_or("name")?
        ),
    ] {
        texts.push(s[0].call("read", &json!({ "path": path }))?["data"].clone());
    }
    texts.sort_by_key(|t| t.to_string());
    assert_eq!(texts, vec![json!("A's"), json!("B's")]);
    // The large file reads back where its blob is.
    assert_eq!(
        s[0].call("read", &json!({"path": "docs/big.bin", "offset": 99_990}))?["data"],
        json!("xxxxxxxxxx")
    );
    Ok(())
}

#[test]
fn a_query_while_a_write_run_is_with_the_log_reads_the_state_before_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let kv = node.resolve_type("kv")?;
    let mut store = node.create_store(kv, "test")?;
    store.call("put", &json!({"key": "a", "value": "old"}))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let calls = vec![
        ("put".to_string(), json!({"key": "a", "value": "new"})),
        ("put".to_string(), json!({"key": "b", "value": "1"})),
        ("put".to_string(), json!({"bad": "arguments"})),
    ];
    let run = match store.start_write_run(&calls, move |outcome| {
        let _ = tx.send(outcome);
    }) {
        lattice_node::RunStart::InFlight(run) => run,
        lattice_node::RunStart::Done(results) => {
            return Err(format!("nothing went to the log: {results:?}").into());
        }
    };
    // Whether or not the log has committed yet, the run has not landed: queries see the
    // committed state, as often as they are asked.
    for _ in 0..2 {
        assert_eq!(store.call("get", &json!({"key": "a"}))?["value"], "old");
        assert_eq!(
            store.call("get", &json!({"key": "b"}))?["value"],
            json!(null)
        );
    }
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(30))?;
    let results = store.finish_write_run(run, outcome);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(NodeError::Runtime(_))),
        "{:?}",
        results[2]
    );
    assert_eq!(store.call("get", &json!({"key": "a"}))?["value"], "new");
    assert_eq!(store.call("get", &json!({"key": "b"}))?["value"], "1");
    // The landed run is what the log says: rebuilding from it gives the same state.
    let digest = store.state_digest()?;
    store.rebuild()?;
    assert_eq!(store.state_digest()?, digest);
    Ok(())
}
