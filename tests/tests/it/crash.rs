//! Crash safety: a child process writing to a log is killed with SIGKILL at random moments.
//! Guards against losing acknowledged writes, against a witness chain that no longer verifies
//! after a crash, and against floating intentions that never resume after a restart.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lattice_log::{Incoming, Log, LogConfig, SplitMix64};
use lattice_model::Hash;
use lattice_tests::{crash_node_key, crash_workload, test_seed};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ROUNDS: u64 = 30;

/// When the crash tests kill their helper.
enum Kill {
    /// Once this many lines arrived.
    AfterLines(usize),
    /// After this long (a fault injected at a random moment, not a synchronisation).
    After(Duration),
}

/// Runs a helper process, collects the lines it prints (each one an acknowledged step),
/// kills it with SIGKILL at `kill`, and returns every line it printed, including those
/// already in the pipe at the kill (acknowledged before it, too).
fn lines_until_killed(
    command: &mut Command,
    kill: Kill,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stalled = Duration::from_secs(60);
    let deadline = match kill {
        Kill::After(run_for) => Some(Instant::now() + run_for),
        Kill::AfterLines(_) => None,
    };
    let mut lines = Vec::new();
    loop {
        if let Kill::AfterLines(n) = kill
            && lines.len() >= n
        {
            break;
        }
        let wait = match deadline {
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) => left,
                None => break,
            },
            None => stalled,
        };
        match rx.recv_timeout(wait) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) if deadline.is_some() => break,
            Err(e) => {
                let _ = child.kill();
                return Err(format!("the helper stalled or exited: {e}").into());
            }
        }
    }
    child.kill()?;
    child.wait()?;
    reader.join().map_err(|_| "reader thread panicked")?;
    lines.extend(rx.try_iter());
    Ok(lines)
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() -> TestResult {
    let seed = test_seed(0xC4A5_u64);
    eprintln!("crash test seed {seed} (replay with LATTICE_TEST_SEED={seed})");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.db");
    let (dag, all) = crash_workload(seed, 3000);
    let mut rng = SplitMix64::new(seed);
    let mut authored: Vec<Hash> = Vec::new();
    let mut foreign: Vec<Hash> = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = 1 + rng.below(1500);
        let lines = lines_until_killed(
            Command::new(env!("CARGO_BIN_EXE_author-loop"))
                .arg(&path)
                .arg(seed.to_string())
                .arg(round.to_string()),
            Kill::AfterLines(kill_after),
        )
        .map_err(|e| format!("seed {seed} round {round}: {e}"))?;
        for line in &lines {
            let (kind, hash) = line.split_once(' ').ok_or("bad line")?;
            let hash = Hash::from_hex(hash)?;
            match kind {
                "A" => authored.push(hash),
                "I" => foreign.push(hash),
                other => return Err(format!("unknown line kind {other}").into()),
            }
        }
        let log = Log::open(
            &path,
            dag.store_id(),
            crash_node_key(),
            LogConfig::default(),
        )?;
        for h in &authored {
            assert!(
                log.reader().is_witnessed(h)?,
                "seed {seed} round {round}: acknowledged authored {h} lost"
            );
        }
        for h in &foreign {
            assert!(
                log.reader().is_witnessed(h)? || log.reader().is_floating(h)?,
                "seed {seed} round {round}: acknowledged foreign {h} lost"
            );
        }
        let report = log.reader().verify(|_, _| {})?;
        assert!(report.records >= authored.len() as u64);
        eprintln!(
            "round {round}: killed after {} acknowledged lines; log has {} records, {} floating",
            lines.len(),
            report.records,
            log.reader().status()?.floating
        );
        log.close()?;
    }
    // Deliver the whole foreign workload: everything floating resolves.
    let log = Log::open(
        &path,
        dag.store_id(),
        crash_node_key(),
        LogConfig::default(),
    )?;
    for chunk in all.chunks(500) {
        for r in log.ingest(
            chunk
                .iter()
                .map(|s| Incoming::new(s.as_bytes().to_vec()))
                .collect(),
        )? {
            r?;
        }
    }
    log.settle()?;
    let status = log.reader().status()?;
    assert_eq!(status.floating, 0, "seed {seed}");
    for s in &all {
        assert!(log.reader().is_witnessed(&s.hash())?, "seed {seed}");
    }
    log.reader().verify(|_, _| {})?;
    Ok(())
}

/// Kept by the pruner in `prune-loop` (the writes whose hash starts with a byte below 64).
fn kept_by_pruner(hash: &Hash) -> bool {
    hash.0[0] < 64
}

