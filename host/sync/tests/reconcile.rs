//! Negentropy reconciliation between two real logs, wired together in memory: the initiator
//! learns exactly the witnessed intentions only it has and only the responder has.

use std::collections::BTreeSet;

use lattice_log::{Incoming, Log, LogConfig, SplitMix64, SyntheticDag};
use lattice_model::{Hash, NodeKey};
use lattice_sync::{FRAME_LIMIT, Initiator, Responder};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What a whole reconciliation found: (only here, only there, rounds).
type Outcome = (BTreeSet<Hash>, BTreeSet<Hash>, usize);

fn witnessed(log: &Log) -> Result<BTreeSet<Hash>, Box<dyn std::error::Error>> {
    Ok(log
        .reader()
        .witnessed(1, usize::MAX)?
        .into_iter()
        .map(|(_, s)| s.hash())
        .collect())
}

fn reconcile(a: &Log, b: &Log, frame: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
    let (mut client, mut msg) = Initiator::start(a.reader().sync_snapshot()?, frame)?;
    let mut server = Responder::new(b.reader().sync_snapshot()?, frame)?;
    let (mut have, mut need) = (BTreeSet::new(), BTreeSet::new());
    let mut rounds = 0;
    loop {
        rounds += 1;
        let reply = server.respond(&msg)?;
        let step = client.step(&reply)?;
        have.extend(step.have);
        need.extend(step.need);
        match step.next {
            Some(next) => msg = next,
            None => break,
        }
    }
    Ok((have, need, rounds))
}

#[test]
fn finds_exactly_the_witnessed_differences() -> TestResult {
    let seed = 0xA11CE;
    let mut dag = SyntheticDag::new(seed, 4, 2, 8);
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..3000).map(|_| dag.next_intention()));
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir()?;
    let open = |name: &str| {
        Log::open(
            &dir.path().join(name),
            dag.store_id(),
            NodeKey::from_seed([1; 32]),
            LogConfig::default(),
        )
    };
    let a = open("a.db")?;
    let b = open("b.db")?;
    // Each side misses a random 2% (what they cannot witness floats and is not offered).
    for s in &all {
        if rng.below(50) != 0 {
            a.ingest(vec![Incoming::new(s.as_bytes().to_vec())])?;
        }
        if rng.below(50) != 0 {
            b.ingest(vec![Incoming::new(s.as_bytes().to_vec())])?;
        }
    }
    let (wa, wb) = (witnessed(&a)?, witnessed(&b)?);
    for frame in [0, FRAME_LIMIT, 4096] {
        let (have, need, rounds) = reconcile(&a, &b, frame)?;
        assert_eq!(
            have,
            wa.difference(&wb).copied().collect(),
            "seed {seed} frame {frame}: have"
        );
        assert_eq!(
            need,
            wb.difference(&wa).copied().collect(),
            "seed {seed} frame {frame}: need"
        );
        assert!(rounds >= 1);
    }
    // Identical sets reconcile in one round with nothing to exchange.
    let (have, need, rounds) = reconcile(&a, &a, FRAME_LIMIT)?;
    assert!(have.is_empty() && need.is_empty());
    assert_eq!(rounds, 1);
    Ok(())
}

#[test]
fn garbage_messages_are_protocol_errors() -> TestResult {
    let mut dag = SyntheticDag::new(3, 1, 0, 4);
    let dir = tempfile::tempdir()?;
    let log = Log::open(
        &dir.path().join("a.db"),
        dag.store_id(),
        NodeKey::from_seed([1; 32]),
        LogConfig::default(),
    )?;
    log.ingest(vec![
        Incoming::new(dag.genesis().as_bytes().to_vec()),
        Incoming::new(dag.next_intention().as_bytes().to_vec()),
    ])?;
    let mut server = Responder::new(log.reader().sync_snapshot()?, FRAME_LIMIT)?;
    for junk in [vec![], vec![0x00]] {
        let r = server.respond(&junk);
        assert!(r.is_err(), "{junk:02x?} was accepted: {r:?}");
    }
    // A message of an unknown protocol version is answered with the version spoken here.
    assert_eq!(server.respond(&[0x62; 8])?, vec![0x61]);
    Ok(())
}
