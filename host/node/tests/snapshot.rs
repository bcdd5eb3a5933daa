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

/// Copies the files of one directory (a store's directory is flat).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> TestResult {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn a_member_behind_the_floor_rebases_on_a_snapshot_and_keeps_its_own_writes() -> TestResult {
    let (_da, a_node) = open_node()?;
    let (dc, c_node) = open_node()?;
    let mut a = a_node.create_store(a_node.resolve_type("kv")?, "shared")?;
    // C is a member whose acknowledgement is not needed (dormant): A prunes without it.
    a.system_call(
        "set-peer-status",
        &json!({"peer": c_node.key().public().to_string(), "status": "dormant"}),
    )?;
    let mut c = replica_of(&c_node, &a)?;
    fill(&mut a, "a", 300, 20)?;
    offer(&a, &c)?;
    c.project()?;
    // C writes something A never hears of; A writes on, cuts and prunes.
    c.call("put", &json!({"key": "from-c", "value": "mine"}))?;
    fill(&mut a, "a2", 600, 20)?;
    a.request_prune_cut()?;
    assert!(a.epoch()?.ok_or("no epoch")?.finalized);
    let pruned = a.prune_now()?;
    assert!(pruned.deleted > 500, "{pruned:?}");
    // What A still holds cannot stand on C's log: C is behind A's floor.
    offer(&a, &c)?;
    assert!(c.log().reader().status()?.floating > 0);

    let snapshot = a.snapshot()?;
    let id = c.id();
    c.close()?;
    let (mut c, taken) = c_node.rebase_on_snapshot(&snapshot)?;
    assert!(taken >= 1, "C's own write is taken over");
    assert_eq!(c.call("get", &json!({"key": "from-c"}))?["value"], "mine");
    assert_eq!(c.log().reader().status()?.floating, 0);
    let dir = DataDir::new(dc.path());
    assert!(!dir.behind_dir(&id).exists());
    // A gets C's write; both hold the same state.
    offer(&c, &a)?;
    a.project()?;
    c.project()?;
    assert_eq!(a.call("get", &json!({"key": "from-c"}))?["value"], "mine");
    assert_eq!(a.state_digest()?, c.state_digest()?);
    let digest = c.state_digest()?;

    // A catch-up interrupted before the new store was whole is undone at the next open.
    c.close()?;
    std::fs::rename(dir.store_dir(&id), dir.behind_dir(&id))?;
    std::fs::create_dir_all(dir.store_dir(&id))?;
    std::fs::write(dir.store_dir(&id).join("joining"), b"interrupted")?;
    let c = c_node.open_store(id)?;
    assert_eq!(c.state_digest()?, digest);
    assert!(!dir.behind_dir(&id).exists());

    // One interrupted after it was: the next open takes over what only the old log had.
    c.close()?;
    let copy = dc.path().join("copy");
    copy_dir(&dir.store_dir(&id), &copy)?;
    let mut c = c_node.open_store(id)?;
    c.call("put", &json!({"key": "later", "value": "kept"}))?;
    c.close()?;
    std::fs::rename(dir.store_dir(&id), dir.behind_dir(&id))?;
    std::fs::rename(&copy, dir.store_dir(&id))?;
    let mut c = c_node.open_store(id)?;
    assert_eq!(c.call("get", &json!({"key": "later"}))?["value"], "kept");
    assert!(!dir.behind_dir(&id).exists());
    Ok(())
}
