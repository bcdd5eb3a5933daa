//! Pruning end to end on embedded stores (docs/epochs.md, "Pruning"): a prune cut's epoch
//! becomes final, history below it goes, the state stays byte for byte, rebuilds and lost
//! live state restart from the state at the epoch, members write on, and an unpruned peer's
//! history sent again is refused as pruned.

mod common;

use common::{TestResult, all_of, exchange, fill, replica_of};
use lattice_log::{Incoming, IngestError};
use lattice_node::{DataDir, Node, NodeError, Store};
use serde_json::json;

/// Asks for a prune cut: an epoch the active members acknowledge.
fn cut(store: &mut Store, nonce: u64) -> TestResult {
    store.system_call(
        "request-epoch",
        &json!({"cause": "prune-cut", "nonce": nonce}),
    )?;
    store.project()?;
    Ok(())
}

fn listing(store: &mut Store) -> Result<serde_json::Value, NodeError> {
    store.call("list", &json!({"prefix": ""}))
}

fn open_node() -> Result<(tempfile::TempDir, Node), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    Ok((dir, node))
}

#[test]
fn pruning_keeps_the_state_and_every_restart_path_restores_it() -> TestResult {
    let (dir, node) = open_node()?;
    let mut store = node.create_store(node.resolve_type("kv")?, "pruned")?;
    let id = store.id();
    // Nothing is final before the cut covers the writes... epoch 0 is, but reaches nothing.
    fill(&mut store, "a", 2000, 50)?;
    let before = store.prune_now()?;
    assert_eq!(before.deleted, 0, "{before:?}");

    cut(&mut store, 1)?;
    let epoch = store.epoch()?.ok_or("no epoch")?;
    assert!(
        epoch.finalized,
        "a lone member's cut is final at once: {epoch:?}"
    );
    let digest = store.state_digest()?;
    let items = listing(&mut store)?;
    let log_before = store.log().reader().witnessed_count()?;

    let report = store.prune_now()?;
    assert_eq!(report.epoch, Some(epoch.number));
    // Every put but the 50 current heads goes.
    assert_eq!(report.deleted, 2000 - 50, "{report:?}");
    assert_eq!(
        store.log().reader().witnessed_count()?,
        log_before - report.deleted
    );
    assert_eq!(store.state_digest()?, digest);
    assert_eq!(listing(&mut store)?, items);
    store.log().reader().verify(|_, _| {})?;

    // Settling membership again restarts the data partition from the state at the epoch.
    store.rebuild()?;
    assert_eq!(store.state_digest()?, digest);

    // Writing goes on: new puts cite the kept heads.
    fill(&mut store, "b", 100, 60)?;
    let after_writes = store.state_digest()?;
    assert_ne!(after_writes, digest);
    store.rebuild()?;
    assert_eq!(store.state_digest()?, after_writes);
    let items = listing(&mut store)?;

    // A lost live state is restored from the state at the epoch as the store opens.
    store.flush()?;
    store.close()?;
    let data_dir = DataDir::new(dir.path());
    std::fs::remove_file(data_dir.state_path(&id))?;
    let mut reopened = node.open_store(id)?;
    assert_eq!(reopened.state_digest()?, after_writes);
    assert_eq!(listing(&mut reopened)?, items);
    reopened.close()?;

    // Without the state at the epoch, history below the floor is gone for good: the store
    // says so instead of replaying what is left.
    std::fs::remove_file(data_dir.state_path(&id))?;
    std::fs::remove_file(data_dir.epoch_state_path(&id))?;
    match node.open_store(id) {
        Err(NodeError::PrunedStateMissing(_)) => {}
        other => return Err(format!("expected PrunedStateMissing, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn members_prune_after_every_ack_and_converge_with_an_unpruned_peer() -> TestResult {
    let (_da, a_node) = open_node()?;
    let (_db, b_node) = open_node()?;
    let (_dc, c_node) = open_node()?;
    let mut a = a_node.create_store(a_node.resolve_type("kv")?, "shared")?;
    for n in [&b_node, &c_node] {
        a.system_call(
            "set-peer-status",
            &json!({"peer": n.key().public().to_string(), "status": "active"}),
        )?;
    }
    let mut b = replica_of(&b_node, &a)?;
    let c = replica_of(&c_node, &a)?;
    fill(&mut a, "a", 600, 40)?;
    fill(&mut b, "b", 600, 40)?;
    let mut s = vec![a, b, c];
    exchange(&s)?;
    for x in &mut s {
        x.project()?;
    }
    // A asks for a cut; it is final once B and C acknowledged with the same state.
    cut(&mut s[0], 7)?;
    assert!(
        s[0].prune_now()?.not_now.is_some(),
        "not final before the acks"
    );
    for _ in 0..2 {
        exchange(&s)?;
        for x in &mut s {
            x.project()?;
        }
    }
    for x in &s {
        let e = x.epoch()?.ok_or("no epoch")?;
        assert!(e.finalized, "{e:?}");
    }
    let digest = s[0].state_digest()?;
    // A and B prune; C keeps everything.
    for x in &mut s[..2] {
        let r = x.prune_now()?;
        assert!(r.deleted > 1000, "{r:?}");
        assert_eq!(x.state_digest()?, digest);
    }

    // C still offers the pruned history: refused as pruned, never floated or stored.
    let offered: Vec<Incoming> = all_of(&s[2])?
        .iter()
        .map(|i| Incoming::new(i.as_bytes().to_vec()))
        .collect();
    let results = s[0].log().ingest(offered)?;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(IngestError::Pruned { .. })))
        .count();
    assert!(refused > 1000, "{refused} refused as pruned");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(IngestError::Pruned { .. })))
    );
    assert_eq!(s[0].log().reader().status()?.floating, 0);

    // Everyone writes on, over the same keys; all three converge.
    fill(&mut s[0], "a2", 100, 40)?;
    fill(&mut s[1], "b2", 100, 40)?;
    fill(&mut s[2], "c2", 100, 40)?;
    for _ in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    let items: Vec<Incoming> = all_of(&s[from])?
                        .iter()
                        .map(|i| Incoming::new(i.as_bytes().to_vec()))
                        .collect();
                    for r in s[to].log().ingest(items)? {
                        assert!(
                            r.is_ok() || matches!(r, Err(IngestError::Pruned { .. })),
                            "{r:?}"
                        );
                    }
                }
            }
        }
        for x in &mut s {
            x.project()?;
        }
    }
    let d = s[0].state_digest()?;
    assert_eq!(s[1].state_digest()?, d);
    assert_eq!(s[2].state_digest()?, d);
    for x in &s {
        assert_eq!(x.log().reader().status()?.floating, 0);
    }
    Ok(())
}

