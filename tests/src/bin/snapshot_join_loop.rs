//! Crash-test joiner: joins a store from a snapshot file again and again, forever, printing
//! `S` as each join starts and `J <state digest>` when it completed; a complete store from
//! the round before is removed first.
//!
//! Run: `snapshot-join-loop <snapshot file> <data dir>` (the crash test starts and kills it).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test helper binary"
)]

use std::io::Write as _;

use anyhow::{Context as _, bail};
use lattice_node::{DataDir, Node, NodeError, Snapshot};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, dir] = args.as_slice() else {
        bail!("usage: snapshot-join-loop <snapshot file> <data dir>");
    };
    let snapshot = Snapshot::decode(&std::fs::read(file).context("reading the snapshot")?)?;
    let node = Node::open(DataDir::new(dir))?;
    let id = snapshot.store;
    let mut stdout = std::io::stdout().lock();
    loop {
        writeln!(stdout, "S")?;
        stdout.flush()?;
        match node.open_store(id) {
            Ok(store) => {
                store.close()?;
                node.remove_store_files(&id)?;
            }
            Err(NodeError::UnknownStore(_) | NodeError::SnapshotRefused { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let store = node.store_from_snapshot(&snapshot)?;
        writeln!(stdout, "J {}", store.state_digest()?)?;
        stdout.flush()?;
        store.close()?;
    }
}
