//! Epochs end to end on embedded stores: who writes them, how they are numbered and settled,
//! and revocation by an epoch's frontier in every arrival order (docs/epochs.md).

mod common;

use common::{TestResult, all_of, exchange, feed, permutations, replica_of, sync_into};
use lattice_model::{Hash, HostOp, SignedIntention};
use lattice_node::{DataDir, Node, NodeError, Store};
use serde_json::json;

/// The epochs in `store`'s log, as (number, hash), in witness order.
fn epochs_in(store: &Store) -> Result<Vec<(u64, lattice_model::Hash)>, Box<dyn std::error::Error>> {
    Ok(all_of(store)?
        .iter()
        .filter(|s| s.intention().flags().host)
        .filter_map(|s| match HostOp::decode(s.intention().ops()) {
            Ok(HostOp::Epoch { number, .. }) => Some((number, s.hash())),
            _ => None,
        })
        .collect())
}

/// The acks `author` wrote in `store`'s log.
fn acks_by(
    store: &Store,
    author: lattice_model::PubKey,
) -> Result<usize, Box<dyn std::error::Error>> {
    Ok(all_of(store)?
        .iter()
        .filter(|s| {
            s.intention().author() == author
                && matches!(HostOp::decode(s.intention().ops()), Ok(HostOp::Ack { .. }))
        })
        .count())
}

fn value(store: &mut Store, key: &str) -> Result<serde_json::Value, NodeError> {
    Ok(store.call("get", &json!({ "key": key }))?["value"].clone())
}

/// Opens nodes in fresh directories (kept alive by the returned guards).
fn open_nodes(n: usize) -> Result<(Vec<tempfile::TempDir>, Vec<Node>), Box<dyn std::error::Error>> {
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir()?;
        nodes.push(Node::open(DataDir::new(dir.path()))?);
        dirs.push(dir);
    }
    Ok((dirs, nodes))
}

/// A creates a kv store and admits every other node; each gets a replica of A's log.
fn shared_store(nodes: &[Node]) -> Result<Vec<Store>, Box<dyn std::error::Error>> {
    let mut a = nodes[0].create_store(nodes[0].resolve_type("kv")?, "shared")?;
    for node in &nodes[1..] {
        a.system_call(
            "set-peer-status",
            &json!({"peer": node.key().public().to_string(), "status": "active"}),
        )?;
    }
    let mut stores = Vec::new();
    for node in &nodes[1..] {
        stores.push(replica_of(node, &a)?);
    }
    stores.insert(0, a);
    Ok(stores)
}

