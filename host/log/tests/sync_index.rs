//! The sync index against a naive sorted list: rank, range sums and lower bounds stay right
//! across bucket splits and any delivery order, and floating intentions are never indexed.

mod common;
use common::add256;

use lattice_log::{Incoming, Log, LogConfig, SplitMix64, SyntheticDag};
use lattice_model::NodeKey;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn snapshot_queries_match_a_naive_sorted_list() -> TestResult {
    let seed = 0x51C0;
    let mut dag = SyntheticDag::new(seed, 4, 2, 4);
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..5000).map(|_| dag.next_intention()));
    let mut order: Vec<usize> = (0..all.len()).collect();
    let mut rng = SplitMix64::new(seed);
    rng.shuffle(&mut order);
    let dir = tempfile::tempdir()?;
    let log = Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([3; 32]),
        LogConfig::default(),
    )?;
    // Everything but the last 50 intentions: some of those float while their deps are missing.
    for chunk in order.chunks(300) {
        log.ingest(
            chunk
                .iter()
                .map(|&i| Incoming::new(all[i].as_bytes().to_vec()))
                .collect(),
        )?;
    }
    log.settle()?;
    let witnessed = log.reader().status()?.head_seq;
    assert_eq!(witnessed, all.len() as u64);

    let mut naive: Vec<(u64, [u8; 32])> = all
        .iter()
        .map(|s| (s.intention().hlc().wall_ms, *s.hash().as_bytes()))
        .collect();
    naive.sort();
    let snap = log.reader().sync_snapshot()?;
    assert_eq!(snap.len(), naive.len() as u64);
    for _ in 0..200 {
        let i = rng.below(naive.len()) as u64;
        assert_eq!(
            snap.item(i)?,
            Some(naive[i as usize]),
            "seed {seed} item {i}"
        );
        let a = rng.below(naive.len() + 1) as u64;
        let b = rng.below(naive.len() + 1) as u64;
        let (a, b) = (a.min(b), a.max(b));
        let mut expect = [0u8; 32];
        for (_, h) in &naive[a as usize..b as usize] {
            add256(&mut expect, h);
        }
        assert_eq!(snap.sum(a, b)?, expect, "seed {seed} sum {a}..{b}");
        let probe = naive[rng.below(naive.len())];
        let want = naive.partition_point(|x| *x < probe) as u64;
        assert_eq!(
            snap.lower_bound(0, snap.len(), probe.0, &probe.1)?,
            want,
            "seed {seed} lower bound"
        );
    }
    let mut n = 0;
    snap.for_each(0, u64::MAX, &mut |item, i| {
        assert_eq!(item, naive[i as usize]);
        n += 1;
        true
    })?;
    assert_eq!(n, naive.len());
    Ok(())
}

#[test]
fn floating_intentions_are_not_indexed() -> TestResult {
    let mut dag = SyntheticDag::new(9, 2, 1, 4);
    let items: Vec<_> = (0..20).map(|_| dag.next_intention()).collect();
    let dir = tempfile::tempdir()?;
    let log = Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([3; 32]),
        LogConfig::default(),
    )?;
    log.ingest(
        items
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect(),
    )?;
    assert_eq!(log.reader().sync_snapshot()?.len(), 0);
    log.ingest(vec![Incoming::new(dag.genesis().as_bytes().to_vec())])?;
    log.settle()?;
    assert_eq!(log.reader().sync_snapshot()?.len(), 21);
    Ok(())
}