#[test]
fn a_prune_policy_prunes_as_epochs_become_final() -> TestResult {
    let (_dir, node) = open_node()?;
    let mut store = node.create_store(node.resolve_type("kv")?, "policy")?;
    store.system_call(
        "set-prune-policy",
        &json!({"mode": "keep-epochs", "keep": 2}),
    )?;
    fill(&mut store, "a", 500, 10)?;
    let count = |s: &Store| s.log().reader().witnessed_count();
    // The first cut's epoch is the newest of two: keeping two epochs' history, the pass
    // prunes below epoch 0, which reaches nothing that can go.
    cut(&mut store, 1)?;
    let first = count(&store)?;
    while store.is_pruning() {
        store.prune_step();
    }
    assert_eq!(count(&store)?, first);
    let digest = store.state_digest()?;
    fill(&mut store, "b", 500, 10)?;
    let before = count(&store)?;
    // The second cut makes the first one old enough: its history goes, in steps.
    cut(&mut store, 2)?;
    assert!(
        store.is_pruning(),
        "a pass starts as the epoch becomes final"
    );
    while store.is_pruning() {
        store.prune_step();
    }
    let after = count(&store)?;
    assert!(
        after + 480 <= before,
        "the first 500 puts (but the heads they leave) went: {before} → {after}"
    );
    // What the second batch wrote stays: its history is the newest epoch's.
    let listed = listing(&mut store)?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(10));
    assert_ne!(store.state_digest()?, digest);
    store.rebuild()?;
    assert_eq!(listing(&mut store)?, listed);
    Ok(())
}
