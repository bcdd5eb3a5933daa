//! DAG queries against a naive reference on random multi-author DAGs, and delivery-order
//! independence: any permutation (with duplicates) of a DAG ends fully witnessed with the
//! same author tips. Seeds are printed so a failure can be replayed.

use std::collections::{BTreeSet, HashMap, HashSet};

use lattice_log::{Incoming, Ingested, Log, LogConfig, SplitMix64, SyntheticDag};
use lattice_model::{Hash, NodeKey, PubKey, SignedIntention};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn generate(seed: u64, n: usize, authors: usize) -> (SyntheticDag, Vec<SignedIntention>) {
    let mut dag = SyntheticDag::new(seed, authors, 3, 8);
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..n).map(|_| dag.next_intention()));
    (dag, all)
}

fn open(
    dag: &SyntheticDag,
    dir: &tempfile::TempDir,
    config: LogConfig,
) -> Result<Log, Box<dyn std::error::Error>> {
    Ok(Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([42; 32]),
        config,
    )?)
}

/// Ancestors-or-self by plain graph search.
fn ancestors(parents: &HashMap<Hash, Vec<Hash>>, of: Hash) -> HashSet<Hash> {
    let mut seen = HashSet::from([of]);
    let mut stack = vec![of];
    while let Some(h) = stack.pop() {
        for p in &parents[&h] {
            if seen.insert(*p) {
                stack.push(*p);
            }
        }
    }
    seen
}

/// Each intention's parents (`prev` and deps).
fn parents_of(all: &[SignedIntention]) -> HashMap<Hash, Vec<Hash>> {
    all.iter()
        .map(|s| (s.hash(), s.intention().parents().collect()))
        .collect()
}

/// Each intention's position in its author's chain (intentions come parents first).
fn chain_positions(all: &[SignedIntention]) -> HashMap<Hash, u64> {
    let mut pos: HashMap<Hash, u64> = HashMap::new();
    for s in all {
        let prev = s.intention().prev();
        let p = if prev.is_zero() { 1 } else { pos[&prev] + 1 };
        pos.insert(s.hash(), p);
    }
    pos
}

/// What `reach` must answer: per author, the highest chain position among ancestors-or-self.
fn naive_reach(
    all: &[SignedIntention],
    positions: &HashMap<Hash, u64>,
    ancestors: &HashSet<Hash>,
) -> Vec<(PubKey, u64)> {
    let mut best: HashMap<PubKey, u64> = HashMap::new();
    for s in all.iter().filter(|s| ancestors.contains(&s.hash())) {
        let slot = best.entry(s.intention().author()).or_insert(0);
        *slot = (*slot).max(positions[&s.hash()]);
    }
    let mut out: Vec<_> = best.into_iter().collect();
    out.sort_unstable();
    out
}

