//! Crash safety: a child process writing to a log is killed with SIGKILL at random moments.
//! Guards against losing acknowledged writes, against a witness chain that no longer verifies
//! after a crash, and against floating intentions that never resume after a restart.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lattice_log::{Incoming, Log, LogConfig, SplitMix64};
use lattice_model::Hash;
use lattice_tests::{crash_node_key, crash_workload, test_seed};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ROUNDS: u64 = 30;

/// Runs a helper process, collects the lines it prints (each one an acknowledged step),
/// kills it with SIGKILL once `kill_after` arrived, and returns every line it printed,
/// including those already in the pipe at the kill (acknowledged before it, too).
fn lines_until_killed(
    command: &mut Command,
    kill_after: usize,
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
    let mut lines = Vec::new();
    while lines.len() < kill_after {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                return Err(format!("the helper stalled: {e}").into());
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
            kill_after,
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
            20 + rng.below(300),
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