#[test]
fn the_creator_writes_epoch_zero_and_revocations_write_the_next() -> TestResult {
    let (_dirs, nodes) = open_nodes(3)?;
    let mut s = shared_store(&nodes)?;
    // Epoch 0 came with the store's first peer record, written by the creator; admitting
    // peers asks for none.
    assert_eq!(epochs_in(&s[0])?.len(), 1);
    let zero = s[0].epoch()?.ok_or("no epoch 0")?;
    assert_eq!(zero.number, 0);
    assert!(zero.settled());
    // B revokes C: B writes epoch 1 at once, which A and B must acknowledge.
    let ck = nodes[2].key().public();
    s[1].system_call(
        "set-peer-status",
        &json!({"peer": ck.to_string(), "status": "revoked", "cut": 0}),
    )?;
    let one = s[1].epoch()?.ok_or("no epoch 1")?;
    assert_eq!(one.number, 1);
    assert_eq!(one.waiting, vec![nodes[0].key().public()]);
    // A receives it and acknowledges: settled on both once B hears back.
    sync_into(&s[1], &s[0])?;
    s[0].project()?;
    assert!(s[0].epoch()?.ok_or("no epoch on A")?.settled());
    assert_eq!(acks_by(&s[0], nodes[0].key().public())?, 1);
    sync_into(&s[0], &s[1])?;
    s[1].project()?;
    let on_b = s[1].epoch()?.ok_or("no epoch on B")?;
    assert!(on_b.settled());
    // B stated the state at the epoch in it, A in its ack: the same hash, so it is final.
    assert!(on_b.finalized, "{on_b:?}");
    assert!(s[0].epoch()?.ok_or("no epoch on A")?.finalized);
    assert_eq!(s[0].epoch()?.and_then(|e| e.state), on_b.state);
    // A rewrite of B's chain below the finalized epoch is refused on ingest, by name.
    let b = &nodes[1];
    let fork = lattice_model::Intention::new(
        s[0].id(),
        b.key().public(),
        lattice_model::Hlc::new(1, 0),
        lattice_model::Hash::ZERO,
        vec![lattice_model::Hash(s[0].id().0)],
        b"rewritten".to_vec(),
        lattice_model::IntentionFlags::default(),
    )?;
    let fork = SignedIntention::sign(fork, b.key())?;
    let results = s[0]
        .log()
        .ingest(vec![lattice_log::Incoming::new(fork.as_bytes().to_vec())])?;
    assert!(
        matches!(
            results.as_slice(),
            [Err(lattice_log::IngestError::BelowFinal {
                position: 1,
                ..
            })]
        ),
        "{results:?}"
    );
    // Reopened, the store leaves the state at the epoch for its first flush (off the path to
    // the first answer); then it is the same as before.
    let id = s[1].id();
    let held = s[1].epoch()?.and_then(|e| e.state);
    let store = s.remove(1);
    store.close()?;
    let mut reopened = nodes[1].open_store(id)?;
    assert_eq!(reopened.epoch()?.and_then(|e| e.state), None);
    reopened.flush()?;
    assert_eq!(reopened.epoch()?.and_then(|e| e.state), held);
    assert!(held.is_some());
    s.insert(1, reopened);
    // A rebuild finds the same epochs and writes nothing new.
    let before = all_of(&s[1])?.len();
    s[1].rebuild()?;
    assert_eq!(all_of(&s[1])?.len(), before);
    assert_eq!(s[1].epoch()?.map(|e| e.hash), Some(one.hash));
    Ok(())
}

