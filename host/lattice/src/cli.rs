//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use lattice_node::DataDir;

/// Lattice: a local-first, peer-to-peer replicated state machine engine.
///
/// Every write is a signed intention in a per-store DAG; each node keeps a hash-chained
/// witness log of what it accepted.
#[derive(Debug, Parser)]
#[command(name = "lattice", version, propagate_version = true)]
pub(crate) struct Cli {
    /// The node's data directory (default: $XDG_DATA_HOME/lattice or ~/.local/share/lattice).
    #[arg(long, global = true, env = "LATTICE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Print machine-readable JSON (one object per result line).
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Log more to stderr (-v info, -vv debug, -vvv trace); LATTICE_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    pub(crate) fn data_dir(&self) -> DataDir {
        if let Some(dir) = &self.data_dir {
            return DataDir::new(dir);
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        DataDir::new(base.join("lattice"))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Measure performance on a fresh temporary data directory.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Low-level access to store logs: create, append, status, verify.
    #[command(subcommand)]
    Log(LogCommand),
    /// This node.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Authoring, ingest and floating-resolution throughput of one store's log.
    Log(BenchLogArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchLogArgs {
    /// Intentions per phase.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) count: u64,
    /// Authors of the foreign intentions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) authors: u64,
    /// Payload bytes per intention.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub(crate) payload: u64,
    /// Local writes in flight at once while authoring (group commit batches them).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) window: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Create a store with a raw genesis intention and print its id.
    Create {
        /// Payload of the genesis intention (text).
        #[arg(long, default_value = "")]
        ops: String,
    },
    /// Author an intention with a raw text payload in a store.
    Append {
        /// Store id (full hex, or a unique prefix).
        store: String,
        /// The payload (text).
        ops: String,
    },
    /// Show a store log's head, floating intentions and author tips.
    Status {
        /// Store id (full hex, or a unique prefix).
        store: String,
    },
    /// Check the whole witness chain, every attestation and every intention signature.
    Verify {
        /// Store id (full hex, or a unique prefix).
        store: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Print this node's public key (creating the identity on first use).
    Id,
}
