//! Our Negentropy v1 against the `negentropy` crate, in both directions: the same sets give
//! the same differences whoever plays which role, so the wire format is the real v1.

use std::collections::BTreeSet;

use lattice_log::SplitMix64;
use lattice_model::Hash;
use lattice_sync::{Initiator, Responder, VecSet};
use negentropy::{Id, Negentropy, NegentropyStorageVector};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Items = Vec<(u64, [u8; 32])>;

/// Two overlapping random sets; timestamps collide often so id-prefix bounds are exercised.
fn sets(seed: u64, n: usize, unique: usize) -> (Items, Items) {
    let mut rng = SplitMix64::new(seed);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut id = [0u8; 32];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        // Shared prefixes make bounds need several id bytes.
        id[0] = (rng.below(3)) as u8;
        let item = (rng.below(n / 4 + 1) as u64, id);
        match rng.below(unique) {
            0 => a.push(item),
            1 => b.push(item),
            _ => {
                a.push(item);
                b.push(item);
            }
        }
    }
    (a, b)
}

fn crate_storage(items: &Items) -> Result<NegentropyStorageVector, negentropy::Error> {
    let mut s = NegentropyStorageVector::with_capacity(items.len());
    for (ts, id) in items {
        s.insert(*ts, Id::from_byte_array(*id))?;
    }
    s.seal()?;
    Ok(s)
}

fn expected(a: &Items, b: &Items) -> (BTreeSet<Hash>, BTreeSet<Hash>) {
    let ia: BTreeSet<Hash> = a.iter().map(|x| Hash(x.1)).collect();
    let ib: BTreeSet<Hash> = b.iter().map(|x| Hash(x.1)).collect();
    (
        ia.difference(&ib).copied().collect(),
        ib.difference(&ia).copied().collect(),
    )
}

#[test]
fn our_initiator_with_their_responder() -> TestResult {
    for (seed, n, unique, frame) in [
        (1, 0, 10, 0),
        (2, 50, 10, 0),
        (3, 5000, 20, 0),
        (4, 5000, 5, 4096),
        (5, 20000, 100, 8192),
    ] {
        let (a, b) = sets(seed, n, unique);
        let (mut ours, mut msg) = Initiator::start(VecSet::new(a.clone()), frame)?;
        let mut theirs = Negentropy::owned(crate_storage(&b)?, frame)?;
        let (mut have, mut need) = (BTreeSet::new(), BTreeSet::new());
        loop {
            let reply = theirs.reconcile(&msg)?;
            let step = ours.step(&reply)?;
            have.extend(step.have);
            need.extend(step.need);
            match step.next {
                Some(next) => msg = next,
                None => break,
            }
        }
        assert_eq!((have, need), expected(&a, &b), "seed {seed}");
    }
    Ok(())
}

#[test]
fn their_initiator_with_our_responder() -> TestResult {
    for (seed, n, unique, frame) in [
        (6, 0, 10, 0),
        (7, 31, 3, 0),
        (8, 5000, 20, 0),
        (9, 5000, 5, 4096),
        (10, 20000, 100, 8192),
    ] {
        let (a, b) = sets(seed, n, unique);
        let mut theirs = Negentropy::owned(crate_storage(&a)?, frame)?;
        let mut ours = Responder::new(VecSet::new(b.clone()), frame)?;
        let mut msg = theirs.initiate()?;
        let (mut have, mut need) = (Vec::new(), Vec::new());
        loop {
            let reply = ours.respond(&msg)?;
            match theirs.reconcile_with_ids(&reply, &mut have, &mut need)? {
                Some(next) => msg = next,
                None => break,
            }
        }
        let have: BTreeSet<Hash> = have.iter().map(|id| Hash(**id)).collect();
        let need: BTreeSet<Hash> = need.iter().map(|id| Hash(**id)).collect();
        assert_eq!((have, need), expected(&a, &b), "seed {seed}");
    }
    Ok(())
}

#[test]
fn first_messages_are_byte_identical() -> TestResult {
    let (a, _) = sets(11, 3000, 10);
    let (_, ours) = Initiator::start(VecSet::new(a.clone()), 0)?;
    let theirs = Negentropy::owned(crate_storage(&a)?, 0)?.initiate()?;
    assert_eq!(ours, theirs);
    Ok(())
}

#[test]
fn garbage_is_refused_not_panicked_on() -> TestResult {
    let (a, _) = sets(12, 100, 10);
    let mut ours = Responder::new(VecSet::new(a), 0)?;
    let mut rng = SplitMix64::new(12);
    for len in 0..200 {
        let mut msg: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(first) = msg.first_mut() {
            *first = 0x61;
        }
        let _ = ours.respond(&msg);
    }
    assert!(ours.respond(&[]).is_err());
    assert!(ours.respond(&[0x61, 0x01, 0x00, 0x05]).is_err());
    Ok(())
}