#[test]
fn pruning_killed_at_random_moments_loses_nothing_it_should_keep() -> TestResult {
    let seed = test_seed(0x9A0E_u64);
    eprintln!("prune crash test seed {seed} (replay with LATTICE_TEST_SEED={seed})");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("log.db");
    let mut rng = SplitMix64::new(seed);
    // Acknowledged writes: (hash, chain position).
    let mut written: Vec<(Hash, u64)> = Vec::new();
    let mut pruned_steps = 0usize;
    for round in 0..12u64 {
        let lines = lines_until_killed(
            Command::new(env!("CARGO_BIN_EXE_prune-loop"))
                .arg(&path)
                .arg(round.to_string()),
            Kill::AfterLines(20 + rng.below(300)),
        )
        .map_err(|e| format!("seed {seed} round {round}: {e}"))?;
        for line in &lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("A"), Some(hash), Some(position)) => {
                    written.push((Hash::from_hex(hash)?, position.parse()?));
                }
                (Some("P"), Some(_), None) => pruned_steps += 1,
                _ => return Err(format!("bad line {line}").into()),
            }
        }
        let genesis = lattice_log::build_genesis(&crash_node_key(), b"prune-loop".to_vec(), 1)?;
        let log = Log::open(
            &path,
            lattice_model::StoreId::from(genesis.hash()),
            crash_node_key(),
            LogConfig::default(),
        )?;
        let floor: std::collections::HashMap<_, _> =
            log.reader().pruned_floor()?.into_iter().collect();
        let below = floor.get(&crash_node_key().public()).copied().unwrap_or(0);
        let mut gone = 0;
        for (hash, position) in &written {
            if log.reader().is_witnessed(hash)? {
                continue;
            }
            gone += 1;
            assert!(
                !kept_by_pruner(hash) && *position < below,
                "seed {seed} round {round}: write {hash} at {position} lost (floor {below})"
            );
        }
        // The chain verifies across pruned gaps, the sync index counts what is left, and
        // writing goes on.
        log.reader().verify(|_, _| {})?;
        assert_eq!(
            log.reader().sync_snapshot()?.len(),
            log.reader().witnessed_count()?
        );
        log.author(lattice_log::Draft {
            ops: b"after a crash".to_vec(),
            ..lattice_log::Draft::default()
        })?;
        eprintln!(
            "round {round}: killed after {} lines; {} of {} writes pruned",
            lines.len(),
            gone,
            written.len()
        );
        log.close()?;
    }
    assert!(pruned_steps > 0, "seed {seed}: no prune step ran");
    Ok(())
}

#[test]
fn a_join_from_a_snapshot_killed_at_random_moments_restarts_cleanly() -> TestResult {
    use lattice_node::{DataDir, Node, NodeError};
    use serde_json::json;

    let seed = test_seed(0x5A9_u64);
    eprintln!("snapshot crash test seed {seed} (replay with LATTICE_TEST_SEED={seed})");
    // A pruned store on a lone member, with a tail above its epoch, and its snapshot.
    let member_dir = tempfile::tempdir()?;
    let member = Node::open(DataDir::new(member_dir.path()))?;
    let mut store = member.create_store(member.resolve_type("kv")?, "crash")?;
    let put = |store: &mut lattice_node::Store, tag: &str, n: usize| -> TestResult {
        let calls: Vec<(String, serde_json::Value)> = (0..n)
            .map(|i| {
                let key = format!("k{}", i % 100);
                (
                    "put".to_string(),
                    json!({"key": key, "value": format!("{tag}{i}")}),
                )
            })
            .collect();
        for r in store.write_run(&calls) {
            r?;
        }
        Ok(())
    };
    put(&mut store, "a", 3000)?;
    store.system_call("request-epoch", &json!({"cause": "prune-cut", "nonce": 1}))?;
    store.project()?;
    assert!(store.prune_now()?.deleted > 2000);
    put(&mut store, "b", 200)?;
    let expected = store.state_digest()?;
    let snapshot = store.snapshot()?;
    let id = snapshot.store;
    let file = member_dir.path().join("snapshot.bin");
    std::fs::write(&file, snapshot.encode())?;

    let dir = tempfile::tempdir()?;
    let mut rng = SplitMix64::new(seed);
    let (mut complete, mut interrupted) = (0, 0);
    for round in 0..10 {
        let run_for = Duration::from_millis(50 + rng.below(1500) as u64);
        let lines = lines_until_killed(
            Command::new(env!("CARGO_BIN_EXE_snapshot-join-loop"))
                .arg(&file)
                .arg(dir.path()),
            Kill::After(run_for),
        )
        .map_err(|e| format!("seed {seed} round {round}: {e}"))?;
        for line in &lines {
            if let Some(digest) = line.strip_prefix("J ") {
                assert_eq!(digest, expected.to_string(), "seed {seed} round {round}");
            }
        }
        // Whatever the moment: a complete store with the right state, or an interrupted join
        // that the next offer of the snapshot replaces cleanly.
        let node = Node::open(DataDir::new(dir.path()))?;
        let joined = match node.open_store(id) {
            Ok(store) => {
                complete += 1;
                store
            }
            Err(NodeError::UnknownStore(_) | NodeError::SnapshotRefused { .. }) => {
                interrupted += 1;
                node.store_from_snapshot(&snapshot)
                    .map_err(|e| format!("seed {seed} round {round}: {e}"))?
            }
            Err(e) => return Err(format!("seed {seed} round {round}: {e}").into()),
        };
        assert_eq!(
            joined.state_digest()?,
            expected,
            "seed {seed} round {round}"
        );
        joined.log().reader().verify(|_, _| {})?;
        joined.close()?;
    }
    eprintln!("snapshot crash test: {complete} complete, {interrupted} interrupted");
    Ok(())
}
