//! Public API of `lattice-log` against real redb files: validation of every kind of bad
//! input (each refusal changes nothing on disk), floating intentions, restart, eviction,
//! tamper detection and identity checks.

use std::path::{Path, PathBuf};

use lattice_log::{
    AuthorError, CorruptError, Draft, Error, Incoming, IngestError, Ingested, Log, LogConfig,
    LogStatus, OpenError, SyntheticDag, build_genesis, system_now_ms,
};
use lattice_model::{
    DecodeError, Hash, Hlc, Intention, IntentionError, IntentionFlags, MAX_CAUSAL_DEPS,
    MAX_FUTURE_DRIFT_MS, MAX_OPS_LEN, NodeKey, SignedIntention, StoreId,
};

use redb::ReadableTable as _;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    node: NodeKey,
    store: StoreId,
    genesis: SignedIntention,
    log: Log,
}

fn fixture_with(config: LogConfig) -> Result<Fixture, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.db");
    let node = NodeKey::from_seed([1; 32]);
    let genesis = build_genesis(&node, b"test".to_vec(), system_now_ms())?;
    let store = StoreId::from(genesis.hash());
    let log = Log::open(&path, store, node.clone(), config)?;
    let results = log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
    assert_eq!(results, vec![Ok(Ingested::Witnessed { seq: 1 })]);
    Ok(Fixture {
        _dir: dir,
        path,
        node,
        store,
        genesis,
        log,
    })
}

fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
    fixture_with(LogConfig::default())
}

fn build(
    key: &NodeKey,
    store: StoreId,
    hlc: Hlc,
    prev: Hash,
    deps: Vec<Hash>,
) -> Result<SignedIntention, Box<dyn std::error::Error>> {
    let i = Intention::new(
        store,
        key.public(),
        hlc,
        prev,
        deps,
        b"op".to_vec(),
        IntentionFlags::default(),
    )?;
    Ok(SignedIntention::sign(i, key)?)
}

/// Canonical bytes built by hand, so limits the constructor enforces can be broken.
fn raw_signed(key: &NodeKey, store: StoreId, deps: &[Hash], ops_len: usize, hlc: Hlc) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"LI");
    out.push(1);
    out.push(0);
    out.extend_from_slice(store.as_bytes());
    out.extend_from_slice(key.public().as_bytes());
    out.extend_from_slice(&hlc.to_bytes());
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&(deps.len() as u16).to_le_bytes());
    for d in deps {
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&(ops_len as u32).to_le_bytes());
    out.extend(std::iter::repeat_n(7u8, ops_len));
    let sig = key.sign(&Hash::of(&out));
    out.extend_from_slice(sig.as_bytes());
    out
}

fn now_hlc() -> Hlc {
    Hlc::new(system_now_ms(), 0)
}

/// Ingests one item expecting a refusal, and checks nothing changed.
fn assert_refused(log: &Log, item: Incoming) -> Result<IngestError, Box<dyn std::error::Error>> {
    let before: LogStatus = log.reader().status()?;
    let hash = SignedIntention::decode(&item.bytes).ok().map(|s| s.hash());
    let mut results = log.ingest(vec![item])?;
    let err = match results.pop() {
        Some(Err(e)) => e,
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    };
    assert_eq!(log.reader().status()?, before, "a refusal changed the log");
    if let Some(h) = hash {
        assert!(!log.reader().is_witnessed(&h)?);
        assert!(!log.reader().is_floating(&h)?);
    }
    Ok(err)
}

#[test]
fn rejects_intention_with_bad_signature() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let good = build(
        &other,
        f.store,
        now_hlc(),
        Hash::ZERO,
        vec![f.genesis.hash()],
    )?;
    let mut bytes = good.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let err = assert_refused(&f.log, Incoming::new(bytes))?;
    assert!(matches!(err, IngestError::BadSignature { .. }), "{err}");
    // A body altered after signing: the hash changes, so the signature no longer matches.
    let mut bytes = good.as_bytes().to_vec();
    bytes[120] ^= 1;
    let err = assert_refused(&f.log, Incoming::new(bytes))?;
    assert!(matches!(err, IngestError::BadSignature { .. }), "{err}");
    Ok(())
}

