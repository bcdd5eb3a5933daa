//! Stores end to end in embedded mode: real redb files, wasmtime with the built-in guests.

use lattice_log::Incoming;
use lattice_node::{DataDir, Node, NodeError};
use lattice_runtime::{BUILTIN_MODULES, ModuleHash};
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
    assert_eq!(out["seq"], 2);
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
    let store = node.open_store(node.find_store(&id.to_string()[..8])?)?;
    let status = store.status()?;
    assert_eq!(
        (status.witnessed, status.projected, status.headless),
        (4, 4, false)
    );
    assert_eq!(store.state_digest()?, digest);
    let (mut store, report) = store.rebuild(node.runtime())?;
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
    // Nothing was written.
    assert_eq!(store.status()?.witnessed, 1);
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

#[test]
fn a_headless_replica_witnesses_and_catches_up_when_the_module_arrives() -> TestResult {
    // Node A creates a kv store and writes.
    let a_dir = tempfile::tempdir()?;
    let a = Node::open(DataDir::new(a_dir.path()))?;
    let mut store = a.create_store(a.resolve_type("kv")?, "shared")?;
    for i in 0..10 {
        store.call(
            "put",
            &json!({"key": format!("k{i}"), "value": format!("v{i}")}),
        )?;
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

    // Node B has no kv module: it witnesses everything, projects nothing.
    let b_dir = tempfile::tempdir()?;
    let b = Node::open(DataDir::new(b_dir.path()))?;
    for r in b.ingest_replica(id, intentions)? {
        r?;
    }
    let mut replica = b.open_store(id)?;
    let status = replica.status()?;
    assert!(status.headless);
    assert_eq!((status.witnessed, status.projected), (11, 0));
    assert!(
        status.to_json()["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("waiting for module"))
    );
    assert!(replica.call("get", &json!({"key": "k1"})).is_err());

    // Installing the module catches projection up to the same state.
    let kv_bytes = BUILTIN_MODULES
        .iter()
        .find(|(n, _)| *n == "kvstore")
        .map(|(_, b)| *b)
        .ok_or("no kv")?;
    let installed = b.install_module(kv_bytes)?;
    assert_eq!(installed.hash(), ModuleHash::of(kv_bytes));
    let report = replica.project()?;
    assert_eq!(report.applied, 10);
    assert!(!replica.status()?.headless);
    assert_eq!(replica.state_digest()?, digest);
    assert_eq!(replica.call("get", &json!({"key": "k3"}))?["value"], "v3");
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
    assert!(node.runtime().list()?.is_empty());
    Ok(())
}
