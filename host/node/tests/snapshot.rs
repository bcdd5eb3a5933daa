//! Joining a pruned store from a snapshot (docs/epochs.md, "Snapshots"): the joiner's state
//! equals the full replay byte for byte, it goes on receiving writes, and a snapshot whose
//! state does not hash to what the members signed is refused and leaves nothing behind.

mod common;

use common::{TestResult, all_of, fill, replica_of};
use lattice_log::Incoming;
use lattice_node::{DataDir, Node, NodeError, Store};
use serde_json::json;

fn open_node() -> Result<(tempfile::TempDir, Node), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    Ok((dir, node))
}

/// Offers everything `from` holds to `to`: what `to` pruned is refused as such.
fn offer(from: &Store, to: &Store) -> TestResult {
    let items: Vec<Incoming> = all_of(from)?
        .iter()
        .map(|i| Incoming::new(i.as_bytes().to_vec()))
        .collect();
    for r in to.log().ingest(items)? {
        assert!(
            r.is_ok() || matches!(r, Err(lattice_log::IngestError::Pruned { .. })),
            "{r:?}"
        );
    }
    Ok(())
}

fn sync_round(stores: &mut [Store]) -> TestResult {
    offer(&stores[0], &stores[1])?;
    offer(&stores[1], &stores[0])?;
    for s in stores.iter_mut() {
        s.project()?;
    }
    Ok(())
}

#[test]
fn a_joiner_of_a_pruned_store_bootstraps_from_a_snapshot_byte_for_byte() -> TestResult {
    let (_da, a_node) = open_node()?;
    let (_db, b_node) = open_node()?;
    let mut a = a_node.create_store(a_node.resolve_type("kv")?, "shared")?;
    a.system_call(
        "set-peer-status",
        &json!({"peer": b_node.key().public().to_string(), "status": "active"}),
    )?;
    let b = replica_of(&b_node, &a)?;
    let mut s = vec![a, b];
    fill(&mut s[0], "a", 700, 40)?;
    fill(&mut s[1], "b", 700, 40)?;
    sync_round(&mut s)?;

    s[0].system_call("request-epoch", &json!({"cause": "prune-cut", "nonce": 3}))?;
    s[0].project()?;
    // While the current epoch waits for B's ack, there is nothing to offer.
    match s[0].snapshot() {
        Err(NodeError::SnapshotRefused { .. }) => {}
        other => return Err(format!("expected SnapshotRefused, got {other:?}").into()),
    }
    for _ in 0..2 {
        sync_round(&mut s)?;
    }
    assert!(s[0].epoch()?.ok_or("no epoch")?.finalized);
    let pruned = s[0].prune_now()?;
    assert!(pruned.deleted > 1000, "{pruned:?}");
    // A tail above the epoch, written on both and exchanged.
    fill(&mut s[0], "a2", 50, 40)?;
    fill(&mut s[1], "b2", 50, 60)?;
    sync_round(&mut s)?;
    let digest = s[0].state_digest()?;
    assert_eq!(s[1].state_digest()?, digest, "B replayed everything");

    let snapshot = s[0].snapshot()?;
    assert!(!snapshot.floor.is_empty());
    assert_eq!(
        snapshot.held.len() as u64,
        s[0].log().reader().witnessed_count()?
    );

    // A new node joins from the snapshot: same state as the full replay, same state at the
    // epoch, the same intentions held.
    let (_dj, j_node) = open_node()?;
    let mut j = j_node.store_from_snapshot(&snapshot)?;
    assert_eq!(j.state_digest()?, digest);
    assert_eq!(j.epoch_state_hash()?, s[0].epoch_state_hash()?);
    assert!(j.epoch()?.ok_or("no epoch")?.finalized);
    assert_eq!(
        j.call("list", &json!({"prefix": ""}))?,
        s[1].call("list", &json!({"prefix": ""}))?
    );
    assert_eq!(
        j.log().reader().witnessed_count()?,
        s[0].log().reader().witnessed_count()?
    );

    // It goes on: B's next writes reach it and it converges; it reopens cleanly.
    fill(&mut s[1], "b3", 80, 40)?;
    offer(&s[1], &j)?;
    j.project()?;
    s[1].project()?;
    assert_eq!(j.state_digest()?, s[1].state_digest()?);
    assert_eq!(j.log().reader().status()?.floating, 0);
    let id = j.id();
    drop(j);
    let mut j = j_node.open_store(id)?;
    assert_eq!(j.state_digest()?, s[1].state_digest()?);
    j.log().reader().verify(|_, _| {})?;
    j.rebuild()?;
    assert_eq!(j.state_digest()?, s[1].state_digest()?);

    // Offered again, or with one value changed: refused, and nothing is left behind.
    match j_node.store_from_snapshot(&snapshot) {
        Err(NodeError::SnapshotRefused { .. }) => {}
        other => return Err(format!("expected SnapshotRefused, got {other:?}").into()),
    }
    let mut forged = snapshot.clone();
    let row = forged.state.data.first_mut().ok_or("an empty state")?;
    row.1.push(b'!');
    let (_dk, k_node) = open_node()?;
    match k_node.store_from_snapshot(&forged) {
        Err(NodeError::SnapshotRefused { why, .. }) if why.contains("members signed") => {}
        other => return Err(format!("expected SnapshotRefused, got {other:?}").into()),
    }
    assert!(matches!(
        k_node.open_store(id),
        Err(NodeError::UnknownStore(_))
    ));
    // The genuine one still works on that node afterwards.
    let k = k_node.store_from_snapshot(&snapshot)?;
    assert_eq!(k.state_digest()?, digest);
    Ok(())
}