fn check_queries(seed: u64, n: usize, authors: usize, probes: usize) -> TestResult {
    let (dag, all) = generate(seed, n, authors);
    let dir = tempfile::tempdir()?;
    let log = open(&dag, &dir, LogConfig::default())?;
    log.ingest(
        all.iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect(),
    )?;
    let parents = parents_of(&all);
    let positions = chain_positions(&all);
    let reader = log.reader();
    let mut rng = SplitMix64::new(seed ^ 0xDA6);
    for _ in 0..probes {
        let a = all[rng.below(all.len())].hash();
        let b = all[rng.below(all.len())].hash();
        let anc_a = ancestors(&parents, a);
        let anc_b = ancestors(&parents, b);
        assert_eq!(
            reader.reach(&b)?,
            naive_reach(&all, &positions, &anc_b),
            "seed {seed}: reach"
        );
        assert_eq!(
            reader.is_ancestor(&a, &b)?,
            anc_b.contains(&a),
            "seed {seed}: is_ancestor"
        );
        // lca: a common ancestor that no other common ancestor descends from.
        let common: HashSet<Hash> = anc_a.intersection(&anc_b).copied().collect();
        match reader.lca(&a, &b)? {
            None => assert!(common.is_empty(), "seed {seed}: lca missed"),
            Some(l) => {
                assert!(common.contains(&l), "seed {seed}: lca not common");
                for c in &common {
                    if *c != l {
                        assert!(
                            !ancestors(&parents, *c).contains(&l),
                            "seed {seed}: {c:?} is a lower common ancestor than {l:?}"
                        );
                    }
                }
            }
        }
        // path: ancestors(b) \ ancestors(a), every parent before its child.
        let path = reader.path(&a, &b)?;
        let expected: BTreeSet<Hash> = anc_b.difference(&anc_a).copied().collect();
        assert_eq!(
            path.iter().copied().collect::<BTreeSet<_>>(),
            expected,
            "seed {seed}: path set"
        );
        assert_eq!(path.len(), expected.len(), "seed {seed}: path duplicates");
        let pos: HashMap<Hash, usize> = path.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        for (i, h) in path.iter().enumerate() {
            for p in &parents[h] {
                if let Some(j) = pos.get(p) {
                    assert!(*j < i, "seed {seed}: path not topological");
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn dag_queries_agree_with_a_naive_reference(seed in any::<u64>(), n in 1usize..150, authors in 1usize..6) {
        check_queries(seed, n, authors, 40).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

#[test]
fn dag_queries_agree_on_a_deep_dag_with_checkpoints() -> TestResult {
    // Long enough that every author passes several checkpoints.
    check_queries(7, 1500, 3, 300)
}

#[test]
fn reach_agrees_on_a_dag_longer_than_the_frontier_cache() -> TestResult {
    // More intentions than the writer caches frontiers for, with dependencies reaching far
    // back, so frontiers are also read down chains from raises and checkpoints.
    let mut dag = SyntheticDag::new(23, 4, 3, 8).with_old_deps();
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..6000).map(|_| dag.next_intention()));
    let dir = tempfile::tempdir()?;
    let log = open(&dag, &dir, LogConfig::default())?;
    for chunk in all.chunks(500) {
        log.ingest(
            chunk
                .iter()
                .map(|s| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )?;
    }
    let parents = parents_of(&all);
    let positions = chain_positions(&all);
    let reader = log.reader();
    let mut rng = SplitMix64::new(23);
    for _ in 0..60 {
        let b = all[rng.below(all.len())].hash();
        let expected = naive_reach(&all, &positions, &ancestors(&parents, b));
        assert_eq!(reader.reach(&b)?, expected, "reach of {b:?}");
    }
    Ok(())
}

#[test]
fn any_delivery_order_ends_fully_witnessed_with_identical_tips() -> TestResult {
    let seed = std::env::var("LATTICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001_u64);
    let (dag, all) = generate(seed, 1200, 5);
    let mut reference_tips = None;
    let mut rng = SplitMix64::new(seed);
    for round in 0..8 {
        let mut order: Vec<usize> = (0..all.len()).collect();
        rng.shuffle(&mut order);
        // Add duplicates at random places.
        for _ in 0..100 {
            let i = rng.below(all.len());
            let at = rng.below(order.len());
            order.insert(at, i);
        }
        let dir = tempfile::tempdir()?;
        let log = open(&dag, &dir, LogConfig::default())?;
        let mut pos = 0;
        while pos < order.len() {
            let take = 1 + rng.below(200);
            let chunk: Vec<Incoming> = order[pos..(pos + take).min(order.len())]
                .iter()
                .map(|&i| Incoming::new(all[i].as_bytes().to_vec()))
                .collect();
            pos += take;
            for r in log.ingest(chunk)? {
                assert!(r.is_ok(), "seed {seed} round {round}: {r:?}");
            }
        }
        let status = log.reader().status()?;
        assert_eq!(
            status.head_seq,
            all.len() as u64,
            "seed {seed} round {round}"
        );
        assert_eq!(status.floating, 0, "seed {seed} round {round}");
        let tips = log.reader().tips()?;
        match &reference_tips {
            None => reference_tips = Some(tips),
            Some(t) => assert_eq!(t, &tips, "seed {seed} round {round}: tips differ"),
        }
        log.reader().verify(|_, _| {})?;
        // Every intention ingested again is a duplicate.
        let again = log.ingest(vec![Incoming::new(
            all[rng.below(all.len())].as_bytes().to_vec(),
        )])?;
        assert_eq!(again, vec![Ok(Ingested::Duplicate)]);
    }
    Ok(())
}
