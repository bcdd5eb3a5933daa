//! Containment of misbehaving guests (`tests/guests/evil`): a trap, an infinite loop, a memory
//! bomb, an oversized write or an error in `apply` rejects that one intention the same way on
//! every peer and projection goes on; a bad `query` is an error to its caller. Nothing takes
//! the node down.

use lattice_log::Incoming;
use lattice_node::{DataDir, Node, NodeError, Store};
use lattice_runtime::{CallError, Limits};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const EVIL: &[u8] = include_bytes!("../../guests/dist/evil.wasm");

fn limits() -> Limits {
    Limits {
        apply_fuel: 20_000_000,
        call_fuel: 1_000_000_000,
        memory_bytes: 32 << 20,
        ..Limits::default()
    }
}

fn evil_store(dir: &std::path::Path) -> Result<(Node, Store), Box<dyn std::error::Error>> {
    let node = Node::open_with(DataDir::new(dir), limits())?;
    let module = node.install_module(EVIL)?.hash();
    let store = node.create_store(module, "evil")?;
    Ok((node, store))
}

fn call_error(err: Result<serde_json::Value, NodeError>) -> Option<CallError> {
    match err {
        Err(NodeError::Runtime(lattice_runtime::Error::Call(e))) => Some(e),
        _ => None,
    }
}

#[test]
fn failing_applies_are_rejected_and_projection_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_node, mut store) = evil_store(dir.path())?;
    let modes = [
        "ok",
        "trap",
        "ok",
        "loop",
        "alloc",
        "reject",
        "big-write",
        "ok",
    ];
    for mode in modes {
        // A rejected apply is an error for the caller (the intention stays witnessed).
        let out = store.call("op", &json!({"mode": mode}));
        match mode {
            "ok" => assert!(out.is_ok(), "{out:?}"),
            _ => assert!(
                matches!(
                    out,
                    Err(NodeError::Rejected {
                        kind: lattice_node::RejectKind::Guest,
                        ..
                    })
                ),
                "{mode} was not rejected: {out:?}"
            ),
        }
    }
    let reasons = store.rejected()?;
    assert_eq!(reasons.len(), 5);
    assert!(
        reasons.iter().any(|(_, r)| r.contains("fuel")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.contains("trapped")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.contains("asked to reject")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.contains("exceeds")),
        "{reasons:?}"
    );
    // Writes of rejected applies were discarded; the three ok ops all counted.
    assert_eq!(
        store.call("get", &json!({}))?,
        json!({"ok": 3, "half": false, "counted": 0})
    );
    let status = store.status()?;
    assert_eq!(status.projected, status.witnessed);
    Ok(())
}

#[test]
fn every_peer_rejects_the_same_intentions_and_reaches_the_same_state() -> TestResult {
    let a_dir = tempfile::tempdir()?;
    let (_a, mut a) = evil_store(a_dir.path())?;
    for mode in ["ok", "loop", "trap", "ok", "alloc", "ok"] {
        let out = a.call("op", &json!({"mode": mode}));
        assert_eq!(out.is_ok(), mode == "ok", "{mode}: {out:?}");
    }
    let all: Vec<Incoming> = a
        .log()
        .reader()
        .witnessed(1, 100)?
        .into_iter()
        .map(|(_, s)| Incoming::new(s.as_bytes().to_vec()))
        .collect();
    let b_dir = tempfile::tempdir()?;
    let b = Node::open_with(DataDir::new(b_dir.path()), limits())?;
    b.install_module(EVIL)?;
    for r in b.ingest_replica(a.id(), all)? {
        r?;
    }
    let replica = b.open_store(a.id())?;
    let seqs = |s: &Store| -> Result<Vec<u64>, NodeError> {
        Ok(s.rejected()?.into_iter().map(|(seq, _)| seq).collect())
    };
    assert_eq!(seqs(&a)?, seqs(&replica)?);
    assert_eq!(a.state_digest()?, replica.state_digest()?);
    Ok(())
}

#[test]
fn bad_queries_fail_for_the_caller_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_node, mut store) = evil_store(dir.path())?;
    store.call("op", &json!({"mode": "ok"}))?;
    let err = call_error(store.call("huge", &json!({})));
    assert!(matches!(err, Some(CallError::LimitExceeded(_))), "{err:?}");
    let err = call_error(store.call("write", &json!({})));
    assert!(matches!(err, Some(CallError::Forbidden(_))), "{err:?}");
    let err = call_error(store.call("spin", &json!({})));
    assert_eq!(err, Some(CallError::FuelExhausted));
    // The store still answers, and the query's write did not land.
    assert_eq!(store.call("get", &json!({}))?["ok"], 1);
    Ok(())
}

#[test]
fn a_core_module_is_made_a_component_on_install() -> TestResult {
    let core: &[u8] = include_bytes!("../../guests/dist/evil.core.wasm");
    let dir = tempfile::tempdir()?;
    let node = Node::open_with(DataDir::new(dir.path()), limits())?;
    let installed = node.install_module(core)?;
    // The stored module is the component, named by the component's hash.
    assert_eq!(installed.hash(), lattice_runtime::ModuleHash::of(EVIL));
    let mut store = node.create_store(installed.hash(), "from core")?;
    store.call("op", &json!({"mode": "ok"}))?;
    assert_eq!(store.call("get", &json!({}))?["ok"], 1);
    Ok(())
}

#[test]
fn compiled_code_is_cached_and_a_damaged_cache_is_ignored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = DataDir::new(dir.path());
    let node = Node::open_with(data.clone(), limits())?;
    let hash = node.install_module(EVIL)?.hash();
    let cached: Vec<_> = std::fs::read_dir(data.modules_dir().join("cache"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(&hash.to_string()))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // A restart loads from the cache; a damaged cache file is ignored and rewritten.
    std::fs::write(&cached[0], b"garbage")?;
    drop(node);
    let node = Node::open_with(data, limits())?;
    let loaded = node.runtime().load(&hash)?;
    node.runtime().instantiate(&loaded)?;
    assert!(std::fs::metadata(&cached[0])?.len() > 1000);
    Ok(())
}
