//! Pruning against real redb files: what goes and what stays below an epoch, the sync
//! index's sums after deletion, refusing pruned intentions sent again, writing on after a
//! prune, reopening and verifying a pruned log, and a later pass taking what an earlier one kept.

mod common;
use common::add256;

use std::collections::HashSet;
use std::sync::Arc;

use lattice_log::{
    Draft, Incoming, IngestError, Ingested, Log, LogConfig, PruneTarget, RootedItem, build_genesis,
    system_now_ms,
};
use lattice_model::{Hash, Hlc, Intention, IntentionFlags, NodeKey, SignedIntention, StoreId};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn foreign(
    key: &NodeKey,
    store: StoreId,
    prev: Hash,
    deps: Vec<Hash>,
) -> Result<SignedIntention, Box<dyn std::error::Error>> {
    // Dated after everything witnessed so far (a chain's dates increase).
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let hlc = Hlc::new(
        system_now_ms() + 1,
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    );
    let i = Intention::new(
        store,
        key.public(),
        hlc,
        prev,
        deps,
        b"b".to_vec(),
        IntentionFlags::default(),
    )?;
    Ok(SignedIntention::sign(i, key)?)
}

fn ingest_one(
    log: &Log,
    signed: &SignedIntention,
) -> Result<Result<Ingested, IngestError>, Box<dyn std::error::Error>> {
    let mut results = log.ingest(vec![Incoming::new(signed.as_bytes().to_vec())])?;
    results.pop().ok_or_else(|| "no result".into())
}

fn epoch(log: &Log, deps: Vec<Hash>) -> Result<Hash, Box<dyn std::error::Error>> {
    let flags = IntentionFlags {
        system: true,
        ..IntentionFlags::default()
    };
    Ok(log
        .author(Draft {
            ops: b"epoch".to_vec(),
            deps,
            flags,
        })?
        .hash)
}

fn prune(log: &Log, epoch: Hash, keep: &[Hash]) -> Result<u64, Box<dyn std::error::Error>> {
    let keep: HashSet<Hash> = keep.iter().copied().collect();
    let step = log.prune(PruneTarget {
        epoch,
        keep: Arc::new(move |h| keep.contains(h)),
        step: 700,
    })?;
    assert!(step.done);
    Ok(step.deleted)
}

/// The sync index holds exactly `expected`, and its sums are theirs.
fn check_sync_index(log: &Log, expected: &[Hash]) -> TestResult {
    let snap = log.reader().sync_snapshot()?;
    assert_eq!(snap.len(), expected.len() as u64);
    let mut sum = [0u8; 32];
    for h in expected {
        add256(&mut sum, h.as_bytes());
    }
    assert_eq!(snap.sum(0, snap.len())?, sum);
    let mut seen = HashSet::new();
    snap.for_each(0, snap.len(), &mut |(_, h), _| {
        seen.insert(Hash(h));
        true
    })?;
    assert_eq!(seen, expected.iter().copied().collect());
    Ok(())
}