#[test]
fn rejects_intention_whose_hash_differs_from_the_claim() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let good = build(
        &other,
        f.store,
        now_hlc(),
        Hash::ZERO,
        vec![f.genesis.hash()],
    )?;
    let err = assert_refused(
        &f.log,
        Incoming {
            bytes: good.as_bytes().to_vec(),
            claimed: Some(Hash::of(b"something else")),
        },
    )?;
    assert!(matches!(err, IngestError::HashMismatch { .. }), "{err}");
    Ok(())
}

#[test]
fn rejects_intention_of_another_store() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let wrong = build(&other, StoreId([9; 32]), now_hlc(), Hash::ZERO, vec![])?;
    let err = assert_refused(&f.log, Incoming::new(wrong.as_bytes().to_vec()))?;
    assert!(matches!(err, IngestError::WrongStore { .. }), "{err}");
    // Another store's genesis is refused too.
    let foreign_genesis = build_genesis(&other, b"x".to_vec(), system_now_ms())?;
    let err = assert_refused(&f.log, Incoming::new(foreign_genesis.as_bytes().to_vec()))?;
    assert!(matches!(err, IngestError::WrongStore { .. }), "{err}");
    Ok(())
}

#[test]
fn rejects_forged_and_forked_author_chains() -> TestResult {
    let f = fixture()?;
    let alice = NodeKey::from_seed([2; 32]);
    let bob = NodeKey::from_seed([3; 32]);
    let a1 = build(
        &alice,
        f.store,
        now_hlc(),
        Hash::ZERO,
        vec![f.genesis.hash()],
    )?;
    let results = f.log.ingest(vec![Incoming::new(a1.as_bytes().to_vec())])?;
    assert!(matches!(results[0], Ok(Ingested::Witnessed { .. })));
    // Bob claims Alice's intention as his predecessor.
    let forged = build(
        &bob,
        f.store,
        a1.intention().hlc().successor(),
        a1.hash(),
        vec![],
    )?;
    let err = assert_refused(&f.log, Incoming::new(forged.as_bytes().to_vec()))?;
    assert!(
        matches!(err, IngestError::ForeignPredecessor { .. }),
        "{err}"
    );
    // Alice starts a second chain (prev zero again).
    let restart = build(
        &alice,
        f.store,
        a1.intention().hlc().successor(),
        Hash::ZERO,
        vec![],
    )?;
    let err = assert_refused(&f.log, Incoming::new(restart.as_bytes().to_vec()))?;
    assert!(matches!(err, IngestError::ForkedChain { .. }), "{err}");
    // Alice continues twice from a1: the second is a fork.
    let a2 = build(
        &alice,
        f.store,
        a1.intention().hlc().successor(),
        a1.hash(),
        vec![],
    )?;
    let a2_fork = build(
        &alice,
        f.store,
        a1.intention().hlc().successor().successor(),
        a1.hash(),
        vec![],
    )?;
    let results = f.log.ingest(vec![Incoming::new(a2.as_bytes().to_vec())])?;
    assert!(matches!(results[0], Ok(Ingested::Witnessed { .. })));
    let err = assert_refused(&f.log, Incoming::new(a2_fork.as_bytes().to_vec()))?;
    assert!(matches!(err, IngestError::ForkedChain { .. }), "{err}");
    Ok(())
}

#[test]
fn rejects_too_many_deps_and_oversized_payload() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let deps: Vec<Hash> = (1..=MAX_CAUSAL_DEPS as u32 + 1)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_be_bytes());
            Hash(h)
        })
        .collect();
    let bytes = raw_signed(&other, f.store, &deps, 1, now_hlc());
    let err = assert_refused(&f.log, Incoming::new(bytes))?;
    assert_eq!(
        err,
        IngestError::Decode(DecodeError::Invalid(IntentionError::TooManyDeps {
            count: MAX_CAUSAL_DEPS + 1,
            max: MAX_CAUSAL_DEPS
        }))
    );
    let bytes = raw_signed(&other, f.store, &[], MAX_OPS_LEN + 1, now_hlc());
    let err = assert_refused(&f.log, Incoming::new(bytes))?;
    assert!(
        matches!(
            err,
            IngestError::Decode(DecodeError::Invalid(IntentionError::OpsTooLarge { .. }))
        ),
        "{err}"
    );
    // A payload at the limit is accepted.
    let bytes = raw_signed(&other, f.store, &[], MAX_OPS_LEN, now_hlc());
    let results = f.log.ingest(vec![Incoming::new(bytes)])?;
    assert!(matches!(results[0], Ok(Ingested::Witnessed { .. })));
    // The author API refuses an oversized payload too.
    let err = f.log.author(Draft {
        ops: vec![0; MAX_OPS_LEN + 1],
        ..Draft::default()
    });
    assert!(matches!(
        err,
        Err(AuthorError::Intention(IntentionError::OpsTooLarge { .. }))
    ));
    Ok(())
}

