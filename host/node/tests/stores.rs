//! Stores end to end in embedded mode: real redb files, wasmtime with the built-in guests.

use lattice_log::Incoming;
use lattice_node::{DataDir, Node, NodeError};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn kv_put_get_survives_restart_and_rebuild() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let kv = node.resolve_type("kv")?;
    let mut store = node.create_store(kv, "test")?;
    let id = store.id();
    let out = store.call("put", &json!({"key": "a", "value": "1"}))?;
    // seq 1 is the genesis, seq 2 the creator's system entries (name, strategy, itself).
    assert_eq!(out["seq"], 3);
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
        (5, 5, false)
    );
    assert_eq!(store.state_digest()?, digest);
    let report = store.rebuild()?;
    assert_eq!(report.applied, 3);
    assert_eq!(store.state_digest()?, digest);
    assert_eq!(store.call("get", &json!({"key": "a"}))?["value"], "1");
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
    // Nothing was written (genesis and system entries only).
    assert_eq!(store.status()?.witnessed, 2);
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
    assert_eq!((status.witnessed, status.projected), (12, 0));
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
fn all_of(
    store: &lattice_node::Store,
) -> Result<Vec<lattice_model::SignedIntention>, Box<dyn std::error::Error>> {
    Ok(store
        .log()
        .reader()
        .witnessed(1, 10_000)?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

fn feed(store: &lattice_node::Store, items: &[lattice_model::SignedIntention]) -> TestResult {
    let incoming = items
        .iter()
        .map(|s| Incoming::new(s.as_bytes().to_vec()))
        .collect();
    for r in store.log().ingest(incoming)? {
        r?;
    }
    Ok(())
}

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