#[test]
fn pruning_deletes_what_lies_below_the_epoch_and_keeps_what_is_needed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.db");
    let node = NodeKey::from_seed([1; 32]);
    let other = NodeKey::from_seed([2; 32]);
    let genesis = build_genesis(&node, b"test".to_vec(), system_now_ms())?;
    let store = StoreId::from(genesis.hash());
    let log = Log::open(&path, store, node.clone(), LogConfig::default())?;
    log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;

    // Another author's chain of three, then 5,000 of our own writes (several sync buckets).
    let b1 = foreign(&other, store, Hash::ZERO, vec![genesis.hash()])?;
    let b2 = foreign(&other, store, b1.hash(), vec![])?;
    let b3 = foreign(&other, store, b2.hash(), vec![])?;
    for b in [&b1, &b2, &b3] {
        assert!(matches!(
            ingest_one(&log, b)?,
            Ok(Ingested::Witnessed { .. })
        ));
    }
    let pending: Vec<_> = (0..5000u32)
        .map(|i| {
            log.submit_author(Draft {
                ops: i.to_le_bytes().to_vec(),
                ..Draft::default()
            })
        })
        .collect();
    let mut writes = Vec::new();
    for p in pending {
        writes.push(p.wait()??.hash);
    }
    let e1 = epoch(&log, vec![genesis.hash(), b3.hash()])?;
    let size_before = std::fs::metadata(&path)?.len();

    // Two writes the state still names stay; so do the genesis, the epoch and b3 (the other
    // author's boundary: its next intention names it).
    let kept = [writes[100], writes[4000]];
    assert_eq!(prune(&log, e1, &kept)?, 5000 - 2 + 2);
    let remaining = [genesis.hash(), b3.hash(), writes[100], writes[4000], e1];
    assert_eq!(log.reader().witnessed_count()?, remaining.len() as u64);
    for h in remaining {
        assert!(log.reader().get(&h)?.is_some(), "{h:?} was kept");
    }
    for h in [writes[0], writes[4999], b1.hash(), b2.hash()] {
        assert!(log.reader().get(&h)?.is_none());
    }
    check_sync_index(&log, &remaining)?;
    let report = log.reader().verify(|_, _| {})?;
    assert!(report.pruned_gaps >= 1);
    assert_eq!(report.intentions, remaining.len() as u64);

    // Sent again, a pruned intention is refused as such, not floated.
    for gone in [&b1, &b2] {
        assert!(matches!(
            ingest_one(&log, gone)?,
            Err(IngestError::Pruned { .. })
        ));
    }
    assert_eq!(log.reader().status()?.floating, 0);

    // Writing goes on: our next write continues from the epoch and may cite a kept write;
    // the other author's next continues from its boundary. DAG queries walk past the gap.
    let x = log
        .author(Draft {
            ops: b"after".to_vec(),
            deps: vec![writes[4000]],
            ..Draft::default()
        })?
        .hash;
    let b4 = foreign(&other, store, b3.hash(), vec![x])?;
    assert!(matches!(
        ingest_one(&log, &b4)?,
        Ok(Ingested::Witnessed { .. })
    ));
    assert!(log.reader().is_ancestor(&genesis.hash(), &b4.hash())?);
    assert!(log.reader().is_ancestor(&writes[100], &x)?);
    let reach = log.reader().reach(&b4.hash())?;
    assert!(reach.contains(&(other.public(), 4)));

    // A second pass below the same epoch finds nothing more.
    assert_eq!(prune(&log, e1, &kept)?, 0);

    // Reopening compacts the file and checks the tail across the gap; verify still passes.
    log.close()?;
    let log = Log::open(&path, store, node.clone(), LogConfig::default())?;
    log.reader().verify(|_, _| {})?;
    let size_after = std::fs::metadata(&path)?.len();
    assert!(
        size_after * 2 < size_before,
        "the file shrinks: {size_before} → {size_after} bytes"
    );

    // A later epoch with nothing kept takes the writes the first pass kept and b3 (b4 is the
    // other author's boundary now).
    let e2 = epoch(&log, vec![genesis.hash(), b4.hash()])?;
    assert_eq!(prune(&log, e2, &[])?, 4);
    let remaining = [genesis.hash(), e1, b4.hash(), e2];
    assert_eq!(log.reader().witnessed_count()?, remaining.len() as u64);
    check_sync_index(&log, &remaining)?;
    log.reader().verify(|_, _| {})?;
    Ok(())
}

/// Every intention `log` holds, in its witness order, with its chain position.
fn held(log: &Log) -> Result<Vec<RootedItem>, Box<dyn std::error::Error>> {
    let reader = log.reader();
    let mut out = Vec::new();
    for (_, signed) in reader.witnessed(1, usize::MAX)? {
        let position = reader
            .dag_info(&signed.hash())?
            .ok_or("held without dag info")?
            .author_seq;
        out.push(RootedItem {
            bytes: signed.as_bytes().to_vec(),
            position,
        });
    }
    Ok(out)
}

