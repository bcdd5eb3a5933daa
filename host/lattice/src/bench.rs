//! `lattice bench …`: throughput figures on a fresh temporary data directory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use lattice_log::{
    Draft, Incoming, IngestResults, Ingested, Log, LogConfig, Pending, SyntheticDag, build_genesis,
    system_now_ms,
};
use lattice_model::{Hash, NodeKey, StoreId};
use serde_json::json;

use crate::cli::BenchLogArgs;
use crate::output::Output;

const CHUNK: usize = 256;
const IN_FLIGHT: usize = 8;

pub(crate) fn log(args: BenchLogArgs, out: &Output) -> anyhow::Result<()> {
    let n = usize::try_from(args.count)?;
    let payload = usize::try_from(args.payload)?;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let node = NodeKey::from_seed([7; 32]);
    let config = LogConfig {
        floating_max_count: args.count + 1,
        floating_max_bytes: u64::MAX,
        ..LogConfig::default()
    };
    out.progress(&format!(
        "lattice bench log: {n} intentions per phase, {} authors, {payload}-byte payloads, data in {}",
        args.authors,
        tmp.path().display()
    ));

    // 1. Local authoring: build, sign, witness, durable group commit.
    let genesis = build_genesis(&node, b"bench".to_vec(), system_now_ms())?;
    let store = StoreId::from(genesis.hash());
    let log = Log::open(
        &tmp.path().join("authored.db"),
        store,
        node.clone(),
        config.clone(),
    )?;
    expect_all_ok(log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?)?;
    let ops = vec![0xA5u8; payload];
    let window = usize::try_from(args.window)?;
    let start = Instant::now();
    let mut pending = VecDeque::with_capacity(window);
    for _ in 0..n {
        if pending.len() >= window
            && let Some(p) = pending.pop_front()
        {
            wait_author(p)?;
        }
        pending.push_back(log.submit_author(Draft {
            ops: ops.clone(),
            ..Draft::default()
        }));
    }
    for p in pending {
        wait_author(p)?;
    }
    let authored_s = start.elapsed().as_secs_f64();
    log.close()?;
    out.progress(&format!("authored {n} in {authored_s:.2} s"));

    // 2. Foreign intentions, generated ahead (not timed) into a file so memory stays flat.
    out.progress(&format!("generating {n} foreign intentions (not timed)…"));
    let mut dag = SyntheticDag::new(0xBE7C, usize::try_from(args.authors)?, 2, payload);
    let spool = tmp.path().join("foreign.bin");
    let offsets = spool_intentions(&spool, &mut dag, n)?;

    // 3. Ingest in delivery order with batch signature verification.
    let log = Log::open(
        &tmp.path().join("ingested.db"),
        dag.store_id(),
        node.clone(),
        config.clone(),
    )?;
    let start = Instant::now();
    let mut reader = BufReader::new(File::open(&spool)?);
    let mut pending: VecDeque<Pending<Result<IngestResults, lattice_log::Error>>> = VecDeque::new();
    let mut left = n + 1;
    while left > 0 {
        let take = left.min(CHUNK);
        left -= take;
        let mut chunk = Vec::with_capacity(take);
        for _ in 0..take {
            chunk.push(Incoming::new(read_one(&mut reader)?));
        }
        if pending.len() >= IN_FLIGHT
            && let Some(p) = pending.pop_front()
        {
            expect_witnessed(p.wait()??)?;
        }
        pending.push_back(log.submit_ingest(chunk));
    }
    for p in pending {
        expect_witnessed(p.wait()??)?;
    }
    let ingested_s = start.elapsed().as_secs_f64();
    let status = log.reader().status()?;
    if status.head_seq != n as u64 + 1 {
        bail!("ingest witnessed {} of {}", status.head_seq, n + 1);
    }
    // Deep ancestry query: genesis against the newest intention.
    let head = log
        .reader()
        .records(status.head_seq, 1)?
        .first()
        .map(|r| r.intention)
        .context("no head record")?;
    let q = Instant::now();
    let reachable = log.reader().is_ancestor(&dag.genesis().hash(), &head)?;
    let ancestor_us = q.elapsed().as_secs_f64() * 1e6;
    if !reachable {
        bail!("genesis is not an ancestor of the head");
    }
    let ancestor_p50_us = ancestry_sample(&log, status.head_seq)?;
    log.close()?;
    out.progress(&format!("ingested {} in {ingested_s:.2} s", n + 1));

    // 4. Floating resolution: deliver newest first, genesis last.
    let log = Log::open(
        &tmp.path().join("floating.db"),
        dag.store_id(),
        node,
        config,
    )?;
    let mut file = File::open(&spool)?;
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for batch in offsets[1..].rchunks(CHUNK) {
        let mut chunk = Vec::with_capacity(batch.len());
        for &offset in batch.iter().rev() {
            file.seek(SeekFrom::Start(offset))?;
            chunk.push(Incoming::new(read_one(&mut file)?));
        }
        if pending.len() >= IN_FLIGHT
            && let Some(p) = pending.pop_front()
        {
            expect_all_ok(Pending::wait(p)??)?;
        }
        pending.push_back(log.submit_ingest(chunk));
    }
    for p in pending {
        expect_all_ok(Pending::wait(p)??)?;
    }
    expect_all_ok(log.ingest(vec![Incoming::new(dag.genesis().as_bytes().to_vec())])?)?;
    log.settle()?;
    let floating_s = start.elapsed().as_secs_f64();
    let status = log.reader().status()?;
    if status.head_seq != n as u64 + 1 || status.floating != 0 {
        bail!(
            "floating phase ended with {} witnessed and {} floating",
            status.head_seq,
            status.floating
        );
    }
    log.close()?;

    let authored_per_s = n as f64 / authored_s;
    let ingested_per_s = (n + 1) as f64 / ingested_s;
    let floating_per_s = n as f64 / floating_s;
    let rss_mib = peak_rss_kib().map(|k| k as f64 / 1024.0);
    out.record(
        &format!(
            "authored   {authored_per_s:>10.0} /s  (sign + witness + durable group commit)\n\
             ingested   {ingested_per_s:>10.0} /s  (batch signature check + durable group commit)\n\
             floating   {floating_per_s:>10.0} /s  (reversed delivery, resolved in cascades)\n\
             is_ancestor(genesis, head) {ancestor_us:.0} µs over {} intentions (first query, cold)\n\
             is_ancestor  {ancestor_p50_us:>8.1} µs  (median of {ANCESTRY_SAMPLES} random pairs)\n\
             peak RSS   {}",
            n + 1,
            rss_mib.map_or("unknown".to_string(), |m| format!("{m:.0} MiB")),
        ),
        json!({
            "count": n,
            "authors": args.authors,
            "payload": payload,
            "authored_per_s": authored_per_s.round(),
            "ingested_per_s": ingested_per_s.round(),
            "floating_per_s": floating_per_s.round(),
            "is_ancestor_us": ancestor_us.round(),
            "is_ancestor_p50_us": (ancestor_p50_us * 10.0).round() / 10.0,
            "peak_rss_mib": rss_mib.map(f64::round),
        }),
    );
    Ok(())
}