#[test]
fn a_revocation_keeps_what_the_revoker_saw_and_drops_the_rest_in_every_arrival_order() -> TestResult
{
    // A, B and C share a store. C writes c1, which everyone sees, then c2 and c3, which only
    // B sees; B writes b1 after them. A revokes C (claiming a cut of 0, which the frontier
    // overrides): c1 stays, c2 and c3 go, b1 stays.
    let (_dirs, nodes) = open_nodes(3)?;
    let mut s = shared_store(&nodes)?;
    s[2].call("put", &json!({"key": "c1", "value": "seen"}))?;
    sync_into(&s[2], &s[0])?;
    sync_into(&s[2], &s[1])?;
    s[0].project()?;
    let base = all_of(&s[0])?;
    s[2].call("put", &json!({"key": "c2", "value": "unseen"}))?;
    s[2].call("put", &json!({"key": "c3", "value": "unseen"}))?;
    sync_into(&s[2], &s[1])?;
    s[1].project()?;
    s[1].call("put", &json!({"key": "b1", "value": "kept"}))?;
    let ck = nodes[2].key().public().to_string();
    s[0].system_call(
        "set-peer-status",
        &json!({"peer": ck, "status": "revoked", "cut": 0}),
    )?;
    // The revoker's epoch cites everything it has: the state at the epoch is its live state.
    let at_epoch = s[0]
        .epoch()?
        .and_then(|e| e.state)
        .ok_or("no state at the epoch")?;
    assert_eq!(at_epoch, s[0].state_digest()?);
    let known: std::collections::HashSet<_> = base.iter().map(SignedIntention::hash).collect();
    let new_of = |store: &Store| -> Result<Vec<SignedIntention>, Box<dyn std::error::Error>> {
        Ok(all_of(store)?
            .into_iter()
            .filter(|i| !known.contains(&i.hash()))
            .collect())
    };
    // The units that arrive late: A's revocation and its epoch, C's two writes, B's write
    // (each alone, so an epoch can come before its revocation and c3 before c2).
    let mut units: Vec<SignedIntention> = new_of(&s[0])?;
    assert_eq!(units.len(), 2, "the revocation and its epoch");
    units.extend(new_of(&s[2])?);
    units.extend(new_of(&s[1])?.into_iter().filter(|i| {
        i.intention().author() == nodes[1].key().public() && !i.intention().flags().system
    }));
    assert_eq!(units.len(), 5);

    let expected = |store: &mut Store| -> TestResult {
        assert_eq!(value(store, "c1")?, "seen");
        assert_eq!(value(store, "c2")?, json!(null));
        assert_eq!(value(store, "c3")?, json!(null));
        assert_eq!(value(store, "b1")?, "kept");
        Ok(())
    };
    let mut digests = Vec::new();
    // One observer node (the module loads once); the store's files go after each order.
    let (_dir, observer) = open_nodes(1)?;
    let observer = &observer[0];
    observer.resolve_type("kv")?;
    for order in permutations(&(0..units.len()).collect::<Vec<_>>()) {
        for r in observer.ingest_replica(
            s[0].id(),
            base.iter()
                .map(|i| lattice_log::Incoming::new(i.as_bytes().to_vec()))
                .collect(),
        )? {
            r?;
        }
        let mut replica = observer.open_store(s[0].id())?;
        for &n in &order {
            feed(&replica, std::slice::from_ref(&units[n]))?;
            replica.project()?;
        }
        expected(&mut replica).map_err(|e| format!("order {order:?}: {e}"))?;
        digests.push(replica.state_digest()?);
        // The state at the epoch leaves out b1, which the epoch does not reach; it is the
        // same whatever the order.
        let epoch = replica.epoch()?.ok_or("no epoch")?;
        assert_eq!(epoch.state, Some(at_epoch), "order {order:?}");
        assert_ne!(epoch.state, Some(replica.state_digest()?));
        replica.close()?;
        std::fs::remove_dir_all(observer.dir().store_dir(&s[0].id()))?;
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "digests differ by order"
    );
    // The three nodes agree once they have everything.
    exchange(&s)?;
    for store in &mut s {
        store.project()?;
        expected(store)?;
        assert_eq!(store.state_digest()?, digests[0]);
    }
    Ok(())
}