#[test]
fn a_fresh_log_roots_on_a_pruned_logs_floor_and_goes_on_from_there() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = NodeKey::from_seed([1; 32]);
    let other = NodeKey::from_seed([2; 32]);
    let genesis = build_genesis(&node, b"test".to_vec(), system_now_ms())?;
    let store = StoreId::from(genesis.hash());
    let log = Log::open(
        &dir.path().join("log.db"),
        store,
        node.clone(),
        LogConfig::default(),
    )?;
    log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
    let b1 = foreign(&other, store, Hash::ZERO, vec![genesis.hash()])?;
    let b2 = foreign(&other, store, b1.hash(), vec![])?;
    ingest_one(&log, &b1)??;
    ingest_one(&log, &b2)??;
    let mut writes = Vec::new();
    for i in 0..300u32 {
        writes.push(
            log.author(Draft {
                ops: i.to_le_bytes().to_vec(),
                ..Draft::default()
            })?
            .hash,
        );
    }
    let e1 = epoch(&log, vec![genesis.hash(), b2.hash()])?;
    // The tail: writes after the epoch, one citing a kept write below it, and the other
    // author's next citing a write that gets pruned (a dep pruned under a held intention).
    let t1 = log
        .author(Draft {
            ops: b"t1".to_vec(),
            deps: vec![writes[50]],
            ..Draft::default()
        })?
        .hash;
    let b3 = foreign(&other, store, b2.hash(), vec![writes[299]])?;
    ingest_one(&log, &b3)??;
    prune(&log, e1, &[writes[50]])?;
    assert!(log.reader().get(&writes[299])?.is_none());
    let floor = log.reader().prune_floor()?;
    let items = held(&log)?;

    // A fresh log on another node, rooted on the floor with what the pruned log holds.
    let joiner = Log::open(
        &dir.path().join("joiner.db"),
        store,
        NodeKey::from_seed([3; 32]),
        LogConfig::default(),
    )?;
    for chunk in items.chunks(3) {
        for r in joiner.root(&floor, chunk.to_vec())? {
            assert!(matches!(r?, Ingested::Witnessed { .. }));
        }
    }
    let (source, rooted) = (log.reader(), joiner.reader());
    assert_eq!(rooted.witnessed_count()?, source.witnessed_count()?);
    assert_eq!(rooted.tips()?, source.tips()?);
    assert_eq!(rooted.prune_floor()?, floor);
    for item in &items {
        let hash = SignedIntention::decode(&item.bytes)?.hash();
        assert_eq!(
            rooted.reach(&hash)?,
            source.reach(&hash)?,
            "reach of {hash:?}"
        );
        assert_eq!(
            rooted.dag_info(&hash)?.map(|i| i.author_seq),
            Some(item.position)
        );
    }
    assert!(rooted.is_ancestor(&writes[50], &t1)?);
    assert!(rooted.is_ancestor(&e1, &t1)?);
    rooted.verify(|_, _| {})?;

    // Rooting again with the same items changes nothing; another floor is refused.
    for r in joiner.root(&floor, items.clone())? {
        assert_eq!(r?, Ingested::Duplicate);
    }
    let mut other_floor = floor.clone();
    other_floor[0].1 += 1;
    for r in joiner.root(&other_floor, items[..1].to_vec())? {
        assert!(matches!(r, Err(IngestError::Unrooted { .. })));
    }

    // It goes on like any log: the other author's next write is witnessed, a pruned
    // intention sent again is refused as pruned, and its own writes continue.
    let b4 = foreign(&other, store, b3.hash(), vec![t1])?;
    assert!(matches!(
        ingest_one(&joiner, &b4)?,
        Ok(Ingested::Witnessed { .. })
    ));
    assert!(matches!(
        ingest_one(&joiner, &b1)?,
        Err(IngestError::Pruned { .. })
    ));
    joiner.author(Draft {
        ops: b"mine".to_vec(),
        deps: vec![b4.hash()],
        ..Draft::default()
    })?;
    joiner.close()?;
    let joiner = Log::open(
        &dir.path().join("joiner.db"),
        store,
        NodeKey::from_seed([3; 32]),
        LogConfig::default(),
    )?;
    joiner.reader().verify(|_, _| {})?;

    // What cannot stand on the floor is refused: a stated position past the author's
    // boundary, and an intention whose predecessor is missing above the floor.
    let fresh = Log::open(
        &dir.path().join("fresh.db"),
        store,
        NodeKey::from_seed([4; 32]),
        LogConfig::default(),
    )?;
    let kept = items
        .iter()
        .find(|i| SignedIntention::decode(&i.bytes).is_ok_and(|s| s.hash() == writes[50]))
        .ok_or("the kept write is held")?
        .clone();
    let tail = items
        .iter()
        .find(|i| SignedIntention::decode(&i.bytes).is_ok_and(|s| s.hash() == t1))
        .ok_or("the tail write is held")?
        .clone();
    let too_far = RootedItem {
        position: 10_000,
        ..kept
    };
    let results = fresh.root(&floor, vec![items[0].clone(), too_far, tail])?;
    assert!(matches!(results[0], Ok(Ingested::Witnessed { .. })));
    assert!(matches!(results[1], Err(IngestError::Unrooted { .. })));
    assert!(matches!(results[2], Err(IngestError::Unrooted { .. })));
    Ok(())
}