#[test]
fn refuses_intention_dated_too_far_ahead_but_accepts_it_within_drift() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let far = Hlc::new(system_now_ms() + MAX_FUTURE_DRIFT_MS + 60_000, 0);
    let i = build(&other, f.store, far, Hash::ZERO, vec![f.genesis.hash()])?;
    let err = assert_refused(&f.log, Incoming::new(i.as_bytes().to_vec()))?;
    assert!(err.is_retryable());
    assert!(matches!(err, IngestError::TooFarInFuture { .. }), "{err}");
    let near = Hlc::new(system_now_ms() + MAX_FUTURE_DRIFT_MS / 2, 0);
    let i = build(&other, f.store, near, Hash::ZERO, vec![f.genesis.hash()])?;
    let results = f.log.ingest(vec![Incoming::new(i.as_bytes().to_vec())])?;
    assert!(matches!(results[0], Ok(Ingested::Witnessed { .. })));
    // A local write citing it is dated after it, although the local wall clock is behind.
    let mine = f.log.author(Draft {
        deps: vec![i.hash()],
        ..Draft::default()
    })?;
    assert!(mine.hlc > near);
    Ok(())
}

#[test]
fn rejects_intention_not_dated_after_its_deps() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let old = Hlc::new(1, 0);
    let i = build(&other, f.store, old, Hash::ZERO, vec![f.genesis.hash()])?;
    let err = assert_refused(&f.log, Incoming::new(i.as_bytes().to_vec()))?;
    assert!(matches!(err, IngestError::NotAfterParents { .. }), "{err}");
    Ok(())
}

#[test]
fn treats_duplicates_as_no_ops_and_refuses_garbage() -> TestResult {
    let f = fixture()?;
    let before = f.log.reader().status()?;
    let again = f
        .log
        .ingest(vec![Incoming::new(f.genesis.as_bytes().to_vec())])?;
    assert_eq!(again, vec![Ok(Ingested::Duplicate)]);
    assert_eq!(f.log.reader().status()?, before);
    let bytes = f.genesis.as_bytes();
    for cut in [0, 1, 10, 113, bytes.len() - 1] {
        let err = assert_refused(&f.log, Incoming::new(bytes[..cut].to_vec()))?;
        assert!(matches!(err, IngestError::Decode(_)), "{err}");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    let err = assert_refused(&f.log, Incoming::new(longer))?;
    assert!(matches!(err, IngestError::Decode(_)), "{err}");
    let err = assert_refused(&f.log, Incoming::new(vec![0xAB; 500]))?;
    assert!(matches!(err, IngestError::Decode(_)), "{err}");
    Ok(())
}

#[test]
fn a_bad_item_does_not_spoil_good_ones_in_the_same_request() -> TestResult {
    let f = fixture()?;
    let other = NodeKey::from_seed([2; 32]);
    let good = build(
        &other,
        f.store,
        now_hlc(),
        Hash::ZERO,
        vec![f.genesis.hash()],
    )?;
    let mut bad = good.as_bytes().to_vec();
    let in_ops = bad.len() - 65;
    bad[in_ops] ^= 1;
    let results = f.log.ingest(vec![
        Incoming::new(bad),
        Incoming::new(good.as_bytes().to_vec()),
    ])?;
    assert!(matches!(results[0], Err(IngestError::BadSignature { .. })));
    assert!(matches!(results[1], Ok(Ingested::Witnessed { seq: 2 })));
    Ok(())
}

#[test]
fn floating_intentions_wait_and_resolve_in_order() -> TestResult {
    let f = fixture()?;
    let mut dag = SyntheticDag::new(11, 3, 2, 16);
    // Use the synthetic store instead of the fixture's.
    drop(f);
    let dir = tempfile::tempdir()?;
    let log = Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([1; 32]),
        LogConfig::default(),
    )?;
    let genesis = dag.genesis().clone();
    let items: Vec<SignedIntention> = (0..50).map(|_| dag.next_intention()).collect();
    // Deliver everything but the genesis, newest first: all float.
    let reversed: Vec<Incoming> = items
        .iter()
        .rev()
        .map(|s| Incoming::new(s.as_bytes().to_vec()))
        .collect();
    let results = log.ingest(reversed)?;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Ingested::Floating { .. })))
    );
    assert_eq!(log.reader().status()?.floating, 50);
    assert_eq!(log.reader().status()?.head_seq, 0);
    log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
    let status = log.reader().status()?;
    assert_eq!(status.floating, 0);
    assert_eq!(status.head_seq, 51);
    // Witness order respects causality: every parent has a smaller seq.
    for s in &items {
        let info = log
            .reader()
            .dag_info(&s.hash())?
            .ok_or("missing dag info")?;
        for p in &info.parents {
            let parent = log.reader().dag_info(p)?.ok_or("missing parent")?;
            assert!(parent.seq < info.seq);
        }
    }
    log.reader().verify(|_, _| {})?;
    Ok(())
}