#[test]
fn concurrent_epochs_are_both_valid_and_a_merge_epoch_cites_both() -> TestResult {
    // A and B revoke different peers at once: two epochs numbered 1.
    let (_dirs, nodes) = open_nodes(4)?;
    let mut s = shared_store(&nodes)?;
    let key = |n: usize| nodes[n].key().public().to_string();
    s[0].system_call(
        "set-peer-status",
        &json!({"peer": key(2), "status": "revoked", "cut": 0}),
    )?;
    s[1].system_call(
        "set-peer-status",
        &json!({"peer": key(3), "status": "revoked", "cut": 0}),
    )?;
    let ones: Vec<Hash> = [&s[0], &s[1]]
        .iter()
        .map(|x| x.epoch().map(|e| e.map(|e| e.hash)))
        .collect::<Result<Option<Vec<_>>, _>>()?
        .ok_or("no epoch")?;
    let (lower, greater) = (ones[0].min(ones[1]), ones[0].max(ones[1]));
    sync_into(&s[0], &s[1])?;
    sync_into(&s[1], &s[0])?;
    for store in &mut s[..2] {
        store.project()?;
        // Neither is refused.
        assert_eq!(store.rejected()?.len(), 0, "{:?}", store.rejected()?);
        let numbered_one = epochs_in(store)?.into_iter().filter(|(n, _)| *n == 1);
        assert_eq!(numbered_one.count(), 2);
    }
    // The member whose state at an epoch holds the lower one cannot move it sideways to the
    // greater (the current one): it writes a merge epoch, number 2, citing both. The other
    // holds the current epoch and simply waits for the merge.
    let merger = if ones[0] == lower { 0 } else { 1 };
    let merge = s[merger].epoch()?.ok_or("no epoch")?;
    assert_eq!(merge.number, 2, "{merge:?}");
    let other = &s[1 - merger];
    assert_eq!(other.epoch()?.ok_or("no epoch")?.hash, greater);
    assert!(other.epoch()?.ok_or("no epoch")?.state.is_some());
    // Once everyone has everything and acknowledged, the merge is the current epoch
    // everywhere, every member holds the same state at it, and it is final.
    for _ in 0..3 {
        exchange(&s)?;
        for store in &mut s {
            store.project()?;
        }
    }
    for store in &s[..2] {
        let now = store.epoch()?.ok_or("no epoch")?;
        assert_eq!(now.hash, merge.hash);
        for one in [lower, greater] {
            assert!(store.log().reader().is_ancestor(&one, &now.hash)?);
        }
        assert!(now.finalized, "{now:?}");
        assert_eq!(store.rejected()?.len(), 0);
    }
    assert_eq!(s[0].epoch_state_hash()?, s[1].epoch_state_hash()?);
    // The next epoch (A re-admits C) is number 3, accepted everywhere.
    s[0].system_call(
        "set-peer-status",
        &json!({"peer": key(2), "status": "active", "resume": 0}),
    )?;
    sync_into(&s[0], &s[1])?;
    s[1].project()?;
    for store in &s[..2] {
        assert_eq!(store.epoch()?.ok_or("no epoch")?.number, 3);
        assert_eq!(store.rejected()?.len(), 0);
    }
    Ok(())
}

#[test]
fn a_node_back_after_three_epochs_acknowledges_once_and_settles_them_all() -> TestResult {
    let (_dirs, nodes) = open_nodes(4)?;
    let mut s = shared_store(&nodes)?;
    // C names itself (a system write cites every tip, so its chain reaches epoch 0), then is
    // away while A revokes, re-admits and revokes D again: epochs 1, 2, 3 (B keeps up).
    let c = nodes[2].key().public().to_string();
    s[2].system_call("set-peer-name", &json!({"peer": c, "name": "c"}))?;
    sync_into(&s[2], &s[0])?;
    let d = nodes[3].key().public().to_string();
    for args in [
        json!({"peer": d, "status": "revoked", "cut": 0}),
        json!({"peer": d, "status": "active", "resume": 0}),
        json!({"peer": d, "status": "revoked", "cut": 0}),
    ] {
        s[0].system_call("set-peer-status", &args)?;
        sync_into(&s[0], &s[1])?;
        s[1].project()?;
        sync_into(&s[1], &s[0])?;
        s[0].project()?;
    }
    let three = s[0].epoch()?.ok_or("no epoch")?;
    assert_eq!(three.number, 3);
    let ck = nodes[2].key().public();
    assert_eq!(three.waiting, vec![ck]);
    // Status says who is behind, and by how much.
    let status = s[0].status()?;
    let lag = |status: &lattice_node::StoreStatus, key| {
        status.lag.iter().find(|l| l.peer == key).map(|l| l.behind)
    };
    assert_eq!(lag(&status, ck), Some(3));
    assert_eq!(lag(&status, nodes[1].key().public()), Some(0));
    assert!(status.log_bytes > 0 && status.state_bytes > 0);
    assert_eq!(status.to_json()["lag"].as_array().map(Vec::len), Some(3));
    // C returns and gets everything at once: one ack, for the newest epoch, settles it, and
    // (acknowledgement is transitive) every epoch before it.
    sync_into(&s[0], &s[2])?;
    s[2].project()?;
    assert_eq!(acks_by(&s[2], ck)?, 1);
    sync_into(&s[2], &s[0])?;
    s[0].project()?;
    assert!(s[0].epoch()?.ok_or("no epoch")?.settled());
    assert_eq!(lag(&s[0].status()?, ck), Some(0));
    let reader = s[0].log().reader();
    let c_tip = reader.tip(&ck)?.ok_or("no tip for C")?;
    for (_, epoch) in epochs_in(&s[0])? {
        assert!(reader.is_ancestor(&epoch, &c_tip)?);
    }
    Ok(())
}

