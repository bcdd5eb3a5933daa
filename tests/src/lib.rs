//! Shared helpers of Lattice's cross-crate integration tests.
#![deny(missing_docs)]

pub mod fuzz;

use lattice_log::{SplitMix64, SyntheticDag};
use lattice_model::{NodeKey, SignedIntention};

/// The node key the crash-test writer witnesses with.
pub fn crash_node_key() -> NodeKey {
    NodeKey::from_seed([9; 32])
}

/// The foreign workload of the crash test: a synthetic store and its intentions (genesis
/// first), identical in the parent and the child for the same seed.
pub fn crash_workload(seed: u64, count: usize) -> (SyntheticDag, Vec<SignedIntention>) {
    let mut dag = SyntheticDag::new(seed, 3, 2, 24);
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..count).map(|_| dag.next_intention()));
    (dag, all)
}

/// The delivery order the child uses in one round (a seeded shuffle, genesis included).
pub fn crash_delivery_order(seed: u64, round: u64, len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    SplitMix64::new(seed ^ round.wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
    order
}

/// The seed for randomized tests: `LATTICE_TEST_SEED` when set, else `default`.
pub fn test_seed(default: u64) -> u64 {
    std::env::var("LATTICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
