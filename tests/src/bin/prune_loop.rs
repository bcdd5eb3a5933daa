//! Crash-test pruner: writes to one log and prunes it below an epoch after every 50 writes,
//! in small steps, forever, printing a line for every acknowledged (durable) step:
//! `A <hash> <chain position>` for a write, `P <deleted>` for a prune step.
//! It keeps (never prunes) the writes whose hash starts with a byte below 64.
//!
//! Run: `prune-loop <log.db> <round>` (the crash test starts and kills it).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test helper binary"
)]

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use lattice_log::{Draft, Incoming, Log, LogConfig, PruneTarget, build_genesis};
use lattice_model::{Hash, IntentionFlags, StoreId};
use lattice_tests::crash_node_key;

/// Whether the crash test's pruner keeps `hash` (stands in for "the state names it").
pub fn kept(hash: &Hash) -> bool {
    hash.0[0] < 64
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, round] = args.as_slice() else {
        bail!("usage: prune-loop <log.db> <round>");
    };
    let round: u64 = round.parse().context("round")?;
    let key = crash_node_key();
    let genesis = build_genesis(&key, b"prune-loop".to_vec(), 1)?;
    let log = Log::open(
        path.as_ref(),
        StoreId::from(genesis.hash()),
        key,
        LogConfig::default(),
    )?;
    log.ingest(vec![Incoming::new(genesis.as_bytes().to_vec())])?;
    let mut stdout = std::io::stdout().lock();
    let mut i = 0u64;
    loop {
        for _ in 0..50 {
            i += 1;
            let written = log.author(Draft {
                ops: format!("round {round} write {i}").into_bytes(),
                ..Draft::default()
            })?;
            let position = log
                .reader()
                .dag_info(&written.hash)?
                .context("a write is not witnessed")?
                .author_seq;
            writeln!(stdout, "A {} {position}", written.hash)?;
            stdout.flush()?;
        }
        let epoch = log.author(Draft {
            ops: b"epoch".to_vec(),
            deps: vec![genesis.hash()],
            flags: IntentionFlags {
                system: true,
                ..IntentionFlags::default()
            },
        })?;
        loop {
            let step = log
                .submit_prune(PruneTarget {
                    epoch: epoch.hash,
                    keep: Arc::new(kept),
                    step: 16,
                })
                .wait()??;
            writeln!(stdout, "P {}", step.deleted)?;
            stdout.flush()?;
            if step.done {
                break;
            }
        }
    }
}