#[test]
fn host_intentions_reach_no_guest() -> TestResult {
    use lattice_model::{EpochCause, Hash, HostOp, IntentionFlags};
    let dir = tempfile::tempdir()?;
    let node = Node::open(DataDir::new(dir.path()))?;
    let kv = node.resolve_type("kv")?;
    let mut store = node.create_store(kv, "epochs")?;
    store.call("put", &json!({"key": "a", "value": "1"}))?;
    let digest = store.state_digest()?;
    let reader = store.log().reader();
    let mut deps: Vec<Hash> = reader.tips()?.into_iter().map(|(_, h)| h).collect();
    deps.push(Hash(store.id().0));
    // The store's creation wrote epoch 0, settled at once (the creator's own).
    let first = store.epoch()?.ok_or("no epoch 0")?;
    assert_eq!(first.number, 0);
    assert!(first.settled());
    let acker = lattice_model::NodeKey::from_seed([42; 32]);
    let epoch = HostOp::Epoch {
        number: 1,
        cause: EpochCause::Genesis,
        state: Hash::ZERO,
        required: vec![acker.public()],
    };
    let system_host = IntentionFlags {
        system: true,
        host: true,
        ..IntentionFlags::default()
    };
    let written = store.log().author(lattice_log::Draft {
        ops: epoch.encode(),
        deps,
        flags: system_host,
    })?;
    // A system write that is not the system guest's encoding: the guest would reject it.
    let system = IntentionFlags {
        system: true,
        ..IntentionFlags::default()
    };
    let plain = store.log().author(lattice_log::Draft {
        ops: epoch.encode(),
        deps: vec![],
        flags: system,
    })?;
    // Epochs whose number skips one, or that do not cite the genesis, are refused.
    let skipping = store.log().author(lattice_log::Draft {
        ops: HostOp::Epoch {
            number: 3,
            cause: EpochCause::Revocation,
            state: Hash::ZERO,
            required: vec![],
        }
        .encode(),
        deps: vec![Hash(store.id().0), written.hash],
        flags: system_host,
    })?;
    let rootless = store.log().author(lattice_log::Draft {
        ops: HostOp::Epoch {
            number: 2,
            cause: EpochCause::Revocation,
            state: Hash::ZERO,
            required: vec![],
        }
        .encode(),
        deps: vec![written.hash],
        flags: system_host,
    })?;
    store.project()?;
    let status = store.status()?;
    assert_eq!(status.projected, status.witnessed);
    let rejected = |store: &lattice_node::Store| -> Result<Vec<u64>, NodeError> {
        let mut seqs: Vec<u64> = store.rejected_details(100)?.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        Ok(seqs)
    };
    // Only the copy without the host flag reached the system guest (which refused it); the
    // two bad epochs were refused by the host, with the reason.
    let refused = vec![plain.seq, skipping.seq, rootless.seq];
    assert_eq!(rejected(&store)?, refused);
    let reasons = store.rejected_details(100)?;
    let reason_of = |seq: u64| {
        reasons
            .iter()
            .find(|r| r.seq == seq)
            .map(|r| r.reason.clone())
    };
    assert!(
        reason_of(skipping.seq).is_some_and(|r| r.contains("make it 2")),
        "{reasons:?}"
    );
    assert!(
        reason_of(rootless.seq).is_some_and(|r| r.contains("genesis")),
        "{reasons:?}"
    );
    assert_eq!(store.state_digest()?, digest);
    // The epoch is current and waits for its one required acker, who has written nothing.
    let current = store.epoch()?.ok_or("no current epoch")?;
    assert_eq!(
        (current.number, current.hash, current.waiting.clone()),
        (1, written.hash, vec![acker.public()])
    );
    assert!(!current.settled());
    let status = store.status()?;
    assert_eq!(status.epoch.as_ref(), Some(&current));
    assert_eq!(status.to_json()["epoch"]["settled"], false);
    store.rebuild()?;
    assert_eq!(rejected(&store)?, refused);
    assert_eq!(store.state_digest()?, digest);
    assert_eq!(store.epoch()?, Some(current));

    // The acker's ack cites the epoch: its chain reaches it, the epoch is settled.
    let hlc = store
        .log()
        .reader()
        .hlc_of(&written.hash)?
        .ok_or("no hlc")?;
    let ack = lattice_model::Intention::new(
        store.id(),
        acker.public(),
        lattice_model::Hlc::new(hlc.wall_ms + 1, 0),
        Hash::ZERO,
        vec![written.hash],
        HostOp::Ack {
            epochs: vec![written.hash],
            state: Hash::ZERO,
        }
        .encode(),
        system_host,
    )?;
    let ack = lattice_model::SignedIntention::sign(ack, &acker)?;
    feed(&store, std::slice::from_ref(&ack))?;
    store.project()?;
    let settled = store.epoch()?.ok_or("no current epoch")?;
    assert!(settled.settled(), "still waiting for {:?}", settled.waiting);
    // The acker is no member here: its host intention is refused like any stranger's write.
    let ack_seq = rootless.seq + 1;
    assert_eq!(
        rejected(&store)?,
        vec![plain.seq, skipping.seq, rootless.seq, ack_seq]
    );
    assert!(
        store
            .rejected_details(100)?
            .iter()
            .any(|r| r.seq == ack_seq && r.author == acker.public())
    );
    Ok(())
}

