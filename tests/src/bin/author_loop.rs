//! Crash-test writer: authors local intentions and ingests a shuffled foreign workload into
//! one log, forever, printing a line for every acknowledged (durable) write:
//! `A <hash>` for an authored intention, `I <hash>` for an accepted foreign one.
//!
//! Run: `author-loop <log.db> <seed> <round>` (the crash test starts and kills it).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test helper binary"
)]

use std::collections::VecDeque;
use std::io::Write as _;

use anyhow::{Context as _, bail};
use lattice_log::{Draft, Incoming, Log, LogConfig};
use lattice_tests::{crash_delivery_order, crash_node_key, crash_workload};

/// Foreign intentions in the workload.
const FOREIGN: usize = 3000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, seed, round] = args.as_slice() else {
        bail!("usage: author-loop <log.db> <seed> <round>");
    };
    let seed: u64 = seed.parse().context("seed")?;
    let round: u64 = round.parse().context("round")?;
    let (dag, all) = crash_workload(seed, FOREIGN);
    let order = crash_delivery_order(seed, round, all.len());
    let log = Log::open(
        path.as_ref(),
        dag.store_id(),
        crash_node_key(),
        LogConfig::default(),
    )?;
    let mut stdout = std::io::stdout().lock();
    let mut next = 0usize;
    let mut authored = VecDeque::new();
    let mut i = 0u64;
    loop {
        i += 1;
        authored.push_back(log.submit_author(Draft {
            ops: format!("round {round} write {i}").into_bytes(),
            ..Draft::default()
        }));
        if authored.len() > 32
            && let Some(p) = authored.pop_front()
        {
            let written = p.wait()??;
            writeln!(stdout, "A {}", written.hash)?;
            stdout.flush()?;
        }
        if next < order.len() && i.is_multiple_of(4) {
            let end = (next + 1 + (i as usize % 7)).min(order.len());
            let chunk: Vec<_> = order[next..end].iter().map(|&k| &all[k]).collect();
            next = end;
            let results = log.ingest(
                chunk
                    .iter()
                    .map(|s| Incoming::new(s.as_bytes().to_vec()))
                    .collect(),
            )?;
            for (s, r) in chunk.iter().zip(results) {
                r.with_context(|| format!("foreign intention {} refused", s.hash()))?;
                writeln!(stdout, "I {}", s.hash())?;
            }
            stdout.flush()?;
        }
    }
}