#[test]
fn an_inline_log_has_resolved_every_floating_intention_when_a_call_returns() -> TestResult {
    // Inline (simulations), the actor runs on the caller's thread: a cascade of floating
    // intentions spanning many group commits is done when the call that freed it returns.
    let mut dag = SyntheticDag::new(13, 3, 2, 16);
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        inline: true,
        max_resolve_per_batch: 4,
        ..LogConfig::default()
    };
    let log = Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([1; 32]),
        config,
    )?;
    let items: Vec<SignedIntention> = (0..40).map(|_| dag.next_intention()).collect();
    let results = log.ingest(
        items
            .iter()
            .rev()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect(),
    )?;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Ingested::Floating { .. })))
    );
    log.ingest(vec![Incoming::new(dag.genesis().as_bytes().to_vec())])?;
    let status = log.reader().status()?;
    assert_eq!((status.floating, status.head_seq), (0, 41));
    // Its own intentions too: authored, witnessed and durable before the call returns.
    let key = NodeKey::from_seed([1; 32]);
    let authored = log.author(Draft {
        ops: vec![7; 8],
        deps: vec![],
        flags: Default::default(),
    })?;
    assert_eq!(
        log.reader().tip(&key.public())?,
        Some(authored.hash),
        "authored intention not witnessed"
    );
    log.reader().verify(|_, _| {})?;
    log.close()?;
    Ok(())
}

#[test]
fn floating_intentions_survive_a_restart_and_resolve_after_it() -> TestResult {
    let mut dag = SyntheticDag::new(12, 2, 1, 8);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.db");
    let node = NodeKey::from_seed([1; 32]);
    let items: Vec<SignedIntention> = (0..20).map(|_| dag.next_intention()).collect();
    {
        let log = Log::open(&path, dag.store_id(), node.clone(), LogConfig::default())?;
        log.ingest(
            items
                .iter()
                .map(|s| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )?;
        assert_eq!(log.reader().status()?.floating, 20);
        log.close()?;
    }
    let log = Log::open(&path, dag.store_id(), node, LogConfig::default())?;
    assert_eq!(log.reader().status()?.floating, 20);
    log.ingest(vec![Incoming::new(dag.genesis().as_bytes().to_vec())])?;
    assert_eq!(log.reader().status()?.floating, 0);
    assert_eq!(log.reader().status()?.head_seq, 21);
    Ok(())
}

#[test]
fn floating_set_is_bounded_and_evicts_the_oldest_arrival() -> TestResult {
    let mut dag = SyntheticDag::new(13, 1, 0, 8);
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        floating_max_count: 10,
        ..LogConfig::default()
    };
    let log = Log::open(
        &dir.path().join("log.db"),
        dag.store_id(),
        NodeKey::from_seed([1; 32]),
        config,
    )?;
    let items: Vec<SignedIntention> = (0..30).map(|_| dag.next_intention()).collect();
    for s in &items {
        log.ingest(vec![Incoming::new(s.as_bytes().to_vec())])?;
    }
    assert_eq!(log.reader().status()?.floating, 10);
    // The 20 oldest arrivals were evicted; the newest 10 remain.
    assert!(!log.reader().is_floating(&items[19].hash())?);
    assert!(log.reader().is_floating(&items[20].hash())?);
    assert!(log.reader().is_floating(&items[29].hash())?);
    Ok(())
}