#[test]
fn a_required_peer_acknowledges_an_epoch_once_and_settles_it() -> TestResult {
    use lattice_model::{EpochCause, Hash, HostOp, IntentionFlags};
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = Node::open(DataDir::new(dirs[0].path()))?;
    let b = Node::open(DataDir::new(dirs[1].path()))?;
    let mut sa = a.create_store(a.resolve_type("kv")?, "shared")?;
    let bk = b.key().public();
    sa.system_call(
        "set-peer-status",
        &json!({"peer": bk.to_string(), "status": "active"}),
    )?;
    let mut deps: Vec<Hash> = sa
        .log()
        .reader()
        .tips()?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    deps.push(Hash(sa.id().0));
    let epoch = sa.log().author(lattice_log::Draft {
        ops: HostOp::Epoch {
            number: 1,
            cause: EpochCause::Genesis,
            state: Hash::ZERO,
            required: vec![bk],
        }
        .encode(),
        deps,
        flags: IntentionFlags {
            system: true,
            host: true,
            ..IntentionFlags::default()
        },
    })?;
    sa.project()?;
    assert_eq!(sa.epoch()?.ok_or("no epoch on A")?.waiting, vec![bk]);

    // B opens its replica: projecting the epoch that names it writes its ack, once.
    b.resolve_type("kv")?;
    let mut sb = replica_of(&b, &sa)?;
    let acks = |store: &lattice_node::Store| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(all_of(store)?
            .iter()
            .filter(|s| {
                s.intention().author() == bk
                    && HostOp::decode(s.intention().ops()).is_ok_and(
                        |op| matches!(op, HostOp::Ack { epochs, .. } if epochs == vec![epoch.hash]),
                    )
            })
            .count())
    };
    assert_eq!(acks(&sb)?, 1);
    let on_b = sb.epoch()?.ok_or("no epoch on B")?;
    assert!(on_b.settled() && on_b.hash == epoch.hash);
    sb.project()?;
    sb.call("put", &json!({"key": "k", "value": "v"}))?;
    assert_eq!(acks(&sb)?, 1, "one ack per epoch");

    // A receives it: the epoch is settled there too, and A wrote no ack of its own.
    sync_into(&sb, &sa)?;
    sa.project()?;
    assert!(sa.epoch()?.ok_or("no epoch on A")?.settled());
    assert_eq!(sa.rejected_details(100)?.len(), 0);
    Ok(())
}