/// Random ancestry questions timed by [`ancestry_sample`].
const ANCESTRY_SAMPLES: usize = 1000;

/// Median time of [`ANCESTRY_SAMPLES`] `is_ancestor` questions between random witnessed
/// intentions (older one first; either answer), picked by a fixed xorshift sequence.
fn ancestry_sample(log: &Log, head_seq: u64) -> anyhow::Result<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let hash_at = |seq: u64| -> anyhow::Result<Hash> {
        log.reader()
            .records(seq, 1)?
            .first()
            .map(|r| r.intention)
            .context("a witnessed seq has no record")
    };
    let mut times = Vec::with_capacity(ANCESTRY_SAMPLES);
    for _ in 0..ANCESTRY_SAMPLES {
        let (a, b) = (1 + next() % head_seq, 1 + next() % head_seq);
        let (older, newer) = (hash_at(a.min(b))?, hash_at(a.max(b))?);
        let q = Instant::now();
        log.reader().is_ancestor(&older, &newer)?;
        times.push(q.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied().unwrap_or_default())
}

fn wait_author(
    p: Pending<Result<lattice_log::Authored, lattice_log::AuthorError>>,
) -> anyhow::Result<()> {
    p.wait()??;
    Ok(())
}

fn expect_all_ok(results: IngestResults) -> anyhow::Result<()> {
    for r in results {
        r?;
    }
    Ok(())
}

fn expect_witnessed(results: IngestResults) -> anyhow::Result<()> {
    for r in results {
        match r? {
            Ingested::Witnessed { .. } => {}
            other => bail!("in-order delivery should witness at once, got {other:?}"),
        }
    }
    Ok(())
}

/// Writes the genesis and `n` intentions as `u32 length ‖ bytes`; returns their offsets.
fn spool_intentions(path: &Path, dag: &mut SyntheticDag, n: usize) -> anyhow::Result<Vec<u64>> {
    let mut file = BufWriter::new(File::create(path)?);
    let mut offsets = Vec::with_capacity(n + 1);
    let mut at = 0u64;
    let mut write = |bytes: &[u8]| -> anyhow::Result<()> {
        offsets.push(at);
        file.write_all(&u32::try_from(bytes.len())?.to_le_bytes())?;
        file.write_all(bytes)?;
        at += 4 + bytes.len() as u64;
        Ok(())
    };
    write(dag.genesis().as_bytes())?;
    for _ in 0..n {
        write(dag.next_intention().as_bytes())?;
    }
    file.flush()?;
    Ok(offsets)
}

fn read_one(reader: &mut impl std::io::Read) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
