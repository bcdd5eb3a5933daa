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

    /// Run the node in this process for this one command instead of asking the running
    /// `lattice daemon` (the default when no daemon answers on the data directory's socket).
    #[arg(long, global = true)]
    pub(crate) embedded: bool,

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
    /// Run this node: open its stores, replicate them over QUIC (iroh), and serve the local
    /// API on `<data dir>/lattice.sock` (mode 0600) until interrupted.
    ///
    /// Every other `store`, `module`, `node` and kv command is a client of this API; without a
    /// daemon they run the node in-process for the one command (`--embedded` forces that).
    /// One daemon per data directory: a second one refuses to start.
    Daemon(DaemonArgs),
    /// Run three real nodes on this machine and watch them converge.
    ///
    /// Each node has its own data directory in a temporary folder and talks QUIC (iroh) on
    /// 127.0.0.1 only. Node A creates a kv store and invites B and C; all three write at
    /// once; C is then partitioned off while A and C both write; C heals. Prints the converged
    /// state, the conflict it surfaced and how long convergence took. Exits 0 only when all
    /// three nodes agree.
    Demo(DemoArgs),
    /// Measure performance on a fresh temporary data directory.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Simulate many whole nodes in this process over a simulated network (docs/sim.md).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Low-level access to store logs: create, append, status, verify.
    #[command(subcommand)]
    Log(LogCommand),
    /// This node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Store types (Wasm components): install, list, inspect.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Stores: create, list, status, call methods, rebuild state.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Blobs of a store: content-addressed (BLAKE3) data of any size, kept on this node and
    /// fetched from the store's peers on demand, verified chunk by chunk.
    ///
    /// A blob belongs to the stores that hold it: `cas get` reaches only blobs of stores this
    /// node is a member of, and only asks that store's peers.
    #[command(subcommand)]
    Cas(CasCommand),
    /// Files in a filesystem store (`lattice store create --type fs`), without a mount: put,
    /// get, ls, stat, mkdir, mv, rm. Concurrent edits of one file keep the other peer's
    /// version beside it as `NAME.conflict-<peer>-<ms>`.
    #[command(subcommand)]
    Fs(FsCommand),
    /// Set a key in a kv store (shortcut for `store call <store> put key=… value=…`). Values
    /// up to 8 MiB (over 64 KiB kept as a blob of the store); give `-` to read the value from
    /// stdin, or `--file F`.
    Put {
        /// Store id (or unique prefix).
        store: String,
        /// The key.
        key: String,
        /// The value (text), or `-` to read it from stdin.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "F")]
        file: Option<std::path::PathBuf>,
    },
    /// Read a key from a kv store.
    Get {
        /// Store id (or unique prefix).
        store: String,
        /// The key.
        key: String,
    },
    /// Delete a key from a kv store.
    Delete {
        /// Store id (or unique prefix).
        store: String,
        /// The key.
        key: String,
    },
    /// List the keys of a kv store by prefix.
    List {
        /// Store id (or unique prefix).
        store: String,
        /// Only keys starting with this.
        prefix: Option<String>,
    },
    /// Show every concurrent head of a kv key (conflicts).
    Inspect {
        /// Store id (or unique prefix).
        store: String,
        /// The key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FsCommand {
    /// Write a local file (or stdin, `-`) into the store at PATH (default: its file name),
    /// creating or replacing it. Files over 64 KiB are streamed into the store's blobs.
    Put {
        /// Store id (or unique prefix).
        store: String,
        /// The local file, or `-` for stdin.
        file: PathBuf,
        /// Where in the store (`dir/name`); its directory must exist.
        path: Option<String>,
        /// Permission bits, in octal (for example 644).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
    },
    /// Write a file of the store to `-o FILE` or stdout, fetching its content from the store's
    /// peers when it is not here.
    Get {
        /// Store id (or unique prefix).
        store: String,
        /// The file in the store.
        path: String,
        /// Write to this file instead of stdout (replaced only once every byte arrived).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List a directory (default: the root): size, mode, name (`/` directories, `@` links).
    Ls {
        /// Store id (or unique prefix).
        store: String,
        /// The directory.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show an entry: kind, mode, size, modified time, blob, conflicts.
    Stat {
        /// Store id (or unique prefix).
        store: String,
        /// The entry.
        path: String,
    },
    /// Make a directory.
    Mkdir {
        /// Store id (or unique prefix).
        store: String,
        /// The directory to make.
        path: String,
        /// Make missing parents too, and accept one that exists.
        #[arg(short, long)]
        parents: bool,
    },
    /// Move or rename an entry (replacing a file or an empty directory at TO).
    Mv {
        /// Store id (or unique prefix).
        store: String,
        /// The entry.
        from: String,
        /// Its new path.
        to: String,
    },
    /// Mount a filesystem store on an empty folder (Linux, FUSE: needs /dev/fuse and
    /// fusermount3). The daemon serves it until `lattice fs umount` or until it stops;
    /// without a daemon this command serves it in the foreground until Ctrl-C. Files are
    /// written to the store when closed or synced; peers' changes show within a second.
    Mount {
        /// Store id (or unique prefix).
        store: String,
        /// The folder (must exist, and should be empty).
        dir: PathBuf,
    },
    /// Unmount a folder mounted with `lattice fs mount`.
    Umount {
        /// The folder.
        dir: PathBuf,
    },
    /// List this node's mounts.
    Mounts,
    /// Mirror a local folder and the store both ways, without a mount: what changed on one
    /// side since the last sync is made on the other (written, created, removed); two
    /// different edits of one file keep the store's under the name and the folder's beside it
    /// as `NAME.conflict-local-<ms>`, in the store too. The last sync's view is kept in
    /// `DIR/.lattice-sync.json`. One round, or with `--watch` a round every `--interval`
    /// until Ctrl-C. Symbolic links and names beginning with `.lattice-` are not synced.
    Sync {
        /// Store id (or unique prefix).
        store: String,
        /// The folder (made if missing).
        dir: PathBuf,
        /// Keep syncing until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between rounds with `--watch`.
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// Remove a file, or a directory (empty, or everything under it with `-r`).
    Rm {
        /// Store id (or unique prefix).
        store: String,
        /// The entry.
        path: String,
        /// Remove a directory with everything under it.
        #[arg(short, long)]
        recursive: bool,
    },
}

/// A positive number of seconds, at most a day.
fn parse_interval(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && *s <= 86_400.0)
        .ok_or_else(|| format!("{text:?} is not a number of seconds (above 0, at most 86400)"))
}

/// Permission bits written in octal.
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not a mode (octal, at most 7777)"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum CasCommand {
    /// Put a file (or stdin, `-`) into a store as a blob and print its hash. The bytes are
    /// hashed and written as they stream; nothing is held whole in memory.
    Put {
        /// Store id (or unique prefix).
        store: String,
        /// The file to put, or `-` for stdin.
        file: PathBuf,
        /// Pin it: a pinned blob is never collected.
        #[arg(long)]
        pin: bool,
    },
    /// Write a blob to a file (`-o`) or stdout, fetching it from the store's peers first when
    /// it is not here (verified; an interrupted transfer resumes where it stopped).
    Get {
        /// Store id (or unique prefix).
        store: String,
        /// The blob's hash (64 hex digits).
        hash: String,
        /// Write to this file instead of stdout (replaced only once every byte checked out).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Only bytes START..END (END exclusive; either may be left out: `100..`, `..4096`).
        #[arg(long, value_name = "START..END")]
        range: Option<String>,
        /// Only what is here: fail instead of asking peers.
        #[arg(long)]
        local: bool,
    },
    /// Show a blob as the store holds it here: size, pins, references, when it came.
    Stat {
        /// Store id (or unique prefix).
        store: String,
        /// The blob's hash.
        hash: String,
    },
    /// Pin a blob (fetching it from the store's peers when it is not here): it stays here
    /// until unpinned.
    Pin {
        /// Store id (or unique prefix).
        store: String,
        /// The blob's hash.
        hash: String,
    },
    /// Remove one pin from a blob; with no pin and no reference left it is collected after
    /// the grace period.
    Unpin {
        /// Store id (or unique prefix).
        store: String,
        /// The blob's hash.
        hash: String,
    },
    /// The blobs a store holds here: how many, bytes, pinned, referenced, loose.
    Status {
        /// Store id (or unique prefix).
        store: String,
        /// List every blob too.
        #[arg(long)]
        list: bool,
    },
    /// Show, or set, which members keep the blobs a store's state references: `all` (the
    /// default) or `copies --copies N` (N members keep each blob, chosen the same way on
    /// every member; the others fetch a blob when it is read). Kept in the store's system
    /// table.
    Policy {
        /// Store id (or unique prefix).
        store: String,
        /// `all` or `copies`; leave out to show the policy.
        #[arg(value_parser = ["all", "copies"])]
        mode: Option<String>,
        /// With `copies`: how many members keep each blob.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
        copies: u64,
    },
    /// Collect blobs now (every store on this node): blobs nothing pins or references that
    /// a store has held for the grace period are let go, and deleted once no store holds
    /// them. The node does this every ten minutes by itself.
    Gc {
        /// The grace period in seconds (default: the node's, an hour).
        #[arg(long, value_name = "SECS")]
        grace: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModuleCommand {
    /// Install a store type from a .wasm file (a component, or a core module built with
    /// wit-bindgen, which is made into one).
    Install {
        /// Path to the .wasm file.
        file: PathBuf,
    },
    /// List installed modules.
    List,
    /// Describe a module: its name, version and methods with their arguments.
    Inspect {
        /// Module hash (or unique prefix), or a built-in name (kvstore, counter).
        module: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Create a store of a type and print its id.
    Create {
        /// A .wasm file, a built-in type (kv, kvstore, counter, rootstore; `.wasm` optional)
        /// or a module hash.
        #[arg(long = "type", value_name = "TYPE")]
        store_type: String,
        /// A name for people.
        #[arg(long, default_value = "")]
        name: String,
        /// Create it as a child of this store: it opens on every peer of the parent and
        /// shares the parent's peers.
        #[arg(long, value_name = "STORE")]
        parent: Option<String>,
    },
    /// List the stores this node keeps (open, archived, left).
    List,
    /// Show a store's state: witnessed, projected, floating, rejected, module.
    Status {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Describe a store's type: its methods and their arguments.
    Inspect {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Show the newest intentions of a store.
    History {
        /// Store id (or unique prefix).
        store: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List the intentions the store type or the membership policy rejected (on this node —
    /// every peer rejects the same ones), newest first: author, time, partition and reason.
    Rejected {
        /// Store id (or unique prefix).
        store: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Call a method: `lattice store call <store> put key=a value=1`, or pass `--json-args JSON`.
    /// Arguments are checked against the schema the store type describes.
    Call {
        /// Store id (or unique prefix).
        store: String,
        /// Method name (`lattice store inspect` lists them).
        method: String,
        /// Arguments as name=value words.
        args: Vec<String>,
        /// Arguments as one JSON object (instead of name=value words).
        #[arg(long, value_name = "JSON", conflicts_with = "args")]
        json_args: Option<String>,
    },
    /// Print a store's watch events as they happen, until interrupted.
    Watch {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Issue a one-time invite token for a store (give it to the node that should join).
    Invite {
        /// Store id (or unique prefix).
        store: String,
        /// How long the token stays valid, in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Join the store of an invite token: bootstrap it and its child stores from the inviter.
    Join {
        /// The token (`lattice1…`).
        token: String,
    },
    /// Revoke a peer: its connections and gossip are refused, its later writes are not
    /// projected by anyone.
    RevokePeer {
        /// Store id (or unique prefix).
        store: String,
        /// The peer's key (`lattice store peers` lists them).
        peer: String,
    },
    /// List a store's peers and their status.
    Peers {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Archive a child store: every peer closes it; the data stays.
    Archive {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Re-activate an archived child store.
    Unarchive {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Leave a store: revoke this node's own key there, close it, keep the data.
    Leave {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Re-join a store this node left, with a fresh invite token; its data is kept.
    Rejoin {
        /// The token (`lattice1…`).
        token: String,
    },
    /// Delete the local data of a store that is archived or left.
    Delete {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Keep a store headless on this node (`on`): it replicates the store's log and system
    /// table for the other members but never fetches nor runs the store's module, so reads of
    /// its data fail here. `off` lets it fetch and run the module again. Takes effect at once.
    Headless {
        /// Store id (or unique prefix).
        store: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Repair a damaged store: rebuild its projected state from the log, and a log that does
    /// not open or verify from the intentions that still verify (its peers send the rest).
    /// Works with the daemon running; `store list` shows which stores are damaged.
    Repair {
        /// Store id (or unique prefix).
        store: String,
    },
    /// Delete a store's history below its newest final epoch (an epoch every member
    /// acknowledged with the same state), keeping what the state still names. By default
    /// first asks for a prune-cut epoch, final at once when this node is the store's only
    /// active member; with other members, prune again once they acknowledged it (or set a
    /// policy with `lattice store prune-policy`). Writes go on meanwhile.
    Prune {
        /// Store id (or unique prefix).
        store: String,
        /// Prune below the newest final epoch as it is, without asking for a new one.
        #[arg(long)]
        no_cut: bool,
    },
    /// Show or set when a store prunes on its own, as an epoch becomes final: `off` (the
    /// default), `keep-epochs --keep N` (history of the newest N final epochs stays) or
    /// `keep-ms --keep N` (N ms of history stays). Kept in the system table: the same on
    /// every member.
    PrunePolicy {
        /// Store id (or unique prefix).
        store: String,
        /// `off`, `keep-epochs` or `keep-ms`; omit to show the policy.
        #[arg(value_parser = ["off", "keep-epochs", "keep-ms"])]
        mode: Option<String>,
        /// Epochs, or ms, of history kept (at least 1).
        #[arg(long, default_value_t = 1)]
        keep: u64,
    },
    /// Drop a store's projected state and rebuild it from the log (needs the daemon stopped).
    Rebuild {
        /// Store id (or unique prefix).
        store: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Address for peers to reach this node (127.0.0.1:0: loopback, any free port; the port
    /// is kept across restarts when free).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: std::net::SocketAddr,
    /// Seconds between anti-entropy rounds (one reconciliation per store with one peer; it
    /// catches up whatever gossip missed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) anti_entropy: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keys each node writes in the concurrent phase (half that during the partition).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) writes: u32,
    /// Keep the data directories (their path is printed) instead of deleting them.
    #[arg(long)]
    pub(crate) keep: bool,
    /// File sync instead: two daemons each mount one filesystem store (FUSE; needs
    /// /dev/fuse and fusermount3); a photo copied into one folder appears in the other, and
    /// an edit made on each while apart ends as the same two versions on both.
    #[arg(long)]
    pub(crate) fs: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Run a scenario script (Rhai; see docs/sim.md for its functions) on whole nodes over
    /// the simulated network, in a temporary folder. Prints a report per seed (nodes, writes,
    /// converged, wall and convergence time); exits non-zero when a seed fails.
    Run(SimRunArgs),
    /// Simulation testing with random faults: for each seed, a random sequence of writes and
    /// faults (partitions, offline nodes, kills during writes, restarts, a revocation; gossip
    /// loss, duplication, delay) on fresh nodes, with the invariants checked after every heal
    /// and at the end: identical digests, no acknowledged write lost, a revoked node's later
    /// writes projected nowhere, every witness chain verifies. A failing seed is printed with
    /// the shortest operation sequence found that still fails. Exits non-zero on a failure.
    Soak(SimSoakArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct SimSoakArgs {
    /// Seeds to run: `N` (seeds 1 to N) or a range `A..B` (B excluded).
    #[arg(long, value_parser = parse_seed_count, default_value = "100")]
    pub(crate) seeds: std::ops::Range<u64>,
    /// Nodes per seed (node 0 creates a kv store; the others join it).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub(crate) nodes: u64,
    /// Operations per seed.
    #[arg(long, default_value_t = 40)]
    pub(crate) steps: usize,
    /// Probability that a gossip message is lost on a link.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) loss: f64,
    /// Each node's wall clock is off by up to this many milliseconds either way (drawn from
    /// the seed; the HLC allows 300,000 ahead).
    #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(i64).range(0..=3_600_000))]
    pub(crate) max_skew_ms: i64,
    /// Runs spent shrinking a failing seed's operations (0: print them all).
    #[arg(long, default_value_t = 40)]
    pub(crate) shrink: usize,
    /// Stop at the first failing seed (seeds already running finish).
    #[arg(long)]
    pub(crate) fail_fast: bool,
    /// Seeds run at once (simulated nodes mostly wait on timers and fsync).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) jobs: u64,
    /// Where the simulated nodes keep their data (a temporary folder inside it, removed
    /// after). Default: /dev/shm when there is one (memory: a simulated kill loses no page
    /// cache, so fsyncs prove nothing here and only cost time), else the system's temp dir.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<std::path::PathBuf>,
}

fn parse_seed_count(text: &str) -> Result<std::ops::Range<u64>, String> {
    if text.contains("..") {
        return parse_seeds(text);
    }
    match text.trim().parse::<u64>() {
        Ok(0) => Err("0 seeds".to_string()),
        Ok(n) => Ok(1..n.saturating_add(1)),
        Err(_) => Err(format!(
            "{text:?} is neither a count nor a range like 1..100"
        )),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SimRunArgs {
    /// The scenario script (for example `examples/sim/mesh-50.rhai`).
    pub(crate) scenario: std::path::PathBuf,
    /// The seed of the network's faults and of the script's `rand`.
    #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
    pub(crate) seed: u64,
    /// Run every seed of a range instead, `A..B` (B excluded).
    #[arg(long, value_parser = parse_seeds)]
    pub(crate) seeds: Option<std::ops::Range<u64>>,
    /// Write every event the network carried (time in simulated µs, kind, nodes, a hash
    /// of the bytes) to this file, one per line — `FILE.<seed>` with several seeds. Two
    /// runs of a seed write the same file; `diff` shows where two seeds' runs part.
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: Option<std::path::PathBuf>,
    /// Where the simulated nodes keep their data (a temporary folder inside it, removed
    /// after). Default: /dev/shm when there is one (memory: a simulated kill loses no page
    /// cache, so fsyncs prove nothing here and only cost time), else the system's temp dir.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<std::path::PathBuf>,
}

fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?} is not a range like 1..100"))?;
    let parse = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("{t:?} is not a seed"))
    };
    let range = parse(a)?..parse(b)?;
    if range.is_empty() {
        return Err(format!("{text:?} holds no seed"));
    }
    Ok(range)
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Authoring, ingest and floating-resolution throughput of one store's log.
    Log(BenchLogArgs),
    /// Durable puts through a Wasm store type, against the same logic compiled natively.
    Store(BenchStoreArgs),
    /// Reconciliation between two nodes that each hold intentions the other lacks, then a
    /// clone of the whole store into an empty node (over the simulated network or real iroh
    /// on loopback).
    Sync(BenchSyncArgs),
    /// Durable kv puts through a real daemon's gRPC API (one caller, then many in flight),
    /// disk bytes per put, and process start to first answered read. Prints one JSON object.
    Daemon(BenchDaemonArgs),
    /// One store on three embedded nodes: puts over a set of keys, a prune cut every member
    /// acknowledges, then pruning: disk before and after, the longest prune step, and a new
    /// peer's bootstrap time.
    Prune(BenchPruneArgs),
    /// Blobs between two nodes over iroh on loopback: one big blob fetched whole (and once
    /// interrupted at half and resumed), many small ones, against a plain stream copy of the
    /// same bytes. Prints one JSON object with --json.
    Cas(BenchCasArgs),
    /// File sync through FUSE mounts on two daemons (Linux): a big file written and read
    /// sequentially, many small files created, next to the same on the local disk, and how
    /// soon the last small file is readable through the other node's mount.
    Fs(BenchFsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchFsArgs {
    /// Size of the big file, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) big_mib: u64,
    /// Small files created.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) small: u64,
    /// Size of each small file, in KiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) small_kib: u64,
    /// Threads creating the small files side by side (as `cp -r` with several jobs, or a
    /// build); the rate of one thread alone is reported too.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) writers: u64,
}

#[derive(Debug, Args)]
pub(crate) struct BenchCasArgs {
    /// Size of the big blob, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) big_mib: u64,
    /// Small blobs.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) small: u64,
    /// Size of each small blob, in KiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) small_kib: u64,
    /// Size of the blob put and got through two daemons' API, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) api_mib: u64,
}

#[derive(Debug, Args)]
pub(crate) struct BenchPruneArgs {
    /// Puts, spread over the three nodes.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) writes: u64,
    /// Keys the puts cycle over.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) keys: u64,
}

#[derive(Debug, Args)]
pub(crate) struct BenchDaemonArgs {
    /// Puts with `--inflight` callers (also the size bytes per put are measured on, with the
    /// one-at-a-time puts).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) count: u64,
    /// Callers with one put in flight each.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) inflight: u64,
    /// Puts by one caller, one at a time (at most `--count`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) seq_count: u64,
    /// Store sizes (intentions) at which process start to first read is timed.
    #[arg(long, value_delimiter = ',', default_value = "10000,200000")]
    pub(crate) open_sizes: Vec<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchSyncArgs {
    /// Intentions both nodes share.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) count: u64,
    /// Fraction of `count` unique to each side (0.01 = 1%).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) diff: f64,
    /// Network: `sim` (in memory) or `iroh` (QUIC on 127.0.0.1).
    #[arg(long, default_value = "iroh", value_parser = ["sim", "iroh"])]
    pub(crate) transport: String,
}

#[derive(Debug, Args)]
pub(crate) struct BenchStoreArgs {
    /// Store type (only kv is benchmarked).
    #[arg(long = "type", default_value = "kv", value_parser = ["kv", "kvstore"])]
    pub(crate) store_type: String,
    /// Puts per phase.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) count: u64,
    /// Value bytes per put.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub(crate) payload: u64,
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
    /// Show this node: key, name, address, data directory, stores.
    Status,
    /// Name this node (its peers see the name).
    SetName {
        /// The name.
        name: String,
    },
    /// Stop the running daemon (it closes every store first).
    Stop,
    /// Repair every store reported damaged (see `lattice store repair`). A lost or damaged
    /// inventory (meta.db) is rebuilt from the stores on disk whenever the node starts.
    Repair,
}