#[test]
fn what_a_concurrent_epoch_reached_is_never_taken_back_by_a_revocation() -> TestResult {
    // C writes c2, which B sees and A does not. A revokes C while B, not knowing, revokes D:
    // B's epoch reaches c2, so c2 stays even though A's revocation does not reach it; c3,
    // which C writes after and no epoch reaches, goes.
    let (_dirs, nodes) = open_nodes(4)?;
    let mut s = shared_store(&nodes)?;
    let key = |n: usize| nodes[n].key().public().to_string();
    s[2].call("put", &json!({"key": "c2", "value": "seen by b"}))?;
    sync_into(&s[2], &s[1])?;
    s[1].project()?;
    s[0].system_call(
        "set-peer-status",
        &json!({"peer": key(2), "status": "revoked", "cut": 0}),
    )?;
    s[1].system_call(
        "set-peer-status",
        &json!({"peer": key(3), "status": "revoked", "cut": 0}),
    )?;
    s[2].call("put", &json!({"key": "c3", "value": "after"}))?;
    exchange(&s[..3])?;
    let mut digests = Vec::new();
    for store in &mut s[..2] {
        store.project()?;
        assert_eq!(value(store, "c2")?, "seen by b");
        assert_eq!(value(store, "c3")?, json!(null));
        digests.push(store.state_digest()?);
        store.rebuild()?;
        assert_eq!(store.state_digest()?, digests[digests.len() - 1]);
    }
    assert_eq!(digests[0], digests[1]);
    Ok(())
}

#[test]
fn an_ack_stating_another_state_is_reported_and_blocks_finality() -> TestResult {
    use lattice_model::{Hash, Hlc, IntentionFlags, SignedIntention};
    let (_dirs, nodes) = open_nodes(3)?;
    let mut s = shared_store(&nodes)?;
    // A revokes C: epoch 1 needs A and B. B acknowledges with a state hash of its own making.
    s[0].system_call(
        "set-peer-status",
        &json!({"peer": nodes[2].key().public().to_string(), "status": "revoked", "cut": 0}),
    )?;
    let epoch = s[0].epoch()?.ok_or("no epoch")?;
    let hlc = s[0].log().reader().hlc_of(&epoch.hash)?.ok_or("no hlc")?;
    let b = &nodes[1];
    let prev = s[0]
        .log()
        .reader()
        .tip(&b.key().public())?
        .unwrap_or(Hash::ZERO);
    let forged = lattice_model::Intention::new(
        s[0].id(),
        b.key().public(),
        Hlc::new(hlc.wall_ms + 1, 0),
        prev,
        vec![epoch.hash],
        HostOp::Ack {
            epochs: vec![epoch.hash],
            state: Hash([0xee; 32]),
        }
        .encode(),
        IntentionFlags {
            system: true,
            host: true,
            ..IntentionFlags::default()
        },
    )?;
    feed(&s[0], &[SignedIntention::sign(forged, b.key())?])?;
    s[0].project()?;
    let status = s[0].epoch()?.ok_or("no epoch")?;
    assert!(status.settled());
    assert_eq!(status.disagreeing, vec![b.key().public()]);
    assert!(!status.finalized);
    assert_eq!(
        s[0].status()?.to_json()["epoch"]["disagreeing"][0],
        b.key().public().to_string()
    );
    Ok(())
}