#[test]
fn reopening_checks_store_and_witness_key_and_refuses_a_second_open() -> TestResult {
    let f = fixture()?;
    let err = Log::open(&f.path, f.store, f.node.clone(), LogConfig::default());
    assert!(matches!(err, Err(OpenError::AlreadyOpen { .. })), "{err:?}");
    let Fixture {
        _dir,
        path,
        store,
        log,
        ..
    } = f;
    log.close()?;
    let err = Log::open(
        &path,
        StoreId([4; 32]),
        NodeKey::from_seed([1; 32]),
        LogConfig::default(),
    );
    assert!(matches!(err, Err(OpenError::WrongStore { .. })), "{err:?}");
    let err = Log::open(
        &path,
        store,
        NodeKey::from_seed([8; 32]),
        LogConfig::default(),
    );
    assert!(
        matches!(err, Err(OpenError::WrongWitnessKey { .. })),
        "{err:?}"
    );
    let log = Log::open(
        &path,
        store,
        NodeKey::from_seed([1; 32]),
        LogConfig::default(),
    )?;
    assert_eq!(log.reader().status()?.head_seq, 1);
    Ok(())
}

#[test]
fn local_hlc_stays_monotonic_across_restarts() -> TestResult {
    let f = fixture()?;
    let a = f.log.author(Draft::default())?;
    let b = f.log.author(Draft::default())?;
    assert!(b.hlc > a.hlc);
    let Fixture {
        _dir,
        path,
        store,
        node,
        log,
        ..
    } = f;
    log.close()?;
    // A clock that went back an hour must not make the next write older.
    let log = Log::open(
        &path,
        store,
        node,
        LogConfig {
            clock: lattice_log::Clock::skewed(-3_600_000),
            ..LogConfig::default()
        },
    )?;
    let c = log.author(Draft::default())?;
    assert!(c.hlc > b.hlc);
    assert_eq!(
        log.reader().dag_info(&c.hash)?.ok_or("missing")?.parents,
        vec![b.hash]
    );
    Ok(())
}

fn tamper(
    path: &Path,
    edit: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> TestResult {
    let db = redb::Database::create(path)?;
    let txn = db.begin_write()?;
    edit(&txn)?;
    txn.commit()?;
    Ok(())
}

#[test]
fn verify_and_open_detect_tampering() -> TestResult {
    let f = fixture()?;
    for _ in 0..5 {
        f.log.author(Draft::default())?;
    }
    let report = f.log.reader().verify(|_, _| {})?;
    assert_eq!(report.records, 6);
    assert!(report.attestations >= 1);
    let Fixture {
        _dir,
        path,
        store,
        node,
        log,
        ..
    } = f;
    log.close()?;
    // Break the link of record 3: verify finds it, while open (tail check) still works.
    const WITNESS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("witness");
    tamper(&path, |txn| {
        let mut t = txn.open_table(WITNESS)?;
        let mut rec = t
            .get(3)?
            .ok_or(redb::Error::Corrupted("test".into()))?
            .value()
            .to_vec();
        rec[80] ^= 1;
        t.insert(3, rec.as_slice())?;
        Ok(())
    })?;
    let log = Log::open(&path, store, node.clone(), LogConfig::default())?;
    let err = log.reader().verify(|_, _| {});
    assert!(
        matches!(err, Err(Error::Corrupt(CorruptError::Chain(_)))),
        "{err:?}"
    );
    log.close()?;
    // Alter the newest record: the tail check on open refuses the log.
    tamper(&path, |txn| {
        let mut t = txn.open_table(WITNESS)?;
        let mut rec = t
            .get(6)?
            .ok_or(redb::Error::Corrupted("test".into()))?
            .value()
            .to_vec();
        rec[110] ^= 1;
        t.insert(6, rec.as_slice())?;
        Ok(())
    })?;
    let err = Log::open(&path, store, node, LogConfig::default());
    assert!(matches!(err, Err(OpenError::Corrupt(_))), "{err:?}");
    Ok(())
}

#[test]
fn authoring_refuses_unknown_deps_and_cites_what_it_is_given() -> TestResult {
    let f = fixture()?;
    let err = f.log.author(Draft {
        deps: vec![Hash([5; 32])],
        ..Draft::default()
    });
    assert!(matches!(err, Err(AuthorError::UnknownDep(_))));
    let a = f.log.author(Draft {
        deps: vec![f.genesis.hash()],
        ..Draft::default()
    })?;
    let stored = f.log.reader().get(&a.hash)?.ok_or("missing")?;
    assert_eq!(stored.intention().prev(), f.genesis.hash());
    assert_eq!(stored.intention().deps(), &[f.genesis.hash()]);
    stored.verify()?;
    Ok(())
}
